//! `dingdong run`: checks what it is given, builds every part from the configuration, then
//! runs them as named tasks: the store thread, the MQTT client, the publisher, the intake, the
//! outbox's deliveries. Readiness and watchdog for systemd; SIGHUP reloads what can change
//! without dropping a press; shutdown with a bounded drain. Business rules live in `service`.

use crate::app::config::{Config, ConfigError};
use crate::app::instance::{InstanceError, InstanceLock};
use crate::app::settings;
use crate::codec::homeassistant as ha;
use crate::net::mqtt::Subscription;
use crate::service::intake::{HaSettings, Intake};
use crate::service::metrics::{Live, Metrics};
use crate::service::outbox::{Outbox, OutboxSettings, RetryPolicy, Transport, Transports};
use crate::service::pairing::{Pairing, Settings as PairingSettings};
use crate::service::publisher::Publisher;
use crate::service::ringer::{IntakeStats, RingRules, Ringer};
use crate::store::{Store, StoreHandle};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// How long in-flight deliveries may finish after SIGTERM before the rest is left pending.
pub const DRAIN: Duration = Duration::from_secs(10);

/// How the binary changes the log filter on reload (the subscriber lives in `main`).
pub static LOG_FILTER: OnceLock<SetFilter> = OnceLock::new();

/// Replaces the log filter with a tracing filter spec.
pub type SetFilter = fn(&str) -> Result<(), String>;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    #[error("MQTT: {0}")]
    Mqtt(#[from] crate::net::mqtt::MqttError),
    #[error("{0}")]
    Other(String),
}

impl DaemonError {
    /// Exit code 2 for what a restart cannot fix (the config, another instance, a corrupt
    /// database), 1 for the rest.
    pub fn is_input(&self) -> bool {
        matches!(self, DaemonError::Config(_) | DaemonError::Instance(_) | DaemonError::Settings(_))
            || matches!(self, DaemonError::Store(crate::store::StoreError::Open { .. }))
    }
}

/// How the caller controls a running daemon.
#[derive(Default)]
pub struct Control {
    pub stop: CancellationToken,
    /// Each message reloads the configuration (SIGHUP).
    pub reload: Option<mpsc::Receiver<()>>,
    /// Fires once the database is migrated and the broker has accepted us.
    pub ready: Option<oneshot::Sender<()>>,
    /// Capacity of the MQTT client's request queue (tests shrink it to 1).
    pub request_capacity: Option<usize>,
}

/// Builds the transport `[apns]` asks for.
pub fn transport(cfg: &Config) -> Result<Transport, settings::SettingsError> {
    use crate::app::config::Transport as Kind;
    Ok(match cfg.apns.transport {
        Kind::Http2 => Transport::Http2(settings::http2(cfg)?),
        Kind::Binary => Transport::Binary(settings::binary(cfg)?),
    })
}

/// Builds every transport the configuration asks for: APNs, and FCM and Web Push when
/// their tables are there.
pub fn transports(cfg: &Config) -> Result<Transports, settings::SettingsError> {
    Ok(Transports { apns: transport(cfg)?, fcm: settings::fcm(cfg)?, webpush: settings::webpush(cfg)? })
}

fn outbox_settings(cfg: &Config) -> OutboxSettings {
    OutboxSettings {
        topic: cfg.apns.topic.as_str().into(),
        environment: cfg.apns.environment,
        sound: cfg.ring.sound.clone(),
        retry: RetryPolicy::default(),
        timezone: cfg.timezone(),
    }
}

/// The topics the daemon listens to: its own button and pairing topics, the radio bridges'
/// topics (`[bridges]`), and Home Assistant's birth message when discovery is on.
pub fn subscriptions(cfg: &Config) -> Vec<Subscription> {
    let p = &cfg.mqtt.topic_prefix;
    let mut subs = vec![
        Subscription::events(format!("{p}/button/+/press")),
        Subscription::events(format!("{p}/pair/request")),
        Subscription::events(format!("{p}/pair/finish")),
        Subscription::events(format!("{p}/phone/+/+")),
        Subscription::events(format!("{p}/gateway/pair-button")),
    ];
    subs.extend(settings::routes(cfg).bridge_filters().into_iter().map(Subscription::events));
    if cfg.homeassistant.discovery {
        subs.push(Subscription::state(ha::status_topic(&cfg.homeassistant.discovery_prefix)));
        // The retained configs: entities of doorbells removed while we were stopped go too.
        subs.push(Subscription::state(ha::config_filter(&cfg.homeassistant.discovery_prefix)));
        // Each person's "do not disturb" switch and alert-level select.
        subs.push(Subscription::events(ha::control_command_filter(p)));
    }
    subs
}

/// Warns about secret files that others may read (the key is still used).
pub fn warn_readable_secrets(cfg: &Config) {
    for (key, path) in cfg.secret_files() {
        if crate::domain::files::readable_by_others(&path) {
            warn!(key, file = %path.display(), "a secret file is readable by every user: chmod o-rwx it");
        }
    }
}

/// Runs until `control.stop` is cancelled.
pub async fn run(cfg: Config, mut control: Control) -> Result<(), DaemonError> {
    cfg.check_files()?;
    warn_readable_secrets(&cfg);
    let _instance = InstanceLock::acquire(&cfg.gateway.database)?;
    let store = Store::open(&cfg.gateway.database)?;
    store.check_integrity()?;
    let transport = transports(&cfg)?;
    // The legacy transport's stale tokens also come from the feedback service.
    let feedback = settings::feedback(&cfg)?;
    let store = StoreHandle::spawn(store);

    let mut cfg = cfg;
    if cfg.mqtt.url == "embedded" {
        cfg.mqtt.url = embedded_broker()?;
    }
    let stop = control.stop.clone();
    let tracker = TaskTracker::new();
    // Ring deliveries, tracked apart so shutdown can wait for exactly them.
    let deliveries = TaskTracker::new();
    let (mqtt_stop, publisher_stop) = (CancellationToken::new(), CancellationToken::new());
    let mut mqtt_settings = settings::mqtt(&cfg, subscriptions(&cfg))?;
    if let Some(cap) = control.request_capacity {
        mqtt_settings.request_capacity = cap;
    }
    let mqtt = crate::net::mqtt::start(mqtt_settings, &tracker, mqtt_stop.clone());
    let mut link = mqtt.link.clone();
    let publisher = Publisher::start(
        mqtt.client,
        mqtt.link,
        &cfg.mqtt.topic_prefix,
        &cfg.gateway.id,
        &tracker,
        publisher_stop.clone(),
    );

    let metrics = Metrics::new();
    let outbox = Outbox::new(store.clone(), transport, Some(publisher.clone()), outbox_settings(&cfg))
        .with_metrics(metrics.clone());
    let stats = Arc::new(IntakeStats::default());
    let certificate_expiry = Arc::new(AtomicI64::new(settings::certificate_expiry(&cfg).unwrap_or(0)));
    metrics.watch(Live {
        intake: stats.clone(),
        publish: publisher.stats.clone(),
        transport: {
            let outbox = outbox.clone();
            Arc::new(move || outbox.transport().gauges())
        },
        certificate_expiry: certificate_expiry.clone(),
    });
    // The metrics endpoint, when configured: listening before READY, so a port in use is a
    // failed start, not a silent gap in the graphs.
    if let Some(addr) = &cfg.metrics.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| DaemonError::Other(format!("metrics.listen = \"{addr}\": cannot listen: {e}")))?;
        info!(listen = %addr, "serving Prometheus metrics on /metrics");
        let m = metrics.clone();
        tracker.spawn(crate::net::scrape::serve(listener, Arc::new(move || m.render()), &tracker, stop.clone()));
    }
    let ringer = Arc::new(Ringer::new(store.clone(), cfg.ring.expiry.0, cfg.ring.debounce.0, stats.clone()));
    let heartbeat = Arc::new(AtomicI64::new(crate::domain::now_ms()));

    // Connections for the widest ring to expect are opened now and kept (Apple asks
    // providers to keep them open): the first press finds them ready.
    outbox.expect(store.run(|s| s.expected_ring_phones()).await?);
    outbox.prepare();
    // The big doorbells' recipient lists are read now, while those connections open, and
    // kept: the first ring after a start is sent from memory, as later ones are.
    let t = std::time::Instant::now();
    let (lists, phones) = store.run(|s| s.keep_big_lists()).await?;
    if lists > 0 {
        info!(lists, phones, ms = t.elapsed().as_millis() as u64, "recipient lists of big doorbells read ahead");
    }
    // Rings a crash or shutdown left unfinished go out first (or are marked expired).
    resume(&store, &outbox, &deliveries, &stop).await?;

    let pairing = Pairing::new(
        store.clone(),
        PairingSettings {
            topic_prefix: cfg.mqtt.topic_prefix.clone(),
            bundle_id: cfg.apns.topic.clone(),
            button_user: cfg.pairing.button_user.clone(),
            code_file: cfg.pairing_code_file(),
            limits: Default::default(),
        },
    );
    // "I'm coming": the pairing service records an answer; this task quiets the other phones.
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<crate::store::household::Answered>();
    let pairing = pairing.with_answers(answers_tx);
    {
        let (outbox, stop, ha_events) = (outbox.clone(), stop.clone(), cfg.homeassistant.discovery);
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    // cancel-safe: recv() keeps what it did not hand over
                    a = answers.recv() => match a {
                        Some(a) => { outbox.answered(&a, ha_events, &stop).await; }
                        None => break,
                    },
                    _ = stop.cancelled() => break,
                }
            }
        });
    }
    let intake = Intake {
        prefix: cfg.mqtt.topic_prefix.clone(),
        routes: settings::routes(&cfg),
        store: store.clone(),
        ha: cfg.homeassistant.discovery.then(|| HaSettings {
            discovery_prefix: cfg.homeassistant.discovery_prefix.clone(),
            status_topic: ha::status_topic(&cfg.homeassistant.discovery_prefix),
            gateway: cfg.gateway.id.clone(),
        }),
        pairing,
        ringer: ringer.clone(),
        outbox: outbox.clone(),
        publisher: publisher.clone(),
        deliveries: deliveries.clone(),
        stop: stop.clone(),
        heartbeat: heartbeat.clone(),
        metrics: Some(metrics.clone()),
    };
    if let Some((client, interval)) = feedback {
        tracker.spawn(crate::service::feedback::run_poller(client, store.clone(), interval, stop.clone()));
    }
    tracker.spawn(intake.run(mqtt.inbox));

    // READY once the broker has accepted us (the database was migrated by Store::open).
    tokio::select! {
        r = link.wait_for(|l| l.up) => { r.map_err(|_| DaemonError::Other("MQTT client stopped before connecting".into()))?; }
        _ = stop.cancelled() => {}
    }
    info!(gateway = %cfg.gateway.id, database = %cfg.gateway.database.display(), "dingdong ready");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    if let Some(r) = control.ready.take() {
        let _ = r.send(());
    }
    tracker.spawn(watchdog(heartbeat, stop.clone()));
    // The ring history kept to [history] retention, in small steps.
    tracker.spawn(crate::service::history::run(store.clone(), cfg.history.retention.0, stop.clone()));
    // STATUS= for systemctl status: ready, counts, the last ring, or what is wrong.
    tracker.spawn(crate::app::status::run(store.clone(), publisher.clone(), stop.clone()));

    let live = Running { outbox: outbox.clone(), ringer, certificate_expiry };
    loop {
        tokio::select! {
            // cancel-safe: only waits
            _ = stop.cancelled() => break,
            // cancel-safe: recv() keeps queued reload requests
            Some(()) = recv(&mut control.reload) => cfg = live.reload(cfg),
        }
    }
    info!("stopping: intake closed, draining in-flight deliveries");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracker.close();
    deliveries.close();
    // Deliveries stop at their next retry wait; requests in flight get DRAIN to finish.
    if tokio::time::timeout(DRAIN, deliveries.wait()).await.is_err() {
        warn!(rings = deliveries.len(), "drain time over: unfinished phones stay pending for the next start");
    }
    // The publisher sends what acks are left, the offline status, and disconnects.
    publisher_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), link.wait_for(|l| !l.up)).await;
    mqtt_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    info!(
        presses = stats.presses.load(Ordering::Relaxed),
        rings = stats.rings.load(Ordering::Relaxed),
        dropped_events = publisher.stats.dropped.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}

/// Starts the embedded broker; its `mqtt://` address.
#[cfg(feature = "embedded-broker")]
fn embedded_broker() -> Result<String, DaemonError> {
    let addr = crate::app::broker::start_embedded(([127, 0, 0, 1], 1883).into()).map_err(DaemonError::Other)?;
    Ok(format!("mqtt://{addr}"))
}

#[cfg(not(feature = "embedded-broker"))]
fn embedded_broker() -> Result<String, DaemonError> {
    Err(DaemonError::Other("mqtt.url = \"embedded\": this build has no embedded broker (built without the `embedded-broker` feature); point mqtt.url at a broker".into()))
}

async fn recv(rx: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The parts a reload changes.
struct Running {
    outbox: Outbox,
    ringer: Arc<Ringer>,
    /// The push certificate's expiry the metrics show.
    certificate_expiry: Arc<AtomicI64>,
}

impl Running {
    /// Reads the configuration again and applies what can change while running: the push
    /// credentials (a rotated `.p8` or certificate), `[ring]`, `[log]`. A file that does not
    /// load, or whose credentials do not, is refused with one line and `old` stays.
    fn reload(&self, old: Config) -> Config {
        let new = match Config::load(&old.file).and_then(|c| c.check_files().map(|()| c)) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "reload refused: the running configuration stays");
                return old;
            }
        };
        let transport = match transports(&new) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "reload refused: the running configuration stays");
                return old;
            }
        };
        if let Some(filter) = new.log.filter.as_deref() {
            if let Some(set) = LOG_FILTER.get() {
                if let Err(e) = set(filter) {
                    warn!(error = %e, "reload refused: log.filter");
                    return old;
                }
            }
        }
        warn_readable_secrets(&new);
        self.outbox.replace(transport, outbox_settings(&new));
        self.outbox.prepare();
        self.certificate_expiry.store(settings::certificate_expiry(&new).unwrap_or(0), Ordering::Relaxed);
        self.ringer.set_rules(RingRules { expiry: new.ring.expiry.0, debounce: new.ring.debounce.0 });
        let restart = old.restart_needed(&new);
        if !restart.is_empty() {
            warn!(keys = %restart.join(", "), "changed keys take effect at the next restart");
        }
        info!(file = %new.file.display(), "configuration reloaded: credentials, [ring] and [log] applied");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let mut new = new;
        // The running broker address (an embedded one was resolved at start) stays.
        new.mqtt.url = old.mqtt.url.clone();
        debug!("reload done");
        new
    }
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
        let timing = crate::domain::RingTiming::received_at(job.received_at * 1000);
        tracker.spawn(async move { outbox.deliver(job, timing, stop).await });
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
            // cancel-safe: only a timer
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
