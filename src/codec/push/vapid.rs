//! RFC 8292 VAPID: the application server's P-256 key (loaded from PEM or generated), the
//! ES256 token for one push service (`aud` = its origin, `exp` at most 24 h ahead, `sub` = a
//! contact), the `Authorization: vapid t=<jwt>, k=<key>` value and when to mint a new one; and
//! the push service's side, which the simulator runs: parse and verify such a header.
//!
//! Pure: the caller reads the key file and passes the clock (UNIX seconds) in.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::rand_core::CryptoRngCore;
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use p256::SecretKey;
use std::collections::HashMap;
use std::fmt;

/// How long a token we mint is valid: well inside RFC 8292's 24 hours, so a gateway clock a few
/// hours ahead of the push service still yields a token it accepts.
pub const TOKEN_LIFETIME: u64 = 12 * 3600;
/// A cached token is replaced once less than this is left of it.
pub const RENEW_BEFORE: u64 = 3600;
/// RFC 8292 §2: `exp` MUST NOT be more than 24 hours from the time of the request.
pub const MAX_EXP_AHEAD: u64 = 24 * 3600;
/// A VAPID key file is a few hundred bytes; anything this large is not one.
pub const MAX_KEY_FILE: usize = 16 * 1024;
/// Distinct push services a gateway talks to are a handful; the cache is bounded anyway,
/// because audiences come from user-supplied subscription endpoints.
const MAX_CACHED_AUDIENCES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VapidError {
    #[error("VAPID key is {0} bytes; a PEM P-256 key is well under 16 KiB")]
    KeyTooLarge(usize),
    #[error("VAPID key is encrypted; give an unencrypted PEM P-256 private key")]
    KeyEncrypted,
    #[error("VAPID key: no PEM \"EC PRIVATE KEY\" or \"PRIVATE KEY\" block found")]
    NotPem,
    #[error("VAPID key: the {0} block is not a P-256 private key")]
    BadKey(&'static str),
    #[error("VAPID subject {0:?}: {1}")]
    Subject(String, &'static str),
    #[error("push endpoint has no https origin to address a VAPID token to")]
    Audience,
}

/// The application server's VAPID key. `Debug` shows the public key only.
#[derive(Clone)]
pub struct VapidKey {
    key: SigningKey,
    /// `k=`: base64url of the uncompressed public point, also what the web app passes to
    /// `pushManager.subscribe({applicationServerKey})`.
    public_b64: String,
}

impl VapidKey {
    /// From a PEM file's text: SEC1 (`EC PRIVATE KEY`, as `openssl ecparam -genkey` writes it,
    /// `EC PARAMETERS` block and all) or PKCS#8 (`PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<VapidKey, VapidError> {
        if pem.len() > MAX_KEY_FILE {
            return Err(VapidError::KeyTooLarge(pem.len()));
        }
        if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || pem.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(VapidError::KeyEncrypted);
        }
        let secret = if let Some(block) = pem_block(pem, "EC PRIVATE KEY") {
            SecretKey::from_sec1_pem(block).map_err(|_| VapidError::BadKey("EC PRIVATE KEY"))?
        } else if let Some(block) = pem_block(pem, "PRIVATE KEY") {
            SecretKey::from_pkcs8_pem(block).map_err(|_| VapidError::BadKey("PRIVATE KEY"))?
        } else {
            return Err(VapidError::NotPem);
        };
        Ok(Self::from_secret(secret))
    }

    /// A new key, for tests, the simulator and a first `dingdong webpush key`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> VapidKey {
        Self::from_secret(SecretKey::random(rng))
    }

    fn from_secret(secret: SecretKey) -> VapidKey {
        let public = super::ece::public_key_bytes(&secret.public_key());
        VapidKey { key: SigningKey::from(secret), public_b64: URL_SAFE_NO_PAD.encode(public) }
    }

    /// The private key as PKCS#8 PEM (what [`VapidKey::from_pem`] reads back). A secret.
    pub fn to_pem(&self) -> Zeroizing<String> {
        SecretKey::from(&self.key).to_pkcs8_pem(LineEnding::LF).expect("a P-256 key always encodes")
    }

    /// base64url (no padding) of the 65-byte uncompressed public key: what `dingdong webpush
    /// key` prints and the web app subscribes with.
    pub fn public_key_b64(&self) -> &str {
        &self.public_b64
    }

    /// The signed token (`aud` = push service origin, `exp` UNIX seconds, `sub` = contact).
    pub fn token(&self, aud: &str, subject: &Subject, exp: u64) -> String {
        // {"typ":"JWT","alg":"ES256"}
        const HEADER: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9";
        let claims = serde_json::json!({ "aud": aud, "exp": exp, "sub": subject.as_str() });
        let signing_input = format!("{HEADER}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig: Signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    /// The `Authorization` header value for a token valid until `exp`.
    pub fn authorization(&self, aud: &str, subject: &Subject, exp: u64) -> String {
        format!("vapid t={}, k={}", self.token(aud, subject, exp), self.public_b64)
    }
}

impl fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VapidKey {{ public: {}, private: <redacted> }}", self.public_b64)
    }
}

/// The text between (and including) a PEM block's BEGIN and END lines, so a SEC1 file with a
/// leading `EC PARAMETERS` block parses.
fn pem_block<'a>(pem: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)?;
    let stop = pem[start..].find(&end)? + start + end.len();
    Some(&pem[start..stop])
}

/// A checked `sub`: `mailto:` and a plain address, or an `https://` URL. Apple's push service
/// refuses others (`mailto: <a@b>` with a space or brackets, `localhost` addresses) with 403
/// BadJwtToken, so they are refused here, when the config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(String);

impl Subject {
    pub fn parse(s: &str) -> Result<Subject, VapidError> {
        let bad = |why| Err(VapidError::Subject(s.to_string(), why));
        if s.len() > 256 {
            return bad("longer than 256 characters");
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>') {
            return bad("has a space, a control character or angle brackets");
        }
        if let Some(addr) = s.strip_prefix("mailto:") {
            let Some((local, domain)) = addr.split_once('@') else {
                return bad("needs an address after mailto:, like mailto:ops@example.com");
            };
            if local.is_empty() || domain.contains('@') || !domain_ok(domain) {
                return bad("needs an address with a public domain after mailto:");
            }
        } else if let Some(rest) = s.strip_prefix("https://") {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            if host.contains('@') || !domain_ok(host) {
                return bad("needs a public host after https://");
            }
        } else {
            return bad("must start with mailto: or https://");
        }
        Ok(Subject(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn domain_ok(d: &str) -> bool {
    let d = d.to_ascii_lowercase();
    d.contains('.')
        && !d.starts_with('.')
        && !d.ends_with('.')
        && !d.ends_with(".localhost")
        && !d.ends_with(".local")
        && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

/// The `aud` for a push endpoint: its origin, `https://host[:port]` (default port left out,
/// host lowercased, RFC 6454 §6.1).
pub fn audience(endpoint: &str) -> Result<String, VapidError> {
    let uri: http::Uri = endpoint.parse().map_err(|_| VapidError::Audience)?;
    if uri.scheme_str() != Some("https") {
        return Err(VapidError::Audience);
    }
    let auth = uri.authority().ok_or(VapidError::Audience)?;
    if auth.as_str().contains('@') || auth.host().is_empty() {
        return Err(VapidError::Audience);
    }
    let host = auth.host().to_ascii_lowercase();
    Ok(match auth.port_u16() {
        Some(p) if p != 443 => format!("https://{host}:{p}"),
        _ => format!("https://{host}"),
    })
}

/// The cache rule: a token expiring at `exp` may still be sent at `now`.
pub fn reusable(now: u64, exp: u64) -> bool {
    exp > now.saturating_add(RENEW_BEFORE)
}

/// One `Authorization` value per audience, reused until [`reusable`] says no. Pure: `now` is
/// passed in. Share one behind a lock per process, as the APNs JWT minter is.
#[derive(Default)]
pub struct TokenCache {
    entries: HashMap<String, (u64, http::HeaderValue)>,
}

impl TokenCache {
    pub fn new() -> TokenCache {
        TokenCache::default()
    }

    /// The header value for `aud` at `now`, minting (valid [`TOKEN_LIFETIME`]) when needed.
    pub fn authorization(&mut self, key: &VapidKey, subject: &Subject, aud: &str, now: u64) -> http::HeaderValue {
        if let Some((exp, v)) = self.entries.get(aud) {
            if reusable(now, *exp) {
                return v.clone();
            }
        }
        if self.entries.len() >= MAX_CACHED_AUDIENCES {
            self.entries.retain(|_, (exp, _)| reusable(now, *exp));
            if self.entries.len() >= MAX_CACHED_AUDIENCES {
                self.entries.clear();
            }
        }
        let exp = now + TOKEN_LIFETIME;
        let v = http::HeaderValue::from_str(&key.authorization(aud, subject, exp))
            .expect("base64url, dots, commas and spaces are valid header text");
        self.entries.insert(aud.to_string(), (exp, v.clone()));
        v
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.entries.iter().map(|(aud, (exp, _))| (aud, exp))).finish()
    }
}

mod verify;
pub use verify::{verify_authorization, Verified, VerifyError};

#[cfg(test)]
mod tests;
