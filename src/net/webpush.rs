//! The Web Push transport (RFC 8030, 8291, 8292): browsers and home-screen web apps.
//!
//! Each phone's subscription names its own push service (the endpoint's origin): the ring's
//! phones are grouped by origin, and each origin gets its own window of requests over
//! [`Https`] (HTTP/2 by ALPN, else pooled HTTP/1.1) and one VAPID token from the cache. Every
//! message is encrypted for its subscription with a fresh ephemeral P-256 key (about 0.4 ms of
//! CPU): bodies are made in small batches on the blocking pool, a few batches ahead of the
//! requests, so a 20,000-phone ring keeps every core busy and the runtime's workers free. The
//! answer rules are `codec::push::webpush::classify`: 404/410 prune, 413 fails, 429 and 5xx
//! retry with `Retry-After`, 401/403 are our VAPID credentials. No SQL here.

use super::https::{fan_out, hand_back, no_answer, outcome_of, Guard, Https, HttpsError, HttpsSettings, Sent};
use crate::codec::push::common::remaining_ttl;
use crate::codec::push::vapid::{Subject, TokenCache, VapidKey};
use crate::codec::push::webpush::{self, Subscription};
use crate::domain::{Address, Notice, Outcome, Reason, Target};
use bytes::Bytes;
use futures_util::stream::StreamExt;
use http::{Method, Request};
use http_body_util::Full;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Messages encrypted per job on the blocking pool: small enough that the first requests
/// leave at once, large enough that a job is worth a thread hop.
const ENCRYPT_BATCH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum WebPushError {
    #[error(transparent)]
    Https(#[from] HttpsError),
}

/// Settings of the transport, from `[webpush]`.
pub struct WebPushSettings {
    pub key: VapidKey,
    pub subject: Subject,
    pub https: HttpsSettings,
}

/// The client. Cheap to clone; connection pools and VAPID tokens are shared by every clone.
#[derive(Clone)]
pub struct WebPushClient {
    inner: Arc<Inner>,
}

struct Inner {
    https: Https,
    key: VapidKey,
    subject: Subject,
    tokens: Mutex<TokenCache>,
    guard: Guard,
}

/// One phone of a ring, ready to encrypt for.
struct Item {
    /// Its place in the ring's targets.
    i: usize,
    phone_id: i64,
    sub: Subscription,
}

/// One origin's phones.
type Group = Vec<Item>;

impl WebPushClient {
    pub fn new(settings: WebPushSettings) -> Result<WebPushClient, WebPushError> {
        Ok(WebPushClient {
            inner: Arc::new(Inner {
                https: Https::new(settings.https)?,
                key: settings.key,
                subject: settings.subject,
                tokens: Mutex::new(TokenCache::new()),
                guard: Guard::default(),
            }),
        })
    }

    /// The application server key the web app subscribes with (base64url).
    pub fn public_key(&self) -> &str {
        self.inner.key.public_key_b64()
    }

    /// The credentials problem that stopped the transport, if any.
    pub fn stopped(&self) -> Option<Reason> {
        self.inner.guard.stopped()
    }

    /// Sends the ring to every target (browsers); same contract as the other transports.
    pub async fn send(
        &self,
        notice: Arc<Notice>,
        targets: Arc<Vec<Target>>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
        stop: &CancellationToken,
    ) {
        if self.inner.guard.refuse_all(0..targets.len(), &out) {
            return;
        }
        let Some(ttl) = remaining_ttl(notice.expires_at, crate::domain::now_ms()) else {
            for i in 0..targets.len() {
                let _ = out.send((i, Outcome::Retry { reason: Reason::Expired, after: None }));
            }
            return;
        };
        let payload = match webpush::ring_payload_as(
            &notice.doorbell_id,
            &notice.doorbell_name,
            &notice.ring_id,
            notice.pressed_at,
            &notice.profile,
            notice.answered_by.as_deref(),
        ) {
            Ok(p) => Bytes::from(p),
            Err(e) => {
                for i in 0..targets.len() {
                    let _ = out.send((i, Outcome::Failed { reason: Reason::Other(e.to_string()), status: 0 }));
                }
                return;
            }
        };
        let topic: Arc<str> = webpush::topic(&notice.doorbell_id).into();
        let groups = self.by_origin(&targets, &out);
        let sends = groups.into_iter().map(|(aud, group)| {
            let (me, payload, topic, out) = (self.clone(), payload.clone(), topic.clone(), out.clone());
            let n = targets.len();
            async move { me.send_origin(aud, group, n, payload, ttl, topic, out, stop).await }
        });
        futures_util::future::join_all(sends).await;
    }

    /// The targets' subscriptions by origin; one that does not parse (a row edited by hand)
    /// fails at once.
    fn by_origin(&self, targets: &[Target], out: &mpsc::UnboundedSender<(usize, Outcome)>) -> HashMap<String, Group> {
        let mut groups: HashMap<String, Group> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            let parsed = match &t.address {
                Address::WebPush(k) => Subscription::new(&k.endpoint, &k.p256dh, &k.auth).map_err(|e| e.to_string()),
                _ => Err("not a Web Push phone".to_string()),
            };
            match parsed {
                Ok(sub) => {
                    groups.entry(sub.audience().to_string()).or_default().push(Item { i, phone_id: t.phone_id, sub })
                }
                Err(why) => {
                    let reason = Reason::Other(format!("unusable subscription: {why}"));
                    let _ = out.send((i, Outcome::Failed { reason, status: 0 }));
                }
            }
        }
        groups
    }

    /// One push service's share of the ring.
    #[allow(clippy::too_many_arguments)]
    async fn send_origin(
        &self,
        aud: String,
        group: Group,
        n: usize,
        payload: Bytes,
        ttl: u64,
        topic: Arc<str>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
        stop: &CancellationToken,
    ) {
        let indices: Vec<usize> = group.iter().map(|item| item.i).collect();
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let authorization = self.inner.tokens.lock().expect("vapid cache").authorization(
            &self.inner.key,
            &self.inner.subject,
            &aud,
            now,
        );
        // Encryption on the blocking pool, a few batches ahead of the requests.
        let ahead = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
        let batches: Vec<Group> = chunked(group, ENCRYPT_BATCH);
        let bodies = futures_util::stream::iter(batches)
            .map(move |batch| {
                let payload = payload.clone();
                tokio::task::spawn_blocking(move || encrypt_batch(batch, &payload))
            })
            .buffered(ahead)
            .flat_map(|r| futures_util::stream::iter(r.unwrap_or_default()));
        let mut done = vec![false; n];
        let start = |(item, body): (Item, Result<Vec<u8>, String>)| {
            let (me, topic, authorization) = (self.clone(), topic.clone(), authorization.clone());
            async move {
                match body {
                    Ok(body) => me.send_one(&item, body, ttl, &topic, authorization).await,
                    Err(why) => (item.i, Outcome::Failed { reason: Reason::Other(why), status: 0 }, None),
                }
            }
        };
        fan_out(Box::pin(bodies), self.inner.https.settings(), stop, start, &out, &mut done).await;
        hand_back(&indices, &done, "not sent", &out);
    }

    async fn send_one(
        &self,
        item: &Item,
        body: Vec<u8>,
        ttl: u64,
        topic: &str,
        authorization: http::HeaderValue,
    ) -> Sent {
        let (i, sub) = (item.i, &item.sub);
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.headers_mut() = webpush::request_headers(ttl, topic, authorization, body.len());
        *req.body_mut() = Full::new(Bytes::from(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = sub.uri().clone();
        let answer = match self.inner.https.request(req).await {
            Ok(a) => a,
            Err(why) => return (i, no_answer(why), None),
        };
        let verdict = webpush::classify(answer.status, answer.retry_after.as_deref(), &answer.body, SystemTime::now());
        let outcome = outcome_of(verdict, crate::domain::now_ms());
        match &outcome {
            Outcome::Delivered => self.inner.guard.delivered(),
            Outcome::Failed { reason, .. } if reason.is_credentials() => {
                if self.inner.guard.strike(item.phone_id, reason) {
                    warn!(reason = %reason, "push services refused our VAPID credentials for several subscriptions: the Web Push transport stops until a reload");
                }
            }
            o => {
                debug!(endpoint = %sub.short(), state = %o.state(), reason = ?o.reason(), "push service did not deliver")
            }
        }
        (i, outcome, Some(answer.version))
    }
}

fn chunked<T>(v: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let mut out = Vec::with_capacity(v.len().div_ceil(n));
    let mut it = v.into_iter().peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(n).collect());
    }
    out
}

/// The bodies of one batch, each with its own ephemeral key.
fn encrypt_batch(batch: Group, payload: &[u8]) -> Vec<(Item, Result<Vec<u8>, String>)> {
    let mut rng = rand::thread_rng();
    batch
        .into_iter()
        .map(|item| {
            let body = item.sub.encrypt(payload, &mut rng).map_err(|e| e.to_string());
            (item, body)
        })
        .collect()
}
