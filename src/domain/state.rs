//! The states of a ring and of each phone in it, as types. Their names (`pending`, `done`,
//! `delivered`, ...) are what the database stores and what a ring's published outcome says;
//! the store maps them to and from SQL, serde to and from JSON, both with these same words.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a ring is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RingState {
    /// Phones are still being reached (or will be, after a restart).
    Pending,
    /// Every phone has its final answer (or expired on the way).
    Done,
    /// Too old to send when it arrived, or when dingdong came back.
    Expired,
}

impl RingState {
    pub const ALL: [RingState; 3] = [RingState::Pending, RingState::Done, RingState::Expired];

    pub fn as_str(self) -> &'static str {
        match self {
            RingState::Pending => "pending",
            RingState::Done => "done",
            RingState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<RingState> {
        RingState::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// What became of one phone of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhoneState {
    /// Not answered yet (or to be retried).
    Pending,
    /// The push service accepted it.
    Delivered,
    /// Refused for good; the reason says why.
    Failed,
    /// The token is dead and the phone was removed.
    Pruned,
    /// The ring's time ran out before the phone could be reached.
    Expired,
    /// Not sent: its person muted the doorbell, or is in quiet hours, in `skip` mode.
    Muted,
    /// Sent passive and silent: muted or quiet hours in `silent` mode.
    Silenced,
}

impl PhoneState {
    pub const ALL: [PhoneState; 7] = [
        PhoneState::Pending,
        PhoneState::Delivered,
        PhoneState::Failed,
        PhoneState::Pruned,
        PhoneState::Expired,
        PhoneState::Muted,
        PhoneState::Silenced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PhoneState::Pending => "pending",
            PhoneState::Delivered => "delivered",
            PhoneState::Failed => "failed",
            PhoneState::Pruned => "pruned",
            PhoneState::Expired => "expired",
            PhoneState::Muted => "muted",
            PhoneState::Silenced => "silenced",
        }
    }

    pub fn parse(s: &str) -> Option<PhoneState> {
        PhoneState::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the phone has its final answer.
    pub fn is_final(self) -> bool {
        self != PhoneState::Pending
    }
}

impl fmt::Display for RingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for PhoneState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words are the ones the database and the published outcome always had.
    #[test]
    fn names_round_trip_through_text_and_json() {
        for s in RingState::ALL {
            assert_eq!(RingState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for s in PhoneState::ALL {
            assert_eq!(PhoneState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::from_str::<PhoneState>(&format!("\"{s}\"")).unwrap(), s);
        }
        let words: Vec<&str> = PhoneState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(words, ["pending", "delivered", "failed", "pruned", "expired", "muted", "silenced"]);
        assert_eq!(RingState::parse("Done"), None);
        assert!(!PhoneState::Pending.is_final() && PhoneState::Expired.is_final());
    }
}
