//! Rings and their per-phone outcomes: the outbox's persistent half. A ring and every phone
//! it must reach are written in one transaction before the first send; outcomes are written
//! in batches; pruning honours re-registration.

use super::recipients::{recipients_bound, KeptRecipients, READ_LATER_FROM};
pub use super::recipients::{recipients_on, JobPhone, Recipients, Topics};
use super::{Result, Store};
use crate::domain::{Address, Outcome, PhoneState, Platform, RingState};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

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
    /// The phones to reach. A phone's place in `phones.targets` is its `seq` in the job:
    /// consecutive deliveries are recorded as one run.
    pub phones: Recipients,
    /// The phones were not read yet (a big doorbell, recorded with [`Press::read_later`]):
    /// the outbox reads them with [`Store::read_recipients`] while it sends the first.
    pub unread: bool,
    /// When the phones were read (µs since the epoch), for the ring's timing.
    pub read_at_us: Option<i64>,
    /// The household's rules when the ring was recorded; `None` when nobody has any.
    pub house: Option<std::sync::Arc<super::household::House>>,
}

/// The press to record.
pub struct Press<'a> {
    pub ring_id: &'a str,
    pub doorbell_id: &'a str,
    pub doorbell_name: &'a str,
    pub pressed_at: i64,
    pub received_at: i64,
    /// When the press is recorded: later than `received_at` when the store was failing and
    /// the press was kept meanwhile; expiry is judged against it.
    pub recorded_at: i64,
    pub expiry_ms: i64,
    pub debounce_ms: i64,
    /// A big doorbell's recipients may be left to the outbox to read (see
    /// [`super::recipients::READ_LATER_FROM`]), so that the ring is recorded at once.
    pub read_later: bool,
}

/// A ring's outcome, as published on `P/ring/<id>` and shown by diag.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RingSummary {
    pub ring_id: String,
    pub doorbell: String,
    pub state: RingState,
    pub pressed_at: i64,
    pub presses: i64,
    pub phones: i64,
    pub delivered: i64,
    pub failed: i64,
    pub pruned: i64,
    pub pending: i64,
    pub expired: i64,
    /// Not sent: their person's mute or quiet hours (skip).
    pub muted: i64,
    /// Sent passive and silent: their person's mute or quiet hours (silent).
    pub silenced: i64,
    /// Who answered "I'm coming" first, and when (UNIX ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<i64>,
}

/// One phone's line of a ring outcome (published with the token shortened: 8 characters of a
/// token, the host and 8 characters of a Web Push endpoint).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PhoneOutcome {
    pub phone_id: i64,
    pub platform: Platform,
    pub token: String,
    pub environment: String,
    pub state: PhoneState,
    pub reason: Option<String>,
}

/// What the outbox measured of a ring: press received -> first answer from the push service,
/// and -> every phone answered (ms). Stored with the ring and published with its outcome.
#[derive(Debug, Default, Serialize, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    pub first: Option<i64>,
    pub all: Option<i64>,
}

/// One answered phone, as the outbox hands it to [`Store::record_outcomes`].
#[derive(Debug, Clone)]
pub struct OutcomeRow {
    pub seq: i64,
    pub phone_id: i64,
    pub address: Address,
    pub outcome: Outcome,
}

/// What recording a batch of outcomes did to the phones table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub pruned: usize,
    /// Dead per Apple, but registered again after Apple's timestamp: kept.
    pub kept: usize,
    /// The phones kept, recorded as failed instead of pruned.
    pub kept_phones: Vec<i64>,
}

/// What a ring's phones have come to: the settled counts, and the recorded outcomes.
struct Settled {
    /// Deliveries recorded as runs of phone ids, `(lo, hi)` sorted by `lo`.
    runs: Vec<(i64, i64)>,
    run_phones: i64,
    /// Phone id -> `(token, environment, state, reason, platform)` of every other final outcome.
    outcomes: std::collections::HashMap<i64, (String, String, PhoneState, Option<String>, Platform)>,
}

impl Settled {
    fn count(&self) -> i64 {
        self.run_phones + self.outcomes.len() as i64
    }

    fn in_run(&self, phone_id: i64) -> bool {
        let i = self.runs.partition_point(|&(lo, _)| lo <= phone_id);
        i > 0 && self.runs[i - 1].1 >= phone_id
    }
}

impl Store {
    /// Records a press. A new ring is one row (with its recipient count), written before
    /// the first send; its phones are the doorbell's recipients, read here, not copied.
    ///
    /// A big doorbell's recipient list (a building: 120,000 phones take 50-100 ms to read)
    /// is kept after its ring and reused by the next while `recipients_version`, which
    /// triggers move on any change to who a press reaches, has not moved.
    pub fn create_ring(&mut self, p: &Press) -> Result<RingStart> {
        let mut kept = std::mem::take(&mut self.recipients);
        let started = self.create_ring_keeping(p, &mut kept);
        self.recipients = kept;
        let mut started = started?;
        if let RingStart::Created(job) = &mut started {
            // The household's rules never cost a ring: without them it rings as usual.
            job.house = self.house().unwrap_or_else(|e| {
                tracing::warn!(ring = %job.ring_id, error = %e, "household rules unreadable: ringing as usual");
                None
            });
        }
        Ok(started)
    }

    fn create_ring_keeping(&mut self, p: &Press, kept: &mut KeptRecipients) -> Result<RingStart> {
        // A savepoint: its own transaction, or a part of a batch's (`record_presses`).
        let tx = self.conn.savepoint()?;
        let exists: Option<i64> =
            tx.query_row("SELECT 1 FROM rings WHERE id = ?1", [p.ring_id], |r| r.get(0)).optional()?;
        if exists.is_some() {
            return Ok(RingStart::Duplicate { ring_id: p.ring_id.into() });
        }
        let folded: Option<String> = tx
            .query_row(
                "SELECT id FROM rings WHERE doorbell_id = ?1 AND state != ?4
                   AND pressed_at > ?2 - ?3 AND pressed_at < ?2 + ?3
                 ORDER BY pressed_at DESC LIMIT 1",
                params![p.doorbell_id, p.pressed_at, p.debounce_ms, RingState::Expired],
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
        if p.received_at.max(p.recorded_at) >= expires_at {
            tx.execute(
                "INSERT INTO rings (id, doorbell_id, doorbell_name, pressed_at, received_at, expires_at, state, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?5)",
                params![p.ring_id, p.doorbell_id, p.doorbell_name, p.pressed_at, p.received_at, expires_at, RingState::Expired],
            )?;
            tx.commit()?;
            return Ok(RingStart::Expired { ring_id: p.ring_id.into() });
        }
        // A big doorbell's list, unless kept, is read by the outbox while it sends: the ring
        // counts at most `bound` phones until then (what expires unread is counted right).
        let (phones, bound) = match kept.get(&tx, p.doorbell_id)? {
            Some(phones) => (phones, None),
            None => match p.read_later.then(|| recipients_bound(&tx, p.doorbell_id)).transpose()? {
                Some(bound) if bound >= READ_LATER_FROM => (Recipients::default(), Some(bound)),
                _ => (kept.read(&tx, p.doorbell_id)?, None),
            },
        };
        let unread = bound.is_some();
        let read_at_us = (!unread).then(crate::domain::now_us);
        let count = bound.unwrap_or(phones.len());
        tx.execute(
            "INSERT INTO rings (id, doorbell_id, doorbell_name, pressed_at, received_at, expires_at, state, phones)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?8, ?7)",
            params![
                p.ring_id,
                p.doorbell_id,
                p.doorbell_name,
                p.pressed_at,
                p.received_at,
                expires_at,
                count,
                RingState::Pending
            ],
        )?;
        tx.commit()?;
        Ok(RingStart::Created(RingJob {
            ring_id: p.ring_id.into(),
            doorbell_id: p.doorbell_id.into(),
            doorbell_name: p.doorbell_name.into(),
            pressed_at: p.pressed_at,
            received_at: p.received_at,
            expires_at,
            phones,
            unread,
            read_at_us,
            house: None,
        }))
    }

    /// Records a batch of outcomes in one transaction. A run of consecutive deliveries (by
    /// `seq`, the place in the job, which is phone-id order) is one row, however long; every
    /// other outcome is one row. Prunes dead tokens, unless the phone was registered again
    /// after Apple's timestamp. A phone's `last_outcome` (its last problem) is written only
    /// when it changes.
    pub fn record_outcomes(&mut self, ring_id: &str, batch: &[OutcomeRow]) -> Result<Recorded> {
        let now = crate::domain::now_ms();
        let mut rec = Recorded::default();
        let mut delivered: Vec<(i64, i64)> =
            batch.iter().filter(|r| r.outcome == Outcome::Delivered).map(|r| (r.seq, r.phone_id)).collect();
        delivered.sort_unstable();
        let tx = self.conn.transaction()?;
        {
            let mut add_run =
                tx.prepare_cached("INSERT INTO ring_runs (ring_id, lo, hi, phones, at) VALUES (?1, ?2, ?3, ?4, ?5)")?;
            // Problems of the household's phones in the run are cleared; the partial index
            // makes this touch only phones that have one.
            let mut clear_problems = tx.prepare_cached(
                "UPDATE phones SET last_outcome = NULL, last_outcome_at = NULL
                 WHERE last_outcome IS NOT NULL AND id BETWEEN ?2 AND ?3
                   AND user_id IN (SELECT owner_id FROM doorbells WHERE id = (SELECT doorbell_id FROM rings WHERE id = ?1)
                                   UNION SELECT user_id FROM shares WHERE doorbell_id = (SELECT doorbell_id FROM rings WHERE id = ?1))",
            )?;
            // Nearly always no phone of the batch's id span has a problem to clear: one
            // look at the partial index then spares a statement per run.
            let problems = match (delivered.first(), delivered.last()) {
                (Some(&(_, lo)), Some(&(_, hi))) => tx
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM phones WHERE last_outcome IS NOT NULL AND id BETWEEN ?1 AND ?2)",
                    )?
                    .query_row(params![lo, hi], |r| r.get::<_, bool>(0))?,
                _ => false,
            };
            let mut i = 0;
            while i < delivered.len() {
                let mut j = i;
                while j + 1 < delivered.len() && delivered[j + 1].0 == delivered[j].0 + 1 {
                    j += 1;
                }
                let (lo, hi) = (delivered[i].1, delivered[j].1);
                add_run.execute(params![ring_id, lo, hi, j - i + 1, now])?;
                if problems {
                    clear_problems.execute(params![ring_id, lo, hi])?;
                }
                i = j + 1;
            }
            let mut add_outcome = tx.prepare_cached(
                "INSERT OR REPLACE INTO ring_outcomes (ring_id, phone_id, token, environment, state, reason, updated_at, platform)
                 VALUES (?1, ?2, ?3, (SELECT environment FROM phones WHERE id = ?2), ?4, ?5, ?6, ?7)",
            )?;
            let mut set_problem = tx.prepare_cached(
                "UPDATE phones SET last_outcome = ?2, last_outcome_at = ?3 WHERE id = ?1 AND last_outcome IS NOT ?2",
            )?;
            let mut prune = tx.prepare_cached(
                "DELETE FROM phones WHERE token = ?1 AND platform = ?3 AND (?2 IS NULL OR registered_at <= ?2)",
            )?;
            for row in batch.iter().filter(|r| r.outcome != Outcome::Delivered) {
                let reason = row.outcome.reason().map(|r| r.to_string());
                let mut state = row.outcome.state();
                let token = row.address.key();
                let platform = row.address.platform();
                // Written before a prune deletes the phone (the environment comes from it).
                add_outcome.execute(params![ring_id, row.phone_id, token, state, reason, now, platform])?;
                if row.outcome.is_fine() {
                    // Muted or silenced by the household's own rules: nothing wrong with the phone.
                    continue;
                }
                if let Outcome::Prune { since, .. } = &row.outcome {
                    if prune.execute(params![token, since, platform])? > 0 {
                        rec.pruned += 1;
                    } else {
                        rec.kept += 1;
                        rec.kept_phones.push(row.phone_id);
                        state = PhoneState::Failed;
                        tx.execute(
                            "UPDATE ring_outcomes SET state = ?3 WHERE ring_id = ?1 AND phone_id = ?2",
                            params![ring_id, row.phone_id, state],
                        )?;
                        set_problem.execute(params![row.phone_id, reason.as_deref().unwrap_or(""), now])?;
                    }
                } else {
                    let last = format!("{state}: {}", reason.as_deref().unwrap_or(""));
                    set_problem.execute(params![row.phone_id, last, now])?;
                }
            }
        }
        tx.commit()?;
        Ok(rec)
    }

    /// What is recorded for `ring_id` so far.
    fn settled(&self, ring_id: &str) -> Result<Settled> {
        let mut runs = Vec::new();
        let mut run_phones = 0;
        let mut st = self.conn.prepare_cached("SELECT lo, hi, phones FROM ring_runs WHERE ring_id = ?1 ORDER BY lo")?;
        let mut rows = st.query([ring_id])?;
        while let Some(r) = rows.next()? {
            runs.push((r.get(0)?, r.get(1)?));
            run_phones += r.get::<_, i64>(2)?;
        }
        let mut st = self.conn.prepare_cached(
            "SELECT phone_id, token, environment, state, reason, platform FROM ring_outcomes WHERE ring_id = ?1",
        )?;
        let outcomes = st
            .query_map([ring_id], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Settled { runs, run_phones, outcomes })
    }

    /// The doorbell's current recipients that `ring_id` has not settled yet.
    fn pending_phones(&self, doorbell: &str, settled: &Settled) -> Result<Vec<JobPhone>> {
        let mut phones = recipients_on(&self.conn, doorbell)?;
        phones.retain(|p| !settled.outcomes.contains_key(&p.phone_id) && !settled.in_run(p.phone_id));
        Ok(phones)
    }

    /// Records every phone of `ring_id` still pending as `expired` and closes the ring in
    /// `state`, with what the outbox measured. The ring's phone count becomes what was settled
    /// plus what expired.
    fn close_ring(&mut self, ring_id: &str, state: RingState, latency: Latency) -> Result<RingSummary> {
        let now = crate::domain::now_ms();
        let (doorbell, phones): (String, i64) =
            self.conn.query_row("SELECT doorbell_id, phones FROM rings WHERE id = ?1", [ring_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let settled = self.settled(ring_id)?;
        // Nearly always nothing is left: then the recipients are not read again.
        let left = if phones > settled.count() { self.pending_phones(&doorbell, &settled)? } else { Vec::new() };
        let tx = self.conn.transaction()?;
        {
            let mut expire = tx.prepare_cached(
                "INSERT OR REPLACE INTO ring_outcomes (ring_id, phone_id, token, environment, state, reason, updated_at, platform)
                 VALUES (?1, ?2, ?3, ?4, ?6, 'Expired', ?5, ?7)",
            )?;
            for p in &left {
                let a = &p.address;
                expire.execute(params![
                    ring_id,
                    p.phone_id,
                    a.key(),
                    a.environment().as_str(),
                    now,
                    PhoneState::Expired,
                    a.platform()
                ])?;
            }
        }
        tx.execute(
            "UPDATE rings SET state = ?2, finished_at = ?3, phones = ?4, first_ms = ?6, all_ms = ?7
             WHERE id = ?1 AND state = ?5",
            params![
                ring_id,
                state,
                now,
                settled.count() + left.len() as i64,
                RingState::Pending,
                latency.first,
                latency.all
            ],
        )?;
        tx.commit()?;
        self.ring_summary(ring_id)
    }

    /// Marks what is still pending as expired (the ring's time ran out) and closes the ring,
    /// keeping the latency the outbox measured.
    pub fn finish_ring(&mut self, ring_id: &str, latency: Latency) -> Result<RingSummary> {
        self.close_ring(ring_id, RingState::Done, latency)
    }

    /// A finished ring's latency as recorded (none while it is being delivered).
    pub fn ring_latency(&self, ring_id: &str) -> Result<Latency> {
        Ok(self.conn.query_row("SELECT first_ms, all_ms FROM rings WHERE id = ?1", [ring_id], |r| {
            Ok(Latency { first: r.get(0)?, all: r.get(1)? })
        })?)
    }

    pub fn ring_summary(&self, ring_id: &str) -> Result<RingSummary> {
        type Row = (String, RingState, i64, i64, i64, Option<String>, Option<i64>);
        let (doorbell, state, pressed_at, presses, phones, answered_by, answered_at): Row = self.conn.query_row(
            "SELECT doorbell_id, state, pressed_at, presses, phones, answered_by, answered_at FROM rings WHERE id = ?1",
            [ring_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
        )?;
        let mut s = RingSummary {
            ring_id: ring_id.into(),
            doorbell,
            state,
            pressed_at,
            presses,
            phones,
            delivered: 0,
            failed: 0,
            pruned: 0,
            pending: 0,
            expired: 0,
            muted: 0,
            silenced: 0,
            answered_by,
            answered_at,
        };
        s.delivered = self.conn.query_row(
            "SELECT COALESCE(SUM(phones), 0) FROM ring_runs WHERE ring_id = ?1",
            [ring_id],
            |r| r.get(0),
        )?;
        let mut st =
            self.conn.prepare_cached("SELECT state, COUNT(*) FROM ring_outcomes WHERE ring_id = ?1 GROUP BY state")?;
        let rows = st.query_map([ring_id], |r| Ok((r.get::<_, PhoneState>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (state, n) = row?;
            match state {
                PhoneState::Delivered => s.delivered += n,
                PhoneState::Failed => s.failed = n,
                PhoneState::Pruned => s.pruned = n,
                PhoneState::Expired => s.expired = n,
                PhoneState::Muted => s.muted = n,
                PhoneState::Silenced => s.silenced = n,
                PhoneState::Pending => {}
            }
        }
        s.pending = (s.phones - s.delivered - s.failed - s.pruned - s.expired - s.muted - s.silenced).max(0);
        Ok(s)
    }

    /// Per-phone lines of a ring (tokens shortened), in phone-id order, at most `limit`.
    pub fn ring_phones(&self, ring_id: &str, limit: usize) -> Result<Vec<PhoneOutcome>> {
        let mut lines = self.ring_states(ring_id)?;
        lines.truncate(limit);
        for l in &mut lines {
            l.token = crate::domain::short_key(l.platform, &l.token);
        }
        Ok(lines)
    }

    /// Every phone of a ring with its whole token, in phone-id order: each recorded outcome,
    /// and the doorbell's recipients as delivered (inside a run) or pending.
    pub fn ring_states(&self, ring_id: &str) -> Result<Vec<PhoneOutcome>> {
        let doorbell: String =
            self.conn.query_row("SELECT doorbell_id FROM rings WHERE id = ?1", [ring_id], |r| r.get(0))?;
        let mut settled = self.settled(ring_id)?;
        let mut lines = Vec::new();
        for p in recipients_on(&self.conn, &doorbell)? {
            if settled.outcomes.contains_key(&p.phone_id) {
                continue;
            }
            let state = if settled.in_run(p.phone_id) { PhoneState::Delivered } else { PhoneState::Pending };
            lines.push(PhoneOutcome {
                phone_id: p.phone_id,
                platform: p.address.platform(),
                token: p.address.key(),
                environment: p.address.environment().as_str().to_string(),
                state,
                reason: None,
            });
        }
        for (phone_id, (token, environment, state, reason, platform)) in settled.outcomes.drain() {
            lines.push(PhoneOutcome { phone_id, platform, token, environment, state, reason });
        }
        lines.sort_unstable_by_key(|l| l.phone_id);
        Ok(lines)
    }

    /// The phones an answer of `ring_id` quiets: the doorbell's recipients the ring reached or
    /// is still reaching (delivered, silenced or pending), but the one that answered. One read
    /// of the recipients and of what the ring recorded.
    pub fn answer_targets(&self, ring_id: &str, except: i64) -> Result<Vec<JobPhone>> {
        let doorbell: String =
            self.conn.query_row("SELECT doorbell_id FROM rings WHERE id = ?1", [ring_id], |r| r.get(0))?;
        let settled = self.settled(ring_id)?;
        let reached = |p: &JobPhone| match settled.outcomes.get(&p.phone_id) {
            Some((.., state, _, _)) => matches!(state, PhoneState::Delivered | PhoneState::Silenced),
            None => true,
        };
        Ok(recipients_on(&self.conn, &doorbell)?.into_iter().filter(|p| p.phone_id != except && reached(p)).collect())
    }

    /// Rings left unfinished by a crash or a shutdown, with their still-pending phones: the
    /// doorbell's recipients now, minus what the ring already settled. A phone removed since
    /// is not sent; the ring's phone count follows.
    pub fn unfinished_rings(&mut self) -> Result<Vec<RingJob>> {
        let mut st = self.conn.prepare(
            "SELECT id, doorbell_id, doorbell_name, pressed_at, received_at, expires_at FROM rings WHERE state = ?1 ORDER BY pressed_at",
        )?;
        let mut jobs: Vec<RingJob> = st
            .query_map([RingState::Pending], |r| {
                Ok(RingJob {
                    ring_id: r.get(0)?,
                    doorbell_id: r.get(1)?,
                    doorbell_name: r.get(2)?,
                    pressed_at: r.get(3)?,
                    received_at: r.get(4)?,
                    expires_at: r.get(5)?,
                    phones: Recipients::default(),
                    unread: false,
                    read_at_us: None,
                    house: None,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        drop(st);
        let house = self.house()?;
        for j in &mut jobs {
            j.house = house.clone();
            let settled = self.settled(&j.ring_id)?;
            j.phones = Recipients::from_phones(self.pending_phones(&j.doorbell_id, &settled)?);
            self.conn.execute(
                "UPDATE rings SET phones = ?2 WHERE id = ?1",
                params![j.ring_id, settled.count() + j.phones.len() as i64],
            )?;
        }
        Ok(jobs)
    }

    /// Marks a ring expired (its time ran out while nobody could send it).
    pub fn expire_ring(&mut self, ring_id: &str) -> Result<RingSummary> {
        self.close_ring(ring_id, RingState::Expired, Latency::default())
    }

    /// How many phones the next ring may reach, to open enough connections ahead of it: the
    /// widest of the last 100 rings, or every phone when nothing has rung yet.
    pub fn expected_ring_phones(&self) -> Result<usize> {
        let widest: Option<i64> = self.conn.query_row(
            "SELECT MAX(phones) FROM rings WHERE rowid > (SELECT IFNULL(MAX(rowid), 0) FROM rings) - 100",
            [],
            |r| r.get(0),
        )?;
        let n = match widest {
            Some(n) => n,
            None => self.conn.query_row("SELECT COUNT(*) FROM phones WHERE platform = 'apns'", [], |r| r.get(0))?,
        };
        Ok(n.max(0) as usize)
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
    use crate::domain::{Environment, Reason};
    use crate::store::recipients::KEEP_RECIPIENTS_FROM;
    use std::sync::Arc;

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

    /// The outcome row of the job's phone at position `seq`.
    fn row(phones: &Recipients, seq: usize, outcome: Outcome) -> OutcomeRow {
        let p = &phones.targets[seq];
        OutcomeRow { seq: seq as i64, phone_id: p.phone_id, address: p.address.clone(), outcome }
    }

    fn press(id: &str, at: i64, now: i64) -> Press<'_> {
        Press {
            ring_id: id,
            doorbell_id: "front",
            doorbell_name: "Front door",
            pressed_at: at,
            received_at: now,
            recorded_at: now,
            expiry_ms: 300_000,
            debounce_ms: 3_000,
            read_later: false,
        }
    }

    /// A big doorbell's recipients are read once and reused by the next ring, until anything
    /// changes who a press reaches, in this process or another one (the CLI).
    #[test]
    fn a_kept_recipient_list_follows_every_change() {
        let (dir, mut s) = setup();
        let tokens: String =
            (0..KEEP_RECIPIENTS_FROM).map(|i| format!("{:064x}\n", 0xbee0_0000_u64 + i as u64)).collect();
        s.import_phones(
            crate::store::import::ImportFormat::Tokens { user: "o" },
            tokens.as_bytes(),
            Environment::Production,
        )
        .unwrap();
        let at = std::cell::Cell::new(1_000_000);
        let ring = |s: &mut Store| -> Recipients {
            at.set(at.get() + 10_000); // past the debounce window
            let id = format!("r{}", at.get());
            let RingStart::Created(job) = s.create_ring(&press(&id, at.get(), at.get())).unwrap() else {
                panic!("no ring")
            };
            job.phones
        };
        let first = ring(&mut s);
        assert_eq!(first.len(), KEEP_RECIPIENTS_FROM + 3);
        assert_eq!(s.recipients.phones(), first.len(), "kept");
        let again = ring(&mut s);
        assert!(Arc::ptr_eq(&first.targets, &again.targets), "nothing changed: reused, not read");

        // A phone's last problem does not change who is reached.
        let failed = Outcome::Failed { reason: Reason::BadTopic, status: 400 };
        s.record_outcomes(&format!("r{}", at.get()), &[row(&again, 0, failed)]).unwrap();
        let after_problem = ring(&mut s);
        assert!(Arc::ptr_eq(&first.targets, &after_problem.targets));

        // Removed, added, moved to the sandbox, shared, unshared: each is seen by the next ring.
        s.remove_phone(&"01".repeat(32)).unwrap();
        let removed = ring(&mut s);
        assert_eq!(removed.len(), first.len() - 1);
        s.add_phone("o", &"01".repeat(32), Environment::Production, None, None).unwrap();
        assert_eq!(ring(&mut s).len(), first.len());
        s.conn.execute("UPDATE phones SET environment = 'sandbox' WHERE token = ?1", ["02".repeat(32)]).unwrap();
        let sandbox = ring(&mut s);
        assert_eq!(sandbox.targets.iter().filter(|t| t.environment() == Environment::Sandbox).count(), 1);
        s.add_user("guest").unwrap();
        s.add_phone("guest", &"0a".repeat(32), Environment::Production, None, None).unwrap();
        s.add_doorbell("back", None, "guest").unwrap();
        s.share("front", "guest").unwrap();
        assert_eq!(ring(&mut s).len(), first.len() + 1);
        s.unshare("front", "guest").unwrap();
        assert_eq!(ring(&mut s).len(), first.len());

        // Another process removes a phone: this store's next ring does not reach it.
        let mut cli = Store::open(&dir.path().join("d.db")).unwrap();
        cli.remove_phone(&"03".repeat(32)).unwrap();
        let elsewhere = ring(&mut s);
        assert_eq!(elsewhere.len(), first.len() - 1);
        assert!(elsewhere.targets.iter().all(|t| t.token().hex() != "03".repeat(32)));

        // Small lists are not kept.
        let mut p = press("rb", at.get() + 10_000, at.get() + 10_000);
        p.doorbell_id = "back";
        let RingStart::Created(job) = s.create_ring(&p).unwrap() else { panic!("no ring") };
        assert_eq!(job.phones.len(), 1);
        assert_eq!(s.recipients.phones(), first.len() - 1);
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

    /// A restart resumes what is left: the recipients now, minus what was settled. A phone
    /// removed meanwhile is not sent; one that expires is recorded so.
    #[test]
    fn resume_sends_what_is_left_and_expiry_records_the_rest() {
        let (_d, mut s) = setup();
        for i in 4..=6 {
            s.add_phone("o", &format!("{i:02x}").repeat(32), Environment::Production, None, None).unwrap();
        }
        let RingStart::Created(job) = s.create_ring(&press("r1", 1_000_000, 1_000_010)).unwrap() else { panic!() };
        let failed = Outcome::Failed { reason: Reason::BadTopic, status: 400 };
        let batch: Vec<OutcomeRow> = [(0, Outcome::Delivered), (1, Outcome::Delivered), (3, failed)]
            .into_iter()
            .map(|(i, outcome)| row(&job.phones, i, outcome))
            .collect();
        s.record_outcomes("r1", &batch).unwrap();
        s.remove_phone(&job.phones.targets[5].token().hex()).unwrap();
        let jobs = s.unfinished_rings().unwrap();
        let left: Vec<i64> = jobs[0].phones.targets.iter().map(|p| p.phone_id).collect();
        assert_eq!(left, [job.phones.targets[2].phone_id, job.phones.targets[4].phone_id]);
        let states: Vec<&str> = s.ring_phones("r1", 10).unwrap().into_iter().map(|p| p.state.as_str()).collect();
        assert_eq!(states, ["delivered", "delivered", "pending", "failed", "pending"]);
        let sum = s.expire_ring("r1").unwrap();
        assert_eq!(
            (sum.state, sum.phones, sum.delivered, sum.failed, sum.expired, sum.pending),
            (RingState::Expired, 5, 2, 1, 2, 0)
        );
        assert!(s.unfinished_rings().unwrap().is_empty());
    }

    #[test]
    fn delivered_runs_are_written_by_range_around_other_outcomes() {
        let (_d, mut s) = setup();
        for i in 4..=6 {
            s.add_phone("o", &format!("{i:02x}").repeat(32), Environment::Production, None, None).unwrap();
        }
        let RingStart::Created(job) = s.create_ring(&press("r1", 1_000_000, 1_000_010)).unwrap() else { panic!() };
        assert_eq!(job.phones.len(), 6);
        let failed = Outcome::Failed { reason: Reason::BadTopic, status: 400 };
        // Answers arrive out of order; seq 2 fails in the middle of a run of deliveries.
        let batch: Vec<OutcomeRow> = [5, 2, 0, 4, 1]
            .iter()
            .map(|&i| row(&job.phones, i, if i == 2 { failed.clone() } else { Outcome::Delivered }))
            .collect();
        s.record_outcomes("r1", &batch).unwrap();
        let states: Vec<&str> = s.ring_phones("r1", 10).unwrap().into_iter().map(|p| p.state.as_str()).collect();
        assert_eq!(states, ["delivered", "delivered", "failed", "pending", "delivered", "delivered"]);
        let last: Vec<Option<String>> = s.list_phones().unwrap().into_iter().map(|p| p.last_outcome).collect();
        assert_eq!(last[0], None, "a delivery records no problem");
        assert_eq!(last[2].as_deref(), Some("failed: BadTopic"));
        // Three runs (0-1, 4-5 and nothing else): the failure splits them.
        let runs: i64 = s.conn.query_row("SELECT COUNT(*) FROM ring_runs", [], |r| r.get(0)).unwrap();
        assert_eq!(runs, 2);
        // A later delivery clears the phone's problem.
        s.record_outcomes("r1", &[row(&job.phones, 3, Outcome::Delivered)]).unwrap();
        let sum = s.finish_ring("r1", Latency::default()).unwrap();
        assert_eq!((sum.phones, sum.delivered, sum.failed, sum.pending, sum.expired), (6, 5, 1, 0, 0));
    }

    #[test]
    fn outcomes_prune_unless_re_registered() {
        let (_d, mut s) = setup();
        let RingStart::Created(job) = s.create_ring(&press("r1", 1_000_000, 1_000_010)).unwrap() else { panic!() };
        let now = crate::domain::now_ms();
        let outcomes = [
            Outcome::Delivered,
            // Apple's timestamp after registration: pruned.
            Outcome::Prune { reason: Reason::Unregistered, since: Some(now + 60_000) },
            // Apple's timestamp before the phone registered again: kept.
            Outcome::Prune { reason: Reason::Unregistered, since: Some(now - 3_600_000) },
        ];
        let batch: Vec<OutcomeRow> = outcomes.into_iter().enumerate().map(|(i, o)| row(&job.phones, i, o)).collect();
        let rec = s.record_outcomes("r1", &batch).unwrap();
        assert_eq!((rec.pruned, rec.kept, rec.kept_phones), (1, 1, vec![job.phones.targets[2].phone_id]));
        let sum = s.finish_ring("r1", Latency::default()).unwrap();
        assert_eq!((sum.phones, sum.delivered, sum.pruned, sum.failed), (3, 1, 1, 1));
        assert_eq!(s.list_phones().unwrap().len(), 2);
        assert_eq!(s.ring_phones("r1", 10).unwrap()[0].token.len(), 8);
        assert_eq!(s.recent_rings(5).unwrap().len(), 1);
    }
}
