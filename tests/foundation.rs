//! The whole path of a ring through real parts: mosquitto, the `dingdong` binary, SQLite
//! files, TLS, and the built-in APNs simulator.
#![cfg(feature = "sim")]

mod util;

use dingdong::app::sim::TokenInfo;
use dingdong::domain::Environment;
use std::collections::HashMap;
use util::*;

fn register(sim: &dingdong::app::sim::Sim, t: &str, env: Environment) {
    sim.state.register(t, TokenInfo { environment: Some(env), unregistered_at: None });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_press_reaches_owner_and_shared_phones_and_prunes_stale_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let sim = start_sim(d).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);

    let (owner_phone, owner_pad, stale, friend, outsider, bad) =
        (token(1), token(2), token(3), token(4), token(5), token(6));
    for u in ["alice", "bob", "carol"] {
        ok(&cfg, &["user", "add", u]);
    }
    ok(&cfg, &["doorbell", "add", "front", "--name", "Front door", "--owner", "alice"]);
    ok(&cfg, &["share", "front", "bob"]);
    ok(&cfg, &["phone", "add", "alice", &owner_phone, "--name", "iPhone"]);
    ok(&cfg, &["phone", "add", "alice", &owner_pad, "--sandbox"]);
    ok(&cfg, &["phone", "add", "alice", &stale]);
    ok(&cfg, &["phone", "add", "alice", &bad]);
    ok(&cfg, &["phone", "add", "bob", &friend]);
    // Bob also registered Alice's iPhone: it must still ring once.
    ok(&cfg, &["phone", "add", "bob", &owner_phone]);
    ok(&cfg, &["phone", "add", "carol", &outsider]);

    register(&sim, &owner_phone, Environment::Production);
    register(&sim, &owner_pad, Environment::Sandbox);
    register(&sim, &friend, Environment::Production);
    register(&sim, &outsider, Environment::Production);
    register(&sim, &stale, Environment::Production);
    // Apple learnt of the uninstall after the phone registered with us: prune.
    sim.state.unregister(&stale, dingdong::domain::now_ms() + 1_000);
    // `bad` is unknown to the simulator: 400 BadDeviceToken.

    let daemon = Daemon::spawn(&cfg, d);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    obs.wait_online().await;
    let at = dingdong::domain::now_ms();
    obs.press("front", at).await;
    let outcome = obs.ring_outcome().await;

    // Exactly the right tokens, once each.
    let counts = sim.state.counts();
    let expected: HashMap<String, usize> =
        [(owner_phone.clone(), 1), (owner_pad.clone(), 1), (friend.clone(), 1)].into();
    assert_eq!(counts, expected, "deliveries");

    // With the right headers and payload.
    for r in sim.state.received() {
        assert_eq!(r.topic.as_deref(), Some(TOPIC));
        assert_eq!(r.push_type.as_deref(), Some("alert"));
        assert_eq!(r.priority.as_deref(), Some("10"));
        assert_eq!(r.collapse_id.as_deref(), Some("front"));
        assert_eq!(r.expiration, Some(((at + 300_000) / 1000).to_string()));
        assert_eq!(r.auth, "token");
        assert_eq!(r.payload["aps"]["alert"]["title"], "Front door");
        assert!(r.payload["aps"]["alert"]["body"].as_str().unwrap().contains("Front door"));
        assert_eq!(r.payload["aps"]["thread-id"], "doorbell-front");
        assert_eq!(r.payload["aps"]["interruption-level"], "time-sensitive");
        assert_eq!(r.payload["aps"]["sound"], "default");
        let want_env = if r.token == owner_pad { Environment::Sandbox } else { Environment::Production };
        assert_eq!(r.environment, want_env, "sandbox phones go to the sandbox host");
    }

    // The published outcome matches.
    assert_eq!(outcome["ring_id"], dingdong::service::ringer::ring_id("front", Some(at)));
    assert_eq!(outcome["doorbell"], "front");
    assert_eq!((outcome["phones"].as_i64(), outcome["delivered"].as_i64()), (Some(5), Some(3)));
    assert_eq!((outcome["pruned"].as_i64(), outcome["failed"].as_i64()), (Some(2), Some(0)));
    let results = outcome["results"].as_array().unwrap();
    let state_of =
        |t: &str| results.iter().find(|r| r["token"] == t[..8]).map(|r| r["state"].as_str().unwrap().to_string());
    assert_eq!(state_of(&stale).as_deref(), Some("pruned"));
    assert_eq!(state_of(&bad).as_deref(), Some("pruned"));
    assert_eq!(state_of(&outsider), None);
    assert!(outcome["latency_ms"]["all"].as_i64().is_some());

    // The stale and bad phones are gone; everyone else stays.
    let list = ok(&cfg, &["phone", "list", "--json", "--full"]);
    let phones: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    let left: Vec<&str> = phones.iter().map(|p| p["token"].as_str().unwrap()).collect();
    assert!(!left.contains(&stale.as_str()) && !left.contains(&bad.as_str()));
    assert_eq!(left.len(), 5);
    let short = ok(&cfg, &["phone", "list"]);
    assert!(!short.contains(&owner_phone), "tokens are shortened unless --full");

    assert_eq!(daemon.terminate(), Some(0), "SIGTERM exits 0");
}

async fn certificate_household(auth: Auth) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let sim = start_sim(d).await;
    let cfg = write_config(d, &broker.url(), &sim, auth);
    ok(&cfg, &["user", "add", "alice"]);
    ok(&cfg, &["doorbell", "add", "gate", "--owner", "alice"]);
    ok(&cfg, &["phone", "add", "alice", &token(10)]);
    ok(&cfg, &["phone", "add", "alice", &token(11), "--sandbox"]);
    let daemon = Daemon::spawn(&cfg, d);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    obs.wait_online().await;
    // Through the CLI, exactly as a bridge would publish it.
    ok(&cfg, &["ring", "gate"]);
    let outcome = obs.ring_outcome().await;
    assert_eq!(outcome["delivered"].as_i64(), Some(2), "{outcome}");
    let received = sim.state.received();
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|r| r.auth == "certificate"));
    assert_eq!(daemon.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_auth_with_a_p12_bundle() {
    certificate_household(Auth::P12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_auth_with_pem_files() {
    certificate_household(Auth::Pem).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_and_unknown_buttons_are_logged_and_the_daemon_keeps_ringing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let sim = start_sim(d).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    ok(&cfg, &["user", "add", "alice"]);
    ok(&cfg, &["doorbell", "add", "front", "--owner", "alice"]);
    ok(&cfg, &["phone", "add", "alice", &token(20)]);
    let daemon = Daemon::spawn(&cfg, d);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    obs.wait_online().await;
    obs.publish(&format!("{PREFIX}/button/front/press"), b"{not json").await;
    obs.publish(&format!("{PREFIX}/button/front/press"), &vec![b'x'; 10_000]).await;
    obs.publish(&format!("{PREFIX}/button/front/press"), br#"{"at":"yesterday"}"#).await;
    obs.press("nosuchbell", dingdong::domain::now_ms()).await;
    obs.press("front", dingdong::domain::now_ms()).await;
    let outcome = obs.ring_outcome().await;
    assert_eq!(outcome["doorbell"], "front");
    assert_eq!(outcome["delivered"].as_i64(), Some(1));
    let log_path = daemon.log.clone();
    assert_eq!(daemon.terminate(), Some(0));
    let log = std::fs::read_to_string(log_path).unwrap();
    assert_eq!(log.matches("malformed message ignored").count(), 3, "{log}");
    assert!(log.contains(&format!("{PREFIX}/button/front/press")), "warnings name the topic");
    assert!(log.contains("bound to no doorbell") && log.contains("nosuchbell"), "{log}");
    assert!(!log.contains(&token(20)), "tokens are never logged whole");
}

/// A config for store-only commands: no broker or APNs is reached; the key file may not exist.
fn offline_config(d: &std::path::Path, key_file: &str) -> std::path::PathBuf {
    let cfg = d.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[gateway]
id = "gw"
database = "db.sqlite"
[mqtt]
url = "mqtt://127.0.0.1:1"
client_id = "c"
topic_prefix = "{PREFIX}"
[apns]
transport = "http2"
environment = "production"
topic = "{TOPIC}"
[apns.token]
key_file = "{key_file}"
key_id = "ABCDEFGHIJ"
team_id = "TEAMID1234"
"#
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn cli_errors_are_one_line_name_the_problem_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = offline_config(d, "missing.p8");
    let err = |args: &[&str]| {
        let out = cli(&cfg, args);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        stderr
    };
    ok(&cfg, &["user", "add", "alice"]);
    assert!(err(&["user", "add", "alice"]).contains("already exists"));
    assert!(err(&["user", "add", "a/b"]).contains("may only contain"));
    assert!(err(&["doorbell", "add", "front", "--owner", "nobody"]).contains("no user 'nobody'"));
    assert!(err(&["phone", "add", "alice", "not-a-token"]).contains("invalid token"));
    assert!(err(&["phone", "add", "alice", &"ab".repeat(20)]).contains("32 to 100 bytes"));
    assert!(err(&["phone", "add", "ghost", &token(1)]).contains("no user 'ghost'"));
    assert!(err(&["share", "nodoor", "alice"]).contains("no doorbell 'nodoor'"));
    assert!(err(&["doorbell", "bind", "nodoor", "--source", "native", "--key", "k"]).contains("no doorbell"));
    assert!(err(&["ring", "nodoor"]).contains("no doorbell 'nodoor'"));
    assert!(err(&["phone", "rm", &token(1)]).contains("no phone"));
    let e = err(&["run"]);
    assert!(e.contains("apns.token.key_file") && e.contains("missing.p8") && e.contains("fix:"), "{e}");
    // Nothing was changed by the failures.
    let users: Vec<serde_json::Value> = serde_json::from_str(&ok(&cfg, &["user", "list", "--json"])).unwrap();
    assert_eq!(users.len(), 1);
    assert!(ok(&cfg, &["phone", "list", "--json"]).trim() == "[]");

    // A config with a typo: named file, key and fix; exit 2.
    let bad = d.join("bad.toml");
    std::fs::write(&bad, std::fs::read_to_string(&cfg).unwrap().replace("team_id", "teamid")).unwrap();
    let out = cli(&bad, &["user", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("bad.toml") && stderr.contains("apns.token.teamid") && stderr.contains("fix:"), "{stderr}");
    let out = cli(&d.join("nope.toml"), &["run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));
}

#[test]
fn bulk_import_of_the_seed_table_reports_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = offline_config(d, "k.p8");
    // The seeds' `client_id,deviceToken` table: 120,000 rows over 1,000 users, some tokens
    // written with spaces (seed 002), a few broken lines.
    let mut csv = String::from("client_id,deviceToken\n");
    for i in 0..120_000u32 {
        let t = token(i);
        let t = if i % 7 == 0 { format!("{} {} {}", &t[..16], &t[16..40], &t[40..]) } else { t };
        csv.push_str(&format!("user{},{}\n", i % 1000, t));
    }
    csv.push_str("user1,xyz\n");
    csv.push_str("broken line\n");
    let file = d.join("tokens.csv");
    std::fs::write(&file, &csv).unwrap();
    let out = ok(&cfg, &["phone", "import", "--csv", file.to_str().unwrap()]);
    assert!(out.contains("120000 added, 0 updated, 2 rejected, 1000 users created"), "{out}");
    assert!(out.contains("line 120002: rejected"), "{out}");
    assert!(out.contains("line 120003: rejected: expected user,token"), "{out}");
    // Once more: every row is an update now.
    let out = ok(&cfg, &["phone", "import", "--csv", file.to_str().unwrap()]);
    assert!(out.contains("0 added, 120000 updated"), "{out}");
    // One token a line for one user.
    let plain = d.join("plain.txt");
    std::fs::write(&plain, format!("{}\n{}\n", token(1_000_001), token(1_000_002))).unwrap();
    let out = ok(&cfg, &["phone", "import", "user1", plain.to_str().unwrap()]);
    assert!(out.contains("2 added"), "{out}");
}
