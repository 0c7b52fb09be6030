//! The wire format of pairing: parsing and bounding `P/pair/request` and the signed requests
//! on `P/phone/<phone_id>/<action>`, and the error replies. Bytes in, typed requests or a
//! [`Refusal`] out; no I/O.
//!
//! Every field is checked by hand rather than by serde's messages, so that no refusal, reply
//! or log line ever echoes a value (a code, a token, a signature).

use crate::domain::{normalize_token, Environment};
use serde_json::{Map, Value};

/// Larger payloads are refused unread.
pub const MAX_PAYLOAD: usize = 4096;
/// `request_id`: 1 to 64 of `A-Z a-z 0-9 - _`, so it can never add or widen a topic level.
pub const REQUEST_ID_MAX: usize = 64;
/// `nonce`: 16 to 64 of the same alphabet.
pub const NONCE_MIN: usize = 16;
pub const NONCE_MAX: usize = 64;
/// `name` of a phone: up to 64 printable characters.
pub const NAME_MAX: usize = 64;

/// The error codes of a reply's `error` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A field is missing, of the wrong type or out of bounds; `detail` names it.
    BadRequest,
    /// Wrong, expired, used or locked code: they read the same.
    InvalidCode,
    /// Too many requests; try again later.
    RateLimited,
    /// Unknown phone, no secret, or a wrong signature.
    Unauthorized,
    /// The timestamp is more than 5 minutes from the gateway's clock.
    Stale,
    /// The nonce was used before.
    Replayed,
    /// Signed correctly but not allowed (e.g. sharing a doorbell the user does not own).
    Forbidden,
    /// The token belongs to another registration.
    Conflict,
    /// The gateway could not do it (database error); nothing changed.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidCode => "invalid_code",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Stale => "stale",
            ErrorCode::Replayed => "replayed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A refused request: what the reply says and the log records. `detail` is ours, never a
/// value from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The request's id, when it could be read: the reply goes to it.
    pub request_id: Option<String>,
    pub error: ErrorCode,
    pub detail: String,
}

impl Refusal {
    pub fn new(request_id: Option<&str>, error: ErrorCode, detail: impl Into<String>) -> Refusal {
        Refusal { request_id: request_id.map(str::to_string), error, detail: detail.into() }
    }

    /// The reply body: `{"ok":false,"error":...,"detail":...,"request_id":...}`.
    pub fn reply(&self) -> String {
        let mut v = serde_json::json!({"ok": false, "error": self.error.as_str(), "detail": self.detail});
        if let Some(r) = &self.request_id {
            v["request_id"] = r.clone().into();
        }
        v.to_string()
    }
}

/// Whether `s` is a safe request id (see [`REQUEST_ID_MAX`]).
pub fn valid_request_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= REQUEST_ID_MAX && safe_chars(s)
}

fn safe_chars(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `P/pair/request`, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct PairRequest {
    pub request_id: String,
    /// Exactly [`super::CODE_DIGITS`] digits; never logged.
    pub code: String,
    /// Normalised (lower-case hex).
    pub token: String,
    pub environment: Environment,
    /// The app's bundle id; the service compares it with `apns.topic`.
    pub topic: String,
    pub name: Option<String>,
}

impl std::fmt::Debug for PairRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairRequest")
            .field("request_id", &self.request_id)
            .field("token", &crate::domain::short_token(&self.token))
            .field("environment", &self.environment)
            .field("topic", &self.topic)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a signed phone request asks for.
#[derive(Clone, PartialEq, Eq)]
pub enum Action {
    /// `token`: args `token`, `environment`.
    ReplaceToken { token: String, environment: Environment },
    /// `unpair`: no args.
    Unpair,
    /// `share-code`: args `user`, `doorbell`, `minutes`.
    ShareCode { user: String, doorbell: String, minutes: u32 },
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::ReplaceToken { token, environment } => {
                write!(f, "ReplaceToken({}…, {environment})", crate::domain::short_token(token))
            }
            Action::Unpair => f.write_str("Unpair"),
            Action::ShareCode { user, doorbell, minutes } => write!(f, "ShareCode({user}, {doorbell}, {minutes})"),
        }
    }
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::ReplaceToken { .. } => "token",
            Action::Unpair => "unpair",
            Action::ShareCode { .. } => "share-code",
        }
    }

    /// The arguments in signing order.
    pub fn signed_args(&self) -> Vec<String> {
        match self {
            Action::ReplaceToken { token, environment } => vec![token.clone(), environment.as_str().into()],
            Action::Unpair => vec![],
            Action::ShareCode { user, doorbell, minutes } => vec![user.clone(), doorbell.clone(), minutes.to_string()],
        }
    }
}

/// A signed request on `P/phone/<phone_id>/<action>`, checked for shape (not yet verified).
#[derive(Clone, PartialEq, Eq)]
pub struct SignedRequest {
    pub phone_id: i64,
    pub request_id: String,
    pub ts: i64,
    pub nonce: String,
    pub sig: Vec<u8>,
    pub action: Action,
}

impl std::fmt::Debug for SignedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedRequest")
            .field("phone_id", &self.phone_id)
            .field("request_id", &self.request_id)
            .field("action", &self.action.name())
            .field("ts", &self.ts)
            .finish_non_exhaustive()
    }
}

impl SignedRequest {
    /// The string the phone signed (see [`super::signing_string`]).
    pub fn signing_string(&self) -> String {
        let args = self.action.signed_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        super::signing_string(self.phone_id, self.action.name(), &self.request_id, self.ts, &self.nonce, &args)
    }
}

/// Reads a payload as one JSON object with only `allowed` keys; the request id, if it can be
/// read, rides along in every refusal.
fn object(payload: &[u8], allowed: &[&str]) -> Result<(Map<String, Value>, String), Refusal> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Refusal::new(None, ErrorCode::BadRequest, format!("payload is larger than {MAX_PAYLOAD} bytes")));
    }
    let v: Value = serde_json::from_slice(payload)
        .map_err(|_| Refusal::new(None, ErrorCode::BadRequest, "payload is not JSON"))?;
    let Value::Object(m) = v else {
        return Err(Refusal::new(None, ErrorCode::BadRequest, "payload is not a JSON object"));
    };
    let rid = match m.get("request_id") {
        Some(Value::String(s)) if valid_request_id(s) => s.clone(),
        Some(_) => {
            return Err(Refusal::new(None, ErrorCode::BadRequest, "request_id: must be 1 to 64 of A-Z a-z 0-9 - _"))
        }
        None => return Err(Refusal::new(None, ErrorCode::BadRequest, "request_id: missing")),
    };
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        // Key names are bounded by the payload size, but keep the detail short and printable.
        let k: String = k.chars().filter(|c| !c.is_control()).take(32).collect();
        return Err(Refusal::new(Some(&rid), ErrorCode::BadRequest, format!("unknown field '{k}'")));
    }
    Ok((m, rid))
}

fn string<'a>(m: &'a Map<String, Value>, rid: &str, key: &str) -> Result<&'a str, Refusal> {
    match m.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Refusal::new(Some(rid), ErrorCode::BadRequest, format!("{key}: must be a string"))),
        None => Err(Refusal::new(Some(rid), ErrorCode::BadRequest, format!("{key}: missing"))),
    }
}

fn token_field(m: &Map<String, Value>, rid: &str) -> Result<String, Refusal> {
    normalize_token(string(m, rid, "token")?)
        .map_err(|_| Refusal::new(Some(rid), ErrorCode::BadRequest, "token: must be 32 to 100 bytes of hex"))
}

fn environment_field(m: &Map<String, Value>, rid: &str) -> Result<Environment, Refusal> {
    match string(m, rid, "environment")? {
        "production" => Ok(Environment::Production),
        "sandbox" => Ok(Environment::Sandbox),
        _ => Err(Refusal::new(Some(rid), ErrorCode::BadRequest, "environment: must be \"production\" or \"sandbox\"")),
    }
}

/// Parses `P/pair/request`.
pub fn parse_pair_request(payload: &[u8]) -> Result<PairRequest, Refusal> {
    let (m, rid) = object(payload, &["request_id", "code", "token", "environment", "topic", "name"])?;
    let code = string(&m, &rid, "code")?;
    if !super::Code::well_formed(code) {
        return Err(Refusal::new(Some(&rid), ErrorCode::BadRequest, "code: must be 6 digits"));
    }
    let token = token_field(&m, &rid)?;
    let environment = environment_field(&m, &rid)?;
    let topic = string(&m, &rid, "topic")?;
    if topic.is_empty() || topic.len() > 255 || !topic.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal::new(Some(&rid), ErrorCode::BadRequest, "topic: must be the app's bundle id"));
    }
    let name = match m.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if s.chars().count() <= NAME_MAX && !s.chars().any(char::is_control) => Some(s.clone()),
        Some(_) => {
            return Err(Refusal::new(Some(&rid), ErrorCode::BadRequest, "name: must be up to 64 printable characters"))
        }
    };
    Ok(PairRequest { request_id: rid, code: code.to_string(), token, environment, topic: topic.to_string(), name })
}

/// Parses `phone_id` of a topic: a positive decimal integer without sign or leading zeros.
pub fn parse_phone_id(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// Parses a signed request on `P/phone/<phone_id>/<action>`.
pub fn parse_signed(phone_id: i64, action: &str, payload: &[u8]) -> Result<SignedRequest, Refusal> {
    const COMMON: [&str; 4] = ["request_id", "ts", "nonce", "sig"];
    let extra: &[&str] = match action {
        "token" => &["token", "environment"],
        "unpair" => &[],
        "share-code" => &["user", "doorbell", "minutes"],
        _ => return Err(Refusal::new(None, ErrorCode::BadRequest, "unknown action: use token, unpair or share-code")),
    };
    let allowed: Vec<&str> = COMMON.iter().chain(extra).copied().collect();
    let (m, rid) = object(payload, &allowed)?;
    let bad = |d: &str| Refusal::new(Some(&rid), ErrorCode::BadRequest, d);
    let ts = m.get("ts").and_then(Value::as_i64).ok_or_else(|| bad("ts: must be an integer (UNIX ms)"))?;
    if !(0..=9_999_999_999_999).contains(&ts) {
        return Err(bad("ts: must be UNIX milliseconds"));
    }
    let nonce = string(&m, &rid, "nonce")?;
    if !(NONCE_MIN..=NONCE_MAX).contains(&nonce.len()) || !safe_chars(nonce) {
        return Err(bad("nonce: must be 16 to 64 of A-Z a-z 0-9 - _"));
    }
    let sig = string(&m, &rid, "sig")?;
    let sig = match hex::decode(sig) {
        Ok(s) if s.len() == 32 && sig.bytes().all(|b| !b.is_ascii_uppercase()) => s,
        _ => return Err(bad("sig: must be 64 lower-case hex digits")),
    };
    let action = match action {
        "token" => Action::ReplaceToken { token: token_field(&m, &rid)?, environment: environment_field(&m, &rid)? },
        "unpair" => Action::Unpair,
        _ => {
            let user = string(&m, &rid, "user")?;
            crate::domain::check_id("user", user)
                .map_err(|_| bad("user: must be 1 to 64 of letters, digits, '-', '_', '.'"))?;
            let doorbell = string(&m, &rid, "doorbell")?;
            crate::domain::check_id("doorbell", doorbell)
                .map_err(|_| bad("doorbell: must be 1 to 64 of letters, digits, '-', '_', '.'"))?;
            let minutes = m
                .get("minutes")
                .and_then(Value::as_u64)
                .filter(|n| (1..=super::MAX_MINUTES as u64).contains(n))
                .ok_or_else(|| bad("minutes: must be an integer from 1 to 60"))?;
            Action::ShareCode { user: user.into(), doorbell: doorbell.into(), minutes: minutes as u32 }
        }
    };
    Ok(SignedRequest { phone_id, request_id: rid, ts, nonce: nonce.to_string(), sig, action })
}

/// Parses `P/gateway/pair-button`: empty, or `{"at": <unix ms>}`.
pub fn parse_pair_button(payload: &[u8]) -> Result<(), String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!("payload is larger than {MAX_PAYLOAD} bytes"));
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) if m.keys().all(|k| k == "at") && m.get("at").is_none_or(Value::is_i64) => Ok(()),
        _ => Err("payload must be empty or {\"at\": <unix ms>}".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> String {
        "ab".repeat(32)
    }

    fn pair(v: serde_json::Value) -> Result<PairRequest, Refusal> {
        parse_pair_request(v.to_string().as_bytes())
    }

    fn good() -> serde_json::Value {
        serde_json::json!({"request_id": "r-1", "code": "012345", "token": tok(), "environment": "sandbox",
            "topic": "com.example.doorbell", "name": "Ann's iPhone"})
    }

    #[test]
    fn a_good_pair_request() {
        let r = pair(good()).unwrap();
        assert_eq!((r.request_id.as_str(), r.code.as_str()), ("r-1", "012345"));
        assert_eq!(r.environment, Environment::Sandbox);
        assert_eq!(r.name.as_deref(), Some("Ann's iPhone"));
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("012345") && !dbg.contains(&tok()), "{dbg}");
        let mut spaced = good();
        spaced["token"] = format!("<{} {}>", &tok()[..32].to_uppercase(), &tok()[32..]).into();
        spaced.as_object_mut().unwrap().remove("name");
        let r = pair(spaced).unwrap();
        assert_eq!((r.token, r.name), (tok(), None));
    }

    #[test]
    fn every_pair_field_is_bounded() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("code", "12345".into(), "code"),
            ("code", "1234567".into(), "code"),
            ("code", 123456.into(), "code"),
            ("token", "abcd".into(), "token"),
            ("token", "zz".repeat(32).into(), "token"),
            ("token", "ab".repeat(101).into(), "token"),
            ("environment", "development".into(), "environment"),
            ("environment", serde_json::Value::Null, "environment"),
            ("topic", "".into(), "topic"),
            ("topic", "com.example doorbell".into(), "topic"),
            ("name", "x".repeat(65).into(), "name"),
            ("name", "a\nb".into(), "name"),
            ("extra", 1.into(), "unknown field"),
        ];
        for (key, value, says) in cases {
            let mut v = good();
            v[key] = value;
            let e = pair(v).unwrap_err();
            assert_eq!(e.request_id.as_deref(), Some("r-1"), "{key}");
            assert_eq!(e.error, ErrorCode::BadRequest);
            assert!(e.detail.contains(says), "{key}: {}", e.detail);
            assert!(!e.reply().contains(&tok()));
        }
        for missing in ["code", "token", "environment", "topic"] {
            let mut v = good();
            v.as_object_mut().unwrap().remove(missing);
            assert!(pair(v).unwrap_err().detail.contains("missing"), "{missing}");
        }
    }

    #[test]
    fn request_ids_cannot_reach_other_topics() {
        for bad in ["", "a/b", "+", "#", "a b", "ä", &"x".repeat(65), "r\u{0}"] {
            let mut v = good();
            v["request_id"] = bad.into();
            assert_eq!(pair(v).unwrap_err().request_id, None, "{bad:?}");
        }
        let mut v = good();
        v["request_id"] = 5.into();
        assert_eq!(pair(v).unwrap_err().request_id, None);
        assert!(valid_request_id(&"A-z_9".repeat(12)));
    }

    #[test]
    fn junk_is_refused_without_a_reply_id() {
        for junk in [&b""[..], b"{", b"[]", b"null", b"\xff", b"\"x\"", b"{\"request_id\":\"a\",\"request_id\":1}"] {
            let e = parse_pair_request(junk).unwrap_err();
            assert_eq!(e.error, ErrorCode::BadRequest);
        }
        let big = format!(r#"{{"request_id":"r","name":"{}"}}"#, "x".repeat(MAX_PAYLOAD));
        assert!(parse_pair_request(big.as_bytes()).unwrap_err().detail.contains("larger"));
    }

    fn signed(action: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut v = serde_json::json!({"request_id": "q1", "ts": 1_700_000_000_000i64, "nonce": "0123456789abcdef",
            "sig": "00".repeat(32)});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        let _ = action;
        v
    }

    #[test]
    fn signed_requests_parse_and_sign_their_arguments_in_order() {
        let v = signed("token", serde_json::json!({"token": tok(), "environment": "production"}));
        let r = parse_signed(7, "token", v.to_string().as_bytes()).unwrap();
        assert_eq!(
            r.signing_string(),
            format!("dingdong-v1\n7\ntoken\nq1\n1700000000000\n0123456789abcdef\n{}\nproduction", tok())
        );
        let v = signed("share-code", serde_json::json!({"user": "guest", "doorbell": "front", "minutes": 10}));
        let r = parse_signed(7, "share-code", v.to_string().as_bytes()).unwrap();
        assert_eq!(
            r.signing_string(),
            "dingdong-v1\n7\nshare-code\nq1\n1700000000000\n0123456789abcdef\nguest\nfront\n10"
        );
        let r = parse_signed(7, "unpair", signed("unpair", serde_json::json!({})).to_string().as_bytes()).unwrap();
        assert_eq!(r.action, Action::Unpair);
        assert!(!format!("{r:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn signed_fields_are_bounded() {
        let base = || signed("unpair", serde_json::json!({}));
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("ts", "now".into(), "ts"),
            ("ts", (-1).into(), "ts"),
            ("ts", 1.5.into(), "ts"),
            ("nonce", "short".into(), "nonce"),
            ("nonce", "x/".repeat(10).into(), "nonce"),
            ("sig", "00".repeat(31).into(), "sig"),
            ("sig", "AB".repeat(32).into(), "sig"),
            ("sig", 0.into(), "sig"),
            ("token", tok().into(), "unknown field"),
        ];
        for (key, value, says) in cases {
            let mut v = base();
            v[key] = value;
            let e = parse_signed(3, "unpair", v.to_string().as_bytes()).unwrap_err();
            assert!(e.detail.contains(says), "{key}: {}", e.detail);
            assert_eq!(e.request_id.as_deref(), Some("q1"));
        }
        let share = |u: serde_json::Value, d: serde_json::Value, m: serde_json::Value| {
            let v = signed("share-code", serde_json::json!({"user": u, "doorbell": d, "minutes": m}));
            parse_signed(3, "share-code", v.to_string().as_bytes())
        };
        assert!(share("guest".into(), "front".into(), 5.into()).is_ok());
        assert!(share("a/b".into(), "front".into(), 5.into()).is_err());
        assert!(share("guest".into(), "".into(), 5.into()).is_err());
        assert!(share("guest".into(), "front".into(), 0.into()).is_err());
        assert!(share("guest".into(), "front".into(), 61.into()).is_err());
        assert!(parse_signed(3, "reboot", b"{}").unwrap_err().detail.contains("unknown action"));
    }

    #[test]
    fn phone_ids_and_buttons() {
        assert_eq!(parse_phone_id("42"), Some(42));
        for bad in ["", "0", "042", "-1", "+1", "1e3", "99999999999999999999", "4 2"] {
            assert_eq!(parse_phone_id(bad), None, "{bad}");
        }
        assert!(parse_pair_button(b"").is_ok());
        assert!(parse_pair_button(b"{\"at\": 1700000000000}").is_ok());
        assert!(parse_pair_button(b"{}").is_ok());
        assert!(parse_pair_button(b"{\"user\":\"x\"}").is_err());
        assert!(parse_pair_button(b"{").is_err());
        assert!(parse_pair_button(&[b' '; 5000]).is_err());
    }
}
