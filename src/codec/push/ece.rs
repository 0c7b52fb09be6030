//! RFC 8291 message encryption for Web Push, in the `aes128gcm` content coding of RFC 8188:
//! the body a push service carries to a browser, and the browser's side (decryption) for the
//! simulator, which checks every message with the subscription keys it generated.
//!
//! Built on RustCrypto (`p256` ECDH, `hkdf` + `sha2`, `aes-gcm`) rather than a Web Push crate:
//! `ece` links OpenSSL. `web-push-native` (one maintainer, maintained) is the pure-Rust
//! candidate, but 0.5 needs Rust 1.87 (we build with 1.85) and a second generation of the
//! RustCrypto traits (`sha2` 0.11, `hkdf` 0.13); both 0.4 and 0.5 take their randomness from
//! `OsRng` inside, so RFC 8291's worked example cannot be replayed through them, and sign VAPID
//! through `jwt-simple`, a second JWT stack beside ours; their record layer `ece-native` panics
//! on a received body that declares record size 0. What we need is one record of at most 4096
//! octets: a screen of code over the same primitives those crates use, checked here against
//! every intermediate value of the RFC's Appendix A.
//!
//! Body layout: `salt(16) | rs(4, big-endian) | idlen(1) = 65 | keyid = the sender's ephemeral
//! public key (65, uncompressed) | AES-128-GCM(plaintext | 0x02) | tag(16)`.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce, Tag};
use hkdf::Hkdf;
use p256::elliptic_curve::rand_core::CryptoRngCore;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;
use std::fmt;

/// Length of the subscription's `auth` secret.
pub const AUTH_LEN: usize = 16;
/// An uncompressed P-256 point: `0x04 | x | y`.
pub const PUBLIC_KEY_LEN: usize = 65;
const SALT_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// salt + rs + idlen + keyid.
pub const HEADER_LEN: usize = SALT_LEN + 4 + 1 + PUBLIC_KEY_LEN;
/// The record size we declare; push services need not take bodies over 4096 octets (RFC 8030 §7.2).
pub const RECORD_SIZE: u32 = 4096;
/// 4096 - 86 (header) - 1 (padding delimiter) - 16 (tag), RFC 8291 §4.
pub const MAX_PLAINTEXT: usize = RECORD_SIZE as usize - HEADER_LEN - 1 - TAG_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EceError {
    #[error("push payload is {0} bytes; at most 3993 fit one 4096-byte record")]
    PlaintextTooLarge(usize),
    #[error("public key is {0} bytes; must be a 65-byte uncompressed P-256 point")]
    PublicKeyLength(usize),
    #[error("public key is not a point on P-256")]
    PublicKeyNotOnCurve,
    #[error("private key is not a 32-byte P-256 scalar")]
    PrivateKey,
    #[error("encrypted body is {0} bytes, shorter than its header")]
    Truncated(usize),
    #[error("encrypted body declares record size {0}; at least 18 is needed")]
    RecordSize(u32),
    #[error("encrypted body's key id is {0} bytes; Web Push needs the sender's 65-byte public key")]
    KeyIdLength(u8),
    #[error("encrypted body holds more than one record")]
    MultipleRecords,
    #[error("encrypted body does not decrypt with this subscription's keys")]
    Decrypt,
    #[error("decrypted record does not end in the 0x02 padding delimiter")]
    Padding,
}

/// Parses a subscription's `p256dh` (or a `keyid`): 65 bytes, uncompressed, on the curve.
pub fn parse_public_key(bytes: &[u8]) -> Result<PublicKey, EceError> {
    if bytes.len() != PUBLIC_KEY_LEN || bytes[0] != 0x04 {
        return Err(EceError::PublicKeyLength(bytes.len()));
    }
    PublicKey::from_sec1_bytes(bytes).map_err(|_| EceError::PublicKeyNotOnCurve)
}

/// The uncompressed form of a public key.
pub fn public_key_bytes(key: &PublicKey) -> [u8; PUBLIC_KEY_LEN] {
    let point = key.to_encoded_point(false);
    point.as_bytes().try_into().expect("an uncompressed P-256 point is 65 bytes")
}

/// Encrypts `plaintext` for one subscription with a fresh ephemeral key and salt from `rng`
/// (RFC 8291 §2: a new key pair for every message).
pub fn encrypt(
    plaintext: &[u8],
    ua_public: &PublicKey,
    auth: &[u8; AUTH_LEN],
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, EceError> {
    let as_secret = SecretKey::random(rng);
    let mut salt = [0u8; SALT_LEN];
    rng.fill_bytes(&mut salt);
    encrypt_with(plaintext, ua_public, auth, &as_secret, salt)
}

/// [`encrypt`] with the sender's ephemeral key and the salt given: deterministic, for tests.
pub fn encrypt_with(
    plaintext: &[u8],
    ua_public: &PublicKey,
    auth: &[u8; AUTH_LEN],
    as_secret: &SecretKey,
    salt: [u8; SALT_LEN],
) -> Result<Vec<u8>, EceError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EceError::PlaintextTooLarge(plaintext.len()));
    }
    let as_public = public_key_bytes(&as_secret.public_key());
    let ecdh = ecdh(as_secret, ua_public);
    let (_, ikm) = combine(auth, &ecdh, &public_key_bytes(ua_public), &as_public);
    let keys = ContentKeys::derive(&salt, &ikm);

    let mut body = Vec::with_capacity(HEADER_LEN + plaintext.len() + 1 + TAG_LEN);
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(PUBLIC_KEY_LEN as u8);
    body.extend_from_slice(&as_public);
    body.extend_from_slice(plaintext);
    body.push(0x02); // the last (and only) record's padding delimiter, no padding after it
    let tag = keys
        .cipher()
        .encrypt_in_place_detached(Nonce::from_slice(&keys.nonce), b"", &mut body[HEADER_LEN..])
        .expect("a record under 4 KiB is far below AES-GCM's length limit");
    body.extend_from_slice(&tag);
    Ok(body)
}

/// The browser's side: decrypts a body with the subscription's private key and auth secret.
/// Takes exactly one record, as RFC 8291 §4 requires of senders.
pub fn decrypt(body: &[u8], ua_secret: &SecretKey, auth: &[u8; AUTH_LEN]) -> Result<Vec<u8>, EceError> {
    if body.len() < SALT_LEN + 5 {
        return Err(EceError::Truncated(body.len()));
    }
    let salt: [u8; SALT_LEN] = body[..SALT_LEN].try_into().expect("16 bytes");
    let rs = u32::from_be_bytes(body[SALT_LEN..SALT_LEN + 4].try_into().expect("4 bytes"));
    let idlen = body[SALT_LEN + 4];
    if rs < 18 {
        return Err(EceError::RecordSize(rs));
    }
    if idlen as usize != PUBLIC_KEY_LEN {
        return Err(EceError::KeyIdLength(idlen));
    }
    if body.len() < HEADER_LEN + 1 + TAG_LEN {
        return Err(EceError::Truncated(body.len()));
    }
    let as_public = parse_public_key(&body[SALT_LEN + 5..HEADER_LEN])?;
    let record = &body[HEADER_LEN..];
    if record.len() > rs as usize {
        return Err(EceError::MultipleRecords);
    }

    let ecdh = ecdh(ua_secret, &as_public);
    let ua_public = public_key_bytes(&ua_secret.public_key());
    let (_, ikm) = combine(auth, &ecdh, &ua_public, &public_key_bytes(&as_public));
    let keys = ContentKeys::derive(&salt, &ikm);

    let (ciphertext, tag) = record.split_at(record.len() - TAG_LEN);
    let mut plain = ciphertext.to_vec();
    keys.cipher()
        .decrypt_in_place_detached(Nonce::from_slice(&keys.nonce), b"", &mut plain, Tag::from_slice(tag))
        .map_err(|_| EceError::Decrypt)?;
    // RFC 8188 §2: padding is a delimiter then zeros; the last record's delimiter is 0x02.
    match plain.iter().rposition(|&b| b != 0) {
        Some(i) if plain[i] == 0x02 => {
            plain.truncate(i);
            Ok(plain)
        }
        _ => Err(EceError::Padding),
    }
}

/// The shared ECDH secret (the x coordinate).
fn ecdh(secret: &SecretKey, public: &PublicKey) -> [u8; 32] {
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine());
    (*shared.raw_secret_bytes()).into()
}

/// RFC 8291 §3.3: `(PRK_key, IKM)` from the auth secret, the ECDH secret and both public keys.
fn combine(
    auth: &[u8; AUTH_LEN],
    ecdh: &[u8; 32],
    ua_public: &[u8; PUBLIC_KEY_LEN],
    as_public: &[u8; PUBLIC_KEY_LEN],
) -> ([u8; 32], [u8; 32]) {
    let (prk_key, hk) = Hkdf::<Sha256>::extract(Some(auth), ecdh);
    let mut ikm = [0u8; 32];
    hk.expand_multi_info(&[b"WebPush: info\0", ua_public, as_public], &mut ikm)
        .expect("32 bytes is a valid HKDF-SHA-256 length");
    (prk_key.into(), ikm)
}

/// RFC 8188 §2.2-2.3: the content encryption key and nonce (sequence number 0).
struct ContentKeys {
    cek: [u8; 16],
    nonce: [u8; 12],
}

impl ContentKeys {
    fn derive(salt: &[u8; SALT_LEN], ikm: &[u8; 32]) -> ContentKeys {
        Self::derive_with_prk(salt, ikm).1
    }

    /// Also returns the PRK, an intermediate value RFC 8291's Appendix A lists.
    fn derive_with_prk(salt: &[u8; SALT_LEN], ikm: &[u8; 32]) -> ([u8; 32], ContentKeys) {
        let (prk, hk) = Hkdf::<Sha256>::extract(Some(salt), ikm);
        let mut cek = [0u8; 16];
        let mut nonce = [0u8; 12];
        hk.expand(b"Content-Encoding: aes128gcm\0", &mut cek).expect("16 bytes is a valid HKDF length");
        hk.expand(b"Content-Encoding: nonce\0", &mut nonce).expect("12 bytes is a valid HKDF length");
        (prk.into(), ContentKeys { cek, nonce })
    }

    fn cipher(&self) -> Aes128Gcm {
        Aes128Gcm::new_from_slice(&self.cek).expect("a 16-byte key")
    }
}

impl fmt::Debug for ContentKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKeys(<redacted>)")
    }
}

/// A subscription's private half, as a browser holds it: what the simulator generates for its
/// test subscriptions and decrypts with. `Debug` shows the public key only.
#[derive(Clone)]
pub struct Receiver {
    secret: SecretKey,
    auth: [u8; AUTH_LEN],
}

impl Receiver {
    pub fn generate(rng: &mut impl CryptoRngCore) -> Receiver {
        let mut auth = [0u8; AUTH_LEN];
        rng.fill_bytes(&mut auth);
        Receiver { secret: SecretKey::random(rng), auth }
    }

    /// From the 32-byte private scalar and the auth secret (as the simulator wrote them out).
    pub fn from_parts(secret: &[u8], auth: [u8; AUTH_LEN]) -> Result<Receiver, EceError> {
        // `from_slice` would left-pad a short slice; a stored key is exactly 32 bytes.
        if secret.len() != 32 {
            return Err(EceError::PrivateKey);
        }
        let secret = SecretKey::from_slice(secret).map_err(|_| EceError::PrivateKey)?;
        Ok(Receiver { secret, auth })
    }

    /// The private scalar, for the simulator's `--out` files. A secret: never log it.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes().into()
    }

    /// `keys.p256dh` of the subscription, before base64url.
    pub fn public_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        public_key_bytes(&self.secret.public_key())
    }

    pub fn public_key(&self) -> PublicKey {
        self.secret.public_key()
    }

    /// `keys.auth` of the subscription, before base64url.
    pub fn auth(&self) -> &[u8; AUTH_LEN] {
        &self.auth
    }

    pub fn decrypt(&self, body: &[u8]) -> Result<Vec<u8>, EceError> {
        decrypt(body, &self.secret, &self.auth)
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let public = self.public_bytes();
        write!(f, "Receiver {{ public: {}…, secret: <redacted>, auth: <redacted> }}", hex8(&public[1..5]))
    }
}

fn hex8(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests;
