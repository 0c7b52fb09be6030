//! Phones of every platform at the door: what `phone add`, `phone import` and `phone rm` take
//! (an APNs device token, an FCM registration token, a browser's `PushSubscription` JSON),
//! checked with the push codecs' rules, each refusal one line naming what is wrong; and how a
//! phone is kept in the `phones` table (platform, `token`, `subscription`).

use super::{Result, Store, StoreError, Upsert};
use crate::codec::push::ece::public_key_bytes;
use crate::codec::push::{fcm, webpush};
use crate::domain::{normalize_token, Environment, Platform, WebPushKeys};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rusqlite::params;

/// A phone as it is registered: checked, normalised, ready for the `phones` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// A device token in lowercase hex.
    Apns { token: String, environment: Environment },
    /// An FCM registration token.
    Fcm(String),
    /// A Web Push subscription: its keys and its canonical JSON.
    WebPush { keys: WebPushKeys, json: String },
}

impl Registration {
    /// An APNs device token as a user typed it.
    pub fn apns(raw: &str, environment: Environment) -> Result<Registration> {
        Ok(Registration::Apns { token: normalize_token(raw)?, environment })
    }

    /// An FCM registration token as a user typed it.
    pub fn fcm(raw: &str) -> Result<Registration> {
        let token = raw.trim();
        fcm::check_token(token).map_err(|e| StoreError::Invalid(format!("invalid {e}")))?;
        Ok(Registration::Fcm(token.to_string()))
    }

    /// A browser's `PushSubscription.toJSON()`: an `https://` endpoint, a 65-byte P-256
    /// `keys.p256dh`, a 16-byte `keys.auth`.
    pub fn webpush(json: &[u8]) -> Result<Registration> {
        let sub = webpush::Subscription::from_json(json)
            .map_err(|e| StoreError::Invalid(format!("invalid Web Push subscription: {e}")))?;
        let keys = WebPushKeys {
            endpoint: sub.endpoint().to_string(),
            p256dh: URL_SAFE_NO_PAD.encode(public_key_bytes(sub.public_key())),
            auth: URL_SAFE_NO_PAD.encode(sub.auth()),
        };
        Ok(Registration::WebPush { keys, json: sub.to_json() })
    }

    /// A line of `phone import`, or what `phone rm` was given, read by its shape: a JSON
    /// object is a Web Push subscription, hex is an APNs token, anything else an FCM token.
    /// `fcm:` or `webpush:` before it says which, when the shape would not.
    pub fn guess(raw: &str, environment: Environment) -> Result<Registration> {
        let raw = raw.trim();
        if let Some(t) = raw.strip_prefix("fcm:") {
            return Registration::fcm(t);
        }
        if let Some(j) = raw.strip_prefix("webpush:") {
            return Registration::webpush(j.trim().as_bytes());
        }
        if raw.starts_with('{') {
            return Registration::webpush(raw.as_bytes());
        }
        let bare = raw.trim_start_matches('<').trim_end_matches('>');
        if !bare.is_empty() && bare.chars().all(|c| c.is_ascii_hexdigit() || c.is_whitespace()) {
            return Registration::apns(raw, environment);
        }
        Registration::fcm(raw).map_err(|_| {
            StoreError::Invalid(
                "not an APNs token (hex), an FCM registration token or a Web Push subscription (JSON)".into(),
            )
        })
    }

    pub fn platform(&self) -> Platform {
        match self {
            Registration::Apns { .. } => Platform::Apns,
            Registration::Fcm(_) => Platform::Fcm,
            Registration::WebPush { .. } => Platform::Webpush,
        }
    }

    /// The `token` column: hex, the FCM token, the endpoint.
    pub fn key(&self) -> &str {
        match self {
            Registration::Apns { token, .. } => token,
            Registration::Fcm(t) => t,
            Registration::WebPush { keys, .. } => &keys.endpoint,
        }
    }

    /// All a terminal may show of it.
    pub fn short(&self) -> String {
        crate::domain::short_key(self.platform(), self.key())
    }

    fn environment(&self) -> Environment {
        match self {
            Registration::Apns { environment, .. } => *environment,
            _ => Environment::Production,
        }
    }

    fn subscription(&self) -> Option<&str> {
        match self {
            Registration::WebPush { json, .. } => Some(json),
            _ => None,
        }
    }
}

/// The keys of a stored subscription. The JSON was checked when it was registered, so it is
/// only read here (a ring reads a building's phones; no point is validated again).
pub(crate) fn webpush_keys(json: &[u8]) -> std::result::Result<WebPushKeys, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Keys {
        p256dh: String,
        auth: String,
    }
    #[derive(serde::Deserialize)]
    struct Stored {
        endpoint: String,
        keys: Keys,
    }
    let s: Stored = serde_json::from_slice(json)?;
    Ok(WebPushKeys { endpoint: s.endpoint, p256dh: s.keys.p256dh, auth: s.keys.auth })
}

/// Adds the phone for `user_id`, or refreshes it (`registered_at`, environment, keys) when
/// the user has it already.
pub(crate) fn upsert(
    tx: &rusqlite::Transaction,
    user_id: i64,
    reg: &Registration,
    topic: Option<&str>,
    name: Option<&str>,
    now: i64,
) -> Result<Upsert> {
    let existing: Option<i64> = rusqlite::OptionalExtension::optional(
        tx.prepare_cached("SELECT id FROM phones WHERE user_id = ?1 AND token = ?2")?
            .query_row(params![user_id, reg.key()], |r| r.get(0)),
    )?;
    let (env, platform, sub) = (reg.environment().as_str(), reg.platform().as_str(), reg.subscription());
    match existing {
        Some(id) => {
            tx.prepare_cached(
                "UPDATE phones SET environment = ?2, topic = COALESCE(?3, topic), name = COALESCE(?4, name),
                    registered_at = ?5, platform = ?6, subscription = ?7 WHERE id = ?1",
            )?
            .execute(params![id, env, topic, name, now, platform, sub])?;
            Ok(Upsert::Updated(id))
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO phones (user_id, token, environment, topic, name, registered_at, platform, subscription)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![user_id, reg.key(), env, topic, name, now, platform, sub])?;
            Ok(Upsert::Added(tx.last_insert_rowid()))
        }
    }
}

impl Store {
    /// Registers (or re-registers) a phone of any platform for a user.
    pub fn register_phone(
        &mut self,
        user: &str,
        reg: &Registration,
        topic: Option<&str>,
        name: Option<&str>,
    ) -> Result<Upsert> {
        if topic.is_some() && reg.platform() != Platform::Apns {
            return Err(StoreError::Invalid("--topic is for iPhones (an APNs bundle id)".into()));
        }
        if let Some(n) = name {
            crate::domain::check_name(n).map_err(|e| StoreError::Invalid(format!("phone name: {e}")))?;
        }
        let uid = self.user_id(user)?;
        let tx = self.conn.transaction()?;
        let r = upsert(&tx, uid, reg, topic, name, crate::domain::now_ms())?;
        tx.commit()?;
        Ok(r)
    }

    /// Removes every registration of a phone, whichever platform (see
    /// [`Registration::guess`] for what `raw` may be; a Web Push endpoint URL is taken too).
    pub fn unregister_phone(&mut self, raw: &str) -> Result<usize> {
        let raw = raw.trim();
        let (platform, key) = if raw.starts_with("https://") {
            (Platform::Webpush, raw.to_string())
        } else {
            let reg = Registration::guess(raw, Environment::Production)?;
            (reg.platform(), reg.key().to_string())
        };
        let n = self
            .conn
            .execute("DELETE FROM phones WHERE token = ?1 AND platform = ?2", params![key, platform.as_str()])?;
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "phone with token",
                id: crate::domain::short_key(platform, &key) + "…",
            });
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn subscription_json(endpoint: &str) -> String {
        let r = crate::codec::push::ece::Receiver::generate(&mut rand::thread_rng());
        serde_json::json!({
            "endpoint": endpoint,
            "expirationTime": null,
            "keys": { "p256dh": URL_SAFE_NO_PAD.encode(r.public_bytes()), "auth": URL_SAFE_NO_PAD.encode(r.auth()) },
        })
        .to_string()
    }

    #[test]
    fn registrations_are_read_by_shape_and_refused_in_one_line() {
        let env = Environment::Production;
        assert_eq!(Registration::guess(&"AB".repeat(32), env).unwrap().platform(), Platform::Apns);
        let fcm = "dXb3x0VQ_rA:APA91bH-some_token-value_1234567890";
        assert_eq!(Registration::guess(fcm, env).unwrap(), Registration::Fcm(fcm.into()));
        assert_eq!(Registration::guess(&format!("fcm:{fcm}"), env).unwrap(), Registration::Fcm(fcm.into()));
        let json = subscription_json("https://push.example.net/wpush/v2/abcdef0123456789");
        let wp = Registration::guess(&json, env).unwrap();
        assert_eq!(wp.platform(), Platform::Webpush);
        assert_eq!(wp.key(), "https://push.example.net/wpush/v2/abcdef0123456789");
        assert_eq!(wp.short(), "push.example.net/…abcdef01");
        let Registration::WebPush { json: stored, keys } = &wp else { panic!() };
        assert_eq!(&webpush_keys(stored.as_bytes()).unwrap(), keys);

        let cases: [(&str, &str); 5] = [
            ("abc", "invalid token"),
            ("has space!", "APNs token"),
            (r#"{"endpoint":"https://x.example/1","keys":{"p256dh":"AA","auth":"AA"}}"#, "65-byte"),
            (&subscription_json("http://x.example/1"), "https://"),
            (r#"{"endpoint":"https://x.example/1"}"#, "keys/p256dh"),
        ];
        for (bad, why) in cases {
            let e = Registration::guess(bad, env).unwrap_err().to_string();
            assert!(e.contains(why) && !e.contains('\n'), "{bad}: {e}");
        }
        let e = Registration::fcm("short").unwrap_err().to_string();
        assert_eq!(e, "invalid FCM token: must be 16 to 4096 characters");
    }

    #[test]
    fn phones_of_every_platform_are_added_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.add_user("a").unwrap();
        s.add_doorbell("front", None, "a").unwrap();
        let fcm = Registration::fcm("fcm-token-0123456789:abc").unwrap();
        let json = subscription_json("https://push.example.net/p/xyz0123456789");
        let wp = Registration::webpush(json.as_bytes()).unwrap();
        let apns = Registration::apns(&"cd".repeat(32), Environment::Sandbox).unwrap();
        for r in [&apns, &fcm, &wp] {
            assert!(matches!(s.register_phone("a", r, None, Some("n")).unwrap(), Upsert::Added(_)));
        }
        assert!(matches!(s.register_phone("a", &wp, None, None).unwrap(), Upsert::Updated(_)));
        assert!(s.register_phone("a", &fcm, Some("com.x"), None).is_err(), "--topic is APNs only");
        let phones = s.list_phones().unwrap();
        let platforms: Vec<&str> = phones.iter().map(|p| p.platform.as_str()).collect();
        assert_eq!(platforms, ["apns", "fcm", "webpush"]);
        let r = s.recipients("front").unwrap();
        let kinds: Vec<Platform> = r.iter().map(|p| p.address.platform()).collect();
        assert_eq!(kinds, [Platform::Apns, Platform::Fcm, Platform::Webpush]);
        assert_eq!(r[0].address.environment(), Environment::Sandbox);

        assert_eq!(s.unregister_phone("https://push.example.net/p/xyz0123456789").unwrap(), 1);
        assert_eq!(s.unregister_phone("fcm-token-0123456789:abc").unwrap(), 1);
        let e = s.unregister_phone("fcm-token-0123456789:abc").unwrap_err().to_string();
        assert_eq!(e, "no phone with token 'fcm-toke…'");
        assert_eq!(s.unregister_phone(&"CD".repeat(32)).unwrap(), 1);
    }
}
