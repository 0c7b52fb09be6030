//! The field kit's tables and queries: presses of unbound buttons (for diag and learning),
//! learn requests (`dingdong doorbell learn`, fulfilled by the daemon across processes), and
//! the read-only views `diag` needs. Diag opens the database read-only: it changes nothing.

use super::{Result, Store, StoreError};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use std::path::Path;

/// Unknown buttons kept at most; the oldest go first (a neighbour's weather station must not
/// grow the table without bound).
const UNKNOWN_KEEP: i64 = 200;

/// What became of a press of a button no binding names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unbound {
    /// A `doorbell learn` was waiting: the button is now bound to this doorbell `(id, name)`.
    Learned(String, String),
    /// Recorded for diag; nothing rings.
    Recorded,
}

/// A button pressed while bound to nothing.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UnknownPress {
    pub source: String,
    pub key: String,
    pub topic: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub presses: i64,
}

/// A phone whose last push failed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FailingPhone {
    pub phone_id: i64,
    pub user: String,
    /// First 8 hex characters only.
    pub token: String,
    pub environment: String,
    pub last_outcome: String,
    pub at: Option<i64>,
}

impl Store {
    /// Opens an existing database read-only, without migrating: what diag uses.
    pub fn open_readonly(path: &Path) -> Result<Store> {
        let fail = |reason: String| StoreError::Open { path: path.display().to_string(), reason };
        if !path.exists() {
            return Err(fail("no such file".into()));
        }
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|e| fail(e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| fail(e.to_string()))?;
        // Opening is lazy: reading the header is what finds a file that is not a database.
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, u32>(0)).map_err(|e| fail(e.to_string()))?;
        Ok(Store { conn, recipients: Default::default(), house: Default::default() })
    }

    /// Migrations applied to this database (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<u32> {
        Ok(self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// `PRAGMA integrity_check`: `["ok"]` when sound, else up to `limit` problems.
    pub fn integrity_check(&self, limit: usize) -> Result<Vec<String>> {
        let mut st = self.conn.prepare(&format!("PRAGMA integrity_check({})", limit.max(1)))?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A press of a button bound to nothing: bound to the doorbell of the oldest live learn
    /// request if there is one, else recorded for diag. One transaction, so two daemons
    /// sharing the database cannot both claim the request.
    pub fn unbound_press(&mut self, source: &str, key: &str, topic: &str, now: i64) -> Result<Unbound> {
        let tx = self.conn.savepoint()?;
        let learn: Option<(String, String)> = tx
            .query_row(
                "SELECT l.doorbell_id, d.name FROM learn_requests l JOIN doorbells d ON d.id = l.doorbell_id
                 WHERE l.expires_at > ?1 AND l.learned_key IS NULL ORDER BY l.requested_at LIMIT 1",
                [now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((doorbell, name)) = learn {
            tx.execute(
                "INSERT INTO bindings (source, key, doorbell_id) VALUES (?1, ?2, ?3)
                 ON CONFLICT (source, key) DO UPDATE SET doorbell_id = excluded.doorbell_id",
                params![source, key, doorbell],
            )?;
            tx.execute(
                "UPDATE learn_requests SET learned_source = ?2, learned_key = ?3 WHERE doorbell_id = ?1",
                params![doorbell, source, key],
            )?;
            tx.execute("DELETE FROM unknown_presses WHERE source = ?1 AND key = ?2", params![source, key])?;
            tx.commit()?;
            return Ok(Unbound::Learned(doorbell, name));
        }
        tx.execute(
            "INSERT INTO unknown_presses (source, key, topic, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (source, key) DO UPDATE SET topic = excluded.topic, last_seen = excluded.last_seen,
                 presses = presses + 1",
            params![source, key, topic, now],
        )?;
        tx.execute(
            "DELETE FROM unknown_presses WHERE rowid NOT IN
                 (SELECT rowid FROM unknown_presses ORDER BY last_seen DESC LIMIT ?1)",
            [UNKNOWN_KEEP],
        )?;
        tx.commit()?;
        Ok(Unbound::Recorded)
    }

    /// Asks the daemon to bind the next unknown press to `doorbell` within `seconds`.
    pub fn request_learn(&mut self, doorbell: &str, seconds: u64, now: i64) -> Result<()> {
        self.doorbell_exists(doorbell)?;
        self.conn.execute(
            "INSERT OR REPLACE INTO learn_requests (doorbell_id, requested_at, expires_at) VALUES (?1, ?2, ?3)",
            params![doorbell, now, now + (seconds as i64) * 1000],
        )?;
        Ok(())
    }

    /// The `(source, key)` a learn request got, once the daemon fulfilled it.
    pub fn learn_result(&self, doorbell: &str) -> Result<Option<(String, String)>> {
        let row: Option<(Option<String>, Option<String>)> = self
            .conn
            .query_row(
                "SELECT learned_source, learned_key FROM learn_requests WHERE doorbell_id = ?1",
                [doorbell],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match row {
            Some((Some(s), Some(k))) => Some((s, k)),
            _ => None,
        })
    }

    /// Removes a learn request, fulfilled or not.
    pub fn end_learn(&mut self, doorbell: &str) -> Result<()> {
        self.conn.execute("DELETE FROM learn_requests WHERE doorbell_id = ?1", [doorbell])?;
        Ok(())
    }

    /// Unbound buttons pressed since `since` (ms), newest first.
    pub fn unknown_presses(&self, since: i64) -> Result<Vec<UnknownPress>> {
        let mut st = self.conn.prepare(
            "SELECT source, key, topic, first_seen, last_seen, presses FROM unknown_presses
             WHERE last_seen >= ?1 ORDER BY last_seen DESC",
        )?;
        let rows = st.query_map([since], |r| {
            Ok(UnknownPress {
                source: r.get(0)?,
                key: r.get(1)?,
                topic: r.get(2)?,
                first_seen: r.get(3)?,
                last_seen: r.get(4)?,
                presses: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Phones whose last push failed (not delivered, not merely retried).
    pub fn failing_phones(&self) -> Result<Vec<FailingPhone>> {
        let mut st = self.conn.prepare(
            "SELECT p.id, u.name, p.token, p.environment, p.last_outcome, p.last_outcome_at, p.platform
             FROM phones p JOIN users u ON u.id = p.user_id
             WHERE p.last_outcome IS NOT NULL AND p.last_outcome NOT LIKE 'delivered%'
                   AND p.last_outcome NOT LIKE 'retry%' AND p.last_outcome NOT LIKE 'pending%'
             ORDER BY p.id",
        )?;
        let rows = st.query_map([], |r| {
            let token: String = r.get(2)?;
            let platform: String = r.get(6)?;
            let platform = crate::domain::Platform::parse(&platform).unwrap_or(crate::domain::Platform::Apns);
            Ok(FailingPhone {
                phone_id: r.get(0)?,
                user: r.get(1)?,
                token: crate::domain::short_key(platform, &token),
                environment: r.get(3)?,
                last_outcome: r.get(4)?,
                at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many rings each doorbell has had, by doorbell id (a press on the native topic
    /// proves the doorbell is wired even without a binding).
    pub fn rings_per_doorbell(&self) -> Result<std::collections::HashMap<String, i64>> {
        let mut st = self.conn.prepare("SELECT doorbell_id, COUNT(*) FROM rings GROUP BY doorbell_id")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_binds_the_next_unknown_press_and_diag_sees_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let mut s = Store::open(&path).unwrap();
        s.add_user("o").unwrap();
        s.add_doorbell("front", None, "o").unwrap();
        assert_eq!(s.unbound_press("tasmota", "E5CD7E", "tele/a/RESULT", 1_000).unwrap(), Unbound::Recorded);
        assert_eq!(s.unbound_press("tasmota", "E5CD7E", "tele/a/RESULT", 2_000).unwrap(), Unbound::Recorded);
        let u = s.unknown_presses(0).unwrap();
        assert_eq!((u.len(), u[0].presses, u[0].first_seen, u[0].last_seen), (1, 2, 1_000, 2_000));

        s.request_learn("front", 60, 3_000).unwrap();
        assert!(s.request_learn("nope", 60, 3_000).is_err());
        assert_eq!(s.learn_result("front").unwrap(), None);
        let learned = s.unbound_press("rtl_433", "Quhwa/5860", "rtl_433/gw/events", 4_000).unwrap();
        assert_eq!(learned, Unbound::Learned("front".into(), "front".into()));
        assert_eq!(s.learn_result("front").unwrap(), Some(("rtl_433".into(), "Quhwa/5860".into())));
        assert_eq!(s.resolve_button("rtl_433", "Quhwa/5860").unwrap().unwrap().0, "front");
        // The request is used up: the next unknown press is only recorded.
        assert_eq!(s.unbound_press("zigbee2mqtt", "b/single", "zigbee2mqtt/b", 5_000).unwrap(), Unbound::Recorded);
        s.end_learn("front").unwrap();
        // An expired request binds nothing.
        s.request_learn("front", 1, 6_000).unwrap();
        assert_eq!(s.unbound_press("zigbee2mqtt", "b/single", "zigbee2mqtt/b", 8_000).unwrap(), Unbound::Recorded);
        // Binding by hand clears the unknown row.
        s.bind("front", "tasmota", "E5CD7E").unwrap();
        let keys: Vec<_> = s.unknown_presses(0).unwrap().into_iter().map(|u| u.key).collect();
        assert_eq!(keys, vec!["b/single"]);
        drop(s);

        let ro = Store::open_readonly(&path).unwrap();
        assert_eq!(ro.integrity_check(5).unwrap(), vec!["ok"]);
        assert_eq!(ro.schema_version().unwrap() as usize, super::super::schema::MIGRATIONS.len());
        assert!(Store::open_readonly(&dir.path().join("missing.db")).is_err());
        std::fs::write(dir.path().join("junk.db"), vec![0x55u8; 8192]).unwrap();
        assert!(Store::open_readonly(&dir.path().join("junk.db")).is_err());
    }
}
