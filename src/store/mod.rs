//! SQLite: the schema and its migrations, every SQL statement, typed queries.
//!
//! Every statement is parameterised. One thread owns a [`Store`] (see [`handle`]); nothing
//! holds it across an `.await`. This module knows nothing of MQTT or APNs beyond the shared
//! outcome vocabulary.

pub mod backup;
pub mod feedback;
pub mod fieldkit;
pub mod files;
pub mod handle;
pub mod history;
pub mod household;
pub mod import;
pub mod pairing;
pub mod phones;
pub mod presses;
pub mod recipients;
pub mod rings;
pub mod schema;
pub mod states;

pub use handle::StoreHandle;

use crate::domain::{Environment, TokenError};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("no {kind} '{}'", crate::domain::printable(id))]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} '{}' already exists", crate::domain::printable(id))]
    Exists { kind: &'static str, id: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0} pairing windows are open already (the most at once); wait until one is used or expires")]
    WindowsFull(usize),
    #[error("invalid token: {0}")]
    Token(#[from] TokenError),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store thread has stopped")]
    Closed,
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub struct Store {
    conn: Connection,
    /// Big recipient lists kept between rings (see `Store::create_ring`).
    recipients: recipients::KeptRecipients,
    /// The household's rules as the outbox applies them (see `Store::house`).
    house: household::KeptHouse,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub phones: i64,
    pub doorbells: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DoorbellRow {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub shared_with: Vec<String>,
    pub bindings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PhoneRow {
    pub id: i64,
    pub user: String,
    /// `apns`, `fcm` or `webpush`.
    pub platform: String,
    /// The APNs token in hex, the FCM token, or the Web Push endpoint.
    pub token: String,
    pub environment: String,
    pub topic: Option<String>,
    pub name: Option<String>,
    pub registered_at: i64,
    pub last_outcome: Option<String>,
    /// What the person's household rules do to a ring now, for every doorbell (`muted`,
    /// `silenced`, or their alert level when not the usual); filled by `phone list`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub household: Option<String>,
}

/// Whether `phone add` created a phone or refreshed an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Added(i64),
    Updated(i64),
}

/// Doorbell names end up in notifications, logs and Home Assistant.
fn check_doorbell_name(name: &str) -> Result<()> {
    crate::domain::check_name_within(name, crate::domain::ids::DOORBELL_NAME_MAX)
        .map_err(|e| StoreError::Invalid(format!("doorbell name: {e}")))
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

impl Store {
    /// Opens (creating if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<Store> {
        let fail = |reason: String| StoreError::Open { path: path.display().to_string(), reason };
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
            }
        }
        files::prepare(path).map_err(|e| fail(e.to_string()))?;
        let mut conn = Connection::open(path).map_err(|e| fail(e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| fail(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => fail("not an SQLite database (corrupt or overwritten); fix: restore a backup over it, or move it away to start empty".to_string()),
            e => fail(e.to_string()),
        })?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| fail(e.to_string()))?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(|e| fail(e.to_string()))?;
        Self::before_migrating(&conn, path).map_err(fail)?;
        schema::migrate(&mut conn).map_err(|e| fail(e.to_string()))?;
        // SQLite creates -wal and -shm with the database's mode and, as root, its owner: fix
        // them too in case an older version or a hand made them.
        files::prepare_side_files(path);
        Ok(Store { conn, recipients: Default::default(), house: Default::default() })
    }

    /// Refuses a database a newer dingdong wrote (its schema is one this binary does not know),
    /// and backs up one that is about to be migrated, beside it.
    fn before_migrating(conn: &Connection, path: &Path) -> std::result::Result<(), String> {
        let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| e.to_string())?;
        let latest = schema::MIGRATIONS.len() as u32;
        if current > latest {
            return Err(format!(
                "its schema version {current} is newer than this dingdong knows ({latest}): a newer dingdong wrote it; \
                 fix: install that newer version again, or restore the backup taken before the upgrade \
                 ({}.v*.bak beside it)",
                path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
            ));
        }
        if current == 0 || current == latest {
            return Ok(()); // new, or nothing to migrate
        }
        let w = backup::before_migration(conn, path, current).map_err(|e| {
            format!("cannot back it up before migrating schema {current} to {latest} ({e}); fix: free disk space beside it, then start again")
        })?;
        tracing::info!(from = current, to = latest, backup = %w.path.display(), bytes = w.bytes, "backed up before migrating the database");
        Ok(())
    }

    /// SQLite's quick integrity check: the daemon refuses to run on a damaged database.
    pub fn check_integrity(&self) -> Result<()> {
        let path = self.conn.path().unwrap_or("").to_string();
        let fail = |reason: String| StoreError::Open { path: path.clone(), reason };
        let mut st = self.conn.prepare("PRAGMA quick_check(5)")?;
        let problems: Vec<String> = st
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| fail(e.to_string()))?;
        if problems.len() == 1 && problems[0] == "ok" {
            return Ok(());
        }
        Err(fail(format!(
            "the integrity check failed ({}); fix: stop dingdong and restore a backup over it (`dingdong backup` makes them)",
            problems.join("; ").chars().filter(|c| !c.is_control()).take(200).collect::<String>()
        )))
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    fn user_id(&self, name: &str) -> Result<i64> {
        self.conn
            .query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NotFound { kind: "user", id: name.into() })
    }

    fn doorbell_exists(&self, id: &str) -> Result<()> {
        let found: Option<i64> =
            self.conn.query_row("SELECT 1 FROM doorbells WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        found.map(|_| ()).ok_or_else(|| StoreError::NotFound { kind: "doorbell", id: id.into() })
    }

    // ---- users ----

    pub fn add_user(&mut self, name: &str) -> Result<i64> {
        crate::domain::check_id("user", name).map_err(StoreError::Invalid)?;
        match self
            .conn
            .execute("INSERT INTO users (name, created_at) VALUES (?1, ?2)", params![name, crate::domain::now_ms()])
        {
            Ok(_) => Ok(self.conn.last_insert_rowid()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Exists { kind: "user", id: name.into() }),
            Err(e) => Err(e.into()),
        }
    }

    /// The user's id, creating the user if new (pairing does this).
    pub fn ensure_user(&mut self, name: &str) -> Result<i64> {
        match self.user_id(name) {
            Ok(id) => Ok(id),
            Err(StoreError::NotFound { .. }) => self.add_user(name),
            Err(e) => Err(e),
        }
    }

    pub fn list_users(&self) -> Result<Vec<UserRow>> {
        let mut st = self.conn.prepare(
            "SELECT u.name,
                    (SELECT COUNT(*) FROM phones p WHERE p.user_id = u.id),
                    (SELECT COUNT(*) FROM doorbells d WHERE d.owner_id = u.id)
             FROM users u ORDER BY u.name",
        )?;
        let rows = st.query_map([], |r| Ok(UserRow { name: r.get(0)?, phones: r.get(1)?, doorbells: r.get(2)? }))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Removes a user with their phones and shares; refused while they own a doorbell.
    pub fn remove_user(&mut self, name: &str) -> Result<()> {
        let id = self.user_id(name)?;
        let owned: i64 =
            self.conn.query_row("SELECT COUNT(*) FROM doorbells WHERE owner_id = ?1", [id], |r| r.get(0))?;
        if owned > 0 {
            return Err(StoreError::Invalid(format!(
                "user '{name}' owns {owned} doorbell(s); remove them or give them another owner first"
            )));
        }
        self.conn.execute("DELETE FROM users WHERE id = ?1", [id])?;
        Ok(())
    }

    // ---- doorbells ----

    pub fn add_doorbell(&mut self, id: &str, name: Option<&str>, owner: &str) -> Result<()> {
        crate::domain::check_id("doorbell", id).map_err(StoreError::Invalid)?;
        let name = name.unwrap_or(id);
        check_doorbell_name(name)?;
        let owner_id = self.user_id(owner)?;
        match self.conn.execute(
            "INSERT INTO doorbells (id, name, owner_id, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, name, owner_id, crate::domain::now_ms()],
        ) {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Exists { kind: "doorbell", id: id.into() }),
            Err(e) => Err(e.into()),
        }
    }

    pub fn list_doorbells(&self) -> Result<Vec<DoorbellRow>> {
        let mut st = self
            .conn
            .prepare("SELECT d.id, d.name, u.name FROM doorbells d JOIN users u ON u.id = d.owner_id ORDER BY d.id")?;
        let mut rows: Vec<DoorbellRow> = st
            .query_map([], |r| {
                Ok(DoorbellRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    owner: r.get(2)?,
                    shared_with: vec![],
                    bindings: vec![],
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut shares = self.conn.prepare(
            "SELECT u.name FROM shares s JOIN users u ON u.id = s.user_id WHERE s.doorbell_id = ?1 ORDER BY u.name",
        )?;
        let mut binds = self
            .conn
            .prepare("SELECT source || ':' || key FROM bindings WHERE doorbell_id = ?1 ORDER BY source, key")?;
        for d in &mut rows {
            d.shared_with = shares.query_map([&d.id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            d.bindings = binds.query_map([&d.id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        }
        Ok(rows)
    }

    /// Gives a doorbell another name: what its notifications and Home Assistant say from now on.
    pub fn rename_doorbell(&mut self, id: &str, name: &str) -> Result<()> {
        check_doorbell_name(name)?;
        if self.conn.execute("UPDATE doorbells SET name = ?2 WHERE id = ?1", params![id, name])? == 0 {
            return Err(StoreError::NotFound { kind: "doorbell", id: id.into() });
        }
        Ok(())
    }

    /// A counter that moves whenever a doorbell is added, removed or renamed, by any process:
    /// the daemon compares it each second to announce changes to Home Assistant.
    pub fn doorbells_version(&self) -> Result<i64> {
        Ok(self.conn.query_row("SELECT n FROM doorbells_version WHERE id = 1", [], |r| r.get(0))?)
    }

    pub fn remove_doorbell(&mut self, id: &str) -> Result<()> {
        if self.conn.execute("DELETE FROM doorbells WHERE id = ?1", [id])? == 0 {
            return Err(StoreError::NotFound { kind: "doorbell", id: id.into() });
        }
        Ok(())
    }

    /// Binds a radio button to a doorbell; a key already bound elsewhere is moved.
    pub fn bind(&mut self, doorbell: &str, source: &str, key: &str) -> Result<()> {
        self.doorbell_exists(doorbell)?;
        if !matches!(source, "native" | "rtl_433" | "tasmota" | "zigbee2mqtt") {
            return Err(StoreError::Invalid(format!(
                "source '{source}' is not one of native, rtl_433, tasmota, zigbee2mqtt"
            )));
        }
        if key.is_empty() || key.len() > 128 || key.chars().any(char::is_control) {
            return Err(StoreError::Invalid("binding key must be 1 to 128 printable characters".into()));
        }
        self.conn.execute(
            "INSERT INTO bindings (source, key, doorbell_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (source, key) DO UPDATE SET doorbell_id = excluded.doorbell_id",
            params![source, key, doorbell],
        )?;
        // Bound now: no longer an unknown button for diag.
        self.conn.execute("DELETE FROM unknown_presses WHERE source = ?1 AND key = ?2", params![source, key])?;
        Ok(())
    }

    /// The doorbell a button press rings: a binding if there is one; for `native` presses
    /// without a binding, the doorbell whose id is the button.
    pub fn resolve_button(&self, source: &str, key: &str) -> Result<Option<(String, String)>> {
        let bound: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT d.id, d.name FROM bindings b JOIN doorbells d ON d.id = b.doorbell_id WHERE b.source = ?1 AND b.key = ?2",
                params![source, key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if bound.is_some() || source != "native" {
            return Ok(bound);
        }
        Ok(self
            .conn
            .query_row("SELECT id, name FROM doorbells WHERE id = ?1", [key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    // ---- shares ----

    pub fn share(&mut self, doorbell: &str, user: &str) -> Result<()> {
        self.doorbell_exists(doorbell)?;
        let uid = self.user_id(user)?;
        let owner: i64 =
            self.conn.query_row("SELECT owner_id FROM doorbells WHERE id = ?1", [doorbell], |r| r.get(0))?;
        if owner == uid {
            return Err(StoreError::Invalid(format!("user '{user}' owns doorbell '{doorbell}' already")));
        }
        self.conn
            .execute("INSERT OR IGNORE INTO shares (doorbell_id, user_id) VALUES (?1, ?2)", params![doorbell, uid])?;
        Ok(())
    }

    pub fn unshare(&mut self, doorbell: &str, user: &str) -> Result<()> {
        self.doorbell_exists(doorbell)?;
        let uid = self.user_id(user)?;
        if self.conn.execute("DELETE FROM shares WHERE doorbell_id = ?1 AND user_id = ?2", params![doorbell, uid])? == 0
        {
            return Err(StoreError::NotFound { kind: "share of that doorbell with user", id: user.into() });
        }
        Ok(())
    }

    // ---- phones ----

    /// Registers (or re-registers, refreshing `registered_at`) a phone's token for a user.
    pub fn add_phone(
        &mut self,
        user: &str,
        raw_token: &str,
        env: Environment,
        topic: Option<&str>,
        name: Option<&str>,
    ) -> Result<Upsert> {
        self.register_phone(user, &phones::Registration::apns(raw_token, env)?, topic, name)
    }

    pub fn list_phones(&self) -> Result<Vec<PhoneRow>> {
        let mut st = self.conn.prepare(
            "SELECT p.id, u.name, p.token, p.environment, p.topic, p.name, p.registered_at, p.last_outcome, p.platform
             FROM phones p JOIN users u ON u.id = p.user_id ORDER BY u.name, p.id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(PhoneRow {
                id: r.get(0)?,
                user: r.get(1)?,
                platform: r.get(8)?,
                token: r.get(2)?,
                environment: r.get(3)?,
                topic: r.get(4)?,
                name: r.get(5)?,
                registered_at: r.get(6)?,
                last_outcome: r.get(7)?,
                household: None,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Removes every registration of a token (APNs, FCM, or a Web Push endpoint or
    /// subscription); returns how many.
    pub fn remove_phone(&mut self, raw_token: &str) -> Result<usize> {
        self.unregister_phone(raw_token)
    }

    /// The phones a press of `doorbell` reaches: the owner's and every shared user's, each
    /// token once (the oldest registration wins if two users registered the same phone).
    pub fn recipients(&self, doorbell: &str) -> Result<Vec<rings::JobPhone>> {
        rings::recipients_on(&self.conn, doorbell)
    }

    /// Counts for diag and the demo.
    pub fn counts(&self) -> Result<(i64, i64, i64)> {
        Ok(self.conn.query_row(
            "SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM doorbells), (SELECT COUNT(*) FROM phones)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tok(n: u32) -> String {
        format!("{:064x}", n as u128 * 0x1234_5678_9abc_def1)
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("sub/d.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn household_recipients_dedupe_and_exclude_outsiders() {
        let (_d, mut s) = store();
        for u in ["owner", "friend", "outsider"] {
            s.add_user(u).unwrap();
        }
        s.add_doorbell("front", Some("Front door"), "owner").unwrap();
        s.share("front", "friend").unwrap();
        s.add_phone("owner", &tok(1), Environment::Production, None, None).unwrap();
        s.add_phone("owner", &tok(2), Environment::Sandbox, None, None).unwrap();
        s.add_phone("friend", &tok(3), Environment::Production, None, None).unwrap();
        // The same phone registered by two users rings once.
        s.add_phone("friend", &tok(1), Environment::Production, None, None).unwrap();
        s.add_phone("outsider", &tok(4), Environment::Production, None, None).unwrap();
        let r = s.recipients("front").unwrap();
        let tokens: Vec<String> = r.iter().map(|r| r.address.key()).collect();
        assert_eq!(tokens, vec![tok(1), tok(2), tok(3)]);
        assert_eq!(r[1].address.environment(), Environment::Sandbox);
        s.unshare("front", "friend").unwrap();
        assert_eq!(s.recipients("front").unwrap().len(), 2);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let (_d, mut s) = store();
        assert!(matches!(s.add_doorbell("x", None, "nobody"), Err(StoreError::NotFound { kind: "user", .. })));
        s.add_user("a").unwrap();
        assert!(matches!(s.add_user("a"), Err(StoreError::Exists { .. })));
        assert!(matches!(s.add_phone("a", "xyz", Environment::Production, None, None), Err(StoreError::Token(_))));
        s.add_doorbell("d", None, "a").unwrap();
        assert!(matches!(s.remove_user("a"), Err(StoreError::Invalid(_))));
        assert!(s.share("d", "a").is_err());
        assert!(s.bind("d", "radio", "k").is_err());
        s.bind("d", "rtl_433", "Honeywell-ActivLink/1234").unwrap();
        assert_eq!(s.resolve_button("rtl_433", "Honeywell-ActivLink/1234").unwrap().unwrap().0, "d");
        assert_eq!(s.resolve_button("native", "d").unwrap().unwrap().0, "d");
        assert_eq!(s.resolve_button("native", "nope").unwrap(), None);
    }

    /// Adding, renaming and removing a doorbell each move the version Home Assistant's
    /// announcer watches; sharing it does not.
    #[test]
    fn doorbell_changes_move_their_version() {
        let (_d, mut s) = store();
        s.add_user("a").unwrap();
        s.add_user("b").unwrap();
        let v0 = s.doorbells_version().unwrap();
        s.add_doorbell("front", None, "a").unwrap();
        let v1 = s.doorbells_version().unwrap();
        s.share("front", "b").unwrap();
        assert_eq!(s.doorbells_version().unwrap(), v1);
        s.rename_doorbell("front", "Front door").unwrap();
        assert_eq!(s.list_doorbells().unwrap()[0].name, "Front door");
        let v2 = s.doorbells_version().unwrap();
        s.remove_doorbell("front").unwrap();
        let v3 = s.doorbells_version().unwrap();
        assert!(v0 < v1 && v1 < v2 && v2 < v3, "{v0} {v1} {v2} {v3}");
        assert!(matches!(s.rename_doorbell("front", "x"), Err(StoreError::NotFound { .. })));
        s.add_doorbell("back", None, "a").unwrap();
        assert!(matches!(s.rename_doorbell("back", ""), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn re_adding_a_phone_refreshes_it() {
        let (_d, mut s) = store();
        s.add_user("a").unwrap();
        let spaced = "740f4707bebcf74f 9b7c25d4 8e3358945f6aa01da5ddb387462c7eaf 61bb78ad";
        assert!(matches!(s.add_phone("a", spaced, Environment::Production, None, None).unwrap(), Upsert::Added(_)));
        assert!(matches!(
            s.add_phone("a", &spaced.to_uppercase(), Environment::Sandbox, None, None).unwrap(),
            Upsert::Updated(_)
        ));
        let p = s.list_phones().unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].environment, "sandbox");
        assert_eq!(s.remove_phone(spaced).unwrap(), 1);
        assert!(s.remove_phone(spaced).is_err());
    }
}
