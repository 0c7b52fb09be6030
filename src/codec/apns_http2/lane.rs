//! One HTTP/2 lane as a state machine: a lane is one connection's share of a batch (the phones
//! of a ring in one environment). Pure: no sockets, no clock, no tasks. The client in
//! `net::apns::http2` asks [`Lane::next`] what to do, does it (sends a request, opens a
//! connection, follows the provider token) and feeds back what happened ([`Lane::on_answer`],
//! [`Lane::on_refused`], [`Lane::on_stall`], ...), the way rumqttc's `state.rs` decides and its
//! event loop does the I/O.
//!
//! The rules it keeps:
//! - Phones are claimed from the batch's shared [`Queue`] in runs of [`CLAIM`], so answers,
//!   which come back roughly in order per connection, are recorded as long runs.
//! - Up to `min(our cap, the server's SETTINGS_MAX_CONCURRENT_STREAMS)` requests are in flight;
//!   with token auth a fresh connection carries one stream until its first answer, as Apple asks.
//! - A request the server refused unprocessed (REFUSED_STREAM, above a GOAWAY's last stream id)
//!   is resent first on the next connection; any other failure goes back as an outcome.
//! - One stall timer per lane: when requests are in flight and no answer has come for the
//!   request timeout, everything in flight goes back as a retry and the lane moves on to a
//!   fresh connection. After [`MAX_REPLACEMENTS`] fresh connections in a row without a single
//!   answer, the lane gives up and hands its work back.
//! - The provider token is looked up every [`BEARER_CHECK_EVERY`] requests, and at once after
//!   an `ExpiredProviderToken`.

use super::{classify, effect, Effect};
use crate::domain::{Outcome, Reason};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A lane claims this many phones of a batch at a time.
pub const CLAIM: usize = 64;
/// A lane looks up the current provider token after this many requests.
pub const BEARER_CHECK_EVERY: usize = 1024;
/// A consecutive run of this many fresh connections without a single answer ends a lane.
pub const MAX_REPLACEMENTS: u32 = 5;

/// The phones of one batch, shared by its lanes: positions `0..len` map to phones (indexes
/// into the batch's targets) and are claimed in runs.
#[derive(Debug)]
pub struct Queue {
    phones: Phones,
    cursor: AtomicUsize,
}

/// Which phones a [`Queue`] holds.
#[derive(Debug)]
enum Phones {
    /// Consecutive ones (a batch of one environment: no list of 120,000 indexes).
    Run(Range<usize>),
    List(Vec<usize>),
}

impl Queue {
    pub fn new(phones: Vec<usize>) -> Queue {
        Queue { phones: Phones::List(phones), cursor: AtomicUsize::new(0) }
    }

    /// The phones `run`, in order.
    pub fn run(run: Range<usize>) -> Queue {
        Queue { phones: Phones::Run(run), cursor: AtomicUsize::new(0) }
    }

    pub fn len(&self) -> usize {
        match &self.phones {
            Phones::Run(r) => r.len(),
            Phones::List(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Claims up to `n` positions; an empty range once every position is claimed.
    pub fn claim(&self, n: usize) -> Range<usize> {
        let len = self.len();
        let start = self.cursor.fetch_add(n, Ordering::AcqRel).min(len);
        start..(start + n).min(len)
    }

    /// Every position is claimed.
    pub fn drained(&self) -> bool {
        self.cursor.load(Ordering::Acquire) >= self.len()
    }

    /// The phone at position `pos`.
    pub fn phone(&self, pos: usize) -> usize {
        match &self.phones {
            Phones::Run(r) => r.start + pos,
            Phones::List(v) => v[pos],
        }
    }

    /// Claims whatever is left (lanes that all died leave it): those phones.
    pub fn take_rest(&self) -> impl Iterator<Item = usize> + '_ {
        let len = self.len();
        let start = self.cursor.fetch_add(len, Ordering::AcqRel).min(len);
        (start..len).map(|pos| self.phone(pos))
    }
}

/// What the lane does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send the request for this phone (it counts as in flight from now on).
    Send(usize),
    /// Look up the current provider token, then report with [`Lane::on_bearer`].
    Bearer,
    /// Get a connection (the lane's first, or a fresh one), then report with
    /// [`Lane::on_connected`] or [`Lane::on_connect_failed`].
    Connect,
    /// Wait for answers (and the stall timer).
    Wait,
    /// Nothing more to do: hand [`Lane::leftovers`] back and end.
    Finish,
}

/// What the stall timer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stall {
    /// An answer came in time: look again at this instant.
    Rearm(Instant),
    /// No answer within the request timeout: the connection is given up, and these phones,
    /// which were in flight on it, go back as retries.
    TimedOut(Vec<(usize, Outcome)>),
}

/// What an answer decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub outcome: Outcome,
    pub effect: Option<Effect>,
}

/// One lane's state.
#[derive(Debug)]
pub struct Lane {
    /// Token auth: a fresh connection carries one stream until its first answer.
    token_auth: bool,
    request_timeout: Duration,
    /// The lane has a usable connection.
    open: bool,
    /// The connection answered at least once.
    confirmed: bool,
    /// The lane has had a connection (fresh ones after that count as replacements).
    started: bool,
    /// `min(our cap, the server's limit)`, as last reported.
    limit: usize,
    flying: InFlight,
    /// Refused unprocessed: sent again first.
    redo: Vec<usize>,
    /// Positions claimed and not sent yet.
    claimed: Range<usize>,
    since_bearer: usize,
    bearer_due: bool,
    /// Moves each time the lane's copy of the provider token changes: an answer says which
    /// copy its request carried.
    bearer_gen: u32,
    /// Fresh connections since the last answer.
    replaced: u32,
    stopping: bool,
    /// Why the lane ended early; its leftovers go back with it.
    gave_up: Option<String>,
    /// Last answer, or the first request after a quiet spell: the stall timer counts from it.
    /// `None` while it is to be started (see [`Lane::clock_stopped`]).
    clock: Option<Instant>,
    /// Answers since the last [`Lane::end_batch`].
    heard: bool,
}

impl Lane {
    /// A lane over a batch of `phones` phones, without a connection yet.
    pub fn new(phones: usize, token_auth: bool, limit: usize, request_timeout: Duration) -> Lane {
        Lane {
            token_auth,
            request_timeout,
            open: false,
            confirmed: false,
            started: false,
            limit: limit.max(1),
            flying: InFlight::new(phones),
            redo: Vec::new(),
            claimed: 0..0,
            since_bearer: 0,
            bearer_due: token_auth,
            bearer_gen: 0,
            replaced: 0,
            stopping: false,
            gave_up: None,
            clock: None,
            heard: false,
        }
    }

    /// Requests in flight on the current connection.
    pub fn in_flight(&self) -> usize {
        self.flying.count
    }

    /// How many requests may be in flight now.
    pub fn window(&self) -> usize {
        if self.token_auth && !self.confirmed {
            1
        } else {
            self.limit
        }
    }

    /// The connection has answered at least once (its window is open).
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    /// Which copy of the provider token requests sent now carry.
    pub fn bearer_gen(&self) -> u32 {
        self.bearer_gen
    }

    /// The smaller of our stream cap and the server's SETTINGS_MAX_CONCURRENT_STREAMS.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(1);
    }

    /// Stop starting requests; answers in flight are still taken.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// The decision of what to do next.
    pub fn next(&mut self, queue: &Queue) -> Step {
        if self.bearer_due {
            return Step::Bearer;
        }
        if !self.open {
            if self.flying.count > 0 {
                return Step::Wait; // their answers (or errors) are still to come
            }
            if self.stopping || self.gave_up.is_some() || (!self.has_own_work() && queue.drained()) {
                return Step::Finish;
            }
            if self.replaced >= MAX_REPLACEMENTS {
                self.gave_up = Some("the server keeps closing connections".into());
                return Step::Finish;
            }
            return Step::Connect;
        }
        if self.stopping || self.flying.count >= self.window() {
            return self.idle();
        }
        let phone = match self.redo.pop() {
            Some(i) => i,
            None => match self.claimed.next() {
                Some(p) => queue.phone(p),
                None => {
                    let run = queue.claim(CLAIM);
                    if run.is_empty() {
                        return self.idle();
                    }
                    self.claimed = run;
                    queue.phone(self.claimed.next().expect("a claimed run is not empty"))
                }
            },
        };
        if self.token_auth {
            self.since_bearer += 1;
            self.bearer_due = self.since_bearer >= BEARER_CHECK_EVERY;
        }
        if self.flying.count == 0 {
            self.clock = None; // the clock starts with the first request
        }
        self.flying.set(phone);
        Step::Send(phone)
    }

    fn idle(&self) -> Step {
        if self.flying.count > 0 {
            Step::Wait
        } else {
            Step::Finish
        }
    }

    fn has_own_work(&self) -> bool {
        !self.redo.is_empty() || !self.claimed.is_empty()
    }

    /// The lane's copy of the provider token was looked up; `changed` if it is a new one.
    pub fn on_bearer(&mut self, changed: bool) {
        self.bearer_due = false;
        self.since_bearer = 0;
        if changed {
            self.bearer_gen = self.bearer_gen.wrapping_add(1);
        }
    }

    /// A connection is ready; `confirmed` if it has answered before (a pooled one).
    pub fn on_connected(&mut self, confirmed: bool) {
        if self.started {
            self.replaced += 1;
        }
        self.started = true;
        self.open = true;
        self.confirmed = confirmed;
    }

    /// No connection could be had: the lane ends, its claimed work goes back with `why`.
    pub fn on_connect_failed(&mut self, why: String) {
        self.gave_up = Some(why);
    }

    /// The connection ended (GOAWAY, error, EOF): the next request needs a fresh one.
    pub fn on_closed(&mut self) {
        self.open = false;
    }

    /// The answer to the request for `phone`, sent with provider token copy `gen`: its
    /// outcome and what it asks of the client. A 200 is decided without reading anything.
    pub fn on_answer(&mut self, phone: usize, status: u16, body: &[u8], gen: u32) -> Judged {
        self.flying.unset(phone);
        self.heard = true;
        if status == 200 {
            return Judged { outcome: Outcome::Delivered, effect: None };
        }
        let outcome = classify(status, body);
        let effect = match effect(&outcome) {
            Some(Effect::RefreshToken) => {
                // Follow the fresh token at once; only the copy still in use needs minting
                // anew (an older copy's rejection says nothing about the current one).
                self.bearer_due = true;
                (gen == self.bearer_gen).then_some(Effect::RefreshToken)
            }
            other => other,
        };
        Judged { outcome, effect }
    }

    /// The request for `phone` was refused unprocessed (REFUSED_STREAM, or above a GOAWAY's
    /// last stream id), when sent or later: it goes again first, on a fresh connection.
    pub fn on_refused(&mut self, phone: usize) {
        self.flying.unset(phone);
        self.open = false;
        self.redo.push(phone);
    }

    /// The request for `phone` failed otherwise (the server may have seen it): a retry.
    pub fn on_failed(&mut self, phone: usize, why: String) -> Outcome {
        self.flying.unset(phone);
        Outcome::Retry { reason: Reason::Connection(why), after: None }
    }

    /// After taking every answer that was ready: true if any came (the connection is then
    /// confirmed, the stall clock and the replacement count start over).
    pub fn end_batch(&mut self, now: Instant) -> bool {
        let heard = std::mem::take(&mut self.heard);
        if heard {
            self.confirmed = true;
            self.replaced = 0;
            self.clock = Some(now);
        }
        heard
    }

    /// The stall clock is to be started (a request went out after a quiet spell).
    pub fn clock_stopped(&self) -> bool {
        self.clock.is_none() && self.flying.count > 0
    }

    /// Starts the stall clock at `now`.
    pub fn start_clock(&mut self, now: Instant) {
        self.clock = Some(now);
    }

    /// The stall timer fired at `now`.
    pub fn on_stall(&mut self, now: Instant) -> Stall {
        if self.flying.count == 0 {
            return Stall::Rearm(now + self.request_timeout);
        }
        let due = *self.clock.get_or_insert(now) + self.request_timeout;
        if now < due {
            return Stall::Rearm(due);
        }
        self.open = false;
        self.clock = None;
        let lost = self
            .flying
            .drain()
            .into_iter()
            .map(|i| (i, Outcome::Retry { reason: Reason::Connection("request timed out".into()), after: None }))
            .collect();
        Stall::TimedOut(lost)
    }

    /// What the lane claimed and did not send, as retries: the outbox leaves them pending
    /// (stopping) or retries them (the lane gave up). Call once, on [`Step::Finish`].
    pub fn leftovers(&mut self, queue: &Queue) -> Vec<(usize, Outcome)> {
        let why = self.gave_up.take().unwrap_or_else(|| "not sent".into());
        let claimed = std::mem::replace(&mut self.claimed, 0..0);
        self.redo
            .drain(..)
            .chain(claimed.map(|p| queue.phone(p)))
            .map(|i| (i, Outcome::Retry { reason: Reason::Connection(why.clone()), after: None }))
            .collect()
    }
}

/// Which of a batch's phones have a request in flight on one lane: a bit per phone.
#[derive(Debug)]
struct InFlight {
    bits: Vec<u64>,
    count: usize,
}

impl InFlight {
    fn new(n: usize) -> InFlight {
        InFlight { bits: vec![0; n.div_ceil(64)], count: 0 }
    }

    fn set(&mut self, i: usize) {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        if self.bits[w] & b == 0 {
            self.bits[w] |= b;
            self.count += 1;
        }
    }

    fn unset(&mut self, i: usize) {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        if self.bits[w] & b != 0 {
            self.bits[w] &= !b;
            self.count -= 1;
        }
    }

    /// Every phone in flight, forgetting them.
    fn drain(&mut self) -> Vec<usize> {
        let mut v = Vec::with_capacity(self.count);
        for (w, word) in self.bits.iter_mut().enumerate() {
            while *word != 0 {
                let b = word.trailing_zeros() as usize;
                *word &= *word - 1;
                v.push(w * 64 + b);
            }
        }
        self.count = 0;
        v
    }
}

#[cfg(test)]
mod tests;
