//! The service's identity: the static system user `dingdong` that the Debian package creates
//! from its sysusers.d file and the unit runs as. Answers, without switching user, whether
//! that user can reach a file (`diag` runs as root, which can read anything), and gives files
//! that a command run as root creates in the service's directories to the service.
//!
//! Only Unix permission bits are read (owner, group, mode of the file and of every directory
//! above it); ACLs are not. The unit's sandbox is known too: `ProtectHome=yes` hides /home,
//! /root and /run/user, `PrivateTmp=yes` gives the service its own /tmp and /var/tmp.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The user the unit runs as (`User=dingdong` in systemd/dingdong.service).
pub const SERVICE_USER: &str = "dingdong";

/// A user's uid and every group it is in (its primary group first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gids: Vec<u32>,
}

/// What the service needs of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    ReadWrite,
    /// A directory the service creates files in (the database's: SQLite adds -wal and -shm).
    Directory,
}

/// Owner, group and mode of one path component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Why the service cannot reach a file, and what would fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub why: String,
    pub fix: String,
}

/// Finds `name` in the contents of /etc/passwd and /etc/group.
pub fn parse_account(name: &str, passwd: &str, group: &str) -> Option<Account> {
    let user = passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() >= 4 && f[0] == name)?;
    let (uid, primary) = (user[2].parse().ok()?, user[3].parse().ok()?);
    let mut gids = vec![primary];
    for f in group.lines().map(|l| l.split(':').collect::<Vec<_>>()).filter(|f| f.len() >= 4) {
        let Ok(gid) = f[2].parse::<u32>() else { continue };
        if !gids.contains(&gid) && f[3].split(',').any(|m| m.trim() == name) {
            gids.push(gid);
        }
    }
    Some(Account { name: name.into(), uid, gids })
}

/// The service's account from this machine's user database; `None` where the package was not
/// installed (a development machine).
pub fn service_account() -> Option<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    parse_account(SERVICE_USER, &passwd, &group)
}

/// True when this process runs as root (the owner of /proc/self is the effective uid).
pub fn running_as_root() -> bool {
    crate::store::files::running_as_root()
}

/// Which of the unit's sandboxing options hides `path` from the service, if any.
pub fn hidden_by_unit(path: &Path) -> Option<&'static str> {
    let under = |dir: &str| path.starts_with(dir);
    if under("/home") || under("/root") || under("/run/user") {
        Some("ProtectHome=yes hides /home, /root and /run/user from the service")
    } else if under("/tmp") || under("/var/tmp") {
        Some("PrivateTmp=yes gives the service its own /tmp and /var/tmp")
    } else {
        None
    }
}

/// The permission bits that apply to `account` on `node`: owner, else group, else others.
fn class_bits(account: &Account, node: &Node) -> u32 {
    if account.uid == 0 {
        0o7
    } else if node.uid == account.uid {
        (node.mode >> 6) & 0o7
    } else if account.gids.contains(&node.gid) {
        (node.mode >> 3) & 0o7
    } else {
        node.mode & 0o7
    }
}

/// Decides whether `account` can reach the last of `chain` (every directory from `/` down,
/// then the file): search permission on each directory, then read (and write) on the file.
pub fn check(account: &Account, chain: &[Node], need: Need) -> Result<(), Denied> {
    let Some((file, dirs)) = chain.split_last() else { return Ok(()) };
    let user = &account.name;
    for dir in dirs {
        if class_bits(account, dir) & 0o1 == 0 {
            let d = dir.path.display();
            return Err(Denied {
                why: format!(
                    "user {user} cannot enter {d} (mode {:04o}, uid {} gid {})",
                    dir.mode & 0o7777,
                    dir.uid,
                    dir.gid
                ),
                fix: format!("chgrp {user} {d} && chmod g+x {d}"),
            });
        }
    }
    let bits = class_bits(account, file);
    let (wanted, what, mode) = match need {
        Need::Read => (0o4, "read", "0640"),
        Need::ReadWrite => (0o6, "write", "0600"),
        Need::Directory => (0o7, "create files in", "0750"),
    };
    if bits & wanted != wanted {
        let f = file.path.display();
        let fix = match need {
            Need::Read => format!("chgrp {user} {f} && chmod {mode} {f}"),
            Need::ReadWrite | Need::Directory => format!("chown {user}:{user} {f} && chmod {mode} {f}"),
        };
        return Err(Denied {
            why: format!(
                "user {user} cannot {what} {f} (mode {:04o}, uid {} gid {})",
                file.mode & 0o7777,
                file.uid,
                file.gid
            ),
            fix,
        });
    }
    Ok(())
}

/// Checks `path` as `account` sees it on this machine: the unit's sandbox, then permissions.
pub fn access(account: &Account, path: &Path, need: Need) -> Result<(), Denied> {
    if let Some(why) = hidden_by_unit(path) {
        return Err(Denied {
            why: format!("{}: {why}", path.display()),
            fix: format!("move it under /etc/dingdong (root:{} 0640) and point the config at it", account.name),
        });
    }
    let real = std::fs::canonicalize(path)
        .map_err(|e| Denied { why: format!("{}: {e}", path.display()), fix: "fix the path".into() })?;
    let mut chain = vec![];
    for p in real.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let m = std::fs::metadata(p)
            .map_err(|e| Denied { why: format!("{}: {e}", p.display()), fix: "fix the path".into() })?;
        chain.push(Node { path: p.to_path_buf(), uid: m.uid(), gid: m.gid(), mode: m.mode() });
    }
    check(account, &chain, need)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        dingdong:x:998:997:dingdong doorbell push hub:/var/lib/dingdong:/usr/sbin/nologin\n\
        alice:x:1000:1000::/home/alice:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nadm:x:4:alice\ndingdong:x:997:\nssl-cert:x:110:dingdong,alice\n";

    fn dingdong() -> Account {
        parse_account("dingdong", PASSWD, GROUP).unwrap()
    }

    fn node(path: &str, uid: u32, gid: u32, mode: u32) -> Node {
        Node { path: path.into(), uid, gid, mode }
    }

    /// /etc/dingdong as the package leaves it, then the file.
    fn chain(file: Node) -> Vec<Node> {
        vec![node("/", 0, 0, 0o755), node("/etc", 0, 0, 0o755), node("/etc/dingdong", 0, 997, 0o750), file]
    }

    #[test]
    fn the_account_comes_from_passwd_and_group() {
        assert_eq!(dingdong(), Account { name: "dingdong".into(), uid: 998, gids: vec![997, 110] });
        assert_eq!(parse_account("bob", PASSWD, GROUP), None);
        assert_eq!(parse_account("dingdong", "dingdong:x:nope:997::/:/bin/false\n", GROUP), None);
    }

    #[test]
    fn a_root_dingdong_0640_key_is_readable_and_a_root_0600_one_is_not() {
        assert_eq!(check(&dingdong(), &chain(node("/etc/dingdong/k.p8", 0, 997, 0o640)), Need::Read), Ok(()));
        let e = check(&dingdong(), &chain(node("/etc/dingdong/k.p8", 0, 0, 0o640)), Need::Read).unwrap_err();
        assert!(e.why.contains("cannot read /etc/dingdong/k.p8 (mode 0640, uid 0 gid 0)"), "{e:?}");
        assert_eq!(e.fix, "chgrp dingdong /etc/dingdong/k.p8 && chmod 0640 /etc/dingdong/k.p8");
        // World-readable works too (and diag's other check warns about it).
        assert_eq!(check(&dingdong(), &chain(node("/etc/dingdong/ca.pem", 0, 0, 0o644)), Need::Read), Ok(()));
        // A supplementary group counts.
        assert_eq!(check(&dingdong(), &chain(node("/etc/dingdong/c.pem", 0, 110, 0o640)), Need::Read), Ok(()));
    }

    #[test]
    fn a_directory_the_user_cannot_enter_is_named() {
        let mut c = chain(node("/etc/dingdong/k.p8", 0, 997, 0o640));
        c[2] = node("/etc/dingdong", 0, 0, 0o700);
        let e = check(&dingdong(), &c, Need::Read).unwrap_err();
        assert!(e.why.contains("cannot enter /etc/dingdong"), "{e:?}");
        assert_eq!(e.fix, "chgrp dingdong /etc/dingdong && chmod g+x /etc/dingdong");
    }

    #[test]
    fn the_database_must_be_writable_by_the_service() {
        let db = |uid, gid, mode| {
            vec![
                node("/", 0, 0, 0o755),
                node("/var/lib/dingdong", 998, 997, 0o750),
                node("/var/lib/dingdong/d.db", uid, gid, mode),
            ]
        };
        assert_eq!(check(&dingdong(), &db(998, 997, 0o600), Need::ReadWrite), Ok(()));
        let e = check(&dingdong(), &db(0, 0, 0o644), Need::ReadWrite).unwrap_err();
        assert!(e.why.contains("cannot write /var/lib/dingdong/d.db"), "{e:?}");
        assert_eq!(e.fix, "chown dingdong:dingdong /var/lib/dingdong/d.db && chmod 0600 /var/lib/dingdong/d.db");
    }

    #[test]
    fn the_database_directory_must_be_the_services() {
        let c = vec![node("/", 0, 0, 0o755), node("/var/lib/dingdong", 0, 0, 0o755)];
        let e = check(&dingdong(), &c, Need::Directory).unwrap_err();
        assert!(e.why.contains("cannot create files in /var/lib/dingdong"), "{e:?}");
        assert_eq!(e.fix, "chown dingdong:dingdong /var/lib/dingdong && chmod 0750 /var/lib/dingdong");
        let c = vec![node("/", 0, 0, 0o755), node("/var/lib/dingdong", 998, 997, 0o750)];
        assert_eq!(check(&dingdong(), &c, Need::Directory), Ok(()));
    }

    #[test]
    fn the_units_sandbox_hides_home_and_tmp() {
        assert!(hidden_by_unit(Path::new("/root/sim/ca.pem")).unwrap().contains("ProtectHome"));
        assert!(hidden_by_unit(Path::new("/home/alice/k.p8")).unwrap().contains("ProtectHome"));
        assert!(hidden_by_unit(Path::new("/tmp/k.p8")).unwrap().contains("PrivateTmp"));
        assert_eq!(hidden_by_unit(Path::new("/etc/dingdong/k.p8")), None);
        assert_eq!(hidden_by_unit(Path::new("/rootfs/k.p8")), None);
        let e = access(&dingdong(), Path::new("/root/sim/ca.pem"), Need::Read).unwrap_err();
        assert!(e.fix.contains("/etc/dingdong"), "{e:?}");
    }

    #[test]
    fn access_reads_the_real_file_system() {
        assert_eq!(access(&dingdong(), Path::new("/etc/passwd"), Need::Read), Ok(()));
        let e = access(&dingdong(), Path::new("/etc/dingdong-no-such-dir/k.p8"), Need::Read).unwrap_err();
        assert!(e.why.contains("No such file"), "{e:?}");
    }
}
