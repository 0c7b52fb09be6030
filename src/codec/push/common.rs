//! What the FCM and Web Push rules share: the [`Verdict`] on a push service's answer, the
//! `Retry-After` header, the remaining time-to-live of a ring, and the words of a ring
//! notification (the same as `apns::ring_payload`'s alert, so every platform reads alike).
//!
//! Pure: the caller passes the clock in. The lead maps [`Verdict`] onto the crate's `Outcome`.

use std::time::{Duration, SystemTime};

/// What to do with one phone after the push service answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The push service took the message (it will deliver it or let it expire).
    Delivered,
    /// Try again later: the service is busy or broken. `after` is what `Retry-After` asked.
    Retry { after: Option<Duration>, reason: String },
    /// The registration is gone for good: remove the phone.
    Prune { reason: String },
    /// FCM only: the OAuth access token was refused; mint a new one once and resend.
    RefreshAuth,
    /// This message will never go through. `credentials` marks a problem with our own
    /// credentials or configuration (VAPID key, service account, project): every other phone
    /// would fail the same way, so the transport should stop and report it as APNs auth errors are.
    Failed { reason: String, status: u16, credentials: bool },
}

/// Longest `Retry-After` we honour; a longer one is clamped so a confused server cannot park a
/// ring past any useful expiry (the outbox's own expiry check drops it anyway).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date. A date in the past means
/// "now" (zero); garbage means "no advice" (`None`), so the caller falls back to its backoff.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    let d = if v.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only; an absurd number of them saturates rather than failing.
        Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// Whole seconds left before a ring expires (`expires_at_ms` and `now_ms` in UNIX
/// milliseconds), rounded down; `None` once it has expired, and then nothing may be sent.
/// The push services take this as `TTL` (Web Push) or `android.ttl` (FCM).
pub fn remaining_ttl(expires_at_ms: i64, now_ms: i64) -> Option<u64> {
    let left = expires_at_ms.checked_sub(now_ms)?;
    if left <= 0 {
        return None;
    }
    Some((left / 1000) as u64)
}

/// The notification title of a ring: the doorbell's name.
pub fn ring_title(doorbell_name: &str) -> String {
    doorbell_name.to_string()
}

/// The notification body of a ring.
pub fn ring_body(doorbell_name: &str) -> String {
    format!("Someone is at {doorbell_name}")
}

/// The first `n` characters of an opaque token or URL part, all a log line may show.
pub(crate) fn short(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_takes_seconds() {
        assert_eq!(parse_retry_after("120", at(0)), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", at(0)), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_takes_an_http_date() {
        // 1994-11-06 08:49:37 UTC = 784111777.
        let now = at(784_111_777 - 30);
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::from_secs(30)));
        // A date already past: retry now.
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at(784_111_777 + 5)), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_garbage_is_no_advice_and_huge_values_are_clamped() {
        assert_eq!(parse_retry_after("soon", at(0)), None);
        assert_eq!(parse_retry_after("", at(0)), None);
        assert_eq!(parse_retry_after("-5", at(0)), None);
        assert_eq!(parse_retry_after("1.5", at(0)), None);
        assert_eq!(parse_retry_after("99999999999999999999999", at(0)), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("86400", at(0)), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn ttl_is_the_whole_seconds_left_and_none_once_expired() {
        assert_eq!(remaining_ttl(10_999, 1_000), Some(9));
        assert_eq!(remaining_ttl(2_000, 1_000), Some(1));
        assert_eq!(remaining_ttl(1_500, 1_000), Some(0));
        assert_eq!(remaining_ttl(1_000, 1_000), None);
        assert_eq!(remaining_ttl(900, 1_000), None);
        assert_eq!(remaining_ttl(i64::MIN, i64::MAX), None);
    }

    #[test]
    fn ring_words_match_the_apns_alert() {
        assert_eq!(ring_title("Front door"), "Front door");
        assert_eq!(ring_body("Front door"), "Someone is at Front door");
    }

    #[test]
    fn short_cuts_on_characters() {
        assert_eq!(short("abcdefghij", 8), "abcdefgh");
        assert_eq!(short("abc", 8), "abc");
        assert_eq!(short("ééééééééé", 8), "éééééééé");
    }
}
