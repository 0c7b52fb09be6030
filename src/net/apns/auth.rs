//! Credentials: the one ES256 JWT minter of the process (with Apple's 20-60 minute refresh
//! window) and client certificates from `.p12` or PEM files.
//!
//! No networking here; `tls` and `http2` use what this module loads.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A JWT is refreshed once it is this old: inside Apple's window (no sooner than 20 minutes,
/// else 429 TooManyProviderTokenUpdates; no later than 60, else 403 ExpiredProviderToken).
pub const JWT_REFRESH_AFTER: Duration = Duration::from_secs(50 * 60);
/// A forced refresh (after ExpiredProviderToken) is refused while the token is younger than this.
pub const JWT_MIN_AGE: Duration = Duration::from_secs(20 * 60);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not a PKCS#8 EC P-256 private key (an AuthKey_<KEYID>.p8 from Apple)")]
    BadP8 { path: String },
    #[error("{path}: cannot open the .p12 (wrong password or not a PKCS#12 file)")]
    BadP12 { path: String },
    #[error("{path}: holds no private key with a certificate")]
    NoKeyInP12 { path: String },
    #[error("{path}: no PEM certificate found")]
    NoCert { path: String },
    #[error("{path}: no PEM private key found")]
    NoKey { path: String },
}

fn read(path: &Path) -> Result<Vec<u8>, AuthError> {
    crate::domain::files::read_bounded(path, crate::domain::files::MAX_SMALL_FILE)
        .map_err(|e| AuthError::Read { path: path.display().to_string(), reason: e.to_string() })
}

/// Mints and caches the provider token. One per process, shared by every connection, so
/// Apple never sees two tokens in flight (TooManyProviderTokenUpdates).
pub struct JwtMinter {
    key: SigningKey,
    key_id: String,
    team_id: String,
    /// `(iat seconds, "bearer <jwt>", the same as a header value)`, rebuilt only when stale.
    current: Mutex<Option<(u64, Arc<str>, http::HeaderValue)>>,
    /// The clock, in UNIX seconds; replaceable so the refresh rules are testable.
    clock: fn() -> u64,
}

fn unix_now() -> u64 {
    (crate::domain::now_ms() / 1000) as u64
}

impl JwtMinter {
    pub fn from_p8_file(path: &Path, key_id: &str, team_id: &str) -> Result<JwtMinter, AuthError> {
        let pem = String::from_utf8(read(path)?).map_err(|_| AuthError::BadP8 { path: path.display().to_string() })?;
        let key =
            SigningKey::from_pkcs8_pem(&pem).map_err(|_| AuthError::BadP8 { path: path.display().to_string() })?;
        Ok(Self::new(key, key_id, team_id))
    }

    pub fn new(key: SigningKey, key_id: &str, team_id: &str) -> JwtMinter {
        JwtMinter {
            key,
            key_id: key_id.to_string(),
            team_id: team_id.to_string(),
            current: Mutex::new(None),
            clock: unix_now,
        }
    }

    #[cfg(test)]
    fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// How old the token in use is, in seconds; `None` before the first is minted.
    pub fn age_secs(&self) -> Option<u64> {
        let iat = self.current.lock().expect("jwt lock").as_ref().map(|c| c.0)?;
        Some((self.clock)().saturating_sub(iat))
    }

    /// The `authorization` header value, minting a new JWT when the cached one is 50 minutes old.
    pub fn bearer(&self) -> Arc<str> {
        self.bearer_header().0
    }

    /// The `authorization` value and the same as a ready header: a request reuses it
    /// instead of validating 250 bytes again.
    pub fn bearer_header(&self) -> (Arc<str>, http::HeaderValue) {
        let now = (self.clock)();
        let mut cur = self.current.lock().expect("jwt lock");
        match &*cur {
            Some((iat, v, h)) if now.saturating_sub(*iat) < JWT_REFRESH_AFTER.as_secs() => (v.clone(), h.clone()),
            _ => {
                let entry = self.entry(now);
                *cur = Some(entry.clone());
                (entry.1, entry.2)
            }
        }
    }

    fn entry(&self, now: u64) -> (u64, Arc<str>, http::HeaderValue) {
        let v: Arc<str> = format!("bearer {}", self.mint(now)).into();
        let h = http::HeaderValue::from_str(&v).expect("a JWT is base64url and dots");
        (now, v, h)
    }

    /// Called after ExpiredProviderToken for the token `rejected`: mints a fresh one unless
    /// another caller already did, or the current one is younger than 20 minutes (then the
    /// clock is off, and minting again would only earn TooManyProviderTokenUpdates).
    pub fn refresh_after_rejection(&self, rejected: &str) -> bool {
        let now = (self.clock)();
        let mut cur = self.current.lock().expect("jwt lock");
        if let Some((iat, v, _)) = &*cur {
            if &**v != rejected {
                return true; // someone refreshed already
            }
            if now.saturating_sub(*iat) < JWT_MIN_AGE.as_secs() {
                return false;
            }
        }
        *cur = Some(self.entry(now));
        true
    }

    fn mint(&self, iat: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"{}"}}"#, self.key_id));
        let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"iss":"{}","iat":{}}}"#, self.team_id, iat));
        let signing_input = format!("{header}.{claims}");
        let sig: Signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}

/// A client certificate chain and its key, ready for rustls.
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        ClientIdentity { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl ClientIdentity {
    /// Loads a `.p12`; the password comes from a file and is never logged.
    pub fn from_p12(path: &Path, password_file: &Path) -> Result<ClientIdentity, AuthError> {
        let data = read(path)?;
        let password = String::from_utf8_lossy(&read(password_file)?).trim_end_matches(['\r', '\n']).to_string();
        let ks = p12_keystore::KeyStore::from_pkcs12(&data, &password)
            .map_err(|_| AuthError::BadP12 { path: path.display().to_string() })?;
        let (_, chain) =
            ks.private_key_chain().ok_or_else(|| AuthError::NoKeyInP12 { path: path.display().to_string() })?;
        Ok(ClientIdentity {
            chain: chain.chain().iter().map(|c| CertificateDer::from(c.as_der().to_vec())).collect(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chain.key().to_vec())),
        })
    }

    pub fn from_pem(cert_file: &Path, key_file: &Path) -> Result<ClientIdentity, AuthError> {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&read(cert_file)?).filter_map(Result::ok).collect();
        if certs.is_empty() {
            return Err(AuthError::NoCert { path: cert_file.display().to_string() });
        }
        let key = PrivateKeyDer::from_pem_slice(&read(key_file)?)
            .ok()
            .ok_or_else(|| AuthError::NoKey { path: key_file.display().to_string() })?;
        Ok(ClientIdentity { chain: certs, key })
    }
}

/// Verifies an ES256 JWT against a public key: used by the simulator (as Apple would) and by
/// tests. Returns `(kid, iss, iat)` when the signature holds.
pub fn verify_jwt(jwt: &str, key: &p256::ecdsa::VerifyingKey) -> Option<(String, String, u64)> {
    use p256::ecdsa::signature::Verifier;
    let mut parts = jwt.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    if header["alg"] != "ES256" {
        return None;
    }
    let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
    key.verify(format!("{h}.{c}").as_bytes(), &sig).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    Some((header["kid"].as_str()?.to_string(), claims["iss"].as_str()?.to_string(), claims["iat"].as_u64()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static NOW: AtomicU64 = AtomicU64::new(1_000_000);
    fn clock() -> u64 {
        NOW.load(Ordering::SeqCst)
    }

    fn minter() -> JwtMinter {
        let key = SigningKey::random(&mut rand::thread_rng());
        JwtMinter::new(key, "KEYID12345", "TEAMID1234").with_clock(clock)
    }

    #[test]
    fn jwt_verifies_and_refreshes_inside_apples_window() {
        let m = minter();
        let vk = *m.key.verifying_key();
        NOW.store(1_000_000, Ordering::SeqCst);
        let a = m.bearer();
        let (kid, iss, iat) = verify_jwt(a.strip_prefix("bearer ").unwrap(), &vk).unwrap();
        assert_eq!((kid.as_str(), iss.as_str(), iat), ("KEYID12345", "TEAMID1234", 1_000_000));
        // Reused for 50 minutes, no sooner refreshed (Apple's 20-minute floor holds too).
        NOW.store(1_000_000 + 49 * 60, Ordering::SeqCst);
        assert_eq!(m.bearer(), a);
        NOW.store(1_000_000 + 50 * 60, Ordering::SeqCst);
        let b = m.bearer();
        assert_ne!(a, b);
        // A forced refresh of a young token is refused; of one refreshed by someone else, a no-op.
        NOW.store(1_000_000 + 55 * 60, Ordering::SeqCst);
        assert!(!m.refresh_after_rejection(&b));
        assert_eq!(m.bearer(), b);
        assert!(m.refresh_after_rejection(&a));
        assert_eq!(m.bearer(), b);
        NOW.store(1_000_000 + 71 * 60, Ordering::SeqCst);
        assert!(m.refresh_after_rejection(&b));
        assert_ne!(m.bearer(), b);
    }

    #[test]
    fn tampered_jwt_is_refused() {
        let m = minter();
        let vk = *m.key.verifying_key();
        let jwt = m.mint(5);
        let mut bad = jwt.clone();
        bad.replace_range(bad.len() - 3.., "AAA");
        assert!(verify_jwt(&jwt, &vk).is_some());
        assert!(verify_jwt(&bad, &vk).is_none());
        let other = SigningKey::random(&mut rand::thread_rng());
        assert!(verify_jwt(&jwt, other.verifying_key()).is_none());
    }
}
