use super::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

// A TEST KEY, generated for these tests with `openssl ecparam -name prime256v1 -genkey`; it
// protects nothing. The same key as PKCS#8 (`openssl pkey`), and its public key as openssl
// printed it (base64url of the uncompressed point).
const TEST_SEC1: &str = "-----BEGIN EC PARAMETERS-----
BggqhkjOPQMBBw==
-----END EC PARAMETERS-----
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIAp8OLkl0IAIcjKZrMhZngSF8lW0PdqSZW3B4EpXM+2RoAoGCCqGSM49
AwEHoUQDQgAE9BfeUuyQ9gvgVtehlW9vT4XcKNy+oZJUdpXMXzjjFNEMnaVpiqme
KFd681jebuZouPCVZjjc4U913rMBzS58uw==
-----END EC PRIVATE KEY-----
";
const TEST_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgCnw4uSXQgAhyMpms
yFmeBIXyVbQ92pJlbcHgSlcz7ZGhRANCAAT0F95S7JD2C+BW16GVb29Phdwo3L6h
klR2lcxfOOMU0QydpWmKqZ4oV3rzWN5u5mi48JVmONzhT3XeswHNLny7
-----END PRIVATE KEY-----
";
const TEST_PUBLIC: &str = "BPQX3lLskPYL4FbXoZVvb0-F3CjcvqGSVHaVzF844xTRDJ2laYqpnihXevNY3m7maLjwlWY43OFPdd6zAc0ufLs";

const AUD: &str = "https://push.example.net";
const NOW: u64 = 1_700_000_000;

fn key() -> VapidKey {
    VapidKey::from_pem(TEST_PKCS8).unwrap()
}

fn sub() -> Subject {
    Subject::parse("mailto:ops@example.com").unwrap()
}

#[test]
fn loads_sec1_with_parameters_and_pkcs8_to_the_same_public_key() {
    let a = VapidKey::from_pem(TEST_SEC1).unwrap();
    let b = VapidKey::from_pem(TEST_PKCS8).unwrap();
    assert_eq!(a.public_key_b64(), TEST_PUBLIC);
    assert_eq!(b.public_key_b64(), TEST_PUBLIC);
    assert_eq!(TEST_PUBLIC.len(), 87);
}

#[test]
fn generated_keys_round_trip_through_pem() {
    let k = VapidKey::generate(&mut StdRng::seed_from_u64(1));
    let pem = k.to_pem();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(VapidKey::from_pem(&pem).unwrap().public_key_b64(), k.public_key_b64());
}

#[test]
fn bad_key_files_are_named_errors() {
    assert_eq!(VapidKey::from_pem("").unwrap_err(), VapidError::NotPem);
    assert_eq!(VapidKey::from_pem("hello").unwrap_err(), VapidError::NotPem);
    let big = "x".repeat(MAX_KEY_FILE + 1);
    assert_eq!(VapidKey::from_pem(&big).unwrap_err(), VapidError::KeyTooLarge(MAX_KEY_FILE + 1));
    let enc = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
    assert_eq!(VapidKey::from_pem(enc).unwrap_err(), VapidError::KeyEncrypted);
    let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    assert_eq!(VapidKey::from_pem(garbage).unwrap_err(), VapidError::BadKey("PRIVATE KEY"));
    let truncated = TEST_SEC1.replace("KFd681jebuZouPCVZjjc4U913rMBzS58uw==\n", "");
    assert_eq!(VapidKey::from_pem(&truncated).unwrap_err(), VapidError::BadKey("EC PRIVATE KEY"));
    // An RSA key in PKCS#8 is not a P-256 key.
    let account: serde_json::Value =
        serde_json::from_str(&crate::codec::push::fcm::tests::test_account().json).unwrap();
    let rsa = account["private_key"].as_str().unwrap();
    assert_eq!(VapidKey::from_pem(rsa).unwrap_err(), VapidError::BadKey("PRIVATE KEY"));
}

#[test]
fn debug_shows_the_public_key_only() {
    let dbg = format!("{:?}", key());
    assert!(dbg.contains(TEST_PUBLIC) && dbg.contains("redacted"));
    assert!(!dbg.contains("MIGHAgEA"));
}

#[test]
fn subjects_are_mailto_or_https_as_apple_accepts_them() {
    for ok in [
        "mailto:ops@example.com",
        "mailto:a.b+c@mail.example.co.uk",
        "https://example.com",
        "https://example.com/contact",
    ] {
        assert_eq!(Subject::parse(ok).unwrap().as_str(), ok);
    }
    for bad in [
        "",
        "ops@example.com",
        "mailto:",
        "mailto:ops",
        "mailto: ops@example.com",
        "mailto:<ops@example.com>",
        "mailto:@example.com",
        "mailto:ops@localhost",
        "mailto:ops@gateway.local",
        "mailto:a@b@example.com",
        "http://example.com",
        "https://",
        "https://localhost/x",
        "https://user@example.com",
    ] {
        let err = Subject::parse(bad).unwrap_err().to_string();
        assert!(err.starts_with("VAPID subject") && !err.contains('\n'), "{bad}: {err}");
    }
    assert!(Subject::parse(&format!("mailto:{}@example.com", "a".repeat(300))).is_err());
}

#[test]
fn the_audience_is_the_endpoint_origin() {
    assert_eq!(audience("https://fcm.googleapis.com/fcm/send/abc:def").unwrap(), "https://fcm.googleapis.com");
    assert_eq!(
        audience("https://Updates.Push.Services.Mozilla.com/wpush/v2/x").unwrap(),
        "https://updates.push.services.mozilla.com"
    );
    assert_eq!(audience("https://web.push.apple.com:443/Q").unwrap(), "https://web.push.apple.com");
    assert_eq!(audience("https://127.0.0.1:8443/push/1").unwrap(), "https://127.0.0.1:8443");
    assert_eq!(audience("https://[::1]:9000/p").unwrap(), "https://[::1]:9000");
    for bad in ["http://push.example.net/x", "push.example.net/x", "", "https:///x", "https://u:p@push.example.net/x"] {
        assert_eq!(audience(bad), Err(VapidError::Audience), "{bad}");
    }
}

#[test]
fn the_token_verifies_with_the_public_key_and_carries_the_claims() {
    let header = key().authorization(AUD, &sub(), NOW + 3600);
    assert!(header.starts_with("vapid t=ey") && header.ends_with(&format!(", k={TEST_PUBLIC}")));
    let v = verify_authorization(&header, AUD, NOW).unwrap();
    assert_eq!(v.subject, "mailto:ops@example.com");
    assert_eq!(v.exp, NOW + 3600);
    assert_eq!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.public_key), TEST_PUBLIC);
    let token = key().token(AUD, &sub(), NOW + 3600);
    let header_json = URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
    assert_eq!(header_json, br#"{"typ":"JWT","alg":"ES256"}"#);
}

#[test]
fn verification_refuses_each_kind_of_bad_header() {
    let k = key();
    let good = k.authorization(AUD, &sub(), NOW + 3600);
    let token = k.token(AUD, &sub(), NOW + 3600);
    let v = |h: &str| verify_authorization(h, AUD, NOW);
    assert_eq!(v(&good.replacen("vapid", "VAPID", 1)).map(|x| x.exp), Ok(NOW + 3600));
    assert_eq!(v(&format!("vapid k=\"{TEST_PUBLIC}\",t={token}")).map(|x| x.exp), Ok(NOW + 3600));
    assert_eq!(v(&format!("WebPush {token}")), Err(VerifyError::NotVapid));
    assert_eq!(v(&format!("Bearer {token}")), Err(VerifyError::NotVapid));
    assert_eq!(v(&format!("vapid k={TEST_PUBLIC}")), Err(VerifyError::MissingToken));
    assert_eq!(v(&format!("vapid t={token}")), Err(VerifyError::MissingKey));
    assert_eq!(v(&format!("vapid t={token}, t={token}, k={TEST_PUBLIC}")), Err(VerifyError::BadParameter));
    assert_eq!(v(&format!("vapid t={token}, k=AAAA")), Err(VerifyError::BadKey));
    assert_eq!(v(&format!("vapid t={token}, k=!!")), Err(VerifyError::BadKey));
    assert_eq!(v(&format!("vapid t=abc.def, k={TEST_PUBLIC}")), Err(VerifyError::Malformed));
    assert_eq!(v(&format!("vapid t={token}.x, k={TEST_PUBLIC}")), Err(VerifyError::Malformed));

    // Someone else's key, or a claim changed after signing.
    let other = VapidKey::generate(&mut StdRng::seed_from_u64(2));
    assert_eq!(v(&format!("vapid t={token}, k={}", other.public_key_b64())), Err(VerifyError::Signature));
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    parts[1] =
        URL_SAFE_NO_PAD.encode(format!(r#"{{"aud":"{AUD}","exp":{},"sub":"mailto:ops@example.com"}}"#, NOW + 7200));
    assert_eq!(v(&format!("vapid t={}, k={TEST_PUBLIC}", parts.join("."))), Err(VerifyError::Signature));
    parts[0] = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"none"}"#);
    assert_eq!(v(&format!("vapid t={}, k={TEST_PUBLIC}", parts.join("."))), Err(VerifyError::Algorithm("none".into())));

    // Signed, but the claims are wrong.
    let aud = k.authorization("https://elsewhere.example", &sub(), NOW + 60);
    assert!(matches!(v(&aud), Err(VerifyError::Audience { .. })));
    assert_eq!(v(&k.authorization(AUD, &sub(), NOW)), Err(VerifyError::Expired(0)));
    assert_eq!(v(&k.authorization(AUD, &sub(), NOW - 10)), Err(VerifyError::Expired(10)));
    assert_eq!(v(&k.authorization(AUD, &sub(), NOW + 86_400)).map(|x| x.exp), Ok(NOW + 86_400));
    assert_eq!(v(&k.authorization(AUD, &sub(), NOW + 86_401)), Err(VerifyError::TooFarAhead(86_401)));
    let bad_sub = Subject("mailto: <ops@example.com>".into());
    assert_eq!(v(&k.authorization(AUD, &bad_sub, NOW + 60)), Err(VerifyError::Subject));
    for e in [VerifyError::TooFarAhead(1), VerifyError::Signature, VerifyError::NotVapid] {
        assert!(!e.to_string().contains('\n'));
    }
}

#[test]
fn the_cache_reuses_a_token_per_audience_until_an_hour_is_left() {
    assert!(reusable(NOW, NOW + RENEW_BEFORE + 1));
    assert!(!reusable(NOW, NOW + RENEW_BEFORE));
    assert!(!reusable(NOW, NOW - 5));
    assert!(!reusable(u64::MAX - 1, u64::MAX));

    let (k, s) = (key(), sub());
    let mut cache = TokenCache::new();
    let a1 = cache.authorization(&k, &s, AUD, NOW);
    assert_eq!(cache.authorization(&k, &s, AUD, NOW + 60), a1);
    let other = cache.authorization(&k, &s, "https://other.example", NOW + 60);
    assert_ne!(other, a1);
    assert_eq!(cache.len(), 2);
    // Still reused with just over an hour left; renewed at an hour.
    let late = NOW + TOKEN_LIFETIME - RENEW_BEFORE - 1;
    assert_eq!(cache.authorization(&k, &s, AUD, late), a1);
    let renewed = cache.authorization(&k, &s, AUD, late + 1);
    assert_ne!(renewed, a1);
    let v = verify_authorization(renewed.to_str().unwrap(), AUD, late + 1).unwrap();
    assert_eq!(v.exp, late + 1 + TOKEN_LIFETIME);
    assert!(!format!("{cache:?}").contains("t="));
}

#[test]
fn the_cache_stays_bounded() {
    let (k, s) = (key(), sub());
    let mut cache = TokenCache::new();
    for i in 0..(MAX_CACHED_AUDIENCES * 2 + 3) {
        cache.authorization(&k, &s, &format!("https://p{i}.example"), NOW);
        assert!(cache.len() <= MAX_CACHED_AUDIENCES);
    }
}
