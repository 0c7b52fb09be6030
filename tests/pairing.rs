//! Pairing (v2, SPAKE2) and signed phone requests through real parts: mosquitto, the
//! `dingdong` binary as the daemon (logging at `trace`) and as the reference phone
//! (`dingdong phone-sim`), its SQLite file, and the built-in APNs simulator counting
//! deliveries. Every reply is awaited on the broker or from the phone's exit; nothing sleeps to
//! synchronise. Each test ends with the log check: no code, secret, key or whole token in any
//! line the daemon or the phone logged.

mod pairing_util;
mod util;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use dingdong::codec::pairing::pake::budget;
use dingdong::codec::pairing::pake::gateway::{self, OfferWindow, OpenWindow};
use dingdong::codec::pairing::pake::phone;
use dingdong::codec::pairing::pake::registration::{Push, Registration};
use dingdong::codec::pairing::pake::wire::{self as pake_wire, Done};
use dingdong::codec::pairing::pake::{Code, PakeError};
use dingdong::codec::pairing::wire::{Action, SignedRequest};
use dingdong::domain::Environment;
use pairing_util::*;
use rand::rngs::OsRng;
use rand::RngCore;
use serde_json::{json, Value};
use util::*;

fn replace(token: &str) -> Action {
    Action::ReplaceToken { token: token.into(), environment: Environment::Production }
}

/// A request signed by hand (as a stranger or a buggy app would), as published.
fn signed(phone_id: i64, key: &[u8], action: Action, rid: &str, ts: i64) -> Vec<u8> {
    SignedRequest::signed(phone_id, key, action, rid, ts, &nonce()).encode().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_pairs_with_the_reference_phone_appears_in_phone_list_and_rings() {
    let mut h = home().await;
    let t = token(100);
    for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        // Five pairings of one phone (again and again: same phone id) to measure the time.
        let code = h.open("alice", &[]);
        let (exit, v) = h.pair(name, &code, &t, &["--name", "Ann's iPhone"]).await;
        assert_eq!(exit, 0, "{v}");
        assert_eq!((v["user"].as_str(), v["platform"].as_str()), (Some("alice"), Some("apns")));
        assert_eq!(v["doorbells"], json!([{"id": "front", "name": "Front door"}]));
        if i > 0 {
            assert_eq!(h.phone(name).id, h.phone("a").id, "pairing again keeps the phone id");
        }
    }
    let mut ms = h.pairing_ms.clone();
    ms.sort_by(f64::total_cmp);
    println!(
        "pairing time (phone-sim, request to stored secret): median {:.1} ms, max {:.1} ms over {}",
        ms[2],
        ms[4],
        ms.len()
    );
    let list = h.phones();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0]["user"].as_str(), list[0]["token"].as_str()), (Some("alice"), Some(t.as_str())));
    assert_eq!((list[0]["platform"].as_str(), list[0]["name"].as_str()), (Some("apns"), Some("Ann's iPhone")));
    let short = ok(&h.cfg, &["phone", "list"]);
    assert!(short.contains(&t[..8]) && !short.contains(&t) && short.contains("PLATFORM"), "{short}");
    let outcome = h.press("front").await;
    assert_eq!(outcome["delivered"].as_i64(), Some(1), "{outcome}");
    assert_eq!(h.sim.state.counts().get(&t), Some(&1));
    // The phone's secret works for signed requests: the last pairing's.
    let p = h.phone("e");
    let r =
        h.phone_raw(p.id, "token", &signed(p.id, &p.secret, replace(&t), "check", dingdong::domain::now_ms())).await;
    assert_eq!(r["ok"], true, "{r}");
    // Valid once: a used code reads like a wrong one.
    let code = h.codes.last().unwrap().clone();
    let (exit, v) = h.pair("f", &code, &token(101), &[]).await;
    assert_eq!((exit, v["error"].as_str()), (1, Some("invalid_code")), "{v}");
    assert!(!h.state_path("f").exists());
    let log = h.finish();
    assert!(log.contains("phone paired") && log.contains(&t[..8]), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_and_web_push_phones_pair_and_are_kept() {
    let mut h = home().await;
    let code = h.open("alice", &[]);
    let state = h.state_path("pixel");
    let (exit, v) = h
        .phone_sim(&[
            "pair",
            "--code",
            &code,
            "--fcm",
            "dXk:APA91bFcmToken-0123_456",
            "--state",
            state.to_str().unwrap(),
        ])
        .await;
    assert_eq!((exit, v["platform"].as_str()), (0, Some("fcm")), "{v}");
    let point = {
        let g = p256::PublicKey::from_affine(p256::AffinePoint::GENERATOR).unwrap();
        URL_SAFE_NO_PAD.encode(p256::EncodedPoint::from(g).as_bytes())
    };
    let sub = json!({"endpoint": "https://push.example.net/wpush/v2/gAAAAABkSecretPath", "expirationTime": null,
        "keys": {"p256dh": point, "auth": URL_SAFE_NO_PAD.encode([7u8; 16])}});
    let file = h.dir.join("subscription.json");
    std::fs::write(&file, sub.to_string()).unwrap();
    let code = h.open("alice", &[]);
    let state = h.state_path("firefox");
    let args = ["pair", "--code", &code, "--webpush", file.to_str().unwrap(), "--state", state.to_str().unwrap()];
    let (exit, v) = h.phone_sim(&args).await;
    assert_eq!((exit, v["platform"].as_str()), (0, Some("webpush")), "{v}");
    let platforms: Vec<String> = h.phones().iter().map(|p| p["platform"].as_str().unwrap().to_string()).collect();
    assert_eq!(platforms, ["fcm", "webpush"]);
    let short = ok(&h.cfg, &["phone", "list"]);
    assert!(short.contains("push.example.net/…") && !short.contains("SecretPath"), "{short}");
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_eavesdropper_sees_every_message_and_cannot_sign_a_request() {
    let mut h = home().await;
    let mut eve = Observer::connect(h.broker.port, &["#"]).await;
    let code = h.open("alice", &[]);
    let t1 = token(110);
    let a = h.paired("alice", &code, &t1).await;
    // The phone then replaces its token once: Eve sees a signed request too.
    let t2 = token(111);
    h.secrets.push(t2.clone());
    assert_eq!(h.signed("alice", &["token", &t2]).await.0, 0);
    let reply_topic = format!("{PREFIX}/phone-response/{}", a.id);
    let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
    eve.wait_for(|t, p| {
        seen.push((t.to_string(), p.to_vec()));
        (t == reply_topic).then_some(())
    })
    .await;
    let topics: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    for step in ["/pair/request", "/pair/response/", "/pair/finish", "/token"] {
        assert!(topics.iter().any(|t| t.contains(step)), "Eve saw {step}: {topics:?}");
    }
    // Neither the code, nor the secret, nor the registered token, in any form.
    let secret_forms: Vec<Vec<u8>> = vec![
        a.secret.clone(),
        hex::encode(&a.secret).into_bytes(),
        URL_SAFE_NO_PAD.encode(&a.secret).into_bytes(),
        hex::decode(&t1).unwrap(),
        t1.clone().into_bytes(),
        code.clone().into_bytes(),
        format!("{} {}", &code[..4], &code[4..]).into_bytes(),
    ];
    for (topic, payload) in &seen {
        for needle in &secret_forms {
            assert!(!payload.windows(needle.len()).any(|w| w == &needle[..]), "found in {topic}");
        }
    }
    // Everything Eve saw, tried as the key of a request that moves the phone to her token.
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for (_, payload) in &seen {
        keys.push(payload.clone());
        if let Ok(v) = serde_json::from_slice::<Value>(payload) {
            strings(&v, &mut |s| {
                keys.push(s.as_bytes().to_vec());
                keys.extend(hex::decode(s).ok());
                keys.extend(URL_SAFE_NO_PAD.decode(s).ok());
            });
        }
    }
    keys.sort();
    keys.dedup();
    let eve_token = token(666);
    let now = dingdong::domain::now_ms();
    for (i, key) in keys.iter().enumerate() {
        let body = signed(a.id, key, replace(&eve_token), &format!("eve-{i}"), now);
        let r = h.phone_raw(a.id, "token", &body).await;
        assert_eq!(r["error"], "unauthorized", "{r}");
    }
    println!("the eavesdropper saw {} messages and tried {} keys: all refused", seen.len(), keys.len());
    // Replaying the phone's own signed request gets her nowhere either.
    let captured = seen.iter().find(|(t, _)| t.ends_with("/token")).unwrap().1.clone();
    assert_eq!(h.phone_raw(a.id, "token", &captured).await["error"], "replayed");
    // The owner's phone still rings, and only it.
    assert_eq!(h.phones()[0]["token"].as_str(), Some(t2.as_str()));
    let outcome = h.press("front").await;
    assert_eq!(outcome["delivered"].as_i64(), Some(1), "{outcome}");
    assert_eq!((h.sim.state.counts().get(&t2), h.sim.state.counts().get(&eve_token)), (Some(&1), None));
    h.finish();
}

/// Calls `f` with every string in `v`.
fn strings(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| strings(x, f)),
        Value::Object(m) => m.values().for_each(|x| strings(x, f)),
        _ => {}
    }
}

/// A stranger that answers a phone's pairing in the gateway's place, guessing `guess`: its
/// offer, then the best done reply it can make. Returns the phone's finish as it saw it.
async fn man_in_the_middle(obs: &mut Observer, guess: &str) -> Vec<u8> {
    let request_topic = format!("{PREFIX}/pair/request");
    let payload = obs.wait_for(|t, p| (t == request_topic).then(|| p.to_vec())).await;
    let request = pake_wire::parse_request(&payload).unwrap();
    let code = Code::parse(guess).unwrap();
    let now = dingdong::domain::now_ms();
    let (pending, offer) =
        gateway::offer(PREFIX, &request, &[OfferWindow { id: 1, code: &code }], now, &mut OsRng).unwrap();
    let reply_topic = format!("{PREFIX}/pair/response/{}", request.request_id);
    obs.publish(&reply_topic, offer.as_bytes()).await;
    let finish_topic = format!("{PREFIX}/pair/finish");
    let finish = obs.wait_for(|t, p| (t == finish_topic).then(|| p.to_vec())).await;
    let parsed = pake_wire::parse_finish(&finish).unwrap();
    // The phone's proof does not check out against the stranger's guess...
    assert!(pending.judge(&parsed, &[OpenWindow { id: 1, attempts: 0 }], budget::room(0)).is_err());
    // ... and without the code it cannot make a confirmation the phone accepts.
    let mut confirm = [0u8; 32];
    OsRng.fill_bytes(&mut confirm);
    let mut sealed = vec![0u8; 80];
    OsRng.fill_bytes(&mut sealed);
    let reference = parsed.proofs[0].reference.clone();
    let done = pake_wire::encode_done(&Done { request_id: request.request_id.clone(), reference, confirm, sealed });
    obs.publish(&reply_topic, done.as_bytes()).await;
    finish
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_man_in_the_middle_is_refused_by_the_phone() {
    let mut h = home().await;
    let code = h.open("alice", &[]);
    // The gateway is gone; a stranger on the broker answers in its place.
    let daemon = h.daemon.take().unwrap();
    let log = daemon.log.clone();
    assert_eq!(daemon.terminate(), Some(0));
    let filters = [format!("{PREFIX}/pair/request"), format!("{PREFIX}/pair/finish")];
    let mut mitm = Observer::connect(h.broker.port, &filters.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let t = token(120);
    let guess = other_code(&code, 0);
    let ((exit, v), finish) = tokio::join!(h.pair("victim", &code, &t, &[]), man_in_the_middle(&mut mitm, &guess));
    assert_eq!((exit, v["error"].as_str()), (1, Some("gateway_unverified")), "{v}");
    assert!(!h.state_path("victim").exists(), "the phone kept nothing");
    // The stranger never saw the registration: the token is sealed.
    for needle in [t.clone().into_bytes(), hex::decode(&t).unwrap()] {
        assert!(!finish.windows(needle.len()).any(|w| w == &needle[..]));
    }
    assert!(h.phones().is_empty());
    let text = std::fs::read_to_string(log).unwrap();
    assert_no_leak("daemon", &text, &h.secrets, &h.codes);
    assert_no_leak("phone-sim", &h.phone_logs, &h.secrets, &h.codes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_grants_are_not_restored_and_an_unpaired_phone_signs_nothing() {
    let mut h = home().await;
    let shared_with = |h: &Home| -> Value {
        let bells: Vec<Value> = serde_json::from_str(&ok(&h.cfg, &["doorbell", "list", "--json"])).unwrap();
        bells.iter().find(|d| d["id"] == "front").unwrap()["shared_with"].clone()
    };
    let users = |h: &Home| ok(&h.cfg, &["user", "list"]);
    // `pair open --share`, then `unshare`: the code pairs nothing, the share stays gone.
    let code = h.open("carol", &["--share", "front"]);
    ok(&h.cfg, &["unshare", "front", "carol"]);
    let (exit, v) = h.pair("carol", &code, &token(130), &[]).await;
    assert_eq!((exit, v["error"].as_str()), (1, Some("invalid_code")), "{v}");
    assert_eq!(shared_with(&h), json!([]));
    // A window for a user who is then removed: not recreated.
    let code = h.open("dave", &[]);
    ok(&h.cfg, &["user", "rm", "dave"]);
    let (exit, v) = h.pair("dave", &code, &token(131), &[]).await;
    assert_eq!((exit, v["error"].as_str()), (1, Some("invalid_code")), "{v}");
    assert!(!users(&h).contains("dave"));
    // The owner's phone asks for a share code (it arrives sealed; phone-sim opens it)...
    let code = h.open("alice", &[]);
    let a = h.paired("alice", &code, &token(132)).await;
    let (exit, v) = h.signed("alice", &["share-code", "--user", "guest", "--doorbell", "front"]).await;
    assert_eq!(exit, 0, "{v}");
    let guest_code = v["code"].as_str().unwrap().to_string();
    h.codes.push(guest_code.clone());
    assert_eq!(shared_with(&h), json!(["guest"]));
    // ... then the owner unshares and removes guest: the code recreates neither.
    ok(&h.cfg, &["unshare", "front", "guest"]);
    ok(&h.cfg, &["user", "rm", "guest"]);
    let (exit, v) = h.pair("guest", &guest_code, &token(133), &[]).await;
    assert_eq!((exit, v["error"].as_str()), (1, Some("invalid_code")), "{v}");
    assert!(!users(&h).contains("guest"));
    assert_eq!(shared_with(&h), json!([]));
    // A share code, then the doorbell goes: the code pairs nothing either.
    ok(&h.cfg, &["doorbell", "add", "side", "--owner", "alice"]);
    let (_, v) = h.signed("alice", &["share-code", "--user", "erin", "--doorbell", "side"]).await;
    let erin_code = v["code"].as_str().unwrap().to_string();
    h.codes.push(erin_code.clone());
    ok(&h.cfg, &["doorbell", "rm", "side"]);
    let (exit, _) = h.pair("erin", &erin_code, &token(134), &[]).await;
    assert_eq!(exit, 1);
    // The phone unpairs itself: its state goes, its secret signs nothing any more.
    let (exit, v) = h.signed("alice", &["unpair"]).await;
    assert_eq!(exit, 0, "{v}");
    assert!(!a.state.exists());
    let r =
        h.phone_raw(a.id, "unpair", &signed(a.id, &a.secret, Action::Unpair, "late", dingdong::domain::now_ms())).await;
    assert_eq!(r["error"], "unauthorized");
    assert!(h.phones().is_empty());
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guessing_budget_figure_holds_and_a_spent_budget_stops_even_the_right_code() {
    let p = budget::worst_case_yearly_chance();
    println!("guessing budget: worst case {:.4}% a year of continuous guessing (ceiling 0.1%)", p * 100.0);
    assert!(p < budget::YEARLY_CHANCE_CEILING, "{p}");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/pairing.md")).unwrap();
    assert!(docs.contains(&format!("{:.4}%", p * 100.0)), "docs/pairing.md states the figure");
    let mut h = home().await;
    let code = h.open("alice", &[]);
    // The day's wrong guesses, as another instance sharing the database counted them.
    let now = dingdong::domain::now_ms();
    {
        let db = h.db();
        for _ in 0..budget::WRONG_GUESSES_PER_DAY {
            db.conn().execute("INSERT INTO rate_events (scope, at) VALUES ('guess', ?1)", [now]).unwrap();
        }
    }
    let (exit, v) = h.pair("a", &code, &token(140), &[]).await;
    assert_eq!((exit, v["error"].as_str()), (1, Some("rate_limited")), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("paused"), "{v}");
    // Nothing was judged: once the guesses age out of the day, the same code pairs.
    h.db().conn().execute("UPDATE rate_events SET at = at - 86400000 WHERE scope = 'guess'", []).unwrap();
    let (exit, v) = h.pair("a", &code, &token(140), &[]).await;
    assert_eq!(exit, 0, "{v}");
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_codes_lock_a_window_and_a_burst_of_random_codes_pairs_nothing() {
    const BURST: usize = 1000;
    let mut h = home().await;
    let code = h.open("guest", &["--share", "front"]);
    for i in 0..5 {
        let (exit, v) = h.pair(&format!("w{i}"), &other_code(&code, i), &token(150), &[]).await;
        assert_eq!((exit, v["error"].as_str()), (1, Some("invalid_code")), "{v}");
    }
    let (exit, v) = h.pair("right", &code, &token(150), &[]).await;
    assert_eq!((exit, v["error"].as_str()), (1, Some("invalid_code")), "locked: {v}");
    // A fresh window, then a burst of requests with random codes, as a stranger would send.
    let code = h.open("guest", &[]);
    let mut obs = Observer::connect(h.broker.port, &[&format!("{PREFIX}/pair/response/+")]).await;
    let reg = Registration {
        push: Push::Apns { token: token(151), environment: Environment::Production, topic: TOPIC.into() },
        name: None,
    };
    let mut phones = Vec::new();
    while phones.len() < BURST {
        let c = Code::generate(&mut OsRng);
        if c.reveal() == code {
            continue;
        }
        let (state, request) = phone::start(&c, PREFIX, &reg, &mut OsRng).unwrap();
        h.obs.publish(&format!("{PREFIX}/pair/request"), request.as_bytes()).await;
        phones.push(state);
    }
    let (mut offers, mut limited) = (Vec::new(), 0);
    for _ in 0..BURST {
        let (rid, payload) = obs
            .wait_for(|t, p| t.strip_prefix(&format!("{PREFIX}/pair/response/")).map(|r| (r.to_string(), p.to_vec())))
            .await;
        let state = phones.iter().find(|p| p.request_id() == rid).unwrap();
        match state.on_offer(&payload) {
            Ok((done, finish)) => offers.push((done, finish)),
            Err(PakeError::Refused { error, .. }) if error == "rate_limited" => limited += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(offers.len() <= 20 && limited >= BURST - 20, "{} offered, {limited} limited", offers.len());
    // Every offered exchange finishes: at most five are judged against the window, then it is
    // locked and the rest have nothing left to guess against.
    for (_, finish) in &offers {
        h.obs.publish(&format!("{PREFIX}/pair/finish"), finish.as_bytes()).await;
    }
    for _ in 0..offers.len() {
        let v: Value = obs.wait_for(|_, p| serde_json::from_slice(p).ok()).await;
        assert_eq!(v["error"], "invalid_code", "{v}");
    }
    let guesses: u32 =
        h.db().conn().query_row("SELECT COUNT(*) FROM rate_events WHERE scope = 'guess'", [], |r| r.get(0)).unwrap();
    assert!(guesses <= 10, "two windows' worth of judged guesses at most: {guesses}");
    println!("burst of {BURST}: {} offered, {limited} rate limited, {guesses} judged guesses in all", offers.len());
    assert!(h.phones().is_empty(), "no phone paired");
    let log = h.finish();
    assert!(log.contains("pair request refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pair_button_opens_an_eight_digit_window_that_still_counts_when_locked() {
    let mut h = home().await;
    let code_file = h.dir.join("pair-code.json");
    let button = format!("{PREFIX}/gateway/pair-button");
    h.obs.publish(&button, b"").await;
    let v: Value = serde_json::from_str(&wait_file(&code_file)).unwrap();
    assert_eq!(v["user"], "household");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&code_file).unwrap().permissions().mode() & 0o777, 0o600);
    let code = v["code"].as_str().unwrap().to_string();
    assert_eq!(code.len(), 8);
    h.codes.push(code.clone());
    for i in 0..5 {
        let (exit, _) = h.pair(&format!("x{i}"), &other_code(&code, i), &token(160), &[]).await;
        assert_eq!(exit, 1);
    }
    // Locked: pressing again opens nothing new until the window would have expired.
    h.obs.publish(&button, b"").await;
    h.daemon.as_ref().unwrap().wait_log("pair button: no new window").await;
    assert_eq!(std::fs::read_to_string(&code_file).unwrap(), v.to_string(), "the code file is unchanged");
    let (exit, v) = h.pair("late", &code, &token(160), &[]).await;
    assert_eq!((exit, v["error"].as_str()), (1, Some("invalid_code")));
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_requests_refuse_replays_forgeries_stale_cross_user_and_taken_tokens() {
    let mut h = home().await;
    let (t_a, t_b, t_new) = (token(170), token(171), token(172));
    h.secrets.push(t_new.clone());
    let code = h.open("alice", &[]);
    let a = h.paired("alice", &code, &t_a).await;
    let code = h.open("bob", &[]);
    let b = h.paired("bob", &code, &t_b).await;
    let before = h.phones();
    let now = dingdong::domain::now_ms();
    let cases = [
        // Forged: a random key; bob's key on alice's phone; alice's key on bob's phone.
        (a.id, "token", signed(a.id, &[7u8; 32], replace(&t_new), "f1", now), "unauthorized"),
        (a.id, "token", signed(a.id, &b.secret, replace(&t_new), "f2", now), "unauthorized"),
        (b.id, "unpair", signed(b.id, &a.secret, Action::Unpair, "f3", now), "unauthorized"),
        // Alice's correctly signed request, re-published on bob's topic.
        (b.id, "unpair", signed(a.id, &a.secret, Action::Unpair, "f4", now), "unauthorized"),
        // Unsigned.
        (
            a.id,
            "unpair",
            json!({"request_id": "f5", "ts": now, "nonce": nonce()}).to_string().into_bytes(),
            "bad_request",
        ),
        // Stale, either way.
        (a.id, "token", signed(a.id, &a.secret, replace(&t_new), "s1", now - 6 * 60_000), "stale"),
        (a.id, "token", signed(a.id, &a.secret, replace(&t_new), "s2", now + 6 * 60_000), "stale"),
        // Bob's token: a conflict, whoever signs it.
        (a.id, "token", signed(a.id, &a.secret, replace(&t_b), "c1", now), "conflict"),
    ];
    for (id, action, body, error) in cases {
        assert_eq!(h.phone_raw(id, action, &body).await["error"], error);
    }
    let share = Action::ShareCode { user: "mallory".into(), doorbell: "back".into(), minutes: 5 };
    let r = h.phone_raw(a.id, "share-code", &signed(a.id, &a.secret, share, "c2", now)).await;
    assert_eq!(r["error"], "forbidden");
    assert_eq!(h.phones(), before, "refusals changed nothing");
    // The phone's own replacement works, once.
    let good = signed(a.id, &a.secret, replace(&t_new), "ok1", now);
    let r = h.phone_raw(a.id, "token", &good).await;
    assert_eq!((r["ok"].clone(), r["request_id"].clone()), (json!(true), json!("ok1")), "{r}");
    assert_eq!(h.phone_raw(a.id, "token", &good).await["error"], "replayed");
    let outcome = h.press("front").await;
    assert_eq!(outcome["delivered"].as_i64(), Some(1), "{outcome}");
    let outcome = h.press("back").await;
    assert_eq!(outcome["delivered"].as_i64(), Some(1), "{outcome}");
    let counts = h.sim.state.counts();
    assert_eq!((counts.get(&t_new), counts.get(&t_a), counts.get(&t_b)), (Some(&1), None, Some(&1)));
    let log = h.finish();
    assert!(log.contains("phone request refused") && log.contains("phone token replaced"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_registered_to_another_user_is_a_conflict_in_pairing() {
    let mut h = home().await;
    let t_bob = token(180);
    ok(&h.cfg, &["phone", "add", "bob", &t_bob]);
    let code = h.open("alice", &[]);
    let (exit, v) = h.pair("alice", &code, &t_bob, &[]).await;
    assert_eq!((exit, v["error"].as_str()), (1, Some("conflict")), "{v}");
    let list = h.phones();
    assert_eq!((list.len(), list[0]["user"].as_str()), (1, Some("bob")), "bob's phone stays bob's");
    // The window stays open for a phone with its own token.
    let (exit, v) = h.pair("alice", &code, &token(181), &[]).await;
    assert_eq!(exit, 0, "{v}");
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_control_or_bidi_characters_are_refused_at_every_entrance() {
    let mut h = home().await;
    let steering = ["a\u{202e}b", "a\u{1b}[2Jb", "a\nb", "x\u{2066}y"];
    let t = token(190);
    let code = h.open("alice", &[]);
    for bad in steering {
        for args in [
            vec!["user", "add", bad],
            vec!["doorbell", "add", "side", "--name", bad, "--owner", "alice"],
            vec!["phone", "add", "alice", &t, "--name", bad],
            vec!["pair", "open", "--user", bad],
        ] {
            let out = cli(&h.cfg, &args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
            assert!(!err.contains('\u{202e}') && !err.contains('\u{1b}') && !err.contains('\u{2066}'), "{err:?}");
        }
        let (exit, v) = h.pair("p", &code, &token(191), &["--name", bad]).await;
        assert_eq!((exit, v["error"].as_str()), (2, Some("bad_input")), "{v}");
    }
    let a = h.paired("alice", &code, &token(192)).await;
    let share = Action::ShareCode { user: "gu\u{202e}est".into(), doorbell: "front".into(), minutes: 5 };
    let r = h.phone_raw(a.id, "share-code", &signed(a.id, &a.secret, share, "n1", dingdong::domain::now_ms())).await;
    assert_eq!(r["error"], "bad_request");
    assert!(!r.to_string().contains('\u{202e}'));
    // A name an older version stored unchecked is printed escaped.
    h.db().conn().execute("UPDATE phones SET name = 'evil\u{202e}txt'", []).unwrap();
    let list = ok(&h.cfg, &["phone", "list"]);
    assert!(list.contains("evil\\u{202e}txt") && !list.contains('\u{202e}'), "{list}");
    assert_eq!(ok(&h.cfg, &["user", "list"]).lines().count(), 3, "nobody was added");
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_payloads_get_error_replies_and_the_daemon_keeps_ringing() {
    let mut h = home().await;
    let mut obs = Observer::connect(h.broker.port, &[&format!("{PREFIX}/pair/response/+")]).await;
    let request = format!("{PREFIX}/pair/request");
    let finish = format!("{PREFIX}/pair/finish");
    let big = format!(r#"{{"request_id":"big","pake":"{}"}}"#, "x".repeat(5000));
    // Unreadable messages have no reply topic: they are logged and dropped.
    for junk in [big.as_bytes(), b"{not json", b"\xff\xfe"] {
        h.obs.publish(&request, junk).await;
        h.obs.publish(&finish, junk).await;
    }
    // Readable ones with a bad field are answered, naming the field but echoing nothing.
    let t = token(195);
    h.secrets.push(t.clone());
    let a_msg = URL_SAFE_NO_PAD.encode([b'A'; 33]);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            &request,
            json!({"request_id": "m1", "code": "12345678", "token": t, "environment": "production", "topic": TOPIC}),
            "v: must be 2",
        ),
        (&request, json!({"request_id": "m2", "v": 2, "pake": "short"}), "pake"),
        (&request, json!({"request_id": "m3", "v": 2, "pake": a_msg, "x": 1}), "unknown field"),
        (&request, json!({"request_id": "m4", "v": 2}), "pake: missing"),
        (&finish, json!({"request_id": "m5", "proofs": []}), "proofs"),
        (
            &finish,
            json!({"request_id": "m6", "proofs": [{"ref": "a", "confirm": URL_SAFE_NO_PAD.encode([1u8; 32]),
            "sealed": URL_SAFE_NO_PAD.encode([2u8; 40])}]}),
            "no pairing in progress",
        ),
    ];
    for (topic, body, says) in cases {
        let rid = body["request_id"].as_str().unwrap().to_string();
        h.obs.publish(topic, body.to_string().as_bytes()).await;
        let reply_topic = format!("{PREFIX}/pair/response/{rid}");
        let r: Value = obs.wait_for(|t, p| (t == reply_topic).then(|| serde_json::from_slice(p).unwrap())).await;
        assert_eq!((r["ok"].clone(), r["error"].clone()), (json!(false), json!("bad_request")), "{r}");
        assert!(r["detail"].as_str().unwrap().contains(says), "{says}: {r}");
        assert!(!r.to_string().contains(&t) && !r.to_string().contains("12345678"));
    }
    // Phone topics always have a reply topic.
    for payload in [big.as_bytes(), b"{not json", b"[]", b"", br#"{"request_id":"a/b"}"#] {
        let r = h.phone_raw(5, "token", payload).await;
        assert_eq!((r["ok"].clone(), r["error"].clone()), (json!(false), json!("bad_request")), "{r}");
    }
    let r = h.phone_raw(5, "reboot", br#"{"request_id":"x"}"#).await;
    assert!(r["detail"].as_str().unwrap().contains("unknown action"), "{r}");
    // The pair button: junk is logged, no window opens.
    h.obs.publish(&format!("{PREFIX}/gateway/pair-button"), big.as_bytes()).await;
    h.obs.publish(&format!("{PREFIX}/gateway/pair-button"), b"{\"user\":\"me\"}").await;
    h.obs.publish(&format!("{PREFIX}/phone/abc/token"), b"{}").await;
    // Still alive: a phone pairs and a press rings.
    let code = h.open("alice", &[]);
    h.paired("alive", &code, &token(196)).await;
    let outcome = h.press("front").await;
    assert_eq!(outcome["delivered"].as_i64(), Some(1));
    assert!(!h.dir.join("pair-code.json").exists(), "junk on the button topic opened no window");
    let log = h.finish();
    assert!(log.contains("pair button message refused"), "{log}");
    assert!(log.matches("pair request refused").count() >= 9, "{log}");
}
