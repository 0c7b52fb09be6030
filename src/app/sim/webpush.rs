//! The Web Push simulator: a push service (RFC 8030) for the test subscriptions it generates.
//! Each `POST /push/<id>` is checked as a push service does: VAPID (`Authorization: vapid`,
//! signature, `aud` = this origin, `exp`, `sub`; a subscription stays bound to the first
//! application server key that used it, others get 403), `TTL`, `Content-Encoding:
//! aes128gcm`, `Topic`, `Urgency`, at most 4096 bytes (413); then the body is decrypted with
//! the subscription's private key (RFC 8291) and recorded. 404 for an unknown subscription,
//! 410 for one that unsubscribed; `--fail-rate` answers 429 (with `Retry-After`) or 503.
//! `GET /sim/stats` and `/sim/received` tell what it accepted.
//!
//! Writes into `<out>/webpush/`: `sub-N.json`, the `PushSubscription` JSON a browser would
//! hand to the web app, and `sub-N.private.json`, the private key and auth secret that
//! decrypt its messages. Subscriptions are made anew at each start (their endpoint names the
//! port).

use super::serve::{self, Req, Resp};
use super::{Faults, SimCredentials};
use crate::codec::push::ece::Receiver;
use crate::codec::push::vapid::verify_authorization;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio_util::sync::CancellationToken;

/// One decrypted message, as the service worker would read it.
#[derive(Debug, Clone, Serialize)]
pub struct PushReceived {
    /// The subscription's id (the last part of its endpoint).
    pub subscription: String,
    pub ttl: u64,
    pub urgency: Option<String>,
    pub topic: Option<String>,
    /// The decrypted payload (the ring's JSON).
    pub payload: serde_json::Value,
    pub at_us: i64,
}

struct Sub {
    receiver: Receiver,
    /// The application server key (`k=`) this subscription is bound to, once used.
    bound_key: Option<[u8; 65]>,
    gone: bool,
}

/// What the push service knows and has seen.
#[derive(Default)]
pub struct PushState {
    subs: RwLock<HashMap<String, Mutex<Sub>>>,
    received: Mutex<Vec<PushReceived>>,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    reasons: Mutex<HashMap<String, u64>>,
    /// Verified `Authorization` values and their `exp`: each distinct token costs one check.
    verified: Mutex<HashMap<String, ([u8; 65], u64)>>,
    fast: bool,
}

impl PushState {
    /// The user revoked the permission: 410 Gone from now on.
    pub fn unsubscribe(&self, id: &str) {
        if let Some(s) = self.subs.read().expect("subs").get(id) {
            s.lock().expect("sub").gone = true;
        }
    }

    pub fn received(&self) -> Vec<PushReceived> {
        self.received.lock().expect("received").clone()
    }

    /// How many messages each subscription received.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in self.received.lock().expect("received").iter() {
            *m.entry(r.subscription.clone()).or_default() += 1;
        }
        m
    }

    pub fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "accepted": self.accepted.load(Ordering::Relaxed),
            "rejected": self.rejected.load(Ordering::Relaxed),
            "subscriptions": self.subs.read().expect("subs").len(),
            "reasons": *self.reasons.lock().expect("reasons"),
        })
    }

    fn refuse(&self, status: u16, why: &str) -> Resp {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        *self.reasons.lock().expect("reasons").entry(format!("{status}")).or_default() += 1;
        serve::json(status, &serde_json::json!({ "code": status, "error": why }))
    }
}

/// One generated test subscription.
#[derive(Debug, Clone)]
pub struct TestSubscription {
    pub id: String,
    /// The `PushSubscription` JSON.
    pub json: String,
    pub file: PathBuf,
}

/// A running Web Push simulator's facts.
pub struct WebPushSim {
    pub addr: SocketAddr,
    pub state: Arc<PushState>,
    pub subscriptions: Vec<TestSubscription>,
}

struct Server {
    state: Arc<PushState>,
    origin: String,
    faults: Faults,
}

/// Starts the push service on `listener`, with `n` test subscriptions written into `dir`.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    listener: std::net::TcpListener,
    creds: &SimCredentials,
    dir: &Path,
    n: u32,
    http1_only: bool,
    fast: bool,
    faults: Faults,
    cancel: CancellationToken,
) -> Result<WebPushSim, String> {
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let origin = format!("https://{local}");
    let state = Arc::new(PushState { fast, ..Default::default() });
    let dir = dir.join("webpush");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut subscriptions = Vec::with_capacity(n as usize);
    for i in 0..n {
        subscriptions.push(add_subscription(&state, &origin, &dir, i)?);
    }
    let server = Arc::new(Server { state: state.clone(), origin, faults });
    let addr = serve::listen(listener, creds, http1_only, cancel, move |req| {
        let server = server.clone();
        async move { server.handle(req).await }
    })
    .await?;
    Ok(WebPushSim { addr, state, subscriptions })
}

/// Makes subscription number `i` and writes its files.
fn add_subscription(state: &PushState, origin: &str, dir: &Path, i: u32) -> Result<TestSubscription, String> {
    let mut rng = rand::thread_rng();
    let receiver = Receiver::generate(&mut rng);
    let id: String = URL_SAFE_NO_PAD.encode(rng.gen::<[u8; 24]>());
    let json = serde_json::json!({
        "endpoint": format!("{origin}/push/{id}"),
        "expirationTime": null,
        "keys": {
            "p256dh": URL_SAFE_NO_PAD.encode(receiver.public_bytes()),
            "auth": URL_SAFE_NO_PAD.encode(receiver.auth()),
        },
    })
    .to_string();
    let private = serde_json::json!({
        "endpoint": format!("{origin}/push/{id}"),
        "private_key": URL_SAFE_NO_PAD.encode(receiver.secret_bytes()),
        "auth": URL_SAFE_NO_PAD.encode(receiver.auth()),
    })
    .to_string();
    let file = dir.join(format!("sub-{i}.json"));
    std::fs::write(&file, &json).map_err(|e| format!("{}: {e}", file.display()))?;
    let secret = dir.join(format!("sub-{i}.private.json"));
    super::certs::write_secret(&secret, private.as_bytes()).map_err(|e| format!("{}: {e}", secret.display()))?;
    let sub = Sub { receiver, bound_key: None, gone: false };
    state.subs.write().expect("subs").insert(id.clone(), Mutex::new(sub));
    Ok(TestSubscription { id, json, file })
}

impl Server {
    async fn handle(&self, req: Req) -> Resp {
        if !self.faults.latency.is_zero() && req.parts.method == http::Method::POST {
            tokio::time::sleep(self.faults.latency).await;
        }
        self.answer(req)
    }

    fn answer(&self, req: Req) -> Resp {
        let st = &self.state;
        let path = req.parts.uri.path();
        if req.parts.method == http::Method::GET {
            return match path {
                "/sim/stats" => serve::json(200, &st.stats()),
                "/sim/received" => serve::json(200, &serde_json::to_value(st.received()).unwrap_or_default()),
                _ => st.refuse(404, "not found"),
            };
        }
        let Some(id) = path.strip_prefix("/push/") else { return st.refuse(404, "no such subscription") };
        if req.parts.method != http::Method::POST {
            return st.refuse(405, "method not allowed");
        }
        let now = crate::domain::now_ms() as u64 / 1000;
        let Some(auth) = serve::header(&req.parts, "authorization") else {
            return st.refuse(401, "missing VAPID authorization");
        };
        let key = match self.verify(auth, now) {
            Ok(k) => k,
            Err(why) => return st.refuse(401, &why),
        };
        let Some(ttl) = serve::header(&req.parts, "ttl").and_then(|t| t.trim().parse::<u64>().ok()) else {
            return st.refuse(400, "missing or malformed TTL header");
        };
        if serve::header(&req.parts, "content-encoding") != Some("aes128gcm") {
            return st.refuse(415, "Content-Encoding must be aes128gcm");
        }
        let urgency = serve::header(&req.parts, "urgency").map(str::to_string);
        if urgency.as_deref().is_some_and(|u| !matches!(u, "very-low" | "low" | "normal" | "high")) {
            return st.refuse(400, "bad Urgency");
        }
        let topic = serve::header(&req.parts, "topic").map(str::to_string);
        let topic_ok =
            |t: &str| t.len() <= 32 && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if topic.as_deref().is_some_and(|t| !topic_ok(t)) {
            return st.refuse(400, "bad Topic");
        }
        let body = match &req.body {
            Some(b) if b.len() <= 4096 => b,
            _ => return st.refuse(413, "payload too large"),
        };
        if self.faults.fail_rate > 0.0 && rand::thread_rng().gen_bool(self.faults.fail_rate.min(1.0)) {
            return if rand::thread_rng().gen_bool(0.5) {
                serve::retry_after(st.refuse(429, "too many requests"), 1)
            } else {
                st.refuse(503, "service unavailable")
            };
        }
        let subs = st.subs.read().expect("subs");
        let Some(sub) = subs.get(id) else { return st.refuse(404, "no such subscription") };
        let mut sub = sub.lock().expect("sub");
        if sub.gone {
            return st.refuse(410, "subscription expired or unsubscribed");
        }
        match sub.bound_key {
            Some(k) if k != key => return st.refuse(403, "VAPID key does not match the subscription's"),
            Some(_) => {}
            None => sub.bound_key = Some(key),
        }
        let payload = if st.fast {
            serde_json::Value::Null
        } else {
            match sub.receiver.decrypt(body) {
                Ok(p) => serde_json::from_slice(&p)
                    .unwrap_or(serde_json::Value::String(String::from_utf8_lossy(&p).into_owned())),
                Err(e) => return st.refuse(400, &format!("cannot decrypt: {e}")),
            }
        };
        drop(sub);
        drop(subs);
        st.accepted.fetch_add(1, Ordering::Relaxed);
        if !st.fast {
            st.received.lock().expect("received").push(PushReceived {
                subscription: id.to_string(),
                ttl,
                urgency,
                topic,
                payload,
                at_us: crate::domain::now_us(),
            });
        }
        let mut r = serve::bytes(201, Vec::new(), "text/plain");
        if let Ok(loc) =
            http::HeaderValue::from_str(&format!("{}/message/{}", self.origin, uuid::Uuid::new_v4().simple()))
        {
            r.headers_mut().insert(http::header::LOCATION, loc);
        }
        r
    }

    /// The application server key of a valid `Authorization` header (cached per value).
    fn verify(&self, auth: &str, now: u64) -> Result<[u8; 65], String> {
        if let Some(&(k, exp)) = self.state.verified.lock().expect("verified").get(auth) {
            if exp > now {
                return Ok(k);
            }
        }
        let v = verify_authorization(auth, &self.origin, now).map_err(|e| e.to_string())?;
        let mut cache = self.state.verified.lock().expect("verified");
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(auth.to_string(), (v.public_key, v.exp));
        Ok(v.public_key)
    }
}
