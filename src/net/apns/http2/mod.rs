//! The HTTP/2 APNs client: connections per environment, stream limits, answers to outcomes.
//!
//! One batch (the phones of a ring) is spread over *lanes*: a lane is one connection with up
//! to `min(apns.max_streams, the server's SETTINGS_MAX_CONCURRENT_STREAMS)` requests in flight
//! (h2 itself never opens more streams than the server allows). A ring with more phones than
//! one connection can carry opens more lanes, up to `apns.max_connections`. With token auth a
//! fresh connection carries one stream until its first answer, as Apple asks. Retrying is not
//! done here: every phone gets an [`Outcome`] and `outbox` decides what to do with retries.
//! No SQL here.
//!
//! This file holds the client, its connection pool and the probe; a lane's rules are the pure
//! state machine `codec::apns_http2::lane`, its I/O loop is [`lane`], one request on the wire
//! is [`request`].

mod lane;
mod request;

use super::auth::{ClientIdentity, JwtMinter};
use crate::codec::apns_http2::lane::Queue;
use crate::domain::{Environment, Message, Outcome, Reason, Target, Token};
use bytes::Bytes;
use h2::client::SendRequest;
use lane::Batch;
use request::{answer, start, Prepared, ReqError};
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

/// A pooled connection idle for longer than this is PINGed before it is used again.
const IDLE_CHECK_MS: i64 = 30_000;
/// How long a PING may take before the connection is declared dead.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

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
            by_env[env_index(t.environment)].push(i);
        }
        let envs = [Environment::Sandbox, Environment::Production];
        let jobs = envs.into_iter().zip(by_env).filter(|(_, idx)| !idx.is_empty()).map(|(env, idx)| {
            let me = self.clone();
            let (msg, targets, out, stop) = (msg.clone(), targets.clone(), out.clone(), stop.clone());
            async move { me.send_env(env, msg, targets, idx, out, stop).await }
        });
        futures_util::future::join_all(jobs).await;
    }

    async fn send_env(
        &self,
        env: Environment,
        msg: Arc<Message>,
        targets: Arc<Vec<Target>>,
        idx: Vec<usize>,
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
        let batch = Arc::new(Batch { env, msg, targets, queue: Queue::new(idx), out, stop });
        let lanes = conns.into_iter().map(|conn| {
            let (me, batch) = (self.clone(), batch.clone());
            tokio::spawn(async move { me.lane(batch, Some(conn)).await }.in_current_span())
        });
        for lane in futures_util::future::join_all(lanes).await {
            if let Err(e) = lane {
                warn!(error = %e, "an APNs lane ended abnormally");
            }
        }
        // A lane that died leaves its unclaimed work to be claimed by the others; if every
        // lane died, what is left goes back to the outbox as retries.
        for i in batch.queue.take_rest() {
            let _ = batch
                .out
                .send((i, Outcome::Retry { reason: Reason::Connection("connection lost".into()), after: None }));
        }
    }

    fn window(&self, conn: &Conn) -> usize {
        (self.inner.settings.max_streams as usize).min(conn.server_limit.load(Ordering::Relaxed)).max(1)
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
