//! The operator's tables: `[history]` (how long rings are kept), `[metrics]` (the Prometheus
//! listener) and `[bridges]` (the topics the radio bridges publish on). Schema, defaults and
//! the checks serde cannot make.

use super::{Config, ConfigError, Span};
use serde::Deserialize;
use std::time::Duration;

/// The ring history.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    /// Rings older than this are removed, with their per-phone rows, in the background.
    #[serde(default = "default_retention")]
    pub retention: Span,
}

impl Default for History {
    fn default() -> Self {
        History { retention: default_retention() }
    }
}

fn default_retention() -> Span {
    Span(Duration::from_secs(30 * 86_400))
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// `HOST:PORT` to serve `/metrics` on; off when absent.
    pub listen: Option<String>,
}

/// Where the radio bridges publish. Each is what the bridge's own configuration says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bridges {
    /// rtl_433's `-F mqtt://...,events=TOPIC` (its default is `rtl_433/<hostname>/events`),
    /// as a subscription filter. Empty: not subscribed.
    #[serde(default = "default_rtl_433_events")]
    pub rtl_433_events: String,
    /// zigbee2mqtt's `mqtt.base_topic`; devices publish on `<base>/<friendly_name>`. Empty:
    /// not subscribed.
    #[serde(default = "default_zigbee2mqtt_base")]
    pub zigbee2mqtt_base: String,
    /// The topics a Tasmota RF receiver's `RfReceived` arrives on: `tele/<topic>/RESULT` with
    /// the default `FullTopic` (`%prefix%/%topic%/`), `tele/<topic>/RFRECEIVED` with
    /// `SetOption4 1`. Another `FullTopic` moves them (`+/tele/RESULT` for `%topic%/%prefix%/`).
    #[serde(default = "default_tasmota_topics")]
    pub tasmota_topics: Vec<String>,
}

impl Default for Bridges {
    fn default() -> Self {
        Bridges {
            rtl_433_events: default_rtl_433_events(),
            zigbee2mqtt_base: default_zigbee2mqtt_base(),
            tasmota_topics: default_tasmota_topics(),
        }
    }
}

fn default_rtl_433_events() -> String {
    "rtl_433/+/events".into()
}
fn default_zigbee2mqtt_base() -> String {
    "zigbee2mqtt".into()
}
fn default_tasmota_topics() -> Vec<String> {
    vec!["tele/+/RESULT".into(), "tele/+/RFRECEIVED".into()]
}

/// Why `filter` is not an MQTT subscription filter, if it is not.
pub fn filter_problem(filter: &str) -> Option<String> {
    if filter.is_empty() || filter.len() > 256 || filter.chars().any(|c| c.is_control()) {
        return Some(format!("'{filter}' must be 1 to 256 printable characters"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Some(format!("'{filter}': '#' may only be a whole last level"));
        }
        if level.contains('+') && *level != "+" {
            return Some(format!("'{filter}': '+' must be a whole level"));
        }
    }
    None
}

impl Config {
    /// `[history]`, `[metrics]` and `[bridges]`.
    pub(super) fn validate_ops(&self) -> Result<(), ConfigError> {
        if self.history.retention.0 <= self.ring.expiry.0 {
            return Err(self.err(
                "history.retention",
                "must be longer than ring.expiry (a ring is kept at least until it is over)",
                "write a number of days, like \"30d\"",
            ));
        }
        if let Some(listen) = &self.metrics.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(self.err(
                    "metrics.listen",
                    format!("'{listen}' is not an address to listen on"),
                    "write IP:PORT, like \"127.0.0.1:9477\" (remove it to serve no metrics)",
                ));
            }
        }
        let b = &self.bridges;
        if !b.rtl_433_events.is_empty() {
            if let Some(p) = filter_problem(&b.rtl_433_events) {
                return Err(self.err(
                    "bridges.rtl_433_events",
                    p,
                    "write rtl_433's events= topic, like \"rtl_433/+/events\"",
                ));
            }
        }
        let z = &b.zigbee2mqtt_base;
        if !z.is_empty()
            && (z.contains(['+', '#']) || z.starts_with('/') || z.ends_with('/') || filter_problem(z).is_some())
        {
            return Err(self.err(
                "bridges.zigbee2mqtt_base",
                format!("'{z}' is not a topic base"),
                "write zigbee2mqtt's mqtt.base_topic, like \"zigbee2mqtt\"",
            ));
        }
        for t in &b.tasmota_topics {
            if let Some(p) = filter_problem(t) {
                return Err(self.err(
                    "bridges.tasmota_topics",
                    p,
                    "write Tasmota's telemetry topics, like [\"tele/+/RESULT\", \"tele/+/RFRECEIVED\"]",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::path::Path;
    use std::time::Duration;

    const GOOD: &str = include_str!("../../../config.example.toml");

    #[test]
    fn defaults() {
        let c = Config::parse(GOOD, Path::new("/x/c.toml")).unwrap();
        assert_eq!(c.history.retention.0, Duration::from_secs(30 * 86_400));
        assert_eq!(c.metrics.listen, None);
        assert_eq!(
            (c.bridges.rtl_433_events.as_str(), c.bridges.zigbee2mqtt_base.as_str()),
            ("rtl_433/+/events", "zigbee2mqtt")
        );
        assert_eq!(c.bridges.tasmota_topics, ["tele/+/RESULT", "tele/+/RFRECEIVED"]);
    }

    #[test]
    fn bad_values_are_named() {
        let table = |t: &str, body: &str| GOOD.replace(&format!("[{t}]\n"), &format!("[{t}]\n{body}\n"));
        let err = |text: String| Config::parse(&text, Path::new("/etc/dd/c.toml")).unwrap_err().to_string();
        let e = err(table("metrics", "listen = \"localhost\""));
        assert!(e.contains("key `metrics.listen`") && e.contains("not an address"), "{e}");
        let e = err(table("history", "retention = \"1m\""));
        assert!(e.contains("key `history.retention`"), "{e}");
        let e = err(table("bridges", "tasmota_topics = [\"tele/#/RESULT\"]"));
        assert!(e.contains("key `bridges.tasmota_topics`"), "{e}");
        let e = err(table("bridges", "zigbee2mqtt_base = \"z2m/+\""));
        assert!(e.contains("key `bridges.zigbee2mqtt_base`"), "{e}");
        let c = Config::parse(&table("metrics", "listen = \"127.0.0.1:9477\""), Path::new("/c.toml")).unwrap();
        assert_eq!(c.metrics.listen.as_deref(), Some("127.0.0.1:9477"));
        assert!(super::filter_problem("a/+/b/#").is_none());
        assert!(super::filter_problem("a+/b").is_some() && super::filter_problem("").is_some());
    }
}
