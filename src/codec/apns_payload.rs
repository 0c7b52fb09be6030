//! The APNs payload of a ring: alert, sound, grouping, interruption level, bounded by Apple's
//! size limit; one per alert profile of a ring (household controls), and the replacement that
//! quiets the other phones once someone answered ("Alice is getting the door"). Pure.

use crate::domain::household::{Level, Profile};
use bytes::Bytes;

/// The notification category of a ring: the app registers it with an "I'm coming" action.
pub const RING_CATEGORY: &str = "DOORBELL_RING";

/// Largest payload Apple accepts for an alert push.
pub const MAX_PAYLOAD: usize = 4096;
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("payload is {0} bytes; Apple accepts at most {MAX_PAYLOAD}")]
pub struct PayloadTooLarge(pub usize);

/// The notification of a ring: alert naming the doorbell, sound, grouping per doorbell,
/// time-sensitive so Focus modes let it through. The ring id lets the app match the outcome.
pub fn ring_payload(
    doorbell_id: &str,
    doorbell_name: &str,
    ring_id: &str,
    sound: &str,
) -> Result<Bytes, PayloadTooLarge> {
    let v = serde_json::json!({
        "aps": {
            "alert": {
                "title": doorbell_name,
                "body": format!("Someone is at {doorbell_name}"),
            },
            "sound": sound,
            "thread-id": format!("doorbell-{doorbell_id}"),
            "interruption-level": "time-sensitive",
        },
        "doorbell": doorbell_id,
        "ring": ring_id,
    });
    let bytes = serde_json::to_vec(&v).expect("a json value always serialises");
    if bytes.len() > MAX_PAYLOAD {
        return Err(PayloadTooLarge(bytes.len()));
    }
    Ok(Bytes::from(bytes))
}

/// The ring's notification for one alert profile. `default_sound` is `ring.sound`. Passive
/// notifications carry no sound; critical ones Apple's critical-sound dictionary.
pub fn profile_payload(
    doorbell_id: &str,
    doorbell_name: &str,
    ring_id: &str,
    profile: &Profile,
    default_sound: &str,
) -> Result<Bytes, PayloadTooLarge> {
    let sound_name = profile.sound.as_deref().unwrap_or(default_sound);
    let mut aps = serde_json::json!({
        "alert": {"title": doorbell_name, "body": format!("Someone is at {doorbell_name}")},
        "thread-id": format!("doorbell-{doorbell_id}"),
        "interruption-level": profile.level.as_str(),
        "category": RING_CATEGORY,
    });
    match profile.level {
        Level::Passive => {}
        Level::Critical => {
            aps["sound"] =
                serde_json::json!({"critical": 1, "name": sound_name, "volume": profile.volume().unwrap_or(1.0)});
        }
        Level::Active | Level::TimeSensitive => aps["sound"] = sound_name.into(),
    }
    bounded(serde_json::json!({"aps": aps, "doorbell": doorbell_id, "ring": ring_id}))
}

/// What replaces a ring on the phones of everyone but the one who answered: same collapse id
/// (set by the sender), passive and silent, naming who is getting the door.
pub fn answered_payload(
    doorbell_id: &str,
    doorbell_name: &str,
    ring_id: &str,
    who: &str,
) -> Result<Bytes, PayloadTooLarge> {
    bounded(serde_json::json!({
        "aps": {
            "alert": {"title": doorbell_name, "body": format!("{who} is getting the door")},
            "thread-id": format!("doorbell-{doorbell_id}"),
            "interruption-level": "passive",
        },
        "doorbell": doorbell_id,
        "ring": ring_id,
        "answered_by": who,
    }))
}

fn bounded(v: serde_json::Value) -> Result<Bytes, PayloadTooLarge> {
    let bytes = serde_json::to_vec(&v).expect("a json value always serialises");
    if bytes.len() > MAX_PAYLOAD {
        return Err(PayloadTooLarge(bytes.len()));
    }
    Ok(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_payload_per_profile() {
        let get = |p: &Profile| -> serde_json::Value {
            serde_json::from_slice(&profile_payload("front", "Front door", "r1", p, "ding.caf").unwrap()).unwrap()
        };
        let v = get(&Profile::default());
        assert_eq!(v["aps"]["interruption-level"], "time-sensitive");
        assert_eq!(v["aps"]["sound"], "ding.caf");
        assert_eq!(v["aps"]["category"], RING_CATEGORY);
        let v = get(&Profile::silent());
        assert_eq!(v["aps"]["interruption-level"], "passive");
        assert!(v["aps"].get("sound").is_none());
        let crit = Profile { level: Level::Critical, sound: Some("alarm.caf".into()), volume_milli: Some(750) };
        let v = get(&crit);
        assert_eq!(v["aps"]["sound"], serde_json::json!({"critical": 1, "name": "alarm.caf", "volume": 0.75}));
        let v: serde_json::Value =
            serde_json::from_slice(&answered_payload("front", "Front door", "r1", "alice").unwrap()).unwrap();
        assert_eq!(v["aps"]["alert"]["body"], "alice is getting the door");
        assert_eq!(v["aps"]["interruption-level"], "passive");
        assert!(v["aps"].get("sound").is_none());
        assert_eq!(v["answered_by"], "alice");
    }

    #[test]
    fn payload_names_the_doorbell_and_is_bounded() {
        let p = ring_payload("front", "Front door", "r1", "default").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["aps"]["alert"]["title"], "Front door");
        assert_eq!(v["aps"]["thread-id"], "doorbell-front");
        assert_eq!(v["aps"]["interruption-level"], "time-sensitive");
        assert!(ring_payload("front", &"x".repeat(5000), "r1", "default").is_err());
    }
}
