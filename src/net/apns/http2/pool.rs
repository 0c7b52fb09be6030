//! The client's connections: one pool per environment, opened, checked and replaced here.
//!
//! A pool has a slot per lane (`apns.max_connections` of them): lane `k` of every batch uses
//! slot `k`, so batches that run at the same time share connections instead of opening more,
//! and a slot that several want at once is connected once. Connections stay open while idle
//! (Apple asks providers to keep them); one idle for [`IDLE_CHECK_MS`] is PINGed before it
//! is trusted again. [`Http2Client::prepare`] opens and checks them ahead of a ring: while the
//! press is being recorded, or at start-up.

use super::{Http2Client, CONNECT_TIMEOUT};
use crate::domain::Environment;
use bytes::Bytes;
use h2::client::SendRequest;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tracing::{debug, info, Instrument};

/// A pooled connection idle for longer than this is PINGed before it is used again.
const IDLE_CHECK_MS: i64 = 30_000;
/// How long a PING may take before the connection is declared dead.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// One HTTP/2 connection.
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) send: SendRequest<Bytes>,
    /// The connection driver finished (GOAWAY, error, EOF): open another.
    pub(super) closed: Arc<AtomicBool>,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS as last seen by the driver.
    pub(super) server_limit: Arc<AtomicUsize>,
    /// A first answer came back: with token auth, only now may more than one stream open.
    pub(super) confirmed: AtomicBool,
    /// When the last answer arrived (ms): an idle connection is PINGed before reuse.
    pub(super) last_used: AtomicI64,
    ping: tokio::sync::Mutex<Option<h2::PingPong>>,
}

impl Conn {
    pub(super) fn alive(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }
}

/// One environment's connections, a slot per lane.
pub(super) struct Pool {
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
}

impl Pool {
    pub(super) fn new(slots: usize) -> Pool {
        Pool { slots: (0..slots.max(1)).map(|_| tokio::sync::Mutex::new(None)).collect() }
    }

    /// Live connections (a slot being connected right now is not counted).
    pub(super) fn open(&self) -> usize {
        self.slots.iter().filter(|s| s.try_lock().is_ok_and(|c| c.as_ref().is_some_and(|c| c.alive()))).count()
    }
}

impl Http2Client {
    /// The live connection of slot `k` of `env`'s pool: the one there if it is alive (and,
    /// after a quiet spell, answers a PING), else a fresh one put in its place.
    pub(super) async fn slot(&self, env: Environment, k: usize) -> Result<Arc<Conn>, String> {
        let pool = &self.inner.pools[super::env_index(env)];
        let mut slot = pool.slots[k % pool.slots.len()].lock().await;
        if let Some(c) = slot.as_ref() {
            if c.alive() && self.check_idle(c).await {
                return Ok(c.clone());
            }
        }
        let fresh = self.connect(env).await?;
        if let Some(old) = slot.replace(fresh.clone()) {
            debug!(old = old.id, new = fresh.id, "pooled connection replaced");
        }
        Ok(fresh)
    }

    /// Opens (or checks) the first `width` connections of `env`'s pool in the background,
    /// and mints the provider token if it is due: a ring that follows finds them ready. A
    /// call while an earlier one is still at work does nothing.
    pub fn prepare(&self, env: Environment, width: usize) {
        let width = width.min(self.inner.settings.max_connections as usize);
        if width == 0 || self.inner.preparing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Some(m) = &me.inner.minter {
                m.bearer_header();
            }
            let slots = (0..width).map(|k| me.slot(env, k));
            for r in futures_util::future::join_all(slots).await {
                if let Err(why) = r {
                    debug!(environment = %env, error = %why, "could not open an APNs connection ahead of a ring");
                }
            }
            me.inner.preparing.store(false, Ordering::Release);
        });
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

    pub(super) async fn connect(&self, env: Environment) -> Result<Arc<Conn>, String> {
        let (host, port) = match &self.inner.settings.endpoint {
            Some((h, p)) => (h.clone(), *p),
            None => (crate::net::apns::host(env).to_string(), 443),
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
