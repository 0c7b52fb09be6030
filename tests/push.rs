//! Every phone in the house: iPhones (APNs production and sandbox), Android phones (FCM) and
//! browsers (Web Push) through one daemon and one outbox, against the simulators, with a real
//! mosquitto. Exactly the right phones get exactly one correct message each (Web Push ones
//! decrypted by the push service with the subscription's private key); stale ones are pruned.
#![cfg(feature = "sim")]

mod util;

use dingdong::app::sim::{Faults, TokenInfo};
use dingdong::domain::Environment;
use std::sync::atomic::Ordering;
use std::time::Duration;
use util::*;

fn outcome_of(results: &[serde_json::Value], phone_id: i64) -> &serde_json::Value {
    results.iter().find(|r| r["phone_id"] == phone_id).expect("a line per phone")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_household_gets_one_correct_message_per_phone_and_stale_phones_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let sim = start_push_sim(d, Faults::default(), 1000, 3, false).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    add_push_tables(&cfg, &sim);
    let (fcm, web) = (sim.fcm.as_ref().unwrap(), sim.webpush.as_ref().unwrap());

    for u in ["alice", "bob", "carol"] {
        ok(&cfg, &["user", "add", u]);
    }
    ok(&cfg, &["doorbell", "add", "front", "--name", "Front door", "--owner", "alice"]);
    ok(&cfg, &["share", "front", "bob"]);
    // iPhones: production, sandbox, and one whose app was deleted.
    let (prod, sandbox, stale_apns) = (token(1), token(2), token(3));
    ok(&cfg, &["phone", "add", "alice", &prod]);
    ok(&cfg, &["phone", "add", "bob", &sandbox, "--sandbox"]);
    ok(&cfg, &["phone", "add", "alice", &stale_apns]);
    sim.state.register(&prod, TokenInfo { environment: Some(Environment::Production), unregistered_at: None });
    sim.state.register(&sandbox, TokenInfo { environment: Some(Environment::Sandbox), unregistered_at: None });
    sim.state.unregister(&stale_apns, dingdong::domain::now_ms() + 1);
    // Android phones: two, and one whose app was removed.
    ok(&cfg, &["phone", "add", "alice", "--fcm", &fcm.tokens[0]]);
    ok(&cfg, &["phone", "add", "bob", "--fcm", &fcm.tokens[1], "--name", "Bob's Pixel"]);
    ok(&cfg, &["phone", "add", "alice", "--fcm", &fcm.tokens[2]]);
    fcm.state.unregister(&fcm.tokens[2]);
    // Browsers: from a file, from standard input, and one that unsubscribed since; through
    // `phone import` for the last, as a JSON line.
    ok(&cfg, &["phone", "add", "alice", "--webpush", web.subscriptions[0].file.to_str().unwrap()]);
    let mut child = std::process::Command::new(bin())
        .args(["phone", "add", "bob", "--webpush", "-", "--config"])
        .arg(&cfg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(web.subscriptions[1].json.as_bytes()).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let import = d.join("browsers.txt");
    std::fs::write(&import, format!("{}\n", web.subscriptions[2].json)).unwrap();
    let out = ok(&cfg, &["phone", "import", "alice", import.to_str().unwrap()]);
    assert!(out.contains("1 added"), "{out}");
    web.state.unsubscribe(&web.subscriptions[2].id);
    // Someone the doorbell is not shared with.
    ok(&cfg, &["phone", "add", "carol", &token(9)]);
    ok(&cfg, &["phone", "add", "carol", "--fcm", &fcm_token_for_carol()]);

    let list: serde_json::Value = serde_json::from_str(&ok(&cfg, &["phone", "list", "--json"])).unwrap();
    let platforms: Vec<&str> = list.as_array().unwrap().iter().map(|p| p["platform"].as_str().unwrap()).collect();
    assert_eq!(platforms.iter().filter(|p| **p == "fcm").count(), 4, "{list}");
    assert_eq!(platforms.iter().filter(|p| **p == "webpush").count(), 3, "{list}");
    let shown = list.to_string();
    assert!(!shown.contains(&fcm.tokens[0]) && !shown.contains(&web.subscriptions[0].id), "phone list shortens");

    let daemon = Daemon::spawn(&cfg, d);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    obs.wait_online().await;
    obs.press("front", dingdong::domain::now_ms()).await;
    let outcome = obs.ring_outcome().await;
    assert_eq!(
        (outcome["phones"].as_i64(), outcome["delivered"].as_i64(), outcome["pruned"].as_i64()),
        (Some(9), Some(6), Some(3)),
        "{outcome}"
    );
    assert_eq!((outcome["failed"].as_i64(), outcome["pending"].as_i64()), (Some(0), Some(0)), "{outcome}");
    let ring_id = outcome["ring_id"].as_str().unwrap().to_string();
    let results = outcome["results"].as_array().unwrap();
    let by_platform =
        |p: &str, state: &str| results.iter().filter(|r| r["platform"] == p && r["state"] == state).count();
    assert_eq!((by_platform("apns", "delivered"), by_platform("apns", "pruned")), (2, 1), "{outcome}");
    assert_eq!((by_platform("fcm", "delivered"), by_platform("fcm", "pruned")), (2, 1), "{outcome}");
    assert_eq!((by_platform("webpush", "delivered"), by_platform("webpush", "pruned")), (2, 1), "{outcome}");

    // APNs: each live iPhone once, in its environment.
    let apns = sim.state.received();
    assert_eq!(apns.len(), 2);
    let env_of = |t: &str| apns.iter().find(|r| r.token == t).map(|r| r.environment);
    assert_eq!((env_of(&prod), env_of(&sandbox)), (Some(Environment::Production), Some(Environment::Sandbox)));
    // FCM: each live Android phone once, with the ring's message as Android needs it.
    let android = fcm.state.received();
    assert_eq!(fcm.state.counts().len(), 2);
    assert!(fcm.state.counts().values().all(|&n| n == 1), "{:?}", fcm.state.counts());
    for m in &android {
        assert!(m.token == fcm.tokens[0] || m.token == fcm.tokens[1]);
        assert_eq!((m.title.as_str(), m.body.as_str()), ("Front door", "Someone is at Front door"));
        assert_eq!((m.doorbell.as_str(), m.ring.as_str()), ("front", ring_id.as_str()));
        assert!(m.high_priority && m.ttl_secs > 250 && m.ttl_secs <= 300, "{m:?}");
        assert_eq!(m.collapse_key.as_deref(), Some("doorbell-front"));
        assert_eq!(m.channel_id.as_deref(), Some("doorbell"));
    }
    // Web Push: each live browser once, decrypted with its private key, with its headers.
    let browsers = web.state.received();
    assert_eq!(browsers.len(), 2, "{browsers:?}");
    let topic = dingdong::codec::push::webpush::topic("front");
    for (m, sub) in browsers.iter().zip([&web.subscriptions[0], &web.subscriptions[1]]) {
        assert!(browsers.iter().any(|b| b.subscription == sub.id));
        assert_eq!(m.payload["doorbell"], "front");
        assert_eq!(m.payload["ring"], ring_id.as_str());
        assert_eq!(m.payload["title"], "Front door");
        assert_eq!((m.urgency.as_deref(), m.topic.as_deref()), (Some("high"), Some(topic.as_str())));
        assert!(m.ttl > 250 && m.ttl <= 300);
    }
    // The stale phones are gone; carol's are untouched and got nothing.
    let left: serde_json::Value = serde_json::from_str(&ok(&cfg, &["phone", "list", "--json"])).unwrap();
    assert_eq!(left.as_array().unwrap().len(), 8, "{left}");
    let stale_pruned = outcome_of(results, find_phone(&list, "fcm", &fcm.tokens[2]));
    assert_eq!(stale_pruned["state"], "pruned");
    assert!(stale_pruned["reason"].as_str().unwrap().contains("UNREGISTERED"), "{stale_pruned}");
    // diag proves the service account (a token exchange) and the VAPID key.
    let diag: serde_json::Value = serde_json::from_slice(&cli(&cfg, &["diag", "--json"]).stdout).unwrap();
    let check = |name: &str| diag["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap();
    assert_eq!(check("fcm")["level"], "ok", "{diag}");
    assert!(check("fcm")["figure"].as_str().unwrap().contains("access token obtained"), "{diag}");
    assert_eq!(check("webpush")["level"], "ok", "{diag}");
    assert_eq!(daemon.terminate(), Some(0));
}

/// Carol's Android phone: registered with FCM (the simulator knows it) but not reached.
fn fcm_token_for_carol() -> String {
    "carol-android-0123456789:APA91bCarolsPhone".to_string()
}

/// The id of the phone of `platform` whose shortened token starts `key`.
fn find_phone(list: &serde_json::Value, platform: &str, key: &str) -> i64 {
    list.as_array()
        .unwrap()
        .iter()
        .find(|p| p["platform"] == platform && key.starts_with(p["token"].as_str().unwrap()))
        .and_then(|p| p["id"].as_i64())
        .expect("phone listed")
}

/// The push services' bad days: a push service that speaks HTTP/1.1 only, 10% of answers
/// 429/500/503 (with `Retry-After`), slow answers, and FCM access tokens revoked between two
/// rings: every phone still gets its message, and the transport renews its token once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_services_bad_days_over_http1_still_deliver_everything() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let faults = Faults { fail_rate: 0.1, latency: Duration::from_millis(20), ..Default::default() };
    let sim = start_push_sim(d, faults, 1000, 200, true).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    add_push_tables(&cfg, &sim);
    let (fcm, web) = (sim.fcm.as_ref().unwrap(), sim.webpush.as_ref().unwrap());
    ok(&cfg, &["user", "add", "alice"]);
    ok(&cfg, &["doorbell", "add", "front", "--owner", "alice"]);
    ok(&cfg, &["doorbell", "add", "back", "--owner", "alice"]);
    let mut lines: Vec<String> = fcm.tokens.iter().map(|t| format!("fcm:{t}")).collect();
    lines.extend(web.subscriptions.iter().map(|s| s.json.clone()));
    let import = d.join("phones.txt");
    std::fs::write(&import, lines.join("\n")).unwrap();
    let out = ok(&cfg, &["phone", "import", "alice", import.to_str().unwrap()]);
    assert!(out.contains("400 added"), "{out}");

    let daemon = Daemon::spawn(&cfg, d);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    obs.wait_online().await;
    for round in 1..=2usize {
        if round == 2 {
            fcm.state.revoke_access_tokens();
        }
        // A doorbell per round: a press time in the future is taken as the time it arrived,
        // so two presses of one doorbell within `ring.debounce` would fold into one ring.
        obs.press(["front", "back"][round - 1], dingdong::domain::now_ms()).await;
        let outcome = obs.ring_outcome().await;
        assert_eq!(outcome["delivered"].as_i64(), Some(400), "{outcome}");
        assert!(fcm.state.counts().values().all(|&n| n == round), "each Android phone once per ring");
        assert!(web.state.counts().values().all(|&n| n == round), "each browser once per ring");
        assert_eq!(web.state.counts().len(), 200);
    }
    assert_eq!(fcm.state.tokens_issued.load(Ordering::Relaxed), 2, "one token, renewed once after the 401s");
    assert!(fcm.state.rejected.load(Ordering::Relaxed) > 0 && web.state.rejected.load(Ordering::Relaxed) > 0);
    assert_eq!(daemon.terminate(), Some(0));
}

/// Credentials the push services refuse (a service account for another project): those
/// phones fail (not retried in a loop), the FCM transport stops, and `P/status` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_push_credentials_stop_the_transport_and_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let sim = start_push_sim(d, Faults::default(), 1000, 3, false).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    add_push_tables(&cfg, &sim);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("[fcm]\n", "[fcm]\nproject_id = \"someone-else\"\n");
    std::fs::write(&cfg, text).unwrap();
    let fcm = sim.fcm.as_ref().unwrap();
    ok(&cfg, &["user", "add", "alice"]);
    ok(&cfg, &["doorbell", "add", "front", "--owner", "alice"]);
    for t in &fcm.tokens {
        ok(&cfg, &["phone", "add", "alice", "--fcm", t]);
    }
    ok(&cfg, &["phone", "add", "alice", &token(1)]);
    let daemon = Daemon::spawn(&cfg, d);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    obs.wait_online().await;
    obs.press("front", dingdong::domain::now_ms()).await;
    let outcome = obs.ring_outcome().await;
    assert_eq!((outcome["delivered"].as_i64(), outcome["failed"].as_i64()), (Some(1), Some(3)), "{outcome}");
    let status = format!("{PREFIX}/status");
    let reason = obs
        .wait_for(|t, p| {
            let v: serde_json::Value = serde_json::from_slice(p).ok()?;
            (t == status && v["fcm"]["state"] == "stopped").then(|| v["fcm"]["reason"].to_string())
        })
        .await;
    assert!(reason.contains("403"), "{reason}");
    assert_eq!(fcm.state.rejected.load(Ordering::Relaxed), 3, "stopped means no retry loop");
    assert_eq!(daemon.terminate(), Some(0));
}

/// `dingdong pair open` for alice; the code's 8 digits.
fn pair_code(cfg: &std::path::Path) -> String {
    let out = ok(cfg, &["pair", "open", "--user", "alice"]);
    let shown = out.lines().find_map(|l| l.strip_prefix("pairing code for alice: ")).expect("a code");
    shown.replace(' ', "")
}

/// `dingdong phone-sim ARGS`: its exit code and its one JSON line.
fn phone_sim(cfg: &std::path::Path, args: &[&str]) -> (i32, serde_json::Value) {
    let out = std::process::Command::new(bin()).arg("phone-sim").args(args).arg("--config").arg(cfg).output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let v = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    (out.status.code().unwrap_or(-1), v)
}

/// Phones paired as the app pairs them (the reference phone: `phone-sim pair --fcm TOKEN`
/// and `--webpush FILE`) are phones the FCM and Web Push transports deliver to: each gets the
/// ring once, through the simulators (the browser's message decrypted with its private key).
/// An unpaired phone gets nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_paired_as_android_and_browser_get_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let sim = start_push_sim(d, Faults::default(), 1000, 2, false).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    add_push_tables(&cfg, &sim);
    let (fcm, web) = (sim.fcm.as_ref().unwrap(), sim.webpush.as_ref().unwrap());
    ok(&cfg, &["user", "add", "alice"]);
    ok(&cfg, &["doorbell", "add", "front", "--name", "Front door", "--owner", "alice"]);
    ok(&cfg, &["doorbell", "add", "back", "--owner", "alice"]);
    let daemon = Daemon::spawn(&cfg, d);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    obs.wait_online().await;

    let (pixel, browser) = (d.join("pixel.phone.json"), d.join("firefox.phone.json"));
    let code = pair_code(&cfg);
    let args =
        ["pair", "--code", &code, "--fcm", &fcm.tokens[0], "--name", "Pixel", "--state", pixel.to_str().unwrap()];
    let (exit, v) = phone_sim(&cfg, &args);
    assert_eq!((exit, v["platform"].as_str()), (0, Some("fcm")), "{v}");
    let code = pair_code(&cfg);
    let sub = web.subscriptions[0].file.to_str().unwrap();
    let (exit, v) = phone_sim(&cfg, &["pair", "--code", &code, "--webpush", sub, "--state", browser.to_str().unwrap()]);
    assert_eq!((exit, v["platform"].as_str()), (0, Some("webpush")), "{v}");
    let list: serde_json::Value = serde_json::from_str(&ok(&cfg, &["phone", "list", "--json", "--full"])).unwrap();
    let phones: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["platform"].as_str().unwrap(), p["token"].as_str().unwrap()))
        .collect();
    let endpoint = phones[1].1;
    assert_eq!(phones, [("fcm", fcm.tokens[0].as_str()), ("webpush", endpoint)]);
    assert!(endpoint.ends_with(&format!("/push/{}", web.subscriptions[0].id)), "{endpoint}");

    obs.press("front", dingdong::domain::now_ms()).await;
    let outcome = obs.ring_outcome().await;
    assert_eq!((outcome["phones"].as_i64(), outcome["delivered"].as_i64()), (Some(2), Some(2)), "{outcome}");
    let ring_id = outcome["ring_id"].as_str().unwrap().to_string();
    let platforms: Vec<&str> =
        outcome["results"].as_array().unwrap().iter().map(|r| r["platform"].as_str().unwrap()).collect();
    assert_eq!(platforms, ["fcm", "webpush"], "{outcome}");
    assert_eq!(fcm.state.counts().get(&fcm.tokens[0]), Some(&1));
    let android = fcm.state.received();
    assert_eq!(
        (android.len(), android[0].ring.as_str(), android[0].title.as_str()),
        (1, ring_id.as_str(), "Front door")
    );
    let browsers = web.state.received();
    assert_eq!(browsers.len(), 1, "{browsers:?}");
    assert_eq!(browsers[0].subscription, web.subscriptions[0].id);
    assert_eq!(
        (browsers[0].payload["ring"].as_str(), browsers[0].payload["doorbell"].as_str()),
        (Some(ring_id.as_str()), Some("front"))
    );

    // The Android phone unpairs (a signed request): the next ring (of the other doorbell, so
    // no debounce folds it) reaches the browser only.
    let (exit, v) = phone_sim(&cfg, &["unpair", "--state", pixel.to_str().unwrap()]);
    assert_eq!(exit, 0, "{v}");
    obs.press("back", dingdong::domain::now_ms()).await;
    let outcome = obs.ring_outcome().await;
    assert_eq!((outcome["phones"].as_i64(), outcome["delivered"].as_i64()), (Some(1), Some(1)), "{outcome}");
    assert_eq!(fcm.state.received().len(), 1);
    assert_eq!(web.state.counts().get(&web.subscriptions[0].id), Some(&2));
    assert_eq!(daemon.terminate(), Some(0));
}

/// Household controls where the platform can express them: a browser in quiet hours
/// (`silent`) gets a passive, silent message and is `silenced`; a muted Android phone gets
/// nothing and is `muted`; the usual Android phone rings at high priority. Then "I'm coming"
/// from the owner's iPhone: her Android phone and the browser get the quiet replacement under
/// the same collapse key and topic, naming who is coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn household_controls_and_answers_reach_android_and_browsers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let sim = start_push_sim(d, Faults::default(), 1000, 2, false).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    add_push_tables(&cfg, &sim);
    let (fcm, web) = (sim.fcm.as_ref().unwrap(), sim.webpush.as_ref().unwrap());
    for u in ["alice", "bob", "carol"] {
        ok(&cfg, &["user", "add", u]);
    }
    ok(&cfg, &["doorbell", "add", "front", "--name", "Front door", "--owner", "alice"]);
    ok(&cfg, &["share", "front", "bob"]);
    ok(&cfg, &["share", "front", "carol"]);
    ok(&cfg, &["phone", "add", "alice", "--fcm", &fcm.tokens[0]]);
    ok(&cfg, &["phone", "add", "bob", "--webpush", web.subscriptions[0].file.to_str().unwrap()]);
    ok(&cfg, &["phone", "add", "carol", "--fcm", &fcm.tokens[1]]);
    let tz = dingdong::domain::household::time_zone(None).unwrap();
    let now = jiff::Timestamp::now().to_zoned_datetime(tz);
    let m = now.hour() as i32 * 60 + now.minute() as i32;
    let at = |x: i32| dingdong::domain::household::hhmm(x.rem_euclid(1440) as u16);
    ok(&cfg, &["quiet", "set", "bob", "--from", &at(m - 60), "--to", &at(m + 60), "--mode", "silent"]);
    ok(&cfg, &["mute", "carol", "--for", "1h"]);
    let daemon = Daemon::spawn(&cfg, d);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    obs.wait_online().await;
    let iphone = d.join("iphone.phone.json");
    let code = pair_code(&cfg);
    let (exit, v) =
        phone_sim(&cfg, &["pair", "--code", &code, "--token", &token(1), "--state", iphone.to_str().unwrap()]);
    assert_eq!(exit, 0, "{v}");

    obs.press("front", dingdong::domain::now_ms()).await;
    let outcome = obs.ring_outcome().await;
    let ring_id = outcome["ring_id"].as_str().unwrap().to_string();
    let state = |platform: &str| -> Vec<String> {
        let mut v: Vec<String> = outcome["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["platform"] == platform)
            .map(|r| r["state"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(state("fcm"), ["delivered", "muted"], "{outcome}");
    assert_eq!(state("webpush"), ["silenced"], "{outcome}");
    assert_eq!(state("apns"), ["delivered"], "{outcome}");
    let android = fcm.state.received();
    assert_eq!(android.len(), 1, "carol is muted");
    assert!(android[0].token == fcm.tokens[0] && android[0].high_priority, "{android:?}");
    let browsers = web.state.received();
    assert_eq!(browsers.len(), 1);
    assert_eq!(
        (browsers[0].payload["silent"].as_bool(), browsers[0].payload["level"].as_str()),
        (Some(true), Some("passive"))
    );

    let (exit, v) = phone_sim(&cfg, &["answer", &ring_id, "--state", iphone.to_str().unwrap()]);
    assert_eq!((exit, v["answered_by"].as_str()), (0, Some("alice")), "{v}");
    let topic = format!("{PREFIX}/ring/{ring_id}");
    let again = obs
        .wait_for(|t, p| {
            let v: serde_json::Value = serde_json::from_slice(p).ok()?;
            (t == topic && v["answered_by"] == "alice").then_some(v)
        })
        .await;
    assert_eq!(
        (again["answer"]["phones"].as_u64(), again["answer"]["delivered"].as_u64()),
        (Some(2), Some(2)),
        "{again}"
    );
    let android = fcm.state.received();
    assert_eq!(android.len(), 2);
    let r = &android[1];
    assert_eq!(
        (r.token.as_str(), r.body.as_str(), r.high_priority),
        (fcm.tokens[0].as_str(), "alice is getting the door", false)
    );
    assert_eq!(r.collapse_key, android[0].collapse_key);
    let browsers = web.state.received();
    assert_eq!(browsers.len(), 2);
    assert_eq!(browsers[1].payload["answered_by"], "alice");
    assert_eq!(browsers[1].topic, browsers[0].topic, "the replacement takes the ring's place");
    assert_eq!(sim.state.received().len(), 1, "the one who answered gets no replacement");
    assert_eq!(daemon.terminate(), Some(0));
}
