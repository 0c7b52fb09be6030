//! The database's files on disk: private whatever the umask (they hold every phone's secret),
//! and owned by the service's user even when a root CLI command creates them.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode bits a database file may have: the owner's, and the group's read/write (a group the
/// operator chose for the state directory); never other users'.
const ALLOWED: u32 = 0o660;

/// Creates the database file 0600 if it is missing, takes other users' bits off one that
/// exists, and, when run as root in a directory owned by someone else (the service's state
/// directory), gives a new file to the directory's owner so the service can open it.
pub fn prepare(db: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(db) {
        Ok(_) => adopt(db),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            private(db);
            adopt(db)
        }
        Err(e) => Err(e),
    }
}

/// [`prepare`] for the `-wal` and `-shm` files that exist.
pub fn prepare_side_files(db: &Path) {
    for side in side_files(db) {
        if side.exists() {
            private(&side);
            let _ = adopt(&side);
        }
    }
}

/// `<db>-wal` and `<db>-shm`.
pub fn side_files(db: &Path) -> [PathBuf; 2] {
    let with = |suffix: &str| {
        let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(suffix);
        db.with_file_name(name)
    };
    [with("-wal"), with("-shm")]
}

/// Takes other users' permission bits off `path` (when we own it).
fn private(path: &Path) {
    if let Ok(m) = std::fs::metadata(path) {
        let mode = m.permissions().mode() & 0o7777;
        if mode & !ALLOWED != 0 {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & ALLOWED));
        }
    }
}

/// As root, hands `path` to the owner of its directory if that is another user.
pub(crate) fn adopt(path: &Path) -> std::io::Result<()> {
    if !running_as_root() {
        return Ok(());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (d, f) = (std::fs::metadata(dir)?, std::fs::metadata(path)?);
    if d.uid() != 0 && (f.uid(), f.gid()) != (d.uid(), d.gid()) {
        std::os::unix::fs::chown(path, Some(d.uid()), Some(d.gid()))?;
    }
    Ok(())
}

/// Whether this process runs as root (the owner of `/proc/self` is our effective user).
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("d.db");
        prepare(&db).unwrap();
        assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o664)).unwrap();
        prepare(&db).unwrap();
        assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o660);
        let s = crate::store::Store::open(&db).unwrap();
        drop(s);
        for side in side_files(&db) {
            if side.exists() {
                assert_eq!(std::fs::metadata(&side).unwrap().permissions().mode() & 0o007, 0, "{side:?}");
            }
        }
    }

    /// A command run as root beside the service: the database it creates in the service's
    /// directory, and SQLite's -wal and -shm beside it, belong to the directory's owner.
    #[test]
    fn a_database_root_creates_in_the_services_directory_is_the_services() {
        if !running_as_root() {
            eprintln!("skipped: needs root to own files for another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(4242), Some(4243)).unwrap();
        let db = dir.path().join("d.db");
        let store = crate::store::Store::open(&db).unwrap();
        store.conn().execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let m = std::fs::metadata(format!("{}{suffix}", db.display())).unwrap();
            assert_eq!(
                (std::os::unix::fs::MetadataExt::uid(&m), std::os::unix::fs::MetadataExt::gid(&m)),
                (4242, 4243),
                "d.db{suffix}"
            );
        }
    }
}
