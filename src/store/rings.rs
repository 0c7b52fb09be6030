//! Rings and their per-phone outcomes: the outbox's persistent half. A ring and every phone
//! it must reach are written in one transaction before the first send; outcomes are written
//! in batches; pruning honours re-registration.

use super::{Result, Store};
use crate::apns::{Environment, Outcome};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use std::sync::Arc;

/// What pressing the button did to the rings table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingStart {
    /// A new ring: send it.
    Created(RingJob),
    /// Inside the debounce window of an earlier ring: counted there.
    Folded { ring_id: String, presses: i64 },
    /// The same press again (MQTT QoS 1 redelivery): nothing to do.
    Duplicate { ring_id: String },
    /// Too old to be worth a push; recorded as expired.
    Expired { ring_id: String },
}

/// A ring to deliver, as the outbox needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingJob {
    pub ring_id: String,
    pub doorbell_id: String,
    pub doorbell_name: String,
    pub pressed_at: i64,
    pub received_at: i64,
    pub expires_at: i64,
    pub phones: Vec<JobPhone>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPhone {
    /// Position in the ring's job (the `ring_phones` key).
    pub seq: i64,
    pub phone_id: i64,
    /// Shared with the transport's targets: a big ring holds each token once.
    pub token: Arc<str>,
    pub environment: Environment,
    pub topic: Option<String>,
}

/// The press to record.
pub struct Press<'a> {
    pub ring_id: &'a str,
    pub doorbell_id: &'a str,
    pub doorbell_name: &'a str,
    pub pressed_at: i64,
    pub received_at: i64,
    pub expiry_ms: i64,
    pub debounce_ms: i64,
}

/// A ring's outcome, as published on `P/ring/<id>` and shown by diag.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RingSummary {
    pub ring_id: String,
    pub doorbell: String,
    pub state: String,
    pub pressed_at: i64,
    pub presses: i64,
    pub phones: i64,
    pub delivered: i64,
    pub failed: i64,
    pub pruned: i64,
    pub pending: i64,
    pub expired: i64,
}

/// One phone's line of a ring outcome; the token shortened to 8 hex characters.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PhoneOutcome {
    pub phone_id: i64,
    pub token: String,
    pub environment: String,
    pub state: String,
    pub reason: Option<String>,
}

/// The phones a press of `doorbell` reaches, on a connection or inside a transaction.
pub(crate) fn recipients_on(conn: &rusqlite::Connection, doorbell: &str) -> Result<Vec<JobPhone>> {
    let mut st = conn.prepare_cached(
        "SELECT MIN(p.id), p.token, p.environment, p.topic FROM phones p
         WHERE p.user_id IN (SELECT owner_id FROM doorbells WHERE id = ?1
                             UNION SELECT user_id FROM shares WHERE doorbell_id = ?1)
         GROUP BY p.token ORDER BY MIN(p.id)",
    )?;
    let rows = st.query_map([doorbell], |r| job_phone(r, 0))?;
    let mut phones = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    for (seq, p) in phones.iter_mut().enumerate() {
        p.seq = seq as i64;
    }
    Ok(phones)
}

/// Reads `(phone_id, token, environment, topic[, seq])` starting at column `at`.
fn job_phone(r: &rusqlite::Row, seq_col: usize) -> rusqlite::Result<JobPhone> {
    let env: String = r.get(2)?;
    let token: String = r.get(1)?;
    Ok(JobPhone {
        seq: if seq_col > 0 { r.get(seq_col)? } else { 0 },
        phone_id: r.get(0)?,
        token: token.into(),
        environment: Environment::parse(&env).unwrap_or(Environment::Production),
        topic: r.get(3)?,
    })
}

/// One answered phone, as the outbox hands it to [`Store::record_outcomes`].
#[derive(Debug, Clone)]
pub struct OutcomeRow {
    pub seq: i64,
    pub phone_id: i64,
    pub token: Arc<str>,
    pub outcome: Outcome,
}

/// What recording a batch of outcomes did to the phones table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub pruned: usize,
    /// Dead per Apple, but registered again after Apple's timestamp: kept.
    pub kept: usize,
}

impl Store {
    pub fn create_ring(&mut self, p: &Press) -> Result<RingStart> {
        let tx = self.conn.transaction()?;
        let exists: Option<i64> =
            tx.query_row("SELECT 1 FROM rings WHERE id = ?1", [p.ring_id], |r| r.get(0)).optional()?;
        if exists.is_some() {
            return Ok(RingStart::Duplicate { ring_id: p.ring_id.into() });
        }
        let folded: Option<String> = tx
            .query_row(
                "SELECT id FROM rings WHERE doorbell_id = ?1 AND state != 'expired' AND ABS(pressed_at - ?2) < ?3
                 ORDER BY pressed_at DESC LIMIT 1",
                params![p.doorbell_id, p.pressed_at, p.debounce_ms],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(ring_id) = folded {
            tx.execute("UPDATE rings SET presses = presses + 1 WHERE id = ?1", [&ring_id])?;
            let presses = tx.query_row("SELECT presses FROM rings WHERE id = ?1", [&ring_id], |r| r.get(0))?;
            tx.commit()?;
            return Ok(RingStart::Folded { ring_id, presses });
        }
        let expires_at = p.pressed_at + p.expiry_ms;
        if p.received_at >= expires_at {
            tx.execute(
                "INSERT INTO rings (id, doorbell_id, doorbell_name, pressed_at, received_at, expires_at, state, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'expired', ?5)",
                params![p.ring_id, p.doorbell_id, p.doorbell_name, p.pressed_at, p.received_at, expires_at],
            )?;
            tx.commit()?;
            return Ok(RingStart::Expired { ring_id: p.ring_id.into() });
        }
        tx.execute(
            "INSERT INTO rings (id, doorbell_id, doorbell_name, pressed_at, received_at, expires_at, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending')",
            params![p.ring_id, p.doorbell_id, p.doorbell_name, p.pressed_at, p.received_at, expires_at],
        )?;
        let phones = {
            let recipients = recipients_on(&tx, p.doorbell_id)?;
            let mut ins = tx.prepare_cached(
                "INSERT INTO ring_phones (ring_id, seq, token, phone_id, environment, topic, state, updated_at)
                 VALUES (?1, ?7, ?2, ?3, ?4, ?5, 'pending', ?6)",
            )?;
            for ph in &recipients {
                ins.execute(params![
                    p.ring_id,
                    &*ph.token,
                    ph.phone_id,
                    ph.environment.as_str(),
                    ph.topic,
                    p.received_at,
                    ph.seq
                ])?;
            }
            recipients
        };
        tx.commit()?;
        Ok(RingStart::Created(RingJob {
            ring_id: p.ring_id.into(),
            doorbell_id: p.doorbell_id.into(),
            doorbell_name: p.doorbell_name.into(),
            pressed_at: p.pressed_at,
            received_at: p.received_at,
            expires_at,
            phones,
        }))
    }

    /// Records a batch of outcomes in one transaction. Prunes dead tokens, unless the phone
    /// was registered again after Apple's timestamp.
    pub fn record_outcomes(&mut self, ring_id: &str, batch: &[OutcomeRow]) -> Result<Recorded> {
        let now = crate::now_ms();
        let mut rec = Recorded::default();
        // Deliveries are nearly all of a big ring: runs of consecutive sequence numbers are
        // written with one range statement each instead of two statements per phone.
        let mut delivered: Vec<i64> = batch.iter().filter(|r| r.outcome == Outcome::Delivered).map(|r| r.seq).collect();
        delivered.sort_unstable();
        let tx = self.conn.transaction()?;
        {
            let mut set_run = tx.prepare_cached(
                "UPDATE ring_phones SET state = 'delivered', reason = NULL, attempts = attempts + 1, updated_at = ?4
                 WHERE ring_id = ?1 AND seq BETWEEN ?2 AND ?3",
            )?;
            // Unchanged outcomes are not rewritten.
            let mut set_run_phones = tx.prepare_cached(
                "UPDATE phones SET last_outcome = 'delivered', last_outcome_at = ?4
                 WHERE id IN (SELECT phone_id FROM ring_phones WHERE ring_id = ?1 AND seq BETWEEN ?2 AND ?3)
                   AND last_outcome IS NOT 'delivered'",
            )?;
            let mut i = 0;
            while i < delivered.len() {
                let mut j = i;
                while j + 1 < delivered.len() && delivered[j + 1] == delivered[j] + 1 {
                    j += 1;
                }
                set_run.execute(params![ring_id, delivered[i], delivered[j], now])?;
                set_run_phones.execute(params![ring_id, delivered[i], delivered[j], now])?;
                i = j + 1;
            }
            let mut set_state = tx.prepare_cached(
                "UPDATE ring_phones SET state = ?3, reason = ?4, attempts = attempts + 1, updated_at = ?5 WHERE ring_id = ?1 AND seq = ?2",
            )?;
            let mut set_phone = tx.prepare_cached(
                "UPDATE phones SET last_outcome = ?2, last_outcome_at = ?3 WHERE id = ?1 AND last_outcome IS NOT ?2",
            )?;
            let mut prune =
                tx.prepare_cached("DELETE FROM phones WHERE token = ?1 AND (?2 IS NULL OR registered_at <= ?2)")?;
            for row in batch.iter().filter(|r| r.outcome != Outcome::Delivered) {
                let reason = row.outcome.reason().map(|r| r.to_string());
                let mut state = row.outcome.state();
                if let Outcome::Prune { since, .. } = &row.outcome {
                    if prune.execute(params![&*row.token, since])? > 0 {
                        rec.pruned += 1;
                    } else {
                        rec.kept += 1;
                        state = "failed";
                        set_phone.execute(params![row.phone_id, reason.as_deref().unwrap_or(""), now])?;
                    }
                } else {
                    let last = format!("{}: {}", row.outcome.state(), reason.as_deref().unwrap_or(""));
                    set_phone.execute(params![row.phone_id, last, now])?;
                }
                set_state.execute(params![ring_id, row.seq, state, reason, now])?;
            }
        }
        tx.commit()?;
        Ok(rec)
    }

    /// Marks what is still pending as expired (the ring's time ran out) and closes the ring.
    pub fn finish_ring(&mut self, ring_id: &str) -> Result<RingSummary> {
        let now = crate::now_ms();
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE ring_phones SET state = 'expired', reason = COALESCE(reason, 'Expired'), updated_at = ?2 WHERE ring_id = ?1 AND state = 'pending'",
            params![ring_id, now],
        )?;
        tx.execute(
            "UPDATE rings SET state = 'done', finished_at = ?2 WHERE id = ?1 AND state = 'pending'",
            params![ring_id, now],
        )?;
        tx.commit()?;
        self.ring_summary(ring_id)
    }

    pub fn ring_summary(&self, ring_id: &str) -> Result<RingSummary> {
        let (doorbell, state, pressed_at, presses): (String, String, i64, i64) = self.conn.query_row(
            "SELECT doorbell_id, state, pressed_at, presses FROM rings WHERE id = ?1",
            [ring_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let mut s = RingSummary {
            ring_id: ring_id.into(),
            doorbell,
            state,
            pressed_at,
            presses,
            phones: 0,
            delivered: 0,
            failed: 0,
            pruned: 0,
            pending: 0,
            expired: 0,
        };
        let mut st =
            self.conn.prepare_cached("SELECT state, COUNT(*) FROM ring_phones WHERE ring_id = ?1 GROUP BY state")?;
        let rows = st.query_map([ring_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (state, n) = row?;
            s.phones += n;
            match state.as_str() {
                "delivered" => s.delivered = n,
                "failed" => s.failed = n,
                "pruned" => s.pruned = n,
                "pending" => s.pending = n,
                "expired" => s.expired = n,
                _ => {}
            }
        }
        Ok(s)
    }

    /// Per-phone lines of a ring (tokens shortened), at most `limit`.
    pub fn ring_phones(&self, ring_id: &str, limit: usize) -> Result<Vec<PhoneOutcome>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT phone_id, token, environment, state, reason FROM ring_phones WHERE ring_id = ?1 ORDER BY seq LIMIT ?2")?;
        let rows = st.query_map(params![ring_id, limit as i64], |r| {
            let token: String = r.get(1)?;
            Ok(PhoneOutcome {
                phone_id: r.get(0)?,
                token: crate::util::short_token(&token).to_string(),
                environment: r.get(2)?,
                state: r.get(3)?,
                reason: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Rings left unfinished by a crash or a shutdown, with their still-pending phones.
    pub fn unfinished_rings(&self) -> Result<Vec<RingJob>> {
        let mut st = self.conn.prepare(
            "SELECT id, doorbell_id, doorbell_name, pressed_at, received_at, expires_at FROM rings WHERE state = 'pending' ORDER BY pressed_at",
        )?;
        let mut jobs: Vec<RingJob> = st
            .query_map([], |r| {
                Ok(RingJob {
                    ring_id: r.get(0)?,
                    doorbell_id: r.get(1)?,
                    doorbell_name: r.get(2)?,
                    pressed_at: r.get(3)?,
                    received_at: r.get(4)?,
                    expires_at: r.get(5)?,
                    phones: vec![],
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut ph = self
            .conn
            .prepare("SELECT phone_id, token, environment, topic, seq FROM ring_phones WHERE ring_id = ?1 AND state = 'pending' ORDER BY seq")?;
        for j in &mut jobs {
            j.phones = ph.query_map([&j.ring_id], |r| job_phone(r, 4))?.collect::<rusqlite::Result<_>>()?;
        }
        Ok(jobs)
    }

    /// Marks a ring expired (its time ran out while nobody could send it).
    pub fn expire_ring(&mut self, ring_id: &str) -> Result<RingSummary> {
        let now = crate::now_ms();
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE ring_phones SET state = 'expired', reason = 'Expired', updated_at = ?2 WHERE ring_id = ?1 AND state = 'pending'",
            params![ring_id, now],
        )?;
        tx.execute("UPDATE rings SET state = 'expired', finished_at = ?2 WHERE id = ?1", params![ring_id, now])?;
        tx.commit()?;
        self.ring_summary(ring_id)
    }

    /// The newest rings, for diag.
    pub fn recent_rings(&self, n: usize) -> Result<Vec<RingSummary>> {
        let ids: Vec<String> = self
            .conn
            .prepare("SELECT id FROM rings ORDER BY received_at DESC LIMIT ?1")?
            .query_map([n as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        ids.iter().map(|id| self.ring_summary(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apns::Reason;

    fn setup() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.add_user("o").unwrap();
        s.add_doorbell("front", Some("Front door"), "o").unwrap();
        for i in 1..=3 {
            s.add_phone("o", &format!("{i:02x}").repeat(32), Environment::Production, None, None).unwrap();
        }
        (dir, s)
    }

    fn press(id: &str, at: i64, now: i64) -> Press<'_> {
        Press {
            ring_id: id,
            doorbell_id: "front",
            doorbell_name: "Front door",
            pressed_at: at,
            received_at: now,
            expiry_ms: 300_000,
            debounce_ms: 3_000,
        }
    }

    #[test]
    fn debounce_duplicate_and_expiry() {
        let (_d, mut s) = setup();
        let RingStart::Created(job) = s.create_ring(&press("r1", 1_000_000, 1_000_010)).unwrap() else { panic!() };
        assert_eq!(job.phones.len(), 3);
        assert_eq!(
            s.create_ring(&press("r1", 1_000_000, 1_000_020)).unwrap(),
            RingStart::Duplicate { ring_id: "r1".into() }
        );
        assert_eq!(
            s.create_ring(&press("r2", 1_002_000, 1_002_000)).unwrap(),
            RingStart::Folded { ring_id: "r1".into(), presses: 2 }
        );
        assert!(matches!(s.create_ring(&press("r3", 1_004_000, 1_004_000)).unwrap(), RingStart::Created(_)));
        assert_eq!(s.create_ring(&press("r4", 1_000, 1_000_000)).unwrap(), RingStart::Expired { ring_id: "r4".into() });
        assert_eq!(s.unfinished_rings().unwrap().len(), 2);
    }

    #[test]
    fn delivered_runs_are_written_by_range_around_other_outcomes() {
        let (_d, mut s) = setup();
        for i in 4..=6 {
            s.add_phone("o", &format!("{i:02x}").repeat(32), Environment::Production, None, None).unwrap();
        }
        let RingStart::Created(job) = s.create_ring(&press("r1", 1_000_000, 1_000_010)).unwrap() else { panic!() };
        assert_eq!(job.phones.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5]);
        let failed = Outcome::Failed { reason: Reason::BadTopic, status: 400 };
        // Answers arrive out of order; seq 2 fails in the middle of a run of deliveries.
        let batch: Vec<OutcomeRow> = [5, 2, 0, 4, 1]
            .iter()
            .map(|&i| {
                let p = &job.phones[i];
                let outcome = if i == 2 { failed.clone() } else { Outcome::Delivered };
                OutcomeRow { seq: p.seq, phone_id: p.phone_id, token: p.token.clone(), outcome }
            })
            .collect();
        s.record_outcomes("r1", &batch).unwrap();
        let states: Vec<String> = s.ring_phones("r1", 10).unwrap().into_iter().map(|p| p.state).collect();
        assert_eq!(states, ["delivered", "delivered", "failed", "pending", "delivered", "delivered"]);
        let last: Vec<Option<String>> = s.list_phones().unwrap().into_iter().map(|p| p.last_outcome).collect();
        assert_eq!(last[0].as_deref(), Some("delivered"));
        assert_eq!(last[2].as_deref(), Some("failed: BadTopic"));
        assert_eq!(last[3], None, "seq 3 had no answer yet");
    }

    #[test]
    fn outcomes_prune_unless_re_registered() {
        let (_d, mut s) = setup();
        let RingStart::Created(job) = s.create_ring(&press("r1", 1_000_000, 1_000_010)).unwrap() else { panic!() };
        let now = crate::now_ms();
        let outcomes = [
            Outcome::Delivered,
            // Apple's timestamp after registration: pruned.
            Outcome::Prune { reason: Reason::Unregistered, since: Some(now + 60_000) },
            // Apple's timestamp before the phone registered again: kept.
            Outcome::Prune { reason: Reason::Unregistered, since: Some(now - 3_600_000) },
        ];
        let batch: Vec<OutcomeRow> = job
            .phones
            .iter()
            .zip(outcomes)
            .map(|(p, outcome)| OutcomeRow { seq: p.seq, phone_id: p.phone_id, token: p.token.clone(), outcome })
            .collect();
        assert_eq!(s.record_outcomes("r1", &batch).unwrap(), Recorded { pruned: 1, kept: 1 });
        let sum = s.finish_ring("r1").unwrap();
        assert_eq!((sum.phones, sum.delivered, sum.pruned, sum.failed), (3, 1, 1, 1));
        assert_eq!(s.list_phones().unwrap().len(), 2);
        assert_eq!(s.ring_phones("r1", 10).unwrap()[0].token.len(), 8);
        assert_eq!(s.recent_rings(5).unwrap().len(), 1);
    }
}
