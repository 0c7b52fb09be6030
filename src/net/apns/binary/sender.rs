//! The resumable legacy sender: the I/O half of [`super::window`]. Per connection a writer
//! streams notifications in batched writes (no per-notification wait) while a reader watches
//! for the 6-byte error-response; the window decides what each answer settles and what is
//! written again on the next connection. A batch is confirmed by the sentinel's rejection,
//! never by waiting for silence.
//!
//! A large batch is split into a few contiguous lanes, one connection each, so TLS and the
//! gateway's round trips overlap. Reconnects after an error-response are immediate; attempts
//! that fail or settle nothing back off and, after `apns.binary.max_reconnects` in a row,
//! the rest of the lane is handed back to the outbox as [`Outcome::Retry`]. No SQL here.

use super::BinaryError;
use crate::codec::apns_binary::frames::{self as codec, ErrorResponse, Format, Notification};
use crate::codec::apns_binary::window::{self, Step, Window};
use crate::domain::{Environment, Message, Outcome, Reason, Target};
use crate::net::apns::auth::ClientIdentity;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes encoded per write; the reader gets a look-in between writes.
const CHUNK: usize = 32 * 1024;

/// Default window for the formats with identifiers.
pub const WINDOW: usize = 4096;
/// The smallest write budget of a connection (about two chunks of notifications).
const MIN_BUDGET: usize = 256;
/// Default window for the simple format.
pub const SIMPLE_WINDOW: usize = 64;

type Tls = TlsStream<TcpStream>;

/// How the sender behaves; `from_config` fills it from `[apns]` and `[apns.binary]`.
#[derive(Debug, Clone)]
pub struct BinarySettings {
    pub gateway: (String, u16),
    pub format: Format,
    /// The environment of the push certificate: phones of the other one cannot be served.
    pub environment: Environment,
    pub max_reconnects: u32,
    /// Most unconfirmed notifications per connection (duplicates after a silent drop are
    /// bounded by it); a full window is confirmed with a sentinel.
    pub window: usize,
    /// Most connections one batch uses at once.
    pub lanes: usize,
    /// How long the sentinel's rejection (or a stalled write) may take.
    pub confirm_timeout: Duration,
    /// First backoff after a failed attempt; doubles up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl BinarySettings {
    pub fn new(gateway: (String, u16), format: Format, environment: Environment) -> BinarySettings {
        BinarySettings {
            gateway,
            format,
            environment,
            max_reconnects: 10,
            // Simple-format errors cannot be attributed, so a run with a bad token is lost
            // whole (recorded failed): short runs lose less, at one connection per run.
            window: if format == Format::Simple { SIMPLE_WINDOW } else { WINDOW },
            lanes: 4,
            confirm_timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }

    fn backoff(&self, strikes: u32) -> Duration {
        self.backoff.saturating_mul(1 << strikes.saturating_sub(1).min(16)).min(self.backoff_max)
    }
}

/// The sender. Cheap to clone; every clone shares the TLS config (and its session cache,
/// so reconnects resume TLS sessions instead of full handshakes).
#[derive(Clone)]
pub struct BinarySender {
    inner: Arc<Inner>,
}

struct Inner {
    connector: TlsConnector,
    settings: BinarySettings,
}

/// How one connection ended.
enum ConnEnd {
    Answer(ErrorResponse),
    Closed(String),
}

/// What a batch shares between its lanes.
struct Batch {
    msg: Arc<Message>,
    targets: Arc<Vec<Target>>,
    /// Position -> index into `targets`, for the phones that can be sent.
    order: Vec<usize>,
    out: mpsc::UnboundedSender<(usize, Outcome)>,
}

impl BinarySender {
    pub fn new(
        identity: &ClientIdentity,
        ca_file: Option<&Path>,
        settings: BinarySettings,
    ) -> Result<Self, BinaryError> {
        let tls = crate::net::tls::client_config(ca_file, Some(identity), &[])?;
        Ok(BinarySender { inner: Arc::new(Inner { connector: TlsConnector::from(tls), settings }) })
    }

    pub fn settings(&self) -> &BinarySettings {
        &self.inner.settings
    }

    /// Sends `msg` to every target; each target's outcome is sent on `out` as
    /// `(index into targets, outcome)` once known. Same contract as the HTTP/2 client.
    pub async fn send(
        &self,
        msg: Arc<Message>,
        targets: Arc<Vec<Target>>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
    ) {
        let all = 0..targets.len();
        self.send_range(msg, targets, all, out).await
    }

    /// Like [`BinarySender::send`], to `targets[range]` only (indexes stay those of `targets`).
    pub async fn send_range(
        &self,
        msg: Arc<Message>,
        targets: Arc<Vec<Target>>,
        range: std::ops::Range<usize>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
    ) {
        let s = &self.inner.settings;
        if msg.payload.len() > codec::MAX_PAYLOAD {
            for i in range {
                let _ = out.send((i, Outcome::Failed { reason: Reason::PayloadTooLarge, status: 7 }));
            }
            return;
        }
        let mut order = Vec::with_capacity(range.len());
        for (i, t) in targets.iter().enumerate().take(range.end).skip(range.start) {
            if t.environment() != s.environment {
                // A legacy push certificate serves one environment only.
                let _ = out.send((i, Outcome::Failed { reason: Reason::BadCertificateEnvironment, status: 0 }));
            } else if order.len() >= window::MAX_POSITIONS {
                let _ = out.send((i, Outcome::Failed { reason: Reason::BadDeviceToken, status: 0 }));
            } else {
                order.push(i);
            }
        }
        if order.is_empty() {
            return;
        }
        let lanes = s.lanes.clamp(1, order.len().div_ceil(s.window.max(1)).max(1));
        let per_lane = order.len().div_ceil(lanes);
        let n = order.len();
        let batch = Arc::new(Batch { msg, targets, order, out });
        let tasks: Vec<_> = (0..lanes)
            .map(|l| {
                let (me, batch) = (self.clone(), batch.clone());
                let range = l * per_lane..((l + 1) * per_lane).min(n);
                tokio::spawn(async move { me.lane(&batch, range).await })
            })
            .collect();
        for t in tasks {
            if let Err(e) = t.await {
                warn!(error = %e, "a legacy sender lane ended abnormally");
            }
        }
    }

    /// One lane: connections until every position of `range` is settled or we give up.
    async fn lane(&self, batch: &Batch, range: Range<usize>) {
        let s = &self.inner.settings;
        let mut w = Window::new(range, s.window, s.format.has_identifiers());
        let mut budget = s.window;
        let (mut strikes, mut connections) = (0u32, 0u32);
        let mut last_error = String::new();
        while !w.done() {
            if strikes > 0 {
                if strikes > s.max_reconnects {
                    break;
                }
                tokio::time::sleep(s.backoff(strikes)).await;
            }
            let stream = match self.connect().await {
                Ok(t) => t,
                Err(e) => {
                    warn!(error = %e, attempt = strikes + 1, "cannot connect to the legacy gateway");
                    last_error = e;
                    strikes += 1;
                    continue;
                }
            };
            connections += 1;
            w.set_limit(budget);
            let settled = match self.run_connection(&mut w, stream, batch).await {
                ConnEnd::Answer(e) => {
                    debug!(status = e.status.code(), identifier = e.identifier, "legacy gateway answered");
                    let settled = w.on_answer(e.status, e.identifier);
                    let accepted =
                        settled.iter().filter(|(_, o)| matches!(o, Outcome::Delivered)).map(|(r, _)| r.len()).sum();
                    budget = next_budget(budget, s.window, e.identifier == window::SENTINEL_ID, e.status, accepted);
                    settled
                }
                ConnEnd::Closed(why) => {
                    debug!(error = %why, unconfirmed = w.unconfirmed().len(), "legacy connection lost: resending its unconfirmed tail");
                    last_error = why;
                    w.on_closed()
                }
            };
            if settled.is_empty() {
                strikes += 1;
            } else {
                strikes = 0;
            }
            for (positions, outcome) in settled {
                self.emit(batch, positions, &outcome);
            }
        }
        if !w.done() {
            let left = w.give_up();
            warn!(phones = left.len(), attempts = strikes, error = %last_error, "legacy gateway unreachable: the rest goes back to the outbox");
            let outcome = Outcome::Retry { reason: Reason::Connection(last_error), after: None };
            self.emit(batch, left, &outcome);
        }
        debug!(connections, "legacy lane done");
    }

    fn emit(&self, batch: &Batch, positions: Range<usize>, outcome: &Outcome) {
        for p in positions {
            let i = batch.order[p];
            if !matches!(outcome, Outcome::Delivered) {
                debug!(token = %batch.targets[i].token().short(), state = %outcome.state(), reason = ?outcome.reason(), "legacy notification refused");
            }
            let _ = batch.out.send((i, outcome.clone()));
        }
    }

    async fn connect(&self) -> Result<Tls, String> {
        let (host, port) = &self.inner.settings.gateway;
        let fut = async {
            let tcp =
                TcpStream::connect((host.as_str(), *port)).await.map_err(|e| format!("connect {host}:{port}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let name =
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("bad host {host}: {e}"))?;
            self.inner.connector.connect(name, tcp).await.map_err(|e| format!("TLS with {host}:{port}: {e}"))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| Err(format!("connect {host}:{port}: timed out")))
    }

    /// Writes what the window allows while the reader waits for the error-response; returns
    /// how the connection ended. The stream is dropped here.
    async fn run_connection(&self, w: &mut Window, stream: Tls, batch: &Batch) -> ConnEnd {
        let timeout = self.inner.settings.confirm_timeout;
        let (rd, mut wr) = tokio::io::split(stream);
        let mut reader = Box::pin(read_answer(rd));
        let wrote = {
            let writer = self.write_window(w, &mut wr, batch);
            tokio::pin!(writer);
            tokio::select! {
                biased;
                // cancel-safe: the connection is abandoned whichever arm wins
                answer = &mut reader => return answer,
                // cancel-safe: a half-written chunk is settled by the answer or resent
                r = &mut writer => r,
            }
        };
        if let Err(e) = wrote {
            // A failed write usually means the gateway answered and closed: read the answer.
            debug!(error = %e, "legacy write failed");
        }
        match tokio::time::timeout(timeout, reader).await {
            Ok(end) => end,
            Err(_) => ConnEnd::Closed("no answer to the sentinel in time".into()),
        }
    }

    /// Streams notifications until the window asks for the sentinel, then writes it.
    async fn write_window(&self, w: &mut Window, wr: &mut WriteHalf<Tls>, batch: &Batch) -> Result<(), String> {
        let s = &self.inner.settings;
        let mut buf = Vec::with_capacity(CHUNK + 4096);
        let expiry = batch.msg.expiration.min(u32::MAX as u64) as u32;
        loop {
            let mut last = false;
            while buf.len() < CHUNK && !last {
                let n = match w.next_step() {
                    Step::Send(p) => Notification {
                        token: batch.targets[batch.order[p]].token().bytes(),
                        payload: &batch.msg.payload,
                        identifier: window::identifier(p),
                        expiry,
                        priority: batch.msg.priority,
                    },
                    Step::Sentinel | Step::Wait => {
                        last = true;
                        sentinel(&batch.msg.payload)
                    }
                };
                // The simple format has no identifier, so its sentinel goes as command 1.
                let format = if last && s.format == Format::Simple { Format::Enhanced } else { s.format };
                codec::encode(format, &n, &mut buf).map_err(|e| e.to_string())?;
            }
            match tokio::time::timeout(s.confirm_timeout, wr.write_all(&buf)).await {
                Ok(r) => r.map_err(|e| e.to_string())?,
                Err(_) => return Err("write stalled".into()),
            }
            buf.clear();
            if last {
                return wr.flush().await.map_err(|e| e.to_string());
            }
            // Let the reader see an error-response before more is written in vain.
            tokio::task::yield_now().await;
        }
    }
}

/// How many notifications the next connection of a lane may write before its sentinel.
///
/// The gateway drops a connection at the first bad token, and everything written behind it
/// goes again on the next connection. Writing far ahead on loopback or a fat pipe, a lane
/// with 1% bad tokens wrote each notification 25 times over. So the budget follows how far
/// connections get, as TCP's slow start does: twice what the last one got through before a
/// bad token, doubled when a connection takes its whole budget (the sentinel's rejection),
/// never below [`MIN_BUDGET`] or above the window.
fn next_budget(budget: usize, window: usize, by_sentinel: bool, status: codec::Status, accepted: usize) -> usize {
    let next = if by_sentinel {
        budget.saturating_mul(2)
    } else if status == codec::Status::Shutdown {
        budget // not about the tokens
    } else {
        accepted.saturating_add(1).saturating_mul(2)
    };
    next.clamp(MIN_BUDGET.min(window), window)
}

fn sentinel(payload: &[u8]) -> Notification<'_> {
    Notification { token: &window::SENTINEL_TOKEN, payload, identifier: window::SENTINEL_ID, expiry: 0, priority: 10 }
}

/// Waits for the error-response (or the end of the connection).
async fn read_answer(mut rd: ReadHalf<Tls>) -> ConnEnd {
    let mut buf = [0u8; codec::ERROR_RESPONSE_LEN];
    let mut have = 0;
    loop {
        match rd.read(&mut buf[have..]).await {
            Ok(0) => return ConnEnd::Closed("closed without an error-response".into()),
            Ok(n) => have += n,
            Err(e) => return ConnEnd::Closed(e.to_string()),
        }
        match ErrorResponse::parse(&buf[..have]) {
            Ok(Some(e)) => return ConnEnd::Answer(e),
            Ok(None) => {}
            Err(e) => return ConnEnd::Closed(format!("the gateway sent something else than an error-response: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::Status;

    #[test]
    fn the_write_budget_follows_how_far_connections_get() {
        // A bad token after 300 good ones: twice that, not the whole window.
        assert_eq!(next_budget(WINDOW, WINDOW, false, Status::InvalidToken, 300), 602);
        // Never below two chunks, never above the window.
        assert_eq!(next_budget(WINDOW, WINDOW, false, Status::InvalidToken, 100), MIN_BUDGET);
        assert_eq!(next_budget(602, WINDOW, true, Status::InvalidToken, 602), 1204);
        assert_eq!(next_budget(3000, WINDOW, true, Status::InvalidToken, 3000), WINDOW);
        // A shutdown says nothing about the tokens; a small window caps everything.
        assert_eq!(next_budget(512, WINDOW, false, Status::Shutdown, 10), 512);
        assert_eq!(next_budget(64, 64, false, Status::InvalidToken, 0), 64);
    }
}
