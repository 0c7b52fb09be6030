//! Pairing and signed phone requests, the pure parts: the pairing exchange itself (SPAKE2
//! with key confirmation, [`pake`]), the messages of signed requests and the refusals
//! ([`wire`]), the share code sealed to the phone that asked for it ([`share`]), the rate
//! limits, and the HMAC-SHA256 recipe of signed requests (here).
//!
//! Everything here is pure: values in, decisions out, time passed in as UNIX ms, randomness
//! passed in. The SQL that keeps windows, attempts, budget events, nonces and phone secrets
//! lives in `store::pairing` (so a second instance sharing the database decides the same);
//! `service::pairing` joins the two and answers through the publisher. The protocol is
//! documented for app developers in `docs/pairing.md`.

pub mod pake;
pub mod share;
pub mod wire;

pub use pake::{Code, CODE_DIGITS};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How long a window stays open when nobody says otherwise, and the longest allowed.
pub const DEFAULT_MINUTES: u32 = 5;
pub const MAX_MINUTES: u32 = 60;
/// A signed request whose timestamp is further than this from our clock is stale.
pub const SIGNED_MAX_SKEW_MS: i64 = 5 * 60 * 1000;
/// First line of every string a phone signs: names the recipe, so a later version can differ.
pub const SIGNING_VERSION: &str = "dingdong-v1";

/// A rate limit: at most `limit` events of one scope in any `per_ms` long stretch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: u32,
    pub per_ms: i64,
}

impl RateLimit {
    /// Whether one more event is allowed, given how many happened in the last `per_ms`.
    pub fn allows(self, recent: u32) -> bool {
        recent < self.limit
    }
}

/// The limits the daemon enforces (all counted in the database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Well-formed pair requests, all phones together: the brute-force surface.
    pub pair_requests: RateLimit,
    /// Authenticated signed requests of one phone.
    pub phone_requests: RateLimit,
    /// Windows opened by the gateway's pair button (anyone on the broker can publish it).
    pub button_windows: RateLimit,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pair_requests: RateLimit { limit: 20, per_ms: 60_000 },
            phone_requests: RateLimit { limit: 10, per_ms: 60_000 },
            button_windows: RateLimit { limit: 6, per_ms: 3_600_000 },
        }
    }
}

/// The string a phone signs for a request on `P/phone/<phone_id>/<action>`: the lines
/// `dingdong-v1`, phone id, action, request id, timestamp (UNIX ms), nonce, then the action's
/// arguments in their documented order, joined by `\n` (no trailing newline). No part may
/// contain a newline ([`wire`] refuses them), so the joining is unambiguous.
pub fn signing_string(phone_id: i64, action: &str, request_id: &str, ts: i64, nonce: &str, args: &[&str]) -> String {
    let mut s = format!("{SIGNING_VERSION}\n{phone_id}\n{action}\n{request_id}\n{ts}\n{nonce}");
    for a in args {
        s.push('\n');
        s.push_str(a);
    }
    s
}

/// HMAC-SHA256 of `message` under `secret`.
pub fn sign(secret: &[u8], message: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Why a signed request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// No secret for that phone, or the signature is wrong.
    Unauthorized,
    /// The timestamp is more than [`SIGNED_MAX_SKEW_MS`] from `now`.
    Stale,
    /// The nonce was seen before for this phone.
    Replayed,
}

/// Verifies a signed request. The signature is checked first (in constant time) so that
/// someone without the secret learns nothing else; then freshness, then the nonce.
pub fn verify(
    secret: Option<&[u8]>,
    message: &str,
    sig: &[u8],
    ts: i64,
    now: i64,
    nonce_seen: bool,
) -> Result<(), VerifyError> {
    let Some(secret) = secret else { return Err(VerifyError::Unauthorized) };
    let expected = sign(secret, message);
    if sig.len() != expected.len() || !bool::from(expected.ct_eq(sig)) {
        return Err(VerifyError::Unauthorized);
    }
    if now.abs_diff(ts) > SIGNED_MAX_SKEW_MS as u64 {
        return Err(VerifyError::Stale);
    }
    if nonce_seen {
        return Err(VerifyError::Replayed);
    }
    Ok(())
}

/// Until when a nonce must be remembered: as long as its timestamp could still be fresh.
pub fn nonce_keep_until(ts: i64) -> i64 {
    ts.saturating_add(SIGNED_MAX_SKEW_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_secret() -> [u8; 32] {
        let mut s = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut s);
        s
    }

    #[test]
    fn rate_limits() {
        let l = RateLimit { limit: 3, per_ms: 60_000 };
        assert!(l.allows(0) && l.allows(2));
        assert!(!l.allows(3) && !l.allows(100));
        let d = Limits::default();
        assert!(d.pair_requests.limit >= pake::budget::WINDOW_ATTEMPTS);
    }

    /// The worked example of docs/pairing.md: if this changes, change the doc.
    #[test]
    fn worked_example_of_the_signing_recipe() {
        let secret: Vec<u8> = (0u8..32).collect();
        assert_eq!(hex::encode(&secret), "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
        let token = "a1".repeat(32);
        let msg =
            signing_string(7, "token", "req-0001", 1_700_000_000_000, "6b8f0c2d4e1a3b5c", &[&token, "production"]);
        assert_eq!(
            msg,
            format!("dingdong-v1\n7\ntoken\nreq-0001\n1700000000000\n6b8f0c2d4e1a3b5c\n{token}\nproduction")
        );
        let sig = hex::encode(sign(&secret, &msg));
        assert_eq!(sig, WORKED_EXAMPLE_SIG);
        let unpair = signing_string(7, "unpair", "req-0002", 1_700_000_000_000, "0f1e2d3c4b5a6978", &[]);
        assert_eq!(hex::encode(sign(&secret, &unpair)), WORKED_EXAMPLE_UNPAIR_SIG);
    }

    const WORKED_EXAMPLE_SIG: &str = "cb05812474689005dc92a510fff88746e6ff04ddd9f3603e8972d3669d08a6ae";
    const WORKED_EXAMPLE_UNPAIR_SIG: &str = "fdb384e758c24d801932f523963be6ee49b95b509a7d92f6be84bb237d78806b";

    #[test]
    fn verification_rules() {
        let secret = new_secret();
        let msg = signing_string(3, "unpair", "r", 1_000_000, "n0n0n0n0n0n0n0n0", &[]);
        let sig = sign(&secret, &msg);
        let now = 1_000_000 + 60_000;
        assert_eq!(verify(Some(&secret), &msg, &sig, 1_000_000, now, false), Ok(()));
        // Forged: another key, a flipped bit, a truncated or missing signature, no secret.
        let other = new_secret();
        assert_eq!(verify(Some(&other), &msg, &sig, 1_000_000, now, false), Err(VerifyError::Unauthorized));
        let mut flipped = sig;
        flipped[0] ^= 1;
        assert_eq!(verify(Some(&secret), &msg, &flipped, 1_000_000, now, false), Err(VerifyError::Unauthorized));
        assert_eq!(verify(Some(&secret), &msg, &sig[..16], 1_000_000, now, false), Err(VerifyError::Unauthorized));
        assert_eq!(verify(Some(&secret), &msg, &[], 1_000_000, now, false), Err(VerifyError::Unauthorized));
        assert_eq!(verify(None, &msg, &sig, 1_000_000, now, false), Err(VerifyError::Unauthorized));
        // Tampered body: another phone id signs differently.
        let other_phone = signing_string(4, "unpair", "r", 1_000_000, "n0n0n0n0n0n0n0n0", &[]);
        assert_eq!(verify(Some(&secret), &other_phone, &sig, 1_000_000, now, false), Err(VerifyError::Unauthorized));
        // Stale either way, by one ms past five minutes; fine at exactly five minutes.
        let edge = 1_000_000 + SIGNED_MAX_SKEW_MS;
        assert_eq!(verify(Some(&secret), &msg, &sig, 1_000_000, edge, false), Ok(()));
        assert_eq!(verify(Some(&secret), &msg, &sig, 1_000_000, edge + 1, false), Err(VerifyError::Stale));
        assert_eq!(
            verify(Some(&secret), &msg, &sig, 1_000_000, 1_000_000 - SIGNED_MAX_SKEW_MS - 1, false),
            Err(VerifyError::Stale)
        );
        // Replayed.
        assert_eq!(verify(Some(&secret), &msg, &sig, 1_000_000, now, true), Err(VerifyError::Replayed));
        // Forged and replayed reads as forged: the signature is judged first.
        assert_eq!(verify(Some(&other), &msg, &sig, 1_000_000, now, true), Err(VerifyError::Unauthorized));
        assert_eq!(nonce_keep_until(1_000_000), edge);
    }
}
