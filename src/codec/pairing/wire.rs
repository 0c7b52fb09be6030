//! The wire format of signed phone requests on `P/phone/<phone_id>/<action>` (parsed by the
//! gateway, encoded by the reference phone), their replies, the refusals every pairing topic
//! shares, and the pair button's message. Bytes in, typed requests or a [`Refusal`] out; no
//! I/O. The pairing exchange's own messages are `pake::wire`'s.
//!
//! Every field is checked by hand rather than by serde's messages, so that no refusal, reply
//! or log line ever echoes a value (a code, a token, a signature).

use crate::domain::household::{parse_hhmm, Days, Level, Mode, Profile};
use crate::domain::{normalize_token, Environment};
use serde_json::{Map, Value};

/// Larger payloads are refused unread.
pub const MAX_PAYLOAD: usize = 4096;
/// `request_id`: 1 to 64 of `A-Z a-z 0-9 - _`, so it can never add or widen a topic level.
pub const REQUEST_ID_MAX: usize = 64;
/// `nonce`: 16 to 64 of the same alphabet.
pub const NONCE_MIN: usize = 16;
pub const NONCE_MAX: usize = 64;

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
    /// Every error code a reply may carry.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::InvalidCode,
        ErrorCode::RateLimited,
        ErrorCode::Unauthorized,
        ErrorCode::Stale,
        ErrorCode::Replayed,
        ErrorCode::Forbidden,
        ErrorCode::Conflict,
        ErrorCode::Internal,
    ];

    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

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

/// What a signed phone request asks for.
#[derive(Clone, PartialEq, Eq)]
pub enum Action {
    /// `token`: args `token`, `environment`.
    ReplaceToken { token: String, environment: Environment },
    /// `unpair`: no args.
    Unpair,
    /// `share-code`: args `user`, `doorbell`, `minutes`.
    ShareCode { user: String, doorbell: String, minutes: u32 },
    /// `alert`: args `doorbell` (or ""), `level`, `sound` (or ""), the volume in thousandths
    /// (`"500"` for 0.5; or "").
    Alert { doorbell: Option<String>, level: Level, sound: Option<String>, volume_milli: Option<u16> },
    /// `quiet`: args `doorbell` (or ""), `from`, `to`, `days`, `mode`; without `from` and
    /// `to` (both "") the quiet hours are removed.
    Quiet { doorbell: Option<String>, window: Option<(String, String)>, days: String, mode: Mode },
    /// `mute`: args `doorbell` (or ""), `until` (UNIX ms; 0 unmutes), `mode`.
    Mute { doorbell: Option<String>, until: i64, mode: Mode },
    /// `answer`: args `ring_id`, `action` ("coming").
    Answer { ring_id: String },
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::ReplaceToken { token, environment } => {
                write!(f, "ReplaceToken({}…, {environment})", crate::domain::short_token(token))
            }
            Action::Unpair => f.write_str("Unpair"),
            Action::ShareCode { user, doorbell, minutes } => write!(f, "ShareCode({user}, {doorbell}, {minutes})"),
            other => f.write_str(other.name()),
        }
    }
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::ReplaceToken { .. } => "token",
            Action::Unpair => "unpair",
            Action::ShareCode { .. } => "share-code",
            Action::Alert { .. } => "alert",
            Action::Quiet { .. } => "quiet",
            Action::Mute { .. } => "mute",
            Action::Answer { .. } => "answer",
        }
    }

    /// The arguments in signing order.
    pub fn signed_args(&self) -> Vec<String> {
        match self {
            Action::ReplaceToken { token, environment } => vec![token.clone(), environment.as_str().into()],
            Action::Unpair => vec![],
            Action::ShareCode { user, doorbell, minutes } => vec![user.clone(), doorbell.clone(), minutes.to_string()],
            Action::Alert { doorbell, level, sound, volume_milli } => vec![
                doorbell.clone().unwrap_or_default(),
                level.as_str().into(),
                sound.clone().unwrap_or_default(),
                volume_milli.map(|v| v.to_string()).unwrap_or_default(),
            ],
            Action::Quiet { doorbell, window, days, mode } => {
                let (from, to) = window.clone().unwrap_or_default();
                vec![doorbell.clone().unwrap_or_default(), from, to, days.clone(), mode.as_str().into()]
            }
            Action::Mute { doorbell, until, mode } => {
                vec![doorbell.clone().unwrap_or_default(), until.to_string(), mode.as_str().into()]
            }
            Action::Answer { ring_id } => vec![ring_id.clone(), "coming".into()],
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

    /// A request as a phone makes it: signed with `secret` (what the reference phone sends).
    pub fn signed(phone_id: i64, secret: &[u8], action: Action, request_id: &str, ts: i64, nonce: &str) -> Self {
        let mut r = SignedRequest {
            phone_id,
            request_id: request_id.to_string(),
            ts,
            nonce: nonce.to_string(),
            sig: Vec::new(),
            action,
        };
        r.sig = super::sign(secret, &r.signing_string()).to_vec();
        r
    }

    /// The payload to publish on `P/phone/<phone_id>/<action>`.
    pub fn encode(&self) -> String {
        let mut v = serde_json::json!({"request_id": self.request_id, "ts": self.ts, "nonce": self.nonce,
            "sig": hex::encode(&self.sig)});
        match &self.action {
            Action::ReplaceToken { token, environment } => {
                v["token"] = token.as_str().into();
                v["environment"] = environment.as_str().into();
            }
            Action::Unpair => {}
            Action::ShareCode { user, doorbell, minutes } => {
                v["user"] = user.as_str().into();
                v["doorbell"] = doorbell.as_str().into();
                v["minutes"] = (*minutes).into();
            }
            Action::Alert { doorbell, level, sound, volume_milli } => {
                v["level"] = level.as_str().into();
                if let Some(s) = sound {
                    v["sound"] = s.as_str().into();
                }
                if let Some(x) = volume_milli {
                    v["volume"] = (f64::from(*x) / 1000.0).into();
                }
                if let Some(d) = doorbell {
                    v["doorbell"] = d.as_str().into();
                }
            }
            Action::Quiet { doorbell, window, days, mode } => {
                if let Some((from, to)) = window {
                    v["from"] = from.as_str().into();
                    v["to"] = to.as_str().into();
                    v["days"] = days.as_str().into();
                    v["mode"] = mode.as_str().into();
                }
                if let Some(d) = doorbell {
                    v["doorbell"] = d.as_str().into();
                }
            }
            Action::Mute { doorbell, until, mode } => {
                v["until"] = (*until).into();
                v["mode"] = mode.as_str().into();
                if let Some(d) = doorbell {
                    v["doorbell"] = d.as_str().into();
                }
            }
            Action::Answer { ring_id } => {
                v["ring_id"] = ring_id.as_str().into();
                v["action"] = "coming".into();
            }
        }
        v.to_string()
    }
}

/// A refusal's `detail` as a phone accepts it: at most this many printable characters.
pub const DETAIL_MAX: usize = 256;

/// A reply on `P/phone-response/<phone_id>`, as the phone reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum PhoneReply {
    /// `{"ok": true, "request_id", "phone_id", "action", ...}`: the action's fields as they came.
    Done { request_id: String, action: String, fields: Map<String, Value> },
    /// `{"ok": false, "error", "detail", "request_id"?}`.
    Refused { request_id: Option<String>, error: ErrorCode, detail: String },
}

/// Reads a reply to a signed request (the phone's side); the error names what is wrong.
pub fn parse_phone_reply(payload: &[u8]) -> Result<PhoneReply, String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!("payload is larger than {MAX_PAYLOAD} bytes"));
    }
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(payload) else {
        return Err("payload is not a JSON object".into());
    };
    let request_id = match m.get("request_id") {
        None => None,
        Some(Value::String(s)) if valid_request_id(s) => Some(s.clone()),
        Some(_) => return Err("request_id: must be 1 to 64 of A-Z a-z 0-9 - _".into()),
    };
    match m.get("ok") {
        Some(Value::Bool(true)) => {
            let request_id = request_id.ok_or("request_id: missing")?;
            let action = match m.get("action") {
                Some(Value::String(a)) if ACTIONS.contains(&a.as_str()) => a.clone(),
                _ => return Err(format!("action: must be one of {}", ACTIONS.join(", "))),
            };
            Ok(PhoneReply::Done { request_id, action, fields: m })
        }
        Some(Value::Bool(false)) => {
            let error = m
                .get("error")
                .and_then(Value::as_str)
                .and_then(ErrorCode::parse)
                .ok_or("error: not a documented error code")?;
            let detail = match m.get("detail") {
                None => "",
                Some(Value::String(s)) if s.chars().count() <= DETAIL_MAX && crate::domain::check_text(s).is_ok() => s,
                Some(_) => return Err(format!("detail: must be up to {DETAIL_MAX} printable characters")),
            };
            Ok(PhoneReply::Refused { request_id, error, detail: detail.to_string() })
        }
        _ => Err("ok: must be true or false".into()),
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
        "alert" => &["doorbell", "level", "sound", "volume"],
        "quiet" => &["doorbell", "from", "to", "days", "mode"],
        "mute" => &["doorbell", "until", "mode"],
        "answer" => &["ring_id", "action"],
        _ => {
            let detail = format!("unknown action: use {}", ACTIONS.join(", "));
            return Err(Refusal::new(None, ErrorCode::BadRequest, detail));
        }
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
        "alert" | "quiet" | "mute" | "answer" => household_action(action, &m, &rid)?,
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

/// The actions of signed phone requests, as their topics name them.
pub const ACTIONS: [&str; 7] = ["token", "unpair", "share-code", "alert", "quiet", "mute", "answer"];

/// The household controls' requests (`alert`, `quiet`, `mute`, `answer`), checked for shape.
fn household_action(action: &str, m: &Map<String, Value>, rid: &str) -> Result<Action, Refusal> {
    let bad = |d: String| Refusal::new(Some(rid), ErrorCode::BadRequest, d);
    let opt = |key: &str| -> Result<Option<&str>, Refusal> {
        match m.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(bad(format!("{key}: must be a string"))),
        }
    };
    let doorbell = match opt("doorbell")? {
        Some(d) => {
            crate::domain::check_id("doorbell", d)
                .map_err(|_| bad("doorbell: must be 1 to 64 of letters, digits, '-', '_', '.'".into()))?;
            Some(d.to_string())
        }
        None => None,
    };
    let mode = || -> Result<Mode, Refusal> {
        match opt("mode")? {
            None => Ok(Mode::Skip),
            Some(s) => Mode::parse(s).ok_or_else(|| bad("mode: must be \"skip\" or \"silent\"".into())),
        }
    };
    Ok(match action {
        "alert" => {
            let level = Level::parse(string(m, rid, "level")?)
                .ok_or_else(|| bad("level: must be passive, active, time-sensitive or critical".into()))?;
            let sound = opt("sound")?.map(str::to_string);
            let volume = match m.get("volume") {
                None => None,
                Some(v) => Some(v.as_f64().ok_or_else(|| bad("volume: must be a number from 0 to 1".into()))?),
            };
            // The same bounds as the CLI's; the store is handed a checked profile.
            let p = Profile::new(level, sound.as_deref(), volume).map_err(bad)?;
            Action::Alert { doorbell, level, sound, volume_milli: p.volume_milli }
        }
        "quiet" => {
            let window = match (opt("from")?, opt("to")?) {
                (Some(from), Some(to)) => {
                    let (f, t) = (
                        parse_hhmm(from).map_err(|e| bad(format!("from: {e}")))?,
                        parse_hhmm(to).map_err(|e| bad(format!("to: {e}")))?,
                    );
                    if f == t {
                        return Err(bad("from, to: the same time; quiet hours need a length".into()));
                    }
                    Some((from.to_string(), to.to_string()))
                }
                (None, None) => None,
                _ => return Err(bad("from, to: give both (set quiet hours) or neither (remove them)".into())),
            };
            let days = opt("days")?.unwrap_or("all");
            Days::parse(days).map_err(|e| bad(format!("days: {}", crate::domain::printable(&e))))?;
            Action::Quiet { doorbell, window, days: days.to_string(), mode: mode()? }
        }
        "mute" => {
            let until = m
                .get("until")
                .and_then(Value::as_i64)
                .filter(|u| (0..=9_999_999_999_999).contains(u))
                .ok_or_else(|| bad("until: must be UNIX milliseconds (0 unmutes)".into()))?;
            Action::Mute { doorbell, until, mode: mode()? }
        }
        _ => {
            let ring_id = string(m, rid, "ring_id")?;
            if !valid_request_id(ring_id) {
                return Err(bad("ring_id: must be 1 to 64 of A-Z a-z 0-9 - _".into()));
            }
            if string(m, rid, "action")? != "coming" {
                return Err(bad("action: must be \"coming\"".into()));
            }
            Action::Answer { ring_id: ring_id.to_string() }
        }
    })
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

    #[test]
    fn junk_is_refused_without_a_reply_id() {
        for junk in [&b""[..], b"{", b"[]", b"null", b"\xff", b"\"x\"", b"{\"request_id\":\"a\",\"request_id\":1}"] {
            let e = parse_signed(1, "unpair", junk).unwrap_err();
            assert_eq!((e.error, e.request_id), (ErrorCode::BadRequest, None));
        }
        for bad in ["", "a/b", "+", "#", "a b", "ä", &"x".repeat(65), "r\u{0}"] {
            let v = serde_json::json!({"request_id": bad, "ts": 1, "nonce": "0123456789abcdef", "sig": "00"});
            assert_eq!(parse_signed(1, "unpair", v.to_string().as_bytes()).unwrap_err().request_id, None, "{bad:?}");
        }
        assert!(valid_request_id(&"A-z_9".repeat(12)));
        let big = format!(r#"{{"request_id":"r","nonce":"{}"}}"#, "x".repeat(MAX_PAYLOAD));
        assert!(parse_signed(1, "unpair", big.as_bytes()).unwrap_err().detail.contains("larger"));
    }

    #[test]
    fn a_phone_encodes_what_the_gateway_parses_and_verifies() {
        let secret = [3u8; 32];
        for action in [
            Action::ReplaceToken { token: tok(), environment: Environment::Sandbox },
            Action::Unpair,
            Action::ShareCode { user: "guest".into(), doorbell: "front".into(), minutes: 10 },
        ] {
            let name = action.name();
            let made = SignedRequest::signed(7, &secret, action, "r-9", 1_700_000_000_000, "0123456789abcdef");
            let parsed = parse_signed(7, name, made.encode().as_bytes()).unwrap();
            assert_eq!(parsed, made);
            let msg = parsed.signing_string();
            assert_eq!(super::super::verify(Some(&secret), &msg, &parsed.sig, parsed.ts, parsed.ts, false), Ok(()));
        }
    }

    #[test]
    fn phones_read_replies_and_refusals() {
        let ok = serde_json::json!({"ok": true, "request_id": "r", "phone_id": 7, "action": "unpair"});
        assert!(
            matches!(parse_phone_reply(ok.to_string().as_bytes()), Ok(PhoneReply::Done { action, .. }) if action == "unpair")
        );
        let refusal = Refusal::new(Some("r"), ErrorCode::Replayed, "nonce: used before").reply();
        assert_eq!(
            parse_phone_reply(refusal.as_bytes()).unwrap(),
            PhoneReply::Refused {
                request_id: Some("r".into()),
                error: ErrorCode::Replayed,
                detail: "nonce: used before".into()
            }
        );
        let nameless = Refusal::new(None, ErrorCode::BadRequest, "payload is not JSON").reply();
        assert!(matches!(parse_phone_reply(nameless.as_bytes()), Ok(PhoneReply::Refused { request_id: None, .. })));
        for bad in [
            serde_json::json!({"ok": true, "request_id": "r", "action": "reboot"}),
            serde_json::json!({"ok": true, "action": "unpair"}),
            serde_json::json!({"ok": false, "error": "teapot"}),
            serde_json::json!({"ok": false, "error": "internal", "detail": "a\u{1b}[2J"}),
            serde_json::json!({"ok": "yes"}),
        ] {
            assert!(parse_phone_reply(bad.to_string().as_bytes()).is_err(), "{bad}");
        }
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
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
