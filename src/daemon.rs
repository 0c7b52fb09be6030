//! `dingdong run`: wires the store thread, the MQTT client, the ringer and the outbox into
//! named tasks; readiness and watchdog for systemd; shutdown with a bounded drain.
//! Business rules live in the modules it wires.

use crate::apns::http2::Http2Client;
use crate::config::{Config, Transport as TransportKind};
use crate::mqtt::sources::{self, Inbound};
use crate::mqtt::{Incoming, MqttHandle, MqttSettings};
use crate::outbox::{Outbox, OutboxSettings, RetryPolicy, Transport};
use crate::pairing::service::{Pairing, Settings as PairingSettings};
use crate::ring::{IntakeStats, PressResult, Ringer};
use crate::store::{Store, StoreHandle};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// How long in-flight deliveries may finish after SIGTERM before the rest is left pending.
pub const DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("APNs client: {0}")]
    Apns(#[from] crate::apns::http2::Http2Error),
    #[error("MQTT: {0}")]
    Mqtt(#[from] crate::mqtt::client::MqttError),
    #[error("{0}")]
    Other(String),
}

/// Builds the transport `[apns]` asks for.
pub fn transport(cfg: &Config) -> Result<Transport, DaemonError> {
    match cfg.apns.transport {
        TransportKind::Http2 => Ok(Transport::Http2(Http2Client::from_config(&cfg.apns)?)),
        TransportKind::Binary => {
            Err(DaemonError::Other("apns.transport = \"binary\" is not available in this build yet".into()))
        }
    }
}

/// The topics the daemon listens to.
fn subscriptions(prefix: &str) -> Vec<String> {
    vec![
        format!("{prefix}/button/+/press"),
        format!("{prefix}/pair/request"),
        format!("{prefix}/phone/+/+"),
        format!("{prefix}/gateway/pair-button"),
    ]
}

/// Runs until `stop` is cancelled. `ready` fires once the database is migrated and the broker
/// has accepted us (READY=1 under systemd is sent at the same moment).
pub async fn run(cfg: Config, stop: CancellationToken, ready: Option<oneshot::Sender<()>>) -> Result<(), DaemonError> {
    cfg.check_files()?;
    let transport = transport(&cfg)?;
    let store = StoreHandle::spawn(Store::open(&cfg.gateway.database)?);

    let mut cfg = cfg;
    if cfg.mqtt.url == "embedded" {
        let addr = crate::mqtt::broker::start_embedded(([127, 0, 0, 1], 1883).into()).map_err(DaemonError::Other)?;
        cfg.mqtt.url = format!("mqtt://{addr}");
    }
    let tracker = TaskTracker::new();
    // Ring deliveries, tracked apart so shutdown can wait for exactly them.
    let deliveries = TaskTracker::new();
    let mqtt_stop = CancellationToken::new();
    let settings = MqttSettings::from_config(&cfg, subscriptions(&cfg.mqtt.topic_prefix))?;
    let (mqtt, inbox, mut connected) = crate::mqtt::client::start(settings, &tracker, mqtt_stop.clone());

    let outbox = Outbox::new(
        store.clone(),
        transport,
        Some(mqtt.clone()),
        OutboxSettings {
            topic: cfg.apns.topic.as_str().into(),
            sound: cfg.ring.sound.clone(),
            retry: RetryPolicy::default(),
        },
    );
    let stats = Arc::new(IntakeStats::default());
    let ringer = Ringer::new(store.clone(), cfg.ring.expiry.0, cfg.ring.debounce.0, stats.clone());
    let heartbeat = Arc::new(AtomicI64::new(crate::now_ms()));

    // Rings a crash or shutdown left unfinished go out first (or are marked expired).
    resume(&store, &outbox, &deliveries, &stop).await?;

    let pairing = Pairing::new(
        store.clone(),
        PairingSettings {
            bundle_id: cfg.apns.topic.clone(),
            button_user: cfg.pairing.button_user.clone(),
            code_file: cfg.pairing_code_file(),
            limits: Default::default(),
        },
    );
    let intake = Intake {
        prefix: cfg.mqtt.topic_prefix.clone(),
        pairing,
        ringer,
        outbox: outbox.clone(),
        mqtt: mqtt.clone(),
        deliveries: deliveries.clone(),
        stop: stop.clone(),
        heartbeat: heartbeat.clone(),
    };
    tracker.spawn(intake.run(inbox));

    // READY once the broker has accepted us.
    tokio::select! {
        r = connected.wait_for(|c| *c) => { r.map_err(|_| DaemonError::Other("MQTT client stopped before connecting".into()))?; }
        _ = stop.cancelled() => {}
    }
    info!(gateway = %cfg.gateway.id, database = %cfg.gateway.database.display(), "dingdong ready");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    if let Some(r) = ready {
        let _ = r.send(());
    }
    tracker.spawn(watchdog(heartbeat, stop.clone()));

    stop.cancelled().await;
    info!("stopping: intake closed, draining in-flight deliveries");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracker.close();
    deliveries.close();
    // Deliveries stop at their next retry wait; requests in flight get DRAIN to finish.
    if tokio::time::timeout(DRAIN, deliveries.wait()).await.is_err() {
        warn!(rings = deliveries.len(), "drain time over: unfinished phones stay pending for the next start");
    }
    mqtt.shutdown().await;
    mqtt_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    info!(presses = stats.presses.load(Ordering::Relaxed), rings = stats.rings.load(Ordering::Relaxed), "stopped");
    Ok(())
}

async fn resume(
    store: &StoreHandle,
    outbox: &Outbox,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), DaemonError> {
    let jobs = store.run(|s| s.unfinished_rings()).await?;
    let now = crate::now_ms();
    for job in jobs {
        if job.expires_at <= now {
            let id = job.ring_id.clone();
            let summary = store.run(move |s| s.expire_ring(&id)).await?;
            warn!(ring = %job.ring_id, phones = summary.expired, "unfinished ring expired while we were down: not sent");
            continue;
        }
        info!(ring = %job.ring_id, phones = job.phones.len(), "resuming unfinished ring");
        let (outbox, stop) = (outbox.clone(), stop.clone());
        tracker.spawn(async move { outbox.deliver(job, stop).await });
    }
    Ok(())
}

/// Sends WATCHDOG=1 only while the intake loop is alive (it stamps `heartbeat` every tick).
async fn watchdog(heartbeat: Arc<AtomicI64>, stop: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        if crate::now_ms() - heartbeat.load(Ordering::Relaxed) < (usec / 1000) as i64 {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else {
            warn!("intake loop stalled: withholding the watchdog ping");
        }
    }
}

/// The task that turns MQTT messages into rings.
struct Intake {
    prefix: String,
    pairing: Pairing,
    ringer: Ringer,
    outbox: Outbox,
    mqtt: MqttHandle,
    deliveries: TaskTracker,
    stop: CancellationToken,
    heartbeat: Arc<AtomicI64>,
}

impl Intake {
    async fn run(self, mut inbox: mpsc::Receiver<Incoming>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                // cancel-safe: stopping intake drops no message (unacked QoS 1 is redelivered)
                _ = self.stop.cancelled() => break,
                // cancel-safe: recv() keeps queued messages
                msg = inbox.recv() => match msg {
                    Some(m) => self.on_message(m).await,
                    None => break,
                },
                // cancel-safe: only a heartbeat
                _ = tick.tick() => self.heartbeat.store(crate::now_ms(), Ordering::Relaxed),
            }
        }
        debug!("intake stopped");
    }

    async fn on_message(&self, m: Incoming) {
        let received_at = crate::now_ms();
        let press = match sources::decode(&self.prefix, &m.topic, &m.payload) {
            Ok(Some(Inbound::Press(p))) => p,
            Ok(Some(pairing)) => return self.on_pairing(pairing, &m).await,
            Ok(None) => {
                debug!(topic = %m.topic, "message on a topic we do not handle");
                self.mqtt.ack(&m.publish).await;
                return;
            }
            Err(e) => {
                self.ringer.stats.malformed.fetch_add(1, Ordering::Relaxed);
                warn!(topic = %m.topic, error = %e, "malformed message ignored");
                self.mqtt.ack(&m.publish).await;
                return;
            }
        };
        match self.ringer.press(press, &m.topic, received_at).await {
            Ok(result) => {
                // The ring is in the database: only now may the broker forget the press.
                self.mqtt.ack(&m.publish).await;
                if let PressResult::Ring(job) = result {
                    let (outbox, stop) = (self.outbox.clone(), self.stop.clone());
                    self.deliveries.spawn(async move { outbox.deliver(job, stop).await });
                }
            }
            // Not acked: the broker redelivers the press after we reconnect.
            Err(e) => warn!(topic = %m.topic, error = %e, "cannot record the press"),
        }
    }

    /// Pairing messages: the pairing service decides, we publish its reply.
    async fn on_pairing(&self, msg: Inbound, m: &Incoming) {
        let reply = match msg {
            Inbound::PairRequest(r) => self.pairing.pair_request(r).await,
            Inbound::PhoneRequest { phone_id, request } => self.pairing.phone_request(phone_id, request).await,
            Inbound::PairButton(r) => {
                self.pairing.pair_button(r).await;
                None
            }
            Inbound::Press(_) => None,
        };
        self.mqtt.reply_and_ack(reply.as_ref().map(|r| (r.suffix.as_str(), r.payload.clone())), &m.publish);
    }
}
