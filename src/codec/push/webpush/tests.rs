use super::*;
use crate::codec::push::ece::Receiver;
use crate::codec::push::vapid::{verify_authorization, Subject, TokenCache, VapidKey};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Duration;

// RFC 8291 §5's receiver, as a browser would hand it over.
const P256DH: &str = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
const ENDPOINT: &str = "https://fcm.googleapis.com/fcm/send/dZ8a1b2c3d4e:APA91bHqX";

fn json(endpoint: &str, p256dh: &str, auth: &str) -> Vec<u8> {
    serde_json::json!({"endpoint": endpoint, "expirationTime": null, "keys": {"p256dh": p256dh, "auth": auth}})
        .to_string()
        .into_bytes()
}

fn err(endpoint: &str, p256dh: &str, auth: &str) -> String {
    Subscription::from_json(&json(endpoint, p256dh, auth)).unwrap_err().to_string()
}

#[test]
fn a_browser_subscription_parses_and_round_trips() {
    let s = Subscription::from_json(&json(ENDPOINT, P256DH, AUTH)).unwrap();
    assert_eq!(s.endpoint(), ENDPOINT);
    assert_eq!(s.audience(), "https://fcm.googleapis.com");
    assert_eq!(s.uri().path(), "/fcm/send/dZ8a1b2c3d4e:APA91bHqX");
    assert_eq!(ece::public_key_bytes(s.public_key()).to_vec(), URL_SAFE_NO_PAD.decode(P256DH).unwrap());
    let again = Subscription::from_json(s.to_json().as_bytes()).unwrap();
    assert_eq!(again, s);
    assert_eq!(s.to_json(), again.to_json());
}

#[test]
fn keys_are_taken_with_or_without_padding() {
    let padded = Subscription::new(ENDPOINT, &format!("{P256DH}="), &format!("{AUTH}==")).unwrap();
    assert_eq!(padded, Subscription::new(ENDPOINT, P256DH, AUTH).unwrap());
}

#[test]
fn bad_subscriptions_name_the_field() {
    assert_eq!(err("http://push.example.net/x", P256DH, AUTH), "endpoint: must be an https:// URL");
    assert_eq!(err("", P256DH, AUTH), "endpoint: is empty");
    assert_eq!(err("push.example.net/x", P256DH, AUTH), "endpoint: must be an https:// URL");
    assert_eq!(err("https:///x", P256DH, AUTH), "endpoint: is not a valid URL");
    assert_eq!(err("https://a b/x", P256DH, AUTH), "endpoint: has a space or control character");
    assert_eq!(err("https://u:p@push.example.net/x", P256DH, AUTH), "endpoint: must not carry a user name or password");
    let long = format!("https://push.example.net/{}", "a".repeat(MAX_ENDPOINT_LEN));
    assert_eq!(err(&long, P256DH, AUTH), "endpoint: is longer than 2048 characters");

    assert_eq!(err(ENDPOINT, "not*base64", AUTH), "keys.p256dh: not base64url");
    assert_eq!(err(ENDPOINT, "BCVxsr7N+eNgVRqv", AUTH), "keys.p256dh: not base64url");
    assert_eq!(err(ENDPOINT, &P256DH[..43], AUTH), "keys.p256dh: 32 bytes; must be a 65-byte uncompressed P-256 point");
    let mut off_curve = URL_SAFE_NO_PAD.decode(P256DH).unwrap();
    off_curve[64] ^= 1;
    assert_eq!(err(ENDPOINT, &URL_SAFE_NO_PAD.encode(&off_curve), AUTH), "keys.p256dh: not a point on P-256");
    assert_eq!(err(ENDPOINT, P256DH, "BTBZMqHH6r4Tts7J"), "keys.auth: 12 bytes; must be 16");
    assert_eq!(err(ENDPOINT, P256DH, "%%%"), "keys.auth: not base64url");

    let e = |j: &str| Subscription::from_json(j.as_bytes()).unwrap_err().to_string();
    assert_eq!(e("[]"), "subscription is not a JSON object: not an object");
    assert_eq!(e("{\"endpoint\":"), "subscription is not a JSON object: line 1 column 12");
    assert_eq!(e(r#"{"endpoint":"https://a.example/x"}"#), "subscription has no /keys/p256dh");
    assert_eq!(e(r#"{"keys":{}}"#), "subscription has no /endpoint");
    assert_eq!(e(r#"{"endpoint":5,"keys":{}}"#), "subscription has no /endpoint");
    let huge = vec![b' '; MAX_SUBSCRIPTION_JSON + 1];
    assert_eq!(Subscription::from_json(&huge).unwrap_err(), SubscriptionError::TooLarge(8193));
}

#[test]
fn logs_and_debug_show_the_host_and_a_short_tail_only() {
    let s = Subscription::new(ENDPOINT, P256DH, AUTH).unwrap();
    assert_eq!(s.short(), "fcm.googleapis.com/…dZ8a1b2c");
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("APA91") && !dbg.contains(AUTH) && dbg.contains("redacted"), "{dbg}");
}

#[test]
fn topics_are_32_base64url_characters_stable_per_doorbell() {
    let t = topic("front");
    assert_eq!(t.len(), TOPIC_LEN);
    assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(t, topic("front"));
    assert_ne!(t, topic("back"));
    assert_eq!(topic("").len(), 32);
    assert_eq!(topic(&"é".repeat(500)).len(), 32);
}

#[test]
fn request_headers_follow_rfc8030_and_rfc8291() {
    let auth = HeaderValue::from_static("vapid t=a.b.c, k=K");
    let h = request_headers(297, &topic("front"), auth, 200);
    assert_eq!(h["ttl"], "297");
    assert_eq!(h["urgency"], "high");
    assert_eq!(h["topic"], topic("front").as_str());
    assert_eq!(h["content-encoding"], "aes128gcm");
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["content-length"], "200");
    assert_eq!(h["authorization"], "vapid t=a.b.c, k=K");
    assert_eq!(h.len(), 7);
}

#[test]
fn the_ring_payload_is_what_the_service_worker_reads() {
    let p = ring_payload("front", "Front door", "r-42", 1_700_000_000_123).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
    assert_eq!(v["doorbell"], "front");
    assert_eq!(v["name"], "Front door");
    assert_eq!(v["ring"], "r-42");
    assert_eq!(v["title"], "Front door");
    assert_eq!(v["body"], "Someone is at Front door");
    assert_eq!(v["at"], 1_700_000_000_123i64);
    assert_eq!((v["level"].as_str(), v["silent"].as_bool()), (Some("time-sensitive"), Some(false)));
    assert_eq!(v["actions"][0]["action"], "coming");
    assert_eq!(v.as_object().unwrap().len(), 9);
    let quiet = crate::domain::household::Profile::silent();
    let q: serde_json::Value =
        serde_json::from_slice(&ring_payload_as("front", "Front door", "r-42", 0, &quiet, None).unwrap()).unwrap();
    assert_eq!((q["level"].as_str(), q["silent"].as_bool()), (Some("passive"), Some(true)));
    let a: serde_json::Value = serde_json::from_slice(
        &ring_payload_as("front", "Front door", "r-42", 0, &Default::default(), Some("bo")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (a["body"].as_str(), a["answered_by"].as_str(), a["silent"].as_bool()),
        (Some("bo is getting the door"), Some("bo"), Some(true))
    );
    assert!(a.get("actions").is_none());
    let big = ring_payload("front", &"x".repeat(2000), "r", 0).unwrap_err();
    assert!(big.0 > 3993 && big.to_string().contains("at most 3993"));
}

#[test]
fn a_whole_message_decrypts_at_the_browser_and_its_token_verifies_at_the_service() {
    let mut rng = StdRng::seed_from_u64(3);
    let browser = Receiver::generate(&mut rng);
    let sub =
        Subscription::from_keys("https://127.0.0.1:8443/push/abc", &browser.public_key(), *browser.auth()).unwrap();
    let sub = Subscription::from_json(sub.to_json().as_bytes()).unwrap();
    let payload = ring_payload("front", "Front door", "r1", 5).unwrap();
    let body = sub.encrypt(&payload, &mut rng).unwrap();
    assert_eq!(browser.decrypt(&body).unwrap(), payload);

    let key = VapidKey::generate(&mut rng);
    let subject = Subject::parse("mailto:ops@example.com").unwrap();
    let now = 1_700_000_000;
    let auth = TokenCache::new().authorization(&key, &subject, sub.audience(), now);
    let h = request_headers(60, &topic("front"), auth, body.len());
    let verified = verify_authorization(h["authorization"].to_str().unwrap(), "https://127.0.0.1:8443", now).unwrap();
    assert_eq!(URL_SAFE_NO_PAD.encode(verified.public_key), key.public_key_b64());
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn answers_become_verdicts() {
    let now = at(1_000);
    let c = |status, ra: Option<&str>, body: &str| classify(status, ra, body.as_bytes(), now);
    assert_eq!(c(201, None, ""), Verdict::Delivered);
    assert_eq!(c(200, None, ""), Verdict::Delivered);
    assert_eq!(c(202, None, ""), Verdict::Delivered);
    assert!(matches!(c(404, None, ""), Verdict::Prune { .. }));
    match c(410, None, "{\"errno\":106}") {
        Verdict::Prune { reason } => assert_eq!(reason, "410 subscription gone (unsubscribed): {\"errno\":106}"),
        v => panic!("{v:?}"),
    }
    assert!(matches!(c(413, None, ""), Verdict::Failed { status: 413, credentials: false, .. }));
    assert_eq!(
        c(429, Some("30"), ""),
        Verdict::Retry { after: Some(Duration::from_secs(30)), reason: "429 too many requests".into() }
    );
    let date = httpdate::fmt_http_date(at(1_045));
    assert!(matches!(c(429, Some(&date), ""), Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(45)));
    assert!(matches!(c(429, Some("later"), ""), Verdict::Retry { after: None, .. }));
    for s in [500, 502, 503, 504] {
        assert!(matches!(c(s, Some("7"), ""), Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(7)));
    }
    assert!(matches!(c(503, None, ""), Verdict::Retry { after: None, .. }));
    match c(403, None, "{\"reason\":\"BadJwtToken\"}") {
        Verdict::Failed { reason, status: 403, credentials: true } => assert!(reason.contains("BadJwtToken")),
        v => panic!("{v:?}"),
    }
    assert!(matches!(c(401, None, ""), Verdict::Failed { status: 401, credentials: true, .. }));
    assert!(matches!(c(400, None, "bad TTL header"), Verdict::Failed { status: 400, credentials: false, .. }));
    assert!(matches!(c(400, None, "Invalid VAPID JWT"), Verdict::Failed { status: 400, credentials: true, .. }));
    assert!(matches!(c(302, None, ""), Verdict::Failed { status: 302, credentials: false, .. }));
    assert!(matches!(c(418, None, ""), Verdict::Failed { status: 418, .. }));
}

#[test]
fn reasons_stay_short_and_on_one_line() {
    let body = format!("line one\nline two\r\n{}", "z".repeat(10_000));
    match classify(400, None, body.as_bytes(), at(0)) {
        Verdict::Failed { reason, .. } => {
            assert!(!reason.contains('\n') && !reason.contains('\r'));
            assert!(reason.chars().count() <= 160 + 20, "{}", reason.len());
            assert!(reason.starts_with("400 bad request: line one line two"));
        }
        v => panic!("{v:?}"),
    }
    assert!(matches!(classify(500, None, &[0xff, 0xfe, 0x00], at(0)), Verdict::Retry { .. }));
}
