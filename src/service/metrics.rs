//! The daemon's figures for Prometheus: what happens is counted where it happens (presses by
//! source in the intake, each phone's final outcome and each retry in the outbox, the
//! latencies of every ring), and what already has counters (the intake's and the
//! publisher's) or a state (the transport's connections, its JWT's age) is read at scrape
//! time. Rendered in the Prometheus text format by `prometheus-client`; served by
//! `net::scrape`.

use crate::domain::{Environment, PhoneState, Platform, Reason, RingState, Source};
use crate::service::publisher::PublishStats;
use crate::service::ringer::IntakeStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// Latency buckets, seconds: a ring is answered in milliseconds when all is well, in
/// minutes when the push service is away (up to the ring's expiry).
const LATENCY_BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    platform: &'static str,
    environment: &'static str,
    outcome: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    platform: &'static str,
    reason: String,
}

/// The transport's state at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportGauges {
    /// Connections open to the push service.
    pub connections: usize,
    /// Age of the provider token (JWT) in use, token auth only.
    pub jwt_age_secs: Option<u64>,
    /// Stopped by the push service's refusal of our credentials.
    pub stopped: bool,
}

/// What is read at scrape time.
pub struct Live {
    pub intake: Arc<IntakeStats>,
    pub publish: Arc<PublishStats>,
    pub transport: Arc<dyn Fn() -> TransportGauges + Send + Sync>,
    /// The push certificate's notAfter (UNIX seconds), 0 without one; set at start and reload.
    pub certificate_expiry: Arc<AtomicI64>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// The counters, gauges and histograms; cheap to share (`Arc`).
pub struct Metrics {
    registry: Mutex<Registry>,
    presses: Family<SourceLabel, Counter>,
    notifications: Family<NotificationLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    rings_finished: Family<StateLabel, Counter>,
    first_request: Histogram,
    first_answer: Histogram,
    last_answer: Histogram,
    pending_phones: Gauge,
    delivering: Gauge,
    outbox_store_faults: Counter,
}

/// The reason as a label: Apple's names, one word for every connection problem, and
/// "Other" for a reason we do not know (its text would make the label set unbounded).
fn reason_label(reason: Option<&Reason>) -> String {
    match reason {
        None => "none".into(),
        Some(Reason::Other(_)) => "Other".into(),
        Some(r) => r.as_str().to_string(),
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut r = Registry::with_prefix("dingdong");
        let histogram = || Histogram::new(LATENCY_BUCKETS);
        let m = Metrics {
            presses: Family::default(),
            notifications: Family::default(),
            retries: Family::default(),
            rings_finished: Family::default(),
            first_request: histogram(),
            first_answer: histogram(),
            last_answer: histogram(),
            pending_phones: Gauge::default(),
            delivering: Gauge::default(),
            outbox_store_faults: Counter::default(),
            registry: Mutex::new(Registry::default()),
        };
        r.register("presses", "Button presses taken from the broker, by bridge", m.presses.clone());
        r.register(
            "notifications",
            "Phones' final outcomes, by platform, environment, outcome and the push service's reason",
            m.notifications.clone(),
        );
        r.register("notification_retries", "Notifications to be tried again, by reason", m.retries.clone());
        r.register("rings_finished", "Rings closed, by final state", m.rings_finished.clone());
        r.register_with_unit(
            "press_to_first_request",
            "From a press reaching dingdong to its first notification handed to the transport",
            Unit::Seconds,
            m.first_request.clone(),
        );
        r.register_with_unit(
            "press_to_first_answer",
            "From a press reaching dingdong to the push service's first answer",
            Unit::Seconds,
            m.first_answer.clone(),
        );
        r.register_with_unit(
            "press_to_last_answer",
            "From a press reaching dingdong to the answer for its last phone",
            Unit::Seconds,
            m.last_answer.clone(),
        );
        r.register(
            "outbox_pending_phones",
            "Phones of rings under way without a final answer",
            m.pending_phones.clone(),
        );
        r.register("outbox_rings", "Rings being delivered", m.delivering.clone());
        r.register(
            "outbox_store_faults",
            "Writes of outcomes the store refused (retried until it takes them)",
            m.outbox_store_faults.clone(),
        );
        *m.registry.lock().expect("registry lock") = r;
        Arc::new(m)
    }

    /// Adds what is read at scrape time.
    pub fn watch(&self, live: Live) {
        self.registry.lock().expect("registry lock").register_collector(Box::new(live));
    }

    /// The Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("registry lock");
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }

    pub fn press(&self, source: Source) {
        self.presses.get_or_create(&SourceLabel { source: source.as_str() }).inc();
    }

    /// A phone's final outcome, as recorded, under its own platform.
    pub fn notification(&self, platform: Platform, env: Environment, state: PhoneState, reason: Option<&Reason>) {
        self.notifications_n(platform, env, state, reason, 1);
    }

    /// `n` phones' final outcomes alike (a batch's deliveries are counted at once: the
    /// labels are looked up once, not once per phone of a building).
    pub fn notifications_n(
        &self,
        platform: Platform,
        env: Environment,
        state: PhoneState,
        reason: Option<&Reason>,
        n: u64,
    ) {
        let labels = NotificationLabels {
            platform: platform.as_str(),
            environment: env.as_str(),
            outcome: state.as_str(),
            reason: reason_label(reason),
        };
        self.notifications.get_or_create(&labels).inc_by(n);
    }

    pub fn retry(&self, platform: Platform, reason: Option<&Reason>) {
        self.retries.get_or_create(&RetryLabels { platform: platform.as_str(), reason: reason_label(reason) }).inc();
    }

    pub fn ring_finished(&self, state: RingState) {
        self.rings_finished.get_or_create(&StateLabel { state: state.as_str() }).inc();
    }

    pub fn first_request(&self, ms: i64) {
        self.first_request.observe(ms.max(0) as f64 / 1000.0);
    }

    /// What the outbox measured of a ring (ms).
    pub fn answers(&self, first_ms: Option<i64>, all_ms: Option<i64>) {
        if let Some(ms) = first_ms {
            self.first_answer.observe(ms.max(0) as f64 / 1000.0);
        }
        if let Some(ms) = all_ms {
            self.last_answer.observe(ms.max(0) as f64 / 1000.0);
        }
    }

    /// A delivery of `phones` phones starts.
    pub fn delivery_started(&self, phones: usize) {
        self.delivering.inc();
        self.pending_phones.inc_by(phones as i64);
    }

    /// A delivery under way learnt of `phones` more phones (a big doorbell's, read while the
    /// first are sent).
    pub fn more_pending(&self, phones: usize) {
        self.pending_phones.inc_by(phones as i64);
    }

    /// `phones` phones of a delivery got their final answer (or will not get one from it).
    pub fn settled(&self, phones: usize) {
        self.pending_phones.dec_by(phones as i64);
    }

    pub fn delivery_ended(&self) {
        self.delivering.dec();
    }

    pub fn outbox_store_fault(&self) {
        self.outbox_store_faults.inc();
    }
}

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let i = &self.intake;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let counters: [(&str, &str, u64); 15] = [
            ("rings", "Rings started (presses that became a new ring).", load(&i.rings)),
            ("intake_presses", "Presses taken from the broker.", load(&i.presses)),
            ("intake_folded", "Presses folded into a ring in progress (debounce).", load(&i.folded)),
            ("intake_duplicates", "Presses delivered again by the broker, already rung.", load(&i.duplicates)),
            ("intake_expired", "Presses that arrived after their ring's expiry.", load(&i.expired)),
            ("intake_unknown_buttons", "Presses of buttons bound to no doorbell.", load(&i.unknown_buttons)),
            ("intake_malformed", "Messages refused as malformed.", load(&i.malformed)),
            ("intake_oversize", "Messages refused as too large.", load(&i.oversize)),
            ("intake_retained", "Retained presses ignored.", load(&i.retained)),
            ("intake_kept", "Presses kept in memory while the store refused them.", load(&i.kept)),
            (
                "store_faults",
                "Failed attempts to record presses (the store busy, locked or full).",
                load(&i.store_faults),
            ),
            ("mqtt_published", "Messages published to the broker.", load(&self.publish.published)),
            ("mqtt_acked", "Messages acknowledged to the broker.", load(&self.publish.acked)),
            (
                "mqtt_events_dropped",
                "Events dropped because the broker did not take them fast enough.",
                load(&self.publish.dropped),
            ),
            (
                "mqtt_retained_coalesced",
                "Retained states replaced by a newer one before they were sent.",
                load(&self.publish.coalesced),
            ),
        ];
        for (name, help, value) in counters {
            let c = ConstCounter::new(value);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let t = (self.transport)();
        let mut gauges: Vec<(&str, &str, Option<&Unit>, i64)> = vec![
            ("apns_connections", "Connections open to the push service.", None, t.connections as i64),
            (
                "apns_transport_stopped",
                "1 when the push service refused our credentials and sending stopped.",
                None,
                t.stopped as i64,
            ),
        ];
        if let Some(age) = t.jwt_age_secs {
            gauges.push(("apns_jwt_age", "Age of the provider token (JWT) in use.", Some(&Unit::Seconds), age as i64));
        }
        let expiry = self.certificate_expiry.load(Ordering::Relaxed);
        if expiry > 0 {
            gauges.push((
                "apns_certificate_expiry_timestamp",
                "When the push certificate expires, UNIX time.",
                Some(&Unit::Seconds),
                expiry,
            ));
        }
        for (name, help, unit, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(enc.encode_descriptor(name, help, unit, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `line_start` (a name with its labels) in `text`.
    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn counts_are_rendered_in_the_prometheus_text_format() {
        let m = Metrics::new();
        let intake = Arc::new(IntakeStats::default());
        intake.rings.fetch_add(2, Ordering::Relaxed);
        let expiry = Arc::new(AtomicI64::new(1_900_000_000));
        m.watch(Live {
            intake,
            publish: Arc::new(PublishStats::default()),
            transport: Arc::new(|| TransportGauges { connections: 2, jwt_age_secs: Some(61), stopped: false }),
            certificate_expiry: expiry,
        });
        m.press(Source::Rtl433);
        m.press(Source::Rtl433);
        m.notification(Platform::Apns, Environment::Production, PhoneState::Delivered, None);
        m.notification(Platform::Apns, Environment::Sandbox, PhoneState::Pruned, Some(&Reason::Unregistered));
        m.notification(Platform::Fcm, Environment::Production, PhoneState::Delivered, None);
        m.retry(Platform::Apns, Some(&Reason::Other("Teapot".into())));
        m.retry(Platform::Webpush, Some(&Reason::Connection("reset".into())));
        m.answers(Some(4), Some(7));
        m.delivery_started(3);
        m.settled(2);
        let t = m.render();
        assert_eq!(sample(&t, "dingdong_presses_total{source=\"rtl_433\"}"), Some(2.0), "{t}");
        assert_eq!(
            sample(
                &t,
                "dingdong_notifications_total{platform=\"apns\",environment=\"sandbox\",outcome=\"pruned\",reason=\"Unregistered\"}"
            ),
            Some(1.0),
            "{t}"
        );
        assert_eq!(sample(&t, "dingdong_notification_retries_total{platform=\"apns\",reason=\"Other\"}"), Some(1.0));
        assert_eq!(
            sample(&t, "dingdong_notifications_total{platform=\"fcm\",environment=\"production\",outcome=\"delivered\",reason=\"none\"}"),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            sample(&t, "dingdong_notification_retries_total{platform=\"webpush\",reason=\"Connection\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&t, "dingdong_press_to_last_answer_seconds_count"), Some(1.0), "{t}");
        assert_eq!(sample(&t, "dingdong_press_to_last_answer_seconds_bucket{le=\"0.01\"}"), Some(1.0), "{t}");
        assert_eq!(sample(&t, "dingdong_outbox_pending_phones"), Some(1.0), "{t}");
        assert_eq!(sample(&t, "dingdong_rings_total"), Some(2.0), "{t}");
        assert_eq!(sample(&t, "dingdong_apns_connections"), Some(2.0), "{t}");
        assert_eq!(sample(&t, "dingdong_apns_jwt_age_seconds"), Some(61.0), "{t}");
        assert_eq!(sample(&t, "dingdong_apns_certificate_expiry_timestamp_seconds"), Some(1.9e9), "{t}");
        assert_eq!(sample(&t, "dingdong_mqtt_events_dropped_total"), Some(0.0), "{t}");
        assert!(t.contains("# TYPE dingdong_presses_total counter"), "{t}");
    }
}
