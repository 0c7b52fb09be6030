//! The FCM simulator's pure checks: make a test service account, check the JWT-bearer grant
//! as Google's token endpoint does (form body, RS256 signature by the account's key, `iss`,
//! `aud`, `scope`, an hour at most), read a `messages:send` body, and write Google's answers
//! (token response, error bodies with the `FcmError` detail).

use super::{check_token, GRANT_TYPE, SCOPE};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::elliptic_curve::rand_core::CryptoRngCore;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::signature::Verifier;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::Value;
use sha2::Sha256;

/// Clock skew allowed on `iat`, as Google's endpoint allows some.
const IAT_SKEW: u64 = 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("token request: grant_type is not {GRANT_TYPE}")]
    GrantType,
    #[error("token request: no assertion")]
    NoAssertion,
    #[error("assertion is not a JWT")]
    Malformed,
    #[error("assertion's alg is not RS256")]
    Algorithm,
    #[error("assertion's signature does not verify")]
    Signature,
    #[error("assertion's {0} is wrong")]
    Claim(&'static str),
    #[error("assertion expired")]
    Expired,
    #[error("assertion issued in the future")]
    NotYetValid,
    #[error("assertion is valid for more than an hour")]
    TooLong,
    #[error("send body: {0}")]
    Send(&'static str),
}

/// A service-account key file the simulator made, and the key it checks assertions with.
pub struct TestAccount {
    /// The JSON key file (holds the private key: a test secret, written only under `--out`).
    pub json: String,
    pub public: RsaPublicKey,
}

impl std::fmt::Debug for TestAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestAccount(<redacted>)")
    }
}

/// Generates a fresh RSA-2048 service account (slow in debug builds: about a second).
pub fn generate_account(
    project_id: &str,
    client_email: &str,
    token_uri: &str,
    rng: &mut impl CryptoRngCore,
) -> TestAccount {
    let key = RsaPrivateKey::new(rng, 2048).expect("RSA-2048 generation succeeds");
    account_json(&key, project_id, client_email, token_uri)
}

/// The key file of an existing key (tests share one generated key).
pub fn account_json(key: &RsaPrivateKey, project_id: &str, client_email: &str, token_uri: &str) -> TestAccount {
    let pem = key.to_pkcs8_pem(LineEnding::LF).expect("an RSA key encodes");
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": pem.as_str(),
        "client_email": client_email,
        "client_id": "100000000000000000000",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    });
    TestAccount { json: serde_json::to_string_pretty(&json).expect("json"), public: key.to_public_key() }
}

/// The assertion of a token request body, once `grant_type` is the JWT-bearer grant.
pub fn parse_token_request(body: &[u8]) -> Result<String, SimError> {
    let (mut grant, mut assertion) = (None, None);
    for (k, v) in form_urlencoded::parse(body) {
        match &*k {
            "grant_type" => grant = Some(v.into_owned()),
            "assertion" => assertion = Some(v.into_owned()),
            _ => {}
        }
    }
    if grant.as_deref() != Some(GRANT_TYPE) {
        return Err(SimError::GrantType);
    }
    assertion.ok_or(SimError::NoAssertion)
}

/// The claims of a checked assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionClaims {
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
}

/// Checks an assertion as Google's token endpoint does, at `now` (UNIX seconds).
pub fn verify_assertion(
    assertion: &str,
    public: &RsaPublicKey,
    client_email: &str,
    token_uri: &str,
    now: u64,
) -> Result<AssertionClaims, SimError> {
    let mut parts = assertion.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(SimError::Malformed);
    };
    let header = json_part(h)?;
    if header["alg"] != "RS256" {
        return Err(SimError::Algorithm);
    }
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| SimError::Malformed)?;
    let sig = Signature::try_from(sig.as_slice()).map_err(|_| SimError::Signature)?;
    VerifyingKey::<Sha256>::new(public.clone())
        .verify(&assertion.as_bytes()[..h.len() + 1 + c.len()], &sig)
        .map_err(|_| SimError::Signature)?;

    let claims = json_part(c)?;
    let text = |k: &str| claims[k].as_str().unwrap_or("");
    if text("iss") != client_email {
        return Err(SimError::Claim("iss"));
    }
    if text("aud") != token_uri {
        return Err(SimError::Claim("aud"));
    }
    if !text("scope").split(' ').any(|s| s == SCOPE) {
        return Err(SimError::Claim("scope"));
    }
    let iat = claims["iat"].as_u64().ok_or(SimError::Claim("iat"))?;
    let exp = claims["exp"].as_u64().ok_or(SimError::Claim("exp"))?;
    if exp <= now {
        return Err(SimError::Expired);
    }
    if iat > now + IAT_SKEW {
        return Err(SimError::NotYetValid);
    }
    if exp < iat || exp - iat > super::ASSERTION_LIFETIME {
        return Err(SimError::TooLong);
    }
    Ok(AssertionClaims { iss: client_email.to_string(), iat, exp })
}

fn json_part(part: &str) -> Result<Value, SimError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| SimError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(SimError::Malformed),
    }
}

/// The token endpoint's success answer.
pub fn token_response(access_token: &str, expires_in: u64) -> Vec<u8> {
    serde_json::json!({ "access_token": access_token, "expires_in": expires_in, "token_type": "Bearer" })
        .to_string()
        .into_bytes()
}

/// Google's error body for `status`, with an `FcmError` detail when `error_code` is given.
pub fn error_body(status: u16, error_code: Option<&str>, message: &str) -> Vec<u8> {
    let name = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    let details: Vec<Value> = error_code
        .map(|c| serde_json::json!({ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c }))
        .into_iter()
        .collect();
    serde_json::json!({ "error": { "code": status, "message": message, "status": name, "details": details } })
        .to_string()
        .into_bytes()
}

/// What a `messages:send` body asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub token: String,
    pub title: String,
    pub body: String,
    pub doorbell: String,
    pub ring: String,
    pub ttl_secs: u64,
    pub high_priority: bool,
    pub collapse_key: Option<String>,
    pub channel_id: Option<String>,
}

/// Reads a send body as FCM would, refusing what FCM refuses with INVALID_ARGUMENT.
pub fn parse_send(body: &[u8]) -> Result<SentMessage, SimError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| SimError::Send("not JSON"))?;
    let m = &v["message"];
    let text = |x: &Value| x.as_str().map(str::to_string);
    let token = text(&m["token"]).ok_or(SimError::Send("no message.token"))?;
    check_token(&token).map_err(|_| SimError::Send("message.token is not a registration token"))?;
    let a = &m["android"];
    let high_priority = match a["priority"].as_str() {
        None => false,
        Some(p) if p.eq_ignore_ascii_case("high") => true,
        Some(p) if p.eq_ignore_ascii_case("normal") => false,
        Some(_) => return Err(SimError::Send("android.priority is not NORMAL or HIGH")),
    };
    let ttl_secs = match a["ttl"].as_str() {
        None => 28 * 24 * 3600,
        Some(t) => parse_duration(t).ok_or(SimError::Send("android.ttl is not a duration like \"30s\""))?,
    };
    if let Some(d) = m["data"].as_object() {
        if d.values().any(|x| !x.is_string()) {
            return Err(SimError::Send("message.data values must be strings"));
        }
    }
    Ok(SentMessage {
        token,
        title: text(&m["notification"]["title"]).unwrap_or_default(),
        body: text(&m["notification"]["body"]).unwrap_or_default(),
        doorbell: text(&m["data"]["doorbell"]).unwrap_or_default(),
        ring: text(&m["data"]["ring"]).unwrap_or_default(),
        ttl_secs,
        high_priority,
        collapse_key: text(&a["collapse_key"]),
        channel_id: text(&a["notification"]["channel_id"]),
    })
}

/// A protobuf JSON duration: seconds with an optional fraction, then `s` (rounded down).
fn parse_duration(t: &str) -> Option<u64> {
    let n = t.strip_suffix('s')?;
    let (secs, frac) = n.split_once('.').unwrap_or((n, "0"));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    secs.parse().ok()
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}
