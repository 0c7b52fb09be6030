//! The built-in APNs simulator, for `demo`, tests and benchmarks: an HTTP/2 server that
//! answers as Apple documents (headers, JWT or client certificate, sizes, 410 with a
//! timestamp, BadDeviceToken, the status table) and records what it accepted.
//!
//! Apple cannot be reached from a test machine, so this is the one stand-in the project
//! allows. It never runs in the daemon's hot path.
//!
//! The environment of a request is read from its `:authority` (dingdong keeps Apple's host
//! names there even when `apns.endpoint` points at the simulator), so a sandbox token sent
//! to the production host is refused with BadDeviceToken, as Apple does.
//!
//! `binary` adds the legacy gateway and feedback service (see its docs); `fcm` Google's FCM
//! HTTP v1 API with its OAuth token endpoint, and `webpush` a Web Push service that checks
//! VAPID and decrypts every message (both served by `serve`).

pub mod binary;
pub mod certs;
pub mod fcm;
pub mod http2;
mod serve;
pub mod webpush;

pub use certs::{CertOptions, SimCredentials};

use crate::domain::Environment;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio_util::sync::CancellationToken;

/// What to start and how to behave.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    pub http2: Option<SocketAddr>,
    pub out_dir: PathBuf,
    /// Known tokens; without it every well-formed token is accepted in both environments.
    pub tokens: Option<PathBuf>,
    /// Keep no per-request record, only counters: the benchmarks' accept-all mode.
    pub fast: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS announced to clients.
    pub max_streams: u32,
    pub certs: CertOptions,
    pub faults: Faults,
    /// Address of the legacy binary gateway.
    pub binary: Option<SocketAddr>,
    /// Address of the legacy feedback service.
    pub feedback: Option<SocketAddr>,
    /// The gateway answers status 10 once, after this many accepted notifications.
    pub shutdown_after: Option<u64>,
    /// The legacy gateway drops a connection once, without an answer, after this many.
    pub binary_drop_after: Option<u64>,
    /// Seconds added to the simulator's clock (its `date` header and JWT age checks): the
    /// clock-skew fault for diag tests.
    pub clock_skew_secs: i64,
    /// Address of the FCM simulator (token endpoint and send API).
    pub fcm: Option<SocketAddr>,
    /// Address of the Web Push simulator.
    pub webpush: Option<SocketAddr>,
    /// Test phones made for each of the FCM and Web Push simulators.
    pub push_phones: u32,
    /// The Web Push simulator speaks HTTP/1.1 only.
    pub webpush_http1: bool,
}

/// Apple's bad days, on demand.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Share of notifications answered 500 InternalServerError or 503 ServiceUnavailable.
    pub fail_rate: f64,
    /// Send GOAWAY on a connection after this many requests (0: never).
    pub goaway_after: u64,
    /// Delay before every answer.
    pub latency: std::time::Duration,
    /// Close a connection abruptly, without GOAWAY, after this many requests (0: never).
    pub drop_after: u64,
}

/// What the simulator knows of one token.
#[derive(Debug, Clone, Default)]
pub struct TokenInfo {
    /// `None`: valid in both environments.
    pub environment: Option<Environment>,
    /// Set when the app was removed: answered with 410 and this timestamp (ms).
    pub unregistered_at: Option<i64>,
}

/// One accepted notification, as the device would see it plus the headers that carried it.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub token: String,
    pub environment: Environment,
    pub topic: Option<String>,
    pub push_type: Option<String>,
    pub priority: Option<String>,
    pub expiration: Option<String>,
    pub collapse_id: Option<String>,
    pub apns_id: String,
    /// `token` or `certificate`.
    pub auth: &'static str,
    pub payload: serde_json::Value,
    /// When it arrived, in microseconds since the epoch (latency benchmarks need better than ms).
    pub at_us: i64,
}

/// Shared state of a running simulator.
#[derive(Default)]
pub struct SimState {
    tokens: RwLock<HashMap<String, TokenInfo>>,
    /// With a token list, unknown tokens are BadDeviceToken.
    strict: std::sync::atomic::AtomicBool,
    received: Mutex<Vec<Received>>,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    reasons: Mutex<HashMap<String, u64>>,
    fast: bool,
    /// What the feedback service replays next: token -> when it stopped being valid (ms).
    feedback: Mutex<HashMap<String, i64>>,
}

impl SimState {
    pub fn new(fast: bool) -> SimState {
        SimState { fast, ..Default::default() }
    }

    /// Loads a token list: one token a line, then optionally `sandbox`/`production` and
    /// `unregistered` or `unregistered=<unix ms>`; `#` starts a comment.
    pub fn load_tokens(&self, path: &Path) -> Result<usize, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read tokens file {}: {e}", path.display()))?;
        let mut n = 0;
        for (lineno, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let token = crate::domain::normalize_token(words.next().unwrap_or(""))
                .map_err(|e| format!("{}:{}: {e}", path.display(), lineno + 1))?;
            let mut info = TokenInfo::default();
            for w in words {
                match w {
                    "sandbox" => info.environment = Some(Environment::Sandbox),
                    "production" => info.environment = Some(Environment::Production),
                    "unregistered" => info.unregistered_at = Some(crate::domain::now_ms()),
                    w if w.starts_with("unregistered=") => {
                        let ms = w["unregistered=".len()..]
                            .parse()
                            .map_err(|_| format!("{}:{}: bad timestamp in '{w}'", path.display(), lineno + 1))?;
                        info.unregistered_at = Some(ms);
                    }
                    w => return Err(format!("{}:{}: unknown word '{w}'", path.display(), lineno + 1)),
                }
            }
            if let Some(at) = info.unregistered_at {
                self.report_feedback(&token, at);
            }
            self.tokens.write().expect("tokens lock").insert(token, info);
            n += 1;
        }
        self.strict.store(true, Ordering::Release);
        Ok(n)
    }

    /// Registers a token (tests); switches the simulator to strict mode.
    pub fn register(&self, token: &str, info: TokenInfo) {
        self.tokens.write().expect("tokens lock").insert(token.to_string(), info);
        self.strict.store(true, Ordering::Release);
    }

    /// Marks a token as removed from its device at `at_ms`.
    pub fn unregister(&self, token: &str, at_ms: i64) {
        let mut t = self.tokens.write().expect("tokens lock");
        t.entry(token.to_string()).or_default().unregistered_at = Some(at_ms);
        drop(t);
        self.report_feedback(token, at_ms);
    }

    /// Queues a token for the feedback service (a token seen once is reported once, with its
    /// newest timestamp).
    pub fn report_feedback(&self, token: &str, at_ms: i64) {
        let mut f = self.feedback.lock().expect("feedback lock");
        let e = f.entry(token.to_string()).or_insert(at_ms);
        *e = (*e).max(at_ms);
    }

    /// Hands over and forgets what the feedback service has to say, oldest first.
    pub(crate) fn take_feedback(&self) -> Vec<(String, i64)> {
        let mut v: Vec<_> = self.feedback.lock().expect("feedback lock").drain().collect();
        v.sort_by_key(|(_, at)| *at);
        v
    }

    /// How many tokens the feedback service would replay now.
    pub fn feedback_pending(&self) -> usize {
        self.feedback.lock().expect("feedback lock").len()
    }

    /// Apple's verdict on a token for an environment: `Ok` or `(status, reason, timestamp)`.
    pub fn judge_token(&self, token: &str, env: Environment) -> Result<(), (u16, &'static str, Option<i64>)> {
        let tokens = self.tokens.read().expect("tokens lock");
        match tokens.get(token) {
            Some(info) => {
                if info.environment.is_some_and(|e| e != env) {
                    return Err((400, "BadDeviceToken", None));
                }
                if let Some(at) = info.unregistered_at {
                    return Err((410, "Unregistered", Some(at)));
                }
                Ok(())
            }
            None if self.strict.load(Ordering::Acquire) => Err((400, "BadDeviceToken", None)),
            None => Ok(()),
        }
    }

    pub(crate) fn record_accept(&self, r: impl FnOnce() -> Received) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        if !self.fast {
            self.received.lock().expect("received lock").push(r());
        }
    }

    pub(crate) fn record_reject(&self, reason: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        *self.reasons.lock().expect("reasons lock").entry(reason.to_string()).or_default() += 1;
    }

    /// Everything accepted so far (empty in fast mode).
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("received lock").clone()
    }

    /// Everything accepted so far, forgetting it (benchmarks measure press by press).
    pub fn take_received(&self) -> Vec<Received> {
        std::mem::take(&mut *self.received.lock().expect("received lock"))
    }

    /// How many notifications each token received.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in self.received.lock().expect("received lock").iter() {
            *m.entry(r.token.clone()).or_default() += 1;
        }
        m
    }

    /// Counters as JSON, as served on `GET /sim/stats`.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "accepted": self.accepted.load(Ordering::Relaxed),
            "rejected": self.rejected.load(Ordering::Relaxed),
            "reasons": *self.reasons.lock().expect("reasons lock"),
        })
    }
}

/// Binds `addr` and serves every connection with `serve` in its own task until `cancel`;
/// returns the bound address. Shared by the HTTP/2, gateway and feedback listeners.
pub(crate) async fn listen<F, Fut>(addr: SocketAddr, cancel: CancellationToken, serve: F) -> Result<SocketAddr, String>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("apns-sim cannot listen on {addr}: {e}"))?;
    serve_listener(listener, cancel, serve)
}

/// [`listen`] on a listener bound already (the FCM simulator names its port in the key file
/// it writes before it serves).
pub(crate) async fn listen_on<F, Fut>(
    listener: std::net::TcpListener,
    cancel: CancellationToken,
    serve: F,
) -> Result<SocketAddr, String>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    serve_listener(listener, cancel, serve)
}

fn serve_listener<F, Fut>(
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
    serve: F,
) -> Result<SocketAddr, String>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                // cancel-safe: nothing is lost by stopping here
                _ = cancel.cancelled() => break,
                // cancel-safe: accept() loses no connection when dropped
                r = listener.accept() => match r {
                    Ok((tcp, _)) => {
                        let (conn, cancel) = (serve(tcp), cancel.clone());
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = cancel.cancelled() => {}
                                r = conn => if let Err(e) = r { tracing::debug!(error = %e, "sim connection ended") },
                            }
                        });
                    }
                    Err(e) => tracing::debug!(error = %e, "sim accept failed"),
                }
            }
        }
    });
    Ok(local)
}

/// A running simulator.
pub struct Sim {
    pub fcm: Option<fcm::FcmSim>,
    pub webpush: Option<webpush::WebPushSim>,
    pub http2_addr: Option<SocketAddr>,
    pub binary_addr: Option<SocketAddr>,
    pub feedback_addr: Option<SocketAddr>,
    pub state: Arc<SimState>,
    pub credentials: SimCredentials,
    pub cancel: CancellationToken,
}

impl Sim {
    /// Writes (or reuses) the credentials and starts the listeners on the current runtime.
    pub async fn start(opts: SimOptions) -> Result<Sim, String> {
        let credentials = SimCredentials::ensure(&opts.out_dir, &opts.certs)?;
        let state = Arc::new(SimState::new(opts.fast));
        if let Some(t) = &opts.tokens {
            state.load_tokens(t)?;
        }
        let cancel = CancellationToken::new();
        let mut http2_addr = None;
        if let Some(addr) = opts.http2 {
            let server = http2::Http2Sim::new(
                &credentials,
                state.clone(),
                opts.max_streams.max(1),
                opts.faults,
                opts.clock_skew_secs,
            )?;
            http2_addr = Some(server.listen(addr, cancel.clone()).await?);
        }
        let (mut binary_addr, mut feedback_addr) = (None, None);
        if opts.binary.is_some() || opts.feedback.is_some() {
            let faults =
                binary::GatewayFaults { shutdown_after: opts.shutdown_after, drop_after: opts.binary_drop_after };
            let server = binary::BinarySim::new(&credentials, state.clone(), faults)?;
            if let Some(addr) = opts.binary {
                binary_addr = Some(server.clone().listen_gateway(addr, cancel.clone()).await?);
            }
            if let Some(addr) = opts.feedback {
                feedback_addr = Some(server.listen_feedback(addr, cancel.clone()).await?);
            }
        }
        let bind = |addr: SocketAddr| {
            std::net::TcpListener::bind(addr).map_err(|e| format!("apns-sim cannot listen on {addr}: {e}"))
        };
        let fcm = match opts.fcm {
            Some(addr) => Some(
                fcm::start(
                    bind(addr)?,
                    &credentials,
                    &opts.out_dir,
                    opts.push_phones,
                    opts.fast,
                    opts.faults,
                    cancel.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let webpush = match opts.webpush {
            Some(addr) => Some(
                webpush::start(
                    bind(addr)?,
                    &credentials,
                    &opts.out_dir,
                    opts.push_phones,
                    opts.webpush_http1,
                    opts.fast,
                    opts.faults,
                    cancel.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let sim = Sim { fcm, webpush, http2_addr, binary_addr, feedback_addr, state, credentials, cancel };
        let _ = std::fs::write(
            opts.out_dir.join("sim.json"),
            serde_json::to_string_pretty(&sim.info()).unwrap_or_default(),
        );
        Ok(sim)
    }

    /// Where it listens and what it wrote, as `apns-sim` prints it and writes `sim.json`.
    pub fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "http2": self.http2_addr.map(|a| a.to_string()),
            "binary": self.binary_addr.map(|a| a.to_string()),
            "feedback": self.feedback_addr.map(|a| a.to_string()),
            "credentials": self.credentials,
            "fcm": self.fcm.as_ref().map(|f| serde_json::json!({
                "addr": f.addr.to_string(),
                "endpoint": format!("https://{}", f.addr),
                "service_account_file": f.service_account_file,
                "tokens": f.tokens,
            })),
            "webpush": self.webpush.as_ref().map(|w| serde_json::json!({
                "addr": w.addr.to_string(),
                "subscriptions": w.subscriptions.iter().map(|s| &s.file).collect::<Vec<_>>(),
            })),
        })
    }

    /// The `apns.endpoint` value that points dingdong at this simulator's HTTP/2 API.
    pub fn endpoint(&self) -> Option<String> {
        self.http2_addr.map(|a| format!("https://{a}"))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
