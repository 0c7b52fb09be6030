//! The TOML configuration: schema, defaults and validation.
//!
//! Owns turning a file into a checked [`Config`], with errors that name the file, the key and
//! the fix. It reads the config file and, in [`Config::check_files`], checks that the files the
//! config names can be read; it opens no sockets and no database.

mod locate;
mod ops;
mod push;

pub use ops::{Bridges, History, Metrics};
pub use push::{Fcm, WebPush};

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where `run` and the other commands look when neither `--config` nor `DINGDONG_CONFIG` is set.
pub const DEFAULT_PATH: &str = "/etc/dingdong/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {file}: cannot read it: {reason}; fix: pass --config PATH or set DINGDONG_CONFIG")]
    Read { file: String, reason: String },
    #[error("config {file}: key `{key}`: {problem}; fix: {fix}")]
    Key { file: String, key: String, problem: String, fix: String },
    #[error("config {file}: {problem}; fix: write it as TOML, as config.example.toml shows")]
    Syntax { file: String, problem: String },
}

impl ConfigError {
    /// Adds the line `key` is written on in `text` to the problem (for `validate`'s errors).
    fn at_line_in(self, text: &str) -> ConfigError {
        match self {
            ConfigError::Key { file, key, problem, fix } => {
                let problem = locate::with_line(&problem, locate::line_of(text, &key));
                ConfigError::Key { file, key, problem, fix }
            }
            e => e,
        }
    }
}

/// A duration written the human way in the config (`"5m"`, `"3s"`, `"12h"`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Span).map_err(|e| {
            serde::de::Error::custom(format!("'{s}' is not a duration ({e}); write it like \"5m\", \"3s\" or \"12h\""))
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: Gateway,
    pub mqtt: Mqtt,
    pub apns: Apns,
    #[serde(default)]
    pub ring: Ring,
    #[serde(default)]
    pub homeassistant: HomeAssistant,
    #[serde(default)]
    pub pairing: Pairing,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub history: History,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub bridges: Bridges,
    /// Android phones (FCM HTTP v1), when set.
    pub fcm: Option<Fcm>,
    /// Browsers (Web Push), when set.
    pub webpush: Option<WebPush>,
    /// The file this was read from, so later errors can name it.
    #[serde(skip)]
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// Names this gateway in topics and logs.
    pub id: String,
    /// The SQLite file; relative paths are taken from the config file's folder.
    pub database: PathBuf,
    /// Where quiet hours are local time: an IANA name; default the system's.
    #[serde(default)]
    pub timezone: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    /// `mqtt://host:port`, `mqtts://host:port`, or `embedded` for the built-in broker.
    pub url: String,
    /// Fixed, so the broker keeps our persistent session (and queued QoS 1 presses) across restarts.
    pub client_id: String,
    pub topic_prefix: String,
    pub username: Option<String>,
    /// A file holding the broker password, so the password is not in the config itself.
    pub password_file: Option<PathBuf>,
    /// Extra CA for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// MQTT keep-alive; a dead broker is noticed within about 1.5 times this.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Span,
    /// `auto` (MQTT 5, else 3.1.1), `5` or `3.1.1`.
    #[serde(default)]
    pub protocol: MqttProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum MqttProtocol {
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "5")]
    V5,
    #[serde(rename = "3.1.1")]
    V311,
}

/// Logging.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// A tracing filter (`info`, `warn,dingdong=debug`); replaces `RUST_LOG` when set, and
    /// applies on reload.
    pub filter: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Http2,
    Binary,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apns {
    pub transport: Transport,
    /// The environment of phones added without `--sandbox` (and of the legacy gateway).
    pub environment: crate::domain::Environment,
    /// The app's bundle id, sent as `apns-topic`.
    pub topic: String,
    /// Replaces Apple's hosts for both environments (the simulator); `https://host:port`.
    pub endpoint: Option<String>,
    /// An extra CA trusted for every APNs connection.
    pub ca_file: Option<PathBuf>,
    /// How long one request may wait for its answer before it is retried elsewhere.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Span,
    /// Upper bound on concurrent streams per connection; the server's own limit still applies.
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// Upper bound on connections per environment when one ring needs more streams.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    pub token: Option<TokenAuth>,
    pub certificate: Option<CertificateAuth>,
    pub binary: Option<Binary>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenAuth {
    pub key_file: PathBuf,
    pub key_id: String,
    pub team_id: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateAuth {
    /// A PKCS#12 bundle (`.p12`) ...
    pub file: Option<PathBuf>,
    /// ... and the file holding its password (never the password itself).
    pub password_file: Option<PathBuf>,
    /// Or a PEM certificate ...
    pub cert_file: Option<PathBuf>,
    /// ... and its PEM private key.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BinaryFormat {
    #[default]
    Frame,
    Enhanced,
    Simple,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binary {
    /// The legacy gateway, `host:port`; its certificate must match `apns.environment`.
    #[serde(default = "default_gateway")]
    pub gateway: String,
    /// The feedback service, `host:port`.
    #[serde(default = "default_feedback")]
    pub feedback: String,
    /// How often the daemon polls the feedback service.
    #[serde(default = "default_feedback_interval")]
    pub feedback_interval: Span,
    #[serde(default)]
    pub format: BinaryFormat,
    /// Consecutive connection attempts that fail (or settle nothing) before the sender gives
    /// up on the rest of a ring and hands it back to the outbox as retries.
    #[serde(default = "default_max_reconnects")]
    pub max_reconnects: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ring {
    /// A ring older than this is never delivered; also its `apns-expiration`.
    #[serde(default = "default_expiry")]
    pub expiry: Span,
    /// Presses of one doorbell inside this window are one ring.
    #[serde(default = "default_debounce")]
    pub debounce: Span,
    /// The `sound` of the notification.
    #[serde(default = "default_sound")]
    pub sound: String,
}

/// Home Assistant MQTT discovery: each doorbell becomes an `event` entity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistant {
    /// Publish discovery and ring events; harmless (a few retained messages) without HA.
    #[serde(default = "default_true")]
    pub discovery: bool,
    /// Home Assistant's discovery prefix; its birth message is `<prefix>/status`.
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
}

impl Default for HomeAssistant {
    fn default() -> Self {
        HomeAssistant { discovery: true, discovery_prefix: default_discovery_prefix() }
    }
}

fn default_true() -> bool {
    true
}
fn default_discovery_prefix() -> String {
    "homeassistant".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pairing {
    /// The user a window opened by the gateway's pair button (`P/gateway/pair-button`) pairs
    /// phones to; created if new. Anyone on the broker can publish that topic, so the default
    /// is a user that owns nothing: its phones ring only for doorbells shared with it.
    #[serde(default = "default_button_user")]
    pub button_user: String,
    /// Where a pair-button window's code is written (mode 0600) for the gateway's display;
    /// default `pair-code.json` beside the database. Never published on the broker.
    pub code_file: Option<PathBuf>,
}

impl Default for Pairing {
    fn default() -> Self {
        Pairing { button_user: default_button_user(), code_file: None }
    }
}

fn default_button_user() -> String {
    "household".into()
}

impl Default for Ring {
    fn default() -> Self {
        Ring { expiry: default_expiry(), debounce: default_debounce(), sound: default_sound() }
    }
}

fn default_keep_alive() -> Span {
    Span(Duration::from_secs(30))
}
pub(crate) fn default_request_timeout() -> Span {
    Span(Duration::from_secs(10))
}
fn default_max_streams() -> u32 {
    1000
}
fn default_max_connections() -> u32 {
    4
}
fn default_gateway() -> String {
    "gateway.push.apple.com:2195".into()
}
fn default_feedback() -> String {
    "feedback.push.apple.com:2196".into()
}
fn default_max_reconnects() -> u32 {
    10
}
fn default_feedback_interval() -> Span {
    Span(Duration::from_secs(12 * 3600))
}
fn default_expiry() -> Span {
    Span(Duration::from_secs(300))
}
fn default_debounce() -> Span {
    Span(Duration::from_secs(3))
}
fn default_sound() -> String {
    "default".into()
}

impl Config {
    /// `[gateway] timezone` (checked by `validate`), or the system's.
    pub fn timezone(&self) -> jiff::tz::TimeZone {
        crate::domain::household::time_zone(self.gateway.timezone.as_deref()).unwrap_or(jiff::tz::TimeZone::UTC)
    }

    /// Reads, parses and validates the file; nothing else is opened.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = crate::domain::files::read_small_text(path)
            .map_err(|e| ConfigError::Read { file: path.display().to_string(), reason: e.to_string() })?;
        Self::parse(&text, path)
    }

    /// Parses `text` as if read from `path` (relative paths are resolved against its folder).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let de = toml::Deserializer::new(text);
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let span_line = inner.span().map(|s| locate::line_at(text, s.start));
            locate::describe_serde_error(&file, text, &key, inner.message(), span_line)
        })?;
        cfg.file = path.to_path_buf();
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        cfg.resolve_paths(&base);
        // A value that parses but is wrong: named with the line it is on.
        cfg.validate().map_err(|e| e.at_line_in(text))?;
        Ok(cfg)
    }

    fn err(&self, key: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
        ConfigError::Key {
            file: self.file.display().to_string(),
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.gateway.database);
        self.pairing.code_file.iter_mut().for_each(fix);
        self.mqtt.password_file.iter_mut().for_each(fix);
        self.mqtt.ca_file.iter_mut().for_each(fix);
        self.apns.ca_file.iter_mut().for_each(fix);
        if let Some(t) = &mut self.apns.token {
            fix(&mut t.key_file);
        }
        if let Some(c) = &mut self.apns.certificate {
            for p in [&mut c.file, &mut c.password_file, &mut c.cert_file, &mut c.key_file] {
                p.iter_mut().for_each(fix);
            }
        }
        self.resolve_push_paths(base);
    }

    /// Checks what serde cannot: value ranges, combinations, URL shapes.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = crate::domain::check_id("gateway id", &self.gateway.id) {
            return Err(self.err("gateway.id", e, "use letters, digits, '-', '_' or '.'"));
        }
        if let Err(e) = crate::domain::household::time_zone(self.gateway.timezone.as_deref()) {
            return Err(self.err("gateway.timezone", e, "write an IANA name such as \"Europe/Berlin\", or remove it"));
        }
        if self.mqtt.url != "embedded" && parse_mqtt_url(&self.mqtt.url).is_none() {
            return Err(self.err(
                "mqtt.url",
                format!("'{}' is not a broker address", self.mqtt.url),
                "write mqtt://HOST:PORT, mqtts://HOST:PORT or \"embedded\"",
            ));
        }
        #[cfg(not(feature = "embedded-broker"))]
        if self.mqtt.url == "embedded" {
            return Err(self.err(
                "mqtt.url",
                "this build has no embedded broker (built without the `embedded-broker` feature)",
                "point it at the gateway's broker, e.g. \"mqtt://127.0.0.1:1883\"",
            ));
        }
        if self.mqtt.client_id.is_empty() || self.mqtt.client_id.len() > 64 {
            return Err(self.err(
                "mqtt.client_id",
                "must be 1 to 64 characters",
                "set a fixed id such as \"dingdong-gw-0001\"",
            ));
        }
        let p = &self.mqtt.topic_prefix;
        if p.is_empty() || p.contains(['+', '#']) || p.starts_with('/') || p.ends_with('/') {
            return Err(self.err(
                "mqtt.topic_prefix",
                format!("'{p}' is not a usable topic prefix"),
                "write it like \"dingdong/gw-0001\": no wildcards, no leading or trailing '/'",
            ));
        }
        if self.mqtt.password_file.is_some() && self.mqtt.username.is_none() {
            return Err(self.err(
                "mqtt.password_file",
                "set without mqtt.username",
                "add mqtt.username or remove the password file",
            ));
        }
        if self.apns.topic.is_empty() || self.apns.topic.contains(char::is_whitespace) {
            return Err(self.err(
                "apns.topic",
                "must be the app's bundle id",
                "write it like \"com.example.doorbell\"",
            ));
        }
        if let Some(ep) = &self.apns.endpoint {
            if parse_https_endpoint(ep).is_none() {
                return Err(self.err(
                    "apns.endpoint",
                    format!("'{ep}' is not https://HOST:PORT"),
                    "write it like \"https://127.0.0.1:8443\"",
                ));
            }
        }
        if self.apns.max_streams == 0 {
            return Err(self.err("apns.max_streams", "must be at least 1", "remove it to use 1000"));
        }
        if self.apns.max_connections == 0 || self.apns.max_connections > 64 {
            return Err(self.err("apns.max_connections", "must be 1 to 64", "remove it to use 4"));
        }
        match (&self.apns.token, &self.apns.certificate) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    "apns.certificate",
                    "both [apns.token] and [apns.certificate] are set",
                    "keep only the one you use",
                ))
            }
            (None, None) => {
                return Err(self.err(
                    "apns.token",
                    "no credentials: neither [apns.token] nor [apns.certificate]",
                    "add [apns.token] with key_file, key_id and team_id (see config.example.toml)",
                ))
            }
            (Some(t), None) => {
                if self.apns.transport == Transport::Binary {
                    return Err(self.err(
                        "apns.token",
                        "the legacy binary transport needs a client certificate",
                        "use [apns.certificate] with transport = \"binary\"",
                    ));
                }
                if t.key_id.len() != 10 || !t.key_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(self.err(
                        "apns.token.key_id",
                        format!("'{}' is not a 10-character key id", t.key_id),
                        "copy the Key ID shown next to the key in Apple's developer account",
                    ));
                }
                if t.team_id.len() != 10 || !t.team_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(self.err(
                        "apns.token.team_id",
                        format!("'{}' is not a 10-character team id", t.team_id),
                        "copy the Team ID from Apple's developer account",
                    ));
                }
            }
            (None, Some(c)) => match (&c.file, &c.cert_file, &c.key_file) {
                (Some(_), None, None) => {
                    if c.password_file.is_none() {
                        return Err(self.err(
                            "apns.certificate.password_file",
                            "missing for a .p12 file",
                            "point it at a file holding the .p12 password",
                        ));
                    }
                }
                (None, Some(_), Some(_)) => {}
                _ => {
                    return Err(self.err(
                        "apns.certificate",
                        "set either file (+ password_file) or cert_file + key_file",
                        "keep one of the two forms",
                    ))
                }
            },
        }
        if self.apns.transport == Transport::Binary && self.apns.binary.is_none() {
            return Err(self.err(
                "apns.binary",
                "missing while transport = \"binary\"",
                "add an [apns.binary] table (its keys have defaults)",
            ));
        }
        if let Some(b) = &self.apns.binary {
            for (key, addr) in [("apns.binary.gateway", &b.gateway), ("apns.binary.feedback", &b.feedback)] {
                if parse_host_port(addr).is_none() {
                    return Err(self.err(
                        key,
                        format!("'{addr}' is not HOST:PORT"),
                        "write it like \"gateway.push.apple.com:2195\"",
                    ));
                }
            }
            if b.feedback_interval.0 < Duration::from_secs(60) {
                return Err(self.err(
                    "apns.binary.feedback_interval",
                    "must be at least 1m",
                    "Apple treats frequent reconnects as an attack: \"12h\"",
                ));
            }
        }
        let hp = &self.homeassistant.discovery_prefix;
        if hp.is_empty() || hp.contains(['+', '#']) || hp.starts_with('/') || hp.ends_with('/') {
            return Err(self.err(
                "homeassistant.discovery_prefix",
                format!("'{hp}' is not a usable topic prefix"),
                "leave it out to use \"homeassistant\"",
            ));
        }
        if self.ring.expiry.0 < Duration::from_secs(1) {
            return Err(self.err(
                "ring.expiry",
                "must be at least 1s",
                "a doorbell ring is useful for a few minutes: \"5m\"",
            ));
        }
        if let Err(e) = crate::domain::check_id("user", &self.pairing.button_user) {
            return Err(self.err("pairing.button_user", e, "use letters, digits, '-', '_' or '.'"));
        }
        if let Some(f) = &self.log.filter {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(f) {
                return Err(self.err(
                    "log.filter",
                    format!("'{f}' is not a log filter ({e})"),
                    "write a level (\"info\") or a list like \"warn,dingdong=debug\"",
                ));
            }
        }
        if self.ring.debounce.0 >= self.ring.expiry.0 {
            return Err(self.err("ring.debounce", "must be shorter than ring.expiry", "use a few seconds: \"3s\""));
        }
        self.validate_ops()?;
        self.validate_push()
    }

    /// Where the pair button's code goes: `pairing.code_file`, or beside the database.
    pub fn pairing_code_file(&self) -> PathBuf {
        self.pairing.code_file.clone().unwrap_or_else(|| self.gateway.database.with_file_name("pair-code.json"))
    }

    /// Checks that every file the config names can be read. `run`, `diag` and `feedback` call
    /// this before opening anything else; store-only commands do not need the keys.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let mut files: Vec<(&str, &Path, &str)> = Vec::new();
        if let Some(p) = &self.mqtt.password_file {
            files.push(("mqtt.password_file", p, "point it at the file holding the broker password"));
        }
        if let Some(p) = &self.mqtt.ca_file {
            files.push(("mqtt.ca_file", p, "point it at the broker's CA certificate (PEM)"));
        }
        if let Some(p) = &self.apns.ca_file {
            files.push(("apns.ca_file", p, "point it at a PEM CA file, or remove it"));
        }
        if let Some(t) = &self.apns.token {
            files.push((
                "apns.token.key_file",
                &t.key_file,
                "point it at the AuthKey_<KEYID>.p8 downloaded from Apple",
            ));
        }
        if let Some(c) = &self.apns.certificate {
            let pairs = [
                ("apns.certificate.file", &c.file, "point it at the push certificate exported as .p12"),
                ("apns.certificate.password_file", &c.password_file, "point it at a file holding the .p12 password"),
                ("apns.certificate.cert_file", &c.cert_file, "point it at the PEM push certificate"),
                ("apns.certificate.key_file", &c.key_file, "point it at the PEM private key"),
            ];
            for (k, p, fix) in pairs {
                if let Some(p) = p {
                    files.push((k, p, fix));
                }
            }
        }
        files.extend(self.push_files());
        for (key, path, fix) in files {
            if let Err(e) = crate::domain::files::read_bounded(path, crate::domain::files::MAX_SMALL_FILE) {
                return Err(self.err(key, format!("cannot read {}: {e}", path.display()), fix));
            }
        }
        Ok(())
    }

    /// The files that hold secrets: they should be readable by the service and root only.
    pub fn secret_files(&self) -> Vec<(&'static str, PathBuf)> {
        let mut v = Vec::new();
        if let Some(p) = &self.mqtt.password_file {
            v.push(("mqtt.password_file", p.clone()));
        }
        if let Some(t) = &self.apns.token {
            v.push(("apns.token.key_file", t.key_file.clone()));
        }
        if let Some(c) = &self.apns.certificate {
            for (k, p) in [
                ("apns.certificate.file", &c.file),
                ("apns.certificate.password_file", &c.password_file),
                ("apns.certificate.key_file", &c.key_file),
            ] {
                if let Some(p) = p {
                    v.push((k, p.clone()));
                }
            }
        }
        v.extend(self.push_secret_files());
        v
    }

    /// The tables and keys that differ from `new` and that a running daemon cannot change:
    /// they need a restart.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let mut v = Vec::new();
        let differs = |a: &dyn fmt::Debug, b: &dyn fmt::Debug| format!("{a:?}") != format!("{b:?}");
        if differs(&self.gateway, &new.gateway) {
            v.push("[gateway]");
        }
        let mut mqtt = new.mqtt.clone();
        if self.mqtt.url.starts_with("mqtt://127.0.0.1") && new.mqtt.url == "embedded" {
            mqtt.url = self.mqtt.url.clone();
        }
        if differs(&self.mqtt, &mqtt) {
            v.push("[mqtt]");
        }
        if differs(&self.homeassistant, &new.homeassistant) {
            v.push("[homeassistant]");
        }
        if differs(&self.pairing, &new.pairing) {
            v.push("[pairing]");
        }
        for (table, changed) in [
            ("[history]", differs(&self.history, &new.history)),
            ("[metrics]", differs(&self.metrics, &new.metrics)),
            ("[bridges]", differs(&self.bridges, &new.bridges)),
        ] {
            if changed {
                v.push(table);
            }
        }
        if self.apns.transport != new.apns.transport {
            v.push("apns.transport");
        }
        v
    }
}

/// `(tls, host, port)` of an `mqtt://` or `mqtts://` URL.
pub fn parse_mqtt_url(url: &str) -> Option<(bool, String, u16)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return None;
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((tls, host.trim_matches(['[', ']']).to_string(), port))
}

/// `(host, port)` of a `host:port` address (the legacy gateway and feedback service).
pub fn parse_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_matches(['[', ']']);
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// `(host, port)` of an `https://host:port` endpoint.
pub fn parse_https_endpoint(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("https://")?.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (rest, 443),
    };
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((host.trim_matches(['[', ']']).to_string(), port))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) const GOOD: &str = r#"
[gateway]
id = "gw-1"
database = "state/dingdong.db"
[mqtt]
url = "mqtt://127.0.0.1:1883"
client_id = "dingdong-gw-1"
topic_prefix = "dingdong/gw-1"
[apns]
transport = "http2"
environment = "production"
topic = "com.example.doorbell"
[apns.token]
key_file = "AuthKey_ABCDEFGHIJ.p8"
key_id = "ABCDEFGHIJ"
team_id = "TEAM123456"
[ring]
expiry = "5m"
debounce = "3s"
"#;

    pub(super) fn parse(t: &str) -> Result<Config, String> {
        Config::parse(t, Path::new("/etc/dd/config.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn good_config_parses_and_resolves_relative_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.gateway.database, PathBuf::from("/etc/dd/state/dingdong.db"));
        assert_eq!(c.ring.expiry.0, Duration::from_secs(300));
        assert_eq!(c.apns.token.unwrap().key_file, PathBuf::from("/etc/dd/AuthKey_ABCDEFGHIJ.p8"));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse(&GOOD.replace("team_id", "teamid")).unwrap_err();
        assert!(e.contains("/etc/dd/config.toml"), "{e}");
        assert!(e.contains("apns.token.teamid"), "{e}");
        assert!(e.contains("fix:"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn wrong_type_is_named() {
        let e = parse(&GOOD.replace("expiry = \"5m\"", "expiry = 5")).unwrap_err();
        assert!(e.contains("ring.expiry"), "{e}");
        let e = parse(&GOOD.replace("expiry = \"5m\"", "expiry = \"soon\"")).unwrap_err();
        assert!(e.contains("ring.expiry") && e.contains("not a duration"), "{e}");
        let e = parse(&GOOD.replace("\"http2\"", "\"carrier-pigeon\"")).unwrap_err();
        assert!(e.contains("apns.transport"), "{e}");
    }

    #[test]
    fn missing_key_and_bad_values() {
        let e = parse(&GOOD.replace("topic_prefix = \"dingdong/gw-1\"\n", "")).unwrap_err();
        assert!(e.contains("mqtt.topic_prefix") && e.contains("missing"), "{e}");
        let e = parse(&GOOD.replace("ABCDEFGHIJ\"\nteam", "SHORT\"\nteam")).unwrap_err();
        assert!(e.contains("apns.token.key_id"), "{e}");
        let e = parse(&GOOD.replace("mqtt://127.0.0.1:1883", "http://x")).unwrap_err();
        assert!(e.contains("mqtt.url"), "{e}");
    }

    #[test]
    fn missing_key_file_is_named() {
        let c = parse(GOOD).unwrap();
        let e = c.check_files().unwrap_err().to_string();
        assert!(e.contains("apns.token.key_file") && e.contains("AuthKey_ABCDEFGHIJ.p8"), "{e}");
    }

    #[test]
    fn the_example_config_parses() {
        let c =
            Config::parse(include_str!("../../config.example.toml"), Path::new("/etc/dingdong/config.toml")).unwrap();
        assert_eq!(c.ring.debounce.0, Duration::from_secs(3));
    }

    #[test]
    fn pairing_section() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.pairing.button_user, "household");
        assert_eq!(c.pairing_code_file(), PathBuf::from("/etc/dd/state/pair-code.json"));
        let c = parse(&format!("{GOOD}[pairing]\nbutton_user = \"alice\"\ncode_file = \"code.json\"\n")).unwrap();
        assert_eq!(
            (c.pairing.button_user.as_str(), c.pairing_code_file()),
            ("alice", PathBuf::from("/etc/dd/code.json"))
        );
        let e = parse(&format!("{GOOD}[pairing]\nbutton_user = \"a/b\"\n")).unwrap_err();
        assert!(e.contains("pairing.button_user"), "{e}");
        let e = parse(&format!("{GOOD}[pairing]\nbuttonuser = \"a\"\n")).unwrap_err();
        assert!(e.contains("pairing.buttonuser"), "{e}");
    }

    #[test]
    fn urls() {
        assert_eq!(parse_mqtt_url("mqtt://127.0.0.1:1884"), Some((false, "127.0.0.1".into(), 1884)));
        assert_eq!(parse_mqtt_url("mqtts://broker"), Some((true, "broker".into(), 8883)));
        assert_eq!(parse_mqtt_url("tcp://x"), None);
        assert_eq!(parse_https_endpoint("https://127.0.0.1:8443"), Some(("127.0.0.1".into(), 8443)));
        assert_eq!(parse_https_endpoint("http://x"), None);
        assert_eq!(parse_host_port("gateway.push.apple.com:2195"), Some(("gateway.push.apple.com".into(), 2195)));
        assert_eq!(parse_host_port("[::1]:2195"), Some(("::1".into(), 2195)));
        assert_eq!(parse_host_port("gateway"), None);
        assert_eq!(parse_host_port(":2195"), None);
    }

    #[test]
    fn binary_section_defaults_and_checks() {
        let cert = GOOD.replace(
            "[apns.token]\nkey_file = \"AuthKey_ABCDEFGHIJ.p8\"\nkey_id = \"ABCDEFGHIJ\"\nteam_id = \"TEAM123456\"",
            "[apns.certificate]\nfile = \"push.p12\"\npassword_file = \"push.pass\"\n[apns.binary]",
        );
        let c = parse(&cert.replace("\"http2\"", "\"binary\"")).unwrap();
        let b = c.apns.binary.unwrap();
        assert_eq!((b.max_reconnects, b.format), (10, BinaryFormat::Frame));
        assert_eq!(b.feedback_interval.0, Duration::from_secs(12 * 3600));
        let e = parse(&cert.replace("[apns.binary]", "[apns.binary]\ngateway = \"nowhere\"")).unwrap_err();
        assert!(e.contains("apns.binary.gateway"), "{e}");
        let e = parse(&cert.replace("[apns.binary]", "[apns.binary]\nfeedback_interval = \"1s\"")).unwrap_err();
        assert!(e.contains("apns.binary.feedback_interval"), "{e}");
        let c = parse(&cert.replace("[apns.binary]", "[apns.binary]\nmax_reconnects = 3\nformat = \"simple\""));
        assert_eq!(c.unwrap().apns.binary.unwrap().max_reconnects, 3);
    }
}
