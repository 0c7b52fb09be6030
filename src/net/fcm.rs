//! The FCM HTTP v1 transport: Android phones.
//!
//! An OAuth 2.0 access token is obtained at the service account's `token_uri` (an RS256 JWT
//! exchanged for it, RFC 7523), kept, and renewed five minutes before it expires; when FCM
//! answers 401 the token is renewed once and the phone's message resent, a second 401 fails.
//! Each phone is one `POST /v1/projects/<id>/messages:send` over [`Https`] (HTTP/2 with many
//! streams where offered). The body is rendered once per attempt ([`MessageTemplate`]: the
//! TTL is what is left of the ring's expiry) and stamped with each token. The answer rules
//! are `codec::push::fcm::classify`; 429/500/503 come back as retries with `Retry-After`,
//! `UNREGISTERED` and an invalid token as prunes. No SQL here.

use super::https::{fan_out, hand_back, no_answer, outcome_of, Guard, Https, HttpsError, HttpsSettings, Sent};
use crate::codec::push::common::{remaining_ttl, Verdict};
use crate::codec::push::fcm::{self, AccessToken, MessageTemplate, RingMessage, ServiceAccount};
use crate::domain::{Address, Notice, Outcome, Reason, Target};
use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Google's host of the send API.
pub const FCM_HOST: &str = "https://fcm.googleapis.com";

#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    #[error(transparent)]
    Https(#[from] HttpsError),
    #[error("fcm.endpoint '{0}' is not https://HOST[:PORT]")]
    Endpoint(String),
    #[error("the service account's token_uri is not a URL")]
    TokenUri,
}

/// Settings of the transport, from `[fcm]`.
pub struct FcmSettings {
    /// The service account, with `fcm.project_id` applied.
    pub account: ServiceAccount,
    /// Replaces `https://fcm.googleapis.com` (the simulator).
    pub endpoint: Option<String>,
    /// The app's notification channel (Android 8+ shows nothing without one).
    pub channel_id: String,
    pub https: HttpsSettings,
}

/// The client. Cheap to clone; connections and the access token are shared by every clone.
#[derive(Clone)]
pub struct FcmClient {
    inner: Arc<Inner>,
}

struct Inner {
    https: Https,
    account: ServiceAccount,
    send_uri: http::Uri,
    token_uri: http::Uri,
    channel_id: String,
    /// The current access token; held while a new one is fetched, so one fetch serves all.
    token: tokio::sync::Mutex<Option<AccessToken>>,
    guard: Guard,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl FcmClient {
    pub fn new(settings: FcmSettings) -> Result<FcmClient, FcmError> {
        let host = settings.endpoint.as_deref().unwrap_or(FCM_HOST).trim_end_matches('/');
        let send_uri: http::Uri = format!("{host}{}", settings.account.send_path())
            .parse()
            .map_err(|_| FcmError::Endpoint(host.to_string()))?;
        if send_uri.scheme_str() != Some("https") || send_uri.host().is_none() {
            return Err(FcmError::Endpoint(host.to_string()));
        }
        let token_uri = settings.account.token_uri().parse().map_err(|_| FcmError::TokenUri)?;
        Ok(FcmClient {
            inner: Arc::new(Inner {
                https: Https::new(settings.https)?,
                account: settings.account,
                send_uri,
                token_uri,
                channel_id: settings.channel_id,
                token: tokio::sync::Mutex::new(None),
                guard: Guard::default(),
            }),
        })
    }

    /// The credentials problem that stopped the transport, if any.
    pub fn stopped(&self) -> Option<Reason> {
        self.inner.guard.stopped()
    }

    pub fn project_id(&self) -> &str {
        self.inner.account.project_id()
    }

    /// One exchange at the token endpoint, as `diag` proves the service account: the access
    /// token's lifetime in seconds, or why there is none.
    pub async fn probe(&self) -> Result<u64, String> {
        match self.fetch_token().await {
            Ok(t) => Ok(t.expires_at().saturating_sub(unix_now())),
            Err(Verdict::Retry { reason, .. }) => Err(reason),
            Err(Verdict::Failed { reason, .. }) => Err(reason),
            Err(v) => Err(format!("{v:?}")),
        }
    }

    /// Sends the ring to every target (Android phones); each target's outcome goes to `out`
    /// as `(index into targets, outcome)`. After `stop`, nothing new starts and what was not
    /// sent comes back as a retry.
    pub async fn send(
        &self,
        notice: Arc<Notice>,
        targets: Arc<Vec<Target>>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
        stop: &CancellationToken,
    ) {
        let all: Vec<usize> = (0..targets.len()).collect();
        if self.inner.guard.refuse_all(all.iter().copied(), &out) {
            return;
        }
        let Some(ttl_secs) = remaining_ttl(notice.expires_at, crate::domain::now_ms()) else {
            for &i in &all {
                let _ = out.send((i, Outcome::Retry { reason: Reason::Expired, after: None }));
            }
            return;
        };
        let bearer = match self.bearer(None).await {
            Ok(b) => b,
            Err(outcome) => {
                for &i in &all {
                    let _ = out.send((i, outcome.clone()));
                }
                return;
            }
        };
        let template = Arc::new(MessageTemplate::new(&RingMessage {
            doorbell_id: &notice.doorbell_id,
            doorbell_name: &notice.doorbell_name,
            ring_id: &notice.ring_id,
            ttl_secs,
            channel_id: &self.inner.channel_id,
            profile: &notice.profile,
            answered_by: notice.answered_by.as_deref(),
        }));
        let mut done = vec![false; targets.len()];
        let items = futures_util::stream::iter(all.iter().copied());
        let start = |i: usize| {
            let (me, targets, template, bearer) = (self.clone(), targets.clone(), template.clone(), bearer.clone());
            async move { me.send_one(i, &targets[i], &template, bearer).await }
        };
        fan_out(items, self.inner.https.settings(), stop, start, &out, &mut done).await;
        hand_back(&all, &done, "not sent", &out);
    }

    /// One phone: the request, a resend after a 401 with a renewed token, the verdict.
    async fn send_one(&self, i: usize, target: &Target, template: &MessageTemplate, bearer: HeaderValue) -> Sent {
        let Address::Fcm(token) = &target.address else {
            let reason = Reason::Other("not an FCM phone".into());
            return (i, Outcome::Failed { reason, status: 0 }, None);
        };
        let body = Bytes::from(template.body(token));
        let (mut bearer, mut renewed) = (bearer, false);
        loop {
            let answer = match self.inner.https.request(self.request(&bearer, body.clone())).await {
                Ok(a) => a,
                Err(why) => return (i, no_answer(why), None),
            };
            let version = Some(answer.version);
            let verdict = fcm::classify(answer.status, answer.retry_after.as_deref(), &answer.body, SystemTime::now());
            match verdict {
                Verdict::RefreshAuth if !renewed => match self.bearer(Some(&bearer)).await {
                    Ok(fresh) => (bearer, renewed) = (fresh, true),
                    Err(outcome) => return (i, outcome, version),
                },
                Verdict::RefreshAuth => {
                    let reason = Reason::Credentials("FCM refused a freshly issued access token (401)".into());
                    self.stop(reason.clone());
                    return (i, Outcome::Failed { reason, status: 401 }, version);
                }
                v => return (i, self.judge(target, v), version),
            }
        }
    }

    fn request(&self, bearer: &HeaderValue, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.inner.send_uri.clone();
        let h = req.headers_mut();
        h.insert(http::header::AUTHORIZATION, bearer.clone());
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
        req
    }

    /// The outcome of a verdict, with what it means for the transport.
    fn judge(&self, target: &Target, verdict: Verdict) -> Outcome {
        let outcome = outcome_of(verdict, crate::domain::now_ms());
        match &outcome {
            Outcome::Delivered => self.inner.guard.delivered(),
            Outcome::Failed { reason, .. } if reason.is_credentials() => {
                if self.inner.guard.strike(target.phone_id, reason) {
                    warn!(reason = %reason, "FCM refused our credentials for several phones: the FCM transport stops until a reload");
                }
            }
            o => {
                debug!(token = %target.address.short(), state = %o.state(), reason = ?o.reason(), "FCM did not deliver")
            }
        }
        outcome
    }

    fn stop(&self, reason: Reason) {
        if self.inner.guard.stop(reason.clone()) {
            warn!(reason = %reason, "FCM refused our credentials: the FCM transport stops until a reload");
        }
    }

    /// The current access token as an `Authorization` value, fetched when there is none, it
    /// is about to expire, or FCM refused `rejected` (then once, however many phones saw it).
    /// A failure is the outcome for the phones waiting for it.
    async fn bearer(&self, rejected: Option<&HeaderValue>) -> Result<HeaderValue, Outcome> {
        let mut current = self.inner.token.lock().await;
        if let Some(t) = current.as_ref() {
            if !t.needs_refresh(unix_now()) && Some(t.authorization()) != rejected {
                return Ok(t.authorization().clone());
            }
        }
        match self.fetch_token().await {
            Ok(t) => {
                info!(expires_in = t.expires_at().saturating_sub(unix_now()), "FCM access token obtained");
                let header = t.authorization().clone();
                *current = Some(t);
                Ok(header)
            }
            Err(Verdict::Failed { reason, status, .. }) => {
                let reason = Reason::Credentials(reason);
                self.stop(reason.clone());
                Err(Outcome::Failed { reason, status })
            }
            Err(v) => Err(outcome_of(v, 0)),
        }
    }

    /// One exchange at the token endpoint.
    async fn fetch_token(&self) -> Result<AccessToken, Verdict> {
        let body = self.inner.account.token_request_body(unix_now());
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.inner.token_uri.clone();
        req.headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        match self.inner.https.request(req).await {
            Ok(a) => fcm::token_answer(a.status, a.retry_after.as_deref(), &a.body, SystemTime::now()),
            Err(why) => Err(Verdict::Retry { after: None, reason: format!("token endpoint: {why}") }),
        }
    }
}
