//! The four messages of pairing v2 as bytes: parsing with hard bounds, and encoding. The
//! gateway parses `request` and `finish` into a value or a [`Refusal`]; the phone parses the
//! gateway's replies (`offer`, `done` or a refusal) into a value or a [`PakeError`]. Fields
//! are checked by hand, so that no refusal ever echoes a value; binary fields are base64url
//! without padding, in canonical form, their length checked before they are decoded.

use super::json::{bytes, object, only, text};
use super::PakeError;
use crate::codec::pairing::wire::{valid_request_id, ErrorCode, Refusal, DETAIL_MAX};
use crate::domain::check_text;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use serde_json::{Map, Value};

/// The largest `P/pair/request` (its fields need under 150 bytes).
pub const MAX_REQUEST: usize = 512;
/// The largest offer reply.
pub const MAX_OFFER: usize = 1024;
/// The largest `P/pair/finish`: [`MAX_OFFERS`] proofs with the largest sealed registration.
pub const MAX_FINISH: usize = 40 * 1024;
/// The largest reply the phone reads (a done reply with the largest sealed grant).
pub const MAX_REPLY: usize = 24 * 1024;
/// Offers in one exchange, hence also the most windows the gateway may keep open at once.
pub const MAX_OFFERS: usize = 4;
/// A `ref`: 1 to 16 of `A-Z a-z 0-9 - _`.
pub const REF_MAX: usize = 16;
/// A SPAKE2 message: a side byte (`A` = 0x41 phone, `B` = 0x42 gateway) and a compressed
/// Ed25519 point; 44 base64url characters.
pub const PAKE_BYTES: usize = 33;
/// A confirmation tag (HMAC-SHA256); 43 base64url characters.
pub const TAG_BYTES: usize = 32;
/// What AES-GCM adds to a sealed message.
pub const SEAL_OVERHEAD: usize = 16;
/// The largest plaintext each side seals: a registration (6 KiB), a grant (16 KiB).
pub const MAX_REGISTRATION: usize = 6 * 1024;
pub const MAX_GRANT: usize = 16 * 1024;

/// `P/pair/request`: the phone's SPAKE2 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub request_id: String,
    pub pake: [u8; PAKE_BYTES],
}

/// One pairing window's offer: an opaque `ref` and the gateway's SPAKE2 message for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferItem {
    pub reference: String,
    pub pake: [u8; PAKE_BYTES],
}

/// The gateway's first reply: one offer per open window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub request_id: String,
    pub offers: Vec<OfferItem>,
}

/// The phone's answer to one offer: its confirmation tag and its sealed registration.
#[derive(Clone, PartialEq, Eq)]
pub struct Proof {
    pub reference: String,
    pub confirm: [u8; TAG_BYTES],
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proof({}, sealed {} bytes)", self.reference, self.sealed.len())
    }
}

/// `P/pair/finish`: one proof per offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub request_id: String,
    pub proofs: Vec<Proof>,
}

/// The gateway's last reply: which offer matched, its confirmation tag, the sealed grant.
#[derive(Clone, PartialEq, Eq)]
pub struct Done {
    pub request_id: String,
    pub reference: String,
    pub confirm: [u8; TAG_BYTES],
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Done({}, {}, sealed {} bytes)", self.request_id, self.reference, self.sealed.len())
    }
}

/// What the phone can receive on `P/pair/response/<request_id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Offer(Offer),
    Done(Done),
    /// `{"ok": false, ...}`: `error` is one of the documented codes, `detail` checked printable.
    Refused {
        request_id: String,
        error: ErrorCode,
        detail: String,
    },
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `s` is a valid `ref`.
pub fn valid_ref(s: &str) -> bool {
    !s.is_empty() && s.len() <= REF_MAX && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn fixed<const N: usize>(m: &Map<String, Value>, what: &str, key: &str) -> Result<[u8; N], String> {
    let v = bytes(m, what, key, N, N)?;
    Ok(v.try_into().expect("length checked"))
}

/// A SPAKE2 message of side `side`.
fn pake(m: &Map<String, Value>, what: &str, side: u8) -> Result<[u8; PAKE_BYTES], String> {
    let v = fixed::<PAKE_BYTES>(m, what, "pake")?;
    if v[0] != side {
        return Err(format!("{what}pake: must be a SPAKE2 message of side {}", side as char));
    }
    Ok(v)
}

fn reference<'a>(m: &'a Map<String, Value>, what: &str, seen: &mut Vec<&'a str>) -> Result<String, String> {
    let r = text(m, what, "ref")?;
    if !valid_ref(r) {
        return Err(format!("{what}ref: must be 1 to {REF_MAX} of A-Z a-z 0-9 - _"));
    }
    if seen.contains(&r) {
        return Err(format!("{what}ref: appears twice"));
    }
    seen.push(r);
    Ok(r.to_string())
}

/// An array of 1 to [`MAX_OFFERS`] objects with exactly the keys `keys`.
fn items<'a>(m: &'a Map<String, Value>, key: &str, keys: &[&str]) -> Result<Vec<&'a Map<String, Value>>, String> {
    let Some(Value::Array(a)) = m.get(key) else {
        return Err(format!("{key}: must be an array of 1 to {MAX_OFFERS} objects"));
    };
    if a.is_empty() || a.len() > MAX_OFFERS {
        return Err(format!("{key}: must be an array of 1 to {MAX_OFFERS} objects"));
    }
    a.iter()
        .map(|v| match v {
            Value::Object(o) => only(o, &format!("{key}: "), keys).map(|()| o),
            _ => Err(format!("{key}: must be an array of 1 to {MAX_OFFERS} objects")),
        })
        .collect()
}

/// The request id of a gateway-side message, or a refusal that cannot be answered.
fn request_id(m: &Map<String, Value>) -> Result<String, Refusal> {
    match m.get("request_id") {
        Some(Value::String(s)) if valid_request_id(s) => Ok(s.clone()),
        Some(_) => Err(Refusal::new(None, ErrorCode::BadRequest, "request_id: must be 1 to 64 of A-Z a-z 0-9 - _")),
        None => Err(Refusal::new(None, ErrorCode::BadRequest, "request_id: missing")),
    }
}

/// Parses `P/pair/request`: `{"request_id", "v": 2, "pake"}`.
pub fn parse_request(payload: &[u8]) -> Result<Request, Refusal> {
    let m = object(payload, MAX_REQUEST).map_err(|d| Refusal::new(None, ErrorCode::BadRequest, d))?;
    let rid = request_id(&m)?;
    let bad = |d: String| Refusal::new(Some(&rid), ErrorCode::BadRequest, d);
    // The version first: a pairing v1 app's request reads "update the app", not a field list.
    if m.get("v").and_then(Value::as_u64) != Some(2) {
        return Err(bad("v: must be 2 (this gateway speaks pairing version 2; update the app)".into()));
    }
    only(&m, "", &["request_id", "v", "pake"]).map_err(bad)?;
    let pake = pake(&m, "", b'A').map_err(bad)?;
    Ok(Request { request_id: rid, pake })
}

/// Parses `P/pair/finish`: `{"request_id", "proofs": [{"ref", "confirm", "sealed"}, ...]}`.
pub fn parse_finish(payload: &[u8]) -> Result<Finish, Refusal> {
    let m = object(payload, MAX_FINISH).map_err(|d| Refusal::new(None, ErrorCode::BadRequest, d))?;
    let rid = request_id(&m)?;
    let bad = |d: String| Refusal::new(Some(&rid), ErrorCode::BadRequest, d);
    only(&m, "", &["request_id", "proofs"]).map_err(bad)?;
    let mut seen = Vec::new();
    let mut proofs = Vec::new();
    for o in items(&m, "proofs", &["ref", "confirm", "sealed"]).map_err(bad)? {
        let reference = reference(o, "proofs: ", &mut seen).map_err(bad)?;
        let confirm = fixed::<TAG_BYTES>(o, "proofs: ", "confirm").map_err(bad)?;
        let sealed =
            bytes(o, "proofs: ", "sealed", SEAL_OVERHEAD + 1, SEAL_OVERHEAD + MAX_REGISTRATION).map_err(bad)?;
        proofs.push(Proof { reference, confirm, sealed });
    }
    Ok(Finish { request_id: rid, proofs })
}

/// Parses what the phone receives on `P/pair/response/<request_id>`.
pub fn parse_reply(payload: &[u8]) -> Result<Reply, PakeError> {
    let bad = PakeError::BadMessage;
    let m = object(payload, MAX_REPLY).map_err(bad)?;
    let request_id = match m.get("request_id") {
        Some(Value::String(s)) if valid_request_id(s) => s.clone(),
        _ => return Err(bad("request_id: missing or not 1 to 64 of A-Z a-z 0-9 - _".into())),
    };
    match (m.get("ok"), m.get("step").and_then(Value::as_str)) {
        (Some(Value::Bool(false)), _) => {
            only(&m, "", &["request_id", "ok", "error", "detail"]).map_err(bad)?;
            let error = text(&m, "", "error").map_err(bad)?;
            let error = ErrorCode::parse(error).ok_or_else(|| bad("error: not a documented error code".into()))?;
            let detail = match m.get("detail") {
                None => "",
                Some(Value::String(s)) if s.chars().count() <= DETAIL_MAX && check_text(s).is_ok() => s,
                Some(_) => return Err(bad(format!("detail: must be up to {DETAIL_MAX} printable characters"))),
            };
            Ok(Reply::Refused { request_id, error, detail: detail.to_string() })
        }
        (Some(Value::Bool(true)), Some("offer")) => {
            if payload.len() > MAX_OFFER {
                return Err(bad(format!("payload is larger than {MAX_OFFER} bytes")));
            }
            only(&m, "", &["request_id", "ok", "step", "offers"]).map_err(bad)?;
            let mut seen = Vec::new();
            let mut offers = Vec::new();
            for o in items(&m, "offers", &["ref", "pake"]).map_err(bad)? {
                let reference = reference(o, "offers: ", &mut seen).map_err(bad)?;
                offers.push(OfferItem { reference, pake: pake(o, "offers: ", b'B').map_err(bad)? });
            }
            Ok(Reply::Offer(Offer { request_id, offers }))
        }
        (Some(Value::Bool(true)), Some("done")) => {
            only(&m, "", &["request_id", "ok", "step", "ref", "confirm", "sealed"]).map_err(bad)?;
            let reference = reference(&m, "", &mut Vec::new()).map_err(bad)?;
            let confirm = fixed::<TAG_BYTES>(&m, "", "confirm").map_err(bad)?;
            let sealed = bytes(&m, "", "sealed", SEAL_OVERHEAD + 1, SEAL_OVERHEAD + MAX_GRANT).map_err(bad)?;
            Ok(Reply::Done(Done { request_id, reference, confirm, sealed }))
        }
        (Some(Value::Bool(true)), _) => Err(bad("step: must be \"offer\" or \"done\"".into())),
        _ => Err(bad("ok: must be true or false".into())),
    }
}

// Encoders. Structs rather than `json!` so that the fields come out in the documented order
// whatever serde_json's features (the worked example compares exact bytes).

#[derive(Serialize)]
struct RequestOut<'a> {
    request_id: &'a str,
    v: u8,
    pake: String,
}

#[derive(Serialize)]
struct OfferItemOut<'a> {
    #[serde(rename = "ref")]
    reference: &'a str,
    pake: String,
}

#[derive(Serialize)]
struct OfferOut<'a> {
    request_id: &'a str,
    ok: bool,
    step: &'static str,
    offers: Vec<OfferItemOut<'a>>,
}

#[derive(Serialize)]
struct ProofOut<'a> {
    #[serde(rename = "ref")]
    reference: &'a str,
    confirm: String,
    sealed: String,
}

#[derive(Serialize)]
struct FinishOut<'a> {
    request_id: &'a str,
    proofs: Vec<ProofOut<'a>>,
}

#[derive(Serialize)]
struct DoneOut<'a> {
    request_id: &'a str,
    ok: bool,
    step: &'static str,
    #[serde(rename = "ref")]
    reference: &'a str,
    confirm: String,
    sealed: String,
}

fn to_json(v: &impl Serialize) -> String {
    serde_json::to_string(v).expect("plain structs serialize")
}

pub fn encode_request(r: &Request) -> String {
    to_json(&RequestOut { request_id: &r.request_id, v: 2, pake: b64(&r.pake) })
}

pub fn encode_offer(o: &Offer) -> String {
    let offers = o.offers.iter().map(|i| OfferItemOut { reference: &i.reference, pake: b64(&i.pake) }).collect();
    to_json(&OfferOut { request_id: &o.request_id, ok: true, step: "offer", offers })
}

pub fn encode_finish(f: &Finish) -> String {
    let proofs = f
        .proofs
        .iter()
        .map(|p| ProofOut { reference: &p.reference, confirm: b64(&p.confirm), sealed: b64(&p.sealed) })
        .collect();
    to_json(&FinishOut { request_id: &f.request_id, proofs })
}

pub fn encode_done(d: &Done) -> String {
    to_json(&DoneOut {
        request_id: &d.request_id,
        ok: true,
        step: "done",
        reference: &d.reference,
        confirm: b64(&d.confirm),
        sealed: b64(&d.sealed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn a_msg() -> String {
        let mut m = [7u8; PAKE_BYTES];
        m[0] = b'A';
        b64(&m)
    }

    fn good_request() -> Value {
        json!({"request_id": "r-1", "v": 2, "pake": a_msg()})
    }

    fn good_finish() -> Value {
        json!({"request_id": "r-1", "proofs": [
            {"ref": "w1", "confirm": b64(&[1; 32]), "sealed": b64(&[2; 40])},
            {"ref": "w2", "confirm": b64(&[3; 32]), "sealed": b64(&[4; 40])}]})
    }

    fn req(v: Value) -> Result<Request, Refusal> {
        parse_request(v.to_string().as_bytes())
    }

    fn fin(v: Value) -> Result<Finish, Refusal> {
        parse_finish(v.to_string().as_bytes())
    }

    #[test]
    fn good_messages_round_trip() {
        let r = req(good_request()).unwrap();
        assert_eq!(r.request_id, "r-1");
        assert_eq!(parse_request(encode_request(&r).as_bytes()).unwrap(), r);
        let f = fin(good_finish()).unwrap();
        assert_eq!(f.proofs.len(), 2);
        assert_eq!(parse_finish(encode_finish(&f).as_bytes()).unwrap(), f);
        assert!(!format!("{f:?}").contains(&b64(&[1; 32])), "tags stay out of Debug");
        let mut b = [9u8; PAKE_BYTES];
        b[0] = b'B';
        let o = Offer { request_id: "r-1".into(), offers: vec![OfferItem { reference: "w1".into(), pake: b }] };
        assert_eq!(parse_reply(encode_offer(&o).as_bytes()).unwrap(), Reply::Offer(o));
        let d = Done { request_id: "r-1".into(), reference: "w1".into(), confirm: [5; 32], sealed: vec![6; 30] };
        assert_eq!(parse_reply(encode_done(&d).as_bytes()).unwrap(), Reply::Done(d));
        let refusal = Refusal::new(Some("r-1"), ErrorCode::InvalidCode, "wrong or expired code").reply();
        assert_eq!(
            parse_reply(refusal.as_bytes()).unwrap(),
            Reply::Refused {
                request_id: "r-1".into(),
                error: ErrorCode::InvalidCode,
                detail: "wrong or expired code".into()
            }
        );
    }

    #[test]
    fn every_request_field_is_bounded() {
        let mut b_side = [7u8; PAKE_BYTES];
        b_side[0] = b'B';
        let cases: Vec<(&str, Value, &str)> = vec![
            ("v", 1.into(), "v"),
            ("v", "2".into(), "v"),
            ("v", 2.5.into(), "v"),
            ("pake", b64(&[b'A'; 32]).into(), "pake"),
            ("pake", b64(&[b'A'; 34]).into(), "pake"),
            ("pake", format!("{}=", a_msg()).into(), "pake"),
            ("pake", a_msg().replace('B', "+").replace('H', "/").into(), "pake"),
            ("pake", b64(&b_side).into(), "side A"),
            ("pake", 5.into(), "pake"),
            ("code", "12345678".into(), "unknown field 'code'"),
            ("x\u{202e}y", 1.into(), "unknown field"),
        ];
        for (key, value, says) in cases {
            let mut v = good_request();
            v[key] = value;
            let e = req(v).unwrap_err();
            assert_eq!((e.request_id.as_deref(), e.error), (Some("r-1"), ErrorCode::BadRequest), "{key}");
            assert!(e.detail.contains(says), "{key}: {}", e.detail);
            assert!(!e.detail.contains('\u{202e}'));
        }
        for missing in ["v", "pake"] {
            let mut v = good_request();
            v.as_object_mut().unwrap().remove(missing);
            assert!(req(v).unwrap_err().detail.contains(missing));
        }
        let big = format!(r#"{{"request_id":"r","pake":"{}"}}"#, "x".repeat(MAX_REQUEST));
        assert!(parse_request(big.as_bytes()).unwrap_err().detail.contains("larger"));
    }

    #[test]
    fn request_ids_cannot_reach_other_topics() {
        for bad in ["", "a/b", "+", "#", "a b", "ä", &"x".repeat(65), "r\u{0}"] {
            let mut v = good_request();
            v["request_id"] = bad.into();
            assert_eq!(req(v).unwrap_err().request_id, None, "{bad:?}");
            let mut v = good_finish();
            v["request_id"] = bad.into();
            assert_eq!(fin(v).unwrap_err().request_id, None, "{bad:?}");
        }
        for junk in [&b""[..], b"{", b"[]", b"null", b"\xff", b"{\"request_id\":\"a\",\"request_id\":1}"] {
            assert_eq!(parse_request(junk).unwrap_err().request_id, None);
            assert_eq!(parse_finish(junk).unwrap_err().request_id, None);
            assert!(parse_reply(junk).is_err());
        }
    }

    #[test]
    fn every_finish_field_is_bounded() {
        let proof = |r: Value, c: Value, s: Value| json!({"request_id": "r-1", "proofs": [{"ref": r, "confirm": c, "sealed": s}]});
        let (c, s) = (Value::from(b64(&[1; 32])), Value::from(b64(&[2; 40])));
        let cases: Vec<(Value, &str)> = vec![
            (proof("".into(), c.clone(), s.clone()), "ref"),
            (proof("a/b".into(), c.clone(), s.clone()), "ref"),
            (proof("x".repeat(17).into(), c.clone(), s.clone()), "ref"),
            (proof("w1".into(), b64(&[1; 31]).into(), s.clone()), "confirm"),
            (proof("w1".into(), b64(&[1; 33]).into(), s.clone()), "confirm"),
            (proof("w1".into(), c.clone(), b64(&[2; 16]).into()), "sealed"),
            (proof("w1".into(), c.clone(), b64(&vec![2; MAX_REGISTRATION + 17]).into()), "sealed"),
            (proof("w1".into(), c.clone(), "!!!!".into()), "sealed"),
            (json!({"request_id": "r-1", "proofs": []}), "proofs"),
            (json!({"request_id": "r-1", "proofs": {}}), "proofs"),
            (json!({"request_id": "r-1", "proofs": [1]}), "proofs"),
            (json!({"request_id": "r-1"}), "proofs"),
            (json!({"request_id": "r-1", "proofs": [{"ref": "a", "confirm": c, "sealed": s, "x": 1}]}), "unknown"),
            (
                json!({"request_id": "r-1", "proofs": [{"ref": "a", "confirm": c, "sealed": s},
                {"ref": "a", "confirm": c, "sealed": s}]}),
                "twice",
            ),
        ];
        for (v, says) in cases {
            let e = fin(v).unwrap_err();
            assert_eq!(e.request_id.as_deref(), Some("r-1"));
            assert!(e.detail.contains(says), "{says}: {}", e.detail);
        }
        let five: Vec<Value> = (0..5).map(|i| json!({"ref": format!("w{i}"), "confirm": c, "sealed": s})).collect();
        assert!(fin(json!({"request_id": "r-1", "proofs": five})).unwrap_err().detail.contains("1 to 4"));
        // The largest legal finish fits its bound.
        let big: Vec<Value> = (0..MAX_OFFERS)
            .map(|i| {
                json!({"ref": format!("{i}").repeat(REF_MAX), "confirm": c,
                    "sealed": b64(&vec![0; MAX_REGISTRATION + SEAL_OVERHEAD])})
            })
            .collect();
        let big = json!({"request_id": "x".repeat(64), "proofs": big}).to_string();
        assert!(big.len() <= MAX_FINISH, "{}", big.len());
        assert!(parse_finish(big.as_bytes()).is_ok());
    }

    #[test]
    fn replies_are_bounded_on_the_phone_too() {
        let ok_offer = |offers: Value| json!({"request_id": "r-1", "ok": true, "step": "offer", "offers": offers});
        let mut b = [1u8; PAKE_BYTES];
        b[0] = b'B';
        let bad: Vec<(Value, &str)> = vec![
            (ok_offer(json!([{"ref": "a", "pake": a_msg()}])), "side B"),
            (ok_offer(json!([{"ref": "a", "pake": b64(&b)}, {"ref": "a", "pake": b64(&b)}])), "twice"),
            (ok_offer(json!([])), "offers"),
            (json!({"request_id": "r-1", "ok": true, "step": "later"}), "step"),
            (json!({"request_id": "r-1", "ok": "yes"}), "ok"),
            (json!({"request_id": "r-1", "ok": false, "error": "teapot"}), "error"),
            (json!({"request_id": "r-1", "ok": false, "error": "internal", "detail": "a\u{1b}[2J"}), "detail"),
            (json!({"request_id": "r-1", "ok": false, "error": "internal", "detail": "x".repeat(257)}), "detail"),
            (json!({"request_id": "r/1", "ok": false, "error": "internal"}), "request_id"),
            (json!({"request_id": "r-1", "ok": true, "step": "done", "ref": "a", "confirm": b64(&[0; 32])}), "sealed"),
        ];
        for (v, says) in bad {
            match parse_reply(v.to_string().as_bytes()) {
                Err(PakeError::BadMessage(d)) => assert!(d.contains(says), "{says}: {d}"),
                other => panic!("{says}: {other:?}"),
            }
        }
    }
}
