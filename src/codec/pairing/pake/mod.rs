//! Password-authenticated pairing (protocol v2), the pure core. A phone and the gateway turn a
//! one-time code into a shared key with SPAKE2, confirm that key both ways, pass the phone's
//! push registration and the gateway's grant sealed under it, and both derive the phone's
//! HMAC secret, which never crosses the broker. Someone who reads every message learns
//! neither the code nor the secret; someone who answers in either party's place gets one
//! guess of the code per offer, which the gateway counts.
//!
//! Owns: the 8-digit [`Code`], the identities, the transcript hash and key schedule (here),
//! the four messages and their bounds ([`wire`]), the sealed registration and grant
//! ([`registration`]), the gateway's side with its in-memory pending exchanges ([`gateway`]),
//! the phone's state machine ([`phone`]) and the arithmetic of the guessing budget
//! ([`budget`]). Names in a registration or a grant are checked by `domain::ids`.
//!
//! Leaves to others: MQTT I/O and reply topics (`service::pairing`), windows, attempt counters,
//! budget events and phones in SQL (`store::pairing`), what a code grants (checked by the store
//! when the code is redeemed), time (every
//! function takes `now` in UNIX ms) and randomness (every function takes a CSPRNG, so that the
//! worked example of `docs/pairing.md` is reproducible; production passes `OsRng`).

pub mod budget;
pub mod gateway;
mod json;
pub mod phone;
pub mod registration;
pub mod wire;

#[cfg(test)]
mod tests;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, Rng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Digits of a one-time code. 10^8 codes: with the budget of [`budget`] a year of guessing
/// stays far below a 0.1% chance (6 digits would not).
pub const CODE_DIGITS: usize = 8;
/// How many codes there are.
pub const CODE_SPACE: u32 = 100_000_000;
/// Bytes of the phone's secret (the HMAC-SHA256 key of signed requests).
pub const SECRET_BYTES: usize = 32;
/// Names the protocol in the transcript and every derived key, so that keys of another
/// protocol or version can never coincide with these.
pub const PROTOCOL: &str = "dingdong-pair-v2";
/// SPAKE2 identity of side A (every phone: the gateway cannot know a phone beforehand).
pub const PHONE_IDENTITY: &str = "dingdong phone";

/// SPAKE2 identity of side B: `"dingdong gateway " + P`, where `P` is the gateway's MQTT topic
/// prefix (`mqtt.topic_prefix`), which the phone knows since it publishes under it. A key
/// agreed with one gateway can never be confirmed by another.
pub fn gateway_identity(topic_prefix: &str) -> String {
    format!("dingdong gateway {topic_prefix}")
}

/// Everything that goes wrong on the phone's side, and a bad code typed anywhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PakeError {
    #[error("code: must be {CODE_DIGITS} digits (spaces and '-' between them are ignored)")]
    BadCode,
    /// The gateway answered `{"ok": false}`: `error` is its error code, `detail` its words.
    #[error("the gateway refused: {error} ({detail})")]
    Refused { error: String, detail: String },
    /// A message from the gateway is malformed; the text names the field, never its value.
    #[error("bad message from the gateway: {0}")]
    BadMessage(String),
    /// Well-formed, but not for this request or not the step we wait for: keep waiting.
    #[error("not the message this step waits for")]
    Unexpected,
    /// The confirmation tag is wrong: whoever answered does not know the code. Nothing it sent
    /// may be trusted (a man in the middle, or a confused gateway).
    #[error("the gateway did not prove that it knows the code")]
    GatewayUnverified,
    /// What the phone was asked to register is invalid (names the field).
    #[error("registration: {0}")]
    BadRegistration(String),
}

/// A one-time code, as the user types it: [`CODE_DIGITS`] ASCII digits. Not `Debug` or
/// `Display` on purpose, so that it cannot reach a log line by accident; wiped on drop.
#[derive(Clone)]
pub struct Code(Zeroizing<String>);

impl Code {
    /// A fresh code, uniform over all [`CODE_SPACE`] values.
    pub fn generate<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Code {
        let n: u32 = rng.gen_range(0..CODE_SPACE);
        Code(Zeroizing::new(format!("{n:0width$}", width = CODE_DIGITS)))
    }

    /// Reads a typed code: exactly [`CODE_DIGITS`] ASCII digits; spaces and `-` anywhere are
    /// ignored (codes are shown as `1234 5678`).
    pub fn parse(s: &str) -> Result<Code, PakeError> {
        if s.len() > 4 * CODE_DIGITS {
            return Err(PakeError::BadCode);
        }
        let digits: String = s.chars().filter(|c| *c != ' ' && *c != '-').collect();
        let digits = Zeroizing::new(digits);
        if digits.len() != CODE_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PakeError::BadCode);
        }
        Ok(Code(digits))
    }

    /// The digits, for the few places that show or keep them (the CLI, the code file, a share
    /// reply, the store while the window is open).
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// The digits in two groups of four, as shown to a person.
    pub fn reveal_grouped(&self) -> String {
        format!("{} {}", &self.0[..4], &self.0[4..])
    }

    /// The SPAKE2 password: the digits as ASCII, nothing else.
    fn password(&self) -> spake2::Password {
        spake2::Password::new(self.0.as_bytes())
    }
}

/// The phone's 32-byte secret, derived on both sides. Not `Debug`, no `==` (compare secrets
/// only in constant time); wiped on drop.
#[derive(Clone)]
pub struct PhoneSecret([u8; SECRET_BYTES]);

impl PhoneSecret {
    /// The bytes, for the store (gateway) and the state file (phone).
    pub fn expose(&self) -> &[u8; SECRET_BYTES] {
        &self.0
    }
}

impl Drop for PhoneSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Writes `bytes` length-prefixed (4 bytes, big-endian), so that no two transcripts of
/// different fields can hash alike.
fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u32).to_be_bytes());
    h.update(bytes);
}

/// The transcript hash `TH`: SHA-256 over, each length-prefixed, [`PROTOCOL`], both
/// identities, the request id, the phone's SPAKE2 message, then the number of offers (4 bytes,
/// big-endian) and each offer's `ref` and SPAKE2 message in the order sent.
fn transcript_hash(gateway_id: &str, request_id: &str, msg_a: &[u8], offers: &[(&str, &[u8])]) -> [u8; 32] {
    let mut h = Sha256::new();
    put(&mut h, PROTOCOL.as_bytes());
    put(&mut h, PHONE_IDENTITY.as_bytes());
    put(&mut h, gateway_id.as_bytes());
    put(&mut h, request_id.as_bytes());
    put(&mut h, msg_a);
    h.update((offers.len() as u32).to_be_bytes());
    for (reference, msg_b) in offers {
        put(&mut h, reference.as_bytes());
        put(&mut h, msg_b);
    }
    h.finalize().into()
}

/// The keys of one offer, all from HKDF-SHA256 (salt `TH`, input the SPAKE2 key `K`, info
/// `"dingdong-pair-v2 <label>"`). Each seal key seals exactly one message, which is why a fixed
/// nonce is safe. Wiped on drop.
struct Keys {
    th: [u8; 32],
    confirm_phone: [u8; 32],
    confirm_gateway: [u8; 32],
    seal_phone: [u8; 32],
    seal_gateway: [u8; 32],
    secret: [u8; 32],
}

/// AES-GCM's nonce: each key seals one message only.
const NONCE: [u8; 12] = [0; 12];

impl Keys {
    fn derive(k: &[u8], th: [u8; 32]) -> Keys {
        let hk = Hkdf::<Sha256>::new(Some(&th), k);
        let expand = |label: &str| {
            let mut out = [0u8; 32];
            hk.expand(format!("{PROTOCOL} {label}").as_bytes(), &mut out).expect("32 bytes is a valid HKDF length");
            out
        };
        Keys {
            th,
            confirm_phone: expand("confirm-phone"),
            confirm_gateway: expand("confirm-gateway"),
            seal_phone: expand("seal-phone"),
            seal_gateway: expand("seal-gateway"),
            secret: expand("phone-secret"),
        }
    }

    fn tag(key: &[u8; 32], th: &[u8; 32]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(th);
        mac.finalize().into_bytes().into()
    }

    /// The phone's confirmation tag: HMAC-SHA256(confirm-phone key, TH).
    fn phone_tag(&self) -> [u8; 32] {
        Keys::tag(&self.confirm_phone, &self.th)
    }

    /// The gateway's confirmation tag: HMAC-SHA256(confirm-gateway key, TH).
    fn gateway_tag(&self) -> [u8; 32] {
        Keys::tag(&self.confirm_gateway, &self.th)
    }

    fn seal(key: &[u8; 32], th: &[u8; 32], plain: &[u8]) -> Vec<u8> {
        let c = Aes256Gcm::new_from_slice(key).expect("a 32-byte key");
        c.encrypt(&Nonce::from(NONCE), Payload { msg: plain, aad: th }).expect("AES-GCM seals any short message")
    }

    fn open(key: &[u8; 32], th: &[u8; 32], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let c = Aes256Gcm::new_from_slice(key).expect("a 32-byte key");
        c.decrypt(&Nonce::from(NONCE), Payload { msg: sealed, aad: th }).ok().map(Zeroizing::new)
    }

    fn phone_secret(&self) -> PhoneSecret {
        PhoneSecret(self.secret)
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        for k in [
            &mut self.confirm_phone,
            &mut self.confirm_gateway,
            &mut self.seal_phone,
            &mut self.seal_gateway,
            &mut self.secret,
        ] {
            k.zeroize();
        }
    }
}

/// A fresh opaque id (`bytes` random bytes as base64url), for request ids and offer refs.
fn random_id<R: RngCore + ?Sized>(rng: &mut R, bytes: usize) -> String {
    use base64::Engine;
    let mut b = vec![0u8; bytes];
    rng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod unit {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn codes_are_eight_digits_uniform_and_never_printed() {
        let codes: std::collections::HashSet<String> =
            (0..500).map(|_| Code::generate(&mut OsRng).reveal().to_string()).collect();
        assert!(codes.len() > 495, "random codes barely repeat");
        for c in &codes {
            assert_eq!(c.len(), 8);
            assert!(c.bytes().all(|b| b.is_ascii_digit()), "{c}");
        }
        // Leading zeros survive.
        assert!(codes.iter().any(|c| c.starts_with('0')) || codes.len() < 400);
        assert_eq!(Code::parse("0123 4567").unwrap().reveal(), "01234567");
        assert_eq!(Code::parse("0123-4567").unwrap().reveal_grouped(), "0123 4567");
        for bad in ["", "1234567", "123456789", "1234567a", "１２３４５６７８", "1234\t5678", &"1".repeat(40)] {
            assert!(Code::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn transcript_fields_cannot_slide_into_each_other() {
        let a = transcript_hash("g", "ab", b"c", &[("r", b"m")]);
        assert_ne!(a, transcript_hash("g", "a", b"bc", &[("r", b"m")]));
        assert_ne!(a, transcript_hash("g", "ab", b"c", &[("rm", b"")]));
        assert_ne!(a, transcript_hash("g", "ab", b"c", &[]));
        assert_eq!(a, transcript_hash("g", "ab", b"c", &[("r", b"m")]));
    }

    #[test]
    fn every_label_gives_its_own_key_and_seals_bind_the_transcript() {
        let k = Keys::derive(&[7; 32], [1; 32]);
        let all = [k.confirm_phone, k.confirm_gateway, k.seal_phone, k.seal_gateway, k.secret];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_ne!(k.phone_tag(), k.gateway_tag());
        let sealed = Keys::seal(&k.seal_phone, &k.th, b"hello");
        assert_eq!(Keys::open(&k.seal_phone, &k.th, &sealed).unwrap().as_slice(), b"hello");
        assert!(Keys::open(&k.seal_gateway, &k.th, &sealed).is_none(), "other direction's key");
        assert!(Keys::open(&k.seal_phone, &[2; 32], &sealed).is_none(), "other transcript");
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert!(Keys::open(&k.seal_phone, &k.th, &flipped).is_none());
        let other = Keys::derive(&[7; 32], [2; 32]);
        assert_ne!(other.secret, k.secret, "the transcript salts every key");
    }
}
