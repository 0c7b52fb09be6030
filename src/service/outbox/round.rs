//! The outbox's accounting, pure: what one round of sending heard ([`Round`]: which phones
//! answered, which outcomes to record, which phones to retry and Apple's longest retry hint),
//! and what follows a round ([`Retries`]: done, wait and retry, or give up before the ring's
//! expiry), with exponential backoff and jitter ([`RetryPolicy`]). No clock, no store, no
//! transport: `outbox` feeds them outcomes and the time left, and does the I/O they decide.

use crate::domain::{Outcome, Target};
use crate::store::rings::OutcomeRow;
use std::sync::Arc;
use std::time::Duration;

/// Outcomes are written when this many have arrived (or on the outbox's flush tick).
pub const BATCH: usize = 2048;

/// Exponential backoff with jitter, bounded by the ring's expiry. Pure: the caller sleeps.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { base: Duration::from_millis(100), max: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1-based), with `jitter` in `[0, 1)` taking up
    /// to half of it off; `None` when the retry would land past the ring's expiry, which is
    /// `remaining` away.
    pub fn delay(&self, attempt: u32, remaining: Duration, jitter: f64, hint: Option<Duration>) -> Option<Duration> {
        let exp = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(self.max);
        let d = exp.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0)).max(hint.unwrap_or_default());
        (d <= remaining).then_some(d)
    }
}

/// The places in the ring's job of a round's phones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seqs {
    /// Consecutive from this one (a first round: no list of 120,000 numbers).
    Run(i64),
    /// One by one (retries, phones of several platforms).
    List(Vec<i64>),
}

impl Seqs {
    fn get(&self, k: usize) -> i64 {
        match self {
            Seqs::Run(first) => first + k as i64,
            Seqs::List(v) => v[k],
        }
    }
}

/// One round: the phones sent to (`targets[from..]`, with their places `seqs` in the ring's
/// job) and what came back for them.
#[derive(Debug)]
pub struct Round {
    targets: Arc<Vec<Target>>,
    from: usize,
    to: usize,
    seqs: Seqs,
    /// Which phones got an outcome: one the transport never answered for (a bug, a panicked
    /// task) is retried, not left to expire unnoticed.
    heard: Vec<bool>,
    /// Final outcomes not yet handed to the store.
    rows: Vec<OutcomeRow>,
    retry: Vec<Target>,
    retry_seqs: Vec<i64>,
    /// Apple's longest `retry-after` among the retries.
    hint: Option<Duration>,
    answered: bool,
}

impl From<Vec<i64>> for Seqs {
    fn from(v: Vec<i64>) -> Seqs {
        Seqs::List(v)
    }
}

/// What a round came to.
#[derive(Debug)]
pub struct RoundEnd {
    /// The phones to send again, and their places in the job.
    pub retry: Arc<Vec<Target>>,
    pub seqs: Vec<i64>,
    pub hint: Option<Duration>,
    /// Phones the transport gave no outcome for (retried with the others).
    pub unheard: usize,
    /// Some phone of the round got a final outcome: backoff starts over.
    pub progressed: bool,
}

impl Round {
    /// A round over `targets[from..]`; `seqs[k]` is the place of `targets[from + k]`.
    pub fn new(targets: Arc<Vec<Target>>, from: usize, seqs: impl Into<Seqs>) -> Round {
        let to = targets.len();
        Round::over(targets, from..to, seqs)
    }

    /// A round over `targets[range]` (a run of a shared list); `seqs[k]` is the place of
    /// `targets[range.start + k]`.
    pub fn over(targets: Arc<Vec<Target>>, range: std::ops::Range<usize>, seqs: impl Into<Seqs>) -> Round {
        let (from, to) = (range.start, range.end.min(targets.len()));
        let n = to.saturating_sub(from);
        let seqs = seqs.into();
        debug_assert!(!matches!(&seqs, Seqs::List(v) if v.len() != n));
        Round {
            from,
            to,
            heard: vec![false; n],
            rows: Vec::with_capacity(BATCH.min(n)),
            retry: Vec::new(),
            retry_seqs: Vec::new(),
            hint: None,
            answered: false,
            targets,
            seqs,
        }
    }

    /// The list the round's phones are in: `targets()[range()]`.
    pub fn targets(&self) -> &Arc<Vec<Target>> {
        &self.targets
    }

    /// The phones this round sends to, as a range of `targets()`.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.from..self.to
    }

    /// Any outcome came back yet.
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// The outcome for `targets()[i]`: a retry is kept for the next round, anything else is
    /// to be recorded.
    pub fn on_outcome(&mut self, i: usize, outcome: Outcome) {
        self.answered = true;
        let k = i - self.from;
        self.heard[k] = true;
        let (t, seq) = (&self.targets[i], self.seqs.get(k));
        match outcome {
            Outcome::Retry { after, .. } => {
                self.hint = self.hint.max(after);
                self.retry.push(t.clone());
                self.retry_seqs.push(seq);
            }
            outcome => self.rows.push(OutcomeRow { seq, phone_id: t.phone_id, address: t.address.clone(), outcome }),
        }
    }

    /// Enough outcomes wait to be worth a write now.
    pub fn batch_full(&self) -> bool {
        self.rows.len() >= BATCH
    }

    /// The outcomes to record, handed over (give them back with [`Round::keep_rows`] if the
    /// store refused them).
    pub fn take_rows(&mut self) -> Vec<OutcomeRow> {
        std::mem::take(&mut self.rows)
    }

    /// Outcomes the store could not write yet: they go first in the next write.
    pub fn keep_rows(&mut self, mut rows: Vec<OutcomeRow>) {
        rows.append(&mut self.rows);
        self.rows = rows;
    }

    /// Outcomes waiting to be recorded.
    pub fn unwritten(&self) -> usize {
        self.rows.len()
    }

    /// The transport is done with the round: what to send again. Call after the last rows
    /// were taken (unwritten rows are dropped here).
    pub fn end(self) -> RoundEnd {
        let (mut retry, mut seqs) = (self.retry, self.retry_seqs);
        let mut unheard = 0;
        for (k, heard) in self.heard.iter().enumerate() {
            if !heard {
                unheard += 1;
                retry.push(self.targets[self.from + k].clone());
                seqs.push(self.seqs.get(k));
            }
        }
        let progressed = retry.len() < self.heard.len();
        RoundEnd { retry: Arc::new(retry), seqs, hint: self.hint, unheard, progressed }
    }
}

/// What follows a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Every phone has a final outcome.
    Done,
    /// Wait this long, then send the retries again (retry number `attempt`).
    Retry { wait: Duration, attempt: u32 },
    /// The ring expires before another retry could be sent: the rest is left to expire.
    GiveUp,
}

/// The retry decisions of one delivery, across its rounds.
#[derive(Debug)]
pub struct Retries {
    policy: RetryPolicy,
    attempt: u32,
}

impl Retries {
    pub fn new(policy: RetryPolicy) -> Retries {
        Retries { policy, attempt: 0 }
    }

    /// After a round that ended as `end`, with `remaining` until the ring expires and `jitter`
    /// in `[0, 1)`. Backoff grows only while rounds settle nothing: a round that answered
    /// some phones (say, a connection that drops now and then) retries the rest promptly.
    pub fn after(&mut self, end: &RoundEnd, remaining: Duration, jitter: f64) -> Next {
        if end.retry.is_empty() {
            return Next::Done;
        }
        self.attempt = if end.progressed { 1 } else { self.attempt + 1 };
        match self.policy.delay(self.attempt, remaining, jitter, end.hint) {
            Some(wait) => Next::Retry { wait, attempt: self.attempt },
            None => Next::GiveUp,
        }
    }
}

#[cfg(test)]
mod tests;
