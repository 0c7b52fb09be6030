//! One daemon per database: `dingdong run` holds an exclusive lock on `<database>.lock` (with
//! its pid inside) for as long as it runs. A second `run` on the same database refuses to
//! start and names the first one; CLI commands do not take the lock and keep working beside
//! the daemon.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("another dingdong run (pid {pid}) is using {database}; fix: stop it first (systemctl stop dingdong), or give this one its own gateway.database")]
    Running { pid: String, database: String },
    #[error("cannot take the instance lock {path}: {reason}")]
    Lock { path: String, reason: String },
}

/// Held while the daemon runs; the lock goes with the process, even on `kill -9`.
#[derive(Debug)]
pub struct InstanceLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl InstanceLock {
    pub fn acquire(database: &Path) -> Result<InstanceLock, InstanceError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = lock_path(database);
        let fail = |e: std::io::Error| InstanceError::Lock { path: path.display().to_string(), reason: e.to_string() };
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(fail)?;
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(fail)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let pid = if pid.is_empty() { "unknown".to_string() } else { pid.chars().take(16).collect() };
                return Err(InstanceError::Running { pid, database: database.display().to_string() });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(fail(e)),
        }
        file.set_len(0).map_err(fail)?;
        file.rewind().map_err(fail)?;
        writeln!(file, "{}", std::process::id()).map_err(fail)?;
        Ok(InstanceLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `<database>.lock`.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    database.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_instance_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("d.db");
        let first = InstanceLock::acquire(&db).unwrap();
        assert_eq!(first.path(), dir.path().join("d.db.lock"));
        let e = InstanceLock::acquire(&db).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(!e.contains('\n'));
        drop(first);
        InstanceLock::acquire(&db).unwrap();
    }
}
