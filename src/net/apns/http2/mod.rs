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
mod pool;
mod request;

use super::auth::{ClientIdentity, JwtMinter};
use crate::codec::apns_http2::lane::Queue;
use crate::domain::timing::SendTiming;
use crate::domain::{Environment, Message, Outcome, Reason, Target, Token};
use bytes::Bytes;
use lane::Batch;
use pool::{Conn, Pool};
use request::{answer, start, Prepared, ReqError};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{warn, Instrument};

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
    pools: [Pool; 2],
    next_conn_id: AtomicU64,
    /// Set by a credentials 403: the transport stops instead of hammering Apple.
    stopped: Mutex<Option<Reason>>,
    /// The last SETTINGS_MAX_CONCURRENT_STREAMS any connection saw (starts at our cap).
    server_limit: Arc<AtomicUsize>,
    /// A `prepare` is at work.
    preparing: AtomicBool,
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
                pools: [Pool::new(settings.max_connections as usize), Pool::new(settings.max_connections as usize)],
                next_conn_id: AtomicU64::new(1),
                stopped: Mutex::new(None),
                server_limit: Arc::new(AtomicUsize::new(settings.max_streams as usize)),
                preparing: AtomicBool::new(false),
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
        self.inner.pools.iter().map(Pool::open).sum()
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
    ) -> SendTiming {
        let all = 0..targets.len();
        self.send_range(msg, targets, all, out, stop).await
    }

    /// Like [`Http2Client::send`], to `targets[range]` only (indexes stay those of `targets`).
    pub async fn send_range(
        &self,
        msg: Arc<Message>,
        targets: Arc<Vec<Target>>,
        range: std::ops::Range<usize>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
        stop: &CancellationToken,
    ) -> SendTiming {
        if let Some(reason) = self.stopped() {
            for i in range {
                let _ = out.send((i, Outcome::Failed { reason: reason.clone(), status: 403 }));
            }
            return SendTiming::default();
        }
        // Nearly always every phone is of one environment: then the batch is the range itself.
        let first = range.clone().next().map(|i| targets[i].environment());
        let queues: Vec<(Environment, Queue)> = match first {
            None => Vec::new(),
            Some(env) if range.clone().all(|i| targets[i].environment() == env) => vec![(env, Queue::run(range))],
            Some(_) => {
                let mut by_env: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
                for i in range {
                    by_env[env_index(targets[i].environment())].push(i);
                }
                let envs = [Environment::Sandbox, Environment::Production];
                envs.into_iter()
                    .zip(by_env)
                    .filter(|(_, idx)| !idx.is_empty())
                    .map(|(e, idx)| (e, Queue::new(idx)))
                    .collect()
            }
        };
        let jobs = queues.into_iter().map(|(env, queue)| {
            let me = self.clone();
            let (msg, targets, out, stop) = (msg.clone(), targets.clone(), out.clone(), stop.clone());
            async move { me.send_env(env, msg, targets, queue, out, stop).await }
        });
        futures_util::future::join_all(jobs).await.into_iter().fold(SendTiming::default(), SendTiming::merge)
    }

    async fn send_env(
        &self,
        env: Environment,
        msg: Arc<Message>,
        targets: Arc<Vec<Target>>,
        queue: Queue,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
        stop: CancellationToken,
    ) -> SendTiming {
        // Size the lanes by the smaller of our cap and the last stream limit a server announced.
        let lanes = self.width(queue.len()).max(1);
        // Every lane gets its connection itself (slot k of the pool), at the same time: the
        // first requests go out on the first connection ready, not after all are.
        let batch = Arc::new(Batch {
            env,
            msg,
            targets,
            queue,
            out,
            stop,
            lanes,
            stamps: Default::default(),
            failure: Mutex::new(None),
        });
        let running = (0..lanes).map(|k| {
            let (me, batch) = (self.clone(), batch.clone());
            tokio::spawn(async move { me.lane(batch, k).await }.in_current_span())
        });
        for lane in futures_util::future::join_all(running).await {
            if let Err(e) = lane {
                warn!(error = %e, "an APNs lane ended abnormally");
            }
        }
        // A lane that died leaves its unclaimed work to be claimed by the others; if every
        // lane died, what is left goes back to the outbox as retries.
        let why = batch.failure.lock().expect("failure lock").clone().unwrap_or_else(|| "connection lost".into());
        for i in batch.queue.take_rest() {
            let _ = batch.out.send((i, Outcome::Retry { reason: Reason::Connection(why.clone()), after: None }));
        }
        SendTiming { lanes, ..batch.stamps.timing() }
    }

    /// How many connections a batch of `phones` phones spreads over.
    pub fn width(&self, phones: usize) -> usize {
        let per_conn =
            (self.inner.settings.max_streams as usize).min(self.inner.server_limit.load(Ordering::Relaxed)).max(1);
        phones.div_ceil(per_conn).min(self.inner.settings.max_connections as usize)
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
}
