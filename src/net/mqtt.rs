//! The MQTT client: connect (MQTT 5, or 3.1.1 where the broker speaks only that), a
//! persistent session, resubscribe on every ConnAck, back off between reconnects, a last will,
//! and the bounded hand-over of incoming messages.
//!
//! The task that polls the event loop never awaits the client (rumqtt #263/#1025): the only
//! requests it makes itself (subscriptions) go straight into the event loop's own queue, and
//! messages are forwarded on a bounded channel. Publishing and acknowledging are done through
//! [`MqttClient`] by exactly one other task (`service::publisher`), which nothing the event
//! loop feeds ever waits on.
//!
//! No payload can trap the session: under MQTT 5 the CONNECT states a Maximum Packet Size
//! ([`MAX_PACKET`]) that the broker must honour by not sending larger packets; under 3.1.1,
//! where nothing can be stated, the client reads packets of any size the protocol allows, so
//! a large message is read, acknowledged and refused instead of dropping the connection and
//! being redelivered for ever. Either way a payload above [`MAX_MESSAGE`] is handed on
//! without its bytes, marked oversize, for the intake to count, log once and acknowledge.
//! A broker that ignores the stated limit makes the client fall back to 3.1.1.

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::{QoS, TlsConfiguration, Transport};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::quickack::Relay;

/// First and longest wait between reconnect attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The largest packet the broker may send us under MQTT 5 (Maximum Packet Size).
pub const MAX_PACKET: u32 = 256 * 1024;
/// The largest payload handed on with its bytes: bridge events and presses are a few hundred
/// bytes, the largest legitimate message (a pairing finish with four offers) stays under 40 KB.
/// With the intake's channel of 256 messages, at most 16 MB wait in memory even in a flood.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// MQTT's own upper bound on a packet (the remaining length's 4-byte varint).
const PROTOCOL_MAX_PACKET: usize = 268_435_455;
/// How long an MQTT 5 session outlives a disconnect on the broker (its queued presses too).
const SESSION_EXPIRY_SECS: u32 = 24 * 3600;
/// How many unacknowledged QoS 1 messages the broker may send us at once (MQTT 5 Receive
/// Maximum); 3.1.1 brokers apply their own (mosquitto: 20).
const RECEIVE_MAXIMUM: u16 = 256;
/// How many of our QoS 1 publishes may await the broker's PUBACK at once (MQTT 5; rumqttc's
/// 3.1.1 client defaults to 100 too).
const OUTGOING_INFLIGHT: u16 = 100;

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
    #[error("broker {broker}: {reason}")]
    Broker { broker: String, reason: String },
}

/// Which MQTT version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// MQTT 5, falling back to 3.1.1 if the broker does not take it.
    #[default]
    Auto,
    V5,
    V311,
}

/// A topic filter to subscribe to at QoS 1 after every ConnAck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: String,
    /// Whether retained messages are wanted at subscribe time. Presses and requests are
    /// events: a retained one must not ring again at every reconnect (MQTT 5 asks the broker
    /// not to send them; under 3.1.1 the intake ignores what arrives flagged retained).
    pub retained: bool,
}

impl Subscription {
    pub fn events(filter: impl Into<String>) -> Subscription {
        Subscription { filter: filter.into(), retained: false }
    }

    pub fn state(filter: impl Into<String>) -> Subscription {
        Subscription { filter: filter.into(), retained: true }
    }
}

/// Everything the client needs; built by `app::settings` from `[mqtt]`.
#[derive(Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub keep_alive: Duration,
    pub subscriptions: Vec<Subscription>,
    /// Keep the broker-side session (clean session off), so QoS 1 presses wait for us.
    pub persistent: bool,
    /// The last will: `(topic, payload)`, published retained by the broker if we vanish.
    pub will: Option<(String, Vec<u8>)>,
    pub protocol: Protocol,
    /// Capacity of the client's request queue (rumqttc's); tests shrink it to 1.
    pub request_capacity: usize,
    /// Capacity of the channel that hands messages to the intake.
    pub inbox_capacity: usize,
}

impl MqttSettings {
    /// `host:port`, for log lines.
    pub fn broker(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Options for a direct connection, or through `via` (a [`Relay`]'s socket).
    fn v4_options(&self, via: Option<&Relay>) -> rumqttc::MqttOptions {
        let mut o = match via {
            Some(r) => rumqttc::MqttOptions::new(&self.client_id, &r.path, 0),
            None => rumqttc::MqttOptions::new(&self.client_id, &self.host, self.port),
        };
        o.set_keep_alive(self.keep_alive.max(Duration::from_secs(5)));
        o.set_clean_session(!self.persistent);
        o.set_manual_acks(true);
        // 3.1.1 cannot tell the broker a limit: read whatever the protocol allows, so that no
        // message can make the connection fail and be redelivered on the next one.
        o.set_max_packet_size(PROTOCOL_MAX_PACKET, 256 * 1024);
        if let Some((topic, payload)) = &self.will {
            o.set_last_will(rumqttc::LastWill::new(topic, payload.clone(), QoS::AtLeastOnce, true));
        }
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u, p);
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        } else if via.is_some() {
            o.set_transport(Transport::Unix);
        }
        o
    }

    fn v5_options(&self, via: Option<&Relay>) -> v5::MqttOptions {
        let mut o = match via {
            Some(r) => v5::MqttOptions::new(&self.client_id, &r.path, 0),
            None => v5::MqttOptions::new(&self.client_id, &self.host, self.port),
        };
        o.set_keep_alive(self.keep_alive.max(Duration::from_secs(5)));
        o.set_clean_start(!self.persistent);
        if self.persistent {
            o.set_session_expiry_interval(Some(SESSION_EXPIRY_SECS));
        }
        o.set_manual_acks(true);
        o.set_max_packet_size(Some(MAX_PACKET));
        o.set_receive_maximum(Some(RECEIVE_MAXIMUM));
        // rumqttc keeps a slot per packet id it may use, allocated at once: its default of
        // 65,535 slots is 14 MB of resident memory. The publisher needs few in flight.
        o.set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT);
        if let Some((topic, payload)) = &self.will {
            o.set_last_will(v5::mqttbytes::v5::LastWill::new(
                topic,
                payload.clone(),
                v5::mqttbytes::QoS::AtLeastOnce,
                true,
                None,
            ));
        }
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u, p);
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        } else if via.is_some() {
            o.set_transport(Transport::Unix);
        }
        let mut net = o.network_options();
        net.set_tcp_nodelay(true);
        o.set_network_options(net);
        o
    }
}

/// A message from a subscribed topic.
#[derive(Debug)]
pub struct Incoming {
    pub topic: String,
    /// Empty when the message was larger than [`MAX_MESSAGE`] (see `size`).
    pub payload: Bytes,
    /// The payload's size as it arrived.
    pub size: usize,
    /// Flagged retained: sent because we subscribed, not because it just happened.
    pub retain: bool,
    /// The acknowledgement to send once the message's effect is durable.
    pub ack: Ack,
}

impl Incoming {
    pub fn oversize(&self) -> bool {
        self.size > MAX_MESSAGE
    }
}

/// What acknowledging one message needs (its packet id), whichever protocol delivered it.
#[derive(Debug, Clone)]
pub struct Ack(AckKind);

#[derive(Debug, Clone)]
enum AckKind {
    /// QoS 0: nothing to acknowledge.
    None,
    V4(rumqttc::Publish),
    V5(v5::mqttbytes::v5::Publish),
}

impl Ack {
    /// An acknowledgement that does nothing (messages made up in tests).
    pub fn none() -> Ack {
        Ack(AckKind::None)
    }
}

/// The client of the running connection, whichever protocol it speaks.
#[derive(Clone)]
enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// Publishing and acknowledging. Only `service::publisher` holds one in the daemon: its calls
/// wait when the client's queue is full, which only the event loop drains.
#[derive(Clone)]
pub struct MqttClient {
    client: watch::Receiver<Option<Client>>,
}

impl MqttClient {
    async fn current(&self) -> Result<Client, MqttError> {
        let mut rx = self.client.clone();
        let c = rx.wait_for(Option::is_some).await.map_err(|_| MqttError::Closed)?;
        Ok(c.clone().expect("waited for a client"))
    }

    /// Publishes at QoS 1.
    #[allow(clippy::disallowed_methods)] // the one place that may: the publisher calls this
    pub async fn publish(&self, topic: String, payload: Bytes, retain: bool) -> Result<(), MqttError> {
        let sent = match self.current().await? {
            Client::V4(c) => c.publish_bytes(topic, QoS::AtLeastOnce, retain, payload).await.is_ok(),
            Client::V5(c) => c.publish_bytes(topic, v5::mqttbytes::QoS::AtLeastOnce, retain, payload).await.is_ok(),
        };
        sent.then_some(()).ok_or(MqttError::Closed)
    }

    /// Acknowledges a message.
    pub async fn ack(&self, ack: &Ack) -> Result<(), MqttError> {
        match (&ack.0, self.current().await?) {
            (AckKind::None, _) => Ok(()),
            (AckKind::V4(p), Client::V4(c)) => c.ack(p).await.map_err(|_| MqttError::Closed),
            (AckKind::V5(p), Client::V5(c)) => c.ack(p).await.map_err(|_| MqttError::Closed),
            // A message of a connection that used the other protocol: that session is gone.
            _ => Ok(()),
        }
    }

    /// Disconnects cleanly (the broker then does not publish the will).
    pub async fn disconnect(&self) {
        if let Ok(c) = self.current().await {
            match c {
                Client::V4(c) => {
                    let _ = c.disconnect().await;
                }
                Client::V5(c) => {
                    let _ = c.disconnect().await;
                }
            }
        }
    }
}

/// The state of the link to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    /// Connected and subscribed (the broker acknowledged our subscriptions).
    pub up: bool,
    /// How many ConnAcks so far: a change means a new connection (republish retained state).
    pub connects: u64,
    /// The protocol of the current (or last) connection.
    pub protocol: Option<Protocol>,
}

/// A started client: publish through `client`, read messages from `inbox`, watch `link`.
pub struct Connection {
    pub client: MqttClient,
    pub inbox: mpsc::Receiver<Incoming>,
    pub link: watch::Receiver<Link>,
}

/// Starts the event loop task.
pub fn start(settings: MqttSettings, tracker: &TaskTracker, stop: CancellationToken) -> Connection {
    let (client_tx, client_rx) = watch::channel(None);
    let (tx, inbox) = mpsc::channel(settings.inbox_capacity.max(1));
    let (link_tx, link) = watch::channel(Link::default());
    // A plain-TCP broker is reached through a relay that acknowledges at once (see
    // `net::quickack`); where it cannot listen, directly.
    let relay = match settings.tls {
        None => Relay::start(&settings.host, settings.port, tracker, stop.clone())
            .inspect_err(|e| warn!(error = %e, "MQTT: no quick-ACK relay, connecting directly"))
            .ok(),
        Some(_) => None,
    };
    let driver = Driver { settings, relay, tx, client: client_tx, link: link_tx, stop };
    tracker.spawn(driver.run());
    Connection { client: MqttClient { client: client_rx }, inbox, link }
}

struct Driver {
    settings: MqttSettings,
    relay: Option<Relay>,
    tx: mpsc::Sender<Incoming>,
    client: watch::Sender<Option<Client>>,
    link: watch::Sender<Link>,
    stop: CancellationToken,
}

/// How one event loop ended.
enum End {
    /// Stopped, or disconnected on purpose.
    Stopped,
    /// Use the other protocol: the broker did not take MQTT 5 (or ignored our limit).
    Switch(Protocol),
}

impl Driver {
    async fn run(mut self) {
        let mut protocol = match self.settings.protocol {
            Protocol::Auto | Protocol::V5 => Protocol::V5,
            Protocol::V311 => Protocol::V311,
        };
        loop {
            let end = match protocol {
                Protocol::V311 => self.run_v4().await,
                _ => self.run_v5().await,
            };
            match end {
                End::Stopped => break,
                End::Switch(p) => {
                    info!(broker = %self.settings.broker(), protocol = ?p, "MQTT: switching protocol");
                    protocol = p;
                }
            }
        }
        self.link.send_modify(|l| l.up = false);
    }

    /// Whether an error before the first ConnAck means the broker does not speak MQTT 5: it
    /// closed or reset the connection, or refused the protocol version.
    fn looks_like_protocol(e: &v5::ConnectionError) -> bool {
        use v5::mqttbytes::v5::ConnectReturnCode as C;
        match e {
            v5::ConnectionError::ConnectionRefused(C::RefusedProtocolVersion | C::UnsupportedProtocolVersion) => true,
            v5::ConnectionError::Io(io) => !matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut | std::io::ErrorKind::NotFound
            ),
            v5::ConnectionError::MqttState(_) | v5::ConnectionError::NotConnAck(_) => true,
            _ => false,
        }
    }

    async fn run_v5(&mut self) -> End {
        let opts = self.settings.v5_options(self.relay.as_ref());
        let (client, mut eventloop) = v5::AsyncClient::new(opts, self.settings.request_capacity);
        self.client.send_replace(Some(Client::V5(client)));
        let mut backoff = BACKOFF_MIN;
        let mut reported = None;
        let auto = self.settings.protocol == Protocol::Auto;
        let mut ever_connected = false;
        loop {
            let ev = tokio::select! {
                // cancel-safe: poll() keeps its state in the EventLoop; dropping the future loses nothing
                ev = eventloop.poll() => ev,
                _ = self.stop.cancelled() => return End::Stopped,
            };
            use v5::mqttbytes::v5::Packet;
            match ev {
                Ok(v5::Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = BACKOFF_MIN;
                    reported = None;
                    ever_connected = true;
                    info!(broker = %self.settings.broker(), session_present = ack.session_present, protocol = "5", "MQTT connected");
                    let filters = self.settings.subscriptions.iter().map(|s| {
                        let mut f = v5::mqttbytes::v5::Filter::new(s.filter.clone(), v5::mqttbytes::QoS::AtLeastOnce);
                        if !s.retained {
                            f.retain_forward_rule = v5::mqttbytes::v5::RetainForwardRule::Never;
                        }
                        f
                    });
                    let filters: Vec<_> = filters.collect();
                    if filters.is_empty() {
                        self.up(Protocol::V5);
                    } else {
                        // Straight into the event loop's own queue: never waits on the client's.
                        eventloop
                            .pending
                            .push_back(v5::Request::Subscribe(v5::mqttbytes::v5::Subscribe::new_many(filters, None)));
                    }
                }
                Ok(v5::Event::Incoming(Packet::SubAck(ack))) => {
                    let refused = ack
                        .return_codes
                        .iter()
                        .filter(|c| !matches!(c, v5::mqttbytes::v5::SubscribeReasonCode::Success(_)))
                        .count();
                    if refused > 0 {
                        warn!(refused, "the broker refused some of our subscriptions (check its ACL)");
                    }
                    self.up(Protocol::V5);
                }
                Ok(v5::Event::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let size = p.payload.len();
                    let payload = if size > MAX_MESSAGE { Bytes::new() } else { p.payload.clone() };
                    let retain = p.retain;
                    let ack = match p.qos {
                        v5::mqttbytes::QoS::AtMostOnce => AckKind::None,
                        _ => AckKind::V5(v5::mqttbytes::v5::Publish { payload: Bytes::new(), ..p }),
                    };
                    // Backpressure only: the consumer never waits on this task.
                    if self.tx.send(Incoming { topic, payload, size, retain, ack: Ack(ack) }).await.is_err() {
                        return End::Stopped;
                    }
                }
                Ok(v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    debug!("MQTT disconnect sent");
                    return End::Stopped;
                }
                Ok(_) => {}
                Err(e) => {
                    self.link.send_modify(|l| l.up = false);
                    // The relay could not reach the broker: that, not the protocol, is why.
                    if let Some(why) = self.relay.as_ref().and_then(Relay::take_failure) {
                        report_error(&mut reported, why, backoff);
                        if self.sleep(backoff).await {
                            return End::Stopped;
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                    if auto && !ever_connected && Self::looks_like_protocol(&e) {
                        info!(broker = %self.settings.broker(), error = %e, "MQTT 5 not accepted: trying 3.1.1");
                        return End::Switch(Protocol::V311);
                    }
                    if auto && is_too_large_v5(&e) {
                        warn!(broker = %self.settings.broker(), error = %e, "the broker sent a packet above the Maximum Packet Size we stated: falling back to MQTT 3.1.1, which reads any size");
                        return End::Switch(Protocol::V311);
                    }
                    report_error(&mut reported, e.to_string(), backoff);
                    if self.sleep(backoff).await {
                        return End::Stopped;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn run_v4(&mut self) -> End {
        let (client, mut eventloop) =
            rumqttc::AsyncClient::new(self.settings.v4_options(self.relay.as_ref()), self.settings.request_capacity);
        no_delay(&mut eventloop);
        self.client.send_replace(Some(Client::V4(client)));
        let mut backoff = BACKOFF_MIN;
        let mut reported = None;
        loop {
            let ev = tokio::select! {
                // cancel-safe: poll() keeps its state in the EventLoop; dropping the future loses nothing
                ev = eventloop.poll() => ev,
                _ = self.stop.cancelled() => return End::Stopped,
            };
            use rumqttc::Packet;
            match ev {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = BACKOFF_MIN;
                    reported = None;
                    info!(broker = %self.settings.broker(), session_present = ack.session_present, protocol = "3.1.1", "MQTT connected");
                    let filters: Vec<_> = self
                        .settings
                        .subscriptions
                        .iter()
                        .map(|s| rumqttc::SubscribeFilter::new(s.filter.clone(), QoS::AtLeastOnce))
                        .collect();
                    if filters.is_empty() {
                        self.up(Protocol::V311);
                    } else {
                        // Straight into the event loop's own queue: never waits on the client's.
                        eventloop.pending.push_back(rumqttc::Request::Subscribe(rumqttc::Subscribe::new_many(filters)));
                    }
                }
                Ok(rumqttc::Event::Incoming(Packet::SubAck(ack))) => {
                    let refused =
                        ack.return_codes.iter().filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)).count();
                    if refused > 0 {
                        warn!(refused, "the broker refused some of our subscriptions (check its ACL)");
                    }
                    self.up(Protocol::V311);
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                    let size = p.payload.len();
                    let payload = if size > MAX_MESSAGE { Bytes::new() } else { p.payload.clone() };
                    let (topic, retain) = (p.topic.clone(), p.retain);
                    let ack = match p.qos {
                        QoS::AtMostOnce => AckKind::None,
                        _ => AckKind::V4(rumqttc::Publish { payload: Bytes::new(), ..p }),
                    };
                    if self.tx.send(Incoming { topic, payload, size, retain, ack: Ack(ack) }).await.is_err() {
                        return End::Stopped;
                    }
                }
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    debug!("MQTT disconnect sent");
                    return End::Stopped;
                }
                Ok(_) => {}
                Err(e) => {
                    self.link.send_modify(|l| l.up = false);
                    let why = self.relay.as_ref().and_then(Relay::take_failure).unwrap_or_else(|| e.to_string());
                    report_error(&mut reported, why, backoff);
                    if self.sleep(backoff).await {
                        return End::Stopped;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Connected and subscribed: the link is up (READY and the online status follow).
    fn up(&self, protocol: Protocol) {
        self.link.send_modify(|l| {
            l.up = true;
            l.connects += 1;
            l.protocol = Some(protocol);
        });
    }

    /// Waits `d`; true if stopped meanwhile.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            // cancel-safe: only a timer
            _ = tokio::time::sleep(d) => false,
            _ = self.stop.cancelled() => true,
        }
    }
}

/// A connection error at `warn` the first time, at `debug` while the same one repeats.
fn report_error(reported: &mut Option<String>, error: String, backoff: Duration) {
    if reported.as_deref() == Some(error.as_str()) {
        debug!(error = %error, retry_in_ms = backoff.as_millis() as u64, "MQTT connection still failing");
    } else {
        warn!(error = %error, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost");
        *reported = Some(error);
    }
}

fn is_too_large_v5(e: &v5::ConnectionError) -> bool {
    matches!(
        e,
        v5::ConnectionError::MqttState(v5::StateError::Deserialization(
            v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }
        ))
    )
}

/// Disables Nagle's algorithm: a press is one small packet, and waiting for the peer's delayed
/// ACK (40 ms on Linux) before sending it is most of a ring's latency otherwise.
pub fn no_delay(eventloop: &mut rumqttc::EventLoop) {
    let mut opts = eventloop.network_options();
    opts.set_tcp_nodelay(true);
    eventloop.set_network_options(opts);
}

/// Connects (3.1.1, clean session), publishes one QoS 1 message, waits for the broker's
/// PubAck and disconnects: what `dingdong ring` does. The event loop is polled here; the
/// client is never awaited.
pub async fn publish_once(settings: MqttSettings, topic: String, payload: Vec<u8>) -> Result<(), MqttError> {
    let broker = settings.broker();
    let fail = |reason: String| MqttError::Broker { broker: broker.clone(), reason };
    let mut opts = settings.v4_options(None);
    opts.set_clean_session(true);
    opts.set_manual_acks(false);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 8);
    no_delay(&mut eventloop);
    client.try_publish(topic, QoS::AtLeastOnce, false, payload).map_err(|e| fail(e.to_string()))?;
    let done = async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    let _ = client.try_disconnect();
                }
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(fail(e.to_string())),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .map_err(|_| fail("did not acknowledge the press within 10s".into()))?
}

/// How many publish/subscribe round trips diag measures, one after the other.
pub const ROUND_TRIPS: usize = 12;

/// What diag's broker check learnt.
#[derive(Debug, Clone)]
pub struct RoundTrip {
    /// From CONNECT to CONNACK.
    pub connect_ms: f64,
    /// From PUBLISH to receiving it back on our own subscription: the median of
    /// [`ROUND_TRIPS`] round trips, each sent right after the broker acknowledged a QoS 1
    /// message, as a press follows a ring's outcome. A broker with Nagle's algorithm on holds
    /// the copy back until we acknowledge its acknowledgement: some 40 ms instead of a tenth
    /// of one.
    pub round_trip_ms: f64,
    /// The slowest of them.
    pub slowest_ms: f64,
    /// The daemon's retained `P/status`, if the broker holds one.
    pub status: Option<serde_json::Value>,
}

/// Connects twice with `settings` (diag's own client ids, clean sessions, no will): a
/// listener, which subscribes to a private topic and to `status_topic`, and a bridge. Then
/// [`ROUND_TRIPS`] times: the listener publishes at QoS 1 where nobody listens and, as soon as
/// the broker acknowledged that, the bridge publishes to the private topic; the time until
/// the listener has it is a round trip. It is how a press follows a ring's outcome to the
/// daemon. Disconnects both.
pub async fn round_trip(
    settings: MqttSettings,
    probe: String,
    status_topic: String,
    timeout: Duration,
) -> Result<RoundTrip, MqttError> {
    let broker = settings.broker();
    let fail = |reason: String| MqttError::Broker { broker: broker.clone(), reason };
    let client = |suffix: &str| {
        let mut s = settings.clone();
        s.client_id.push_str(suffix);
        let mut opts = s.v4_options(None);
        opts.set_clean_session(true);
        opts.set_manual_acks(false);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 8);
        no_delay(&mut eventloop);
        (client, eventloop)
    };
    let (listener, mut listening) = client("");
    let (bridge, mut bridging) = client("-bridge");
    let t0 = std::time::Instant::now();
    let acked = format!("{probe}/acked");
    let work = async {
        let (mut connect_ms, mut sent_at, mut status) = (0.0, None, None);
        let (mut subscribed, mut bridge_up) = (false, false);
        let mut trips: Vec<f64> = Vec::with_capacity(ROUND_TRIPS);
        let err = |e: rumqttc::ClientError| fail(e.to_string());
        let ack_me = || listener.try_publish(acked.clone(), QoS::AtLeastOnce, false, "diag").map_err(err);
        loop {
            let (ev, from_bridge) = tokio::select! {
                // cancel-safe: poll() keeps its state between calls
                ev = listening.poll() => (ev, false),
                // cancel-safe: as above
                ev = bridging.poll() => (ev, true),
            };
            match ev.map_err(|e| fail(e.to_string()))? {
                rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) if from_bridge => {
                    bridge_up = true;
                    if subscribed {
                        ack_me()?;
                    }
                }
                rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) => {
                    connect_ms = t0.elapsed().as_secs_f64() * 1000.0;
                    let filters =
                        [&status_topic, &probe].map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtMostOnce));
                    listener.try_subscribe_many(filters).map_err(err)?;
                }
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    subscribed = true;
                    if bridge_up {
                        ack_me()?;
                    }
                }
                rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) if !from_bridge => {
                    sent_at = Some(std::time::Instant::now());
                    bridge.try_publish(probe.clone(), QoS::AtMostOnce, false, "diag").map_err(err)?;
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) if p.topic == status_topic => {
                    status = serde_json::from_slice(&p.payload).ok();
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) if p.topic == probe => {
                    trips.push(sent_at.map_or(0.0, |s| s.elapsed().as_secs_f64() * 1000.0));
                    if trips.len() == ROUND_TRIPS {
                        let _ = listener.try_disconnect();
                        let _ = bridge.try_disconnect();
                        trips.sort_by(|a, b| a.total_cmp(b));
                        let (round_trip_ms, slowest_ms) = (trips[ROUND_TRIPS / 2], trips[ROUND_TRIPS - 1]);
                        return Ok(RoundTrip { connect_ms, round_trip_ms, slowest_ms, status });
                    }
                    ack_me()?;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| fail(format!("no round trip within {}s", timeout.as_secs())))?
}

/// A short-lived client for a tool that converses with the daemon (the reference phone):
/// connect (3.1.1, clean session, no will), subscribe, then publish requests and read the
/// replies. One task does everything: publishes are queued with `try_publish` and sent while
/// [`Conversation::next`] polls the event loop, so the client is never awaited.
pub struct Conversation {
    client: rumqttc::AsyncClient,
    eventloop: rumqttc::EventLoop,
    broker: String,
}

impl Conversation {
    /// Connects and subscribes to `filters` (QoS 1); returns once the broker acknowledged the
    /// subscriptions, so a reply to what is published next cannot be missed.
    pub async fn open(settings: MqttSettings, filters: &[String], timeout: Duration) -> Result<Self, MqttError> {
        let broker = settings.broker();
        let fail = |reason: String| MqttError::Broker { broker: broker.clone(), reason };
        let mut opts = settings.v4_options(None);
        opts.set_clean_session(true);
        opts.set_manual_acks(false);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 16);
        no_delay(&mut eventloop);
        let subscribed = async {
            loop {
                match eventloop.poll().await.map_err(|e| fail(e.to_string()))? {
                    rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) => {
                        let filters =
                            filters.iter().map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                        client.try_subscribe_many(filters).map_err(|e| fail(e.to_string()))?;
                    }
                    rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => return Ok::<(), MqttError>(()),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(timeout, subscribed)
            .await
            .map_err(|_| fail(format!("no connection within {}s", timeout.as_secs())))??;
        Ok(Conversation { client, eventloop, broker })
    }

    /// Queues a QoS 1 message; it goes out while [`Conversation::next`] polls.
    pub fn publish(&self, topic: String, payload: impl Into<Vec<u8>>) -> Result<(), MqttError> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload.into())
            .map_err(|e| MqttError::Broker { broker: self.broker.clone(), reason: e.to_string() })
    }

    /// The next message on a subscribed topic, within `timeout` (`None` when none came).
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<(String, Bytes)>, MqttError> {
        let broker = self.broker.clone();
        let eventloop = &mut self.eventloop;
        let next = async {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => return Ok((p.topic, p.payload)),
                    Ok(_) => {}
                    Err(e) => return Err(MqttError::Broker { broker: broker.clone(), reason: e.to_string() }),
                }
            }
        };
        match tokio::time::timeout(timeout, next).await {
            Ok(got) => got.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Sends what is still queued and disconnects (within a second or two).
    pub async fn close(mut self) {
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match self.eventloop.poll().await {
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}
