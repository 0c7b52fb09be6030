//! Pairing and sharing: one-time codes, pairing windows and their attempt limits, rate
//! limits, phone secrets and the HMAC-SHA256 recipe of signed phone requests.
//!
//! Everything here is pure: values in, decisions out, time passed in as UNIX ms. The SQL that
//! keeps windows, attempts, nonces and rate events lives in `store::pairing` (so a second
//! instance sharing the database decides the same); the MQTT side lives in `daemon`, and
//! [`service`] joins the two without doing any MQTT I/O itself. The protocol is documented for
//! app developers in `docs/pairing.md`.

pub mod pake;
pub mod wire;

use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Digits of a one-time code: 10^6 codes, of which an attacker may try [`MAX_ATTEMPTS`] per
/// window.
pub const CODE_DIGITS: usize = 6;
/// Wrong codes after which every open window is closed for good.
pub const MAX_ATTEMPTS: u32 = 5;
/// How long a window stays open when nobody says otherwise, and the longest allowed.
pub const DEFAULT_MINUTES: u32 = 5;
pub const MAX_MINUTES: u32 = 60;
/// A signed request whose timestamp is further than this from our clock is stale.
pub const SIGNED_MAX_SKEW_MS: i64 = 5 * 60 * 1000;
/// Bytes of a per-phone secret.
pub const SECRET_BYTES: usize = 32;
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

/// A one-time code, as the user types it. Not `Debug`/`Display` on purpose: it must not end
/// up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Code(String);

impl Code {
    /// A fresh code from the operating system's CSPRNG, uniform over all 10^6 values.
    pub fn generate() -> Code {
        let n: u32 = OsRng.gen_range(0..10u32.pow(CODE_DIGITS as u32));
        Code(format!("{n:0width$}", width = CODE_DIGITS))
    }

    /// The digits, for the one place that shows them (the CLI, the code file, a share reply).
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// Whether `s` has the shape of a code (exactly [`CODE_DIGITS`] ASCII digits).
    pub fn well_formed(s: &str) -> bool {
        s.len() == CODE_DIGITS && s.bytes().all(|b| b.is_ascii_digit())
    }
}

/// 16 random bytes that make every window's code hash different.
pub fn new_salt() -> [u8; 16] {
    let mut s = [0u8; 16];
    OsRng.fill_bytes(&mut s);
    s
}

/// A fresh per-phone secret.
pub fn new_secret() -> [u8; SECRET_BYTES] {
    let mut s = [0u8; SECRET_BYTES];
    OsRng.fill_bytes(&mut s);
    s
}

/// What the database keeps of a code: SHA-256 over a label, the window's salt and the digits.
/// It keeps the code out of dumps and backups and gives a fixed-size value to compare in
/// constant time; it is no defence against someone who can read the live database (10^6
/// candidates are hashed in a moment), who could add a phone directly anyway.
pub fn code_hash(salt: &[u8], code: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"dingdong-pair-code\0");
    h.update(salt);
    h.update(code.as_bytes());
    h.finalize().into()
}

/// Constant-time comparison of a typed code with a window's stored hash.
pub fn code_matches(salt: &[u8], stored: &[u8], code: &str) -> bool {
    let h = code_hash(salt, code);
    stored.len() == h.len() && bool::from(h.ct_eq(stored))
}

/// What the store reads of a pairing window to judge a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub id: i64,
    pub salt: Vec<u8>,
    pub code_hash: Vec<u8>,
    pub expires_at: i64,
    pub attempts: u32,
    pub used: bool,
}

impl Window {
    /// Whether a code may still be redeemed against this window at `now`.
    pub fn is_open(&self, now: i64) -> bool {
        !self.used && now < self.expires_at && self.attempts < MAX_ATTEMPTS
    }
}

/// The decision on one pair request's code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeem {
    /// The code opens window `window`: mark it used, pair the phone.
    Pair { window: i64 },
    /// No open window has this code (wrong, expired, used or locked read the same). Every open
    /// window counts one more attempt; `lock` lists those that reach [`MAX_ATTEMPTS`].
    Wrong { bump: Vec<i64>, lock: Vec<i64> },
}

/// Judges `code` against every window. Every open window's hash is compared, whatever the
/// result, each in constant time; a malformed code matches nothing but still counts.
pub fn redeem(windows: &[Window], code: &str, now: i64) -> Redeem {
    let mut found = None;
    for w in windows.iter().filter(|w| w.is_open(now)) {
        if code_matches(&w.salt, &w.code_hash, code) && found.is_none() {
            found = Some(w.id);
        }
    }
    if let Some(window) = found {
        return Redeem::Pair { window };
    }
    let open: Vec<&Window> = windows.iter().filter(|w| w.is_open(now)).collect();
    Redeem::Wrong {
        bump: open.iter().map(|w| w.id).collect(),
        lock: open.iter().filter(|w| w.attempts + 1 >= MAX_ATTEMPTS).map(|w| w.id).collect(),
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

    fn window(id: i64, code: &str, expires_at: i64) -> Window {
        let salt = new_salt().to_vec();
        Window { id, code_hash: code_hash(&salt, code).to_vec(), salt, expires_at, attempts: 0, used: false }
    }

    #[test]
    fn codes_are_six_digits_and_vary() {
        let codes: std::collections::HashSet<String> =
            (0..200).map(|_| Code::generate().reveal().to_string()).collect();
        assert!(codes.len() > 190, "random codes barely repeat");
        for c in &codes {
            assert!(Code::well_formed(c), "{c}");
        }
        assert!(!Code::well_formed("12345"));
        assert!(!Code::well_formed("1234567"));
        assert!(!Code::well_formed("12a456"));
        assert!(!Code::well_formed("１２３４５６"));
    }

    #[test]
    fn code_hash_depends_on_salt_and_compares_exactly() {
        let (a, b) = (new_salt(), new_salt());
        assert_ne!(code_hash(&a, "123456"), code_hash(&b, "123456"));
        let h = code_hash(&a, "123456");
        assert!(code_matches(&a, &h, "123456"));
        assert!(!code_matches(&a, &h, "123457"));
        assert!(!code_matches(&b, &h, "123456"));
        assert!(!code_matches(&a, &h[..31], "123456"));
    }

    #[test]
    fn right_code_pairs_once_within_its_time() {
        let now = 1_000_000;
        let w = window(1, "424242", now + 300_000);
        assert_eq!(redeem(std::slice::from_ref(&w), "424242", now), Redeem::Pair { window: 1 });
        // Used: the same code is then just wrong.
        let used = Window { used: true, ..w.clone() };
        assert_eq!(redeem(&[used], "424242", now), Redeem::Wrong { bump: vec![], lock: vec![] });
        // Expired reads exactly like wrong.
        assert_eq!(redeem(std::slice::from_ref(&w), "424242", now + 300_000), redeem(&[w], "000000", now + 300_000));
    }

    #[test]
    fn five_wrong_codes_lock_the_window_and_then_the_right_one_fails() {
        let now = 5_000;
        let mut w = window(9, "111111", now + 60_000);
        for i in 0..MAX_ATTEMPTS {
            match redeem(std::slice::from_ref(&w), "222222", now) {
                Redeem::Wrong { bump, lock } => {
                    assert_eq!(bump, vec![9]);
                    assert_eq!(lock.is_empty(), i + 1 < MAX_ATTEMPTS, "locked at the fifth");
                }
                r => panic!("{r:?}"),
            }
            w.attempts += 1;
        }
        assert!(!w.is_open(now));
        assert_eq!(redeem(&[w], "111111", now), Redeem::Wrong { bump: vec![], lock: vec![] });
    }

    #[test]
    fn a_wrong_code_counts_against_every_open_window() {
        let now = 0;
        let ws = [window(1, "123456", 10), window(2, "654321", 10), window(3, "000001", 0)];
        assert_eq!(redeem(&ws, "999999", now), Redeem::Wrong { bump: vec![1, 2], lock: vec![] });
        assert_eq!(redeem(&ws, "654321", now), Redeem::Pair { window: 2 });
        assert_eq!(redeem(&ws, "000001", now), Redeem::Wrong { bump: vec![1, 2], lock: vec![] });
    }

    #[test]
    fn a_thousand_random_codes_never_open_a_window_they_do_not_match() {
        let w = window(1, "031337", i64::MAX);
        let mut paired = 0;
        for _ in 0..1000 {
            let c = Code::generate();
            if c.reveal() != "031337"
                && redeem(std::slice::from_ref(&w), c.reveal(), 0) != (Redeem::Wrong { bump: vec![1], lock: vec![] })
            {
                paired += 1;
            }
        }
        assert_eq!(paired, 0);
    }

    #[test]
    fn rate_limits() {
        let l = RateLimit { limit: 3, per_ms: 60_000 };
        assert!(l.allows(0) && l.allows(2));
        assert!(!l.allows(3) && !l.allows(100));
        let d = Limits::default();
        assert!(d.pair_requests.limit >= MAX_ATTEMPTS);
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
