//! Pure decoding of what arrives on the broker: dingdong's native button topic and the radio
//! bridges' own JSON (rtl_433, Tasmota RF receivers, zigbee2mqtt), on the topics `[bridges]`
//! names ([`Routes`]). Bytes in, a typed event or a reason out; no I/O. Which key a bridge's
//! button gets is decided here, once: bindings store exactly these keys
//! (`dingdong doorbell bind ID --source KIND --key KEY`).
//! The pairing topics are recognised here and parsed by `pairing::pake::wire` (the exchange)
//! and `pairing::wire` (signed requests, the pair button).

use crate::codec::pairing::pake::wire::{self as pake_wire, Finish, Request};
use crate::codec::pairing::wire::{self, Refusal, SignedRequest};
use crate::domain::{ButtonPress, Source};
use serde::Deserialize;

/// Larger payloads are refused unread: nothing legitimate on these topics comes close.
pub const MAX_PAYLOAD: usize = 4096;

/// What a message on a subscribed topic means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Press(ButtonPress),
    /// `P/pair/request`: the phone's first pairing message, or its refusal (answered when it
    /// names a request id).
    PairRequest(Result<Request, Refusal>),
    /// `P/pair/finish`: the phone's proofs and sealed registration, or its refusal.
    PairFinish(Result<Finish, Refusal>),
    /// `P/phone/<phone_id>/<action>`: a signed request (not yet verified), or its refusal.
    PhoneRequest {
        phone_id: i64,
        request: Result<SignedRequest, Refusal>,
    },
    /// `P/gateway/pair-button`: the gateway's own pair button, or why its payload is refused.
    PairButton(Result<(), String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {0} bytes is larger than {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("bad topic: {0}")]
    Topic(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativePress {
    at: Option<i64>,
}

/// Earliest and latest believable press times (2001 to 2286): anything else is garbage.
const AT_RANGE: std::ops::RangeInclusive<i64> = 1_000_000_000_000..=9_999_999_999_999;

/// Where presses arrive: dingdong's own prefix and the topics each radio bridge publishes on
/// (`[bridges]` in the config; [`Routes::new`] has the bridges' own defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    /// `mqtt.topic_prefix`.
    pub prefix: String,
    /// rtl_433's events topic, as a subscription filter; `None`: not listened to.
    pub rtl_433: Option<String>,
    /// zigbee2mqtt's base topic; devices publish on `<base>/<friendly_name>`.
    pub zigbee2mqtt: Option<String>,
    /// Filters of the topics Tasmota publishes `RfReceived` on.
    pub tasmota: Vec<String>,
}

impl Routes {
    /// The bridges as their own defaults have them: rtl_433's `rtl_433/<host>/events`,
    /// zigbee2mqtt's `zigbee2mqtt`, Tasmota's `tele/<topic>/RESULT` and, with `SetOption4 1`,
    /// `tele/<topic>/RFRECEIVED`.
    pub fn new(prefix: &str) -> Routes {
        Routes {
            prefix: prefix.to_string(),
            rtl_433: Some("rtl_433/+/events".into()),
            zigbee2mqtt: Some("zigbee2mqtt".into()),
            tasmota: vec!["tele/+/RESULT".into(), "tele/+/RFRECEIVED".into()],
        }
    }

    /// The bridges' subscription filters, besides dingdong's own topics.
    pub fn bridge_filters(&self) -> Vec<String> {
        let mut v: Vec<String> = self.rtl_433.iter().cloned().collect();
        v.extend(self.tasmota.iter().cloned());
        v.extend(self.zigbee2mqtt.iter().map(|base| format!("{base}/+")));
        v
    }
}

/// Whether `topic` matches the subscription filter `filter` (MQTT's `+` and `#`).
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        match (f, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Decodes a message; `Ok(None)` for topics and messages that are not button presses.
pub fn decode(routes: &Routes, topic: &str, payload: &[u8]) -> Result<Option<Inbound>, DecodeError> {
    let press = if routes.rtl_433.as_deref().is_some_and(|f| matches(f, topic)) {
        decode_rtl433(bounded(payload)?)?
    } else if routes.tasmota.iter().any(|f| matches(f, topic)) {
        decode_tasmota(bounded(payload)?)?
    } else if let Some(name) = zigbee2mqtt_device(routes, topic) {
        decode_zigbee2mqtt(name, bounded(payload)?)?
    } else {
        return decode_own(&routes.prefix, topic, payload);
    };
    Ok(press.map(Inbound::Press))
}

/// The friendly name of a zigbee2mqtt device topic (`<base>/<name>`), not the bridge's own.
fn zigbee2mqtt_device<'t>(routes: &Routes, topic: &'t str) -> Option<&'t str> {
    let base = routes.zigbee2mqtt.as_deref()?;
    let name = topic.strip_prefix(base)?.strip_prefix('/')?;
    (!name.is_empty() && !name.contains('/') && name != "bridge").then_some(name)
}

fn bounded(payload: &[u8]) -> Result<&[u8], DecodeError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    Ok(payload)
}

fn decode_own(prefix: &str, topic: &str, payload: &[u8]) -> Result<Option<Inbound>, DecodeError> {
    let Some(rest) = topic.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
        return bounded(payload).map(|_| None);
    };
    // Pairing topics bound their own payloads, so that a refusal can still be answered.
    if let Some(inbound) = decode_pairing(rest, payload)? {
        return Ok(Some(inbound));
    }
    let payload = bounded(payload)?;
    if let Some(button) = rest.strip_prefix("button/").and_then(|r| r.strip_suffix("/press")) {
        return decode_native(button, payload).map(|p| Some(Inbound::Press(p)));
    }
    Ok(None)
}

fn decode_pairing(rest: &str, payload: &[u8]) -> Result<Option<Inbound>, DecodeError> {
    match rest {
        "pair/request" => return Ok(Some(Inbound::PairRequest(pake_wire::parse_request(payload)))),
        "pair/finish" => return Ok(Some(Inbound::PairFinish(pake_wire::parse_finish(payload)))),
        "gateway/pair-button" => return Ok(Some(Inbound::PairButton(wire::parse_pair_button(payload)))),
        _ => {}
    }
    let Some(r) = rest.strip_prefix("phone/") else { return Ok(None) };
    let (id, action) =
        r.split_once('/').ok_or_else(|| DecodeError::Topic("expected phone/<phone_id>/<action>".into()))?;
    let phone_id =
        wire::parse_phone_id(id).ok_or_else(|| DecodeError::Topic("phone id is not a positive integer".into()))?;
    if action.contains('/') {
        return Err(DecodeError::Topic("expected phone/<phone_id>/<action>".into()));
    }
    Ok(Some(Inbound::PhoneRequest { phone_id, request: wire::parse_signed(phone_id, action, payload) }))
}

fn decode_native(button: &str, payload: &[u8]) -> Result<ButtonPress, DecodeError> {
    crate::domain::check_id("button", button).map_err(DecodeError::Topic)?;
    let text = std::str::from_utf8(payload).map_err(|_| DecodeError::Malformed("not UTF-8".into()))?;
    let at = if text.trim().is_empty() {
        None
    } else {
        let p: NativePress = serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if let Some(at) = p.at {
            if !AT_RANGE.contains(&at) {
                return Err(DecodeError::Malformed(format!("\"at\" = {at} is not a time in UNIX milliseconds")));
            }
        }
        p.at
    };
    Ok(ButtonPress { source: Source::Native, key: button.to_string(), at })
}

fn json(payload: &[u8]) -> Result<serde_json::Value, DecodeError> {
    serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// A JSON scalar as key text: strings as they are, numbers in decimal.
fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Keys end up in bindings, logs and diag output: printable, bounded.
fn check_key(key: String) -> Result<String, DecodeError> {
    if key.len() > 128 || key.chars().any(char::is_control) {
        return Err(DecodeError::Malformed("button key too long or not printable".into()));
    }
    Ok(key)
}

/// An rtl_433 event (`-F mqtt://...,events=rtl_433/<gw>/events` or `-F json`): the key is
/// `model/id`, then `/channel` and `/cmd` (or `/code`, `/button`) when the decoder reports
/// them, so the buttons of one multi-button remote are told apart. A flex decoder
/// (`-X "n=NAME,..."`) reports no `id`, only the bits it received: its key is
/// `NAME/{BITS}HEX`, the row it received most often, as rtl_433 writes it in `codes`
/// (`doorbell/{25}fb2dd58`). `time` is used as the press time when it is UNIX time
/// (`report_meta time:unix:usec:utc`, see hardware/). Events without `model`, or without
/// `id` and bits (sensors' status lines, `countonly` flex output), are not presses.
fn decode_rtl433(payload: &[u8]) -> Result<Option<ButtonPress>, DecodeError> {
    let v = json(payload)?;
    let Some(model) = v.get("model").and_then(scalar) else {
        return Ok(None);
    };
    let mut key = match (v.get("id").and_then(scalar), flex_code(&v)) {
        (Some(id), _) => format!("{model}/{id}"),
        (None, Some(code)) => format!("{model}/{code}"),
        (None, None) => return Ok(None),
    };
    for field in ["channel", "cmd", "code", "button"] {
        if let Some(x) = v.get(field).and_then(scalar) {
            key.push('/');
            key.push_str(&x);
        }
    }
    let at = v.get("time").and_then(|t| match t {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.parse::<f64>().ok(),
        _ => None,
    });
    let at = at.map(|secs| (secs * 1000.0) as i64).filter(|ms| AT_RANGE.contains(ms));
    Ok(Some(ButtonPress { source: Source::Rtl433, key: check_key(key)?, at }))
}

/// The bits of a flex decoder's event, `{BITS}HEX`: the code that repeats most among `codes`
/// (the first on a tie; a press sends its code several times, a broken row once), or the one
/// row of a `unique` decoder (`len` and `data`).
fn flex_code(v: &serde_json::Value) -> Option<String> {
    if let Some(codes) = v.get("codes").and_then(|c| c.as_array()) {
        let codes: Vec<&str> = codes.iter().filter_map(|c| c.as_str()).filter(|c| !c.starts_with("{0}")).collect();
        let count = |c: &str| codes.iter().filter(|&&x| x == c).count();
        return codes
            .iter()
            .copied()
            .fold(None::<&str>, |best, c| match best {
                Some(b) if count(b) >= count(c) => Some(b),
                _ => Some(c),
            })
            .map(str::to_string);
    }
    let (len, data) = (v.get("len")?.as_u64()?, v.get("data")?.as_str()?);
    (len > 0 && !data.is_empty()).then(|| format!("{{{len}}}{data}"))
}

/// A Tasmota RF receiver: the Sonoff RF Bridge (`{"Time":...,"RfReceived":{"Sync":...,
/// "Low":...,"High":...,"Data":"E5CD7E","RfKey":"None"}}`) or an rc-switch receiver
/// (`{"RfReceived":{"Data":"0x7028D2","Bits":24,"Protocol":1,"Pulse":238}}`), on
/// `tele/<topic>/RESULT`, or `tele/<topic>/RFRECEIVED` with `SetOption4 1`. The key is `Data`
/// as Tasmota writes it (a decimal number with `SetOption28 1`), so two bridges hearing one
/// button make one binding. Other messages (relay states, IR, RfRaw) are not presses.
fn decode_tasmota(payload: &[u8]) -> Result<Option<ButtonPress>, DecodeError> {
    let v = json(payload)?;
    let Some(data) = v.get("RfReceived").and_then(|r| r.get("Data")).and_then(scalar) else {
        return Ok(None);
    };
    Ok(Some(ButtonPress { source: Source::Tasmota, key: check_key(data)?, at: None }))
}

/// Whether a zigbee2mqtt `action` is a press: single/double/long presses, `press`, `on`,
/// `ring`, button-numbered variants (`1_single`, `button_2_press`); not releases, holds or
/// the empty action some devices publish after each press.
pub fn is_press_action(action: &str) -> bool {
    const PRESS: &[&str] = &["single", "double", "triple", "long", "press", "click", "on", "ring", "toggle"];
    let last = action.rsplit('_').next().unwrap_or("");
    !action.is_empty() && (PRESS.contains(&action) || PRESS.contains(&last))
}

/// A zigbee2mqtt device state (`zigbee2mqtt/<friendly_name>`, `{"action":"single",...}`): the
/// key is `friendly_name/action`. State updates without a press-like action are not presses.
fn decode_zigbee2mqtt(name: &str, payload: &[u8]) -> Result<Option<ButtonPress>, DecodeError> {
    let v = json(payload)?;
    let Some(action) = v.get("action").and_then(|a| a.as_str()) else {
        return Ok(None);
    };
    if !is_press_action(action) {
        return Ok(None);
    }
    Ok(Some(ButtonPress { source: Source::Zigbee2mqtt, key: check_key(format!("{name}/{action}"))?, at: None }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "dingdong/gw";

    #[test]
    fn native_presses() {
        let press = |payload: &str| decode(&Routes::new(P), "dingdong/gw/button/front/press", payload.as_bytes());
        assert_eq!(
            press("").unwrap(),
            Some(Inbound::Press(ButtonPress { source: Source::Native, key: "front".into(), at: None }))
        );
        let Some(Inbound::Press(p)) = press(r#"{"at": 1700000000000}"#).unwrap() else { panic!() };
        assert_eq!(p.at, Some(1_700_000_000_000));
        assert!(press("{").is_err());
        assert!(press(r#"{"at": "soon"}"#).is_err());
        assert!(press(r#"{"at": 5}"#).is_err());
        assert!(press(r#"{"at": 1700000000000, "extra": 1}"#).is_err());
        assert!(press(&"x".repeat(MAX_PAYLOAD + 1)).is_err());
        assert!(decode(&Routes::new(P), "dingdong/gw/button/a+b/press", b"").is_err());
        assert_eq!(decode(&Routes::new(P), "other/button/front/press", b"").unwrap(), None);
        assert_eq!(decode(&Routes::new(P), "dingdong/gw/status", b"").unwrap(), None);
    }

    fn key(topic: &str, payload: &str) -> Option<ButtonPress> {
        match decode(&Routes::new(P), topic, payload.as_bytes()).unwrap() {
            Some(Inbound::Press(p)) => Some(p),
            Some(other) => panic!("not a press: {other:?}"),
            None => None,
        }
    }

    #[test]
    fn rtl_433_events() {
        // `rtl_433 -R 30 -F json -y "{25}fb2dd58"` (rtl_433's own -y example, 22.11)
        let p = key(
            "rtl_433/gw/events",
            r#"{"time" : "2026-11-23 11:14:14", "model" : "Generic-Remote", "id" : 1234, "cmd" : 42, "tristate" : "00Z01Z0X0XXX"}"#,
        )
        .unwrap();
        assert_eq!((p.source, p.key.as_str(), p.at), (Source::Rtl433, "Generic-Remote/1234/42", None));
        // Honeywell ActivLink (honeywell_wdb.c fields), UNIX time from report_meta
        let p = key(
            "rtl_433/gw/events",
            r#"{"time":"1700000000.123456","model":"Honeywell-ActivLink","subtype":"Doorbell","id":181571,"battery_ok":1,"alert":"Normal","secret_knock":0,"relay":0,"mic":"PARITY"}"#,
        )
        .unwrap();
        assert_eq!((p.key.as_str(), p.at), ("Honeywell-ActivLink/181571", Some(1_700_000_000_123)));
        // Elro DB286A reports its 32-bit code as a hex string id; Quhwa a number
        let p = key("rtl_433/x/events", r#"{"time":1700000000,"model":"Elro-DB286A","id":"ac3ed2b8"}"#).unwrap();
        assert_eq!((p.key.as_str(), p.at), ("Elro-DB286A/ac3ed2b8", Some(1_700_000_000_000)));
        let p = key("rtl_433/x/events", r#"{"model":"Quhwa","id":5860,"channel":1}"#).unwrap();
        assert_eq!(p.key, "Quhwa/5860/1");
        // not presses: no model/id; the topic must be rtl_433/<one level>/events
        assert_eq!(key("rtl_433/gw/events", r#"{"time":"x","freq":433.92}"#), None);
        assert_eq!(key("rtl_433/gw/a/events", r#"{"model":"Quhwa","id":1}"#), None);
        assert!(decode(&Routes::new(P), "rtl_433/gw/events", b"{").is_err());
    }

    /// rtl_433's flex decoder reports no id, only the bits it received (flex.c: `model` is
    /// the spec's name, then `count`, `num_rows`, `rows` and `codes`; with `unique`, `len`
    /// and `data`): the key is the name and the code received most often.
    #[test]
    fn rtl_433_flex_decoder_events() {
        // rtl_433 -X "n=doorbell,m=OOK_PWM,s=400,l=800,r=7000,g=1000,repeats>=3"
        let flex = r#"{"time":"2026-11-23 11:14:14","model":"doorbell","count":4,"num_rows":5,"rows":[{"len":25,"data":"fb2dd58"},{"len":25,"data":"fb2dd58"},{"len":25,"data":"fb2dd58"},{"len":25,"data":"fb2dd58"},{"len":12,"data":"fb2"}],"codes":["{25}fb2dd58","{25}fb2dd58","{25}fb2dd58","{25}fb2dd58","{12}fb2"]}"#;
        let p = key("rtl_433/gw/events", flex).unwrap();
        assert_eq!((p.source, p.key.as_str()), (Source::Rtl433, "doorbell/{25}fb2dd58"));
        // The broken row first does not win.
        let first_broken =
            r#"{"model":"doorbell","count":2,"num_rows":3,"codes":["{3}e","{25}fb2dd58","{25}fb2dd58"]}"#;
        assert_eq!(key("rtl_433/gw/events", first_broken).unwrap().key, "doorbell/{25}fb2dd58");
        // `unique`: one row, as len and data.
        let unique =
            r#"{"time":"2026-11-23 11:14:14","model":"doorbell","count":4,"num_rows":5,"len":25,"data":"fb2dd58"}"#;
        assert_eq!(key("rtl_433/gw/events", unique).unwrap().key, "doorbell/{25}fb2dd58");
        // A `unique` flex decoder with an id getter (get=@0:{16}:id) puts the id beside the
        // row: keyed as any other decoder. Without `unique` the getter's id is in each row,
        // and the code keys it.
        let getter = r#"{"model":"doorbell","count":3,"num_rows":3,"len":25,"data":"fb2dd58","id":64301}"#;
        assert_eq!(key("rtl_433/gw/events", getter).unwrap().key, "doorbell/64301");
        let in_rows = r#"{"model":"doorbell","count":3,"num_rows":1,"rows":[{"len":25,"data":"fb2dd58","id":64301}],"codes":["{25}fb2dd58"]}"#;
        assert_eq!(key("rtl_433/gw/events", in_rows).unwrap().key, "doorbell/{25}fb2dd58");
        // `countonly` reports no bits: not a press.
        assert_eq!(key("rtl_433/gw/events", r#"{"model":"doorbell","count":4}"#), None);
    }

    #[test]
    fn tasmota_rf_bridge() {
        // xdrv_06_snfbridge: the Sonoff RF Bridge's RfReceived, with the Time every
        // telemetry message starts with, on tele/<topic>/RESULT (default FullTopic).
        let bridge = r#"{"Time":"2026-11-23T11:14:14","RfReceived":{"Sync":12220,"Low":440,"High":1210,"Data":"E5CD7E","RfKey":"None"}}"#;
        let p = key("tele/rfbridge/RESULT", bridge).unwrap();
        assert_eq!((p.source, p.key.as_str()), (Source::Tasmota, "E5CD7E"));
        // SetOption4 1: the same message on its own topic, tele/<topic>/RFRECEIVED.
        assert_eq!(key("tele/rfbridge/RFRECEIVED", bridge).unwrap().key, "E5CD7E");
        // SetOption28 1: the code as a decimal number; a learnt key numbered.
        let decimal = r#"{"Time":"2026-11-23T11:14:15","RfReceived":{"Sync":12220,"Low":440,"High":1210,"Data":15060350,"RfKey":3}}"#;
        assert_eq!(key("tele/rfbridge/RESULT", decimal).unwrap().key, "15060350");
        // xdrv_17_rcswitch: an rc-switch receiver writes its code with 0x.
        let rc =
            r#"{"Time":"2026-11-23T11:14:16","RfReceived":{"Data":"0x7028D2","Bits":24,"Protocol":1,"Pulse":238}}"#;
        assert_eq!(key("tele/garage/RESULT", rc).unwrap().key, "0x7028D2");
        assert_eq!(key("tele/rfbridge/RESULT", r#"{"POWER":"ON"}"#), None);
        assert_eq!(key("tele/rfbridge/RESULT", r#"{"Time":"x","RfRaw":{"Data":"AA B1 04 0302 00DC 1F54 55"}}"#), None);
        assert_eq!(key("tele/rfbridge/STATE", r#"{"RfReceived":{"Data":"E5CD7E"}}"#), None);
        assert!(decode(&Routes::new(P), "tele/rfbridge/RESULT", b"not json").is_err());
    }

    /// The bridges' topics come from `[bridges]`: another FullTopic, rtl_433 events topic or
    /// zigbee2mqtt base_topic moves them, and a bridge left empty is not listened to.
    #[test]
    fn routes_follow_the_bridges_configuration() {
        let custom = Routes {
            prefix: P.into(),
            rtl_433: Some("sdr/433/events".into()),
            zigbee2mqtt: Some("home/z2m".into()),
            tasmota: vec!["+/tele/RESULT".into()],
        };
        let press = |topic: &str, payload: &str| match decode(&custom, topic, payload.as_bytes()).unwrap() {
            Some(Inbound::Press(p)) => Some((p.source, p.key)),
            _ => None,
        };
        let rf = r#"{"Time":"2026-11-23T11:14:14","RfReceived":{"Data":"E5CD7E"}}"#;
        assert_eq!(press("rfbridge/tele/RESULT", rf), Some((Source::Tasmota, "E5CD7E".into())));
        assert_eq!(press("tele/rfbridge/RESULT", rf), None, "the default shape is not listened to now");
        let quhwa = r#"{"model":"Quhwa","id":5860}"#;
        assert_eq!(press("sdr/433/events", quhwa), Some((Source::Rtl433, "Quhwa/5860".into())));
        assert_eq!(press("rtl_433/gw/events", quhwa), None);
        let single = r#"{"action":"single","linkquality":120}"#;
        assert_eq!(press("home/z2m/front", single), Some((Source::Zigbee2mqtt, "front/single".into())));
        assert_eq!(press("home/z2m/bridge", single), None);
        assert_eq!(press("zigbee2mqtt/front", single), None);
        let mut off = Routes::new(P);
        off.rtl_433 = None;
        assert_eq!(decode(&off, "rtl_433/gw/events", quhwa.as_bytes()).unwrap(), None);
        assert_eq!(custom.bridge_filters(), ["sdr/433/events", "+/tele/RESULT", "home/z2m/+"]);
        assert_eq!(
            Routes::new(P).bridge_filters(),
            ["rtl_433/+/events", "tele/+/RESULT", "tele/+/RFRECEIVED", "zigbee2mqtt/+"]
        );
        assert!(matches("a/+/c", "a/b/c") && matches("a/#", "a/b/c") && matches("a/#", "a"));
        assert!(!matches("a/+/c", "a/b/c/d") && !matches("a/+", "a") && !matches("a/b", "a/c"));
    }

    #[test]
    fn zigbee2mqtt_buttons() {
        // zigbee2mqtt docs, e.g. an Aqara WXKG11LM wireless mini switch
        let p =
            key("zigbee2mqtt/front_button", r#"{"action":"single","battery":100,"linkquality":134,"voltage":3025}"#)
                .unwrap();
        assert_eq!((p.source, p.key.as_str()), (Source::Zigbee2mqtt, "front_button/single"));
        assert_eq!(key("zigbee2mqtt/remote", r#"{"action":"button_2_press"}"#).unwrap().key, "remote/button_2_press");
        assert_eq!(key("zigbee2mqtt/front_button", r#"{"action":""}"#), None);
        assert_eq!(key("zigbee2mqtt/front_button", r#"{"action":"release"}"#), None);
        assert_eq!(key("zigbee2mqtt/front_button", r#"{"action":"hold"}"#), None);
        assert_eq!(key("zigbee2mqtt/front_button", r#"{"battery":97}"#), None);
        assert_eq!(key("zigbee2mqtt/bridge", r#"{"action":"single"}"#), None);
        assert_eq!(key("zigbee2mqtt/bridge/state", r#"{"state":"online"}"#), None);
        assert!(is_press_action("1_double") && !is_press_action("brightness_move_up"));
    }

    #[test]
    fn pairing_topics() {
        let pair = decode(&Routes::new(P), "dingdong/gw/pair/request", b"{").unwrap();
        assert!(matches!(pair, Some(Inbound::PairRequest(Err(Refusal { request_id: None, .. })))));
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert!(matches!(
            decode(&Routes::new(P), "dingdong/gw/pair/request", &big).unwrap(),
            Some(Inbound::PairRequest(Err(_)))
        ));
        let finish = decode(&Routes::new(P), "dingdong/gw/pair/finish", br#"{"request_id":"r1","proofs":[]}"#).unwrap();
        assert!(matches!(finish, Some(Inbound::PairFinish(Err(Refusal { request_id: Some(_), .. })))));
        let phone = decode(&Routes::new(P), "dingdong/gw/phone/12/unpair", &big).unwrap();
        assert!(
            matches!(phone, Some(Inbound::PhoneRequest { phone_id: 12, request: Err(_) })),
            "oversized is answered"
        );
        assert!(decode(&Routes::new(P), "dingdong/gw/phone/x/unpair", b"{}").is_err());
        assert!(decode(&Routes::new(P), "dingdong/gw/phone/0/unpair", b"{}").is_err());
        assert!(decode(&Routes::new(P), "dingdong/gw/phone/7", b"{}").is_err());
        assert_eq!(
            decode(&Routes::new(P), "dingdong/gw/gateway/pair-button", b"").unwrap(),
            Some(Inbound::PairButton(Ok(())))
        );
        assert_eq!(decode(&Routes::new(P), "dingdong/gw/pair/response/r1", b"{}").unwrap(), None);
        assert!(decode(&Routes::new(P), "other/x", &big).is_err());
    }

    #[test]
    fn never_panics_on_junk() {
        for junk in [&b"\xff\xfe"[..], b"null", b"[]", b"{\"at\":null}", b"  ", b"\0", b"{\"model\":[1],\"id\":{}}"] {
            for topic in ["dingdong/gw/button/x/press", "rtl_433/a/events", "tele/a/RESULT", "zigbee2mqtt/a"] {
                let _ = decode(&Routes::new(P), topic, junk);
            }
        }
    }
}
