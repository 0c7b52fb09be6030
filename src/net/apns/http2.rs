//! The HTTP/2 APNs client: connections per environment, stream limits, answers to outcomes.
//!
//! One batch (the phones of a ring) is spread over *lanes*: a lane is one connection with up
//! to `min(apns.max_streams, the server's SETTINGS_MAX_CONCURRENT_STREAMS)` requests in flight
//! (h2 itself never opens more streams than the server allows). A ring with more phones than
//! one connection can carry opens more lanes, up to `apns.max_connections`. With token auth a
//! fresh connection carries one stream until its first answer, as Apple asks. Retrying is not
//! done here: every phone gets an [`Outcome`] and `outbox` decides what to do with retries.
//! No SQL here.

use super::auth::{ClientIdentity, JwtMinter};
use crate::domain::{Environment, Message, Outcome, Reason, Target, Token};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use h2::client::SendRequest;
use http::{HeaderName, HeaderValue, Method, Request};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// How long establishing TCP + TLS + HTTP/2 may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Http2Error {
    #[error(transparent)]
    Auth(#[from] super::auth::AuthError),
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("apns.endpoint '{0}' is not https://HOST:PORT")]
    Endpoint(String),
}

/// A lane asks the minter for the current provider token after this many requests.
const BEARER_CHECK_EVERY: usize = 1024;
/// A lane claims this many phones of a batch at a time.
const CLAIM: usize = 64;
/// A consecutive run of this many fresh connections without a single answer ends a lane.
const MAX_REPLACEMENTS: u32 = 5;
/// A pooled connection idle for longer than this is PINGed before it is used again.
const IDLE_CHECK_MS: i64 = 30_000;
/// How long a PING may take before the connection is declared dead.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// The parts of a request that are the same for every phone of a lane: built once.
struct Prepared {
    authority: http::uri::Authority,
    /// `apns-topic`, `apns-push-type`, `apns-priority`, `apns-expiration`, `apns-collapse-id`
    /// and, with token auth, `authorization`: each request clones this map instead of hashing
    /// and inserting six headers.
    headers: http::HeaderMap,
    payload: Bytes,
}

impl Prepared {
    fn new(env: Environment, msg: &Message) -> Result<Prepared, String> {
        let mut headers = http::HeaderMap::with_capacity(8);
        headers.insert(
            HeaderName::from_static("apns-topic"),
            HeaderValue::from_str(&msg.topic)
                .map_err(|_| format!("apns-topic '{}' is not a header value", msg.topic))?,
        );
        headers.insert(HeaderName::from_static("apns-push-type"), HeaderValue::from_static("alert"));
        headers.insert(HeaderName::from_static("apns-priority"), HeaderValue::from(msg.priority as u16));
        headers.insert(HeaderName::from_static("apns-expiration"), HeaderValue::from(msg.expiration));
        headers.insert(
            HeaderName::from_static("apns-collapse-id"),
            HeaderValue::from_str(&msg.collapse_id).map_err(|_| "the collapse id is not a header value".to_string())?,
        );
        // The lane's own copy: requests clone it without touching a refcount other lanes share.
        let payload = Bytes::copy_from_slice(&msg.payload);
        Ok(Prepared { authority: http::uri::Authority::from_static(super::host(env)), headers, payload })
    }

    /// Puts the provider token into the template (or takes it out). Every request clones the
    /// template; inserting `authorization` into each clone would grow its table every time.
    fn set_bearer(&mut self, bearer: Option<&HeaderValue>) {
        match bearer {
            Some(b) => {
                self.headers.insert(http::header::AUTHORIZATION, b.clone());
            }
            None => {
                self.headers.remove(http::header::AUTHORIZATION);
            }
        }
    }

    /// The request for `token`.
    fn request(&self, token: &Token) -> Result<Request<()>, ReqError> {
        let mut path = Vec::with_capacity(DEVICE_PATH.len() + 2 * token.bytes().len());
        path.extend_from_slice(DEVICE_PATH.as_bytes());
        token.write_hex(&mut path);
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query =
            Some(http::uri::PathAndQuery::from_maybe_shared(Bytes::from(path)).map_err(ReqError::failed)?);
        let mut req = Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = http::Uri::from_parts(parts).map_err(ReqError::failed)?;
        *req.headers_mut() = self.headers.clone();
        Ok(req)
    }
}

const DEVICE_PATH: &str = "/3/device/";

enum ReqError {
    Refused,
    Failed(String),
}

impl ReqError {
    fn failed(e: impl std::fmt::Display) -> ReqError {
        ReqError::Failed(e.to_string())
    }

    /// Streams above a GOAWAY's last stream id and REFUSED_STREAM were not processed.
    fn h2(e: h2::Error) -> ReqError {
        if (e.is_go_away() && e.is_remote()) || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
            ReqError::Refused
        } else {
            ReqError::Failed(e.to_string())
        }
    }
}

/// What one probe request learnt.
#[derive(Debug, Clone)]
pub struct Probe {
    pub status: u16,
    pub reason: Option<Reason>,
    /// The server's `date` header, for clock skew.
    pub date: Option<String>,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS as seen after the answer.
    pub max_streams: usize,
    /// TCP + TLS + HTTP/2 handshake time.
    pub connected_ms: f64,
    pub answered_ms: f64,
}

/// How the client proves who it is.
pub enum Credentials {
    Token(Arc<JwtMinter>),
    Certificate(ClientIdentity),
}

/// Settings of the client, taken from `[apns]`.
pub struct Http2Settings {
    /// `(host, port)` replacing Apple's hosts (the simulator); `:authority` stays Apple's.
    pub endpoint: Option<(String, u16)>,
    pub ca_file: Option<std::path::PathBuf>,
    pub max_streams: u32,
    pub max_connections: u32,
    pub request_timeout: Duration,
    /// The app's bundle id (`apns.topic`), used by `probe`.
    pub topic: String,
}

/// The client. Cheap to clone; connections are shared by every clone.
#[derive(Clone)]
pub struct Http2Client {
    inner: Arc<Inner>,
}

struct Inner {
    connector: TlsConnector,
    minter: Option<Arc<JwtMinter>>,
    settings: Http2Settings,
    pools: [Mutex<Vec<Arc<Conn>>>; 2],
    next_conn_id: AtomicU64,
    /// Set by a credentials 403: the transport stops instead of hammering Apple.
    stopped: Mutex<Option<Reason>>,
    /// The last SETTINGS_MAX_CONCURRENT_STREAMS any connection saw (starts at our cap).
    server_limit: Arc<AtomicUsize>,
}

/// One HTTP/2 connection.
struct Conn {
    id: u64,
    send: SendRequest<Bytes>,
    /// The connection driver finished (GOAWAY, error, EOF): open another.
    closed: Arc<AtomicBool>,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS as last seen by the driver.
    server_limit: Arc<AtomicUsize>,
    /// A first answer came back: with token auth, only now may more than one stream open.
    confirmed: AtomicBool,
    /// When the last answer arrived (ms): an idle connection is PINGed before reuse.
    last_used: AtomicI64,
    ping: tokio::sync::Mutex<Option<h2::PingPong>>,
}

impl Conn {
    fn alive(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }
}

fn env_index(env: Environment) -> usize {
    match env {
        Environment::Sandbox => 0,
        Environment::Production => 1,
    }
}

impl Http2Client {
    pub fn new(credentials: Credentials, settings: Http2Settings) -> Result<Http2Client, Http2Error> {
        let (identity, minter) = match credentials {
            Credentials::Token(m) => (None, Some(m)),
            Credentials::Certificate(id) => (Some(id), None),
        };
        let tls = crate::net::tls::client_config(settings.ca_file.as_deref(), identity.as_ref(), &[b"h2"])?;
        Ok(Http2Client {
            inner: Arc::new(Inner {
                connector: TlsConnector::from(tls),
                minter,
                pools: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
                next_conn_id: AtomicU64::new(1),
                stopped: Mutex::new(None),
                server_limit: Arc::new(AtomicUsize::new(settings.max_streams as usize)),
                settings,
            }),
        })
    }

    /// The credentials problem that stopped the transport, if any.
    pub fn stopped(&self) -> Option<Reason> {
        self.inner.stopped.lock().expect("stopped lock").clone()
    }

    /// Connections open now, both environments.
    pub fn open_connections(&self) -> usize {
        self.inner.pools.iter().map(|p| p.lock().expect("pool lock").iter().filter(|c| c.alive()).count()).sum()
    }

    /// Age of the provider token in use (token auth), in seconds.
    pub fn jwt_age_secs(&self) -> Option<u64> {
        self.inner.minter.as_ref().and_then(|m| m.age_secs())
    }

    /// Sends `msg` to every target concurrently; each target's outcome is sent on `out` as
    /// `(index into targets, outcome)` as soon as it is known.
    pub async fn send(
        &self,
        msg: Arc<Message>,
        targets: Arc<Vec<Target>>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
        stop: &CancellationToken,
    ) {
        if let Some(reason) = self.stopped() {
            for i in 0..targets.len() {
                let _ = out.send((i, Outcome::Failed { reason: reason.clone(), status: 403 }));
            }
            return;
        }
        let mut by_env: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        for (i, t) in targets.iter().enumerate() {
            by_env[env_index(t.environment())].push(i);
        }
        let envs = [Environment::Sandbox, Environment::Production];
        let jobs = envs.into_iter().zip(by_env).filter(|(_, idx)| !idx.is_empty()).map(|(env, idx)| {
            let me = self.clone();
            let (msg, targets, out, stop) = (msg.clone(), targets.clone(), out.clone(), stop.clone());
            async move { me.send_env(env, msg, targets, Arc::new(idx), out, stop).await }
        });
        futures_util::future::join_all(jobs).await;
    }

    async fn send_env(
        &self,
        env: Environment,
        msg: Arc<Message>,
        targets: Arc<Vec<Target>>,
        idx: Arc<Vec<usize>>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
        stop: CancellationToken,
    ) {
        // Size the lanes by the smaller of our cap and the last stream limit a server announced.
        let per_conn =
            (self.inner.settings.max_streams as usize).min(self.inner.server_limit.load(Ordering::Relaxed)).max(1);
        let wanted = idx.len().div_ceil(per_conn).clamp(1, self.inner.settings.max_connections as usize);
        let conns = match self.lanes(env, wanted).await {
            Ok(c) => c,
            Err(why) => {
                warn!(environment = %env, error = %why, "cannot connect to APNs");
                for &i in idx.iter() {
                    let _ = out.send((i, Outcome::Retry { reason: Reason::Connection(why.clone()), after: None }));
                }
                return;
            }
        };
        let cursor = Arc::new(AtomicUsize::new(0));
        let lanes = conns.into_iter().map(|conn| {
            let me = self.clone();
            let (msg, targets, idx, out, cursor, stop) =
                (msg.clone(), targets.clone(), idx.clone(), out.clone(), cursor.clone(), stop.clone());
            tokio::spawn(
                async move { me.lane(conn, env, msg, targets, idx, cursor, out, stop).await }.in_current_span(),
            )
        });
        for lane in futures_util::future::join_all(lanes).await {
            if let Err(e) = lane {
                warn!(error = %e, "an APNs lane ended abnormally");
            }
        }
        // A lane that died leaves its unclaimed work to be claimed by the others; if every
        // lane died, what is left goes back to the outbox as retries.
        let n = cursor.fetch_add(idx.len(), Ordering::AcqRel).min(idx.len());
        for &i in &idx[n..] {
            let _ = out.send((i, Outcome::Retry { reason: Reason::Connection("connection lost".into()), after: None }));
        }
    }

    /// One connection's share of a batch: keeps its window of streams full until the shared
    /// cursor runs out. Requests the server refused unprocessed (above a GOAWAY's last stream
    /// id) are resent at once on a fresh connection; anything else goes back as an outcome.
    ///
    /// One timer per lane, not one per request: when requests are in flight and no answer has
    /// come for `apns.request_timeout`, the connection is taken as stalled, everything in
    /// flight on it goes back as a retry and the lane moves to a fresh connection.
    #[allow(clippy::too_many_arguments)]
    async fn lane(
        &self,
        mut conn: Arc<Conn>,
        env: Environment,
        msg: Arc<Message>,
        targets: Arc<Vec<Target>>,
        idx: Arc<Vec<usize>>,
        cursor: Arc<AtomicUsize>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
        stop: CancellationToken,
    ) {
        let mut prep = match Prepared::new(env, &msg) {
            Ok(p) => p,
            Err(why) => {
                warn!(error = %why, "cannot build the request headers");
                return;
            }
        };
        let timeout = self.inner.settings.request_timeout;
        let mut send = conn.send.clone();
        let mut inflight = FuturesUnordered::new();
        let mut flying = InFlight::new(targets.len());
        let mut redo: Vec<usize> = Vec::new();
        // Places in `idx` this lane claimed and has not sent yet.
        let mut claimed = 0..0;
        let mut bearer: Option<LaneBearer> = None;
        let mut sent_since_bearer = 0usize;
        let mut replaced_without_answer = 0u32;
        let stall = tokio::time::sleep(timeout);
        tokio::pin!(stall);
        let mut last_answer = tokio::time::Instant::now();
        loop {
            if !conn.alive() && inflight.is_empty() {
                if stop.is_cancelled()
                    || (redo.is_empty() && claimed.is_empty() && cursor.load(Ordering::Acquire) >= idx.len())
                {
                    break;
                }
                let fresh = if replaced_without_answer < MAX_REPLACEMENTS {
                    self.connect_pooled(env).await
                } else {
                    Err("the server keeps closing connections".into())
                };
                match fresh {
                    Ok(c) => {
                        debug!(old = conn.id, new = c.id, "lane moved to a fresh connection");
                        conn = c;
                        send = conn.send.clone();
                        replaced_without_answer += 1;
                    }
                    Err(why) => {
                        for i in redo.drain(..).chain(claimed.by_ref().map(|n| idx[n])) {
                            let _ =
                                out.send((i, Outcome::Retry { reason: Reason::Connection(why.clone()), after: None }));
                        }
                        break; // unclaimed work is taken by other lanes or returned by send_env
                    }
                }
            }
            let window = if conn.confirmed.load(Ordering::Acquire) || self.inner.minter.is_none() {
                self.window(&conn)
            } else {
                1
            };
            if sent_since_bearer >= BEARER_CHECK_EVERY || (bearer.is_none() && self.inner.minter.is_some()) {
                bearer = self.inner.minter.as_ref().map(|m| LaneBearer::follow(m, bearer.take()));
                prep.set_bearer(bearer.as_ref().map(|b| &b.header));
                sent_since_bearer = 0;
            }
            while inflight.len() < window && conn.alive() && !stop.is_cancelled() {
                let i = match redo.pop() {
                    Some(i) => i,
                    None => match claimed.next() {
                        Some(n) => idx[n],
                        None => {
                            // Phones are claimed in runs, so that answers, which come back
                            // roughly in order per connection, are recorded as long runs.
                            let n = cursor.fetch_add(CLAIM, Ordering::AcqRel);
                            if n >= idx.len() {
                                break;
                            }
                            claimed = n..(n + CLAIM).min(idx.len());
                            continue;
                        }
                    },
                };
                if inflight.is_empty() {
                    last_answer = tokio::time::Instant::now(); // the clock starts with the first request
                }
                sent_since_bearer += 1;
                match start(&mut send, &prep, targets[i].token()).await {
                    Ok(resp) => {
                        flying.set(i, true);
                        let rejected = bearer.as_ref().map(|b| b.own.clone());
                        inflight.push(async move { (i, answer(resp).await, rejected) });
                    }
                    Err(ReqError::Refused) => {
                        conn.closed.store(true, Ordering::Release);
                        redo.push(i);
                        break;
                    }
                    Err(ReqError::Failed(why)) => {
                        let _ = out.send((i, Outcome::Retry { reason: Reason::Connection(why), after: None }));
                    }
                }
            }
            tokio::select! {
                biased;
                // cancel-safe: FuturesUnordered::next keeps the other futures
                next = inflight.next() => match next {
                    Some(first) => {
                        // Every answer that is ready now, then one look at the clock for all.
                        let mut answered_any = false;
                        let mut next = Some(first);
                        while let Some((i, answered, bearer)) = next {
                            flying.set(i, false);
                            match answered {
                                Ok((status, _, body)) => {
                                    answered_any = true;
                                    let outcome = self.judge(status, &body, bearer.as_deref(), targets[i].token());
                                    if outcome.reason() == Some(&Reason::ExpiredProviderToken) {
                                        // judge minted a fresh token: the lane's copy follows at once.
                                        sent_since_bearer = BEARER_CHECK_EVERY;
                                    }
                                    let _ = out.send((i, outcome));
                                }
                                Err(ReqError::Refused) => {
                                    conn.closed.store(true, Ordering::Release);
                                    redo.push(i);
                                }
                                Err(ReqError::Failed(why)) => {
                                    debug!(conn = conn.id, error = %why, "request failed");
                                    let _ = out.send((i, Outcome::Retry { reason: Reason::Connection(why), after: None }));
                                }
                            }
                            next = inflight.next().now_or_never().flatten();
                        }
                        if answered_any {
                            conn.confirmed.store(true, Ordering::Release);
                            conn.last_used.store(crate::domain::now_ms(), Ordering::Relaxed);
                            replaced_without_answer = 0;
                            last_answer = tokio::time::Instant::now();
                        }
                    }
                    None if conn.alive() || stop.is_cancelled() => break,
                    None => {}
                },
                // cancel-safe: the timer is only re-armed or acted on here
                () = &mut stall, if !inflight.is_empty() => {
                    let due = last_answer + timeout;
                    if tokio::time::Instant::now() < due {
                        stall.as_mut().reset(due);
                    } else {
                        warn!(conn = conn.id, requests = inflight.len(), "no answer from APNs within the request timeout: replacing the connection");
                        conn.closed.store(true, Ordering::Release);
                        inflight = FuturesUnordered::new();
                        for i in flying.drain() {
                            let _ = out.send((i, Outcome::Retry { reason: Reason::Connection("request timed out".into()), after: None }));
                        }
                    }
                }
            }
        }
        // Claimed but not sent (stopping): back to the outbox, which leaves them pending.
        for i in redo.drain(..).chain(claimed.map(|n| idx[n])) {
            let _ = out.send((i, Outcome::Retry { reason: Reason::Connection("not sent".into()), after: None }));
        }
    }

    fn window(&self, conn: &Conn) -> usize {
        (self.inner.settings.max_streams as usize).min(conn.server_limit.load(Ordering::Relaxed)).max(1)
    }

    /// Reads Apple's answer into an outcome, with the side effects the answer asks for.
    fn judge(&self, status: u16, body: &[u8], bearer: Option<&str>, token: &Token) -> Outcome {
        if status == 200 {
            return Outcome::Delivered;
        }
        let outcome = crate::codec::apns_http2::classify(status, body);
        match outcome.reason() {
            Some(Reason::ExpiredProviderToken) => {
                if let (Some(m), Some(b)) = (&self.inner.minter, bearer) {
                    if !m.refresh_after_rejection(b) {
                        warn!("Apple says the provider token expired although it is young: check the gateway's clock");
                    }
                }
            }
            Some(r) if r.is_credentials() => {
                let mut stopped = self.inner.stopped.lock().expect("stopped lock");
                if stopped.is_none() {
                    warn!(reason = %r, "APNs refused our credentials: the HTTP/2 transport stops until restart");
                    *stopped = Some(r.clone());
                }
            }
            Some(r) => {
                debug!(token = %token.short(), status, reason = %r, "APNs refused a notification")
            }
            None => {}
        }
        outcome
    }

    /// One request to `token` on a fresh connection, answered in full: what `diag` uses to
    /// prove the credentials (a deliberately invalid token must come back BadDeviceToken)
    /// and read the server's clock and settings.
    pub async fn probe(&self, env: Environment, token: &str) -> Result<Probe, String> {
        let token = Token::from_hex(token).ok_or_else(|| format!("'{token}' is not a device token"))?;
        let t0 = std::time::Instant::now();
        let conn = self.connect(env).await?;
        let connected_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let bearer = self.inner.minter.as_ref().map(|m| m.bearer_header().1);
        let msg = Message {
            topic: self.inner.settings.topic.as_str().into(),
            payload: Bytes::from_static(br#"{"aps":{"alert":"dingdong diag"}}"#),
            expiration: 0,
            collapse_id: "dingdong-diag".into(),
            priority: 10,
        };
        let mut prep = Prepared::new(env, &msg)?;
        prep.set_bearer(bearer.as_ref());
        let mut send = conn.send.clone();
        let asked = async {
            let resp = start(&mut send, &prep, &token).await?;
            answer(resp).await
        };
        let (status, headers, body) = match tokio::time::timeout(self.inner.settings.request_timeout, asked).await {
            Ok(Ok(answered)) => answered,
            Ok(Err(ReqError::Refused)) => return Err("the server refused the request".into()),
            Ok(Err(ReqError::Failed(why))) => return Err(why),
            Err(_) => return Err("request timed out".into()),
        };
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(Reason::parse));
        Ok(Probe {
            status,
            reason,
            date: headers.get("date").and_then(|v| v.to_str().ok()).map(str::to_string),
            max_streams: conn.server_limit.load(Ordering::Relaxed),
            connected_ms,
            answered_ms: t0.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// Up to `wanted` live connections for `env`, opening what is missing. Pooled connections
    /// that sat idle are PINGed first: a silently dead one is replaced, not trusted.
    async fn lanes(&self, env: Environment, wanted: usize) -> Result<Vec<Arc<Conn>>, String> {
        let pooled: Vec<Arc<Conn>> = {
            let mut pool = self.inner.pools[env_index(env)].lock().expect("pool lock");
            pool.retain(|c| c.alive());
            pool.iter().take(wanted).cloned().collect()
        };
        let mut have = Vec::with_capacity(wanted);
        for c in pooled {
            if self.check_idle(&c).await {
                have.push(c);
            }
        }
        let mut last_err = None;
        while have.len() < wanted {
            match self.connect_pooled(env).await {
                Ok(c) => have.push(c),
                Err(e) => {
                    last_err = Some(e);
                    break;
                }
            }
        }
        if have.is_empty() {
            return Err(last_err.unwrap_or_else(|| "no connection".into()));
        }
        Ok(have)
    }

    /// True if `c` is fit for use: recently used, or answering a PING.
    async fn check_idle(&self, c: &Conn) -> bool {
        if crate::domain::now_ms() - c.last_used.load(Ordering::Relaxed) < IDLE_CHECK_MS {
            return true;
        }
        let mut ping = c.ping.lock().await;
        let alive = match ping.as_mut() {
            Some(p) => matches!(tokio::time::timeout(PING_TIMEOUT, p.ping(h2::Ping::opaque())).await, Ok(Ok(_))),
            None => true,
        };
        if alive {
            c.last_used.store(crate::domain::now_ms(), Ordering::Relaxed);
        } else {
            info!(conn = c.id, "idle APNs connection did not answer PING: replacing it");
            c.closed.store(true, Ordering::Release);
        }
        alive
    }

    /// Opens a connection and adds it to the pool of `env`.
    async fn connect_pooled(&self, env: Environment) -> Result<Arc<Conn>, String> {
        let c = self.connect(env).await?;
        self.inner.pools[env_index(env)].lock().expect("pool lock").push(c.clone());
        Ok(c)
    }

    async fn connect(&self, env: Environment) -> Result<Arc<Conn>, String> {
        let (host, port) = match &self.inner.settings.endpoint {
            Some((h, p)) => (h.clone(), *p),
            None => (super::host(env).to_string(), 443),
        };
        let id = self.inner.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!("apns_conn", conn = id, environment = %env);
        let fut = async {
            let tcp =
                TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connect {host}:{port}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("bad host name {host}: {e}"))?;
            let tls =
                self.inner.connector.connect(name, tcp).await.map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(format!("{host}:{port} does not speak HTTP/2 (no ALPN h2)"));
            }
            let (send, mut connection) = h2::client::Builder::new()
                .initial_window_size(1 << 20)
                .initial_connection_window_size(1 << 22)
                .max_concurrent_streams(0)
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(|e| format!("HTTP/2 handshake with {host}:{port}: {e}"))?;
            let ping = connection.ping_pong();
            let closed = Arc::new(AtomicBool::new(false));
            let server_limit = Arc::new(AtomicUsize::new(self.inner.settings.max_streams as usize));
            let (c2, l2, shared) = (closed.clone(), server_limit.clone(), self.inner.server_limit.clone());
            tokio::spawn(
                async move {
                    let driven = std::future::poll_fn(|cx| {
                        let r = std::pin::Pin::new(&mut connection).poll(cx);
                        let limit = connection.max_concurrent_send_streams();
                        if l2.swap(limit, Ordering::Relaxed) != limit {
                            shared.store(limit, Ordering::Relaxed);
                        }
                        r
                    })
                    .await;
                    c2.store(true, Ordering::Release);
                    match driven {
                        Ok(()) => debug!("APNs connection closed"),
                        Err(e) if e.is_go_away() => info!(error = %e, "APNs sent GOAWAY"),
                        Err(e) => debug!(error = %e, "APNs connection ended"),
                    }
                }
                .instrument(tracing::Span::current()),
            );
            debug!(%host, port, "APNs connection open");
            Ok(Arc::new(Conn {
                id,
                send,
                closed,
                server_limit,
                confirmed: AtomicBool::new(false),
                last_used: AtomicI64::new(crate::domain::now_ms()),
                ping: tokio::sync::Mutex::new(ping),
            }))
        }
        .instrument(span);
        match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("connect {host}:{port}: timed out")),
        }
    }
}

/// Hands one request to the connection: after this, the server may have processed it.
async fn start(
    send: &mut SendRequest<Bytes>,
    prep: &Prepared,
    token: &Token,
) -> Result<h2::client::ResponseFuture, ReqError> {
    let req = prep.request(token)?;
    // Until the request is handed over, the server has not seen it: safe to resend.
    std::future::poll_fn(|cx| send.poll_ready(cx)).await.map_err(|_| ReqError::Refused)?;
    let (resp, mut body) = send.send_request(req, false).map_err(|_| ReqError::Refused)?;
    body.send_data(prep.payload.clone(), true).map_err(ReqError::h2)?;
    Ok(resp)
}

/// The answer to one request: status, headers and up to 4 KB of body.
async fn answer(resp: h2::client::ResponseFuture) -> Result<(u16, http::HeaderMap, Bytes), ReqError> {
    let resp = resp.await.map_err(ReqError::h2)?;
    let status = resp.status().as_u16();
    let (parts, mut recv) = resp.into_parts();
    let mut data = Vec::new();
    // A 200 ends with its headers: nothing to wait for.
    while !recv.is_end_stream() {
        let Some(chunk) = recv.data().await else { break };
        let chunk = chunk.map_err(ReqError::h2)?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        if data.len() < 4096 {
            data.extend_from_slice(&chunk);
        }
    }
    Ok((status, parts.headers, Bytes::from(data)))
}

/// Which of a batch's phones have a request in flight on one lane: a bit per phone.
struct InFlight {
    bits: Vec<u64>,
}

impl InFlight {
    fn new(n: usize) -> InFlight {
        InFlight { bits: vec![0; n.div_ceil(64)] }
    }

    fn set(&mut self, i: usize, on: bool) {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        if on {
            self.bits[w] |= b;
        } else {
            self.bits[w] &= !b;
        }
    }

    /// Every phone in flight, forgetting them.
    fn drain(&mut self) -> Vec<usize> {
        let mut v = Vec::new();
        for (w, word) in self.bits.iter_mut().enumerate() {
            while *word != 0 {
                let b = word.trailing_zeros() as usize;
                *word &= *word - 1;
                v.push(w * 64 + b);
            }
        }
        v
    }
}

/// A lane's copy of the provider token. Requests clone the lane's own copy, so the lanes of a
/// big ring do not all bump one shared refcount per request; the copy follows the minter's
/// current token (checked on a lane's start, every [`BEARER_CHECK_EVERY`] requests, and at
/// once after an ExpiredProviderToken).
struct LaneBearer {
    /// The minter's token this copies (compared by pointer).
    source: Arc<str>,
    /// The lane's copy, handed to `judge` with each answer.
    own: Arc<str>,
    header: HeaderValue,
}

impl LaneBearer {
    fn follow(minter: &JwtMinter, previous: Option<LaneBearer>) -> LaneBearer {
        let (current, header) = minter.bearer_header();
        match previous {
            Some(p) if Arc::ptr_eq(&p.source, &current) => p,
            _ => LaneBearer {
                own: Arc::from(&*current),
                header: HeaderValue::from_bytes(header.as_bytes()).expect("a header value is a header value"),
                source: current,
            },
        }
    }
}
