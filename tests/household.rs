//! Household controls through real parts: mosquitto, the `dingdong` binary as the daemon, the
//! CLI and the reference phone (`phone-sim`), its SQLite file, and the built-in APNs simulator
//! recording every request it accepted. Alert levels, quiet hours and mutes decide what each
//! phone gets; "I'm coming" quiets the others; Home Assistant's switch and select change
//! delivery. Nothing sleeps to synchronise: every step awaits a reply or a published outcome.
#![cfg(feature = "sim")]

mod pairing_util;
mod util;

use dingdong::codec::pairing::wire::{Action, SignedRequest};
use pairing_util::*;
use serde_json::Value;
use util::*;

/// A phone for `user` paired through the reference phone (so it can sign requests); its token.
async fn phone_of(h: &mut Home, user: &str, n: u32) -> String {
    let code = h.open(user, &[]);
    let t = token(n);
    h.paired(user, &code, &t).await;
    t
}

/// More doorbells of alice's, shared with `users`: a press of each is a ring of its own (two
/// presses of one doorbell within `ring.debounce` fold into one ring).
fn more_doorbells(h: &Home, ids: &[&str], users: &[&str]) {
    for id in ids {
        ok(&h.cfg, &["doorbell", "add", id, "--owner", "alice"]);
        for u in users {
            ok(&h.cfg, &["share", id, u]);
        }
    }
}

/// The requests the simulator accepted for `token`, oldest first.
fn got(h: &Home, token: &str) -> Vec<dingdong::app::sim::Received> {
    h.sim.state.received().into_iter().filter(|r| r.token == token).collect()
}

/// The state of phone `token` in a ring outcome's per-phone lines.
fn state_of(outcome: &Value, token: &str) -> String {
    let short = &token[..8];
    let line = outcome["results"].as_array().unwrap().iter().find(|l| l["token"] == short);
    line.unwrap_or_else(|| panic!("{short} in {outcome}"))["state"].as_str().unwrap().to_string()
}

/// A quiet-hours window around now in the gateway's (the system's) time zone: `HH:MM`s.
fn window_around_now() -> (String, String) {
    let tz = dingdong::domain::household::time_zone(None).unwrap();
    let now = jiff::Timestamp::now().to_zoned_datetime(tz);
    let m = now.hour() as i32 * 60 + now.minute() as i32;
    let at = |x: i32| dingdong::domain::household::hhmm(x.rem_euclid(1440) as u16);
    (at(m - 60), at(m + 60))
}

/// A household of four: bob muted, carol in quiet hours (`silent`), dave critical, alice as
/// usual. A press reaches the simulator exactly three times, each with its own payload; the
/// outcome says `muted` and `silenced`; `quiet list` shows the rules.
#[tokio::test]
async fn a_household_of_four_gets_exactly_what_each_asked_for() {
    let mut h = home().await;
    for u in ["carol", "dave"] {
        ok(&h.cfg, &["user", "add", u]);
    }
    for u in ["bob", "carol", "dave"] {
        ok(&h.cfg, &["share", "front", u]);
    }
    more_doorbells(&h, &["side"], &["bob", "carol", "dave"]);
    let [a, b, c, d] = [
        phone_of(&mut h, "alice", 1).await,
        phone_of(&mut h, "bob", 2).await,
        phone_of(&mut h, "carol", 3).await,
        phone_of(&mut h, "dave", 4).await,
    ];
    let out = ok(&h.cfg, &["mute", "bob", "--for", "2h"]);
    assert!(out.contains("bob: muted (skip) for every doorbell until"), "{out}");
    let (from, to) = window_around_now();
    ok(&h.cfg, &["quiet", "set", "carol", "--from", &from, "--to", &to, "--mode", "silent"]);
    ok(&h.cfg, &["alert", "dave", "--level", "critical", "--sound", "siren.caf", "--volume", "0.8"]);
    // Bad input: one line, exit 2, nothing written.
    for bad in [
        vec!["alert", "dave", "--level", "loud"],
        vec!["alert", "dave", "--level", "active", "--volume", "0.5"],
        vec!["alert", "dave", "--level", "critical", "--volume", "2"],
        vec!["alert", "dave", "--level", "active", "--sound", "../../x"],
        vec!["quiet", "set", "carol", "--from", "25:00", "--to", "07:00"],
        vec!["quiet", "set", "carol", "--from", "07:00", "--to", "07:00"],
        vec!["quiet", "set", "carol", "--from", "22:00", "--to", "07:00", "--days", "mon-funday"],
        vec!["mute", "bob", "--for", "400d"],
        vec!["mute", "bob", "--until", "2001-01-01T00:00:00Z"],
        vec!["mute", "nobody", "--for", "1h"],
        vec!["mute", "bob", "--for", "1h", "--doorbell", "nowhere"],
    ] {
        let o = cli(&h.cfg, &bad);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{bad:?}: one line: {err}");
    }

    // `phone list` says what each person's rules do to a ring now.
    let phones = h.phones();
    let now_of = |u: &str| phones.iter().find(|p| p["user"] == u).unwrap()["household"].clone();
    assert_eq!(
        (now_of("bob"), now_of("carol"), now_of("dave")),
        ("muted".into(), "silenced".into(), "critical".into())
    );
    assert!(now_of("alice").is_null());

    let outcome = h.press("front").await;
    let ring = outcome["ring_id"].as_str().unwrap().to_string();
    assert_eq!((outcome["phones"].as_i64(), outcome["delivered"].as_i64()), (Some(4), Some(2)), "{outcome}");
    assert_eq!((outcome["muted"].as_i64(), outcome["silenced"].as_i64()), (Some(1), Some(1)), "{outcome}");
    assert_eq!(state_of(&outcome, &b), "muted");
    assert_eq!(state_of(&outcome, &c), "silenced");
    assert_eq!((state_of(&outcome, &a), state_of(&outcome, &d)), ("delivered".into(), "delivered".into()));

    assert_eq!(h.sim.state.received().len(), 3, "exactly three requests: bob is muted");
    assert!(got(&h, &b).is_empty());
    let aps = |t: &str| got(&h, t)[0].payload["aps"].clone();
    assert_eq!(aps(&a)["interruption-level"], "time-sensitive");
    assert_eq!(aps(&a)["sound"], "default");
    assert_eq!(aps(&a)["category"], "DOORBELL_RING");
    assert_eq!(aps(&c)["interruption-level"], "passive");
    assert!(aps(&c).get("sound").is_none(), "silenced: no sound");
    assert_eq!(got(&h, &c)[0].priority.as_deref(), Some("5"));
    assert_eq!(aps(&d)["interruption-level"], "critical");
    assert_eq!(aps(&d)["sound"], serde_json::json!({"critical": 1, "name": "siren.caf", "volume": 0.8}));
    for t in [&a, &c, &d] {
        assert_eq!(got(&h, t)[0].collapse_id.as_deref(), Some("front"));
    }

    // The history and the CLI say the same.
    let shown: Value = serde_json::from_str(&ok(&h.cfg, &["rings", "show", &ring, "--json"])).unwrap();
    assert!(shown.to_string().contains("\"muted\"") && shown.to_string().contains("\"silenced\""), "{shown}");
    let list: Value = serde_json::from_str(&ok(&h.cfg, &["quiet", "list", "--json"])).unwrap();
    let rows = list.as_array().unwrap();
    let row = |u: &str| rows.iter().find(|r| r["user"] == u).unwrap_or_else(|| panic!("{u} in {list}")).clone();
    assert_eq!(row("carol")["quiet"][0], serde_json::json!({"from": from, "to": to, "days": "all", "mode": "silent"}));
    assert_eq!(row("bob")["mute_mode"], "skip");
    assert_eq!(row("dave")["alert"]["level"], "critical");
    // A phone list shows no problem for a muted phone: it was the person's choice.
    let phones = h.phones();
    assert!(phones.iter().all(|p| p["last_outcome"].is_null()), "{phones:?}");

    // Unmuted, out of quiet hours, back to the usual: four requests, all as usual.
    ok(&h.cfg, &["unmute", "bob"]);
    ok(&h.cfg, &["quiet", "rm", "carol"]);
    ok(&h.cfg, &["alert", "dave", "--level", "time-sensitive"]);
    let before = h.sim.state.received().len();
    let outcome = h.press("side").await;
    assert_eq!(outcome["delivered"].as_i64(), Some(4), "{outcome}");
    let now: Vec<_> = h.sim.state.received().into_iter().skip(before).collect();
    assert_eq!(now.len(), 4);
    assert!(now.iter().all(|r| r.payload["aps"]["interruption-level"] == "time-sensitive"));
    assert_eq!(ok(&h.cfg, &["quiet", "list"]).trim(), "no quiet hours, mutes or alert levels set");
    h.finish();
}

/// A phone changes its own person's rules with signed requests, never anyone else's.
#[tokio::test]
async fn a_phone_sets_its_own_persons_rules_by_signed_request() {
    let mut h = home().await;
    ok(&h.cfg, &["share", "front", "bob"]);
    more_doorbells(&h, &["side"], &["bob"]);
    let (a, b) = (phone_of(&mut h, "alice", 1).await, phone_of(&mut h, "bob", 2).await);
    let (exit, v) = h.signed("bob", &["mute", "--for", "1h", "--mode", "silent"]).await;
    assert_eq!(exit, 0, "{v}");
    assert_eq!(v["rules"]["mute_mode"], "silent");
    let (exit, v) = h.signed("alice", &["alert", "--level", "active", "--doorbell", "front"]).await;
    assert_eq!((exit, v["rules"]["level"].as_str()), (0, Some("active")), "{v}");
    let (from, to) = window_around_now();
    let (exit, v) = h.signed("alice", &["quiet", "--from", &from, "--to", &to, "--doorbell", "back"]).await;
    assert_eq!((exit, v["error"].as_str()), (1, Some("forbidden")), "alice does not see back: {v}");
    let (exit, v) = h.signed("alice", &["alert", "--level", "critical", "--volume", "7"]).await;
    assert_eq!((exit, v["error"].as_str()), (2, Some("bad_input")), "{v}");

    let outcome = h.press("front").await;
    assert_eq!(state_of(&outcome, &b), "silenced");
    assert_eq!(got(&h, &b)[0].payload["aps"]["interruption-level"], "passive");
    assert_eq!(got(&h, &a)[0].payload["aps"]["interruption-level"], "active");
    let (exit, _) = h.signed("bob", &["mute", "--off"]).await;
    assert_eq!(exit, 0);
    let outcome = h.press("side").await;
    assert_eq!(state_of(&outcome, &b), "delivered");
    h.finish();
}

/// "I'm coming": forged, stale, foreign and unknown answers change nothing; the first real
/// answer wins, the others' phones get a quiet replacement under the same collapse id, the
/// outcome is published again with who answered; a replay and a second answer are refused.
#[tokio::test]
async fn the_first_answer_quiets_every_other_phone() {
    let mut h = home().await;
    ok(&h.cfg, &["user", "add", "carol"]);
    ok(&h.cfg, &["share", "front", "bob"]);
    ok(&h.cfg, &["share", "front", "carol"]);
    let a = phone_of(&mut h, "alice", 1).await;
    let b = phone_of(&mut h, "bob", 2).await;
    let c = phone_of(&mut h, "carol", 3).await;
    let eve = phone_of(&mut h, "eve", 9).await; // sees no doorbell of alice's
    let outcome = h.press("front").await;
    let ring = outcome["ring_id"].as_str().unwrap().to_string();
    assert_eq!(outcome["delivered"].as_i64(), Some(3));
    let sent = h.sim.state.received().len();

    let alice = h.phone("alice");
    let answer = |phone: &Phone, ts: i64, nonce: &str, ring: &str| {
        let req =
            SignedRequest::signed(phone.id, &phone.secret, Action::Answer { ring_id: ring.into() }, "ans-1", ts, nonce);
        req.encode()
    };
    let now = dingdong::domain::now_ms();
    let mut forged = serde_json::from_str::<Value>(&answer(&alice, now, &nonce(), &ring)).unwrap();
    forged["sig"] = "0".repeat(64).into();
    let r = h.phone_raw(alice.id, "answer", forged.to_string().as_bytes()).await;
    assert_eq!(r["error"], "unauthorized", "{r}");
    let r = h.phone_raw(alice.id, "answer", answer(&alice, now - 600_000, &nonce(), &ring).as_bytes()).await;
    assert_eq!(r["error"], "stale", "{r}");
    let (exit, v) = h.signed("eve", &["answer", &ring]).await;
    assert_eq!((exit, v["error"].as_str()), (1, Some("forbidden")), "a foreign ring: {v}");
    let (exit, v) = h.signed("alice", &["answer", "0123456789abcdef"]).await;
    assert_eq!((exit, v["error"].as_str()), (1, Some("forbidden")), "an unknown ring: {v}");
    assert!(h.db().ring_summary(&ring).unwrap().answered_by.is_none(), "nothing changed");
    assert_eq!(h.sim.state.received().len(), sent, "nothing sent");

    let first = answer(&alice, dingdong::domain::now_ms(), &nonce(), &ring);
    let r = h.phone_raw(alice.id, "answer", first.as_bytes()).await;
    assert_eq!((r["ok"].as_bool(), r["answered_by"].as_str()), (Some(true), Some("alice")), "{r}");
    let ring_topic = format!("{PREFIX}/ring/{ring}");
    let again: Value = h
        .obs
        .wait_for(|t, p| {
            let v: Value = serde_json::from_slice(p).ok()?;
            (t == ring_topic && v["answered_by"] == "alice").then_some(v)
        })
        .await;
    assert_eq!(again["answer"]["phones"].as_u64(), Some(2), "{again}");
    assert_eq!(again["answer"]["delivered"].as_u64(), Some(2), "{again}");
    assert!(again["answered_at"].as_i64().is_some());
    for t in [&b, &c] {
        let mine = got(&h, t);
        assert_eq!(mine.len(), 2, "the ring and its replacement");
        let r = &mine[1];
        assert_eq!(r.collapse_id.as_deref(), Some("front"), "same collapse id as the ring");
        assert_eq!(r.payload["aps"]["interruption-level"], "passive");
        assert!(r.payload["aps"].get("sound").is_none());
        assert_eq!(r.payload["aps"]["alert"]["body"], "alice is getting the door");
        assert_eq!(r.payload["answered_by"], "alice");
    }
    assert_eq!(got(&h, &a).len(), 1, "the one who answered gets no replacement");
    assert!(got(&h, &eve).is_empty());

    let r = h.phone_raw(alice.id, "answer", first.as_bytes()).await;
    assert_eq!(r["error"], "replayed", "{r}");
    let (exit, v) = h.signed("bob", &["answer", &ring]).await;
    assert_eq!((exit, v["error"].as_str()), (1, Some("conflict")), "answered already: {v}");
    assert_eq!(h.db().ring_summary(&ring).unwrap().answered_by.as_deref(), Some("alice"));
    assert_eq!(h.sim.state.received().len(), sent + 2, "no second wave");

    // A ring that is over cannot be answered.
    let outcome = h.press("back").await;
    let over = outcome["ring_id"].as_str().unwrap().to_string();
    h.db().conn().execute("UPDATE rings SET expires_at = 1 WHERE id = ?1", [&over]).unwrap();
    let (exit, v) = h.signed("bob", &["answer", &over]).await;
    assert_eq!((exit, v["error"].as_str()), (1, Some("forbidden")), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("over"), "{v}");
    h.finish();
}

/// Home Assistant: each person gets a "do not disturb" switch and an alert-level select;
/// commanding them changes delivery and their retained state follows.
#[tokio::test]
async fn home_assistant_switch_and_select_change_delivery() {
    let mut h = home().await;
    ok(&h.cfg, &["share", "front", "bob"]);
    more_doorbells(&h, &["side"], &["bob"]);
    let mut ha = Observer::connect(
        h.broker.port,
        &["homeassistant/switch/+/config", "homeassistant/select/+/config", &format!("{PREFIX}/ha/user/+/+")],
    )
    .await;
    let config = |ha_topic: String| {
        move |t: &str, p: &[u8]| (t == ha_topic).then(|| serde_json::from_slice::<Value>(p).unwrap())
    };
    let switch = ha.wait_for(config("homeassistant/switch/gw-test_bob_dnd/config".into())).await;
    assert_eq!(switch["command_topic"], format!("{PREFIX}/ha/user/bob/dnd/set"));
    let select = ha.wait_for(config("homeassistant/select/gw-test_bob_alert/config".into())).await;
    assert_eq!(select["options"], serde_json::json!(["passive", "active", "time-sensitive", "critical"]));
    let b = phone_of(&mut h, "bob", 2).await;

    let state =
        |topic: String, want: &'static str| move |t: &str, p: &[u8]| (t == topic && p == want.as_bytes()).then_some(());
    ha.publish(&format!("{PREFIX}/ha/user/bob/dnd/set"), b"ON").await;
    ha.wait_for(state(format!("{PREFIX}/ha/user/bob/dnd"), "ON")).await;
    let outcome = h.press("front").await;
    assert_eq!(state_of(&outcome, &b), "muted");

    ha.publish(&format!("{PREFIX}/ha/user/bob/dnd/set"), b"OFF").await;
    ha.wait_for(state(format!("{PREFIX}/ha/user/bob/dnd"), "OFF")).await;
    ha.publish(&format!("{PREFIX}/ha/user/bob/alert/set"), b"critical").await;
    ha.wait_for(state(format!("{PREFIX}/ha/user/bob/alert"), "critical")).await;
    let outcome = h.press("side").await;
    assert_eq!(state_of(&outcome, &b), "delivered");
    assert_eq!(got(&h, &b).last().unwrap().payload["aps"]["interruption-level"], "critical");
    // A bad command changes nothing.
    ha.publish(&format!("{PREFIX}/ha/user/bob/alert/set"), b"deafening").await;
    h.daemon.as_ref().unwrap().wait_log("Home Assistant command refused").await;
    // The CLI's changes reach Home Assistant too.
    ok(&h.cfg, &["mute", "bob", "--for", "1h"]);
    ha.wait_for(state(format!("{PREFIX}/ha/user/bob/dnd"), "ON")).await;
    h.finish();
}
