//! `dingdong run`: wires the store thread, the MQTT client, the ringer and the outbox into
//! named tasks; readiness and watchdog for systemd; shutdown with a bounded drain.
//! Business rules live in the modules it wires.

use crate::app::config::{Config, Transport as TransportKind};
use crate::app::settings;
use crate::codec::bridge::{self as sources, Inbound};
use crate::codec::homeassistant as ha;

use crate::net::mqtt::{Incoming, MqttHandle};
use crate::service::outbox::{Outbox, OutboxSettings, RetryPolicy, Transport};
use crate::service::pairing::{Pairing, Settings as PairingSettings};
use crate::service::ringer::{IntakeStats, PressResult, Ringer};
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
    Config(#[from] crate::app::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Settings(#[from] crate::app::settings::SettingsError),
    #[error("MQTT: {0}")]
    Mqtt(#[from] crate::net::mqtt::MqttError),
    #[error("{0}")]
    Other(String),
}

/// Builds the transport `[apns]` asks for.
pub fn transport(cfg: &Config) -> Result<Transport, DaemonError> {
    match cfg.apns.transport {
        TransportKind::Http2 => Ok(Transport::Http2(settings::http2(cfg)?)),
        TransportKind::Binary => Ok(Transport::Binary(settings::binary(cfg)?)),
    }
}

/// The topics the daemon listens to: its own button and pairing topics, the radio bridges'
/// topics, and Home Assistant's birth message when discovery is on.
pub fn subscriptions(cfg: &Config) -> Vec<String> {
    let p = &cfg.mqtt.topic_prefix;
    let mut subs = vec![
        format!("{p}/button/+/press"),
        format!("{p}/pair/request"),
        format!("{p}/phone/+/+"),
        format!("{p}/gateway/pair-button"),
    ];
    subs.extend(sources::BRIDGE_TOPICS.iter().map(|t| t.to_string()));
    if cfg.homeassistant.discovery {
        subs.push(ha::status_topic(&cfg.homeassistant.discovery_prefix));
    }
    subs
}

/// Runs until `stop` is cancelled. `ready` fires once the database is migrated and the broker
/// has accepted us (READY=1 under systemd is sent at the same moment).
pub async fn run(cfg: Config, stop: CancellationToken, ready: Option<oneshot::Sender<()>>) -> Result<(), DaemonError> {
    cfg.check_files()?;
    let transport = transport(&cfg)?;
    // The legacy transport's stale tokens also come from the feedback service.
    let feedback = settings::feedback(&cfg)?;
    let store = StoreHandle::spawn(Store::open(&cfg.gateway.database)?);

    let mut cfg = cfg;
    if cfg.mqtt.url == "embedded" {
        let addr = crate::app::broker::start_embedded(([127, 0, 0, 1], 1883).into()).map_err(DaemonError::Other)?;
        cfg.mqtt.url = format!("mqtt://{addr}");
    }
    let tracker = TaskTracker::new();
    // Ring deliveries, tracked apart so shutdown can wait for exactly them.
    let deliveries = TaskTracker::new();
    let mqtt_stop = CancellationToken::new();
    let mqtt_settings = settings::mqtt(&cfg, subscriptions(&cfg))?;
    let (mqtt, inbox, mut connected) = crate::net::mqtt::start(mqtt_settings, &tracker, mqtt_stop.clone());

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
    let heartbeat = Arc::new(AtomicI64::new(crate::domain::now_ms()));

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
        store: store.clone(),
        ha: cfg.homeassistant.discovery.then(|| HaSettings {
            discovery_prefix: cfg.homeassistant.discovery_prefix.clone(),
            status_topic: ha::status_topic(&cfg.homeassistant.discovery_prefix),
            gateway: cfg.gateway.id.clone(),
            announced: Default::default(),
        }),
        pairing,
        ringer,
        outbox: outbox.clone(),
        mqtt: mqtt.clone(),
        deliveries: deliveries.clone(),
        stop: stop.clone(),
        heartbeat: heartbeat.clone(),
    };
    if let Some((client, interval)) = feedback {
        tracker.spawn(crate::service::feedback::run_poller(client, store.clone(), interval, stop.clone()));
    }

    // READY once the broker has accepted us (the database was migrated by Store::open).
    tokio::select! {
        r = connected.wait_for(|c| *c) => { r.map_err(|_| DaemonError::Other("MQTT client stopped before connecting".into()))?; }
        _ = stop.cancelled() => {}
    }
    intake.announce_all().await;
    tracker.spawn(intake.run(inbox));

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
    let now = crate::domain::now_ms();
    for job in jobs {
        if job.expires_at <= now {
            let id = job.ring_id.clone();
            let summary = store.run(move |s| s.expire_ring(&id)).await?;
            warn!(ring = %job.ring_id, phones = summary.expired, "unfinished ring expired while we were down: not sent");
            outbox.report_expired(&job.ring_id).await;
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
        if crate::domain::now_ms() - heartbeat.load(Ordering::Relaxed) < (usec / 1000) as i64 {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else {
            warn!("intake loop stalled: withholding the watchdog ping");
        }
    }
}

/// Home Assistant discovery state of the intake.
struct HaSettings {
    discovery_prefix: String,
    status_topic: String,
    gateway: String,
    /// Doorbells announced since start; a doorbell added later is announced at its first ring.
    announced: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The task that turns MQTT messages into rings.
struct Intake {
    prefix: String,
    store: StoreHandle,
    ha: Option<HaSettings>,
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
        let mut reported = None;
        loop {
            tokio::select! {
                // cancel-safe: stopping intake drops no message (unacked QoS 1 is redelivered)
                _ = self.stop.cancelled() => break,
                // cancel-safe: recv() keeps queued messages
                msg = inbox.recv() => match msg {
                    Some(m) => self.on_message(m).await,
                    None => break,
                },
                // cancel-safe: only a heartbeat and a status check
                _ = tick.tick() => {
                    self.heartbeat.store(crate::domain::now_ms(), Ordering::Relaxed);
                    self.report_transport(&mut reported).await;
                }
            }
        }
        debug!("intake stopped");
    }

    /// A transport stopped by Apple's refusal of our credentials is announced on the retained
    /// `P/status`, so a technician sees it without reading logs.
    async fn report_transport(&self, reported: &mut Option<crate::domain::Reason>) {
        let now = self.outbox.transport().stopped();
        if now.is_some() && now != *reported {
            let reason = now.as_ref().map(|r| r.to_string()).unwrap_or_default();
            let status = serde_json::json!({"state": "online", "apns": "stopped", "reason": reason, "fix": "check apns.token / apns.certificate, then restart dingdong (dingdong diag tells which)"});
            if let Err(e) = self.mqtt.publish("status", status.to_string(), true).await {
                warn!(error = %e, "cannot publish the APNs failure");
            }
            *reported = now;
        }
    }

    /// Publishes the discovery config of every doorbell (retained).
    async fn announce_all(&self) {
        if self.ha.is_none() {
            return;
        }
        match self.store.run(|s| s.list_doorbells()).await {
            Ok(bells) => {
                for d in &bells {
                    self.announce(&d.id, &d.name).await;
                }
                debug!(doorbells = bells.len(), "Home Assistant discovery published");
            }
            Err(e) => warn!(error = %e, "cannot list doorbells for Home Assistant discovery"),
        }
    }

    async fn announce(&self, id: &str, name: &str) {
        let Some(ha) = &self.ha else { return };
        let (topic, payload) = ha::discovery(&ha.discovery_prefix, &self.prefix, &ha.gateway, id, name);
        if let Err(e) = self.mqtt.publish_topic(topic, payload.into_bytes(), true).await {
            warn!(error = %e, doorbell = %id, "cannot publish Home Assistant discovery");
        }
        ha.announced.lock().expect("announced lock").insert(id.to_string());
    }

    /// Publishes the ring event on the doorbell's entity, announcing the entity first if new.
    async fn ring_event(&self, job: &crate::store::rings::RingJob) {
        let Some(ha) = &self.ha else { return };
        let known = ha.announced.lock().expect("announced lock").contains(&job.doorbell_id);
        if !known {
            self.announce(&job.doorbell_id, &job.doorbell_name).await;
        }
        let payload = ha::ring_event(&job.ring_id, &job.doorbell_id, job.pressed_at);
        if let Err(e) =
            self.mqtt.publish_topic(ha::event_topic(&self.prefix, &job.doorbell_id), payload.into_bytes(), false).await
        {
            warn!(error = %e, ring = %job.ring_id, "cannot publish the Home Assistant ring event");
        }
    }

    async fn on_message(&self, m: Incoming) {
        let received_at = crate::domain::now_ms();
        if self.ha.as_ref().is_some_and(|h| h.status_topic == m.topic) {
            if ha::is_online(&m.payload) {
                info!("Home Assistant is online: publishing discovery");
                self.announce_all().await;
            }
            self.mqtt.ack(&m.publish);
            return;
        }
        let press = match sources::decode(&self.prefix, &m.topic, &m.payload) {
            Ok(Some(Inbound::Press(p))) => p,
            Ok(Some(pairing)) => return self.on_pairing(pairing, &m).await,
            Ok(None) => {
                debug!(topic = %m.topic, "message on a topic we do not handle");
                self.mqtt.ack(&m.publish);
                return;
            }
            Err(e) => {
                self.ringer.stats.malformed.fetch_add(1, Ordering::Relaxed);
                warn!(topic = %m.topic, error = %e, "malformed message ignored");
                self.mqtt.ack(&m.publish);
                return;
            }
        };
        match self.ringer.press(press, &m.topic, received_at).await {
            Ok(result) => {
                // The ring is in the database: only now may the broker forget the press.
                self.mqtt.ack(&m.publish);
                match result {
                    PressResult::Ring(job) => {
                        let (outbox, stop, for_ha) = (self.outbox.clone(), self.stop.clone(), job.clone());
                        self.deliveries.spawn(async move { outbox.deliver(job, stop).await });
                        self.ring_event(&for_ha).await;
                    }
                    PressResult::Expired(ring_id) => self.outbox.report_expired(&ring_id).await,
                    _ => {}
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
