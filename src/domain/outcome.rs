//! What happened to one phone of a ring, in one vocabulary for every transport: the message
//! shared by a ring's phones, the phone to reach, the service's reason and the decision it
//! carries ([`Outcome`]). Transports turn their answers into these; `outbox` and `store` never
//! care which transport ran.

use super::state::PhoneState;
use super::token::{Environment, Token};
use bytes::Bytes;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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
    /// The state stored per phone and published in the ring outcome.
    pub fn state(&self) -> PhoneState {
        match self {
            Outcome::Delivered => PhoneState::Delivered,
            Outcome::Retry { .. } => PhoneState::Pending,
            Outcome::Prune { .. } => PhoneState::Pruned,
            Outcome::Failed { .. } => PhoneState::Failed,
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
