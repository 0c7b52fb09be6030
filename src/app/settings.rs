//! The one reader of [`Config`] for the parts below: turns the validated TOML into each
//! part's own settings and builds the transports from them (reading key files on the way).
//! Validation lives in `config` (what the user wrote); resolving lives here (what the program
//! needs), as ripgrep's low and high arguments do.

use super::config::{
    parse_host_port, parse_https_endpoint, BinaryFormat, CertificateAuth, Config, MqttProtocol, Transport,
};
use crate::codec::apns_binary::frames::Format;
use crate::codec::push::fcm as fcm_codec;
use crate::codec::push::vapid::{Subject, VapidKey};
use crate::net::apns::auth::{AuthError, ClientIdentity, JwtMinter};
use crate::net::apns::binary::feedback::FeedbackClient;
use crate::net::apns::binary::{BinaryError, BinarySender, BinarySettings};
use crate::net::apns::http2::{Credentials, Http2Client, Http2Error, Http2Settings};
use crate::net::fcm::{FcmClient, FcmSettings};
use crate::net::https::HttpsSettings;
use crate::net::mqtt::{MqttError, MqttSettings, Protocol, Subscription};
use crate::net::webpush::{WebPushClient, WebPushSettings};
use std::sync::Arc;
use std::time::Duration;

/// Why a part could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("APNs client: {0}")]
    Http2(#[from] Http2Error),
    #[error("legacy APNs: {0}")]
    Binary(#[from] BinaryError),
    #[error("MQTT: {0}")]
    Mqtt(#[from] MqttError),
    #[error("{key}: {problem}")]
    Missing { key: &'static str, problem: &'static str },
    #[error("{key} {path}: {problem}")]
    File { key: &'static str, path: String, problem: String },
    #[error("FCM client: {0}")]
    Fcm(#[from] crate::net::fcm::FcmError),
    #[error("Web Push client: {0}")]
    WebPush(#[from] crate::net::webpush::WebPushError),
}

fn read_key(key: &'static str, path: &std::path::Path, limit: usize) -> Result<String, SettingsError> {
    let file = |problem: String| SettingsError::File { key, path: path.display().to_string(), problem };
    let bytes = crate::domain::files::read_bounded(path, limit as u64).map_err(|e| file(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| file("not UTF-8 text".into()))
}

/// The FCM transport `[fcm]` describes, if the table is there.
pub fn fcm(cfg: &Config) -> Result<Option<FcmClient>, SettingsError> {
    let Some(f) = &cfg.fcm else { return Ok(None) };
    let key = "fcm.service_account_file";
    let text = read_key(key, &f.service_account_file, fcm_codec::MAX_KEY_FILE)?;
    let file =
        |problem: String| SettingsError::File { key, path: f.service_account_file.display().to_string(), problem };
    let mut account = fcm_codec::ServiceAccount::from_json(text.as_bytes()).map_err(|e| file(e.to_string()))?;
    if let Some(id) = &f.project_id {
        account = account.with_project_id(id).map_err(|e| file(e.to_string()))?;
    }
    let https = HttpsSettings {
        ca_file: f.ca_file.clone(),
        clients: f.max_connections as usize,
        request_timeout: f.request_timeout.0,
        ..HttpsSettings::default()
    };
    Ok(Some(FcmClient::new(FcmSettings {
        account,
        endpoint: f.endpoint.clone(),
        channel_id: f.channel_id.clone(),
        https,
    })?))
}

/// The VAPID key of `[webpush] vapid_key_file`.
pub fn vapid_key(path: &std::path::Path) -> Result<VapidKey, SettingsError> {
    let key = "webpush.vapid_key_file";
    let text = read_key(key, path, crate::codec::push::vapid::MAX_KEY_FILE)?;
    VapidKey::from_pem(&text).map_err(|e| SettingsError::File {
        key,
        path: path.display().to_string(),
        problem: e.to_string(),
    })
}

/// The Web Push transport `[webpush]` describes, if the table is there.
pub fn webpush(cfg: &Config) -> Result<Option<WebPushClient>, SettingsError> {
    let Some(w) = &cfg.webpush else { return Ok(None) };
    let key = vapid_key(&w.vapid_key_file)?;
    let subject = Subject::parse(&w.subject)
        .map_err(|_| SettingsError::Missing { key: "webpush.subject", problem: "not a mailto: or https: contact" })?;
    let https = HttpsSettings {
        ca_file: w.ca_file.clone(),
        h1_connections: w.max_connections as usize,
        request_timeout: w.request_timeout.0,
        ..HttpsSettings::default()
    };
    Ok(Some(WebPushClient::new(WebPushSettings { key, subject, https })?))
}

/// The client certificate `[apns.certificate]` names, in whichever form.
pub fn client_identity(c: &CertificateAuth) -> Result<ClientIdentity, AuthError> {
    match (&c.file, &c.password_file, &c.cert_file, &c.key_file) {
        (Some(p12), Some(pass), _, _) => ClientIdentity::from_p12(p12, pass),
        (_, _, Some(cert), Some(key)) => ClientIdentity::from_pem(cert, key),
        _ => Err(AuthError::NoCert { path: "[apns.certificate]".into() }),
    }
}

/// When the push certificate of `[apns.certificate]` expires (UNIX seconds), for the metrics;
/// `None` with token auth or a certificate that cannot be read (the transport says why).
pub fn certificate_expiry(cfg: &Config) -> Option<i64> {
    let identity = client_identity(cfg.apns.certificate.as_ref()?).ok()?;
    Some(crate::net::apns::certinfo::parse(identity.chain.first()?).ok()?.not_after)
}

fn certificate(cfg: &Config) -> Result<ClientIdentity, SettingsError> {
    let c = cfg.apns.certificate.as_ref().ok_or(SettingsError::Missing {
        key: "apns.certificate",
        problem: "the legacy protocol needs a push certificate",
    })?;
    Ok(client_identity(c)?)
}

fn binary_table(cfg: &Config) -> Result<&super::config::Binary, SettingsError> {
    cfg.apns.binary.as_ref().ok_or(SettingsError::Missing { key: "apns.binary", problem: "missing" })
}

/// The HTTP/2 client `[apns]` describes.
pub fn http2(cfg: &Config) -> Result<Http2Client, SettingsError> {
    let apns = &cfg.apns;
    let credentials = match (&apns.token, &apns.certificate) {
        (Some(t), _) => Credentials::Token(Arc::new(JwtMinter::from_p8_file(&t.key_file, &t.key_id, &t.team_id)?)),
        (None, Some(c)) => Credentials::Certificate(client_identity(c)?),
        (None, None) => {
            return Err(SettingsError::Missing { key: "apns.token", problem: "neither token nor certificate" })
        }
    };
    let endpoint = match &apns.endpoint {
        Some(e) => Some(parse_https_endpoint(e).ok_or_else(|| Http2Error::Endpoint(e.clone()))?),
        None => None,
    };
    Ok(Http2Client::new(
        credentials,
        Http2Settings {
            endpoint,
            ca_file: apns.ca_file.clone(),
            max_streams: apns.max_streams,
            max_connections: apns.max_connections,
            request_timeout: apns.request_timeout.0,
            topic: apns.topic.clone(),
        },
    )?)
}

/// The legacy sender: certificate from `[apns.certificate]`, extra CA from `apns.ca_file`,
/// gateway and format from `[apns.binary]`.
pub fn binary(cfg: &Config) -> Result<BinarySender, SettingsError> {
    let (identity, b) = (certificate(cfg)?, binary_table(cfg)?);
    let gateway = parse_host_port(&b.gateway).ok_or_else(|| BinaryError::Address(b.gateway.clone()))?;
    let mut settings = BinarySettings::new(gateway, format(b.format), cfg.apns.environment);
    settings.max_reconnects = b.max_reconnects;
    Ok(BinarySender::new(&identity, cfg.apns.ca_file.as_deref(), settings)?)
}

fn format(f: BinaryFormat) -> Format {
    match f {
        BinaryFormat::Simple => Format::Simple,
        BinaryFormat::Enhanced => Format::Enhanced,
        BinaryFormat::Frame => Format::Frame,
    }
}

/// The legacy feedback client and how often the daemon polls it, when the legacy transport is
/// configured.
pub fn feedback(cfg: &Config) -> Result<Option<(FeedbackClient, Duration)>, SettingsError> {
    if cfg.apns.transport != Transport::Binary {
        return Ok(None);
    }
    Ok(Some((feedback_client(cfg)?, binary_table(cfg)?.feedback_interval.0)))
}

/// The legacy feedback client (`dingdong feedback` and the daemon's poller).
pub fn feedback_client(cfg: &Config) -> Result<FeedbackClient, SettingsError> {
    let (identity, b) = (certificate(cfg)?, binary_table(cfg)?);
    let addr = parse_host_port(&b.feedback).ok_or_else(|| BinaryError::Address(b.feedback.clone()))?;
    Ok(FeedbackClient::new(&identity, cfg.apns.ca_file.as_deref(), addr)?)
}

/// The MQTT client settings of `[mqtt]`, subscribing to `subscriptions`, with a persistent
/// session and the retained offline status as last will (the daemon's client).
pub fn mqtt(cfg: &Config, subscriptions: Vec<Subscription>) -> Result<MqttSettings, MqttError> {
    let m = &cfg.mqtt;
    let (tls, host, port) = super::config::parse_mqtt_url(&m.url).ok_or_else(|| MqttError::Url(m.url.clone()))?;
    let tls = if tls { Some(crate::net::tls::client_config(m.ca_file.as_deref(), None, &[])?) } else { None };
    let credentials = match (&m.username, &m.password_file) {
        (Some(u), Some(p)) => {
            let pw = crate::domain::files::read_small_text(p)
                .map_err(|e| MqttError::File { path: p.display().to_string(), reason: e.to_string() })?;
            Some((u.clone(), pw.trim_end_matches(['\r', '\n']).to_string()))
        }
        (Some(u), None) => Some((u.clone(), String::new())),
        _ => None,
    };
    Ok(MqttSettings {
        host,
        port,
        tls,
        client_id: m.client_id.clone(),
        credentials,
        keep_alive: m.keep_alive.0,
        subscriptions,
        persistent: true,
        will: Some((
            format!("{}/status", m.topic_prefix),
            crate::service::publisher::Publisher::offline_status(&cfg.gateway.id).into_bytes(),
        )),
        protocol: match m.protocol {
            MqttProtocol::Auto => Protocol::Auto,
            MqttProtocol::V5 => Protocol::V5,
            MqttProtocol::V311 => Protocol::V311,
        },
        request_capacity: 256,
        inbox_capacity: 256,
    })
}

/// Where presses arrive: the prefix of `[mqtt]` and the bridges' topics of `[bridges]` (an
/// empty value turns that bridge off).
pub fn routes(cfg: &Config) -> crate::codec::bridge::Routes {
    let b = &cfg.bridges;
    let some = |s: &String| (!s.is_empty()).then(|| s.clone());
    crate::codec::bridge::Routes {
        prefix: cfg.mqtt.topic_prefix.clone(),
        rtl_433: some(&b.rtl_433_events),
        zigbee2mqtt: some(&b.zigbee2mqtt_base),
        tasmota: b.tasmota_topics.iter().filter(|t| !t.is_empty()).cloned().collect(),
    }
}

/// Settings for a short-lived tool client (`dingdong ring`, diag): its own client id, a clean
/// session, no will, no subscriptions.
pub fn mqtt_tool(cfg: &Config, client_id: String) -> Result<MqttSettings, MqttError> {
    let mut s = mqtt(cfg, Vec::new())?;
    s.client_id = client_id;
    s.persistent = false;
    s.will = None;
    s.request_capacity = 8;
    Ok(s)
}
