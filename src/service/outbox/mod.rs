//! Delivery of persisted ring jobs: send every pending phone, record outcomes in batched
//! transactions, retry what Apple (or the network) asked us to retry with exponential
//! backoff and jitter, never past the ring's expiry, and publish the ring's outcome.
//!
//! The job and each phone's state are in SQLite before the first send (see `store::rings`),
//! so a crash leaves exactly the unanswered phones pending for the next start. Talks to no
//! APNs server itself: a [`Transport`] does.

use crate::codec::apns_payload::ring_payload;
use crate::domain::{Message, Outcome, Target};
use crate::net::apns::binary::BinarySender;
use crate::net::apns::http2::Http2Client;
use crate::service::publisher::Publisher;
use crate::store::rings::{PhoneOutcome, RingJob, RingSummary, Topics};
use crate::store::StoreHandle;
use rand::Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod round;
pub use round::RetryPolicy;
use round::{Next, Retries, Round};

/// Outcomes are written when [`round::BATCH`] have arrived, or when this much time has passed.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// After a ring of at least this many phones, free memory is handed back to the system.
const TRIM_AFTER: usize = 10_000;
/// Rings with more phones than this publish counts only, not one line per phone.
const DETAIL_LIMIT: usize = 100;
/// First and longest wait before writing to a store that refused a write (busy, full).
const STORE_RETRY_MIN: Duration = Duration::from_millis(100);
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// What one delivery's rounds share: the transport and retry policy it started with.
struct Sending<'a> {
    transport: &'a Transport,
    retry: RetryPolicy,
    stop: &'a CancellationToken,
}

/// The phones of a ring that share an app topic: their targets and places in the job.
type TopicGroup = (Option<String>, Arc<Vec<Target>>, Vec<i64>);

/// The APNs transport a daemon runs with.
#[derive(Clone)]
pub enum Transport {
    Http2(Http2Client),
    /// The legacy binary provider protocol (`apns.transport = "binary"`).
    Binary(BinarySender),
}

impl Transport {
    /// The credentials problem that stopped the transport, if any.
    pub fn stopped(&self) -> Option<crate::domain::Reason> {
        match self {
            Transport::Http2(c) => c.stopped(),
            Transport::Binary(_) => None,
        }
    }

    /// Sends to every target; after `stop`, nothing new is started and what was not started
    /// comes back as a retry (the outbox then leaves it pending for the next start).
    async fn send(
        &self,
        msg: Arc<Message>,
        targets: Arc<Vec<Target>>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
        stop: &CancellationToken,
    ) {
        match self {
            Transport::Http2(c) => c.send(msg, targets, out, stop).await,
            Transport::Binary(c) => c.send(msg, targets, out).await,
        }
    }
}

/// What the outbox needs from the configuration.
#[derive(Clone)]
pub struct OutboxSettings {
    pub topic: Arc<str>,
    pub sound: String,
    pub retry: RetryPolicy,
}

/// A ring's published outcome (`P/ring/<id>`).
#[derive(Debug, Serialize)]
pub struct RingReport {
    #[serde(flatten)]
    pub summary: RingSummary,
    /// Press received -> first answer from APNs, and -> every phone answered.
    pub latency_ms: Latency,
    /// One line per phone, for rings of at most 100 phones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<PhoneOutcome>>,
}

#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct Latency {
    pub first: Option<i64>,
    pub all: Option<i64>,
}

#[derive(Clone)]
pub struct Outbox {
    store: StoreHandle,
    /// The transport and settings of new deliveries; a reload swaps them, and a delivery
    /// under way keeps the ones it started with.
    current: Arc<RwLock<(Transport, OutboxSettings)>>,
    /// Where ring outcomes are published (none in tools and some tests).
    publisher: Option<Publisher>,
}

impl Outbox {
    pub fn new(
        store: StoreHandle,
        transport: Transport,
        publisher: Option<Publisher>,
        settings: OutboxSettings,
    ) -> Outbox {
        Outbox { store, current: Arc::new(RwLock::new((transport, settings))), publisher }
    }

    /// The transport new deliveries use.
    pub fn transport(&self) -> Transport {
        self.current.read().expect("outbox lock").0.clone()
    }

    /// Replaces the transport and settings for deliveries started from now on (a reload).
    pub fn replace(&self, transport: Transport, settings: OutboxSettings) {
        *self.current.write().expect("outbox lock") = (transport, settings);
    }

    /// Delivers one ring until every phone has a final answer, the ring expires, or `stop`
    /// (then the unanswered phones stay pending in the database for the next start).
    pub async fn deliver(&self, mut job: RingJob, stop: CancellationToken) -> Option<RingReport> {
        let (transport, settings) = self.current.read().expect("outbox lock").clone();
        let payload = match ring_payload(&job.doorbell_id, &job.doorbell_name, &job.ring_id, &settings.sound) {
            Ok(p) => p,
            Err(e) => {
                warn!(ring = %job.ring_id, error = %e, "payload too large: ring not sent");
                return None;
            }
        };
        // One message per app topic (nearly always one). The job's targets go to the
        // transport as they are, shared, not copied: a 120,000-phone ring holds each token once.
        let phones = std::mem::take(&mut job.phones);
        let groups: Vec<TopicGroup> = match &phones.topics {
            Topics::Same(topic) => vec![(topic.clone(), phones.targets.clone(), (0..phones.len() as i64).collect())],
            Topics::PerPhone(topics) => {
                let mut by_topic: HashMap<Option<String>, (Vec<Target>, Vec<i64>)> = HashMap::new();
                for (seq, (t, topic)) in phones.targets.iter().zip(topics.iter()).enumerate() {
                    let (targets, seqs) = by_topic.entry(topic.clone()).or_default();
                    seqs.push(seq as i64);
                    targets.push(t.clone());
                }
                by_topic.into_iter().map(|(topic, (targets, seqs))| (topic, Arc::new(targets), seqs)).collect()
            }
        };
        drop(phones);
        let mut latency = Latency::default();
        for (topic, targets, seqs) in groups {
            let msg = Arc::new(Message {
                topic: topic.map(Arc::from).unwrap_or_else(|| settings.topic.clone()),
                payload: payload.clone(),
                expiration: (job.expires_at / 1000).max(0) as u64,
                collapse_id: job.doorbell_id.as_str().into(),
                priority: 10,
            });
            let sending = Sending { transport: &transport, retry: settings.retry, stop: &stop };
            if !self.send_until_settled(&job, msg, targets, seqs, &sending, &mut latency).await {
                return None; // stopping: the rest stays pending
            }
        }
        let ring = job.ring_id.clone();
        let summary = self.persist(&job.ring_id, "close the ring", &stop, move || {
            let ring = ring.clone();
            move |s: &mut crate::store::Store| s.finish_ring(&ring)
        });
        let summary = summary.await?;
        let results = if summary.phones as usize <= DETAIL_LIMIT {
            let ring = job.ring_id.clone();
            self.store.run(move |s| s.ring_phones(&ring, DETAIL_LIMIT)).await.ok()
        } else {
            None
        };
        let report = RingReport { summary, latency_ms: latency, results };
        info!(
            ring = %job.ring_id, doorbell = %job.doorbell_id, phones = report.summary.phones, delivered = report.summary.delivered,
            failed = report.summary.failed, pruned = report.summary.pruned, expired = report.summary.expired,
            first_ms = latency.first, all_ms = latency.all, "ring done"
        );
        self.publish(&report);
        if report.summary.phones as usize >= TRIM_AFTER {
            crate::domain::mem::release_free_memory();
        }
        Some(report)
    }

    /// Publishes the outcome of a ring that expired before it could be sent.
    pub async fn report_expired(&self, ring_id: &str) {
        let ring = ring_id.to_string();
        match self.store.run(move |s| s.ring_summary(&ring)).await {
            Ok(summary) => self.publish(&RingReport { summary, latency_ms: Latency::default(), results: None }),
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

    /// Sends, records, and retries until nothing is left to retry. Returns false if stopped.
    /// The accounting is [`Round`]'s and the retry decisions [`Retries`]'; this only does the
    /// I/O: the transport, the store, the clock.
    async fn send_until_settled(
        &self,
        job: &RingJob,
        msg: Arc<Message>,
        targets: Arc<Vec<Target>>,
        seqs: Vec<i64>,
        sending: &Sending<'_>,
        latency: &mut Latency,
    ) -> bool {
        let stop = sending.stop;
        let mut retries = Retries::new(sending.retry);
        // The expiry on the runtime's clock, so waits and the deadline agree (and tests can
        // pause time).
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis((job.expires_at - crate::domain::now_ms()).max(0) as u64);
        if targets.is_empty() {
            return true;
        }
        let mut round = Round::new(targets, seqs);
        loop {
            if stop.is_cancelled() {
                return false;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let send = sending.transport.send(msg.clone(), round.targets().clone(), tx, stop);
            let ((), ()) = tokio::join!(send, self.record(job, &mut round, rx, stop, latency));
            let end = round.end();
            if end.unheard > 0 {
                warn!(ring = %job.ring_id, phones = end.unheard, "the transport gave no outcome for some phones: retrying them");
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let jitter = rand::thread_rng().gen::<f64>();
            match retries.after(&end, remaining, jitter) {
                Next::Done => return true,
                Next::GiveUp => {
                    warn!(ring = %job.ring_id, phones = end.retry.len(), "ring expires before another retry: giving up on the rest");
                    return true; // finish_ring marks them expired
                }
                Next::Retry { wait, attempt } => {
                    warn!(ring = %job.ring_id, phones = end.retry.len(), attempt, wait_ms = wait.as_millis() as u64, "retrying");
                    tokio::select! {
                        // cancel-safe: only a timer
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => return false,
                    }
                }
            }
            round = Round::new(end.retry, end.seqs);
        }
    }

    /// Takes one round's outcomes as the transport hands them over and records them in
    /// batches, until the transport is done; then writes what is left, however long the
    /// store needs (unless stopping).
    async fn record(
        &self,
        job: &RingJob,
        round: &mut Round,
        mut rx: mpsc::UnboundedReceiver<(usize, Outcome)>,
        stop: &CancellationToken,
        latency: &mut Latency,
    ) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        // Answers are taken up to 256 at a time: one wake-up of this task per burst.
        let mut got = Vec::with_capacity(256);
        loop {
            tokio::select! {
                // cancel-safe: recv_many() loses no message when another arm wins
                n = rx.recv_many(&mut got, 256) => {
                    if n == 0 {
                        break;
                    }
                    if latency.first.is_none() {
                        latency.first = Some(crate::domain::now_ms() - job.received_at);
                    }
                    for (i, outcome) in got.drain(..) {
                        round.on_outcome(i, outcome);
                    }
                    if round.batch_full() {
                        self.flush(&job.ring_id, round).await;
                    }
                },
                // cancel-safe: a missed tick only delays a flush
                _ = tick.tick() => {
                    self.flush(&job.ring_id, round).await;
                }
            }
        }
        // The channel closes as the last answer is handed over: that moment is "all".
        if round.answered() {
            latency.all = Some(crate::domain::now_ms() - job.received_at);
        }
        let mut wait = STORE_RETRY_MIN;
        while !self.flush(&job.ring_id, round).await {
            tokio::select! {
                // cancel-safe: only a timer
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => break,
            }
            wait = (wait * 2).min(STORE_RETRY_MAX);
        }
    }

    /// Writes the round's unwritten outcomes; false if the store refused them (then the round
    /// keeps them for the next try).
    async fn flush(&self, ring_id: &str, round: &mut Round) -> bool {
        if round.unwritten() == 0 {
            return true;
        }
        let items = Arc::new(round.take_rows());
        let ring = ring_id.to_string();
        let n = items.len();
        let shared = items.clone();
        match self.store.run(move |s| s.record_outcomes(&ring, &shared)).await {
            Ok(r) if r.pruned + r.kept > 0 => {
                info!(ring = %ring_id, pruned = r.pruned, kept_reregistered = r.kept, "stale tokens handled");
                true
            }
            Ok(_) => true,
            Err(e) => {
                warn!(ring = %ring_id, outcomes = n, error = %e, "cannot record outcomes yet: kept for the next try");
                round.keep_rows(Arc::try_unwrap(items).unwrap_or_else(|a| (*a).clone()));
                false
            }
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
            OutboxSettings { topic: "t".into(), sound: "default".into(), retry: RetryPolicy::default() },
        );
        let t0 = tokio::time::Instant::now();
        let report = outbox.deliver(job, CancellationToken::new()).await.unwrap();
        let waited = t0.elapsed();
        assert_eq!((report.summary.expired, report.summary.delivered), (1, 0));
        // It kept trying for most of the expiry, and never past it.
        assert!(waited > Duration::from_secs(200) && waited <= Duration::from_secs(300), "{waited:?}");
    }
}
