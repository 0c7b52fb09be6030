//! What happened to one phone of a ring, in one vocabulary for every transport: the message
//! shared by a ring's phones, the phone to reach and where ([`Target`], [`Address`], on which
//! [`Platform`]), the service's reason and the decision it carries ([`Outcome`]). Transports
//! turn their answers into these; `outbox` and `store` never care which transport ran.

use super::state::PhoneState;
use super::token::{Environment, Token};
use bytes::Bytes;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What is common to every phone of one APNs ring: built once, shared by reference.
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

/// What a ring says, for the transports that build their own request from it (FCM, Web
/// Push): the time to live is computed from `expires_at` at each attempt.
#[derive(Debug, Clone)]
pub struct Notice {
    pub ring_id: Arc<str>,
    pub doorbell_id: Arc<str>,
    pub doorbell_name: Arc<str>,
    /// When the button was pressed (UNIX ms): the `at` the web app shows.
    pub pressed_at: i64,
    /// UNIX ms after which nothing may be sent.
    pub expires_at: i64,
    /// How it alerts (household controls): level and sound.
    pub profile: super::household::Profile,
    /// Set for the replacement sent once someone answered: who is getting the door.
    pub answered_by: Option<Arc<str>>,
}

/// Which push service reaches a phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Apple's push service (iPhones, iPads).
    Apns,
    /// Firebase Cloud Messaging HTTP v1 (Android).
    Fcm,
    /// RFC 8030 Web Push (a browser, a home-screen web app).
    Webpush,
}

impl Platform {
    pub const ALL: [Platform; 3] = [Platform::Apns, Platform::Fcm, Platform::Webpush];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::Fcm => "fcm",
            Platform::Webpush => "webpush",
        }
    }

    pub fn parse(s: &str) -> Option<Platform> {
        match s {
            "apns" => Some(Platform::Apns),
            "fcm" => Some(Platform::Fcm),
            "webpush" => Some(Platform::Webpush),
            _ => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A browser's push subscription as stored: checked when it was registered (the transport
/// parses the keys again). The endpoint is a capability URL and `auth` a secret: `Debug`
/// shows neither.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WebPushKeys {
    pub endpoint: String,
    /// base64url of the browser's P-256 public key.
    pub p256dh: String,
    /// base64url of the 16-byte authentication secret.
    pub auth: String,
}

impl fmt::Debug for WebPushKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebPushKeys({})", short_endpoint(&self.endpoint))
    }
}

/// `host/…abcdefgh` of a push endpoint: all a log line or a report may show of it.
pub fn short_endpoint(endpoint: &str) -> String {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let tail = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
    let cut = tail.char_indices().nth(8).map_or(tail, |(i, _)| &tail[..i]);
    format!("{host}/…{cut}")
}

/// All a report may show of a phone's key as the phones table keeps it: 8 characters of a
/// token, the host and 8 characters of a Web Push endpoint.
pub fn short_key(platform: Platform, key: &str) -> String {
    match platform {
        Platform::Webpush => crate::domain::short_endpoint(key),
        _ => key.chars().take(8).collect(),
    }
}

/// Where one phone is reached. APNs tokens stay inline (no allocation per phone for a
/// building's iPhones); the others share one allocation each.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Address {
    Apns {
        token: Token,
        environment: Environment,
    },
    /// An FCM registration token (checked when registered).
    Fcm(Arc<str>),
    WebPush(Arc<WebPushKeys>),
}

impl Address {
    pub fn platform(&self) -> Platform {
        match self {
            Address::Apns { .. } => Platform::Apns,
            Address::Fcm(_) => Platform::Fcm,
            Address::WebPush(_) => Platform::Webpush,
        }
    }

    /// What the phones table keeps in its `token` column: the APNs token in hex, the FCM
    /// token, the Web Push endpoint.
    pub fn key(&self) -> String {
        match self {
            Address::Apns { token, .. } => token.hex(),
            Address::Fcm(t) => t.to_string(),
            Address::WebPush(k) => k.endpoint.clone(),
        }
    }

    /// All a log line or a report may show: 8 hex characters of an APNs token, 8 characters
    /// of an FCM token, the host and 8 characters of a Web Push endpoint.
    pub fn short(&self) -> String {
        match self {
            Address::Apns { token, .. } => token.short(),
            Address::Fcm(t) => t.chars().take(8).collect(),
            Address::WebPush(k) => short_endpoint(&k.endpoint),
        }
    }

    /// The APNs environment (production for the other platforms, which have none).
    pub fn environment(&self) -> Environment {
        match self {
            Address::Apns { environment, .. } => *environment,
            _ => Environment::Production,
        }
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.platform(), self.short())
    }
}

/// One phone to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub phone_id: i64,
    pub address: Address,
}

impl Target {
    /// An iPhone.
    pub fn apns(phone_id: i64, token: Token, environment: Environment) -> Target {
        Target { phone_id, address: Address::Apns { token, environment } }
    }

    /// The APNs token; the APNs transports are only handed APNs phones (`outbox` splits a
    /// ring by platform), and anything else reads as the all-zero token Apple refuses.
    pub fn token(&self) -> &Token {
        static NONE: Token = Token::Inline([0; 32]);
        match &self.address {
            Address::Apns { token, .. } => token,
            _ => &NONE,
        }
    }

    pub fn environment(&self) -> Environment {
        self.address.environment()
    }

    pub fn platform(&self) -> Platform {
        self.address.platform()
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
    /// A reason we do not know, or a push service's own words (FCM, Web Push), kept verbatim.
    Other(String),
    /// FCM or Web Push refused our credentials (service account, project, VAPID key).
    Credentials(String),
    /// Phones of a platform the configuration has no transport for (no `[fcm]`, no `[webpush]`).
    Unconfigured(Platform),
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
            Credentials(_) => "Credentials",
            Unconfigured(Platform::Apns) => "APNs is not configured",
            Unconfigured(Platform::Fcm) => "FCM is not configured ([fcm])",
            Unconfigured(Platform::Webpush) => "Web Push is not configured ([webpush])",
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
                | Credentials(_)
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Connection(why) => write!(f, "Connection({why})"),
            Reason::Credentials(why) => write!(f, "Credentials({why})"),
            r => f.write_str(r.as_str()),
        }
    }
}

/// What happened to one phone of a ring: the decision travels as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The push service accepted it.
    Delivered,
    /// Try again later (429, 500, 503, connection trouble, a fresh JWT was needed).
    Retry { reason: Reason, after: Option<Duration> },
    /// The token is dead: remove the phone unless it was registered after `since` (ms).
    Prune { reason: Reason, since: Option<i64> },
    /// Will not succeed by retrying; recorded and reported.
    Failed { reason: Reason, status: u16 },
    /// Not sent: the person's mute or quiet hours say skip (household controls).
    Muted,
    /// The push service accepted it, sent passive and silent (mute or quiet hours, silent).
    Silenced,
}

impl Outcome {
    /// The state stored per phone and published in the ring outcome.
    pub fn state(&self) -> PhoneState {
        match self {
            Outcome::Delivered => PhoneState::Delivered,
            Outcome::Retry { .. } => PhoneState::Pending,
            Outcome::Prune { .. } => PhoneState::Pruned,
            Outcome::Failed { .. } => PhoneState::Failed,
            Outcome::Muted => PhoneState::Muted,
            Outcome::Silenced => PhoneState::Silenced,
        }
    }

    /// Whether the phone's record says nothing is wrong with it (a delivery, or what the
    /// household's own rules chose): such an outcome clears no problem and sets none.
    pub fn is_fine(&self) -> bool {
        matches!(self, Outcome::Delivered | Outcome::Muted | Outcome::Silenced)
    }

    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Outcome::Delivered | Outcome::Muted | Outcome::Silenced => None,
            Outcome::Retry { reason, .. } | Outcome::Prune { reason, .. } | Outcome::Failed { reason, .. } => {
                Some(reason)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_names_round_trip() {
        for p in Platform::ALL {
            assert_eq!(Platform::parse(p.as_str()), Some(p));
        }
        assert_eq!(Platform::parse("sms"), None);
    }

    #[test]
    fn addresses_show_only_their_heads() {
        let web = WebPushKeys {
            endpoint: "https://push.example.net/wpush/v2/abcdef0123456789".into(),
            p256dh: "not shown".into(),
            auth: "not shown".into(),
        };
        let a = Address::WebPush(Arc::new(web));
        assert_eq!(format!("{a:?}"), "webpush:push.example.net/…abcdef01");
        assert_eq!(Address::Fcm("fcm-token-0123456789".into()).short(), "fcm-toke");
        assert_eq!(a.platform(), Platform::Webpush);
    }
}
