//! The push service's side of VAPID, for the simulator: parse `Authorization: vapid t=, k=`
//! and check it as a push service does (signature by `k`, `aud` = this service's origin, `exp`
//! in the future and at most 24 hours ahead, a usable `sub`).

use super::{Subject, MAX_EXP_AHEAD};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};

/// Longest JWT we look at; ours are about 300 characters.
const MAX_TOKEN: usize = 4096;

/// base64url that takes the padding or leaves it.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("authorization scheme is not vapid")]
    NotVapid,
    #[error("vapid authorization has no t= token")]
    MissingToken,
    #[error("vapid authorization has no k= key")]
    MissingKey,
    #[error("vapid authorization repeats or has a malformed parameter")]
    BadParameter,
    #[error("vapid k= is not base64url of a 65-byte uncompressed P-256 key")]
    BadKey,
    #[error("vapid token is not a JWT (three base64url parts)")]
    Malformed,
    #[error("vapid token's algorithm is {0:?}; only ES256 is allowed")]
    Algorithm(String),
    #[error("vapid token's signature does not verify with k=")]
    Signature,
    #[error("vapid token's aud {got:?} is not this push service's origin {want:?}")]
    Audience { got: String, want: String },
    #[error("vapid token has no numeric exp")]
    NoExpiry,
    #[error("vapid token expired {0} s ago")]
    Expired(u64),
    #[error("vapid token's exp is {0} s ahead; at most 86400 is allowed")]
    TooFarAhead(u64),
    #[error("vapid token's sub is missing or not mailto:/https:")]
    Subject,
}

/// What a verified header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The application server's public key (`k`), uncompressed: a push service restricts a
    /// subscription to the key it was created with and answers 403 to any other.
    pub public_key: [u8; 65],
    pub subject: String,
    pub exp: u64,
}

/// Checks an `Authorization` header value against this service's origin `want_aud` at `now`
/// (UNIX seconds).
pub fn verify_authorization(value: &str, want_aud: &str, now: u64) -> Result<Verified, VerifyError> {
    let (token, key) = parse_header(value)?;
    let public_key: [u8; 65] = B64URL.decode(key).ok().and_then(|k| k.try_into().ok()).ok_or(VerifyError::BadKey)?;
    if public_key[0] != 0x04 {
        return Err(VerifyError::BadKey);
    }
    let vk = VerifyingKey::from_sec1_bytes(&public_key).map_err(|_| VerifyError::BadKey)?;

    if token.len() > MAX_TOKEN {
        return Err(VerifyError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(VerifyError::Malformed);
    };
    let header = json_part(h)?;
    match header.get("alg").and_then(|a| a.as_str()) {
        Some("ES256") => {}
        other => return Err(VerifyError::Algorithm(other.unwrap_or("").to_string())),
    }
    let sig = B64URL.decode(s).map_err(|_| VerifyError::Malformed)?;
    let sig = Signature::from_slice(&sig).map_err(|_| VerifyError::Signature)?;
    vk.verify(&token.as_bytes()[..h.len() + 1 + c.len()], &sig).map_err(|_| VerifyError::Signature)?;

    // Signed by k: now the claims can be believed.
    let claims = json_part(c)?;
    let aud = claims.get("aud").and_then(|a| a.as_str()).unwrap_or("");
    if aud != want_aud {
        return Err(VerifyError::Audience { got: aud.to_string(), want: want_aud.to_string() });
    }
    let exp = claims.get("exp").and_then(|e| e.as_u64()).ok_or(VerifyError::NoExpiry)?;
    if exp <= now {
        return Err(VerifyError::Expired(now - exp));
    }
    if exp - now > MAX_EXP_AHEAD {
        return Err(VerifyError::TooFarAhead(exp - now));
    }
    let subject = claims.get("sub").and_then(|s| s.as_str()).ok_or(VerifyError::Subject)?;
    Subject::parse(subject).map_err(|_| VerifyError::Subject)?;
    Ok(Verified { public_key, subject: subject.to_string(), exp })
}

/// `vapid t=<jwt>, k=<key>`: scheme case-insensitive, parameters in any order, optionally quoted.
fn parse_header(value: &str) -> Result<(&str, &str), VerifyError> {
    let value = value.trim();
    let (scheme, params) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("vapid") {
        return Err(VerifyError::NotVapid);
    }
    let (mut t, mut k) = (None, None);
    for param in params.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, v) = param.split_once('=').ok_or(VerifyError::BadParameter)?;
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        let slot = match name.trim().to_ascii_lowercase().as_str() {
            "t" => &mut t,
            "k" => &mut k,
            _ => continue, // unknown parameters are ignored, as for any auth scheme
        };
        if slot.replace(v).is_some() {
            return Err(VerifyError::BadParameter);
        }
    }
    Ok((t.ok_or(VerifyError::MissingToken)?, k.ok_or(VerifyError::MissingKey)?))
}

fn json_part(part: &str) -> Result<serde_json::Map<String, serde_json::Value>, VerifyError> {
    let bytes = B64URL.decode(part).map_err(|_| VerifyError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(VerifyError::Malformed),
    }
}
