//! The rumqttc event loop: connect, persistent session, resubscribe on every ConnAck, back
//! off between reconnects, retained status with a last will, and publishing outcomes.
//!
//! The task that polls the event loop never awaits the client (rumqtt #263/#1025): it only
//! uses the non-blocking `try_*` calls, and forwards messages on a bounded channel. Acks are
//! manual: the ringer acks a QoS 1 press only after the ring is safely in the database, so
//! a crash before that gets the press redelivered.

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
    TlsConfiguration, Transport,
};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// First and longest wait between reconnect attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a clean disconnect may take at shutdown.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("mqtt.url '{0}' is not mqtt://HOST:PORT or mqtts://HOST:PORT")]
    Url(String),
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("the MQTT client has stopped")]
    Closed,
}

/// A message from a subscribed topic.
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    /// Kept for the manual ack.
    pub publish: Publish,
}

/// Publishing side, shared by every task that reports something.
#[derive(Clone)]
pub struct MqttHandle {
    client: AsyncClient,
    prefix: String,
    gateway: String,
}

/// What `connect` needs, taken from `[mqtt]`.
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub client_id: String,
    pub prefix: String,
    pub gateway: String,
    pub credentials: Option<(String, String)>,
    pub keep_alive: Duration,
    /// Topic filters subscribed at QoS 1 after every ConnAck.
    pub subscriptions: Vec<String>,
    /// Keep the broker-side session (clean session off), so QoS 1 presses wait for us.
    pub persistent: bool,
    /// Publish the retained `P/status` and leave a last will: the daemon does, tools do not.
    pub announce: bool,
}

impl MqttSettings {
    fn options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(&self.client_id, &self.host, self.port);
        o.set_keep_alive(self.keep_alive.max(Duration::from_secs(5)));
        o.set_clean_session(!self.persistent);
        o.set_manual_acks(true);
        o.set_max_packet_size(64 * 1024, 256 * 1024);
        if self.announce {
            o.set_last_will(LastWill::new(
                format!("{}/status", self.prefix),
                serde_json::json!({"state": "offline", "gateway": self.gateway}).to_string(),
                QoS::AtLeastOnce,
                true,
            ));
        }
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u, p);
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        }
        o
    }
}

/// Disables Nagle's algorithm: a press is one small packet, and waiting for the peer's delayed
/// ACK (40 ms on Linux) before sending it is most of a ring's latency otherwise.
pub fn no_delay(eventloop: &mut EventLoop) {
    let mut opts = eventloop.network_options();
    opts.set_tcp_nodelay(true);
    eventloop.set_network_options(opts);
}

/// Starts the event loop task. Messages arrive on the returned receiver; `connected` turns
/// true at every ConnAck and false at every connection error.
pub fn start(
    settings: MqttSettings,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> (MqttHandle, mpsc::Receiver<Incoming>, watch::Receiver<bool>) {
    let (client, mut eventloop) = AsyncClient::new(settings.options(), 256);
    no_delay(&mut eventloop);
    let (tx, rx) = mpsc::channel(256);
    let (conn_tx, conn_rx) = watch::channel(false);
    let handle =
        MqttHandle { client: client.clone(), prefix: settings.prefix.clone(), gateway: settings.gateway.clone() };
    let driver = Driver { client, eventloop, settings, tx, connected: conn_tx, stop };
    tracker.spawn(driver.run());
    (handle, rx, conn_rx)
}

struct Driver {
    client: AsyncClient,
    eventloop: EventLoop,
    settings: MqttSettings,
    tx: mpsc::Sender<Incoming>,
    connected: watch::Sender<bool>,
    stop: CancellationToken,
}

impl Driver {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let ev = tokio::select! {
                // cancel-safe: poll() keeps its state in the EventLoop; dropping the future loses nothing
                ev = self.eventloop.poll() => ev,
                _ = self.stop.cancelled() => break,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = BACKOFF_MIN;
                    self.on_connack(ack.session_present);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let msg = Incoming { topic: p.topic.clone(), payload: p.payload.clone(), publish: p };
                    // Backpressure only: the consumer acks, the client is never awaited here.
                    if self.tx.send(msg).await.is_err() {
                        break;
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    debug!("MQTT disconnect sent");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    self.connected.send_replace(false);
                    self.on_error(&e, backoff);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.connected.send_replace(false);
    }

    fn on_connack(&self, session_present: bool) {
        info!(broker = %format!("{}:{}", self.settings.host, self.settings.port), session_present, "MQTT connected");
        let subs =
            self.settings.subscriptions.iter().map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        if let Err(e) = self.client.try_subscribe_many(subs) {
            warn!(error = %e, "cannot queue the subscriptions");
        }
        if !self.settings.announce {
            self.connected.send_replace(true);
            return;
        }
        let online = serde_json::json!({"state": "online", "gateway": self.settings.gateway, "version": env!("CARGO_PKG_VERSION"), "since": crate::domain::now_ms()});
        if let Err(e) = self.client.try_publish(
            format!("{}/status", self.settings.prefix),
            QoS::AtLeastOnce,
            true,
            online.to_string(),
        ) {
            warn!(error = %e, "cannot queue the online status");
        }
        self.connected.send_replace(true);
    }

    fn on_error(&self, e: &ConnectionError, backoff: Duration) {
        match e {
            ConnectionError::Io(_) | ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost")
            }
            _ => warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT error"),
        }
    }
}

impl MqttHandle {
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Acknowledges a QoS 1 message once its effect is durable, without waiting on the
    /// client's queue (see [`MqttHandle::reply_and_ack`]).
    pub fn ack(&self, publish: &Publish) {
        self.reply_and_ack(None, publish);
    }

    /// Publishes `payload` on `P/<suffix>` and acks `publish` without waiting on the client's
    /// queue: the intake must never block on the queue that only the event loop drains while
    /// the event loop waits for the intake (a burst of requests deadlocked the two). When the
    /// queue is full, a short task waits for room instead of the caller.
    pub fn reply_and_ack(&self, reply: Option<(&str, String)>, publish: &Publish) {
        if let Some((suffix, payload)) = reply {
            let topic = format!("{}/{}", self.prefix, suffix);
            if self.client.try_publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone()).is_err() {
                let client = self.client.clone();
                tokio::spawn(async move {
                    if client.publish(topic, QoS::AtLeastOnce, false, payload).await.is_err() {
                        debug!("reply not queued: the MQTT client has stopped");
                    }
                });
            }
        }
        if self.client.try_ack(publish).is_err() {
            let (client, publish) = (self.client.clone(), publish.clone());
            tokio::spawn(async move {
                if let Err(e) = client.ack(&publish).await {
                    debug!(error = %e, "MQTT ack not queued");
                }
            });
        }
    }

    /// Publishes `payload` on `P/<suffix>`.
    pub async fn publish(&self, suffix: &str, payload: String, retain: bool) -> Result<(), MqttError> {
        self.client
            .publish(format!("{}/{}", self.prefix, suffix), QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|_| MqttError::Closed)
    }

    /// Publishes on a topic outside `P/` (Home Assistant discovery and events).
    pub async fn publish_topic(&self, topic: String, payload: Vec<u8>, retain: bool) -> Result<(), MqttError> {
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await.map_err(|_| MqttError::Closed)
    }

    /// Publishes the offline status and disconnects cleanly (the last will covers crashes).
    pub async fn shutdown(&self) {
        let offline = serde_json::json!({"state": "offline", "gateway": self.gateway});
        let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
            let _ = self.publish("status", offline.to_string(), true).await;
            let _ = self.client.disconnect().await;
        })
        .await;
    }
}

/// Connects, publishes one QoS 1 message, waits for the broker's PubAck and disconnects:
/// what `dingdong ring` does. The event loop is polled here; the client is never awaited.
pub async fn publish_once(settings: MqttSettings, topic: String, payload: Vec<u8>) -> Result<(), String> {
    let broker = format!("{}:{}", settings.host, settings.port);
    let (client, mut eventloop) = AsyncClient::new(settings.options(), 8);
    no_delay(&mut eventloop);
    client.try_publish(topic, QoS::AtLeastOnce, false, payload).map_err(|e| e.to_string())?;
    let done = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let _ = client.try_disconnect();
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("broker {broker}: {e}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .map_err(|_| format!("broker {broker} did not acknowledge the press within 10s"))?
}

/// What diag's broker check learnt.
#[derive(Debug, Clone)]
pub struct RoundTrip {
    /// From CONNECT to CONNACK.
    pub connect_ms: f64,
    /// From PUBLISH to receiving it back on our own subscription.
    pub round_trip_ms: f64,
    /// The daemon's retained `P/status`, if the broker holds one.
    pub status: Option<serde_json::Value>,
}

/// Connects with `settings` (diag's own client id, clean session, no will), subscribes to a
/// private topic and to `P/status`, publishes once and waits for the message to come back.
pub async fn round_trip(settings: MqttSettings, timeout: Duration) -> Result<RoundTrip, String> {
    let broker = format!("{}:{}", settings.host, settings.port);
    let mut opts = settings.options();
    opts.set_manual_acks(false);
    let (client, mut eventloop) = AsyncClient::new(opts, 8);
    let probe = format!("{}/diag/{}", settings.prefix, settings.client_id);
    let status_topic = format!("{}/status", settings.prefix);
    let t0 = std::time::Instant::now();
    let work = async {
        let (mut connect_ms, mut sent_at, mut status) = (0.0, None, None);
        loop {
            match eventloop.poll().await.map_err(|e| format!("broker {broker}: {e}"))? {
                Event::Incoming(Packet::ConnAck(_)) => {
                    connect_ms = t0.elapsed().as_secs_f64() * 1000.0;
                    let filters =
                        [&status_topic, &probe].map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtMostOnce));
                    client.try_subscribe_many(filters).map_err(|e| e.to_string())?;
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    sent_at = Some(std::time::Instant::now());
                    client.try_publish(probe.clone(), QoS::AtMostOnce, false, "diag").map_err(|e| e.to_string())?;
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == status_topic => {
                    status = serde_json::from_slice(&p.payload).ok();
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == probe => {
                    let round_trip_ms = sent_at.map_or(0.0, |s| s.elapsed().as_secs_f64() * 1000.0);
                    let _ = client.try_disconnect();
                    return Ok(RoundTrip { connect_ms, round_trip_ms, status });
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("broker {broker}: no round trip within {}s", timeout.as_secs()))?
}
