//! The APNs payload of a ring: alert, sound, grouping, interruption level, bounded by Apple's
//! size limit. Pure.

use bytes::Bytes;

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

#[cfg(test)]
mod tests {
    use super::*;

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
