//! Backups with SQLite's online backup API: a consistent copy of the database, WAL included,
//! taken while the daemon keeps writing (in WAL mode a reader never blocks the writer). The
//! copy is written to a private temporary file beside the target and moved into place only
//! when complete, so a backup is either whole or absent. The same copy is taken
//! automatically before a schema migration, beside the database.

use super::{files, Result, Store, StoreError};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, DatabaseName};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
    /// The schema version the copy holds.
    pub schema: u32,
}

/// Whether an existing file may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Refuse,
    Replace,
}

/// How long one attempt waits on a database that is busy before trying again, and how often.
const BUSY_WAIT: Duration = Duration::from_millis(50);
const BUSY_TRIES: u32 = 200;

impl Store {
    /// Copies this database to `dest` (mode 0600, written atomically): see the module doc.
    pub fn backup_to(&self, dest: &Path, existing: Existing) -> Result<Written> {
        backup(&self.conn, dest, existing)
    }
}

fn fail(dest: &Path, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Invalid(format!("cannot write the backup {}: {reason}", dest.display()))
}

/// Copies the database of `src` to `dest`.
pub(crate) fn backup(src: &Connection, dest: &Path, existing: Existing) -> Result<Written> {
    if existing == Existing::Refuse && dest.symlink_metadata().is_ok() {
        return Err(StoreError::Invalid(format!(
            "{} exists already; fix: choose another file, or pass --force to replace it",
            dest.display()
        )));
    }
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dest.file_name().ok_or_else(|| fail(dest, "not a file name"))?.to_string_lossy().into_owned();
    let tmp = dir.join(format!(".{name}.tmp-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    // Private from the first byte: it holds every phone's token and secret.
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(|e| fail(dest, e))?;
    let written = copy_into(src, &tmp).and_then(|schema| {
        let f = std::fs::File::open(&tmp).map_err(|e| fail(dest, e))?;
        f.sync_all().map_err(|e| fail(dest, e))?;
        let bytes = f.metadata().map_err(|e| fail(dest, e))?.len();
        match existing {
            // A hard link fails if `dest` appeared meanwhile: never replaces a file.
            Existing::Refuse => std::fs::hard_link(&tmp, dest).map_err(|e| fail(dest, e))?,
            Existing::Replace => std::fs::rename(&tmp, dest).map_err(|e| fail(dest, e))?,
        }
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(Written { path: dest.to_path_buf(), bytes, schema })
    });
    let _ = std::fs::remove_file(&tmp);
    written
}

/// The online backup of `src` into the (empty) file `tmp`, in one step: one read
/// transaction, hence one consistent snapshot, however busy the writer is. The copy is then
/// made a self-contained file (rollback journal, not WAL) and checked. Returns its schema
/// version.
fn copy_into(src: &Connection, tmp: &Path) -> Result<u32> {
    let mut dst = Connection::open(tmp)?;
    {
        let backup = Backup::new_with_names(src, DatabaseName::Main, &mut dst, DatabaseName::Main)?;
        let mut tries = 0;
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                StepResult::More => continue,
                // Another connection holds a lock the copy needs: wait a little.
                StepResult::Busy | StepResult::Locked if tries < BUSY_TRIES => {
                    tries += 1;
                    std::thread::sleep(BUSY_WAIT);
                }
                _ => return Err(StoreError::Invalid("the database stayed busy; try again".into())),
            }
        }
    }
    dst.pragma_update(None, "journal_mode", "DELETE")?;
    let check: String = dst.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(StoreError::Invalid(format!("the copy does not pass SQLite's check: {check}")));
    }
    Ok(dst.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// The automatic backup before migrating a database from schema `version`:
/// `<db>.v<version>-<UTC time>.bak` beside it, 0600, owned like the database.
pub(crate) fn before_migration(conn: &Connection, db: &Path, version: u32) -> Result<Written> {
    let stamp: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".v{version}-{stamp}.bak"));
    let dest = db.with_file_name(name);
    let written = backup(conn, &dest, Existing::Refuse)?;
    files::adopt(&dest).map_err(|e| fail(&dest, e))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// Rows still in the WAL (not checkpointed into the database file) are in the copy, which
    /// another connection takes, as `dingdong backup` does beside the daemon.
    #[test]
    fn a_backup_has_what_is_still_in_the_wal_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("d.db");
        let mut daemon = Store::open(&db).unwrap();
        daemon.conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        for i in 0..50 {
            daemon.add_user(&format!("u{i}")).unwrap();
        }
        let wal = files::side_files(&db)[0].clone();
        assert!(std::fs::metadata(&wal).unwrap().len() > 0, "the rows are in the WAL");
        let cli = Store::open_readonly(&db).unwrap();
        let dest = dir.path().join("copy.db");
        let w = cli.backup_to(&dest, Existing::Refuse).unwrap();
        assert_eq!((w.schema as usize, w.bytes > 0), (crate::store::schema::MIGRATIONS.len(), true));
        assert_eq!(mode(&dest), 0o600);
        let copy = Store::open_readonly(&dest).unwrap();
        assert_eq!(copy.counts().unwrap().0, 50);
        assert!(!files::side_files(&dest)[0].exists(), "a self-contained file, no WAL beside it");
        // Nothing else left in the folder: the temporary file went.
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    }

    #[test]
    fn an_existing_file_is_replaced_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("d.db")).unwrap();
        let dest = dir.path().join("copy.db");
        std::fs::write(&dest, b"precious").unwrap();
        let e = s.backup_to(&dest, Existing::Refuse).unwrap_err().to_string();
        assert!(e.contains("exists already") && e.contains("--force"), "{e}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"precious");
        s.backup_to(&dest, Existing::Replace).unwrap();
        assert_eq!(Store::open_readonly(&dest).unwrap().counts().unwrap(), (0, 0, 0));
        let e = s.backup_to(&dir.path().join("no/such/dir/copy.db"), Existing::Refuse).unwrap_err();
        assert!(e.to_string().contains("cannot write the backup"), "{e}");
    }
}
