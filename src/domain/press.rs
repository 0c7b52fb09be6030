//! A button press, whichever bridge heard it, and the id of the ring it starts.

use sha2::{Digest, Sha256};

/// Which kind of bridge a press came from; bindings are keyed by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Native,
    Rtl433,
    Tasmota,
    Zigbee2mqtt,
}

impl Source {
    pub fn parse(s: &str) -> Option<Source> {
        Some(match s {
            "native" => Source::Native,
            "rtl_433" => Source::Rtl433,
            "tasmota" => Source::Tasmota,
            "zigbee2mqtt" => Source::Zigbee2mqtt,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Native => "native",
            Source::Rtl433 => "rtl_433",
            Source::Tasmota => "tasmota",
            Source::Zigbee2mqtt => "zigbee2mqtt",
        }
    }
}

/// A button was pressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ButtonPress {
    pub source: Source,
    /// The button's identity within its source: the `<button>` of the native topic;
    /// `model/id[/channel][/cmd]` for rtl_433; the code (`RfReceived.Data`) for Tasmota;
    /// `friendly_name/action` for zigbee2mqtt.
    pub key: String,
    /// When the bridge saw it (UNIX ms), if it said; it makes the ring id stable across
    /// MQTT redeliveries.
    pub at: Option<i64>,
}

/// A ring id that is the same every time the same press is delivered: derived from the
/// doorbell and the press time the bridge stamped. Presses without a time get a random id
/// (the debounce window still folds their redeliveries).
pub fn ring_id(doorbell: &str, at: Option<i64>) -> String {
    match at {
        Some(at) => {
            let digest = Sha256::digest(format!("{doorbell}\n{at}").as_bytes());
            hex::encode(&digest[..8])
        }
        None => uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
    }
}
