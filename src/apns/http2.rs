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
use super::{Environment, Message, Outcome, Reason, Target};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::client::SendRequest;
use http::{HeaderValue, Method, Request};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn, Instrument};

/// How long establishing TCP + TLS + HTTP/2 may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Http2Error {
    #[error(transparent)]
    Auth(#[from] super::auth::AuthError),
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    #[error("apns.endpoint '{0}' is not https://HOST:PORT")]
    Endpoint(String),
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
    /// The `apns-topic` of probe requests.
    probe_topic: Arc<str>,
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
        let tls = super::tls::client_config(settings.ca_file.as_deref(), identity.as_ref(), &[b"h2"])?;
        Ok(Http2Client {
            inner: Arc::new(Inner {
                connector: TlsConnector::from(tls),
                minter,
                pools: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
                next_conn_id: AtomicU64::new(1),
                stopped: Mutex::new(None),
                probe_topic: settings.topic.as_str().into(),
                settings,
            }),
        })
    }

    /// Builds the client `[apns]` describes.
    pub fn from_config(apns: &crate::config::Apns) -> Result<Http2Client, Http2Error> {
        let credentials = match (&apns.token, &apns.certificate) {
            (Some(t), _) => Credentials::Token(Arc::new(JwtMinter::from_p8_file(&t.key_file, &t.key_id, &t.team_id)?)),
            (None, Some(c)) => Credentials::Certificate(ClientIdentity::from_config(c)?),
            (None, None) => unreachable!("config validation requires credentials"),
        };
        let endpoint = match &apns.endpoint {
            Some(e) => Some(crate::config::parse_https_endpoint(e).ok_or_else(|| Http2Error::Endpoint(e.clone()))?),
            None => None,
        };
        Self::new(
            credentials,
            Http2Settings {
                endpoint,
                ca_file: apns.ca_file.clone(),
                max_streams: apns.max_streams,
                max_connections: apns.max_connections,
                request_timeout: apns.request_timeout.0,
                topic: apns.topic.clone(),
            },
        )
    }

    /// The credentials problem that stopped the transport, if any.
    pub fn stopped(&self) -> Option<Reason> {
        self.inner.stopped.lock().expect("stopped lock").clone()
    }

    /// Sends `msg` to every target concurrently; each target's outcome is sent on `out` as
    /// `(index into targets, outcome)` as soon as it is known.
    pub async fn send(&self, msg: Arc<Message>, targets: Arc<[Target]>, out: mpsc::UnboundedSender<(usize, Outcome)>) {
        if let Some(reason) = self.stopped() {
            for i in 0..targets.len() {
                let _ = out.send((i, Outcome::Failed { reason: reason.clone(), status: 403 }));
            }
            return;
        }
        let mut by_env: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        for (i, t) in targets.iter().enumerate() {
            by_env[env_index(t.environment)].push(i);
        }
        let envs = [Environment::Sandbox, Environment::Production];
        let jobs = envs.into_iter().zip(by_env).filter(|(_, idx)| !idx.is_empty()).map(|(env, idx)| {
            let me = self.clone();
            let (msg, targets, out) = (msg.clone(), targets.clone(), out.clone());
            async move { me.send_env(env, msg, targets, Arc::new(idx), out).await }
        });
        futures_util::future::join_all(jobs).await;
    }

    async fn send_env(
        &self,
        env: Environment,
        msg: Arc<Message>,
        targets: Arc<[Target]>,
        idx: Arc<Vec<usize>>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
    ) {
        let per_conn = self.inner.settings.max_streams.max(1) as usize;
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
            let (msg, targets, idx, out, cursor) =
                (msg.clone(), targets.clone(), idx.clone(), out.clone(), cursor.clone());
            tokio::spawn(async move { me.lane(conn, env, msg, targets, idx, cursor, out).await }.in_current_span())
        });
        for lane in futures_util::future::join_all(lanes).await {
            if let Err(e) = lane {
                warn!(error = %e, "an APNs lane ended abnormally");
            }
        }
        // A lane that died leaves its unclaimed work to be claimed by the others; if every
        // lane died, what is left goes back to the outbox as retries.
        loop {
            let n = cursor.fetch_add(1, Ordering::AcqRel);
            let Some(&i) = idx.get(n) else { break };
            let _ = out.send((i, Outcome::Retry { reason: Reason::Connection("connection lost".into()), after: None }));
        }
    }

    /// One connection's share of a batch: keeps its window of streams full until the shared
    /// cursor runs out.
    #[allow(clippy::too_many_arguments)]
    async fn lane(
        &self,
        conn: Arc<Conn>,
        env: Environment,
        msg: Arc<Message>,
        targets: Arc<[Target]>,
        idx: Arc<Vec<usize>>,
        cursor: Arc<AtomicUsize>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
    ) {
        let authority = HeaderValue::from_static(env.host());
        let mut inflight = FuturesUnordered::new();
        loop {
            let window = if conn.confirmed.load(Ordering::Acquire) || self.inner.minter.is_none() {
                self.window(&conn)
            } else {
                1
            };
            while inflight.len() < window && conn.alive() {
                let n = cursor.fetch_add(1, Ordering::AcqRel);
                let Some(&i) = idx.get(n) else {
                    cursor.fetch_sub(1, Ordering::AcqRel);
                    break;
                };
                let target = &targets[i];
                inflight.push(self.send_one(&conn, &authority, &msg, target.token.clone(), i));
            }
            match inflight.next().await {
                Some((i, outcome)) => {
                    let _ = out.send((i, outcome));
                }
                None => break,
            }
        }
    }

    fn window(&self, conn: &Conn) -> usize {
        (self.inner.settings.max_streams as usize).min(conn.server_limit.load(Ordering::Relaxed)).max(1)
    }

    async fn send_one(
        &self,
        conn: &Conn,
        authority: &HeaderValue,
        msg: &Message,
        token: Arc<str>,
        i: usize,
    ) -> (usize, Outcome) {
        let bearer = self.inner.minter.as_ref().map(|m| m.bearer());
        let outcome = match self.request(conn, authority, msg, &token, bearer.as_deref()).await {
            Ok((status, body)) => {
                conn.confirmed.store(true, Ordering::Release);
                self.judge(status, &body, bearer.as_deref(), &token)
            }
            Err(why) => {
                if !conn.alive() {
                    debug!(conn = conn.id, "request lost with its connection");
                }
                Outcome::Retry { reason: Reason::Connection(why), after: None }
            }
        };
        (i, outcome)
    }

    /// Reads Apple's answer into an outcome, with the side effects the answer asks for.
    fn judge(&self, status: u16, body: &[u8], bearer: Option<&str>, token: &str) -> Outcome {
        if status == 200 {
            return Outcome::Delivered;
        }
        #[derive(serde::Deserialize)]
        struct ErrBody {
            reason: Option<String>,
            timestamp: Option<i64>,
        }
        let parsed: Option<ErrBody> = serde_json::from_slice(body).ok();
        let (reason, ts) = parsed.map(|b| (b.reason, b.timestamp)).unwrap_or((None, None));
        let outcome = Outcome::from_http(status, reason.as_deref(), ts);
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
                debug!(token = crate::util::short_token(token), status, reason = %r, "APNs refused a notification")
            }
            None => {}
        }
        outcome
    }

    async fn request(
        &self,
        conn: &Conn,
        authority: &HeaderValue,
        msg: &Message,
        token: &str,
        bearer: Option<&str>,
    ) -> Result<(u16, Bytes), String> {
        self.request_full(conn, authority, msg, token, bearer).await.map(|(s, _, b)| (s, b))
    }

    async fn request_full(
        &self,
        conn: &Conn,
        authority: &HeaderValue,
        msg: &Message,
        token: &str,
        bearer: Option<&str>,
    ) -> Result<(u16, http::HeaderMap, Bytes), String> {
        let uri = http::Uri::builder()
            .scheme("https")
            .authority(authority.to_str().unwrap_or_default())
            .path_and_query(format!("/3/device/{token}"))
            .build()
            .map_err(|e| e.to_string())?;
        let mut req = Request::builder().method(Method::POST).uri(uri);
        let h = req.headers_mut().expect("fresh builder");
        if let Some(b) = bearer {
            h.insert("authorization", HeaderValue::from_str(b).map_err(|e| e.to_string())?);
        }
        h.insert("apns-topic", HeaderValue::from_str(&msg.topic).map_err(|e| e.to_string())?);
        h.insert("apns-push-type", HeaderValue::from_static("alert"));
        h.insert("apns-priority", HeaderValue::from(msg.priority as u16));
        h.insert("apns-expiration", HeaderValue::from(msg.expiration));
        h.insert("apns-collapse-id", HeaderValue::from_str(&msg.collapse_id).map_err(|e| e.to_string())?);
        let req = req.body(()).map_err(|e| e.to_string())?;

        let fut = async {
            let mut send = conn.send.clone().ready().await.map_err(|e| e.to_string())?;
            let (resp, mut body) = send.send_request(req, false).map_err(|e| e.to_string())?;
            body.send_data(msg.payload.clone(), true).map_err(|e| e.to_string())?;
            let resp = resp.await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let (parts, mut recv) = resp.into_parts();
            let mut data = Vec::new();
            while let Some(chunk) = recv.data().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                let _ = recv.flow_control().release_capacity(chunk.len());
                if data.len() < 4096 {
                    data.extend_from_slice(&chunk);
                }
            }
            Ok::<_, String>((status, parts.headers, Bytes::from(data)))
        };
        match tokio::time::timeout(self.inner.settings.request_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err("request timed out".into()),
        }
    }

    /// One request to `token` on a fresh connection, answered in full: what `diag` uses to
    /// prove the credentials (a deliberately invalid token must come back BadDeviceToken)
    /// and read the server's clock and settings.
    pub async fn probe(&self, env: Environment, token: &str) -> Result<Probe, String> {
        let t0 = std::time::Instant::now();
        let conn = self.connect(env).await?;
        let connected_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let bearer = self.inner.minter.as_ref().map(|m| m.bearer());
        let msg = Message {
            topic: self.inner.probe_topic.clone(),
            payload: Bytes::from_static(br#"{"aps":{"alert":"dingdong diag"}}"#),
            expiration: 0,
            collapse_id: "dingdong-diag".into(),
            priority: 10,
        };
        let authority = HeaderValue::from_static(env.host());
        let (status, headers, body) = self.request_full(&conn, &authority, &msg, token, bearer.as_deref()).await?;
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

    /// Up to `wanted` live connections for `env`, opening what is missing.
    async fn lanes(&self, env: Environment, wanted: usize) -> Result<Vec<Arc<Conn>>, String> {
        let mut have: Vec<Arc<Conn>> = {
            let mut pool = self.inner.pools[env_index(env)].lock().expect("pool lock");
            pool.retain(|c| c.alive());
            pool.iter().take(wanted).cloned().collect()
        };
        let mut last_err = None;
        while have.len() < wanted {
            match self.connect(env).await {
                Ok(c) => {
                    self.inner.pools[env_index(env)].lock().expect("pool lock").push(c.clone());
                    have.push(c);
                }
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

    async fn connect(&self, env: Environment) -> Result<Arc<Conn>, String> {
        let (host, port) = match &self.inner.settings.endpoint {
            Some((h, p)) => (h.clone(), *p),
            None => (env.host().to_string(), 443),
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
            let closed = Arc::new(AtomicBool::new(false));
            let server_limit = Arc::new(AtomicUsize::new(self.inner.settings.max_streams as usize));
            let (c2, l2) = (closed.clone(), server_limit.clone());
            tokio::spawn(
                async move {
                    let driven = std::future::poll_fn(|cx| {
                        let r = std::pin::Pin::new(&mut connection).poll(cx);
                        l2.store(connection.max_concurrent_send_streams(), Ordering::Relaxed);
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
            Ok(Arc::new(Conn { id, send, closed, server_limit, confirmed: AtomicBool::new(false) }))
        }
        .instrument(span);
        match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("connect {host}:{port}: timed out")),
        }
    }
}
