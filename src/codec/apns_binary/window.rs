//! The resumable sender's in-flight window: a pure state machine over the positions of one
//! batch (position `p` travels with identifier `p + 1`; 0 is what the gateway answers when
//! it cannot tell, and [`SENTINEL_ID`] is reserved for the confirmation sentinel).
//!
//! Positions `base..cursor` were written on the current connection and are unconfirmed.
//! Accepted notifications get no reply, so confirmation comes only from an error-response:
//! every position before the one it names was accepted. When the window is full or the batch
//! is written, the writer adds the sentinel, a notification Apple is certain to reject, whose
//! rejection proves everything before it was accepted. The I/O loop (`sender`) writes what
//! [`Window::next_step`] says and feeds answers to [`Window::on_answer`] / [`Window::on_closed`].

use super::frames::Status;
use crate::domain::{Outcome, Reason};
use std::ops::Range;

/// The identifier of the sentinel; no position ever gets it.
pub const SENTINEL_ID: u32 = u32::MAX;
/// The sentinel's token: all zeros, which no device ever has.
pub const SENTINEL_TOKEN: [u8; 32] = [0; 32];
/// Positions must leave identifiers 0 and [`SENTINEL_ID`] free.
pub const MAX_POSITIONS: usize = (u32::MAX - 1) as usize;

/// The identifier that carries position `pos`.
pub fn identifier(pos: usize) -> u32 {
    (pos + 1) as u32
}

/// What the writer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Write the notification at this position.
    Send(usize),
    /// Write the sentinel, then only wait for the answer.
    Sentinel,
    /// The sentinel is written: nothing more on this connection.
    Wait,
}

/// Decided outcomes: runs of consecutive positions sharing one outcome.
pub type Settled = Vec<(Range<usize>, Outcome)>;

#[derive(Debug, Clone)]
pub struct Window {
    end: usize,
    /// First position without a final answer.
    base: usize,
    /// Next position to write on the current connection.
    cursor: usize,
    /// `Some(cursor)` once the sentinel is written behind everything before `cursor`.
    sentinel: Option<usize>,
    /// Most unconfirmed positions on a connection: bounds the resends after a silent drop.
    limit: usize,
    /// False for the simple format, whose errors name no notification.
    ids: bool,
}

impl Window {
    pub fn new(range: Range<usize>, limit: usize, ids: bool) -> Window {
        Window { end: range.end, base: range.start, cursor: range.start, sentinel: None, limit: limit.max(1), ids }
    }

    /// Every position has a final answer.
    pub fn done(&self) -> bool {
        self.base >= self.end
    }

    /// Positions written on this connection and not yet confirmed.
    pub fn unconfirmed(&self) -> Range<usize> {
        self.base..self.cursor
    }

    /// Positions without a final answer.
    pub fn remaining(&self) -> usize {
        self.end - self.base
    }

    pub fn next_step(&mut self) -> Step {
        if self.sentinel.is_some() {
            return Step::Wait;
        }
        if self.cursor < self.end && self.cursor - self.base < self.limit {
            self.cursor += 1;
            return Step::Send(self.cursor - 1);
        }
        self.sentinel = Some(self.cursor);
        Step::Sentinel
    }

    /// Settles on an error-response and rewinds for a new connection.
    pub fn on_answer(&mut self, status: Status, identifier: u32) -> Settled {
        let (base, cursor) = (self.base, self.cursor);
        let written = |id: u32| -> Option<usize> {
            if id == 0 || id == SENTINEL_ID {
                return None;
            }
            let p = id as usize - 1;
            (base..cursor).contains(&p).then_some(p)
        };
        let mut settled: Settled = Vec::new();
        let resume = match (self.sentinel, identifier) {
            // The sentinel's rejection: everything before it was accepted.
            (Some(s), SENTINEL_ID) => {
                settled.push((base..s, Outcome::Delivered));
                s
            }
            // Simple format: how far the gateway got is unknown. A shutdown rejected nothing,
            // so resending is safe (at-least-once); a bad token would be hit again, so the
            // unconfirmed run is recorded as failed instead of resent or pruned.
            _ if !self.ids => {
                if status == Status::Shutdown {
                    base
                } else {
                    let reason = Reason::Other(format!("unattributable {} (simple format)", status.reason()));
                    settled.push((base..cursor, Outcome::Failed { reason, status: status.code() as u16 }));
                    cursor
                }
            }
            // Status 10 names the last notification that succeeded.
            _ if status == Status::Shutdown => match written(identifier) {
                Some(p) => {
                    settled.push((base..p + 1, Outcome::Delivered));
                    p + 1
                }
                None => base,
            },
            // Every other status names the one that failed.
            _ => match written(identifier) {
                Some(p) => {
                    settled.push((base..p, Outcome::Delivered));
                    settled.push((p..p + 1, status.outcome()));
                    p + 1
                }
                // Cannot attribute it: resend everything unconfirmed (at-least-once).
                None => base,
            },
        };
        self.restart(resume);
        settled.retain(|(r, _)| !r.is_empty());
        settled
    }

    /// The connection ended without an error-response: nothing is known about the
    /// unconfirmed positions, so they are all written again on the next connection.
    pub fn on_closed(&mut self) -> Settled {
        self.restart(self.base);
        Vec::new()
    }

    /// Gives up: the positions still without an answer.
    pub fn give_up(&mut self) -> Range<usize> {
        let r = self.base..self.end;
        self.restart(self.end);
        r
    }

    /// Sets how many positions the next connection may write before its sentinel.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(1);
    }

    fn restart(&mut self, from: usize) {
        self.base = from;
        self.cursor = from;
        self.sentinel = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_all(w: &mut Window) -> Vec<Step> {
        let mut steps = Vec::new();
        loop {
            let s = w.next_step();
            if s == Step::Wait {
                return steps;
            }
            steps.push(s);
        }
    }

    #[test]
    fn identifiers_start_at_one_and_skip_the_reserved_ones() {
        assert_eq!(identifier(0), 1);
        assert_eq!(identifier(MAX_POSITIONS - 1), u32::MAX - 1);
        assert_ne!(identifier(MAX_POSITIONS - 1), SENTINEL_ID);
    }

    #[test]
    fn a_clean_batch_ends_with_the_sentinel_and_its_rejection_confirms_all() {
        let mut w = Window::new(0..3, 100, true);
        assert_eq!(write_all(&mut w), vec![Step::Send(0), Step::Send(1), Step::Send(2), Step::Sentinel]);
        assert_eq!(w.on_answer(Status::InvalidToken, SENTINEL_ID), vec![(0..3, Outcome::Delivered)]);
        assert!(w.done());
    }

    #[test]
    fn an_error_settles_before_fails_one_and_resends_after() {
        let mut w = Window::new(0..10, 100, true);
        write_all(&mut w);
        let s = w.on_answer(Status::InvalidToken, identifier(4));
        assert_eq!(
            s,
            vec![(0..4, Outcome::Delivered), (4..5, Outcome::Prune { reason: Reason::BadDeviceToken, since: None })]
        );
        assert_eq!(w.unconfirmed(), 5..5);
        assert_eq!(w.next_step(), Step::Send(5));
    }

    #[test]
    fn shutdown_names_the_last_accepted() {
        let mut w = Window::new(0..10, 100, true);
        write_all(&mut w);
        assert_eq!(w.on_answer(Status::Shutdown, identifier(6)), vec![(0..7, Outcome::Delivered)]);
        assert_eq!(w.next_step(), Step::Send(7));
        // Shutdown before anything was accepted: identifier 0, nothing settled.
        let mut w = Window::new(0..10, 100, true);
        write_all(&mut w);
        assert_eq!(w.on_answer(Status::Shutdown, 0), vec![]);
        assert_eq!(w.next_step(), Step::Send(0));
    }

    #[test]
    fn unattributable_errors_and_drops_resend_the_unconfirmed_tail() {
        let mut w = Window::new(0..10, 100, true);
        write_all(&mut w);
        w.on_answer(Status::InvalidToken, identifier(1)); // settles 0..2
        for _ in 0..5 {
            w.next_step();
        }
        assert_eq!(w.unconfirmed(), 2..7);
        assert_eq!(w.on_closed(), vec![]);
        assert_eq!(w.next_step(), Step::Send(2));
        for _ in 0..3 {
            w.next_step();
        }
        // An identifier never written on this connection, or 0: nothing can be settled.
        assert_eq!(w.on_answer(Status::InvalidToken, identifier(9)), vec![]);
        assert_eq!(w.on_answer(Status::ProcessingError, 0), vec![]);
        assert_eq!(w.next_step(), Step::Send(2));
    }

    #[test]
    fn a_full_window_asks_for_a_sentinel() {
        let mut w = Window::new(0..10, 3, true);
        assert_eq!(write_all(&mut w), vec![Step::Send(0), Step::Send(1), Step::Send(2), Step::Sentinel]);
        assert_eq!(w.on_answer(Status::InvalidToken, SENTINEL_ID), vec![(0..3, Outcome::Delivered)]);
        assert_eq!(write_all(&mut w), vec![Step::Send(3), Step::Send(4), Step::Send(5), Step::Sentinel]);
        assert_eq!(w.remaining(), 7);
    }

    #[test]
    fn lanes_work_on_their_own_range() {
        let mut w = Window::new(5..8, 100, true);
        assert_eq!(write_all(&mut w), vec![Step::Send(5), Step::Send(6), Step::Send(7), Step::Sentinel]);
        // An identifier of another lane is not ours to settle.
        assert_eq!(w.on_answer(Status::InvalidToken, identifier(2)), vec![]);
        write_all(&mut w);
        assert_eq!(w.on_answer(Status::InvalidToken, identifier(6))[0], (5..6, Outcome::Delivered));
        assert_eq!(w.give_up(), 7..8);
        assert!(w.done());
    }

    #[test]
    fn other_statuses_fail_or_retry_the_named_one() {
        let mut w = Window::new(0..4, 100, true);
        write_all(&mut w);
        let s = w.on_answer(Status::InvalidPayloadSize, identifier(0));
        assert_eq!(s.len(), 1);
        assert!(matches!(s[0], (ref r, Outcome::Failed { status: 7, .. }) if *r == (0..1)));
        write_all(&mut w);
        let s = w.on_answer(Status::ProcessingError, identifier(2));
        assert!(matches!(s[1], (ref r, Outcome::Retry { .. }) if *r == (2..3)));
    }

    #[test]
    fn simple_format_confirms_by_sentinel_and_never_guesses() {
        let mut w = Window::new(0..6, 100, false);
        write_all(&mut w);
        assert_eq!(w.on_answer(Status::InvalidToken, SENTINEL_ID), vec![(0..6, Outcome::Delivered)]);

        let mut w = Window::new(0..6, 100, false);
        for _ in 0..4 {
            w.next_step();
        }
        // A bad token somewhere in 0..4: nothing resent (it would be rejected again and
        // repeat the accepted ones), nothing pruned (we do not know which), all recorded.
        let s = w.on_answer(Status::InvalidToken, 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, 0..4);
        assert!(matches!(s[0].1, Outcome::Failed { status: 8, .. }));
        assert_eq!(w.next_step(), Step::Send(4));
        // A shutdown rejected nothing: resend (at-least-once).
        assert_eq!(w.on_answer(Status::Shutdown, 0), vec![]);
        assert_eq!(w.next_step(), Step::Send(4));
    }
}
