use super::sim::{self, SimError, TestAccount};
use super::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::OnceLock;
use std::time::Duration;

const TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const EMAIL: &str = "dingdong@doorbell-test.iam.gserviceaccount.com";
const NOW: u64 = 1_700_000_000;
const FCM_TOKEN: &str = "fYq3lQ2wRkS9:APA91bF0xw-EXAMPLE_token_1234567890abcdefghijklmnop";

/// One RSA-2048 key for every test (generation is the slow part), made from a fixed seed.
pub(crate) fn test_account() -> &'static TestAccount {
    static ACCOUNT: OnceLock<TestAccount> = OnceLock::new();
    ACCOUNT.get_or_init(|| {
        let key = RsaPrivateKey::new(&mut StdRng::seed_from_u64(2048), 2048).unwrap();
        sim::account_json(&key, "doorbell-test", EMAIL, TOKEN_URI)
    })
}

fn account() -> ServiceAccount {
    ServiceAccount::from_json(test_account().json.as_bytes()).unwrap()
}

fn edited(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Result<ServiceAccount, FcmError> {
    let mut v: Value = serde_json::from_str(&test_account().json).unwrap();
    edit(v.as_object_mut().unwrap());
    ServiceAccount::from_json(v.to_string().as_bytes())
}

#[test]
fn a_google_key_file_parses() {
    let a = account();
    assert_eq!(a.project_id(), "doorbell-test");
    assert_eq!(a.client_email(), EMAIL);
    assert_eq!(a.token_uri(), TOKEN_URI);
    assert_eq!(a.send_path(), "/v1/projects/doorbell-test/messages:send");
    assert_eq!(a.public_key(), &test_account().public);
    let other = a.with_project_id("other-project").unwrap();
    assert_eq!(other.send_path(), "/v1/projects/other-project/messages:send");
    assert!(account().with_project_id("a/b").is_err());
    assert!(account().with_project_id("").is_err());
}

#[test]
fn bad_key_files_name_the_field_and_never_echo_the_key() {
    use FcmError::*;
    let e = |f: fn(&mut serde_json::Map<String, Value>)| edited(f).unwrap_err();
    assert_eq!(e(|m| drop(m.remove("type"))), Missing("type"));
    assert_eq!(
        e(|m| drop(m.insert("type".into(), "authorized_user".into()))),
        Field("type", "must be \"service_account\"")
    );
    assert_eq!(e(|m| drop(m.remove("project_id"))), Missing("project_id"));
    assert_eq!(e(|m| drop(m.insert("project_id".into(), "a b".into()))), Field("project_id", "is not a project id"));
    assert_eq!(e(|m| drop(m.remove("private_key_id"))), Missing("private_key_id"));
    assert_eq!(e(|m| drop(m.remove("client_email"))), Missing("client_email"));
    assert_eq!(
        e(|m| drop(m.insert("client_email".into(), "nobody".into()))),
        Field("client_email", "is not an email address")
    );
    assert_eq!(
        e(|m| drop(m.insert("token_uri".into(), "http://x.example/token".into()))),
        Field("token_uri", "must be an https:// URL")
    );
    assert_eq!(e(|m| drop(m.insert("token_uri".into(), 5.into()))), Missing("token_uri"));
    assert_eq!(e(|m| drop(m.remove("private_key"))), Missing("private_key"));
    assert_eq!(e(|m| drop(m.insert("private_key".into(), 7.into()))), Missing("private_key"));

    // A damaged key: the error names the field and holds none of the key's text.
    let pem = test_account().json.clone();
    let damaged = edited(|m| {
        let k = m["private_key"].as_str().unwrap().replacen("MII", "XII", 1);
        m.insert("private_key".into(), k.into());
    })
    .unwrap_err();
    assert_eq!(damaged, Field("private_key", "is not a PKCS#8 PEM RSA private key"));
    let v: Value = serde_json::from_str(&pem).unwrap();
    let key_line = v["private_key"].as_str().unwrap().lines().nth(1).unwrap();
    assert!(!damaged.to_string().contains(key_line));

    // A P-256 key is not an RSA key.
    let ec = crate::codec::push::vapid::VapidKey::generate(&mut StdRng::seed_from_u64(1)).to_pem();
    let ec_err = edited(|m| drop(m.insert("private_key".into(), ec.as_str().into()))).unwrap_err();
    assert_eq!(ec_err, Field("private_key", "is not a PKCS#8 PEM RSA private key"));

    // Without token_uri, Google's.
    assert_eq!(edited(|m| drop(m.remove("token_uri"))).unwrap().token_uri(), DEFAULT_TOKEN_URI);

    assert_eq!(ServiceAccount::from_json(b"").unwrap_err(), KeyFileJson(1, 0));
    assert_eq!(ServiceAccount::from_json(b"[1]").unwrap_err(), KeyFileJson(1, 1));
    assert_eq!(ServiceAccount::from_json(&pem.as_bytes()[..500]).unwrap_err().to_string().lines().count(), 1);
    let big = vec![b' '; MAX_KEY_FILE + 1];
    assert_eq!(ServiceAccount::from_json(&big).unwrap_err(), KeyFileTooLarge(MAX_KEY_FILE + 1));
}

#[test]
fn debug_holds_no_key() {
    let dbg = format!("{:?}", account());
    assert!(dbg.contains("redacted") && dbg.contains("doorbell-test"));
    assert!(!dbg.contains("BEGIN") && !dbg.contains("MII"));
    assert_eq!(format!("{:?}", test_account()), "TestAccount(<redacted>)");
}

#[test]
fn the_assertion_is_what_google_checks() {
    let a = account();
    let jwt = a.assertion(NOW);
    let claims = sim::verify_assertion(&jwt, &test_account().public, EMAIL, TOKEN_URI, NOW).unwrap();
    assert_eq!(claims, sim::AssertionClaims { iss: EMAIL.into(), iat: NOW, exp: NOW + 3600 });
    let part = |i: usize| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt.split('.').nth(i).unwrap()).unwrap()).unwrap()
    };
    assert_eq!(
        part(0),
        serde_json::json!({"alg":"RS256","typ":"JWT","kid":"0123456789abcdef0123456789abcdef01234567"})
    );
    assert_eq!(part(1)["scope"], SCOPE);
    assert_eq!(part(1)["aud"], TOKEN_URI);
    assert_eq!(URL_SAFE_NO_PAD.decode(jwt.split('.').nth(2).unwrap()).unwrap().len(), 256);

    let body = a.token_request_body(NOW);
    assert!(body.starts_with("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=ey"));
    assert_eq!(sim::parse_token_request(body.as_bytes()).unwrap(), jwt);
}

#[test]
fn the_simulator_refuses_bad_assertions() {
    let a = account();
    let pk = &test_account().public;
    let jwt = a.assertion(NOW);
    let v = |j: &str, now| sim::verify_assertion(j, pk, EMAIL, TOKEN_URI, now);
    assert_eq!(v(&jwt, NOW + 3600), Err(SimError::Expired));
    assert_eq!(v(&jwt, NOW - 61), Err(SimError::NotYetValid));
    assert!(v(&jwt, NOW - 60).is_ok());
    assert_eq!(sim::verify_assertion(&jwt, pk, "x@y.z", TOKEN_URI, NOW), Err(SimError::Claim("iss")));
    assert_eq!(sim::verify_assertion(&jwt, pk, EMAIL, "https://elsewhere/token", NOW), Err(SimError::Claim("aud")));
    assert_eq!(v("a.b", NOW), Err(SimError::Malformed));
    assert_eq!(v(&format!("{jwt}.x"), NOW), Err(SimError::Malformed));
    let mut parts: Vec<String> = jwt.split('.').map(String::from).collect();
    parts[2] = URL_SAFE_NO_PAD.encode([0u8; 256]);
    assert_eq!(v(&parts.join("."), NOW), Err(SimError::Signature));
    parts[2] = "AAAA".into();
    assert_eq!(v(&parts.join("."), NOW), Err(SimError::Signature));
    parts[0] = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
    assert_eq!(v(&parts.join("."), NOW), Err(SimError::Algorithm));
    // A key the simulator did not issue.
    let other = RsaPrivateKey::new(&mut StdRng::seed_from_u64(9), 1024).unwrap().to_public_key();
    assert_eq!(sim::verify_assertion(&jwt, &other, EMAIL, TOKEN_URI, NOW), Err(SimError::Signature));

    assert_eq!(sim::parse_token_request(b"grant_type=password&assertion=x"), Err(SimError::GrantType));
    assert_eq!(
        sim::parse_token_request(b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"),
        Err(SimError::NoAssertion)
    );
}

#[test]
fn token_answers_and_the_refresh_rule() {
    let t = parse_token_response(&sim::token_response("ya29.c.abc", 3599), NOW).unwrap();
    assert_eq!(t.authorization(), "Bearer ya29.c.abc");
    assert_eq!(t.expires_at(), NOW + 3599);
    assert!(!t.needs_refresh(NOW));
    assert!(!t.needs_refresh(NOW + 3599 - 301));
    assert!(t.needs_refresh(NOW + 3599 - 300));
    assert!(t.needs_refresh(NOW + 5000));
    assert!(!format!("{t:?}").contains("ya29"));

    let p = |b: &str| parse_token_response(b.as_bytes(), NOW).unwrap_err().to_string();
    assert_eq!(p("nope"), "token endpoint answer: not JSON");
    assert_eq!(p(r#"{"expires_in":5}"#), "token endpoint answer: no access_token");
    assert_eq!(p(r#"{"access_token":"a","expires_in":"5"}"#), "token endpoint answer: no numeric expires_in");
    assert_eq!(p(r#"{"access_token":"a","expires_in":0}"#), "token endpoint answer: expires_in is 0");
    assert_eq!(p(r#"{"access_token":"a b","expires_in":5}"#), "token endpoint answer: access_token is not a token");
    assert_eq!(
        p(r#"{"access_token":"a","expires_in":5,"token_type":"MAC"}"#),
        "token endpoint answer: token_type is not Bearer"
    );

    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
    assert!(token_answer(200, None, &sim::token_response("t", 3600), now).is_ok());
    let refused =
        token_answer(400, None, br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#, now);
    match refused.unwrap_err() {
        Verdict::Failed { reason, status: 400, credentials: true } => {
            assert_eq!(reason, "token endpoint 400 invalid_grant: Invalid JWT Signature.")
        }
        v => panic!("{v:?}"),
    }
    assert!(matches!(token_answer(200, None, b"{}", now), Err(Verdict::Failed { credentials: true, .. })));
    assert!(
        matches!(token_answer(503, Some("9"), b"", now), Err(Verdict::Retry { after: Some(d), .. }) if d.as_secs() == 9)
    );
    assert!(matches!(token_answer(429, None, b"", now), Err(Verdict::Retry { after: None, .. })));
}

#[test]
fn registration_tokens_are_checked_at_the_door() {
    assert!(check_token(FCM_TOKEN).is_ok());
    assert_eq!(check_token("short"), Err(FcmError::Token("must be 16 to 4096 characters")));
    assert!(check_token(&"a".repeat(4097)).is_err());
    assert_eq!(check_token("abcdefghijklmnop\"q"), Err(FcmError::Token("has a character FCM tokens never hold")));
    assert!(check_token("abcdefghijklmnop q").is_err());
}

fn ring() -> RingMessage<'static> {
    RingMessage {
        doorbell_id: "front",
        doorbell_name: "Front \"door\"",
        ring_id: "r-7",
        ttl_secs: 297,
        channel_id: "doorbell",
        profile: &USUAL,
        answered_by: None,
    }
}

static USUAL: crate::domain::household::Profile = crate::domain::household::Profile {
    level: crate::domain::household::Level::TimeSensitive,
    sound: None,
    volume_milli: None,
};

/// A passive profile goes at normal priority without a sound; the answered replacement names
/// who is coming and carries no action; the usual one carries the "I'm coming" category.
#[test]
fn profiles_and_the_answered_replacement_shape_the_message() {
    let body = |m: &RingMessage<'_>| -> serde_json::Value {
        serde_json::from_slice(&MessageTemplate::new(m).body(FCM_TOKEN)).unwrap()
    };
    let usual = body(&ring());
    assert_eq!(usual["message"]["android"]["priority"], "HIGH");
    assert_eq!(usual["message"]["android"]["notification"]["sound"], "default");
    assert_eq!(usual["message"]["data"]["category"], crate::codec::apns_payload::RING_CATEGORY);
    let quiet = crate::domain::household::Profile::silent();
    let passive = body(&RingMessage { profile: &quiet, ..ring() });
    assert_eq!(passive["message"]["android"]["priority"], "NORMAL");
    assert!(passive["message"]["android"]["notification"].get("sound").is_none());
    assert_eq!(passive["message"]["android"]["notification"]["notification_priority"], "PRIORITY_LOW");
    let answered = body(&RingMessage { answered_by: Some("alice"), ..ring() });
    assert_eq!(answered["message"]["notification"]["body"], "alice is getting the door");
    assert_eq!(answered["message"]["data"]["answered_by"], "alice");
    assert!(answered["message"]["data"].get("category").is_none());
    assert_eq!(answered["message"]["android"]["collapse_key"], usual["message"]["android"]["collapse_key"]);
}

#[test]
fn the_send_body_has_what_fcm_and_the_phone_need() {
    let body = MessageTemplate::new(&ring()).body(FCM_TOKEN);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let m = &v["message"];
    assert_eq!(m["token"], FCM_TOKEN);
    assert_eq!(m["notification"]["title"], "Front \"door\"");
    assert_eq!(m["notification"]["body"], "Someone is at Front \"door\"");
    assert_eq!(
        m["data"],
        serde_json::json!({"doorbell": "front", "ring": "r-7", "level": "time-sensitive", "category": "DOORBELL_RING"})
    );
    assert_eq!(m["android"]["priority"], "HIGH");
    assert_eq!(m["android"]["ttl"], "297s");
    assert_eq!(m["android"]["collapse_key"], "doorbell-front");
    assert_eq!(m["android"]["notification"]["channel_id"], "doorbell");
    assert_eq!(m["android"]["notification"]["tag"], "doorbell-front");

    let seen = sim::parse_send(&body).unwrap();
    assert_eq!(seen.token, FCM_TOKEN);
    assert_eq!((seen.ttl_secs, seen.high_priority), (297, true));
    assert_eq!((seen.doorbell.as_str(), seen.ring.as_str()), ("front", "r-7"));
    assert_eq!(seen.collapse_key.as_deref(), Some("doorbell-front"));
    // One template serves every phone; only the token differs.
    let t = MessageTemplate::new(&ring());
    assert_eq!(sim::parse_send(&t.body("another-token-0123456789")).unwrap().token, "another-token-0123456789");
    // Names and ids cannot break out of their strings.
    let evil = RingMessage { doorbell_name: r#"x","token":"stolen"}}"#, doorbell_id: "a\"b", ..ring() };
    let v: Value = serde_json::from_slice(&MessageTemplate::new(&evil).body(FCM_TOKEN)).unwrap();
    assert_eq!(v["message"]["token"], FCM_TOKEN);
    assert_eq!(v["message"]["notification"]["title"], r#"x","token":"stolen"}}"#);
    assert_eq!(v["message"]["data"]["doorbell"], "a\"b");
}

#[test]
fn the_simulator_refuses_bad_send_bodies() {
    let s = |b: &str| sim::parse_send(b.as_bytes()).unwrap_err();
    assert_eq!(s("{"), SimError::Send("not JSON"));
    assert_eq!(s(r#"{"message":{}}"#), SimError::Send("no message.token"));
    assert_eq!(s(r#"{"message":{"token":"x"}}"#), SimError::Send("message.token is not a registration token"));
    let tok = FCM_TOKEN;
    assert!(matches!(
        sim::parse_send(format!(r#"{{"message":{{"token":"{tok}","android":{{"priority":"urgent"}}}}}}"#).as_bytes()),
        Err(SimError::Send(_))
    ));
    assert!(matches!(
        sim::parse_send(format!(r#"{{"message":{{"token":"{tok}","android":{{"ttl":"297"}}}}}}"#).as_bytes()),
        Err(SimError::Send(_))
    ));
    assert!(matches!(
        sim::parse_send(format!(r#"{{"message":{{"token":"{tok}","data":{{"n":1}}}}}}"#).as_bytes()),
        Err(SimError::Send(_))
    ));
    let lower = sim::parse_send(
        format!(r#"{{"message":{{"token":"{tok}","android":{{"priority":"high","ttl":"3.5s"}}}}}}"#).as_bytes(),
    )
    .unwrap();
    assert_eq!((lower.high_priority, lower.ttl_secs), (true, 3));
    assert_eq!(sim::bearer("Bearer ya29.x"), Some("ya29.x"));
    assert_eq!(sim::bearer("bearer  t "), Some("t"));
    assert_eq!(sim::bearer("Basic x"), None);
    assert_eq!(sim::bearer("Bearer "), None);
}

fn classify_at(status: u16, retry_after: Option<&str>, body: &[u8]) -> Verdict {
    classify(status, retry_after, body, SystemTime::UNIX_EPOCH + Duration::from_secs(NOW))
}

#[test]
fn answers_become_verdicts() {
    let e = |status, code, msg| sim::error_body(status, code, msg);
    assert_eq!(classify_at(200, None, br#"{"name":"projects/p/messages/1"}"#), Verdict::Delivered);
    assert_eq!(
        classify_at(404, None, &e(404, Some("UNREGISTERED"), "Requested entity was not found.")),
        Verdict::Prune { reason: "404 UNREGISTERED: Requested entity was not found.".into() }
    );
    let invalid_token =
        e(400, Some("INVALID_ARGUMENT"), "The registration token is not a valid FCM registration token");
    assert!(matches!(classify_at(400, None, &invalid_token), Verdict::Prune { .. }));
    let field = br#"{"error":{"code":400,"message":"Invalid value","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"message.token","description":"Invalid registration token"}]}]}}"#;
    assert!(matches!(classify_at(400, None, field), Verdict::Prune { .. }));
    // An invalid argument about our message is not the phone's fault.
    let ttl = e(400, Some("INVALID_ARGUMENT"), "Invalid value at 'message.android.ttl'");
    assert!(matches!(classify_at(400, None, &ttl), Verdict::Failed { status: 400, credentials: false, .. }));
    assert!(matches!(classify_at(400, None, b"garbage"), Verdict::Failed { status: 400, credentials: false, .. }));

    assert_eq!(
        classify_at(401, None, &e(401, None, "Request had invalid authentication credentials.")),
        Verdict::RefreshAuth
    );
    assert!(matches!(
        classify_at(401, None, &e(401, Some("THIRD_PARTY_AUTH_ERROR"), "")),
        Verdict::Failed { credentials: false, .. }
    ));
    for code in ["SENDER_ID_MISMATCH", "PERMISSION_DENIED"] {
        assert!(matches!(
            classify_at(403, None, &e(403, Some(code), "")),
            Verdict::Failed { status: 403, credentials: true, .. }
        ));
    }
    assert!(matches!(classify_at(403, None, b""), Verdict::Failed { credentials: true, .. }));
    assert!(matches!(
        classify_at(404, None, &e(404, None, "Project not found")),
        Verdict::Failed { credentials: true, .. }
    ));

    match classify_at(429, Some("17"), &e(429, Some("QUOTA_EXCEEDED"), "quota")) {
        Verdict::Retry { after, reason } => {
            assert_eq!(after, Some(Duration::from_secs(17)));
            assert_eq!(reason, "429 QUOTA_EXCEEDED: quota");
        }
        v => panic!("{v:?}"),
    }
    assert!(matches!(classify_at(500, None, &e(500, Some("INTERNAL"), "")), Verdict::Retry { after: None, .. }));
    assert!(matches!(
        classify_at(503, Some("Wed, 21 Oct 2015 07:28:00 GMT"), &e(503, Some("UNAVAILABLE"), "")),
        Verdict::Retry { after: Some(Duration::ZERO), .. }
    ));
    assert!(matches!(classify_at(502, None, b"<html>"), Verdict::Retry { .. }));
    assert!(matches!(classify_at(418, None, b""), Verdict::Failed { status: 418, credentials: false, .. }));
}

#[test]
fn reasons_are_one_short_line() {
    let long = format!("bad\nthing {}", "x".repeat(5000));
    match classify_at(400, None, &sim::error_body(400, None, &long)) {
        Verdict::Failed { reason, .. } => {
            assert!(!reason.contains('\n') && reason.len() < 260, "{reason}");
            assert!(reason.starts_with("400 INVALID_ARGUMENT: bad thing"));
        }
        v => panic!("{v:?}"),
    }
}
