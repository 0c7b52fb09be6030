//! The ring history: rings listed with their counts and latency (`dingdong rings`), one ring
//! with every phone (`rings show`), and pruning old rings with their rows in small steps, so
//! the daemon's store thread is never held for long (`[history] retention`).

use super::rings::{Latency, PhoneOutcome, RingSummary};
use super::{Result, Store, StoreError};
use crate::domain::{PhoneState, RingState};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

/// Which rings `dingdong rings` lists.
#[derive(Debug, Clone, Default)]
pub struct RingFilter {
    pub doorbell: Option<String>,
    /// Only rings that arrived at or after this time (ms).
    pub since_ms: Option<i64>,
    pub limit: usize,
}

/// A ring as the history shows it: the published outcome's counts, the doorbell's name at the
/// time, when it arrived and finished, and the latency the outbox measured.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RingLine {
    #[serde(flatten)]
    pub summary: RingSummary,
    pub doorbell_name: String,
    pub received_at: i64,
    pub finished_at: Option<i64>,
    pub latency_ms: Latency,
}

/// One ring with every phone.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RingDetail {
    #[serde(flatten)]
    pub ring: RingLine,
    /// Every phone with its whole token, in phone-id order.
    pub results: Vec<PhoneOutcome>,
    /// Deliveries are recorded as runs of phone ids: phones delivered and removed since are
    /// counted in `delivered` but can no longer be listed.
    pub unlisted_delivered: i64,
}

/// What one pruning step removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub rings: usize,
    /// `ring_outcomes` and `ring_runs` rows.
    pub rows: usize,
}

/// A pruning step takes rings until their rows reach this many (at least one ring).
pub const PRUNE_ROWS: i64 = 20_000;

impl Store {
    /// The newest rings first, as `filter` says.
    pub fn list_rings(&self, filter: &RingFilter) -> Result<Vec<RingLine>> {
        let ids: Vec<String> = self
            .conn
            .prepare_cached(
                "SELECT id FROM rings INDEXED BY rings_received
                 WHERE received_at >= ?1 AND (?2 IS NULL OR doorbell_id = ?2)
                 ORDER BY received_at DESC LIMIT ?3",
            )?
            .query_map(params![filter.since_ms.unwrap_or(i64::MIN), filter.doorbell, filter.limit as i64], |r| {
                r.get(0)
            })?
            .collect::<rusqlite::Result<_>>()?;
        ids.iter().map(|id| self.ring_line(id)).collect()
    }

    /// One ring with its counts, or `NotFound`.
    pub fn ring_line(&self, ring_id: &str) -> Result<RingLine> {
        // (doorbell_name, received_at, finished_at, latency)
        type Row = (String, i64, Option<i64>, Latency);
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT doorbell_name, received_at, finished_at, first_ms, all_ms FROM rings WHERE id = ?1",
                [ring_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, Latency { first: r.get(3)?, all: r.get(4)? })),
            )
            .optional()?;
        let (doorbell_name, received_at, finished_at, latency_ms) =
            row.ok_or_else(|| StoreError::NotFound { kind: "ring", id: ring_id.into() })?;
        Ok(RingLine { summary: self.ring_summary(ring_id)?, doorbell_name, received_at, finished_at, latency_ms })
    }

    /// One ring with every phone, whole tokens.
    pub fn ring_detail(&self, ring_id: &str) -> Result<RingDetail> {
        let ring = self.ring_line(ring_id)?;
        let results = self.ring_states(ring_id)?;
        let listed = results.iter().filter(|p| p.state == PhoneState::Delivered).count() as i64;
        let unlisted_delivered = (ring.summary.delivered - listed).max(0);
        Ok(RingDetail { ring, results, unlisted_delivered })
    }

    /// One step of pruning: finished rings that arrived before `before_ms`, oldest first, with
    /// their outcome and run rows, in one transaction. A step removes at most [`PRUNE_ROWS`]
    /// rows (and `max_rings` rings), so it stays short even for a ring of 100,000 phones: that
    /// one goes over several steps, its row last. Call again until it prunes nothing. A ring
    /// still pending is never pruned.
    pub fn prune_rings(&mut self, before_ms: i64, max_rings: usize) -> Result<Pruned> {
        let tx = self.conn.transaction()?;
        let mut done = Pruned::default();
        {
            let mut pick = tx.prepare_cached(
                "SELECT id FROM rings INDEXED BY rings_received WHERE received_at < ?1 AND state != ?2
                 ORDER BY received_at LIMIT ?3",
            )?;
            let ids: Vec<String> = pick
                .query_map(params![before_ms, RingState::Pending, max_rings as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut outcomes = tx.prepare_cached(
                "DELETE FROM ring_outcomes WHERE ring_id = ?1
                   AND phone_id IN (SELECT phone_id FROM ring_outcomes WHERE ring_id = ?1 LIMIT ?2)",
            )?;
            let mut runs = tx.prepare_cached(
                "DELETE FROM ring_runs WHERE rowid IN (SELECT rowid FROM ring_runs WHERE ring_id = ?1 LIMIT ?2)",
            )?;
            let mut ring = tx.prepare_cached("DELETE FROM rings WHERE id = ?1")?;
            for id in &ids {
                let mut budget = PRUNE_ROWS - done.rows as i64;
                for rows in [&mut outcomes, &mut runs] {
                    let n = rows.execute(params![id, budget])?;
                    done.rows += n;
                    budget -= n as i64;
                }
                if budget <= 0 {
                    break; // this ring's rows may not all be gone: the next step goes on
                }
                ring.execute([id])?;
                done.rings += 1;
            }
        }
        tx.commit()?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Environment, Outcome, Reason};
    use crate::store::rings::{OutcomeRow, Press, RingStart};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.add_user("o").unwrap();
        s.add_doorbell("front", Some("Front door"), "o").unwrap();
        s.add_doorbell("back", None, "o").unwrap();
        for i in 1..=3 {
            s.add_phone("o", &format!("{i:02x}").repeat(32), Environment::Production, None, None).unwrap();
        }
        (dir, s)
    }

    /// Rings `id` of `doorbell` at `at`: phone 0 delivered, phone 1 failed, phone 2 pruned
    /// (unless `open`, then it stays pending).
    fn ring(s: &mut Store, id: &str, doorbell: &str, at: i64, open: bool) {
        let press = Press {
            ring_id: id,
            doorbell_id: doorbell,
            doorbell_name: doorbell,
            pressed_at: at,
            received_at: at,
            recorded_at: at,
            expiry_ms: 300_000,
            debounce_ms: 0,
            read_later: false,
        };
        let RingStart::Created(job) = s.create_ring(&press).unwrap() else { panic!("no ring") };
        let t = &job.phones.targets;
        let row = |seq: usize, outcome| OutcomeRow {
            seq: seq as i64,
            phone_id: t[seq].phone_id,
            address: t[seq].address.clone(),
            outcome,
        };
        let mut batch =
            vec![row(0, Outcome::Delivered), row(1, Outcome::Failed { reason: Reason::BadTopic, status: 400 })];
        if !open {
            batch.push(row(2, Outcome::Prune { reason: Reason::Unregistered, since: None }));
        }
        s.record_outcomes(id, &batch).unwrap();
        if !open {
            s.finish_ring(id, Latency { first: Some(5), all: Some(9) }).unwrap();
            // The pruned phone comes back for the next ring.
            s.add_phone("o", &"03".repeat(32), Environment::Production, None, None).unwrap();
        }
    }

    #[test]
    fn rings_are_listed_newest_first_with_counts_and_latency() {
        let (_d, mut s) = store();
        ring(&mut s, "r1", "front", 1_000_000, false);
        ring(&mut s, "r2", "back", 2_000_000, false);
        ring(&mut s, "r3", "front", 3_000_000, false);
        let all = s.list_rings(&RingFilter { limit: 10, ..Default::default() }).unwrap();
        let ids: Vec<&str> = all.iter().map(|r| r.summary.ring_id.as_str()).collect();
        assert_eq!(ids, ["r3", "r2", "r1"]);
        let r = &all[0];
        assert_eq!(
            (r.summary.state, r.summary.delivered, r.summary.failed, r.summary.pruned),
            (RingState::Done, 1, 1, 1)
        );
        assert_eq!((r.latency_ms, r.doorbell_name.as_str()), (Latency { first: Some(5), all: Some(9) }, "front"));
        let front = RingFilter { doorbell: Some("front".into()), since_ms: Some(2_000_000), limit: 10 };
        let ids: Vec<String> = s.list_rings(&front).unwrap().into_iter().map(|r| r.summary.ring_id).collect();
        assert_eq!(ids, ["r3"]);
        assert_eq!(s.list_rings(&RingFilter { limit: 1, ..Default::default() }).unwrap().len(), 1);
        assert!(matches!(s.ring_line("nope"), Err(StoreError::NotFound { kind: "ring", .. })));
    }

    #[test]
    fn one_ring_shows_every_phone() {
        let (_d, mut s) = store();
        ring(&mut s, "r1", "front", 1_000_000, false);
        let d = s.ring_detail("r1").unwrap();
        let states: Vec<(PhoneState, usize)> = d.results.iter().map(|p| (p.state, p.token.len())).collect();
        assert_eq!(states, [(PhoneState::Delivered, 64), (PhoneState::Failed, 64), (PhoneState::Pruned, 64)]);
        assert_eq!(d.results[1].reason.as_deref(), Some("BadTopic"));
        assert_eq!(d.unlisted_delivered, 0);
        // A delivered phone removed since is counted, not listed.
        s.remove_phone(&"01".repeat(32)).unwrap();
        let d = s.ring_detail("r1").unwrap();
        assert_eq!((d.ring.summary.delivered, d.unlisted_delivered), (1, 1));
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!((json["ring_id"].as_str(), json["state"].as_str()), (Some("r1"), Some("done")));
        assert_eq!(json["latency_ms"]["first"], 5);
    }

    #[test]
    fn pruning_removes_old_finished_rings_and_their_rows_only() {
        let (_d, mut s) = store();
        ring(&mut s, "old1", "front", 1_000_000, false);
        ring(&mut s, "old2", "back", 1_100_000, false);
        ring(&mut s, "open", "front", 1_200_000, true);
        ring(&mut s, "new", "front", 9_000_000, false);
        let step = s.prune_rings(5_000_000, 1).unwrap();
        assert_eq!(step.rings, 1, "one ring per step when asked");
        let step = s.prune_rings(5_000_000, 100).unwrap();
        assert_eq!(step.rings, 1);
        assert_eq!(s.prune_rings(5_000_000, 100).unwrap(), Pruned::default(), "nothing left to prune");
        let left: Vec<String> = s
            .list_rings(&RingFilter { limit: 10, ..Default::default() })
            .unwrap()
            .into_iter()
            .map(|r| r.summary.ring_id)
            .collect();
        assert_eq!(left, ["new", "open"], "pending rings stay, whatever their age");
        let rows: i64 = s
            .conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM ring_outcomes WHERE ring_id LIKE 'old%')
                      + (SELECT COUNT(*) FROM ring_runs WHERE ring_id LIKE 'old%')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 0);
    }

    /// A year of a busy doorbell (20 rings a day, 7,300 rings, three phones each), then a
    /// building's ring of 100,000 failed phones, pruned step by step: every step stays short. `cargo test --release -- --ignored --nocapture
    /// prune_figures` prints the figures docs/field-kit.md quotes.
    /// A ring with more rows than a step takes goes over several steps, its ring row last.
    #[test]
    fn a_huge_ring_is_pruned_over_several_steps() {
        let (_d, mut s) = store();
        ring(&mut s, "big", "front", 1_000_000, false);
        let rows = PRUNE_ROWS as usize * 2 + 10;
        {
            let tx = s.conn.transaction().unwrap();
            for i in 0..rows {
                tx.execute(
                    "INSERT INTO ring_outcomes (ring_id, phone_id, token, environment, state, reason, updated_at)
                     VALUES ('big', ?1, 'ab', 'production', 'failed', 'BadTopic', 0)",
                    [1_000 + i as i64],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let steps: Vec<Pruned> = (0..4).map(|_| s.prune_rings(5_000_000, 500).unwrap()).collect();
        assert_eq!(steps[0], Pruned { rings: 0, rows: PRUNE_ROWS as usize });
        assert_eq!(steps[1], Pruned { rings: 0, rows: PRUNE_ROWS as usize });
        assert_eq!(steps[2].rings, 1);
        assert_eq!(steps[3], Pruned::default());
        assert!(matches!(s.ring_line("big"), Err(StoreError::NotFound { .. })));
    }

    #[test]
    #[ignore = "a measurement"]
    fn prune_figures() {
        let (_d, mut s) = store();
        let n = 7_300;
        let t0 = std::time::Instant::now();
        for i in 0..n {
            ring(&mut s, &format!("r{i}"), if i % 2 == 0 { "front" } else { "back" }, 1_000_000 + i * 10_000, false);
        }
        eprintln!("created {n} rings in {:?}", t0.elapsed());
        let (mut steps, mut longest, mut rows) = (0, std::time::Duration::ZERO, 0);
        let t0 = std::time::Instant::now();
        loop {
            let t = std::time::Instant::now();
            let step = s.prune_rings(i64::MAX, 500).unwrap();
            longest = longest.max(t.elapsed());
            if step == Pruned::default() {
                break;
            }
            steps += 1;
            rows += step.rows;
        }
        eprintln!("pruned {n} rings ({rows} rows) in {:?}: {steps} steps, longest {longest:?}", t0.elapsed());

        // A building's ring of 100,000 phones that all failed: 100,000 outcome rows.
        ring(&mut s, "building", "front", 1_000_000, false);
        let tx = s.conn.transaction().unwrap();
        for i in 0..100_000i64 {
            tx.execute(
                "INSERT INTO ring_outcomes (ring_id, phone_id, token, environment, state, reason, updated_at)
                 VALUES ('building', ?1, ?2, 'production', 'failed', 'BadTopic', 0)",
                params![1_000 + i, format!("{i:064x}")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let (mut steps, mut longest) = (0, std::time::Duration::ZERO);
        let t0 = std::time::Instant::now();
        loop {
            let t = std::time::Instant::now();
            if s.prune_rings(i64::MAX, 500).unwrap() == Pruned::default() {
                break;
            }
            longest = longest.max(t.elapsed());
            steps += 1;
        }
        eprintln!("pruned a ring of 100,000 outcome rows in {:?}: {steps} steps, longest {longest:?}", t0.elapsed());
    }
}
