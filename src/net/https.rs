//! The HTTPS client the FCM and Web Push transports share, and their fan-out loop.
//!
//! hyper's pooled client (hyper-util's `legacy::Client`) over rustls with the ring provider:
//! HTTP/2 where the server offers `h2` by ALPN (one connection carries many streams), HTTP/1.1
//! with a pool of kept-alive connections where it does not (many push services speak only
//! HTTP/1.1). A transport holds a few such clients, each with its own pool, and spreads its
//! requests over them: a big ring then uses several HTTP/2 connections, as the APNs client's
//! lanes do, instead of queueing every stream on one.
//!
//! [`fan_out`] keeps a window of requests in flight per origin: one until the first answer
//! tells which protocol the origin speaks, then (HTTP/2) one per client until each has its
//! connection, then as many streams as HTTP/2 may carry; or (HTTP/1.1) as many connections as
//! the pool may open. Retrying is not done here: every phone
//! gets an [`Outcome`] and `outbox` decides.

use crate::codec::push::common::Verdict;
use crate::domain::{Outcome, Reason};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, Stream, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long establishing TCP + TLS may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A kept-alive connection unused for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Answers are error bodies of a few hundred bytes; more is not read.
const MAX_ANSWER: usize = 16 * 1024;

/// How a transport's HTTPS client behaves.
#[derive(Debug, Clone)]
pub struct HttpsSettings {
    /// An extra CA (the simulator's), beside Mozilla's roots.
    pub ca_file: Option<PathBuf>,
    /// Clients (so HTTP/2 connections) per transport; requests are spread over them.
    pub clients: usize,
    /// Requests in flight per origin over HTTP/2 (over all the clients' connections).
    pub h2_streams: usize,
    /// Requests in flight per origin over HTTP/1.1: so many connections at most.
    pub h1_connections: usize,
    /// How long one request may wait for its whole answer.
    pub request_timeout: Duration,
}

impl Default for HttpsSettings {
    fn default() -> Self {
        HttpsSettings {
            ca_file: None,
            clients: 2,
            h2_streams: 1000,
            h1_connections: 32,
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
}

/// A push service's answer: status, protocol, `Retry-After`, and the start of the body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub version: http::Version,
    pub retry_after: Option<String>,
    pub body: Bytes,
}

type Pooled = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client. Cheap to clone; pools are shared by every clone.
#[derive(Clone)]
pub struct Https {
    clients: Arc<[Pooled]>,
    next: Arc<AtomicUsize>,
    settings: Arc<HttpsSettings>,
}

impl Https {
    pub fn new(settings: HttpsSettings) -> Result<Https, HttpsError> {
        let tls = crate::net::tls::client_config(settings.ca_file.as_deref(), None, &[])?;
        let clients: Vec<Pooled> = (0..settings.clients.max(1))
            .map(|_| {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_connect_timeout(Some(CONNECT_TIMEOUT));
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config((*tls).clone())
                    .https_only()
                    .enable_all_versions()
                    .wrap_connector(http);
                Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .pool_idle_timeout(IDLE_TIMEOUT)
                    .pool_max_idle_per_host(settings.h1_connections)
                    .http2_initial_stream_window_size(1 << 20)
                    .http2_initial_connection_window_size(1 << 22)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .http2_keep_alive_timeout(Duration::from_secs(5))
                    .build(connector)
            })
            .collect();
        Ok(Https { clients: clients.into(), next: Arc::new(AtomicUsize::new(0)), settings: Arc::new(settings) })
    }

    pub fn settings(&self) -> &HttpsSettings {
        &self.settings
    }

    /// Sends one request and reads its answer, within the request timeout. An error is a
    /// connection problem: the caller retries the phone.
    pub async fn request(&self, req: http::Request<Full<Bytes>>) -> Result<Answer, String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let client = &self.clients[n];
        let asked = async {
            let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
            let status = resp.status().as_u16();
            let version = resp.version();
            let retry_after =
                resp.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
            let body =
                Limited::new(resp.into_body(), MAX_ANSWER).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Ok(Answer { status, version, retry_after, body })
        };
        match tokio::time::timeout(self.settings.request_timeout, asked).await {
            Ok(r) => r,
            Err(_) => Err("request timed out".into()),
        }
    }
}

/// An error with its causes, on one line (hyper's outer error says only "client error").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// One request's end: the phone's index, its outcome, and the protocol of the answer (none
/// when there was no answer).
pub type Sent = (usize, Outcome, Option<http::Version>);

/// Starts `start(item)` for every item, keeping a window of them in flight (see the module
/// doc), and hands each outcome to `out`, marking the phone in `done`. Returns when every item
/// has an outcome, or at `stop` (then nothing new starts and what was in flight is awaited;
/// the caller hands back as retries what `done` does not mark).
pub async fn fan_out<S, I, F, Fut>(
    mut items: S,
    limits: &HttpsSettings,
    stop: &CancellationToken,
    mut start: F,
    out: &mpsc::UnboundedSender<(usize, Outcome)>,
    done: &mut [bool],
) where
    S: Stream<Item = I> + Unpin,
    F: FnMut(I) -> Fut,
    Fut: Future<Output = Sent>,
{
    let mut inflight = FuturesUnordered::new();
    let mut window = 1usize;
    let mut answered = 0usize;
    let mut exhausted = false;
    loop {
        if stop.is_cancelled() {
            exhausted = true;
        }
        tokio::select! {
            biased;
            // cancel-safe: FuturesUnordered::next keeps the other futures
            Some((i, outcome, version)) = inflight.next(), if !inflight.is_empty() => {
                let version: Option<http::Version> = version;
                answered += usize::from(version.is_some());
                window = match version {
                    // Each client's first connection is opened by one request (they take
                    // turns), not by hundreds racing to connect: then the whole window.
                    Some(http::Version::HTTP_2) if answered < limits.clients => limits.clients,
                    Some(http::Version::HTTP_2) => limits.h2_streams.max(1),
                    Some(_) => limits.h1_connections.max(1),
                    None => window,
                };
                done[i] = true;
                let _ = out.send((i, outcome));
            }
            // cancel-safe: a stream's next() loses nothing when another arm wins
            next = items.next(), if !exhausted && inflight.len() < window => match next {
                Some(item) => inflight.push(start(item)),
                None => exhausted = true,
            },
            // cancel-safe: only waits
            _ = stop.cancelled(), if !exhausted => exhausted = true,
            else => break,
        }
    }
}

/// The outcome of a request that got no answer.
pub fn no_answer(why: String) -> Outcome {
    Outcome::Retry { reason: Reason::Connection(why), after: None }
}

/// Hands back as retries the phones of `indices` that `done` does not mark.
pub fn hand_back(indices: &[usize], done: &[bool], why: &str, out: &mpsc::UnboundedSender<(usize, Outcome)>) {
    for &i in indices {
        if !done[i] {
            let _ = out.send((i, no_answer(why.to_string())));
        }
    }
}

/// The outcome of a push service's verdict on one phone (`RefreshAuth` is the FCM transport's
/// to handle before this). A prune keeps a phone registered again after `now_ms`.
pub fn outcome_of(verdict: Verdict, now_ms: i64) -> Outcome {
    match verdict {
        Verdict::Delivered => Outcome::Delivered,
        Verdict::Retry { after, reason } => Outcome::Retry { reason: Reason::Other(reason), after },
        Verdict::Prune { reason } => Outcome::Prune { reason: Reason::Other(reason), since: Some(now_ms) },
        Verdict::RefreshAuth => {
            Outcome::Failed { reason: Reason::Credentials("401 access token refused".into()), status: 401 }
        }
        Verdict::Failed { reason, status, credentials: true } => {
            Outcome::Failed { reason: Reason::Credentials(reason), status }
        }
        Verdict::Failed { reason, status, credentials: false } => {
            Outcome::Failed { reason: Reason::Other(reason), status }
        }
    }
}

/// Distinct phones refused for our credentials, with no delivery between, before a transport
/// stops: one stray token or subscription made by another app (or another VAPID key) must not
/// stop every phone's pushes, but a wrong key refuses them all.
pub const STRIKES_TO_STOP: usize = 3;

/// When a transport stops because the push service refuses our credentials: after
/// [`STRIKES_TO_STOP`] phones in a row, or at once for a refusal that is not about a phone
/// (the OAuth token endpoint's). Stopped means every phone fails at once, without a request,
/// until a reload builds a new transport.
#[derive(Default)]
pub struct Guard {
    stopped: std::sync::Mutex<Option<Reason>>,
    strikes: std::sync::Mutex<std::collections::HashSet<i64>>,
}

impl Guard {
    pub fn stopped(&self) -> Option<Reason> {
        self.stopped.lock().expect("guard lock").clone()
    }

    /// Stops now; true if this stopped it.
    pub fn stop(&self, reason: Reason) -> bool {
        let mut s = self.stopped.lock().expect("guard lock");
        let first = s.is_none();
        if first {
            *s = Some(reason);
        }
        first
    }

    /// A phone refused for credentials; stops (true) at the [`STRIKES_TO_STOP`]th in a row.
    pub fn strike(&self, phone_id: i64, reason: &Reason) -> bool {
        let n = {
            let mut s = self.strikes.lock().expect("guard lock");
            s.insert(phone_id);
            s.len()
        };
        n >= STRIKES_TO_STOP && self.stop(reason.clone())
    }

    /// A delivery: the credentials work, so earlier refusals were about those phones.
    pub fn delivered(&self) {
        let mut s = self.strikes.lock().expect("guard lock");
        if !s.is_empty() {
            s.clear();
        }
    }

    /// What a stopped transport answers for every phone.
    pub fn refuse_all(
        &self,
        indices: impl Iterator<Item = usize>,
        out: &mpsc::UnboundedSender<(usize, Outcome)>,
    ) -> bool {
        let Some(reason) = self.stopped() else { return false };
        for i in indices {
            let _ = out.send((i, Outcome::Failed { reason: reason.clone(), status: 0 }));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transport_stops_after_three_phones_in_a_row_or_at_once() {
        let g = Guard::default();
        let r = Reason::Credentials("403".into());
        assert!(!g.strike(1, &r) && !g.strike(1, &r) && !g.strike(2, &r), "two distinct phones");
        g.delivered();
        assert!(!g.strike(3, &r) && !g.strike(4, &r));
        assert!(g.strike(5, &r), "three in a row");
        assert_eq!(g.stopped(), Some(r.clone()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert!(g.refuse_all([7, 8].into_iter(), &tx));
        assert!(matches!(rx.try_recv().unwrap(), (7, Outcome::Failed { .. })));
        let g = Guard::default();
        assert!(g.stop(r.clone()) && !g.stop(r));
    }

    #[test]
    fn verdicts_become_outcomes() {
        let o = outcome_of(Verdict::Prune { reason: "410 gone".into() }, 5);
        assert_eq!(o, Outcome::Prune { reason: Reason::Other("410 gone".into()), since: Some(5) });
        let o = outcome_of(Verdict::Failed { reason: "403 x".into(), status: 403, credentials: true }, 0);
        assert!(o.reason().unwrap().is_credentials());
        let after = Some(Duration::from_secs(3));
        let o = outcome_of(Verdict::Retry { after, reason: "429".into() }, 0);
        assert_eq!(o, Outcome::Retry { reason: Reason::Other("429".into()), after });
    }

    #[tokio::test]
    async fn fan_out_answers_every_item_and_stops_starting_at_stop() {
        let limits = HttpsSettings { h2_streams: 4, h1_connections: 2, ..Default::default() };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut done = vec![false; 10];
        let items = futures_util::stream::iter(0..10usize);
        fan_out(
            items,
            &limits,
            &CancellationToken::new(),
            |i| async move { (i, Outcome::Delivered, Some(http::Version::HTTP_11)) },
            &tx,
            &mut done,
        )
        .await;
        assert!(done.iter().all(|d| *d));
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 10);

        let stop = CancellationToken::new();
        stop.cancel();
        let mut done = vec![false; 3];
        fan_out(
            futures_util::stream::iter(0..3usize),
            &limits,
            &stop,
            |i| async move { (i, Outcome::Delivered, None) },
            &tx,
            &mut done,
        )
        .await;
        hand_back(&[0, 1, 2], &done, "not sent", &tx);
        let mut retries = 0;
        while let Ok((_, o)) = rx.try_recv() {
            retries += usize::from(matches!(o, Outcome::Retry { .. }));
        }
        assert_eq!(retries, 3);
    }
}
