//! Pure decoding of what arrives on the broker: dingdong's native button topic and the radio
//! bridges' own JSON (rtl_433, Tasmota RF bridges, zigbee2mqtt). Bytes in, a typed event or a
//! reason out; no I/O. Which key a bridge's button gets is decided here, once: bindings store
//! exactly these keys (`dingdong doorbell bind ID --source KIND --key KEY`).
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

/// The bridges' topics the daemon subscribes to, besides its own `P/button/+/press`.
pub const BRIDGE_TOPICS: &[&str] = &["rtl_433/+/events", "tele/+/RESULT", "zigbee2mqtt/+"];

/// Decodes a message; `Ok(None)` for topics and messages that are not button presses.
pub fn decode(prefix: &str, topic: &str, payload: &[u8]) -> Result<Option<Inbound>, DecodeError> {
    let press = match topic.split('/').collect::<Vec<_>>()[..] {
        ["rtl_433", _, "events"] => decode_rtl433(bounded(payload)?)?,
        ["tele", _, "RESULT"] => decode_tasmota(bounded(payload)?)?,
        ["zigbee2mqtt", name] if name != "bridge" => decode_zigbee2mqtt(name, bounded(payload)?)?,
        _ => return decode_own(prefix, topic, payload),
    };
    Ok(press.map(Inbound::Press))
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
/// them, so the buttons of one multi-button remote are told apart. `time` is used as the
/// press time when it is UNIX time (`report_meta time:unix:usec:utc`, see hardware/).
/// Events without `model` and `id` (sensors' status lines) are not presses.
fn decode_rtl433(payload: &[u8]) -> Result<Option<ButtonPress>, DecodeError> {
    let v = json(payload)?;
    let (Some(model), Some(id)) = (v.get("model").and_then(scalar), v.get("id").and_then(scalar)) else {
        return Ok(None);
    };
    let mut key = format!("{model}/{id}");
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

/// A Tasmota RF bridge (`tele/<topic>/RESULT`, `{"RfReceived":{"Data":"E5CD7E",...}}`): the
/// key is the code alone, so two bridges hearing one button make one binding. Other RESULT
/// messages (relay states, IR, RfRaw) are not presses.
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
        let press = |payload: &str| decode(P, "dingdong/gw/button/front/press", payload.as_bytes());
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
        assert!(decode(P, "dingdong/gw/button/a+b/press", b"").is_err());
        assert_eq!(decode(P, "other/button/front/press", b"").unwrap(), None);
        assert_eq!(decode(P, "dingdong/gw/status", b"").unwrap(), None);
    }

    fn key(topic: &str, payload: &str) -> Option<ButtonPress> {
        match decode(P, topic, payload.as_bytes()).unwrap() {
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
        assert!(decode(P, "rtl_433/gw/events", b"{").is_err());
    }

    #[test]
    fn tasmota_rf_bridge() {
        // Tasmota docs, RF bridge: tele/<topic>/RESULT
        let p = key(
            "tele/rfbridge/RESULT",
            r#"{"RfReceived":{"Sync":12220,"Low":440,"High":1210,"Data":"E5CD7E","RfKey":"None"}}"#,
        )
        .unwrap();
        assert_eq!((p.source, p.key.as_str()), (Source::Tasmota, "E5CD7E"));
        assert_eq!(key("tele/rfbridge/RESULT", r#"{"POWER":"ON"}"#), None);
        assert_eq!(key("tele/rfbridge/RESULT", r#"{"RfRaw":{"Data":"AA B1"}}"#), None);
        assert_eq!(key("tele/rfbridge/STATE", r#"{"RfReceived":{"Data":"E5CD7E"}}"#), None);
        assert!(decode(P, "tele/rfbridge/RESULT", b"not json").is_err());
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
        let pair = decode(P, "dingdong/gw/pair/request", b"{").unwrap();
        assert!(matches!(pair, Some(Inbound::PairRequest(Err(Refusal { request_id: None, .. })))));
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert!(matches!(decode(P, "dingdong/gw/pair/request", &big).unwrap(), Some(Inbound::PairRequest(Err(_)))));
        let finish = decode(P, "dingdong/gw/pair/finish", br#"{"request_id":"r1","proofs":[]}"#).unwrap();
        assert!(matches!(finish, Some(Inbound::PairFinish(Err(Refusal { request_id: Some(_), .. })))));
        let phone = decode(P, "dingdong/gw/phone/12/unpair", &big).unwrap();
        assert!(
            matches!(phone, Some(Inbound::PhoneRequest { phone_id: 12, request: Err(_) })),
            "oversized is answered"
        );
        assert!(decode(P, "dingdong/gw/phone/x/unpair", b"{}").is_err());
        assert!(decode(P, "dingdong/gw/phone/0/unpair", b"{}").is_err());
        assert!(decode(P, "dingdong/gw/phone/7", b"{}").is_err());
        assert_eq!(decode(P, "dingdong/gw/gateway/pair-button", b"").unwrap(), Some(Inbound::PairButton(Ok(()))));
        assert_eq!(decode(P, "dingdong/gw/pair/response/r1", b"{}").unwrap(), None);
        assert!(decode(P, "other/x", &big).is_err());
    }

    #[test]
    fn never_panics_on_junk() {
        for junk in [&b"\xff\xfe"[..], b"null", b"[]", b"{\"at\":null}", b"  ", b"\0", b"{\"model\":[1],\"id\":{}}"] {
            for topic in ["dingdong/gw/button/x/press", "rtl_433/a/events", "tele/a/RESULT", "zigbee2mqtt/a"] {
                let _ = decode(P, topic, junk);
            }
        }
    }
}
