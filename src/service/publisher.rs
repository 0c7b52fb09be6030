//! The only task that publishes on the broker: the daemon's status, ring outcomes, Home
//! Assistant's discovery and events, pairing replies, and every acknowledgement.
//!
//! Everyone else hands it messages without waiting ([`Publisher`] never blocks), so nothing the
//! MQTT event loop feeds (the intake above all) can end up waiting on the event loop. The
//! overflow policy, per kind of message:
//! - acknowledgements are never dropped: their queue is unbounded, and bounded in practice by
//!   the broker's window of unacknowledged messages (MQTT 5 Receive Maximum, 3.1.1 in-flight);
//! - retained state (`P/status`, discovery configs) is coalesced per topic: only the newest
//!   payload of a topic waits, so the queue is bounded by the number of such topics;
//! - events (ring outcomes, Home Assistant events, replies) wait in a bounded queue of
//!   [`EVENT_QUEUE`]; when it is full the new event is dropped and counted (`dropped`),
//!   with a warning at most once a minute. A phone whose reply was dropped asks again.

use crate::net::mqtt::{Ack, Link, MqttClient};
use bytes::Bytes;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Events that may wait for the broker at once.
pub const EVENT_QUEUE: usize = 1024;
/// How long the offline status and the disconnect may take at shutdown.
const GOODBYE: Duration = Duration::from_secs(2);

/// Counters of what the publisher did.
#[derive(Debug, Default, Serialize)]
pub struct PublishStats {
    pub published: AtomicU64,
    pub acked: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Retained states replaced by a newer one before they were sent.
    pub coalesced: AtomicU64,
    /// When a drop was last warned about (ms), to keep the log quiet in a flood.
    #[serde(skip)]
    warned_at: AtomicI64,
}

/// What `P/status` says, composed from the parts that know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The APNs transport stopped by Apple's refusal of our credentials, and why.
    pub transport: Option<String>,
    /// The FCM and Web Push transports stopped likewise: `(platform, why)`.
    pub push_stopped: Vec<(String, String)>,
    /// The store's current fault (busy, full, I/O error) and since when (ms).
    pub store: Option<(String, i64)>,
}

/// The publishing handle: cheap to clone, never waits.
#[derive(Clone)]
pub struct Publisher {
    prefix: Arc<str>,
    gateway: Arc<str>,
    since: i64,
    events: mpsc::Sender<(String, Bytes)>,
    acks: mpsc::UnboundedSender<Ack>,
    retained: Arc<Mutex<BTreeMap<String, Bytes>>>,
    status: Arc<Mutex<Status>>,
    wake: Arc<Notify>,
    pub stats: Arc<PublishStats>,
}

/// The task's half.
struct Task {
    client: MqttClient,
    link: watch::Receiver<Link>,
    events: mpsc::Receiver<(String, Bytes)>,
    acks: mpsc::UnboundedReceiver<Ack>,
    handle: Publisher,
}

impl Publisher {
    /// Starts the publishing task for `client`; it republishes the status at every new
    /// connection, and at `stop` publishes the offline status and disconnects.
    pub fn start(
        client: MqttClient,
        link: watch::Receiver<Link>,
        prefix: &str,
        gateway: &str,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Publisher {
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let handle = Publisher {
            prefix: prefix.into(),
            gateway: gateway.into(),
            since: crate::domain::now_ms(),
            events: events_tx,
            acks: acks_tx,
            retained: Default::default(),
            status: Default::default(),
            wake: Default::default(),
            stats: Default::default(),
        };
        let task = Task { client, link, events, acks, handle: handle.clone() };
        tracker.spawn(task.run(stop));
        handle
    }

    /// `P/<suffix>`.
    pub fn topic(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.prefix)
    }

    /// Queues an event (not retained). Dropped and counted when the queue is full.
    pub fn event(&self, topic: String, payload: impl Into<Bytes>) {
        if self.events.try_send((topic, payload.into())).is_err() {
            let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let now = crate::domain::now_ms();
            let last = self.stats.warned_at.load(Ordering::Relaxed);
            if now - last >= 60_000
                && self.stats.warned_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                warn!(
                    dropped = n,
                    queue = EVENT_QUEUE,
                    "the broker is not taking our messages fast enough: events dropped"
                );
            }
        }
    }

    /// Queues a retained state, replacing any older one of the same topic not yet sent.
    pub fn state(&self, topic: String, payload: impl Into<Bytes>) {
        if self.retained.lock().expect("retained lock").insert(topic, payload.into()).is_some() {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    /// Queues the acknowledgement of a message; never dropped.
    pub fn ack(&self, ack: Ack) {
        let _ = self.acks.send(ack);
    }

    /// Changes what `P/status` says and republishes it.
    pub fn set_status(&self, change: impl FnOnce(&mut Status)) {
        let changed = {
            let mut s = self.status.lock().expect("status lock");
            let before = s.clone();
            change(&mut s);
            *s != before
        };
        if changed {
            self.state(self.topic("status"), self.online_status());
        }
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.lock().expect("status lock").clone()
    }

    fn online_status(&self) -> String {
        let s = self.status();
        let mut v = serde_json::json!({"state": "online", "gateway": &*self.gateway, "version": env!("CARGO_PKG_VERSION"), "since": self.since});
        if let Some(reason) = s.transport {
            v["apns"] = "stopped".into();
            v["reason"] = reason.into();
            v["fix"] =
                "check the push credentials, then `systemctl reload dingdong` (dingdong diag tells which)".into();
        }
        for (platform, reason) in &s.push_stopped {
            v[platform.as_str()] = serde_json::json!({"state": "stopped", "reason": reason,
                "fix": "check the push credentials, then `systemctl reload dingdong` (dingdong diag tells which)"});
        }
        if let Some((problem, since)) = s.store {
            v["store"] = serde_json::json!({"problem": problem, "since": since,
                "fix": "presses are kept and retried; free disk space or stop what holds the database (dingdong diag)"});
        }
        v.to_string()
    }

    /// The payload of the offline status (also the last will).
    pub fn offline_status(gateway: &str) -> String {
        serde_json::json!({"state": "offline", "gateway": gateway}).to_string()
    }
}

impl Task {
    /// Publishes only while connected, so that after every (re)connection the first message
    /// is the online status, then the retained states and events that waited.
    async fn run(mut self, stop: CancellationToken) {
        let mut connects = 0;
        let mut up = false;
        loop {
            tokio::select! {
                biased;
                // cancel-safe: stopping here loses nothing that the goodbye does not cover
                _ = stop.cancelled() => break,
                // cancel-safe: a changed() that loses the race is seen at the next turn
                Ok(()) = self.link.changed() => {
                    let link = *self.link.borrow_and_update();
                    up = link.up;
                    if link.up && link.connects != connects {
                        connects = link.connects;
                        // The will may have said offline meanwhile: online first, then the rest.
                        self.handle.retained.lock().expect("retained lock").remove(&self.handle.topic("status"));
                        let status = self.handle.online_status();
                        self.publish(self.handle.topic("status"), status.into(), true).await;
                        self.flush_retained().await;
                    }
                }
                // cancel-safe: recv() keeps queued acks
                Some(ack) = self.acks.recv(), if up => {
                    if self.client.ack(&ack).await.is_ok() {
                        self.handle.stats.acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // cancel-safe: notified() only wakes us; the map keeps the states
                () = self.handle.wake.notified(), if up => self.flush_retained().await,
                // cancel-safe: recv() keeps queued events
                Some((topic, payload)) = self.events.recv(), if up => self.publish(topic, payload, false).await,
            }
        }
        self.goodbye().await;
    }

    async fn flush_retained(&mut self) {
        loop {
            let next = self.handle.retained.lock().expect("retained lock").pop_first();
            let Some((topic, payload)) = next else { return };
            self.publish(topic, payload, true).await;
        }
    }

    async fn publish(&self, topic: String, payload: Bytes, retain: bool) {
        tracing::trace!(%topic, retain, bytes = payload.len(), "publishing");
        match self.client.publish(topic, payload, retain).await {
            Ok(()) => {
                self.handle.stats.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => debug!(error = %e, "not published: the MQTT client has stopped"),
        }
    }

    /// Acks still queued, then the offline status, then a clean disconnect.
    async fn goodbye(mut self) {
        let offline = Publisher::offline_status(&self.handle.gateway);
        let topic = self.handle.topic("status");
        let _ = tokio::time::timeout(GOODBYE, async {
            while let Ok(ack) = self.acks.try_recv() {
                let _ = self.client.ack(&ack).await;
            }
            let _ = self.client.publish(topic, offline.into(), true).await;
            self.client.disconnect().await;
        })
        .await;
    }
}
