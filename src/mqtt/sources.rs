//! Pure decoding of what arrives on the broker: dingdong's native button topic (and, as the
//! radio bridges are added, their own JSON), and the pairing topics (parsed by
//! `pairing::wire`). Bytes in, a typed event or a reason out; no I/O.

use crate::pairing::wire::{self, PairRequest, Refusal, SignedRequest};
use serde::Deserialize;

/// Larger payloads are refused unread: nothing legitimate on these topics comes close.
pub const MAX_PAYLOAD: usize = 4096;

/// Which kind of bridge a press came from; bindings are keyed by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Native,
    Rtl433,
    Tasmota,
    Zigbee2mqtt,
}

impl Source {
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
    /// The button's identity within its source: the `<button>` of the native topic.
    pub key: String,
    /// When the bridge saw it (UNIX ms), if it said; it makes the ring id stable across
    /// MQTT redeliveries.
    pub at: Option<i64>,
}

/// What a message on a subscribed topic means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Press(ButtonPress),
    /// `P/pair/request`: the request, or its refusal (answered when it names a request id).
    PairRequest(Result<PairRequest, Refusal>),
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

/// Decodes a message; `Ok(None)` for topics that are not ours to decode.
pub fn decode(prefix: &str, topic: &str, payload: &[u8]) -> Result<Option<Inbound>, DecodeError> {
    let Some(rest) = topic.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
        return if payload.len() > MAX_PAYLOAD { Err(DecodeError::TooLarge(payload.len())) } else { Ok(None) };
    };
    // Pairing topics bound their own payloads, so that a refusal can still be answered.
    if let Some(inbound) = decode_pairing(rest, payload)? {
        return Ok(Some(inbound));
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    if let Some(button) = rest.strip_prefix("button/").and_then(|r| r.strip_suffix("/press")) {
        return decode_native(button, payload).map(|p| Some(Inbound::Press(p)));
    }
    Ok(None)
}

fn decode_pairing(rest: &str, payload: &[u8]) -> Result<Option<Inbound>, DecodeError> {
    match rest {
        "pair/request" => return Ok(Some(Inbound::PairRequest(wire::parse_pair_request(payload)))),
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
    crate::util::check_id("button", button).map_err(DecodeError::Topic)?;
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

    #[test]
    fn pairing_topics() {
        let pair = decode(P, "dingdong/gw/pair/request", b"{").unwrap();
        assert!(matches!(pair, Some(Inbound::PairRequest(Err(Refusal { request_id: None, .. })))));
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert!(matches!(decode(P, "dingdong/gw/pair/request", &big).unwrap(), Some(Inbound::PairRequest(Err(_)))));
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
        for junk in [&b"\xff\xfe"[..], b"null", b"[]", b"{\"at\":null}", b"  ", b"\0"] {
            let _ = decode(P, "dingdong/gw/button/x/press", junk);
        }
    }
}
