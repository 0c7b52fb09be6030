//! The intake: every message from the broker, in order, turned into what it asks for: a press
//! into a ring (through the ringer), a pairing message into a reply (through the pairing
//! service), Home Assistant's birth into discovery. Replies and acknowledgements go to the
//! publisher, which never makes the intake wait.
//!
//! A press is acknowledged only once its ring (or its fold, or its expiry) is in the database.
//! A press the store cannot record (busy, locked, full, I/O error) is kept in memory, retried
//! with backoff and rung as soon as the store takes it; meanwhile later presses queue behind it
//! (so the order of presses holds) and `P/status` says what is wrong. What is kept is bounded
//! by the broker's window of unacknowledged messages.

use crate::codec::bridge::{self, Inbound};
use crate::codec::homeassistant as ha;
use crate::domain::{ButtonPress, RingTiming};
use crate::net::mqtt::{Ack, Incoming};
use crate::service::outbox::Outbox;
use crate::service::pairing::Pairing;
use crate::service::publisher::Publisher;
use crate::service::ringer::{PressResult, Ringer};
use crate::store::presses::NewPress;
use crate::store::{StoreError, StoreHandle};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

mod homeassistant;

/// First and longest wait before trying a kept press again.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Messages taken from the broker at once; their presses are recorded in one transaction.
const BATCH: usize = 256;
/// Topics remembered for "logged once" (oversize and retained presses); a flood of distinct
/// topics is then logged again, but the memory stays bounded.
const LOGGED_TOPICS: usize = 256;

/// Home Assistant discovery as the intake runs it.
pub struct HaSettings {
    pub discovery_prefix: String,
    pub status_topic: String,
    pub gateway: String,
}

/// A press the store could not record yet.
struct Kept {
    press: ButtonPress,
    topic: String,
    received_at: i64,
    /// The same moment in µs, for the ring's timing.
    received_us: i64,
    ack: Ack,
}

/// The intake task's state.
pub struct Intake {
    pub prefix: String,
    /// Where presses arrive: our prefix and the bridges' topics.
    pub routes: bridge::Routes,
    pub store: StoreHandle,
    pub ha: Option<HaSettings>,
    pub pairing: Pairing,
    pub ringer: Arc<Ringer>,
    pub outbox: Outbox,
    pub publisher: Publisher,
    /// Ring deliveries, tracked apart so shutdown can wait for exactly them.
    pub deliveries: TaskTracker,
    pub stop: CancellationToken,
    /// Stamped every tick while the loop is alive: the watchdog reads it.
    pub heartbeat: Arc<AtomicI64>,
    /// Where presses are counted by bridge (the daemon's metrics).
    pub metrics: Option<Arc<crate::service::metrics::Metrics>>,
}

/// What the loop keeps between messages.
#[derive(Default)]
struct Memory {
    kept: VecDeque<Kept>,
    retry_wait: Duration,
    next_retry: Option<tokio::time::Instant>,
    /// What Home Assistant was told about the doorbells.
    ha: homeassistant::Announced,
    /// What Home Assistant was told about each person's controls.
    people: homeassistant::People,
    logged: HashSet<String>,
    transport_reported: Option<String>,
    /// The FCM and Web Push transports last reported stopped.
    push_reported: Vec<(String, String)>,
}

impl Intake {
    pub async fn run(self, mut inbox: mpsc::Receiver<Incoming>) {
        let mut mem = Memory { retry_wait: RETRY_MIN, ..Default::default() };
        self.sync_doorbells(&mut mem, true).await;
        self.sync_people(&mut mem, true).await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut got = Vec::with_capacity(BATCH);
        loop {
            let retry_at = mem.next_retry;
            tokio::select! {
                // cancel-safe: stopping drops no message (unacked QoS 1 is redelivered)
                _ = self.stop.cancelled() => break,
                // cancel-safe: recv_many() keeps what it did not hand over
                n = inbox.recv_many(&mut got, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    let mut presses = Vec::new();
                    for m in got.drain(..) {
                        if let Some(k) = self.on_message(m, &mut mem).await {
                            presses.push(k);
                        }
                    }
                    self.record_presses(presses, &mut mem).await;
                },
                // cancel-safe: only a timer; the kept presses stay in `mem`
                _ = sleep_until(retry_at), if retry_at.is_some() => self.retry_kept(&mut mem).await,
                // cancel-safe: only a heartbeat and a status check
                _ = tick.tick() => {
                    self.heartbeat.store(crate::domain::now_ms(), Ordering::Relaxed);
                    self.report_transport(&mut mem);
                    // Doorbells added, renamed or removed (by the CLI, another process).
                    self.sync_doorbells(&mut mem, false).await;
                    // Rules changed (CLI, phones), people came or went, a mute ended.
                    self.sync_people(&mut mem, false).await;
                }
            }
        }
        if !mem.kept.is_empty() {
            warn!(
                presses = mem.kept.len(),
                "stopping with presses the store could not record: the broker keeps them for the next start"
            );
        }
        debug!("intake stopped");
    }

    /// Handles a message; a press comes back to be recorded with the others of its batch.
    async fn on_message(&self, m: Incoming, mem: &mut Memory) -> Option<Kept> {
        let received_us = crate::domain::now_us();
        let received_at = received_us / 1000;
        if m.oversize() {
            self.ringer.stats.oversize.fetch_add(1, Ordering::Relaxed);
            if remember(&mut mem.logged, format!("oversize {}", m.topic)) {
                warn!(topic = %m.topic, bytes = m.size, limit = crate::net::mqtt::MAX_MESSAGE, "message too large: refused (logged once per topic)");
            }
            self.publisher.ack(m.ack);
            return None;
        }
        if self.ha.as_ref().is_some_and(|h| ha::is_config_topic(&h.discovery_prefix, &m.topic)) {
            self.on_discovery_config(&m.topic, &m.payload, mem);
            self.publisher.ack(m.ack);
            return None;
        }
        if self.ha.as_ref().is_some_and(|h| h.status_topic == m.topic) {
            if ha::is_online(&m.payload) {
                info!("Home Assistant is online: publishing discovery");
                self.sync_doorbells(mem, true).await;
                self.sync_people(mem, true).await;
            }
            self.publisher.ack(m.ack);
            return None;
        }
        if !m.retain && self.on_control(&m.topic, &m.payload, mem).await.is_some() {
            self.publisher.ack(m.ack);
            return None;
        }
        let press = match bridge::decode(&self.routes, &m.topic, &m.payload) {
            Ok(Some(Inbound::Press(p))) => p,
            Ok(Some(pairing)) => {
                self.on_pairing(pairing, m).await;
                return None;
            }
            Ok(None) => {
                debug!(topic = %m.topic, "message on a topic we do not handle");
                self.publisher.ack(m.ack);
                return None;
            }
            Err(e) => {
                self.ringer.stats.malformed.fetch_add(1, Ordering::Relaxed);
                warn!(topic = %m.topic, error = %e, "malformed message ignored");
                self.publisher.ack(m.ack);
                return None;
            }
        };
        if m.retain {
            // Sent because we subscribed, not because someone pressed: a bridge's retained
            // press would otherwise ring again at every reconnect.
            self.ringer.stats.retained.fetch_add(1, Ordering::Relaxed);
            if remember(&mut mem.logged, format!("retained {}", m.topic)) {
                info!(topic = %m.topic, "retained press ignored (logged once per topic)");
            }
            self.publisher.ack(m.ack);
            return None;
        }
        self.ringer.stats.presses.fetch_add(1, Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            metrics.press(press.source);
        }
        Some(Kept { press, topic: m.topic, received_at, received_us, ack: m.ack })
    }

    /// Records the presses of a batch in one transaction; on a store fault they are kept.
    async fn record_presses(&self, presses: Vec<Kept>, mem: &mut Memory) {
        if presses.is_empty() {
            return;
        }
        // While the store records the presses, the transport opens (or checks) what their
        // rings will send on.
        self.outbox.prepare();
        if !mem.kept.is_empty() {
            // The store is failing: behind the others, in order.
            self.ringer.stats.kept.fetch_add(presses.len() as u64, Ordering::Relaxed);
            mem.kept.extend(presses);
            return;
        }
        if let Err((presses, e)) = self.record(presses, mem).await {
            self.keep(presses, e, mem);
        }
    }

    /// Records presses; on a store fault hands them back with the error.
    async fn record(&self, presses: Vec<Kept>, mem: &mut Memory) -> Result<(), (Vec<Kept>, StoreError)> {
        let batch = presses
            .iter()
            .map(|k| NewPress { press: k.press.clone(), topic: k.topic.clone(), received_at: k.received_at })
            .collect();
        match self.ringer.presses(batch).await {
            Ok(results) => {
                let recorded = crate::domain::now_us();
                for (k, result) in presses.into_iter().zip(results) {
                    // In the database: only now may the broker forget the press.
                    self.publisher.ack(k.ack);
                    let timing = RingTiming { recorded: Some(recorded), ..RingTiming::received_at(k.received_us) };
                    self.rang(result, timing, mem);
                }
                Ok(())
            }
            Err(e) => Err((presses, e)),
        }
    }

    fn keep(&self, presses: Vec<Kept>, e: StoreError, mem: &mut Memory) {
        self.ringer.stats.kept.fetch_add(presses.len() as u64, Ordering::Relaxed);
        self.ringer.stats.store_faults.fetch_add(1, Ordering::Relaxed);
        warn!(presses = presses.len(), topic = %presses[0].topic, error = %e, retry_in_ms = RETRY_MIN.as_millis() as u64, "cannot record the press: kept, and retried until the store takes it");
        let problem = e.to_string();
        self.publisher.set_status(|s| {
            if s.store.as_ref().map(|(p, _)| p) != Some(&problem) {
                s.store = Some((problem, crate::domain::now_ms()));
            }
        });
        for k in presses.into_iter().rev() {
            mem.kept.push_front(k);
        }
        mem.retry_wait = RETRY_MIN;
        mem.next_retry = Some(tokio::time::Instant::now() + RETRY_MIN);
    }

    /// Tries the kept presses, in order and in batches, until the store refuses them again.
    async fn retry_kept(&self, mem: &mut Memory) {
        mem.next_retry = None;
        while !mem.kept.is_empty() {
            let n = mem.kept.len().min(BATCH);
            let batch: Vec<Kept> = mem.kept.drain(..n).collect();
            if let Err((batch, e)) = self.record(batch, mem).await {
                self.ringer.stats.store_faults.fetch_add(1, Ordering::Relaxed);
                for k in batch.into_iter().rev() {
                    mem.kept.push_front(k);
                }
                mem.retry_wait = (mem.retry_wait * 2).min(RETRY_MAX);
                mem.next_retry = Some(tokio::time::Instant::now() + mem.retry_wait);
                debug!(error = %e, kept = mem.kept.len(), retry_in_ms = mem.retry_wait.as_millis() as u64, "the store still refuses presses");
                let problem = e.to_string();
                self.publisher.set_status(|s| {
                    if s.store.as_ref().map(|(p, _)| p) != Some(&problem) {
                        s.store = Some((problem, crate::domain::now_ms()));
                    }
                });
                return;
            }
        }
        info!("the store records presses again: every kept press is recorded");
        self.publisher.set_status(|s| s.store = None);
    }

    /// What follows a recorded press.
    fn rang(&self, result: PressResult, timing: RingTiming, mem: &mut Memory) {
        match result {
            PressResult::Ring(job) => {
                self.ring_event(&job, mem);
                let (outbox, stop) = (self.outbox.clone(), self.stop.clone());
                self.deliveries.spawn(async move { outbox.deliver(job, timing, stop).await });
            }
            PressResult::Expired(ring_id) => {
                let outbox = self.outbox.clone();
                self.deliveries.spawn(async move { outbox.report_expired(&ring_id).await });
            }
            _ => {}
        }
    }

    /// Pairing messages: the pairing service decides, the publisher sends its reply.
    async fn on_pairing(&self, msg: Inbound, m: Incoming) {
        if m.retain {
            // A retained request would be answered again at every reconnect.
            return self.publisher.ack(m.ack);
        }
        let reply = match msg {
            Inbound::PairRequest(r) => self.pairing.pair_request(r).await,
            Inbound::PairFinish(r) => self.pairing.pair_finish(r).await,
            Inbound::PhoneRequest { phone_id, request } => self.pairing.phone_request(phone_id, request).await,
            Inbound::PairButton(r) => {
                self.pairing.pair_button(r).await;
                None
            }
            Inbound::Press(_) => None,
        };
        if let Some(r) = reply {
            self.publisher.event(self.publisher.topic(&r.suffix), r.payload);
        }
        self.publisher.ack(m.ack);
    }

    /// A transport stopped by the push service's refusal of our credentials is announced on
    /// the retained `P/status`, so a technician sees it without reading logs.
    fn report_transport(&self, mem: &mut Memory) {
        let stopped = self.outbox.transports().stopped();
        let now = stopped.iter().find(|(p, _)| *p == crate::domain::Platform::Apns).map(|(_, r)| r.to_string());
        let push: Vec<(String, String)> = stopped
            .iter()
            .filter(|(p, _)| *p != crate::domain::Platform::Apns)
            .map(|(p, r)| (p.as_str().to_string(), r.to_string()))
            .collect();
        if now != mem.transport_reported || push != mem.push_reported {
            self.publisher.set_status(|s| {
                s.transport = now.clone();
                s.push_stopped = push.clone();
            });
            mem.transport_reported = now;
            mem.push_reported = push;
        }
    }
}

/// Remembers `key`; true the first time (and again once the set was full and cleared).
fn remember(set: &mut HashSet<String>, key: String) -> bool {
    if set.len() >= LOGGED_TOPICS {
        set.clear();
    }
    set.insert(key)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
