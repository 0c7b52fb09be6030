//! Delivery of persisted ring jobs: send every pending phone, record outcomes in batched
//! transactions, retry what the push service (or the network) asked us to retry with
//! exponential backoff and jitter, never past the ring's expiry, and publish the ring's
//! outcome.
//!
//! A ring's phones are split by platform (and, for iPhones, by app topic); every share goes
//! out at the same time through its transport ([`Transports`]: APNs, FCM, Web Push) and is
//! retried on its own. The job and each phone's state are in SQLite before the first send
//! (see `store::rings`), so a crash leaves exactly the unanswered phones pending for the next
//! start. Talks to no push service itself: the transports do.

use crate::codec::apns_payload::ring_payload;
use crate::domain::{Message, Notice, Outcome, PhoneState, Platform, Reason, Target};
use crate::net::apns::binary::BinarySender;
use crate::net::apns::http2::Http2Client;
use crate::net::fcm::FcmClient;
use crate::net::webpush::WebPushClient;
use crate::service::metrics::{Metrics, TransportGauges};
use crate::service::publisher::Publisher;
pub use crate::store::rings::Latency;
use crate::store::rings::{OutcomeRow, PhoneOutcome, RingJob, RingSummary, Topics};
use crate::store::StoreHandle;
use rand::Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Outcomes are written when this many have arrived, or when [`FLUSH_EVERY`] has passed.
const BATCH: usize = 2048;
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// After a ring of at least this many phones, free memory is handed back to the system.
const TRIM_AFTER: usize = 10_000;
/// Rings with more phones than this publish counts only, not one line per phone.
const DETAIL_LIMIT: usize = 100;
/// First and longest wait before writing to a store that refused a write (busy, full).
const STORE_RETRY_MIN: Duration = Duration::from_millis(100);
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// What one delivery's rounds share: the retry policy it started with.
struct Round<'a> {
    retry: RetryPolicy,
    stop: &'a CancellationToken,
}

/// The phones of a ring that share a platform and, for iPhones, an app topic: their targets
/// and places in the job.
type Group = (Share, Arc<Vec<Target>>, Vec<i64>);

/// Which kind of phones a [`Group`] holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Share {
    /// iPhones of one app topic (`None`: `apns.topic`).
    Apns(Option<String>),
    Fcm,
    WebPush,
}

/// One share of a ring and the transport that sends it.
enum Route {
    Apns(Transport, Arc<Message>),
    Fcm(FcmClient, Arc<Notice>),
    WebPush(WebPushClient, Arc<Notice>),
    /// Phones of a platform this configuration has no transport for: each fails at once.
    Unconfigured(Platform),
}

impl Route {
    /// The platform of the phones it sends to (the metrics' `platform` label).
    fn platform(&self) -> Platform {
        match self {
            Route::Apns(..) => Platform::Apns,
            Route::Fcm(..) => Platform::Fcm,
            Route::WebPush(..) => Platform::Webpush,
            Route::Unconfigured(p) => *p,
        }
    }

    async fn send(
        &self,
        targets: Arc<Vec<Target>>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
        stop: &CancellationToken,
    ) {
        match self {
            Route::Apns(t, msg) => t.send(msg.clone(), targets, out, stop).await,
            Route::Fcm(c, notice) => c.send(notice.clone(), targets, out, stop).await,
            Route::WebPush(c, notice) => c.send(notice.clone(), targets, out, stop).await,
            Route::Unconfigured(p) => {
                for i in 0..targets.len() {
                    let _ = out.send((i, Outcome::Failed { reason: Reason::Unconfigured(*p), status: 0 }));
                }
            }
        }
    }
}

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
        out: mpsc::UnboundedSender<(usize, Outcome)>,
        stop: &CancellationToken,
    ) {
        match self {
            Transport::Http2(c) => c.send(msg, targets, out, stop).await,
            Transport::Binary(c) => c.send(msg, targets, out).await,
        }
    }
}

/// Exponential backoff with jitter, bounded by the ring's expiry. Pure: the caller sleeps.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { base: Duration::from_millis(100), max: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1-based), with `jitter` in `[0, 1)` taking up
    /// to half of it off; `None` when the retry would land past the ring's expiry, which is
    /// `remaining` away.
    pub fn delay(&self, attempt: u32, remaining: Duration, jitter: f64, hint: Option<Duration>) -> Option<Duration> {
        let exp = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(self.max);
        let d = exp.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0)).max(hint.unwrap_or_default());
        (d <= remaining).then_some(d)
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
    /// Press received -> first answer from a push service, and -> every phone answered.
    pub latency_ms: Latency,
    /// One line per phone, for rings of at most 100 phones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<PhoneOutcome>>,
}

#[derive(Clone)]
pub struct Outbox {
    store: StoreHandle,
    /// The transports and settings of new deliveries; a reload swaps them, and a delivery
    /// under way keeps the ones it started with.
    current: Arc<RwLock<(Transports, OutboxSettings)>>,
    /// Where ring outcomes are published (none in tools and some tests).
    publisher: Option<Publisher>,
    /// Where outcomes, retries and latencies are counted (the daemon's).
    metrics: Option<Arc<Metrics>>,
}

/// What one share of a delivery measures and counts as it goes.
struct Tally<'a> {
    latency: Latency,
    pending: &'a Pending,
}

/// A delivery's phones in the metrics' pending gauge: what is not settled by the end (the
/// ring expired, or the daemon stopped) is taken off when it ends, whichever way it ends.
/// Shared by the delivery's shares, which run at the same time.
struct Pending {
    metrics: Option<Arc<Metrics>>,
    left: AtomicUsize,
}

impl Pending {
    fn new(metrics: Option<Arc<Metrics>>, phones: usize) -> Pending {
        if let Some(m) = &metrics {
            m.delivery_started(phones);
        }
        Pending { metrics, left: AtomicUsize::new(phones) }
    }

    fn settled(&self, n: usize) {
        let Ok(before) = self.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| Some(l - n.min(l))) else {
            return;
        };
        if let Some(m) = &self.metrics {
            m.settled(n.min(before));
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.settled(*self.left.get_mut());
            m.delivery_ended();
        }
    }
}

impl Outbox {
    pub fn new(
        store: StoreHandle,
        transports: impl Into<Transports>,
        publisher: Option<Publisher>,
        settings: OutboxSettings,
    ) -> Outbox {
        Outbox { store, current: Arc::new(RwLock::new((transports.into(), settings))), publisher, metrics: None }
    }

    /// Counts outcomes, retries and latencies in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Outbox {
        self.metrics = Some(metrics);
        self
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

    /// Delivers one ring until every phone has a final answer, the ring expires, or `stop`
    /// (then the unanswered phones stay pending in the database for the next start).
    pub async fn deliver(&self, mut job: RingJob, stop: CancellationToken) -> Option<RingReport> {
        let (transports, settings) = self.current.read().expect("outbox lock").clone();
        let payload = match ring_payload(&job.doorbell_id, &job.doorbell_name, &job.ring_id, &settings.sound) {
            Ok(p) => p,
            Err(e) => {
                warn!(ring = %job.ring_id, error = %e, "payload too large: ring not sent");
                return None;
            }
        };
        let phones = std::mem::take(&mut job.phones);
        let groups = split(&phones);
        let pending = Pending::new(self.metrics.clone(), phones.len());
        drop(phones);
        if let Some(m) = &self.metrics {
            m.first_request(crate::domain::now_ms() - job.received_at);
        }
        let notice = Arc::new(Notice {
            ring_id: job.ring_id.as_str().into(),
            doorbell_id: job.doorbell_id.as_str().into(),
            doorbell_name: job.doorbell_name.as_str().into(),
            pressed_at: job.pressed_at,
            expires_at: job.expires_at,
        });
        let route = |share: Share| match share {
            Share::Apns(topic) => Route::Apns(
                transports.apns.clone(),
                Arc::new(Message {
                    topic: topic.map(Arc::from).unwrap_or_else(|| settings.topic.clone()),
                    payload: payload.clone(),
                    expiration: (job.expires_at / 1000).max(0) as u64,
                    collapse_id: job.doorbell_id.as_str().into(),
                    priority: 10,
                }),
            ),
            Share::Fcm => match &transports.fcm {
                Some(c) => Route::Fcm(c.clone(), notice.clone()),
                None => Route::Unconfigured(Platform::Fcm),
            },
            Share::WebPush => match &transports.webpush {
                Some(c) => Route::WebPush(c.clone(), notice.clone()),
                None => Route::Unconfigured(Platform::Webpush),
            },
        };
        // Every share at once, each retried on its own; the ring is done when all are.
        let round = Round { retry: settings.retry, stop: &stop };
        let shares = groups.into_iter().map(|(share, targets, seqs)| {
            let (route, job, round, pending) = (route(share), &job, &round, &pending);
            async move {
                let mut tally = Tally { latency: Latency::default(), pending };
                let settled = self.send_until_settled(job, &route, targets, seqs, round, &mut tally).await;
                (settled, tally.latency)
            }
        });
        let mut latency = Latency::default();
        let mut settled = true;
        for (ok, l) in futures_util::future::join_all(shares).await {
            settled &= ok;
            latency.first = match (latency.first, l.first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            latency.all = latency.all.max(l.all);
        }
        if !settled {
            return None; // stopping: the rest stays pending
        }
        let ring = job.ring_id.clone();
        let summary = self.persist(&job.ring_id, "close the ring", &stop, move || {
            let ring = ring.clone();
            move |s: &mut crate::store::Store| s.finish_ring(&ring, latency)
        });
        let summary = summary.await?;
        let results = if summary.phones as usize <= DETAIL_LIMIT {
            let ring = job.ring_id.clone();
            self.store.run(move |s| s.ring_phones(&ring, DETAIL_LIMIT)).await.ok()
        } else {
            None
        };
        let report = RingReport { summary, latency_ms: latency, results };
        if let Some(m) = &self.metrics {
            m.answers(latency.first, latency.all);
            m.ring_finished(report.summary.state);
        }
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
            Ok(summary) => {
                if let Some(m) = &self.metrics {
                    m.ring_finished(summary.state);
                }
                self.publish(&RingReport { summary, latency_ms: Latency::default(), results: None })
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

    /// Sends, records, and retries until nothing is left to retry. Returns false if stopped.
    async fn send_until_settled(
        &self,
        job: &RingJob,
        route: &Route,
        mut pending: Arc<Vec<Target>>,
        mut seqs: Vec<i64>,
        round: &Round<'_>,
        tally: &mut Tally<'_>,
    ) -> bool {
        let stop = round.stop;
        let mut attempt = 0u32;
        // The expiry on the runtime's clock, so waits and the deadline agree (and tests can
        // pause time).
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis((job.expires_at - crate::domain::now_ms()).max(0) as u64);
        while !pending.is_empty() {
            if stop.is_cancelled() {
                return false;
            }
            let targets = pending;
            let job_seqs = std::mem::take(&mut seqs);
            let (tx, mut rx) = mpsc::unbounded_channel();
            let send = route.send(targets.clone(), tx, stop);
            let record = async {
                let mut retry = Vec::new();
                let mut hint = None;
                let mut batch: Vec<OutcomeRow> = Vec::with_capacity(BATCH.min(targets.len()));
                let mut retry_seqs = Vec::new();
                let mut answered = false;
                // Which phones got an outcome: a phone the transport never answered for (a
                // bug, a panicked task) is retried, not left to expire unnoticed.
                let mut heard = vec![false; targets.len()];
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
                            if tally.latency.first.is_none() {
                                tally.latency.first = Some(crate::domain::now_ms() - job.received_at);
                            }
                            answered = true;
                            for (i, outcome) in got.drain(..) {
                                heard[i] = true;
                                match outcome {
                                    Outcome::Retry { after, ref reason } => {
                                        if let Some(m) = &self.metrics {
                                            m.retry(route.platform(), Some(reason));
                                        }
                                        hint = hint.max(after);
                                        retry.push(targets[i].clone());
                                        retry_seqs.push(job_seqs[i]);
                                    }
                                    outcome => batch.push(OutcomeRow {
                                        seq: job_seqs[i],
                                        phone_id: targets[i].phone_id,
                                        address: targets[i].address.clone(),
                                        outcome,
                                    }),
                                }
                            }
                            if batch.len() >= BATCH {
                                self.flush(&job.ring_id, &mut batch, tally.pending).await;
                            }
                        },
                        // cancel-safe: a missed tick only delays a flush
                        _ = tick.tick() => {
                            self.flush(&job.ring_id, &mut batch, tally.pending).await;
                        }
                    }
                }
                // The channel closes as the last answer is handed over: that moment is "all".
                if answered {
                    tally.latency.all = Some(crate::domain::now_ms() - job.received_at);
                }
                // What could not be written yet is written now, however long the store needs.
                let mut wait = STORE_RETRY_MIN;
                while !self.flush(&job.ring_id, &mut batch, tally.pending).await {
                    tokio::select! {
                        // cancel-safe: only a timer
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => break,
                    }
                    wait = (wait * 2).min(STORE_RETRY_MAX);
                }
                let unheard: Vec<usize> = heard.iter().enumerate().filter(|(_, h)| !**h).map(|(i, _)| i).collect();
                if !unheard.is_empty() {
                    warn!(ring = %job.ring_id, phones = unheard.len(), "the transport gave no outcome for some phones: retrying them");
                    for i in unheard {
                        retry.push(targets[i].clone());
                        retry_seqs.push(job_seqs[i]);
                    }
                }
                (retry, retry_seqs, hint)
            };
            let ((), (retry, retry_seqs, hint)) = tokio::join!(send, record);
            // Backoff grows only while rounds settle nothing: a round that answered some
            // phones (say, a connection that drops now and then) retries the rest promptly.
            let progressed = retry.len() < targets.len();
            drop(targets);
            pending = Arc::new(retry);
            seqs = retry_seqs;
            if pending.is_empty() {
                break;
            }
            attempt = if progressed { 1 } else { attempt + 1 };
            let jitter = rand::thread_rng().gen::<f64>();
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(wait) = round.retry.delay(attempt, remaining, jitter, hint) else {
                warn!(ring = %job.ring_id, phones = pending.len(), "ring expires before another retry: giving up on the rest");
                if let Some(m) = &self.metrics {
                    for t in pending.iter() {
                        m.notification(t.platform(), t.environment(), PhoneState::Expired, Some(&Reason::Expired));
                    }
                }
                tally.pending.settled(pending.len());
                break; // finish_ring marks them expired
            };
            warn!(ring = %job.ring_id, phones = pending.len(), attempt, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return false,
            }
        }
        true
    }

    /// Counts recorded outcomes in the metrics, each under its phone's platform.
    fn count(&self, rows: &[OutcomeRow], kept: &[i64]) {
        let Some(m) = &self.metrics else { return };
        for row in rows {
            let state = match row.outcome.state() {
                PhoneState::Pruned if kept.contains(&row.phone_id) => PhoneState::Failed,
                s => s,
            };
            m.notification(row.address.platform(), row.address.environment(), state, row.outcome.reason());
        }
    }

    /// Writes `batch`; false if the store refused it (then `batch` keeps it for the next try).
    /// What is written is counted: each phone's outcome as the store recorded it (a prune of a
    /// phone registered again is a failure).
    async fn flush(&self, ring_id: &str, batch: &mut Vec<OutcomeRow>, pending: &Pending) -> bool {
        if batch.is_empty() {
            return true;
        }
        let items = Arc::new(std::mem::take(batch));
        let ring = ring_id.to_string();
        let n = items.len();
        let shared = items.clone();
        match self.store.run(move |s| s.record_outcomes(&ring, &shared)).await {
            Ok(r) => {
                if r.pruned + r.kept > 0 {
                    info!(ring = %ring_id, pruned = r.pruned, kept_reregistered = r.kept, "stale tokens handled");
                }
                self.count(&items, &r.kept_phones);
                pending.settled(n);
                true
            }
            Err(e) => {
                if let Some(m) = &self.metrics {
                    m.outbox_store_fault();
                }
                warn!(ring = %ring_id, outcomes = n, error = %e, "cannot record outcomes yet: kept for the next try");
                *batch = Arc::try_unwrap(items).unwrap_or_else(|a| (*a).clone());
                false
            }
        }
    }
}

/// A ring's phones by share: one group per platform, and per app topic for iPhones (nearly
/// always one). A ring of one share hands the job's targets over as they are, shared, not
/// copied: a 120,000-phone ring holds each token once.
fn split(phones: &crate::store::rings::Recipients) -> Vec<Group> {
    let topic_of = |seq: usize| match &phones.topics {
        Topics::Same(t) => t.clone(),
        Topics::PerPhone(ts) => ts[seq].clone(),
    };
    let share_of = |seq: usize, t: &Target| match t.platform() {
        Platform::Apns => Share::Apns(topic_of(seq)),
        Platform::Fcm => Share::Fcm,
        Platform::Webpush => Share::WebPush,
    };
    let Some(first) = phones.targets.first() else { return Vec::new() };
    let one = share_of(0, first);
    let same_platform = phones.targets.iter().all(|t| t.platform() == first.platform());
    if same_platform && (first.platform() != Platform::Apns || matches!(phones.topics, Topics::Same(_))) {
        return vec![(one, phones.targets.clone(), (0..phones.len() as i64).collect())];
    }
    let mut by_share: HashMap<Share, (Vec<Target>, Vec<i64>)> = HashMap::new();
    for (seq, t) in phones.targets.iter().enumerate() {
        let (targets, seqs) = by_share.entry(share_of(seq, t)).or_default();
        seqs.push(seq as i64);
        targets.push(t.clone());
    }
    by_share.into_iter().map(|(share, (targets, seqs))| (share, Arc::new(targets), seqs)).collect()
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

    #[test]
    fn backoff_grows_is_jittered_and_respects_expiry() {
        let p = RetryPolicy::default();
        let minute = Duration::from_secs(60);
        assert_eq!(p.delay(1, minute, 0.0, None), Some(Duration::from_millis(100)));
        assert_eq!(p.delay(2, minute, 0.0, None), Some(Duration::from_millis(200)));
        assert_eq!(p.delay(4, minute, 0.0, None), Some(Duration::from_millis(800)));
        assert_eq!(p.delay(4, minute, 1.0, None), Some(Duration::from_millis(400)));
        assert_eq!(p.delay(30, 10 * minute, 0.0, None), Some(Duration::from_secs(30)));
        // Apple's hint wins when longer.
        assert_eq!(p.delay(1, minute, 0.0, Some(Duration::from_secs(2))), Some(Duration::from_secs(2)));
        // Never past expiry.
        assert_eq!(p.delay(10, Duration::from_secs(1), 0.0, None), None);
    }
}
