//! Versioned migrations. `PRAGMA user_version` holds the number of migrations applied; each
//! runs in its own transaction, so a crash mid-migration leaves the previous version intact.

use rusqlite::Connection;

/// Migration N (1-based) is `MIGRATIONS[N-1]`. Never edit one that has shipped: add another.
pub const MIGRATIONS: &[&str] = &[
    // 1: the household, the phones, the radio bindings, and rings with per-phone outcomes
    // (which double as the outbox: a ring's phones are written before the first send).
    r#"
    CREATE TABLE users (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE doorbells (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        owner_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE RESTRICT,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE shares (
        doorbell_id TEXT NOT NULL REFERENCES doorbells(id) ON DELETE CASCADE,
        user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        PRIMARY KEY (doorbell_id, user_id)
    );
    CREATE INDEX shares_user ON shares(user_id);
    CREATE TABLE phones (
        id              INTEGER PRIMARY KEY,
        user_id         INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        token           TEXT NOT NULL,
        environment     TEXT NOT NULL CHECK (environment IN ('sandbox', 'production')),
        topic           TEXT,
        name            TEXT,
        registered_at   INTEGER NOT NULL,
        last_outcome    TEXT,
        last_outcome_at INTEGER,
        UNIQUE (user_id, token)
    );
    CREATE INDEX phones_token ON phones(token);
    CREATE TABLE bindings (
        source      TEXT NOT NULL CHECK (source IN ('native', 'rtl_433', 'tasmota', 'zigbee2mqtt')),
        key         TEXT NOT NULL,
        doorbell_id TEXT NOT NULL REFERENCES doorbells(id) ON DELETE CASCADE,
        PRIMARY KEY (source, key)
    );
    CREATE TABLE rings (
        id            TEXT PRIMARY KEY,
        doorbell_id   TEXT NOT NULL,
        doorbell_name TEXT NOT NULL,
        pressed_at    INTEGER NOT NULL,
        received_at   INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        presses       INTEGER NOT NULL DEFAULT 1,
        state         TEXT NOT NULL CHECK (state IN ('pending', 'done', 'expired')),
        finished_at   INTEGER
    );
    CREATE INDEX rings_doorbell ON rings(doorbell_id, pressed_at);
    CREATE INDEX rings_state ON rings(state);
    CREATE TABLE ring_phones (
        ring_id     TEXT NOT NULL REFERENCES rings(id) ON DELETE CASCADE,
        -- The phone's place in the job: rows are written and updated in this order, so a
        -- 120,000-phone ring touches the B-tree sequentially instead of at random tokens.
        seq         INTEGER NOT NULL,
        token       TEXT NOT NULL,
        phone_id    INTEGER NOT NULL,
        environment TEXT NOT NULL,
        topic       TEXT,
        state       TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'pruned', 'expired')),
        reason      TEXT,
        attempts    INTEGER NOT NULL DEFAULT 0,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (ring_id, seq)
    ) WITHOUT ROWID;
    "#,
    // 2 (field kit): presses of buttons bound to nothing, one row per button, for diag and
    // `doorbell learn`; and learn requests, which the daemon fulfils with the next such press.
    r#"
    CREATE TABLE unknown_presses (
        source      TEXT NOT NULL,
        key         TEXT NOT NULL,
        topic       TEXT NOT NULL,
        first_seen  INTEGER NOT NULL,
        last_seen   INTEGER NOT NULL,
        presses     INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (source, key)
    );
    CREATE INDEX unknown_presses_seen ON unknown_presses(last_seen);
    CREATE TABLE learn_requests (
        doorbell_id   TEXT PRIMARY KEY REFERENCES doorbells(id) ON DELETE CASCADE,
        requested_at  INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        learned_source TEXT,
        learned_key   TEXT
    );
    "#,
    // 3 (pairing): per-phone secrets for signed requests, pairing windows (only a salted hash
    // of each code), the nonces of signed requests and rate-limit events. All of it lives here,
    // not in memory, so a second instance sharing the database enforces the same limits.
    r#"
    CREATE TABLE phone_secrets (
        phone_id    INTEGER PRIMARY KEY REFERENCES phones(id) ON DELETE CASCADE,
        secret      BLOB NOT NULL,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE pair_windows (
        id              INTEGER PRIMARY KEY,
        salt            BLOB NOT NULL,
        code_hash       BLOB NOT NULL,
        user_name       TEXT NOT NULL,
        share_doorbell  TEXT,
        opened_by       TEXT NOT NULL,
        opened_at       INTEGER NOT NULL,
        expires_at      INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        state           TEXT NOT NULL CHECK (state IN ('open', 'used', 'locked')),
        phone_id        INTEGER
    );
    CREATE INDEX pair_windows_open ON pair_windows(state, expires_at);
    CREATE TABLE pair_nonces (
        phone_id    INTEGER NOT NULL,
        nonce       TEXT NOT NULL,
        keep_until  INTEGER NOT NULL,
        PRIMARY KEY (phone_id, nonce)
    ) WITHOUT ROWID;
    CREATE INDEX pair_nonces_keep ON pair_nonces(keep_until);
    CREATE TABLE rate_events (
        scope   TEXT NOT NULL,
        at      INTEGER NOT NULL
    );
    CREATE INDEX rate_events_scope ON rate_events(scope, at);
    "#,
    // 4 (outbox v2): a ring's phones are no longer copied when it starts (copying 120,000 rows
    // cost half a second before the first send). A ring keeps its recipient count; a run of
    // deliveries is one `ring_runs` row (phone ids lo..=hi, `phones` of them); every other final
    // outcome is one `ring_outcomes` row. What is pending is the doorbell's recipients minus
    // both. `phones.last_outcome` now holds the last problem only: a delivery clears it, and a
    // phone without a problem is never rewritten.
    r#"
    ALTER TABLE rings ADD COLUMN phones INTEGER NOT NULL DEFAULT 0;
    UPDATE rings SET phones = (SELECT COUNT(*) FROM ring_phones WHERE ring_id = rings.id);
    CREATE TABLE ring_outcomes (
        ring_id     TEXT NOT NULL REFERENCES rings(id) ON DELETE CASCADE,
        phone_id    INTEGER NOT NULL,
        token       TEXT NOT NULL,
        environment TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('delivered', 'failed', 'pruned', 'expired')),
        reason      TEXT,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (ring_id, phone_id)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO ring_outcomes (ring_id, phone_id, token, environment, state, reason, updated_at)
        SELECT ring_id, phone_id, token, environment, state, reason, updated_at FROM ring_phones
        WHERE state != 'pending';
    CREATE TABLE ring_runs (
        ring_id     TEXT NOT NULL REFERENCES rings(id) ON DELETE CASCADE,
        lo          INTEGER NOT NULL,
        hi          INTEGER NOT NULL,
        phones      INTEGER NOT NULL,
        at          INTEGER NOT NULL
    );
    CREATE INDEX ring_runs_ring ON ring_runs(ring_id, lo);
    DROP TABLE ring_phones;
    CREATE INDEX phones_user ON phones(user_id);
    UPDATE phones SET last_outcome = NULL, last_outcome_at = NULL WHERE last_outcome LIKE 'delivered%';
    CREATE INDEX phones_problem ON phones(id) WHERE last_outcome IS NOT NULL;
    "#,
    // 5: a counter of changes to who a press reaches. Triggers move it when a phone is removed
    // or changed (but not its last problem) and on any change to shares, doorbells and users,
    // whichever process makes it. A new phone needs no trigger (one per row would make an
    // import of 120,000 phones four times slower): it raises MAX(phones.id). A recipient list
    // read for an earlier ring is reused only while neither has moved.
    r#"
    CREATE TABLE recipients_version (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        n  INTEGER NOT NULL
    );
    INSERT INTO recipients_version (id, n) VALUES (1, 0);
    CREATE TRIGGER phones_removed AFTER DELETE ON phones
        BEGIN UPDATE recipients_version SET n = n + 1; END;
    CREATE TRIGGER phones_changed AFTER UPDATE OF id, user_id, token, environment, topic ON phones
        BEGIN UPDATE recipients_version SET n = n + 1; END;
    CREATE TRIGGER shares_added AFTER INSERT ON shares
        BEGIN UPDATE recipients_version SET n = n + 1; END;
    CREATE TRIGGER shares_removed AFTER DELETE ON shares
        BEGIN UPDATE recipients_version SET n = n + 1; END;
    CREATE TRIGGER shares_changed AFTER UPDATE ON shares
        BEGIN UPDATE recipients_version SET n = n + 1; END;
    CREATE TRIGGER doorbells_added AFTER INSERT ON doorbells
        BEGIN UPDATE recipients_version SET n = n + 1; END;
    CREATE TRIGGER doorbells_removed AFTER DELETE ON doorbells
        BEGIN UPDATE recipients_version SET n = n + 1; END;
    CREATE TRIGGER doorbells_changed AFTER UPDATE OF id, owner_id ON doorbells
        BEGIN UPDATE recipients_version SET n = n + 1; END;
    CREATE TRIGGER users_removed AFTER DELETE ON users
        BEGIN UPDATE recipients_version SET n = n + 1; END;
    "#,
    // 6 (pairing v2): SPAKE2 needs the code itself, so a window keeps its 8 digits while it is
    // open, and only then (`code` is NULL in every other state; v1 windows held a hash of a
    // 6-digit code and cannot be redeemed by v2 phones, so they are dropped). Removing a user,
    // a share or a doorbell revokes the open windows that would grant it, whichever process
    // removes it. Phones have a platform; FCM tokens live in `token`, a Web Push phone keeps
    // its endpoint there and its whole checked PushSubscription JSON in `subscription`.
    r#"
    DROP TABLE pair_windows;
    CREATE TABLE pair_windows (
        id              INTEGER PRIMARY KEY,
        code            TEXT,
        user_name       TEXT NOT NULL,
        share_doorbell  TEXT,
        opened_by       TEXT NOT NULL,
        opened_at       INTEGER NOT NULL,
        expires_at      INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        state           TEXT NOT NULL CHECK (state IN ('open', 'used', 'locked', 'revoked', 'expired')),
        phone_id        INTEGER,
        CHECK (state = 'open' OR code IS NULL)
    );
    CREATE INDEX pair_windows_open ON pair_windows(state, expires_at);
    CREATE TRIGGER pair_windows_user_removed AFTER DELETE ON users
        BEGIN UPDATE pair_windows SET state = 'revoked', code = NULL
              WHERE state = 'open' AND user_name = OLD.name; END;
    CREATE TRIGGER pair_windows_share_removed AFTER DELETE ON shares
        BEGIN UPDATE pair_windows SET state = 'revoked', code = NULL
              WHERE state = 'open' AND share_doorbell = OLD.doorbell_id
                AND user_name IN (SELECT name FROM users WHERE id = OLD.user_id); END;
    CREATE TRIGGER pair_windows_doorbell_removed AFTER DELETE ON doorbells
        BEGIN UPDATE pair_windows SET state = 'revoked', code = NULL
              WHERE state = 'open' AND share_doorbell = OLD.id; END;
    ALTER TABLE phones ADD COLUMN platform TEXT NOT NULL DEFAULT 'apns'
        CHECK (platform IN ('apns', 'fcm', 'webpush'));
    ALTER TABLE phones ADD COLUMN subscription TEXT;
    DROP TRIGGER phones_changed;
    CREATE TRIGGER phones_changed AFTER UPDATE OF id, user_id, token, environment, topic, platform, subscription ON phones
        BEGIN UPDATE recipients_version SET n = n + 1; END;
    "#,
    // 7 (ops): what the outbox measured of each ring (press received -> first answer, -> last
    // answer, in ms) for `dingdong rings`; an index on when rings arrived, for the history's
    // listing and its pruning; and a counter of changes to doorbells (added, removed,
    // renamed), which the daemon watches to announce them to Home Assistant whichever
    // process made the change.
    r#"
    ALTER TABLE rings ADD COLUMN first_ms INTEGER;
    ALTER TABLE rings ADD COLUMN all_ms INTEGER;
    CREATE INDEX rings_received ON rings(received_at);
    CREATE TABLE doorbells_version (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        n  INTEGER NOT NULL
    );
    INSERT INTO doorbells_version (id, n) VALUES (1, 0);
    CREATE TRIGGER doorbells_version_added AFTER INSERT ON doorbells
        BEGIN UPDATE doorbells_version SET n = n + 1; END;
    CREATE TRIGGER doorbells_version_removed AFTER DELETE ON doorbells
        BEGIN UPDATE doorbells_version SET n = n + 1; END;
    CREATE TRIGGER doorbells_version_changed AFTER UPDATE OF id, name ON doorbells
        BEGIN UPDATE doorbells_version SET n = n + 1; END;
    "#,
    // 8 (every phone in the house): 6 gave phones their platform and Web Push phones their
    // subscription; the outcomes of a ring now record the platform too, so a pruned phone's
    // line (the phone row is gone) still says what it was, for `rings show` and the published
    // outcome.
    r#"
    ALTER TABLE ring_outcomes ADD COLUMN platform TEXT NOT NULL DEFAULT 'apns'
        CHECK (platform IN ('apns', 'fcm', 'webpush'));
    "#,
    // 9 (household controls): each person's rules (alert level and sound, quiet hours, a
    // snooze), for every doorbell (doorbell_id '') or one, as the JSON of
    // `domain::household::Rules`; a counter the daemon watches to refresh its view of them
    // whichever process changed them; who answered a ring ("I'm coming") and when; and two
    // more per-phone states, `muted` (not sent) and `silenced` (sent quietly). SQLite cannot
    // change a CHECK, so the outcomes table is rebuilt with its rows.
    r#"
    CREATE TABLE household_rules (
        user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        doorbell_id TEXT NOT NULL DEFAULT '',
        rules       TEXT NOT NULL,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (user_id, doorbell_id)
    );
    CREATE TABLE household_version (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        n  INTEGER NOT NULL
    );
    INSERT INTO household_version (id, n) VALUES (1, 0);
    CREATE TRIGGER household_rules_added AFTER INSERT ON household_rules
        BEGIN UPDATE household_version SET n = n + 1; END;
    CREATE TRIGGER household_rules_changed AFTER UPDATE ON household_rules
        BEGIN UPDATE household_version SET n = n + 1; END;
    CREATE TRIGGER household_rules_removed AFTER DELETE ON household_rules
        BEGIN UPDATE household_version SET n = n + 1; END;
    CREATE TRIGGER household_doorbell_removed AFTER DELETE ON doorbells
        BEGIN DELETE FROM household_rules WHERE doorbell_id = OLD.id; END;
    ALTER TABLE rings ADD COLUMN answered_by TEXT;
    ALTER TABLE rings ADD COLUMN answered_at INTEGER;
    CREATE TABLE ring_outcomes_v9 (
        ring_id     TEXT NOT NULL REFERENCES rings(id) ON DELETE CASCADE,
        phone_id    INTEGER NOT NULL,
        token       TEXT NOT NULL,
        environment TEXT NOT NULL,
        state       TEXT NOT NULL
            CHECK (state IN ('delivered', 'failed', 'pruned', 'expired', 'muted', 'silenced')),
        reason      TEXT,
        updated_at  INTEGER NOT NULL,
        platform    TEXT NOT NULL DEFAULT 'apns' CHECK (platform IN ('apns', 'fcm', 'webpush')),
        PRIMARY KEY (ring_id, phone_id)
    ) WITHOUT ROWID;
    INSERT INTO ring_outcomes_v9 (ring_id, phone_id, token, environment, state, reason, updated_at, platform)
        SELECT ring_id, phone_id, token, environment, state, reason, updated_at, platform FROM ring_outcomes;
    DROP TABLE ring_outcomes;
    ALTER TABLE ring_outcomes_v9 RENAME TO ring_outcomes;
    "#,
];

pub fn migrate(conn: &mut Connection) -> rusqlite::Result<u32> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
    }
    Ok(MIGRATIONS.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// A database an older dingdong left (schema 5) is backed up beside itself, privately,
    /// before it is migrated; opening it again takes no second backup. A database a newer
    /// dingdong wrote is refused with one line, untouched.
    #[test]
    fn a_migration_is_preceded_by_a_backup_and_a_newer_database_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            for (i, sql) in MIGRATIONS[..5].iter().enumerate() {
                let tx = conn.transaction().unwrap();
                tx.execute_batch(sql).unwrap();
                tx.pragma_update(None, "user_version", (i + 1) as u32).unwrap();
                tx.commit().unwrap();
            }
            conn.execute("INSERT INTO users (name, created_at) VALUES ('alice', 0)", []).unwrap();
        }
        let backups = || -> Vec<std::path::PathBuf> {
            let mut v: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().ends_with(".bak"))
                .collect();
            v.sort();
            v
        };
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap() as usize, MIGRATIONS.len());
        drop(s);
        let taken = backups();
        assert_eq!(taken.len(), 1, "{taken:?}");
        let name = taken[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("d.db.v5-") && name.ends_with("Z.bak"), "{name}");
        assert_eq!(std::fs::metadata(&taken[0]).unwrap().permissions().mode() & 0o777, 0o600);
        let old = Store::open_readonly(&taken[0]).unwrap();
        assert_eq!((old.schema_version().unwrap(), old.counts().unwrap().0), (5, 1));
        drop(Store::open(&path).unwrap());
        assert_eq!(backups().len(), 1, "nothing to migrate: no backup");

        let newer = MIGRATIONS.len() as u32 + 1;
        Connection::open(&path).unwrap().pragma_update(None, "user_version", newer).unwrap();
        let e = Store::open(&path).err().expect("refused").to_string();
        assert!(e.contains(&format!("schema version {newer} is newer than this dingdong knows")), "{e}");
        assert!(e.contains("fix:") && !e.contains('\n'), "{e}");
        let still: u32 = Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(still, newer, "untouched");
    }

    /// A database of version 3 with a ring under way (ring_phones rows) migrates to the
    /// outbox without copies: settled phones keep their outcome, the pending one is resumed.
    #[test]
    fn migration_4_keeps_outcomes_and_resumes_what_was_pending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS[..3].iter().enumerate() {
                conn.execute_batch(sql).unwrap();
                conn.pragma_update(None, "user_version", (i + 1) as u32).unwrap();
            }
            let tx = conn.transaction().unwrap();
            tx.execute_batch(
                "INSERT INTO users (id, name, created_at) VALUES (1, 'o', 0);
                 INSERT INTO doorbells (id, name, owner_id, created_at) VALUES ('front', 'Front', 1, 0);",
            )
            .unwrap();
            for (id, last) in [(1, Some("delivered")), (2, Some("failed: BadTopic")), (3, None)] {
                tx.execute(
                    "INSERT INTO phones (id, user_id, token, environment, registered_at, last_outcome)
                     VALUES (?1, 1, ?2, 'production', 0, ?3)",
                    rusqlite::params![id, format!("{id:02x}").repeat(32), last],
                )
                .unwrap();
            }
            let far = crate::domain::now_ms() + 600_000;
            tx.execute(
                "INSERT INTO rings (id, doorbell_id, doorbell_name, pressed_at, received_at, expires_at, state)
                 VALUES ('r1', 'front', 'Front', 0, 0, ?1, 'pending')",
                [far],
            )
            .unwrap();
            for (seq, state) in [(0, "delivered"), (1, "failed"), (2, "pending")] {
                tx.execute(
                    "INSERT INTO ring_phones (ring_id, seq, token, phone_id, environment, state, updated_at)
                     VALUES ('r1', ?1, ?2, ?3, 'production', ?4, 0)",
                    rusqlite::params![seq, format!("{:02x}", seq + 1).repeat(32), seq + 1, state],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        let sum = s.ring_summary("r1").unwrap();
        assert_eq!((sum.phones, sum.delivered, sum.failed, sum.pending), (3, 1, 1, 1));
        let jobs = s.unfinished_rings().unwrap();
        assert_eq!(jobs[0].phones.targets.iter().map(|p| p.phone_id).collect::<Vec<_>>(), [3]);
        let last: Vec<Option<String>> = s.list_phones().unwrap().into_iter().map(|p| p.last_outcome).collect();
        assert_eq!(last, [None, Some("failed: BadTopic".into()), None], "only problems are kept");
    }
}
