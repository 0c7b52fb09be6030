//! The share code a phone asks for (`P/phone/<id>/share-code`) travels back sealed to that
//! phone: anyone can read `P/phone-response/<id>`, and a code read there could be redeemed
//! before the person it is meant for. The key comes from the phone's secret, which both sides
//! derived in pairing and which never crossed the broker; the associated data binds the
//! sealed code to the phone and the request, so a sealed code cannot be replayed as the
//! answer to another request.
//!
//! - key = HKDF-SHA256(salt empty, input the phone's 32-byte secret, info [`LABEL`]), 32 bytes
//! - nonce = 12 random bytes, fresh for every code (one key seals many codes over time)
//! - associated data = `LABEL "\n" phone_id "\n" request_id` (phone id in decimal)
//! - `sealed_code` = base64url without padding of nonce ‖ AES-256-GCM(code digits) ‖ tag
//!
//! Pure: randomness is passed in.

use super::pake::{Code, CODE_DIGITS};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Names the recipe in the key and the associated data.
pub const LABEL: &str = "dingdong-share-code-v1";
/// Bytes of the nonce that opens the sealed code.
pub const NONCE_BYTES: usize = 12;
/// Bytes of a sealed code: nonce, the digits, the tag (48 base64url characters).
pub const SEALED_BYTES: usize = NONCE_BYTES + CODE_DIGITS + 16;

/// Why a sealed code does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("sealed_code: must be {SEALED_BYTES} bytes as base64url without padding")]
    Shape,
    #[error("sealed_code: does not open with this phone's secret (not for this phone or request)")]
    Open,
}

fn key(secret: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, secret).expand(LABEL.as_bytes(), &mut k[..]).expect("32 bytes is a valid HKDF length");
    k
}

fn associated(phone_id: i64, request_id: &str) -> String {
    format!("{LABEL}\n{phone_id}\n{request_id}")
}

fn seal_with(secret: &[u8], phone_id: i64, request_id: &str, code: &Code, nonce: [u8; NONCE_BYTES]) -> String {
    let k = key(secret);
    let cipher = Aes256Gcm::new_from_slice(&k[..]).expect("a 32-byte key");
    let aad = associated(phone_id, request_id);
    let sealed = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: code.reveal().as_bytes(), aad: aad.as_bytes() })
        .expect("AES-GCM seals 8 bytes");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    URL_SAFE_NO_PAD.encode(out)
}

/// Seals `code` for phone `phone_id`'s reply to `request_id`: the `sealed_code` field.
pub fn seal_code<R: RngCore + CryptoRng + ?Sized>(
    secret: &[u8],
    phone_id: i64,
    request_id: &str,
    code: &Code,
    rng: &mut R,
) -> String {
    let mut nonce = [0u8; NONCE_BYTES];
    rng.fill_bytes(&mut nonce);
    seal_with(secret, phone_id, request_id, code, nonce)
}

/// Opens a `sealed_code` with the phone's secret (what the app does with the reply).
pub fn open_code(secret: &[u8], phone_id: i64, request_id: &str, sealed: &str) -> Result<Code, ShareError> {
    if sealed.len() != SEALED_BYTES.div_ceil(3) * 4 {
        return Err(ShareError::Shape);
    }
    let raw = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| ShareError::Shape)?;
    if raw.len() != SEALED_BYTES {
        return Err(ShareError::Shape);
    }
    let (nonce, body) = raw.split_at(NONCE_BYTES);
    let k = key(secret);
    let cipher = Aes256Gcm::new_from_slice(&k[..]).expect("a 32-byte key");
    let aad = associated(phone_id, request_id);
    let plain = cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad: aad.as_bytes() })
        .map(Zeroizing::new)
        .map_err(|_| ShareError::Open)?;
    let digits = std::str::from_utf8(&plain).map_err(|_| ShareError::Open)?;
    Code::parse(digits).map_err(|_| ShareError::Open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    /// The worked example of `docs/pairing.md` (section 2, the share-code reply): if this
    /// changes, change the doc.
    #[test]
    fn worked_example_of_a_sealed_share_code() {
        let secret: Vec<u8> = (0u8..32).collect();
        let code = Code::parse("12345678").unwrap();
        let nonce: [u8; 12] = core::array::from_fn(|i| 0xa0 + i as u8);
        let sealed = seal_with(&secret, 7, "req-0003", &code, nonce);
        println!("key {}\nsealed_code {sealed}", hex::encode(*key(&secret)));
        assert_eq!(hex::encode(*key(&secret)), EX_KEY);
        assert_eq!(sealed, EX_SEALED);
        assert_eq!(open_code(&secret, 7, "req-0003", &sealed).unwrap().reveal(), "12345678");
    }

    const EX_KEY: &str = "4c1e83d4132c2287619b4165365e1f745969225e18b903ce060c303876bcacb6";
    const EX_SEALED: &str = "oKGio6SlpqeoqaqrRYknglID6t0GhovbRuWt4r5e225Lam-9";

    #[test]
    fn only_the_asking_phone_opens_its_code_and_only_for_that_request() {
        let (secret, other) = ([7u8; 32], [8u8; 32]);
        let code = Code::generate(&mut OsRng);
        let sealed = seal_code(&secret, 12, "r-1", &code, &mut OsRng);
        assert_eq!(sealed.len(), 48);
        assert!(!sealed.contains(code.reveal()));
        assert_eq!(open_code(&secret, 12, "r-1", &sealed).unwrap().reveal(), code.reveal());
        assert_eq!(open_code(&other, 12, "r-1", &sealed).err(), Some(ShareError::Open));
        assert_eq!(open_code(&secret, 13, "r-1", &sealed).err(), Some(ShareError::Open));
        assert_eq!(open_code(&secret, 12, "r-2", &sealed).err(), Some(ShareError::Open));
        // Fresh nonces: the same code sealed twice looks different.
        assert_ne!(seal_code(&secret, 12, "r-1", &code, &mut OsRng), sealed);
        for bad in ["", "x", &sealed[1..], &format!("{sealed}A"), &sealed.replace(|_| true, "!")] {
            assert_eq!(open_code(&secret, 12, "r-1", bad).err(), Some(ShareError::Shape), "{bad}");
        }
        let mut flipped = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        flipped[20] ^= 1;
        assert_eq!(open_code(&secret, 12, "r-1", &URL_SAFE_NO_PAD.encode(flipped)).err(), Some(ShareError::Open));
    }
}
