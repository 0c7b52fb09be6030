//! Delivery of persisted ring jobs: send every pending phone, record outcomes in batched
//! transactions, retry what the push service (or the network) asked us to retry with
//! exponential backoff and jitter, never past the ring's expiry, and publish the ring's
//! outcome.
//!
//! A ring's phones are split by platform (and, for iPhones, by app topic); every share goes
//! out at the same time through its transport ([`Transports`]: APNs, FCM, Web Push) and is
//! retried on its own. The job and each phone's state are in SQLite before the first send
//! (see `store::rings`), so a crash leaves exactly the unanswered phones pending for the next
//! start. Talks to no push service itself: the transports do. The delivery's I/O is in
//! `send`, its accounting in `round` (pure).

use crate::domain::timing::{SendTiming, TimingReport};
use crate::domain::{Environment, Message, Outcome, Platform, Reason, RingTiming, Target};
use crate::net::apns::binary::BinarySender;
use crate::net::apns::http2::Http2Client;
use crate::net::fcm::FcmClient;
use crate::net::webpush::WebPushClient;
use crate::service::metrics::{Metrics, TransportGauges};
use crate::service::publisher::Publisher;
pub use crate::store::rings::Latency;
use crate::store::rings::{PhoneOutcome, RingSummary};
use crate::store::StoreHandle;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

mod answer;
mod round;
mod send;
pub use answer::Wave;
pub use round::RetryPolicy;

/// Outcomes are written when [`round::BATCH`] have arrived, or when this much time has passed.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// After a ring of at least this many phones, free memory is handed back to the system.
const TRIM_AFTER: usize = 10_000;
/// Rings with more phones than this publish counts only, not one line per phone.
const DETAIL_LIMIT: usize = 100;
/// First and longest wait before writing to a store that refused a write (busy, full).
const STORE_RETRY_MIN: Duration = Duration::from_millis(100);
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Every push transport a daemon runs with: APNs always, FCM and Web Push when configured.
#[derive(Clone)]
pub struct Transports {
    pub apns: Transport,
    pub fcm: Option<FcmClient>,
    pub webpush: Option<WebPushClient>,
}

impl From<Transport> for Transports {
    fn from(apns: Transport) -> Transports {
        Transports { apns, fcm: None, webpush: None }
    }
}

impl Transports {
    /// The transports stopped by a refusal of our credentials, with the reason.
    pub fn stopped(&self) -> Vec<(Platform, Reason)> {
        let mut v = Vec::new();
        if let Some(r) = self.apns.stopped() {
            v.push((Platform::Apns, r));
        }
        if let Some(r) = self.fcm.as_ref().and_then(FcmClient::stopped) {
            v.push((Platform::Fcm, r));
        }
        if let Some(r) = self.webpush.as_ref().and_then(WebPushClient::stopped) {
            v.push((Platform::Webpush, r));
        }
        v
    }
}

/// The APNs transport a daemon runs with.
#[derive(Clone)]
pub enum Transport {
    Http2(Http2Client),
    /// The legacy binary provider protocol (`apns.transport = "binary"`).
    Binary(BinarySender),
}

impl Transport {
    /// Gets connections ready for a ring of about `phones` phones in `env` (the HTTP/2
    /// client's pool; the legacy protocol connects per ring).
    pub fn prepare(&self, env: Environment, phones: usize) {
        if let Transport::Http2(c) = self {
            c.prepare(env, c.width(phones));
        }
    }

    /// The credentials problem that stopped the transport, if any.
    pub fn stopped(&self) -> Option<crate::domain::Reason> {
        match self {
            Transport::Http2(c) => c.stopped(),
            Transport::Binary(_) => None,
        }
    }

    /// Its state for the metrics. The legacy sender holds no connection between rings.
    pub fn gauges(&self) -> TransportGauges {
        match self {
            Transport::Http2(c) => TransportGauges {
                connections: c.open_connections(),
                jwt_age_secs: c.jwt_age_secs(),
                stopped: c.stopped().is_some(),
            },
            Transport::Binary(_) => TransportGauges::default(),
        }
    }

    /// Sends to every target; after `stop`, nothing new is started and what was not started
    /// comes back as a retry (the outbox then leaves it pending for the next start).
    async fn send(
        &self,
        msg: Arc<Message>,
        targets: Arc<Vec<Target>>,
        range: std::ops::Range<usize>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
        stop: &CancellationToken,
    ) -> SendTiming {
        match self {
            Transport::Http2(c) => c.send_range(msg, targets, range, out, stop).await,
            Transport::Binary(c) => {
                c.send_range(msg, targets, range, out).await;
                SendTiming::default()
            }
        }
    }
}

/// What the outbox needs from the configuration.
#[derive(Clone)]
pub struct OutboxSettings {
    pub topic: Arc<str>,
    /// The environment of most phones (`apns.environment`): connections are kept ready there.
    pub environment: Environment,
    pub sound: String,
    pub retry: RetryPolicy,
    /// `[gateway] timezone`: where quiet hours are local time.
    pub timezone: jiff::tz::TimeZone,
}

/// A ring's published outcome (`P/ring/<id>`).
#[derive(Debug, Serialize)]
pub struct RingReport {
    #[serde(flatten)]
    pub summary: RingSummary,
    /// Press received -> first answer from APNs, and -> every phone answered.
    pub latency_ms: Latency,
    /// Where the ring's time went, stage by stage (µs after the press was received).
    pub timing_us: TimingReport,
    /// One line per phone, for rings of at most 100 phones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<PhoneOutcome>>,
    /// Once someone answered: the replacement wave that quieted the other phones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<Wave>,
}

#[derive(Clone)]
pub struct Outbox {
    store: StoreHandle,
    /// The transports and settings of new deliveries; a reload swaps them, and a delivery
    /// under way keeps the ones it started with.
    current: Arc<RwLock<(Transports, OutboxSettings)>>,
    /// Where ring outcomes are published (none in tools and some tests).
    publisher: Option<Publisher>,
    /// How many phones the widest ring to expect reaches: connections for it are kept ready.
    expected: Arc<AtomicUsize>,
    /// Where outcomes, retries and latencies are counted (the daemon's).
    metrics: Option<Arc<Metrics>>,
}

impl Outbox {
    pub fn new(
        store: StoreHandle,
        transports: impl Into<Transports>,
        publisher: Option<Publisher>,
        settings: OutboxSettings,
    ) -> Outbox {
        Outbox {
            store,
            current: Arc::new(RwLock::new((transports.into(), settings))),
            publisher,
            expected: Arc::new(AtomicUsize::new(1)),
            metrics: None,
        }
    }

    /// Counts outcomes, retries and latencies in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Outbox {
        self.metrics = Some(metrics);
        self
    }

    /// A ring of `phones` phones is to be expected (the widest seen is kept).
    pub fn expect(&self, phones: usize) {
        self.expected.fetch_max(phones, Ordering::Relaxed);
    }

    /// Gets the transport ready for the widest ring to expect: called when a press arrives
    /// (its ring is recorded meanwhile) and at start-up, so that connections are open, and
    /// checked if they sat idle, before the first request.
    pub fn prepare(&self) {
        let (transports, settings) = self.current.read().expect("outbox lock").clone();
        transports.apns.prepare(settings.environment, self.expected.load(Ordering::Relaxed));
    }

    /// The APNs transport new deliveries use.
    pub fn transport(&self) -> Transport {
        self.current.read().expect("outbox lock").0.apns.clone()
    }

    /// Every transport new deliveries use.
    pub fn transports(&self) -> Transports {
        self.current.read().expect("outbox lock").0.clone()
    }

    /// Replaces the transports and settings for deliveries started from now on (a reload).
    pub fn replace(&self, transports: impl Into<Transports>, settings: OutboxSettings) {
        *self.current.write().expect("outbox lock") = (transports.into(), settings);
    }

    /// Publishes the outcome of a ring that expired before it could be sent.
    pub async fn report_expired(&self, ring_id: &str) {
        let ring = ring_id.to_string();
        match self.store.run(move |s| s.ring_summary(&ring)).await {
            Ok(summary) => {
                if let Some(m) = &self.metrics {
                    m.ring_finished(summary.state);
                }
                self.publish(&RingReport {
                    summary,
                    latency_ms: Latency::default(),
                    timing_us: RingTiming::received_at(crate::domain::now_us()).report(),
                    results: None,
                    answer: None,
                })
            }
            Err(e) => warn!(ring = %ring_id, error = %e, "cannot read the expired ring"),
        }
    }

    /// Publishes a ring's outcome on `P/ring/<id>`.
    pub fn publish(&self, report: &RingReport) {
        if let Some(p) = &self.publisher {
            let json = serde_json::to_string(report).unwrap_or_default();
            p.event(p.topic(&format!("ring/{}", report.summary.ring_id)), json);
        }
    }

    /// Runs a store write until it succeeds: a busy, locked or full database delays the
    /// ring's record, it does not lose it. `None` only when stopping (the ring then stays
    /// pending in the database for the next start).
    async fn persist<T, F, G>(&self, ring: &str, what: &str, stop: &CancellationToken, make: G) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut crate::store::Store) -> crate::store::Result<T> + Send + 'static,
        G: Fn() -> F,
    {
        let mut wait = STORE_RETRY_MIN;
        loop {
            match self.store.run(make()).await {
                Ok(v) => return Some(v),
                Err(e) => {
                    warn!(ring = %ring, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot {what}: retrying")
                }
            }
            tokio::select! {
                // cancel-safe: only a timer
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return None,
            }
            wait = (wait * 2).min(STORE_RETRY_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Environment;
    use crate::net::apns::http2::{Credentials, Http2Settings};
    use crate::store::rings::{Press, RingStart};
    use crate::store::Store;

    /// APNs unreachable (connection refused): the ring is retried with growing waits until
    /// its expiry, then its phones are marked expired. Time is paused: the five minutes of
    /// backoff pass instantly and deterministically.
    #[tokio::test(start_paused = true)]
    async fn retries_back_off_until_the_ring_expires() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("d.db")).unwrap();
        store.add_user("a").unwrap();
        store.add_doorbell("front", None, "a").unwrap();
        store.add_phone("a", &"ab".repeat(32), Environment::Production, None, None).unwrap();
        let now = crate::domain::now_ms();
        let press = Press {
            ring_id: "r",
            doorbell_id: "front",
            doorbell_name: "front",
            pressed_at: now,
            received_at: now,
            recorded_at: now,
            expiry_ms: 300_000,
            debounce_ms: 0,
            read_later: false,
        };
        let RingStart::Created(job) = store.create_ring(&press).unwrap() else { panic!() };
        let store = StoreHandle::spawn(store);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let key = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
        let client = Http2Client::new(
            Credentials::Token(Arc::new(crate::net::apns::auth::JwtMinter::new(key, "KEYID12345", "TEAMID1234"))),
            Http2Settings {
                endpoint: Some(("127.0.0.1".into(), closed)),
                ca_file: None,
                max_streams: 10,
                max_connections: 1,
                request_timeout: Duration::from_secs(10),
                topic: "t".into(),
            },
        )
        .unwrap();
        let outbox = Outbox::new(
            store.clone(),
            Transport::Http2(client),
            None,
            OutboxSettings {
                topic: "t".into(),
                environment: Environment::Production,
                sound: "default".into(),
                retry: RetryPolicy::default(),
                timezone: jiff::tz::TimeZone::UTC,
            },
        );
        let t0 = tokio::time::Instant::now();
        let report = outbox.deliver(job, RingTiming::default(), CancellationToken::new()).await.unwrap();
        let waited = t0.elapsed();
        assert_eq!((report.summary.expired, report.summary.delivered), (1, 0));
        // It kept trying for most of the expiry, and never past it.
        assert!(waited > Duration::from_secs(200) && waited <= Duration::from_secs(300), "{waited:?}");
    }
}
