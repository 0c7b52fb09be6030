//! The shared vocabulary of both APNs transports: environments, device tokens, the message of
//! a ring, Apple's reasons and what each one means for us ([`Outcome`]), and payload building.
//!
//! It picks no transport and does no I/O; `http2` and `binary` turn Apple's answers into these
//! types so `outbox` and `store` never care which transport ran.

pub mod auth;
pub mod binary;
pub mod certinfo;
pub mod http2;
pub mod sim;
pub mod tls;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Largest payload Apple accepts for an alert push.
pub const MAX_PAYLOAD: usize = 4096;
/// Shortest and longest device token we accept, in bytes.
pub const TOKEN_MIN_BYTES: usize = 32;
pub const TOKEN_MAX_BYTES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Sandbox,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Sandbox => "sandbox",
            Environment::Production => "production",
        }
    }

    /// Apple's HTTP/2 host for this environment.
    pub fn host(self) -> &'static str {
        match self {
            Environment::Sandbox => "api.sandbox.push.apple.com",
            Environment::Production => "api.push.apple.com",
        }
    }

    pub fn parse(s: &str) -> Option<Environment> {
        match s {
            "sandbox" | "development" => Some(Environment::Sandbox),
            "production" => Some(Environment::Production),
            _ => None,
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token was refused when it was registered or imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is empty")]
    Empty,
    #[error("token has a character that is not hex: '{0}'")]
    NotHex(char),
    #[error("token has an odd number of hex digits ({0})")]
    OddLength(usize),
    #[error("token is {0} bytes; a device token is 32 to 100 bytes")]
    BadSize(usize),
}

/// Normalises a device token: drops whitespace and the `<...>` of iOS's old description
/// format, lower-cases, and checks it is 32 to 100 bytes of hex.
pub fn normalize_token(raw: &str) -> Result<String, TokenError> {
    let trimmed = raw.trim().trim_start_matches('<').trim_end_matches('>');
    let mut out = String::with_capacity(trimmed.len());
    for c in trimmed.chars() {
        if c.is_whitespace() {
            continue;
        }
        if !c.is_ascii_hexdigit() {
            return Err(TokenError::NotHex(c));
        }
        out.push(c.to_ascii_lowercase());
    }
    if out.is_empty() {
        return Err(TokenError::Empty);
    }
    if out.len() % 2 != 0 {
        return Err(TokenError::OddLength(out.len()));
    }
    let bytes = out.len() / 2;
    if !(TOKEN_MIN_BYTES..=TOKEN_MAX_BYTES).contains(&bytes) {
        return Err(TokenError::BadSize(bytes));
    }
    Ok(out)
}

/// What is common to every phone of one ring: built once, shared by reference.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: Arc<str>,
    /// The JSON payload, checked against [`MAX_PAYLOAD`].
    pub payload: Bytes,
    /// `apns-expiration`: UNIX seconds after which Apple drops it.
    pub expiration: u64,
    /// `apns-collapse-id`: one per doorbell, so a phone shows the newest ring only.
    pub collapse_id: Arc<str>,
    pub priority: u8,
}

/// One phone to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub phone_id: i64,
    pub token: Token,
    pub environment: Environment,
}

/// A device token as Apple issued it: bytes, written as lowercase hex. The usual 32 bytes
/// are held inline, so a 120,000-phone ring holds its tokens without 120,000 allocations;
/// longer tokens (Apple reserves the right to issue them) share one allocation each.
/// `Debug` shows the first 8 hex characters only, as the logs do.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Token {
    Inline([u8; 32]),
    Long(Arc<[u8]>),
}

impl Token {
    /// The token of a hex string of [`TOKEN_MIN_BYTES`]..=[`TOKEN_MAX_BYTES`] bytes (either
    /// case; see [`normalize_token`] for what users may type).
    pub fn from_hex(hex: &str) -> Option<Token> {
        let n = hex.len() / 2;
        if hex.len() % 2 != 0 || !(TOKEN_MIN_BYTES..=TOKEN_MAX_BYTES).contains(&n) {
            return None;
        }
        // faster-hex: a building's 120,000 tokens are decoded on every ring, before the first send.
        if n == 32 {
            let mut b = [0u8; 32];
            faster_hex::hex_decode(hex.as_bytes(), &mut b).ok()?;
            Some(Token::Inline(b))
        } else {
            let mut b = vec![0u8; n];
            faster_hex::hex_decode(hex.as_bytes(), &mut b).ok()?;
            Some(Token::Long(b.into()))
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Token::Inline(b) => b,
            Token::Long(b) => b,
        }
    }

    /// Appends the lowercase hex (what APNs' request path and the database hold) to `out`.
    pub fn write_hex(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + 2 * self.bytes().len(), 0);
        faster_hex::hex_encode(self.bytes(), &mut out[start..]).expect("the slice is twice the token's length");
    }

    pub fn hex(&self) -> String {
        hex::encode(self.bytes())
    }

    /// The first 8 hex characters: all a log line or a report may show.
    pub fn short(&self) -> String {
        hex::encode(&self.bytes()[..4])
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}…)", self.short())
    }
}

/// Apple's reasons (HTTP/2 `reason`, legacy status codes mapped to the nearest one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    BadCollapseId,
    BadDeviceToken,
    BadExpirationDate,
    BadMessageId,
    BadPriority,
    BadTopic,
    DeviceTokenNotForTopic,
    DuplicateHeaders,
    IdleTimeout,
    InvalidPushType,
    MissingDeviceToken,
    MissingTopic,
    PayloadEmpty,
    TopicDisallowed,
    BadCertificate,
    BadCertificateEnvironment,
    ExpiredProviderToken,
    Forbidden,
    InvalidProviderToken,
    MissingProviderToken,
    UnrelatedKeyIdInToken,
    BadPath,
    MethodNotAllowed,
    Unregistered,
    ExpiredToken,
    PayloadTooLarge,
    TooManyProviderTokenUpdates,
    TooManyRequests,
    InternalServerError,
    ServiceUnavailable,
    Shutdown,
    /// A reason we do not know, kept verbatim.
    Other(String),
    /// No answer: the connection failed, reset the stream or timed out.
    Connection(String),
    /// The ring expired before the phone could be reached.
    Expired,
}

impl Reason {
    pub fn parse(s: &str) -> Reason {
        use Reason::*;
        match s {
            "BadCollapseId" => BadCollapseId,
            "BadDeviceToken" => BadDeviceToken,
            "BadExpirationDate" => BadExpirationDate,
            "BadMessageId" => BadMessageId,
            "BadPriority" => BadPriority,
            "BadTopic" => BadTopic,
            "DeviceTokenNotForTopic" => DeviceTokenNotForTopic,
            "DuplicateHeaders" => DuplicateHeaders,
            "IdleTimeout" => IdleTimeout,
            "InvalidPushType" => InvalidPushType,
            "MissingDeviceToken" => MissingDeviceToken,
            "MissingTopic" => MissingTopic,
            "PayloadEmpty" => PayloadEmpty,
            "TopicDisallowed" => TopicDisallowed,
            "BadCertificate" => BadCertificate,
            "BadCertificateEnvironment" => BadCertificateEnvironment,
            "ExpiredProviderToken" => ExpiredProviderToken,
            "Forbidden" => Forbidden,
            "InvalidProviderToken" => InvalidProviderToken,
            "MissingProviderToken" => MissingProviderToken,
            "UnrelatedKeyIdInToken" => UnrelatedKeyIdInToken,
            "BadPath" => BadPath,
            "MethodNotAllowed" => MethodNotAllowed,
            "Unregistered" => Unregistered,
            "ExpiredToken" => ExpiredToken,
            "PayloadTooLarge" => PayloadTooLarge,
            "TooManyProviderTokenUpdates" => TooManyProviderTokenUpdates,
            "TooManyRequests" => TooManyRequests,
            "InternalServerError" => InternalServerError,
            "ServiceUnavailable" => ServiceUnavailable,
            "Shutdown" => Shutdown,
            other => Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        use Reason::*;
        match self {
            BadCollapseId => "BadCollapseId",
            BadDeviceToken => "BadDeviceToken",
            BadExpirationDate => "BadExpirationDate",
            BadMessageId => "BadMessageId",
            BadPriority => "BadPriority",
            BadTopic => "BadTopic",
            DeviceTokenNotForTopic => "DeviceTokenNotForTopic",
            DuplicateHeaders => "DuplicateHeaders",
            IdleTimeout => "IdleTimeout",
            InvalidPushType => "InvalidPushType",
            MissingDeviceToken => "MissingDeviceToken",
            MissingTopic => "MissingTopic",
            PayloadEmpty => "PayloadEmpty",
            TopicDisallowed => "TopicDisallowed",
            BadCertificate => "BadCertificate",
            BadCertificateEnvironment => "BadCertificateEnvironment",
            ExpiredProviderToken => "ExpiredProviderToken",
            Forbidden => "Forbidden",
            InvalidProviderToken => "InvalidProviderToken",
            MissingProviderToken => "MissingProviderToken",
            UnrelatedKeyIdInToken => "UnrelatedKeyIdInToken",
            BadPath => "BadPath",
            MethodNotAllowed => "MethodNotAllowed",
            Unregistered => "Unregistered",
            ExpiredToken => "ExpiredToken",
            PayloadTooLarge => "PayloadTooLarge",
            TooManyProviderTokenUpdates => "TooManyProviderTokenUpdates",
            TooManyRequests => "TooManyRequests",
            InternalServerError => "InternalServerError",
            ServiceUnavailable => "ServiceUnavailable",
            Shutdown => "Shutdown",
            Other(s) => s,
            Connection(_) => "Connection",
            Expired => "Expired",
        }
    }

    /// True for the 403 reasons that mean our credentials are wrong: the transport stops and
    /// the problem is reported instead of retried in a loop.
    pub fn is_credentials(&self) -> bool {
        use Reason::*;
        matches!(
            self,
            BadCertificate
                | BadCertificateEnvironment
                | Forbidden
                | InvalidProviderToken
                | MissingProviderToken
                | UnrelatedKeyIdInToken
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Connection(why) => write!(f, "Connection({why})"),
            r => f.write_str(r.as_str()),
        }
    }
}

/// What happened to one phone of a ring: the decision travels as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Apple accepted it.
    Delivered,
    /// Try again later (429, 500, 503, connection trouble, a fresh JWT was needed).
    Retry { reason: Reason, after: Option<Duration> },
    /// The token is dead: remove the phone unless it was registered after `since` (ms).
    Prune { reason: Reason, since: Option<i64> },
    /// Will not succeed by retrying; recorded and reported.
    Failed { reason: Reason, status: u16 },
}

impl Outcome {
    /// Turns an HTTP/2 answer into a decision.
    pub fn from_http(status: u16, reason: Option<&str>, timestamp_ms: Option<i64>) -> Outcome {
        if status == 200 {
            return Outcome::Delivered;
        }
        let reason = reason.map(Reason::parse).unwrap_or_else(|| Reason::Other(format!("HTTP {status}")));
        match (status, &reason) {
            (410, _) => Outcome::Prune { reason, since: timestamp_ms },
            (400, Reason::BadDeviceToken | Reason::DeviceTokenNotForTopic) => Outcome::Prune { reason, since: None },
            (403, Reason::ExpiredProviderToken) => Outcome::Retry { reason, after: None },
            (429 | 500 | 503, _) => Outcome::Retry { reason, after: None },
            _ => Outcome::Failed { reason, status },
        }
    }

    /// The state name stored per phone and published in the ring outcome.
    pub fn state(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry { .. } => "pending",
            Outcome::Prune { .. } => "pruned",
            Outcome::Failed { .. } => "failed",
        }
    }

    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Outcome::Delivered => None,
            Outcome::Retry { reason, .. } | Outcome::Prune { reason, .. } | Outcome::Failed { reason, .. } => {
                Some(reason)
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("payload is {0} bytes; Apple accepts at most {MAX_PAYLOAD}")]
pub struct PayloadTooLarge(pub usize);

/// The notification of a ring: alert naming the doorbell, sound, grouping per doorbell,
/// time-sensitive so Focus modes let it through. The ring id lets the app match the outcome.
pub fn ring_payload(
    doorbell_id: &str,
    doorbell_name: &str,
    ring_id: &str,
    sound: &str,
) -> Result<Bytes, PayloadTooLarge> {
    let v = serde_json::json!({
        "aps": {
            "alert": {
                "title": doorbell_name,
                "body": format!("Someone is at {doorbell_name}"),
            },
            "sound": sound,
            "thread-id": format!("doorbell-{doorbell_id}"),
            "interruption-level": "time-sensitive",
        },
        "doorbell": doorbell_id,
        "ring": ring_id,
    });
    let bytes = serde_json::to_vec(&v).expect("a json value always serialises");
    if bytes.len() > MAX_PAYLOAD {
        return Err(PayloadTooLarge(bytes.len()));
    }
    Ok(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bytes_written_as_lowercase_hex_and_logged_short() {
        let hex = "AB".repeat(32);
        let t = Token::from_hex(&hex).unwrap();
        assert!(matches!(t, Token::Inline(_)));
        assert_eq!(t.hex(), "ab".repeat(32));
        let mut path = b"/3/device/".to_vec();
        t.write_hex(&mut path);
        assert_eq!(path, format!("/3/device/{}", "ab".repeat(32)).into_bytes());
        assert_eq!(format!("{t:?}"), "Token(abababab…)");
        let long = Token::from_hex(&"0f".repeat(64)).unwrap();
        assert!(matches!(long, Token::Long(_)));
        assert_eq!(long.hex(), "0f".repeat(64));
        for bad in ["ab".repeat(31), "a".repeat(65), "zz".repeat(32), "ab".repeat(101)] {
            assert_eq!(Token::from_hex(&bad), None, "{bad}");
        }
    }

    #[test]
    fn tokens_are_normalised() {
        let seed = "740f4707bebcf74f 9b7c25d4 8e3358945f6aa01da5ddb387462c7eaf 61bb78ad";
        assert_eq!(normalize_token(seed).unwrap(), "740f4707bebcf74f9b7c25d48e3358945f6aa01da5ddb387462c7eaf61bb78ad");
        assert_eq!(normalize_token(&format!("<{}>", seed.to_uppercase())).unwrap().len(), 64);
        assert_eq!(normalize_token(""), Err(TokenError::Empty));
        assert_eq!(normalize_token("zz"), Err(TokenError::NotHex('z')));
        assert_eq!(normalize_token("abc"), Err(TokenError::OddLength(3)));
        assert_eq!(normalize_token(&"ab".repeat(31)), Err(TokenError::BadSize(31)));
        assert_eq!(normalize_token(&"ab".repeat(101)), Err(TokenError::BadSize(101)));
        assert!(normalize_token(&"ab".repeat(100)).is_ok());
    }

    #[test]
    fn outcomes_from_http() {
        assert_eq!(Outcome::from_http(200, None, None), Outcome::Delivered);
        assert_eq!(
            Outcome::from_http(410, Some("Unregistered"), Some(5)),
            Outcome::Prune { reason: Reason::Unregistered, since: Some(5) }
        );
        assert_eq!(
            Outcome::from_http(400, Some("BadDeviceToken"), None),
            Outcome::Prune { reason: Reason::BadDeviceToken, since: None }
        );
        assert!(matches!(Outcome::from_http(400, Some("BadTopic"), None), Outcome::Failed { status: 400, .. }));
        assert!(matches!(Outcome::from_http(503, Some("ServiceUnavailable"), None), Outcome::Retry { .. }));
        assert!(matches!(Outcome::from_http(429, Some("TooManyRequests"), None), Outcome::Retry { .. }));
        assert!(matches!(Outcome::from_http(403, Some("ExpiredProviderToken"), None), Outcome::Retry { .. }));
        let f = Outcome::from_http(403, Some("InvalidProviderToken"), None);
        assert!(f.reason().unwrap().is_credentials());
        assert_eq!(Reason::parse("Whatever"), Reason::Other("Whatever".into()));
    }

    #[test]
    fn payload_names_the_doorbell_and_is_bounded() {
        let p = ring_payload("front", "Front door", "r1", "default").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["aps"]["alert"]["title"], "Front door");
        assert_eq!(v["aps"]["thread-id"], "doorbell-front");
        assert_eq!(v["aps"]["interruption-level"], "time-sensitive");
        assert!(ring_payload("front", &"x".repeat(5000), "r1", "default").is_err());
    }
}
