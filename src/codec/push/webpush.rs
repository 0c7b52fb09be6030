//! RFC 8030 Web Push as dingdong uses it: the browser's `PushSubscription` checked at the
//! door, the ring payload the service worker reads, the request headers (`TTL`, `Urgency`,
//! `Topic` per doorbell, `aes128gcm`), and what the push service's answer means ([`Verdict`]).
//!
//! Pure: encryption is [`super::ece`], the token [`super::vapid`]; the transport sends.

use super::common::{parse_retry_after, ring_body, ring_title, short, Verdict};
use super::ece::{self, EceError, AUTH_LEN};
use crate::domain::household::{Level, Profile};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use p256::elliptic_curve::rand_core::CryptoRngCore;
use p256::PublicKey;
use sha2::{Digest, Sha256};
use std::fmt;
use std::time::SystemTime;

/// Longest endpoint URL we store; real ones are 150-400 characters.
pub const MAX_ENDPOINT_LEN: usize = 2048;
/// Largest `PushSubscription` JSON we read.
pub const MAX_SUBSCRIPTION_JSON: usize = 8 * 1024;
/// RFC 8030 §5.4: a topic is at most 32 characters of the base64url alphabet.
pub const TOPIC_LEN: usize = 32;

/// The browser hands its keys over as base64url, with or without `=` padding.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    #[error("subscription is {0} bytes; at most 8192 are accepted")]
    TooLarge(usize),
    #[error("subscription is not a JSON object: {0}")]
    Json(String),
    #[error("subscription has no {0}")]
    Missing(&'static str),
    #[error("endpoint: {0}")]
    Endpoint(&'static str),
    #[error("keys.p256dh: {0}")]
    P256dh(String),
    #[error("keys.auth: {0}")]
    Auth(String),
}

/// A checked Web Push subscription. The endpoint is a capability URL and `auth` a secret, so
/// `Debug` and [`Subscription::short`] show the host and 8 characters of the endpoint's tail.
#[derive(Clone)]
pub struct Subscription {
    uri: http::Uri,
    endpoint: String,
    audience: String,
    public: PublicKey,
    auth: [u8; AUTH_LEN],
}

impl Subscription {
    /// From the browser's `PushSubscription.toJSON()`: `{"endpoint", "keys": {"p256dh", "auth"}}`
    /// (other members, like `expirationTime`, are ignored).
    pub fn from_json(json: &[u8]) -> Result<Subscription, SubscriptionError> {
        if json.len() > MAX_SUBSCRIPTION_JSON {
            return Err(SubscriptionError::TooLarge(json.len()));
        }
        // Parsed as a value, so no error message ever quotes a key from the input.
        let v: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| SubscriptionError::Json(format!("line {} column {}", e.line(), e.column())))?;
        let str_at = |p: &'static str| v.pointer(p).and_then(|x| x.as_str()).ok_or(SubscriptionError::Missing(p));
        if !v.is_object() {
            return Err(SubscriptionError::Json("not an object".into()));
        }
        Subscription::new(str_at("/endpoint")?, str_at("/keys/p256dh")?, str_at("/keys/auth")?)
    }

    /// From the three fields (the store's columns).
    pub fn new(endpoint: &str, p256dh: &str, auth: &str) -> Result<Subscription, SubscriptionError> {
        let key = B64URL.decode(p256dh.trim()).map_err(|_| SubscriptionError::P256dh("not base64url".into()))?;
        let public = ece::parse_public_key(&key).map_err(|e| match e {
            EceError::PublicKeyLength(n) => {
                SubscriptionError::P256dh(format!("{n} bytes; must be a 65-byte uncompressed P-256 point"))
            }
            _ => SubscriptionError::P256dh("not a point on P-256".into()),
        })?;
        let auth = B64URL.decode(auth.trim()).map_err(|_| SubscriptionError::Auth("not base64url".into()))?;
        let auth: [u8; AUTH_LEN] =
            auth.try_into().map_err(|a: Vec<u8>| SubscriptionError::Auth(format!("{} bytes; must be 16", a.len())))?;
        Self::from_keys(endpoint, &public, auth)
    }

    /// From parsed keys, e.g. the simulator's generated [`ece::Receiver`].
    pub fn from_keys(
        endpoint: &str,
        public: &PublicKey,
        auth: [u8; AUTH_LEN],
    ) -> Result<Subscription, SubscriptionError> {
        let (uri, audience) = check_endpoint(endpoint)?;
        Ok(Subscription { uri, endpoint: endpoint.to_string(), audience, public: *public, auth })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The parsed endpoint (authority and path for the request).
    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }

    /// The push service's origin: the VAPID `aud` and the key of a connection pool.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub fn auth(&self) -> &[u8; AUTH_LEN] {
        &self.auth
    }

    /// The canonical JSON (base64url without padding), as the store keeps it.
    pub fn to_json(&self) -> String {
        stored_json(&self.endpoint, &ece::public_key_bytes(&self.public), &self.auth)
    }

    /// `host/…abcdefgh`: all a log line or `phone list` may show.
    pub fn short(&self) -> String {
        let tail = self.uri.path().rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
        format!("{}/…{}", self.uri.host().unwrap_or(""), short(tail, 8))
    }

    /// The encrypted body for this subscription ([`ece::encrypt`]).
    pub fn encrypt(&self, plaintext: &[u8], rng: &mut impl CryptoRngCore) -> Result<Vec<u8>, EceError> {
        ece::encrypt(plaintext, &self.public, &self.auth, rng)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subscription({}, auth: <redacted>)", self.short())
    }
}

impl PartialEq for Subscription {
    fn eq(&self, other: &Self) -> bool {
        self.endpoint == other.endpoint && self.public == other.public && self.auth == other.auth
    }
}

/// A subscription as the phones table keeps it in `subscription`:
/// `{"endpoint", "keys": {"auth", "p256dh"}}`, the keys in base64url without padding. Every
/// way in (`phone add --webpush`, `phone import`, pairing) writes this form, and the outbox
/// reads it back.
pub fn stored_json(endpoint: &str, p256dh: &[u8], auth: &[u8]) -> String {
    serde_json::json!({
        "endpoint": endpoint,
        "keys": { "p256dh": URL_SAFE_NO_PAD.encode(p256dh), "auth": URL_SAFE_NO_PAD.encode(auth) }
    })
    .to_string()
}

/// Whether the transport can send to `endpoint`: an `https://` URL with a host and no user
/// information that parses as a request URI. What pairing accepts is checked with this too.
pub fn check_endpoint_url(endpoint: &str) -> Result<(), SubscriptionError> {
    check_endpoint(endpoint).map(drop)
}

fn check_endpoint(endpoint: &str) -> Result<(http::Uri, String), SubscriptionError> {
    use SubscriptionError::Endpoint;
    if endpoint.is_empty() {
        return Err(Endpoint("is empty"));
    }
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(Endpoint("is longer than 2048 characters"));
    }
    if endpoint.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Endpoint("has a space or control character"));
    }
    if !endpoint.starts_with("https://") {
        return Err(Endpoint("must be an https:// URL"));
    }
    let uri: http::Uri = endpoint.parse().map_err(|_| Endpoint("is not a valid URL"))?;
    let authority = uri.authority().ok_or(Endpoint("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(Endpoint("must not carry a user name or password"));
    }
    if authority.host().is_empty() {
        return Err(Endpoint("has no host"));
    }
    let audience = super::vapid::audience(endpoint).map_err(|_| Endpoint("has no https origin"))?;
    Ok((uri, audience))
}

/// The `Topic` of a doorbell's rings, so a newer ring replaces an undelivered older one: 32
/// base64url characters of a SHA-256 of the doorbell id (ids may hold any character, and the
/// push service need not learn them).
pub fn topic(doorbell_id: &str) -> String {
    let digest = Sha256::new().chain_update(b"dingdong doorbell topic\0").chain_update(doorbell_id).finalize();
    URL_SAFE_NO_PAD.encode(&digest[..24])
}

/// The headers of one push request, all but `Host`: `authorization` comes from
/// [`super::vapid::TokenCache`], `ttl_secs` from [`super::common::remaining_ttl`].
pub fn request_headers(ttl_secs: u64, topic: &str, authorization: HeaderValue, body_len: usize) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(7);
    h.insert(HeaderName::from_static("ttl"), HeaderValue::from(ttl_secs));
    h.insert(HeaderName::from_static("urgency"), HeaderValue::from_static("high"));
    h.insert(HeaderName::from_static("topic"), HeaderValue::from_str(topic).expect("a topic is base64url characters"));
    h.insert(CONTENT_ENCODING, HeaderValue::from_static("aes128gcm"));
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(body_len));
    h.insert(AUTHORIZATION, authorization);
    h
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("web push payload is {0} bytes; at most 3993 fit one encrypted record")]
pub struct PayloadTooLarge(pub usize);

/// What the service worker reads: `{"doorbell","name","ring","title","body","at"}` (`at` in
/// UNIX milliseconds), at most [`ece::MAX_PLAINTEXT`] bytes.
pub fn ring_payload(
    doorbell_id: &str,
    doorbell_name: &str,
    ring_id: &str,
    at_ms: i64,
) -> Result<Vec<u8>, PayloadTooLarge> {
    ring_payload_as(doorbell_id, doorbell_name, ring_id, at_ms, &Profile::default(), None)
}

/// [`ring_payload`] for one alert profile (household controls), or the replacement once
/// someone answered. Adds `level`, `silent` (for the service worker's `showNotification`),
/// and either the "I'm coming" action or `answered_by`.
pub fn ring_payload_as(
    doorbell_id: &str,
    doorbell_name: &str,
    ring_id: &str,
    at_ms: i64,
    profile: &Profile,
    answered_by: Option<&str>,
) -> Result<Vec<u8>, PayloadTooLarge> {
    let passive = profile.level == Level::Passive || answered_by.is_some();
    let mut v = serde_json::json!({
        "doorbell": doorbell_id,
        "name": doorbell_name,
        "ring": ring_id,
        "title": ring_title(doorbell_name),
        "body": ring_body(doorbell_name),
        "at": at_ms,
        "level": if answered_by.is_some() { Level::Passive.as_str() } else { profile.level.as_str() },
        "silent": passive,
    });
    match answered_by {
        Some(who) => {
            v["body"] = format!("{who} is getting the door").into();
            v["answered_by"] = who.into();
        }
        None => v["actions"] = serde_json::json!([{"action": "coming", "title": "I'm coming"}]),
    }
    let bytes = serde_json::to_vec(&v).expect("a json value always serialises");
    if bytes.len() > ece::MAX_PLAINTEXT {
        return Err(PayloadTooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// What the push service's answer means (RFC 8030 §5-§8; 401/403 are VAPID refusals, e.g.
/// Apple's `{"reason":"BadJwtToken"}`, so they mark the credentials). `retry_after` is the
/// raw header, `body` the answer's body (only a short, single-line excerpt is kept).
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8], now: SystemTime) -> Verdict {
    let reason = |what: &str| {
        let excerpt = excerpt(body);
        if excerpt.is_empty() {
            format!("{status} {what}")
        } else {
            format!("{status} {what}: {excerpt}")
        }
    };
    let after = || retry_after.and_then(|v| parse_retry_after(v, now));
    match status {
        200..=299 => Verdict::Delivered,
        404 => Verdict::Prune { reason: reason("subscription not found (expired)") },
        410 => Verdict::Prune { reason: reason("subscription gone (unsubscribed)") },
        413 => Verdict::Failed { reason: reason("payload too large"), status, credentials: false },
        429 => Verdict::Retry { after: after(), reason: reason("too many requests") },
        500..=599 => Verdict::Retry { after: after(), reason: reason("push service error") },
        401 | 403 => Verdict::Failed { reason: reason("VAPID credentials refused"), status, credentials: true },
        400 => {
            // A 400 is usually our request; some services say so about the VAPID header too.
            let lower = String::from_utf8_lossy(body).to_ascii_lowercase();
            let credentials = ["vapid", "jwt", "authorization", "crypto-key"].iter().any(|w| lower.contains(w));
            Verdict::Failed { reason: reason("bad request"), status, credentials }
        }
        _ => Verdict::Failed { reason: reason("unexpected answer"), status, credentials: false },
    }
}

/// The first 160 characters of an answer body on one line, for a reason string.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(640)]);
    let line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    short(line.trim(), 160).to_string()
}

#[cfg(test)]
mod tests;
