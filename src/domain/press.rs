//! A button press, whichever bridge heard it.

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
