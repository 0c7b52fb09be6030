//! What travels sealed: the phone's registration (how to push to it, and its name) and the
//! gateway's grant (the phone's id, its user, the doorbells it rings for). Both are JSON
//! inside AES-GCM; they are checked here as strictly as any message on the broker, because a
//! phone that knows the code is not yet a trusted one. No I/O.

use super::json::{bytes, object, only, text};
use super::wire::{MAX_GRANT, MAX_REGISTRATION};
use crate::codec::push::{fcm, webpush};
use crate::domain::ids::DOORBELL_NAME_MAX;
use crate::domain::{check_name, check_name_within, valid_id, Environment, Platform};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use serde_json::{Map, Value};

/// An FCM registration token's longest length (real ones are about 160 characters): the
/// bound `phone add --fcm` applies too.
pub const FCM_TOKEN_MAX: usize = fcm::TOKEN_MAX_LEN;
/// A Web Push endpoint's longest length.
pub const ENDPOINT_MAX: usize = 1024;
/// A bundle id's longest length.
pub const TOPIC_MAX: usize = 255;
/// Doorbells listed in a grant.
pub const MAX_DOORBELLS: usize = 32;

/// How to push to the phone. Tokens and endpoints are credentials of a sort: `Debug` shows
/// their first 8 characters (an endpoint: its host) only.
#[derive(Clone, PartialEq, Eq)]
pub enum Push {
    /// APNs: the device token (lower-case hex, 32 to 100 bytes), its environment, and the
    /// app's bundle id (the service compares it with `apns.topic`).
    Apns { token: String, environment: Environment, topic: String },
    /// FCM: the registration token (as `codec::push::fcm::check_token` accepts it: 16 to
    /// [`FCM_TOKEN_MAX`] of base64url characters, `:` and `.`).
    Fcm { token: String },
    /// Web Push: a browser's PushSubscription (`https://` endpoint, the subscription's P-256
    /// public key as an uncompressed point, and its 16-byte auth secret).
    WebPush { endpoint: String, p256dh: [u8; 65], auth: [u8; 16] },
}

impl Push {
    pub fn platform(&self) -> Platform {
        match self {
            Push::Apns { .. } => Platform::Apns,
            Push::Fcm { .. } => Platform::Fcm,
            Push::WebPush { .. } => Platform::Webpush,
        }
    }

    /// What identifies the phone at its push service, as the phones table keeps it: the
    /// APNs or FCM token, or a Web Push subscription's endpoint.
    pub fn address(&self) -> &str {
        match self {
            Push::Apns { token, .. } | Push::Fcm { token } => token,
            Push::WebPush { endpoint, .. } => endpoint,
        }
    }

    /// A Web Push subscription as the phones table keeps it (`PushSubscription.toJSON()`
    /// without `expirationTime`, in the one form every way in writes:
    /// [`webpush::stored_json`]); `None` for the other platforms.
    pub fn subscription_json(&self) -> Option<String> {
        match self {
            Push::WebPush { endpoint, p256dh, auth } => Some(webpush::stored_json(endpoint, p256dh, auth)),
            _ => None,
        }
    }
}

fn head(s: &str) -> &str {
    s.get(..8).unwrap_or(s)
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Push::Apns { token, environment, topic } => {
                write!(f, "Apns({}…, {}, {topic})", head(token), environment.as_str())
            }
            Push::Fcm { token } => write!(f, "Fcm({}…)", head(token)),
            Push::WebPush { endpoint, .. } => {
                let host = endpoint.trim_start_matches("https://").split('/').next().unwrap_or("");
                write!(f, "WebPush({host}/…)")
            }
        }
    }
}

/// The phone's registration, sealed in `P/pair/finish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub push: Push,
    /// Shown in `phone list`; checked by [`check_name`].
    pub name: Option<String>,
}

/// One doorbell the phone will ring for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Doorbell {
    pub id: String,
    /// Empty when the doorbell has no display name.
    pub name: String,
}

/// What the gateway grants, sealed in the done reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub phone_id: i64,
    pub user: String,
    pub doorbells: Vec<Doorbell>,
}

fn apns_token(s: &str) -> Result<String, String> {
    let ok = (64..=200).contains(&s.len()) && s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| s.to_ascii_lowercase()).ok_or_else(|| "token: must be 32 to 100 bytes of hex".into())
}

fn endpoint(s: &str) -> Result<String, String> {
    let bad = || format!("endpoint: must be an https:// URL of at most {ENDPOINT_MAX} bytes");
    let rest = s.strip_prefix("https://").ok_or_else(bad)?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if s.len() > ENDPOINT_MAX || host.is_empty() || host.contains('@') || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    // What the Web Push transport could not send to is refused here, not found at the ring.
    webpush::check_endpoint_url(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn name_field(m: &Map<String, Value>) -> Result<Option<String>, String> {
    match m.get("name") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => check_name(s).map(|()| Some(s.clone())).map_err(|e| format!("name: {e}")),
        Some(_) => Err("name: must be a string".into()),
    }
}

fn webpush(m: &Map<String, Value>) -> Result<Push, String> {
    let Some(Value::Object(sub)) = m.get("subscription") else {
        return Err("subscription: must be a PushSubscription object".into());
    };
    only(sub, "subscription: ", &["endpoint", "expirationTime", "keys"])?;
    if !matches!(sub.get("expirationTime"), None | Some(Value::Null)) && !sub["expirationTime"].is_u64() {
        return Err("subscription: expirationTime: must be null or UNIX ms".into());
    }
    let endpoint = endpoint(text(sub, "subscription: ", "endpoint")?)?;
    let Some(Value::Object(keys)) = sub.get("keys") else {
        return Err("subscription: keys: must be an object".into());
    };
    only(keys, "subscription: keys: ", &["p256dh", "auth"])?;
    let p256dh = bytes(keys, "subscription: keys: ", "p256dh", 65, 65)?;
    if p256dh[0] != 4 || p256::PublicKey::from_sec1_bytes(&p256dh).is_err() {
        return Err("subscription: keys: p256dh: must be an uncompressed P-256 point".into());
    }
    let auth = bytes(keys, "subscription: keys: ", "auth", 16, 16)?;
    Ok(Push::WebPush {
        endpoint,
        p256dh: p256dh.try_into().expect("length checked"),
        auth: auth.try_into().expect("length checked"),
    })
}

/// Reads a registration (the plaintext of a phone's `sealed`). The error names the field.
pub fn parse_registration(plain: &[u8]) -> Result<Registration, String> {
    let m = object(plain, MAX_REGISTRATION)?;
    let push = match text(&m, "", "platform")? {
        "apns" => {
            only(&m, "", &["platform", "token", "environment", "topic", "name"])?;
            let token = apns_token(text(&m, "", "token")?)?;
            let environment = match text(&m, "", "environment")? {
                "production" => Environment::Production,
                "sandbox" => Environment::Sandbox,
                _ => return Err("environment: must be \"production\" or \"sandbox\"".into()),
            };
            let topic = text(&m, "", "topic")?;
            if topic.is_empty() || topic.len() > TOPIC_MAX || !topic.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("topic: must be the app's bundle id".into());
            }
            Push::Apns { token, environment, topic: topic.to_string() }
        }
        "fcm" => {
            only(&m, "", &["platform", "token", "name"])?;
            let token = text(&m, "", "token")?;
            fcm::check_token(token).map_err(|e| match e {
                fcm::FcmError::Token(why) => format!("token: {why}"),
                e => format!("token: {e}"),
            })?;
            Push::Fcm { token: token.to_string() }
        }
        "webpush" => {
            only(&m, "", &["platform", "subscription", "name"])?;
            webpush(&m)?
        }
        _ => return Err("platform: must be \"apns\", \"fcm\" or \"webpush\"".into()),
    };
    Ok(Registration { push, name: name_field(&m)? })
}

#[derive(Serialize)]
struct KeysOut {
    p256dh: String,
    auth: String,
}

#[derive(Serialize)]
struct SubscriptionOut<'a> {
    endpoint: &'a str,
    keys: KeysOut,
}

#[derive(Serialize)]
struct RegistrationOut<'a> {
    platform: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription: Option<SubscriptionOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

/// The JSON a phone seals; refused (naming the field) when it would not parse back.
pub fn encode_registration(r: &Registration) -> Result<String, String> {
    let mut out = RegistrationOut {
        platform: r.push.platform().as_str(),
        token: None,
        environment: None,
        topic: None,
        subscription: None,
        name: r.name.as_deref(),
    };
    match &r.push {
        Push::Apns { token, environment, topic } => {
            (out.token, out.environment, out.topic) =
                (Some(token.as_str()), Some(environment.as_str()), Some(topic.as_str()));
        }
        Push::Fcm { token } => out.token = Some(token.as_str()),
        Push::WebPush { endpoint, p256dh, auth } => {
            let keys = KeysOut { p256dh: URL_SAFE_NO_PAD.encode(p256dh), auth: URL_SAFE_NO_PAD.encode(auth) };
            out.subscription = Some(SubscriptionOut { endpoint, keys });
        }
    }
    let s = serde_json::to_string(&out).expect("plain structs serialize");
    parse_registration(s.as_bytes())?;
    Ok(s)
}

/// Reads a grant (the plaintext of the done reply's `sealed`).
pub fn parse_grant(plain: &[u8]) -> Result<Grant, String> {
    let m = object(plain, MAX_GRANT)?;
    only(&m, "", &["phone_id", "user", "doorbells"])?;
    let phone_id = m
        .get("phone_id")
        .and_then(Value::as_i64)
        .filter(|n| *n > 0)
        .ok_or_else(|| "phone_id: must be a positive integer".to_string())?;
    let user = text(&m, "", "user")?;
    if !valid_id(user) {
        return Err("user: must be 1 to 64 of letters, digits, '-', '_', '.'".into());
    }
    let Some(Value::Array(list)) = m.get("doorbells") else {
        return Err("doorbells: must be an array".into());
    };
    if list.len() > MAX_DOORBELLS {
        return Err(format!("doorbells: at most {MAX_DOORBELLS}"));
    }
    let mut doorbells = Vec::with_capacity(list.len());
    for d in list {
        let Value::Object(d) = d else { return Err("doorbells: must be objects".into()) };
        only(d, "doorbells: ", &["id", "name"])?;
        let id = text(d, "doorbells: ", "id")?;
        if !valid_id(id) {
            return Err("doorbells: id: must be 1 to 64 of letters, digits, '-', '_', '.'".into());
        }
        let name = text(d, "doorbells: ", "name")?;
        if !name.is_empty() {
            check_name_within(name, DOORBELL_NAME_MAX).map_err(|e| format!("doorbells: name: {e}"))?;
        }
        doorbells.push(Doorbell { id: id.to_string(), name: name.to_string() });
    }
    Ok(Grant { phone_id, user: user.to_string(), doorbells })
}

/// The JSON the gateway seals; refused when it would not parse back (the store's values
/// are expected to pass, so this only guards the bounds).
pub fn encode_grant(g: &Grant) -> Result<String, String> {
    let s = serde_json::to_string(g).expect("plain structs serialize");
    parse_grant(s.as_bytes())?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reg(v: Value) -> Result<Registration, String> {
        parse_registration(v.to_string().as_bytes())
    }

    /// A valid P-256 point (the generator), uncompressed.
    fn point() -> String {
        let g = p256::PublicKey::from_affine(p256::AffinePoint::GENERATOR).unwrap();
        URL_SAFE_NO_PAD.encode(p256::EncodedPoint::from(g).as_bytes())
    }

    fn webpush_reg() -> Value {
        json!({"platform": "webpush", "name": "Firefox", "subscription": {
            "endpoint": "https://push.example.net/wpush/v2/gAAAAABk", "expirationTime": null,
            "keys": {"p256dh": point(), "auth": URL_SAFE_NO_PAD.encode([9u8; 16])}}})
    }

    #[test]
    fn the_three_platforms_round_trip() {
        let apns = reg(json!({"platform": "apns", "token": "AB".repeat(32), "environment": "sandbox",
            "topic": "com.example.doorbell", "name": "Ann's iPhone"}))
        .unwrap();
        assert_eq!(
            apns.push,
            Push::Apns {
                token: "ab".repeat(32),
                environment: Environment::Sandbox,
                topic: "com.example.doorbell".into()
            }
        );
        let fcm = reg(json!({"platform": "fcm", "token": "dXk:APA91bHx-y_z.0123"})).unwrap();
        assert_eq!((fcm.push.platform(), fcm.name.as_deref()), (Platform::Fcm, None));
        let web = reg(webpush_reg()).unwrap();
        assert_eq!(web.push.platform(), Platform::Webpush);
        assert_eq!(web.push.address(), "https://push.example.net/wpush/v2/gAAAAABk");
        let stored: Value = serde_json::from_str(&web.push.subscription_json().unwrap()).unwrap();
        assert_eq!(stored["keys"]["auth"], URL_SAFE_NO_PAD.encode([9u8; 16]));
        for r in [apns, fcm, web] {
            assert_eq!(parse_registration(encode_registration(&r).unwrap().as_bytes()).unwrap(), r);
        }
        let dbg = format!("{:?}", reg(webpush_reg()).unwrap());
        assert!(dbg.contains("push.example.net") && !dbg.contains("gAAAAABk"), "{dbg}");
        let dbg = format!("{:?}", reg(json!({"platform": "fcm", "token": "x".repeat(100)})).unwrap());
        assert!(!dbg.contains(&"x".repeat(9)), "{dbg}");
    }

    #[test]
    fn every_registration_field_is_bounded() {
        let apns = |k: &str, v: Value| {
            let mut r =
                json!({"platform": "apns", "token": "ab".repeat(32), "environment": "production", "topic": "a.b"});
            r[k] = v;
            reg(r)
        };
        let cases = [
            (apns("token", "ab".repeat(31).into()), "token"),
            (apns("token", "ab".repeat(101).into()), "token"),
            (apns("token", format!("{}a", "ab".repeat(32)).into()), "token"),
            (apns("token", "zz".repeat(32).into()), "token"),
            (apns("environment", "development".into()), "environment"),
            (apns("topic", "".into()), "topic"),
            (apns("topic", "a b".into()), "topic"),
            (apns("name", "a\u{202e}b".into()), "name"),
            (apns("name", "a\nb".into()), "name"),
            (apns("name", "x".repeat(65).into()), "name"),
            (apns("name", 5.into()), "name"),
            (apns("platform", "sms".into()), "platform"),
            (apns("subscription", json!({})), "unknown field 'subscription'"),
            (reg(json!({"platform": "fcm", "token": ""})), "token"),
            (reg(json!({"platform": "fcm", "token": "a b".repeat(8)})), "token"),
            (reg(json!({"platform": "fcm", "token": "short"})), "token"),
            (reg(json!({"platform": "fcm", "token": "x".repeat(FCM_TOKEN_MAX + 1)})), "token"),
            (reg(json!({"platform": "fcm", "token": "é"})), "token"),
            (reg(json!({"platform": "fcm", "token": "t".repeat(20), "environment": "sandbox"})), "unknown field"),
        ];
        for (r, says) in cases {
            let e = r.unwrap_err();
            assert!(e.contains(says), "{says}: {e}");
        }
        assert!(reg(json!({"platform": "fcm", "token": "x".repeat(FCM_TOKEN_MAX)})).is_ok());
        let web = |path: &[&str], v: Value| {
            let mut r = webpush_reg();
            let mut at = &mut r;
            for p in &path[..path.len() - 1] {
                at = &mut at[*p];
            }
            at[path[path.len() - 1]] = v;
            reg(r)
        };
        let long = format!("https://a.example/{}", "x".repeat(ENDPOINT_MAX));
        let cases = [
            (web(&["subscription", "endpoint"], "http://push.example.net/x".into()), "endpoint"),
            (web(&["subscription", "endpoint"], "https://".into()), "endpoint"),
            (web(&["subscription", "endpoint"], "https://u:p@evil.example/".into()), "endpoint"),
            (web(&["subscription", "endpoint"], "https://a.example/ x".into()), "endpoint"),
            // Printable, but no request URI: the transport could not send to it.
            (web(&["subscription", "endpoint"], "https://a.example/a<b".into()), "endpoint: is not a valid URL"),
            (web(&["subscription", "endpoint"], long.into()), "endpoint"),
            (web(&["subscription", "keys", "auth"], URL_SAFE_NO_PAD.encode([1u8; 15]).into()), "auth"),
            (web(&["subscription", "keys", "p256dh"], URL_SAFE_NO_PAD.encode([4u8; 65]).into()), "p256dh"),
            (web(&["subscription", "keys", "p256dh"], URL_SAFE_NO_PAD.encode([4u8; 33]).into()), "p256dh"),
            (web(&["subscription", "keys", "extra"], 1.into()), "unknown field"),
            (web(&["subscription", "expirationTime"], "soon".into()), "expirationTime"),
            (web(&["subscription"], "x".into()), "subscription"),
        ];
        for (r, says) in cases {
            let e = r.unwrap_err();
            assert!(e.contains(says), "{says}: {e}");
        }
        assert!(web(&["subscription", "expirationTime"], 1_700_000_000_000u64.into()).is_ok());
    }

    #[test]
    fn grants_are_bounded() {
        let g = Grant {
            phone_id: 12,
            user: "alice".into(),
            doorbells: vec![Doorbell { id: "front".into(), name: "Front door".into() }],
        };
        assert_eq!(parse_grant(encode_grant(&g).unwrap().as_bytes()).unwrap(), g);
        let most = Grant {
            doorbells: (0..MAX_DOORBELLS)
                .map(|i| Doorbell { id: format!("{i:0>64}"), name: "\u{1F6AA}".repeat(DOORBELL_NAME_MAX) })
                .collect(),
            ..g.clone()
        };
        assert!(encode_grant(&most).is_ok(), "the largest grant fits MAX_GRANT");
        let too_many = Grant { doorbells: [most.doorbells.clone(), g.doorbells.clone()].concat(), ..g.clone() };
        assert!(encode_grant(&too_many).unwrap_err().contains("doorbells"));
        for bad in [
            json!({"phone_id": 0, "user": "a", "doorbells": []}),
            json!({"phone_id": 1, "user": "a/b", "doorbells": []}),
            json!({"phone_id": 1, "user": "a", "doorbells": [{"id": "", "name": ""}]}),
            json!({"phone_id": 1, "user": "a", "doorbells": [{"id": "f", "name": "\u{2066}x"}]}),
            json!({"phone_id": 1, "user": "a", "doorbells": {}}),
            json!({"phone_id": 1, "user": "a", "doorbells": [], "secret": "00"}),
        ] {
            assert!(parse_grant(bad.to_string().as_bytes()).is_err(), "{bad}");
        }
    }
}
