//! Apple's HTTP/2 answers as decisions: status and body in, an [`Outcome`] out, and what the
//! answer asks the client to do besides ([`Effect`]). Pure; the client in `net::apns::http2`
//! carries out the side effects (a fresh provider token, stopping on a credentials refusal).
//! [`lane`] is the state of one connection's share of a batch.

pub mod lane;

use crate::domain::{Outcome, Reason};

/// What an answer asks of the client besides recording the phone's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `ExpiredProviderToken`: mint a fresh provider token now.
    RefreshToken,
    /// Apple refused our credentials: stop the transport instead of hammering Apple.
    Stop(Reason),
}

/// The side effect `outcome` asks for, if any.
pub fn effect(outcome: &Outcome) -> Option<Effect> {
    match outcome.reason()? {
        Reason::ExpiredProviderToken => Some(Effect::RefreshToken),
        r if r.is_credentials() => Some(Effect::Stop(r.clone())),
        _ => None,
    }
}

/// The decision for an answer: `status` and up to 4 KB of its JSON body
/// (`{"reason": ..., "timestamp": ...}`).
pub fn classify(status: u16, body: &[u8]) -> Outcome {
    if status == 200 {
        return Outcome::Delivered;
    }
    #[derive(serde::Deserialize)]
    struct ErrBody {
        reason: Option<String>,
        timestamp: Option<i64>,
    }
    let parsed: Option<ErrBody> = serde_json::from_slice(body).ok();
    let (reason, ts) = parsed.map(|b| (b.reason, b.timestamp)).unwrap_or((None, None));
    classify_reason(status, reason.as_deref(), ts)
}

/// The decision for a status, Apple's `reason` and, for 410, its `timestamp` (ms).
pub fn classify_reason(status: u16, reason: Option<&str>, timestamp_ms: Option<i64>) -> Outcome {
    if status == 200 {
        return Outcome::Delivered;
    }
    let reason = reason.map(Reason::parse).unwrap_or_else(|| Reason::Other(format!("HTTP {status}")));
    match (status, &reason) {
        (410, _) => Outcome::Prune { reason, since: timestamp_ms },
        (400, Reason::BadDeviceToken | Reason::DeviceTokenNotForTopic) => Outcome::Prune { reason, since: None },
        (403, Reason::ExpiredProviderToken) => Outcome::Retry { reason, after: None },
        (429 | 500 | 503, _) => Outcome::Retry { reason, after: None },
        _ => Outcome::Failed { reason, status },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_from_http() {
        assert_eq!(classify_reason(200, None, None), Outcome::Delivered);
        assert_eq!(
            classify_reason(410, Some("Unregistered"), Some(5)),
            Outcome::Prune { reason: Reason::Unregistered, since: Some(5) }
        );
        assert_eq!(
            classify_reason(400, Some("BadDeviceToken"), None),
            Outcome::Prune { reason: Reason::BadDeviceToken, since: None }
        );
        assert!(matches!(classify_reason(400, Some("BadTopic"), None), Outcome::Failed { status: 400, .. }));
        assert!(matches!(classify_reason(503, Some("ServiceUnavailable"), None), Outcome::Retry { .. }));
        assert!(matches!(classify_reason(429, Some("TooManyRequests"), None), Outcome::Retry { .. }));
        assert!(matches!(classify_reason(403, Some("ExpiredProviderToken"), None), Outcome::Retry { .. }));
        let f = classify_reason(403, Some("InvalidProviderToken"), None);
        assert!(f.reason().unwrap().is_credentials());
        assert_eq!(Reason::parse("Whatever"), Reason::Other("Whatever".into()));
    }

    #[test]
    fn effects_of_answers() {
        assert_eq!(effect(&classify(200, b"")), None);
        assert_eq!(effect(&classify(403, br#"{"reason":"ExpiredProviderToken"}"#)), Some(Effect::RefreshToken));
        assert_eq!(
            effect(&classify(403, br#"{"reason":"InvalidProviderToken"}"#)),
            Some(Effect::Stop(Reason::InvalidProviderToken))
        );
        assert_eq!(effect(&classify(410, br#"{"reason":"Unregistered"}"#)), None);
        assert_eq!(effect(&classify(503, b"")), None);
    }

    #[test]
    fn bodies_are_read() {
        assert_eq!(classify(200, b""), Outcome::Delivered);
        assert_eq!(
            classify(410, br#"{"reason":"Unregistered","timestamp":7}"#),
            Outcome::Prune { reason: Reason::Unregistered, since: Some(7) }
        );
        assert_eq!(
            classify(500, b"not json"),
            Outcome::Retry { reason: Reason::Other("HTTP 500".into()), after: None }
        );
    }
}
