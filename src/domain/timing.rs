//! Where a ring's time goes: when it reached each stage of its way, from the press taken off
//! the broker to its outcome handed to the publisher. Published with the outcome
//! (`timing_us`) so that anyone can see it, and read by the benchmark.

use serde::Serialize;

/// The moments (microseconds since the epoch) a ring reached each stage; `None` for a stage it
/// did not pass (a resumed ring was not received now; a ring of no phones sent nothing).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingTiming {
    /// The press was taken off the broker.
    pub received: i64,
    /// Its ring was committed to the database.
    pub recorded: Option<i64>,
    /// Every recipient of the ring was read.
    pub recipients: Option<i64>,
    /// The first request was handed to a connection.
    pub first_request: Option<i64>,
    /// Every connection of the ring had its window of streams open (with token auth, after
    /// its first answer).
    pub full_width: Option<i64>,
    /// The last phone's answer arrived.
    pub last_answer: Option<i64>,
    /// The outcome was recorded and handed to the publisher.
    pub finished: Option<i64>,
}

/// What a transport tells of one batch's timing (µs since the epoch).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendTiming {
    pub first_request: Option<i64>,
    pub full_width: Option<i64>,
    /// How many connections the batch was spread over.
    pub lanes: usize,
}

impl SendTiming {
    /// Two batches (two environments, two rounds) as one.
    pub fn merge(self, other: SendTiming) -> SendTiming {
        SendTiming {
            first_request: RingTiming::earliest(self.first_request, other.first_request),
            full_width: RingTiming::latest(self.full_width, other.full_width),
            lanes: self.lanes + other.lanes,
        }
    }
}

/// [`RingTiming`] as published: the stages in microseconds after `received_at_us`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct TimingReport {
    pub received_at_us: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_request: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_width: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_answer: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<i64>,
}

impl RingTiming {
    /// A ring whose press was taken off the broker at `received` (µs).
    pub fn received_at(received: i64) -> RingTiming {
        RingTiming { received, ..Default::default() }
    }

    /// Keeps the earlier of two moments for a stage reached more than once (several batches).
    pub fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Keeps the later of two moments.
    pub fn latest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
        a.max(b)
    }

    pub fn report(&self) -> TimingReport {
        let after = |t: Option<i64>| t.map(|t| t - self.received);
        TimingReport {
            received_at_us: self.received,
            recorded: after(self.recorded),
            recipients: after(self.recipients),
            first_request: after(self.first_request),
            full_width: after(self.full_width),
            last_answer: after(self.last_answer),
            finished: after(self.finished),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_published_after_the_press_was_received() {
        let t = RingTiming {
            received: 1_000_000,
            recorded: Some(1_000_900),
            first_request: Some(1_002_000),
            ..RingTiming::received_at(1_000_000)
        };
        let json = serde_json::to_value(t.report()).unwrap();
        assert_eq!(json, serde_json::json!({"received_at_us": 1_000_000, "recorded": 900, "first_request": 2_000}));
    }

    #[test]
    fn earliest_and_latest_ignore_missing_stages() {
        assert_eq!(RingTiming::earliest(Some(5), Some(3)), Some(3));
        assert_eq!(RingTiming::earliest(None, Some(3)), Some(3));
        assert_eq!(RingTiming::earliest(None, None), None);
        assert_eq!(RingTiming::latest(Some(5), None), Some(5));
        assert_eq!(RingTiming::latest(Some(5), Some(7)), Some(7));
    }
}
