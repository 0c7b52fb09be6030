//! Home Assistant MQTT discovery: what to publish so each doorbell shows up as an `event`
//! entity (`device_class: doorbell`, event type `ring`) whose availability follows dingdong's
//! own `P/status`, and what removes it again (an empty retained config). Pure: topics and
//! payloads out; the intake publishes them at start, when Home Assistant's birth message
//! (`<prefix>/status` = `online`) arrives, when doorbells are added, renamed or removed, and
//! at each ring.

use serde_json::json;

/// The discovery prefix's birth/will topic Home Assistant publishes.
pub fn status_topic(discovery_prefix: &str) -> String {
    format!("{discovery_prefix}/status")
}

/// Whether a message on the status topic says Home Assistant (re)started.
pub fn is_online(payload: &[u8]) -> bool {
    payload.trim_ascii() == b"online"
}

/// Where a doorbell's ring events are published (non-retained: an event, not a state).
pub fn event_topic(prefix: &str, doorbell: &str) -> String {
    format!("{prefix}/doorbell/{doorbell}/event")
}

/// The discovery topic's object id: `[a-zA-Z0-9_-]`; ours also have `.`.
fn object_id(gateway: &str, doorbell: &str) -> String {
    format!("{gateway}_{doorbell}").replace('.', "_")
}

/// An entity id's object part as Home Assistant accepts it: lower case letters, digits and
/// single `_` inside (our ids may also have `-`, `.` and capitals).
fn slug(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

/// Where `doorbell`'s discovery config is published (retained).
pub fn config_topic(discovery_prefix: &str, gateway: &str, doorbell: &str) -> String {
    format!("{discovery_prefix}/event/{}/config", object_id(gateway, doorbell))
}

/// The filter that sees every event entity's config, ours among them: subscribed to so that
/// the entity of a doorbell removed while dingdong was stopped is removed too.
pub fn config_filter(discovery_prefix: &str) -> String {
    format!("{discovery_prefix}/event/+/config")
}

/// Whether `topic` is an event entity's config topic under `discovery_prefix`.
pub fn is_config_topic(discovery_prefix: &str, topic: &str) -> bool {
    topic
        .strip_prefix(discovery_prefix)
        .and_then(|r| r.strip_prefix("/event/"))
        .and_then(|r| r.strip_suffix("/config"))
        .is_some_and(|oid| !oid.is_empty() && !oid.contains('/'))
}

/// Whether a retained discovery config is one this gateway published (its device).
pub fn is_ours(gateway: &str, payload: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else { return false };
    let ours = format!("dingdong_{gateway}");
    v["device"]["identifiers"].as_array().is_some_and(|ids| ids.iter().any(|i| i.as_str() == Some(ours.as_str())))
}

/// `(topic, retained payload)` removing `doorbell`'s entity: an empty retained config.
pub fn removal(discovery_prefix: &str, gateway: &str, doorbell: &str) -> (String, String) {
    (config_topic(discovery_prefix, gateway, doorbell), String::new())
}

/// `(topic, retained payload)` announcing `doorbell` as an event entity. Its entity id is
/// suggested with `default_entity_id` (`event.<gateway>_<doorbell>`; Home Assistant 2025.10
/// deprecated `object_id` for it, and stops reading `object_id` in 2026.4).
pub fn discovery(discovery_prefix: &str, prefix: &str, gateway: &str, doorbell: &str, name: &str) -> (String, String) {
    let oid = object_id(gateway, doorbell);
    let config = json!({
        "name": name,
        "unique_id": format!("dingdong_{oid}"),
        "default_entity_id": format!("event.{}", slug(&oid)),
        "device_class": "doorbell",
        "event_types": ["ring", "answered"],
        "state_topic": event_topic(prefix, doorbell),
        "availability": availability(prefix),
        "qos": 1,
        "device": device(gateway),
        "origin": { "name": "dingdong", "sw_version": env!("CARGO_PKG_VERSION") },
    });
    (config_topic(discovery_prefix, gateway, doorbell), config.to_string())
}

/// A person's controls in Home Assistant: a "do not disturb" switch and an alert-level select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Dnd,
    Alert,
}

impl Control {
    pub const ALL: [Control; 2] = [Control::Dnd, Control::Alert];

    fn name(self) -> &'static str {
        match self {
            Control::Dnd => "dnd",
            Control::Alert => "alert",
        }
    }

    fn component(self) -> &'static str {
        match self {
            Control::Dnd => "switch",
            Control::Alert => "select",
        }
    }
}

/// The levels the alert select offers, as `Level::as_str` writes them.
pub const LEVELS: [&str; 4] = ["passive", "active", "time-sensitive", "critical"];

/// Where `user`'s control keeps its state (retained) and takes commands.
pub fn control_state_topic(prefix: &str, user: &str, c: Control) -> String {
    format!("{prefix}/ha/user/{user}/{}", c.name())
}

/// The filter of every person's control commands.
pub fn control_command_filter(prefix: &str) -> String {
    format!("{prefix}/ha/user/+/+/set")
}

/// Where `user`'s control is announced (retained).
pub fn control_config_topic(discovery_prefix: &str, gateway: &str, user: &str, c: Control) -> String {
    format!("{discovery_prefix}/{}/{}_{}/config", c.component(), object_id(gateway, user), c.name())
}

/// A command from Home Assistant: whose control, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Dnd(bool),
    Alert(&'static str),
}

/// Reads `P/ha/user/<user>/<control>/set`: the user and the command, or why it is refused.
/// The user is checked as an id (it names a topic level); the payload is `ON`/`OFF` or a level.
pub fn parse_command<'a>(prefix: &str, topic: &'a str, payload: &[u8]) -> Option<Result<(&'a str, Command), String>> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix("/ha/user/")?.strip_suffix("/set")?;
    let (user, control) = rest.split_once('/')?;
    if crate::domain::check_id("user", user).is_err() {
        return Some(Err("user: not a user name".into()));
    }
    let text = std::str::from_utf8(payload).unwrap_or("").trim();
    Some(match control {
        "dnd" => match text {
            "ON" => Ok((user, Command::Dnd(true))),
            "OFF" => Ok((user, Command::Dnd(false))),
            _ => Err("dnd: payload must be ON or OFF".into()),
        },
        "alert" => match LEVELS.iter().find(|l| **l == text) {
            Some(l) => Ok((user, Command::Alert(l))),
            None => Err(format!("alert: payload must be one of {}", LEVELS.join(", "))),
        },
        _ => Err("control: must be dnd or alert".into()),
    })
}

/// `(topic, retained payload)` announcing `user`'s control `c`.
pub fn control_discovery(
    discovery_prefix: &str,
    prefix: &str,
    gateway: &str,
    user: &str,
    c: Control,
) -> (String, String) {
    let oid = format!("{}_{}", object_id(gateway, user), c.name());
    let state = control_state_topic(prefix, user, c);
    let mut config = json!({
        "name": match c { Control::Dnd => format!("{user} do not disturb"), Control::Alert => format!("{user} doorbell alert") },
        "unique_id": format!("dingdong_{oid}"),
        "default_entity_id": format!("{}.{}", c.component(), slug(&oid)),
        "state_topic": state,
        "command_topic": format!("{state}/set"),
        "availability": availability(prefix),
        "qos": 1,
        "retain": false,
        "device": device(gateway),
        "origin": { "name": "dingdong", "sw_version": env!("CARGO_PKG_VERSION") },
    });
    match c {
        Control::Dnd => {
            config["payload_on"] = "ON".into();
            config["payload_off"] = "OFF".into();
            config["icon"] = "mdi:bell-off".into();
        }
        Control::Alert => {
            config["options"] = json!(LEVELS);
            config["icon"] = "mdi:bell-ring".into();
        }
    }
    (control_config_topic(discovery_prefix, gateway, user, c), config.to_string())
}

/// Entities are available while dingdong's retained `P/status` says online.
fn availability(prefix: &str) -> serde_json::Value {
    json!([{
        "topic": format!("{prefix}/status"),
        "value_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }])
}

fn device(gateway: &str) -> serde_json::Value {
    json!({
        "identifiers": [format!("dingdong_{gateway}")],
        "name": format!("dingdong {gateway}"),
        "manufacturer": "dingdong",
        "model": "doorbell push gateway",
        "sw_version": env!("CARGO_PKG_VERSION"),
    })
}

/// The event an answer ("I'm coming") publishes on the doorbell entity's state topic.
pub fn answered_event(ring_id: &str, doorbell: &str, by: &str, at: i64) -> String {
    json!({ "event_type": "answered", "ring_id": ring_id, "doorbell": doorbell, "answered_by": by, "answered_at": at })
        .to_string()
}

/// The event a ring publishes on the entity's state topic.
pub fn ring_event(ring_id: &str, doorbell: &str, pressed_at: i64) -> String {
    json!({ "event_type": "ring", "ring_id": ring_id, "doorbell": doorbell, "pressed_at": pressed_at }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_is_an_event_entity_with_our_availability() {
        let (topic, payload) = discovery("homeassistant", "dingdong/gw-1", "gw-1", "front.door", "Front door");
        assert_eq!(topic, "homeassistant/event/gw-1_front_door/config");
        let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(v["device_class"], "doorbell");
        assert_eq!(v["event_types"], json!(["ring", "answered"]));
        assert_eq!(v["state_topic"], "dingdong/gw-1/doorbell/front.door/event");
        assert_eq!(v["availability"][0]["topic"], "dingdong/gw-1/status");
        assert_eq!(v["name"], "Front door");
        assert_eq!(v["default_entity_id"], "event.gw_1_front_door");
        assert!(v.get("object_id").is_none(), "deprecated by Home Assistant");
        assert!(is_ours("gw-1", payload.as_bytes()) && !is_ours("gw-2", payload.as_bytes()) && !is_ours("gw-1", b""));
        let e: serde_json::Value = serde_json::from_str(&ring_event("r1", "front", 5)).unwrap();
        assert_eq!(e["event_type"], "ring");
        assert!(is_online(b"online\n") && !is_online(b"offline"));
    }

    #[test]
    fn removal_and_config_topics() {
        let (topic, payload) = removal("homeassistant", "gw-1", "front.door");
        assert_eq!((topic.as_str(), payload.as_str()), ("homeassistant/event/gw-1_front_door/config", ""));
        assert!(is_config_topic("homeassistant", &topic));
        assert!(!is_config_topic("homeassistant", "homeassistant/sensor/x/config"));
        assert!(!is_config_topic("homeassistant", "homeassistant/event/a/b/config"));
        assert_eq!(config_filter("ha"), "ha/event/+/config");
        assert_eq!(slug("GW-0001_Front.Door--2"), "gw_0001_front_door_2");
    }

    #[test]
    fn a_persons_controls_are_a_switch_and_a_select_commanded_over_mqtt() {
        let (topic, payload) = control_discovery("homeassistant", "dd/gw-1", "gw-1", "alice", Control::Dnd);
        assert_eq!(topic, "homeassistant/switch/gw-1_alice_dnd/config");
        let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(
            (v["state_topic"].as_str(), v["command_topic"].as_str()),
            (Some("dd/gw-1/ha/user/alice/dnd"), Some("dd/gw-1/ha/user/alice/dnd/set"))
        );
        assert!(is_ours("gw-1", payload.as_bytes()));
        let (topic, payload) = control_discovery("homeassistant", "dd/gw-1", "gw-1", "alice", Control::Alert);
        assert_eq!(topic, "homeassistant/select/gw-1_alice_alert/config");
        let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(v["options"], json!(LEVELS));
        assert_eq!(v["default_entity_id"], "select.gw_1_alice_alert");

        assert_eq!(
            parse_command("dd/gw-1", "dd/gw-1/ha/user/alice/dnd/set", b"ON"),
            Some(Ok(("alice", Command::Dnd(true))))
        );
        assert_eq!(
            parse_command("dd/gw-1", "dd/gw-1/ha/user/alice/alert/set", b"critical"),
            Some(Ok(("alice", Command::Alert("critical"))))
        );
        assert!(matches!(parse_command("dd/gw-1", "dd/gw-1/ha/user/alice/dnd/set", b"maybe"), Some(Err(_))));
        assert!(matches!(parse_command("dd/gw-1", "dd/gw-1/ha/user/alice/alert/set", b"loud"), Some(Err(_))));
        assert!(matches!(parse_command("dd/gw-1", "dd/gw-1/ha/user/al ice/dnd/set", b"ON"), Some(Err(_))));
        assert!(matches!(parse_command("dd/gw-1", "dd/gw-1/ha/user/alice/lights/set", b"ON"), Some(Err(_))));
        assert_eq!(parse_command("dd/gw-1", "dd/gw-1/button/x/press", b"ON"), None);
        assert_eq!(control_command_filter("dd/gw-1"), "dd/gw-1/ha/user/+/+/set");
    }
}
