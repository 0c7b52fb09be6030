//! Delivery of persisted ring jobs: send every pending phone, record outcomes in batched
//! transactions, retry what Apple (or the network) asked us to retry with exponential
//! backoff and jitter, never past the ring's expiry, and publish the ring's outcome.
//!
//! The job and each phone's state are in SQLite before the first send (see `store::rings`),
//! so a crash leaves exactly the unanswered phones pending for the next start. Talks to no
//! APNs server itself: a [`Transport`] does.

use crate::apns::binary::BinarySender;
use crate::apns::http2::Http2Client;
use crate::apns::{ring_payload, Message, Outcome, Target};
use crate::mqtt::MqttHandle;
use crate::store::rings::{PhoneOutcome, RingJob, RingSummary};
use crate::store::StoreHandle;
use rand::Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Outcomes are written when this many have arrived, or when [`FLUSH_EVERY`] has passed.
const BATCH: usize = 2048;
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Rings with more phones than this publish counts only, not one line per phone.
const DETAIL_LIMIT: usize = 100;

/// The APNs transport a daemon runs with.
#[derive(Clone)]
pub enum Transport {
    Http2(Http2Client),
    /// The legacy binary provider protocol (`apns.transport = "binary"`).
    Binary(BinarySender),
}

impl Transport {
    async fn send(&self, msg: Arc<Message>, targets: Arc<[Target]>, out: mpsc::UnboundedSender<(usize, Outcome)>) {
        match self {
            Transport::Http2(c) => c.send(msg, targets, out).await,
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
    /// to half of it off; `None` when the retry would land past `expires_at` (ms).
    pub fn delay(
        &self,
        attempt: u32,
        now_ms: i64,
        expires_at: i64,
        jitter: f64,
        hint: Option<Duration>,
    ) -> Option<Duration> {
        let exp = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(self.max);
        let d = exp.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0)).max(hint.unwrap_or_default());
        (now_ms + d.as_millis() as i64 <= expires_at).then_some(d)
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
    transport: Transport,
    mqtt: Option<MqttHandle>,
    settings: OutboxSettings,
}

impl Outbox {
    pub fn new(store: StoreHandle, transport: Transport, mqtt: Option<MqttHandle>, settings: OutboxSettings) -> Outbox {
        Outbox { store, transport, mqtt, settings }
    }

    /// Delivers one ring until every phone has a final answer, the ring expires, or `stop`
    /// (then the unanswered phones stay pending in the database for the next start).
    pub async fn deliver(&self, job: RingJob, stop: CancellationToken) -> Option<RingReport> {
        let payload = match ring_payload(&job.doorbell_id, &job.doorbell_name, &job.ring_id, &self.settings.sound) {
            Ok(p) => p,
            Err(e) => {
                warn!(ring = %job.ring_id, error = %e, "payload too large: ring not sent");
                return None;
            }
        };
        // One message per app topic (nearly always one).
        let mut groups: HashMap<Option<String>, Vec<Target>> = HashMap::new();
        for p in &job.phones {
            groups.entry(p.topic.clone()).or_default().push(Target {
                phone_id: p.phone_id,
                token: p.token.as_str().into(),
                environment: p.environment,
            });
        }
        let mut latency = Latency::default();
        for (topic, targets) in groups {
            let msg = Arc::new(Message {
                topic: topic.map(Arc::from).unwrap_or_else(|| self.settings.topic.clone()),
                payload: payload.clone(),
                expiration: (job.expires_at / 1000).max(0) as u64,
                collapse_id: job.doorbell_id.as_str().into(),
                priority: 10,
            });
            if !self.send_until_settled(&job, msg, targets, &stop, &mut latency).await {
                return None; // stopping: the rest stays pending
            }
        }
        let ring = job.ring_id.clone();
        let summary = match self.store.run(move |s| s.finish_ring(&ring)).await {
            Ok(s) => s,
            Err(e) => {
                warn!(ring = %job.ring_id, error = %e, "cannot close the ring");
                return None;
            }
        };
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
        self.publish(&report).await;
        Some(report)
    }

    /// Publishes a ring's outcome on `P/ring/<id>`.
    pub async fn publish(&self, report: &RingReport) {
        if let Some(mqtt) = &self.mqtt {
            let json = serde_json::to_string(report).unwrap_or_default();
            if let Err(e) = mqtt.publish(&format!("ring/{}", report.summary.ring_id), json, false).await {
                warn!(ring = %report.summary.ring_id, error = %e, "cannot publish the ring outcome");
            }
        }
    }

    /// Sends, records, and retries until nothing is left to retry. Returns false if stopped.
    async fn send_until_settled(
        &self,
        job: &RingJob,
        msg: Arc<Message>,
        mut pending: Vec<Target>,
        stop: &CancellationToken,
        latency: &mut Latency,
    ) -> bool {
        let mut attempt = 0u32;
        while !pending.is_empty() {
            if stop.is_cancelled() {
                return false;
            }
            let targets: Arc<[Target]> = pending.into();
            let (tx, mut rx) = mpsc::unbounded_channel();
            let send = self.transport.send(msg.clone(), targets.clone(), tx);
            let record = async {
                let mut retry = Vec::new();
                let mut hint = None;
                let mut batch: Vec<(String, Outcome)> = Vec::with_capacity(BATCH.min(targets.len()));
                let mut tick = tokio::time::interval(FLUSH_EVERY);
                loop {
                    tokio::select! {
                        // cancel-safe: recv() loses no message when another arm wins
                        got = rx.recv() => match got {
                            Some((i, outcome)) => {
                                let since_press = crate::now_ms() - job.received_at;
                                latency.first.get_or_insert(since_press);
                                latency.all = Some(since_press);
                                match outcome {
                                    Outcome::Retry { after, .. } => {
                                        hint = hint.max(after);
                                        retry.push(targets[i].clone());
                                    }
                                    o => batch.push((targets[i].token.to_string(), o)),
                                }
                                if batch.len() >= BATCH {
                                    self.flush(&job.ring_id, &mut batch).await;
                                }
                            }
                            None => break,
                        },
                        // cancel-safe: a missed tick only delays a flush
                        _ = tick.tick() => self.flush(&job.ring_id, &mut batch).await,
                    }
                }
                self.flush(&job.ring_id, &mut batch).await;
                (retry, hint)
            };
            let ((), (retry, hint)) = tokio::join!(send, record);
            pending = retry;
            if pending.is_empty() {
                break;
            }
            attempt += 1;
            let jitter = rand::thread_rng().gen::<f64>();
            let Some(wait) = self.settings.retry.delay(attempt, crate::now_ms(), job.expires_at, jitter, hint) else {
                warn!(ring = %job.ring_id, phones = pending.len(), "ring expires before another retry: giving up on the rest");
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

    async fn flush(&self, ring_id: &str, batch: &mut Vec<(String, Outcome)>) {
        if batch.is_empty() {
            return;
        }
        let items = std::mem::take(batch);
        let ring = ring_id.to_string();
        let n = items.len();
        match self.store.run(move |s| s.record_outcomes(&ring, &items)).await {
            Ok(r) if r.pruned + r.kept > 0 => {
                info!(ring = %ring_id, pruned = r.pruned, kept_reregistered = r.kept, "stale tokens handled")
            }
            Ok(_) => {}
            Err(e) => warn!(ring = %ring_id, outcomes = n, error = %e, "cannot record outcomes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_respects_expiry() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, 0, 60_000, 0.0, None), Some(Duration::from_millis(100)));
        assert_eq!(p.delay(2, 0, 60_000, 0.0, None), Some(Duration::from_millis(200)));
        assert_eq!(p.delay(4, 0, 60_000, 0.0, None), Some(Duration::from_millis(800)));
        assert_eq!(p.delay(4, 0, 60_000, 1.0, None), Some(Duration::from_millis(400)));
        assert_eq!(p.delay(30, 0, 600_000, 0.0, None), Some(Duration::from_secs(30)));
        // Apple's hint wins when longer.
        assert_eq!(p.delay(1, 0, 60_000, 0.0, Some(Duration::from_secs(2))), Some(Duration::from_secs(2)));
        // Never past expiry.
        assert_eq!(p.delay(10, 59_000, 60_000, 0.0, None), None);
    }
}
