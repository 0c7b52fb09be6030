//! Home Assistant MQTT discovery: what to publish so each doorbell shows up as an `event`
//! entity (`device_class: doorbell`, event type `ring`) whose availability follows dingdong's
//! own `P/status`. Pure: topics and payloads out; the daemon publishes them at start, when
//! Home Assistant's birth message (`<prefix>/status` = `online`) arrives, and at each ring.

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

/// Object ids allow `[a-zA-Z0-9_-]`; ours also have `.`.
fn object_id(gateway: &str, doorbell: &str) -> String {
    format!("{gateway}_{doorbell}").replace('.', "_")
}

/// `(topic, retained payload)` announcing `doorbell` as an event entity.
pub fn discovery(discovery_prefix: &str, prefix: &str, gateway: &str, doorbell: &str, name: &str) -> (String, String) {
    let oid = object_id(gateway, doorbell);
    let config = json!({
        "name": name,
        "unique_id": format!("dingdong_{oid}"),
        "object_id": oid,
        "device_class": "doorbell",
        "event_types": ["ring"],
        "state_topic": event_topic(prefix, doorbell),
        "availability": [{
            "topic": format!("{prefix}/status"),
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }],
        "qos": 1,
        "device": {
            "identifiers": [format!("dingdong_{gateway}")],
            "name": format!("dingdong {gateway}"),
            "manufacturer": "dingdong",
            "model": "doorbell push gateway",
            "sw_version": env!("CARGO_PKG_VERSION"),
        },
        "origin": { "name": "dingdong", "sw_version": env!("CARGO_PKG_VERSION") },
    });
    (format!("{discovery_prefix}/event/{oid}/config"), config.to_string())
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
        assert_eq!(v["event_types"], json!(["ring"]));
        assert_eq!(v["state_topic"], "dingdong/gw-1/doorbell/front.door/event");
        assert_eq!(v["availability"][0]["topic"], "dingdong/gw-1/status");
        assert_eq!(v["name"], "Front door");
        let e: serde_json::Value = serde_json::from_str(&ring_event("r1", "front", 5)).unwrap();
        assert_eq!(e["event_type"], "ring");
        assert!(is_online(b"online\n") && !is_online(b"offline"));
    }
}
