//! The service with a real store and the reference phone's state machine, without a broker:
//! whole exchanges, what is stored, and what goes back.

use super::*;
use crate::codec::pairing::pake::phone::{self, AwaitingDone, AwaitingOffer};
use crate::codec::pairing::pake::wire::{parse_finish, parse_request};
use crate::codec::pairing::pake::{Code, PakeError};
use crate::codec::pairing::wire::parse_signed;
use crate::store::pairing::Opener;
use crate::store::Store;

const P: &str = "dingdong/gw-test";
const BUNDLE: &str = "com.example.doorbell";

struct Setup {
    _dir: tempfile::TempDir,
    store: StoreHandle,
    pairing: Pairing,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("d.db")).unwrap();
    s.add_user("alice").unwrap();
    s.add_doorbell("front", Some("Front door"), "alice").unwrap();
    let store = StoreHandle::spawn(s);
    let settings = Settings {
        topic_prefix: P.into(),
        bundle_id: BUNDLE.into(),
        button_user: "household".into(),
        code_file: dir.path().join("pair-code.json"),
        limits: Limits::default(),
    };
    Setup { pairing: Pairing::new(store.clone(), settings), store, _dir: dir }
}

fn apns(token: &str, topic: &str) -> Registration {
    Registration {
        push: Push::Apns { token: token.into(), environment: Environment::Production, topic: topic.into() },
        name: Some("Ann's iPhone".into()),
    }
}

async fn open(s: &Setup, user: &str, share: Option<&str>) -> Code {
    let (user, share) = (user.to_string(), share.map(str::to_string));
    s.store
        .run(move |st| st.open_pair_window(&user, share.as_deref(), 5, Opener::Cli, crate::domain::now_ms()))
        .await
        .unwrap()
        .code
}

/// Request and offer: the phone typed `code`.
async fn offered(s: &Setup, code: &Code, reg: &Registration) -> (AwaitingOffer, Reply) {
    let (phone, request) = phone::start(code, P, reg, &mut OsRng).unwrap();
    let reply = s.pairing.pair_request(parse_request(request.as_bytes())).await.unwrap();
    assert_eq!(reply.suffix, format!("pair/response/{}", phone.request_id()));
    (phone, reply)
}

/// The whole exchange; the done state and the gateway's last reply.
async fn exchange(s: &Setup, code: &Code, reg: &Registration) -> (AwaitingDone, Reply) {
    let (phone, offer) = offered(s, code, reg).await;
    let (done, finish) = phone.on_offer(offer.payload.as_bytes()).unwrap();
    let reply = s.pairing.pair_finish(parse_finish(finish.as_bytes())).await.unwrap();
    (done, reply)
}

fn error_of(reply: &Reply) -> String {
    let v: serde_json::Value = serde_json::from_str(&reply.payload).unwrap();
    v["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_phone_pairs_and_both_sides_hold_the_same_secret() {
    let s = setup();
    let code = open(&s, "carol", Some("front")).await;
    let (done, reply) = exchange(&s, &code, &apns(&"a1".repeat(32), BUNDLE)).await;
    let paired = done.on_done(reply.payload.as_bytes()).unwrap();
    assert_eq!((paired.user.as_str(), paired.doorbells[0].id.as_str()), ("carol", "front"));
    let id = paired.phone_id;
    let stored: Vec<u8> = s
        .store
        .run(move |st| {
            Ok(st.conn().query_row("SELECT secret FROM phone_secrets WHERE phone_id = ?1", [id], |r| r.get(0))?)
        })
        .await
        .unwrap();
    assert_eq!(stored, paired.secret.expose().to_vec());
    // The done reply carries neither secret nor token nor code.
    for needle in [hex::encode(paired.secret.expose()), "a1".repeat(32), code.reveal().to_string()] {
        assert!(!reply.payload.contains(&needle));
    }
    // A finish is judged once: replayed, it finds no exchange.
    open(&s, "alice", None).await;
    let (phone, offer) = offered(&s, &code, &apns(&"a2".repeat(32), BUNDLE)).await;
    let (_, finish) = phone.on_offer(offer.payload.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let first = s.pairing.pair_finish(parse_finish(finish.as_bytes())).await.unwrap();
    let again = s.pairing.pair_finish(parse_finish(finish.as_bytes())).await.unwrap();
    assert_eq!((error_of(&first), error_of(&again)), ("invalid_code".into(), "bad_request".into()));
}

#[tokio::test]
async fn no_window_no_guess_and_a_duplicate_request_is_not_answered() {
    let s = setup();
    let code = Code::parse("12345678").unwrap();
    let (phone, request) = phone::start(&code, P, &apns(&"a1".repeat(32), BUNDLE), &mut OsRng).unwrap();
    let reply = s.pairing.pair_request(parse_request(request.as_bytes())).await.unwrap();
    assert!(
        matches!(phone.on_offer(reply.payload.as_bytes()), Err(PakeError::Refused { error, .. }) if error == "invalid_code")
    );
    open(&s, "alice", None).await;
    assert!(s.pairing.pair_request(parse_request(request.as_bytes())).await.is_some());
    assert!(s.pairing.pair_request(parse_request(request.as_bytes())).await.is_none(), "in progress: silent");
}

#[tokio::test]
async fn a_wrong_code_counts_once_per_window_and_another_app_is_refused() {
    let s = setup();
    let code = open(&s, "alice", None).await;
    let wrong = Code::parse(if code.reveal() == "00000000" { "00000001" } else { "00000000" }).unwrap();
    let (done, reply) = exchange(&s, &wrong, &apns(&"a1".repeat(32), BUNDLE)).await;
    assert_eq!(error_of(&reply), "invalid_code");
    assert!(matches!(done.on_done(reply.payload.as_bytes()), Err(PakeError::Refused { .. })));
    let attempts: u32 = s
        .store
        .run(|st| {
            Ok(st.conn().query_row("SELECT attempts FROM pair_windows WHERE state = 'open'", [], |r| r.get(0))?)
        })
        .await
        .unwrap();
    assert_eq!(attempts, 1);
    // The right code with another app's bundle id: refused, nothing counted, window still open.
    let (_, reply) = exchange(&s, &code, &apns(&"a1".repeat(32), "com.other.app")).await;
    assert_eq!(error_of(&reply), "bad_request");
    assert!(reply.payload.contains("topic"));
    let (done, reply) = exchange(&s, &code, &apns(&"a1".repeat(32), BUNDLE)).await;
    assert!(done.on_done(reply.payload.as_bytes()).is_ok());
}

#[tokio::test]
async fn a_revoked_share_is_refused_after_the_code_is_proved() {
    let s = setup();
    let code = open(&s, "carol", Some("front")).await;
    let (phone, offer) = offered(&s, &code, &apns(&"a1".repeat(32), BUNDLE)).await;
    s.store.run(|st| st.unshare("front", "carol")).await.unwrap();
    let (_, finish) = phone.on_offer(offer.payload.as_bytes()).unwrap();
    let reply = s.pairing.pair_finish(parse_finish(finish.as_bytes())).await.unwrap();
    // The window was revoked by the unshare: nothing is judged against it any more.
    assert_eq!(error_of(&reply), "invalid_code");
    let phones = s.store.run(|st| st.list_phones()).await.unwrap();
    assert!(phones.is_empty());
}

#[tokio::test]
async fn a_share_code_travels_sealed_to_the_phone_that_asked() {
    let s = setup();
    let code = open(&s, "alice", None).await;
    let (done, reply) = exchange(&s, &code, &apns(&"a1".repeat(32), BUNDLE)).await;
    let paired = done.on_done(reply.payload.as_bytes()).unwrap();
    let action = Action::ShareCode { user: "guest".into(), doorbell: "front".into(), minutes: 10 };
    let now = crate::domain::now_ms();
    let req = SignedRequest::signed(paired.phone_id, paired.secret.expose(), action, "sc-1", now, "0123456789abcdef");
    let parsed = parse_signed(paired.phone_id, "share-code", req.encode().as_bytes());
    let reply = s.pairing.phone_request(paired.phone_id, parsed).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&reply.payload).unwrap();
    assert_eq!((v["ok"].as_bool(), v["user"].as_str(), v.get("code")), (Some(true), Some("guest"), None), "{v}");
    let sealed = v["sealed_code"].as_str().unwrap();
    let guest = share::open_code(paired.secret.expose(), paired.phone_id, "sc-1", sealed).unwrap();
    assert!(!reply.payload.contains(guest.reveal()));
    // The guest pairs with it.
    let (done, reply) = exchange(&s, &guest, &apns(&"b2".repeat(32), BUNDLE)).await;
    assert_eq!(done.on_done(reply.payload.as_bytes()).unwrap().user, "guest");
}
