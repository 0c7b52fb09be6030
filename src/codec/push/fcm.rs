//! FCM HTTP v1, the pure parts: the Google service-account key file, the RS256 assertion of
//! the OAuth 2.0 JWT-bearer grant (RFC 7523) and its token answer, when to renew the access
//! token, the `messages:send` body of a ring, and what FCM's answer means ([`Verdict`]).
//! The simulator's side (checking an assertion, reading a send body, answering as Google
//! does) is in [`sim`].
//!
//! RSA is RustCrypto's `rsa` 0.9 (PKCS#1 v1.5 + SHA-256). Its private-key operation is not
//! constant-time (RUSTSEC-2023-0071, no fixed 0.9 release; 0.10 needs Rust 1.87). We sign one
//! assertion an hour, on input an attacker does not choose, so the timing channel it needs is
//! not there; revisit when the crate's MSRV allows 0.10.

use super::common::{parse_retry_after, ring_body, ring_title, short, Verdict};
use crate::codec::apns_payload::RING_CATEGORY;
use crate::domain::household::{Level, Profile};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::Value;
use sha2::Sha256;
use std::fmt;
use std::time::SystemTime;

pub mod sim;

/// The OAuth scope of the FCM send API.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// RFC 7523's grant type.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google's token endpoint, for key files that do not name one.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// A key file is about 2.4 KB; anything larger than this is not one.
pub const MAX_KEY_FILE: usize = 16 * 1024;
/// Google accepts assertions valid for at most an hour.
pub const ASSERTION_LIFETIME: u64 = 3600;
/// An access token is renewed once less than this is left of it.
pub const REFRESH_BEFORE: u64 = 300;
/// Bounds of a registration token (FCM's are about 160 characters).
pub const TOKEN_MIN_LEN: usize = 16;
pub const TOKEN_MAX_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FcmError {
    #[error("service account file is {0} bytes; a Google key file is a few KiB")]
    KeyFileTooLarge(usize),
    #[error("service account file is not a JSON object (line {0} column {1})")]
    KeyFileJson(usize, usize),
    #[error("service account file: {0} is missing or not a string")]
    Missing(&'static str),
    #[error("service account file: {0}: {1}")]
    Field(&'static str, &'static str),
    #[error("project_id {0:?}: {1}")]
    ProjectId(String, &'static str),
    #[error("FCM token: {0}")]
    Token(&'static str),
    #[error("token endpoint answer: {0}")]
    TokenAnswer(String),
}

/// A checked service-account key. `Debug` never shows the private key.
#[derive(Clone)]
pub struct ServiceAccount {
    project_id: String,
    private_key_id: String,
    client_email: String,
    token_uri: String,
    key: SigningKey<Sha256>,
    public: RsaPublicKey,
}

impl ServiceAccount {
    /// Reads the JSON key file Google issues. Errors name the field, never its value.
    pub fn from_json(bytes: &[u8]) -> Result<ServiceAccount, FcmError> {
        if bytes.len() > MAX_KEY_FILE {
            return Err(FcmError::KeyFileTooLarge(bytes.len()));
        }
        let v: Value = serde_json::from_slice(bytes).map_err(|e| FcmError::KeyFileJson(e.line(), e.column()))?;
        if !v.is_object() {
            return Err(FcmError::KeyFileJson(1, 1));
        }
        let field = |name: &'static str| v.get(name).and_then(Value::as_str).ok_or(FcmError::Missing(name));
        if field("type")? != "service_account" {
            return Err(FcmError::Field("type", "must be \"service_account\""));
        }
        let private_key_id = field("private_key_id")?;
        if private_key_id.is_empty() || private_key_id.len() > 128 || !private_key_id.bytes().all(is_plain) {
            return Err(FcmError::Field("private_key_id", "must be 1 to 128 letters and digits"));
        }
        let client_email = field("client_email")?;
        if client_email.len() > 256
            || !client_email.contains('@')
            || !client_email.bytes().all(|b| b > b' ' && b < 0x7f)
        {
            return Err(FcmError::Field("client_email", "is not an email address"));
        }
        let token_uri = match v.get("token_uri") {
            None => DEFAULT_TOKEN_URI,
            Some(u) => u.as_str().ok_or(FcmError::Missing("token_uri"))?,
        };
        check_https(token_uri).map_err(|why| FcmError::Field("token_uri", why))?;
        let pem = field("private_key")?;
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .map_err(|_| FcmError::Field("private_key", "is not a PKCS#8 PEM RSA private key"))?;
        if key.size() < 256 {
            return Err(FcmError::Field("private_key", "is shorter than 2048 bits"));
        }
        let public = key.to_public_key();
        let account = ServiceAccount {
            project_id: String::new(),
            private_key_id: private_key_id.to_string(),
            client_email: client_email.to_string(),
            token_uri: token_uri.to_string(),
            key: SigningKey::new(key),
            public,
        };
        let project_id = field("project_id").map_err(|_| FcmError::Missing("project_id"))?;
        account.with_project_id(project_id).map_err(|_| FcmError::Field("project_id", "is not a project id"))
    }

    /// Replaces the project (`[fcm] project_id` overrides the file's).
    pub fn with_project_id(mut self, id: &str) -> Result<ServiceAccount, FcmError> {
        let ok = !id.is_empty()
            && id.len() <= 100
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'));
        if !ok {
            return Err(FcmError::ProjectId(id.to_string(), "must be letters, digits, '-', '.', ':' or '_'"));
        }
        self.project_id = id.to_string();
        Ok(self)
    }

    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    /// The public half, which Google (and our simulator) checks assertions with.
    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    /// The path of the send API for this project.
    pub fn send_path(&self) -> String {
        format!("/v1/projects/{}/messages:send", self.project_id)
    }

    /// The signed JWT of the JWT-bearer grant, issued at `iat` (UNIX seconds).
    pub fn assertion(&self, iat: u64) -> String {
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": self.private_key_id });
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME,
        });
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    /// The `application/x-www-form-urlencoded` body to POST to [`ServiceAccount::token_uri`].
    pub fn token_request_body(&self, iat: u64) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", GRANT_TYPE)
            .append_pair("assertion", &self.assertion(iat))
            .finish()
    }
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("private_key_id", &short(&self.private_key_id, 8))
            .field("token_uri", &self.token_uri)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn check_https(uri: &str) -> Result<(), &'static str> {
    let parsed: http::Uri = uri.parse().map_err(|_| "is not a URL")?;
    match (parsed.scheme_str(), parsed.host()) {
        (Some("https"), Some(h)) if !h.is_empty() => Ok(()),
        _ => Err("must be an https:// URL"),
    }
}

/// An OAuth access token and when it expires. `Debug` shows neither the token nor its prefix.
#[derive(Clone)]
pub struct AccessToken {
    authorization: http::HeaderValue,
    expires_at: u64,
}

impl AccessToken {
    /// `Authorization: Bearer <token>`, ready for every send.
    pub fn authorization(&self) -> &http::HeaderValue {
        &self.authorization
    }

    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// The refresh rule: renew once less than [`REFRESH_BEFORE`] is left.
    pub fn needs_refresh(&self, now: u64) -> bool {
        self.expires_at <= now.saturating_add(REFRESH_BEFORE)
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken {{ expires_at: {}, token: <redacted> }}", self.expires_at)
    }
}

/// The token endpoint's answer: an access token, or what to do with the waiting messages
/// (429/5xx retry; any other refusal is our credentials: stop the transport).
pub fn token_answer(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now: SystemTime,
) -> Result<AccessToken, Verdict> {
    let unix = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    match status {
        200 => parse_token_response(body, unix).map_err(|e| Verdict::Failed {
            reason: e.to_string(),
            status,
            credentials: true,
        }),
        429 | 500..=599 => Err(Verdict::Retry {
            after: retry_after.and_then(|v| parse_retry_after(v, now)),
            reason: format!("token endpoint {status}"),
        }),
        _ => {
            // {"error":"invalid_grant","error_description":"Invalid JWT Signature."}
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let what = [v.get("error"), v.get("error_description")]
                .iter()
                .filter_map(|x| x.and_then(Value::as_str))
                .map(|s| short(s, 100))
                .collect::<Vec<_>>()
                .join(": ");
            Err(Verdict::Failed { reason: format!("token endpoint {status} {what}"), status, credentials: true })
        }
    }
}

/// `{"access_token","expires_in","token_type"}` at `now` (UNIX seconds).
pub fn parse_token_response(body: &[u8], now: u64) -> Result<AccessToken, FcmError> {
    let bad = |why: &str| FcmError::TokenAnswer(why.to_string());
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    let token = v.get("access_token").and_then(Value::as_str).ok_or_else(|| bad("no access_token"))?;
    if token.is_empty() || token.len() > 8192 || !token.bytes().all(|b| b > b' ' && b < 0x7f) {
        return Err(bad("access_token is not a token"));
    }
    match v.get("token_type").and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        None => {}
        Some(_) => return Err(bad("token_type is not Bearer")),
    }
    let expires_in = v.get("expires_in").and_then(Value::as_u64).ok_or_else(|| bad("no numeric expires_in"))?;
    if expires_in == 0 {
        return Err(bad("expires_in is 0"));
    }
    let authorization = http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| bad("unusable token"))?;
    Ok(AccessToken { authorization, expires_at: now.saturating_add(expires_in) })
}

/// Checks a registration token at the door (`phone add --fcm`): FCM's tokens are opaque but
/// made of base64url characters and ':', so one needs no escaping in JSON.
pub fn check_token(token: &str) -> Result<(), FcmError> {
    if token.len() < TOKEN_MIN_LEN || token.len() > TOKEN_MAX_LEN {
        return Err(FcmError::Token("must be 16 to 4096 characters"));
    }
    if !token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.')) {
        return Err(FcmError::Token("has a character FCM tokens never hold"));
    }
    Ok(())
}

/// The `messages:send` body of one ring, rendered once and stamped with each phone's token.
/// `android.priority` is `HIGH` (the REST reference's `AndroidMessagePriority`); `ttl` is what
/// remains of the ring's expiry; one collapse key and notification tag per doorbell, so a
/// newer ring replaces an older one.
#[derive(Debug, Clone)]
pub struct MessageTemplate {
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

/// What a ring says on Android.
#[derive(Debug, Clone, Copy)]
pub struct RingMessage<'a> {
    pub doorbell_id: &'a str,
    pub doorbell_name: &'a str,
    pub ring_id: &'a str,
    pub ttl_secs: u64,
    /// The app's notification channel (Android 8+ shows nothing without one).
    pub channel_id: &'a str,
    /// How it alerts (household controls): passive ones go at normal priority, silently.
    pub profile: &'a Profile,
    /// The replacement once someone answered: who is getting the door.
    pub answered_by: Option<&'a str>,
}

impl MessageTemplate {
    pub fn new(m: &RingMessage<'_>) -> MessageTemplate {
        let collapse = format!("doorbell-{}", m.doorbell_id);
        // Everything but the token, then `{"message":{"token":"` TOKEN `",` + the rest.
        let passive = m.profile.level == Level::Passive || m.answered_by.is_some();
        let body = match m.answered_by {
            Some(who) => format!("{who} is getting the door"),
            None => ring_body(m.doorbell_name),
        };
        let mut data =
            serde_json::json!({ "doorbell": m.doorbell_id, "ring": m.ring_id, "level": m.profile.level.as_str() });
        let mut notification = serde_json::json!({ "channel_id": m.channel_id, "tag": collapse });
        match m.answered_by {
            Some(who) => data["answered_by"] = who.into(),
            None => data["category"] = RING_CATEGORY.into(),
        }
        notification["notification_priority"] = match (passive, m.profile.level) {
            (true, _) => "PRIORITY_LOW",
            (false, Level::Active) => "PRIORITY_HIGH",
            (false, _) => "PRIORITY_MAX",
        }
        .into();
        if !passive {
            notification["sound"] = m.profile.sound.as_deref().unwrap_or("default").into();
        }
        let rest = serde_json::json!({
            "notification": { "title": ring_title(m.doorbell_name), "body": body },
            "data": data,
            "android": {
                "priority": if passive { "NORMAL" } else { "HIGH" },
                "ttl": format!("{}s", m.ttl_secs),
                "collapse_key": collapse,
                "notification": notification,
            },
        })
        .to_string();
        let mut suffix = b"\",".to_vec();
        suffix.extend_from_slice(&rest.as_bytes()[1..]);
        suffix.push(b'}');
        MessageTemplate { prefix: br#"{"message":{"token":""#.to_vec(), suffix }
    }

    /// The body for one phone; `token` must have passed [`check_token`] (so needs no escaping).
    pub fn body(&self, token: &str) -> Vec<u8> {
        debug_assert!(check_token(token).is_ok());
        let mut out = Vec::with_capacity(self.prefix.len() + token.len() + self.suffix.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(token.as_bytes());
        out.extend_from_slice(&self.suffix);
        out
    }
}

/// What FCM's answer means, from the HTTP status and the `errorCode` of the `FcmError` detail
/// (https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode).
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8], now: SystemTime) -> Verdict {
    if (200..300).contains(&status) {
        return Verdict::Delivered;
    }
    let e = ErrorBody::parse(body);
    let reason = e.reason(status);
    let after = || retry_after.and_then(|v| parse_retry_after(v, now));
    let failed = |credentials| Verdict::Failed { reason: e.reason(status), status, credentials };
    match (status, e.code.as_deref()) {
        (404 | 400, Some("UNREGISTERED")) => Verdict::Prune { reason },
        (400, _) if e.about_token() => Verdict::Prune { reason },
        (400, _) => failed(false),
        // THIRD_PARTY_AUTH_ERROR is the APNs/Web Push credential stored in the Firebase
        // project, for iOS or web tokens: not our access token, and not every phone's.
        (401, Some("THIRD_PARTY_AUTH_ERROR")) => failed(false),
        (401, _) => Verdict::RefreshAuth,
        // SENDER_ID_MISMATCH, PERMISSION_DENIED, or a 404 without UNREGISTERED (no such
        // project): the service account or project is wrong for every phone.
        (403 | 404, _) => failed(true),
        (429 | 500..=599, _) => Verdict::Retry { after: after(), reason },
        _ => failed(false),
    }
}

/// The parts of Google's error body we use: `{"error":{"code","message","status","details"}}`.
#[derive(Debug, Default)]
struct ErrorBody {
    status: Option<String>,
    message: String,
    /// `details[].errorCode` of the `google.firebase.fcm.v1.FcmError` detail.
    code: Option<String>,
    /// `details[].fieldViolations[].field` of a `google.rpc.BadRequest` detail.
    fields: Vec<String>,
}

impl ErrorBody {
    fn parse(body: &[u8]) -> ErrorBody {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let e = &v["error"];
        let text = |x: &Value| x.as_str().map(|s| short(s, 200).to_string());
        let mut out = ErrorBody {
            status: text(&e["status"]),
            message: text(&e["message"]).unwrap_or_default(),
            ..ErrorBody::default()
        };
        for d in e["details"].as_array().into_iter().flatten().take(8) {
            if out.code.is_none() {
                out.code = text(&d["errorCode"]);
            }
            for f in d["fieldViolations"].as_array().into_iter().flatten().take(8) {
                out.fields.extend(text(&f["field"]));
            }
        }
        out
    }

    /// An INVALID_ARGUMENT about the registration token (Google's example: "The registration
    /// token is not a valid FCM registration token"), not about our message.
    fn about_token(&self) -> bool {
        self.fields.iter().any(|f| f == "message.token")
            || (self.code.as_deref() == Some("INVALID_ARGUMENT")
                && self.message.to_ascii_lowercase().contains("registration token"))
    }

    fn reason(&self, status: u16) -> String {
        let name = self.code.as_deref().or(self.status.as_deref()).unwrap_or("");
        let msg: String = self.message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        match (name.is_empty(), msg.is_empty()) {
            (true, true) => format!("{status}"),
            (false, true) => format!("{status} {name}"),
            (true, false) => format!("{status}: {msg}"),
            (false, false) => format!("{status} {name}: {msg}"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
