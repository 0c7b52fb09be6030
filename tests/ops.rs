//! The operator's tools against real parts (mosquitto, the `dingdong` binary, SQLite files,
//! the built-in APNs simulator): the metrics endpoint after a scripted ring, the ring
//! history, a backup while the daemon runs, a database from a newer dingdong, Home
//! Assistant following doorbells changed by the CLI, bridge topics from `[bridges]`, and the
//! `STATUS=` line systemd shows.
#![cfg(feature = "sim")]

mod util;

use dingdong::app::sim::TokenInfo;
use dingdong::domain::Environment;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use util::*;

fn append(cfg: &Path, toml: &str) {
    let mut text = std::fs::read_to_string(cfg).unwrap();
    text.push_str(toml);
    std::fs::write(cfg, text).unwrap();
}

/// One plain HTTP GET of `/metrics`; the body.
fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    got.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// A scripted ring: the metrics endpoint counts exactly what the ring's outcome says; the
/// history lists it with the same counts and latency; `rings show` has every phone; a backup
/// taken while the daemon runs has it, private, and is not overwritten unless asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_history_and_backup_after_a_scripted_ring() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let sim = start_sim(d).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    let port = free_port();
    append(&cfg, &format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    ok(&cfg, &["user", "add", "alice"]);
    ok(&cfg, &["doorbell", "add", "front", "--name", "Front door", "--owner", "alice"]);
    let (live, pad, stale, unknown) = (token(1), token(2), token(3), token(4));
    ok(&cfg, &["phone", "add", "alice", &live]);
    ok(&cfg, &["phone", "add", "alice", &pad, "--sandbox"]);
    ok(&cfg, &["phone", "add", "alice", &stale]);
    ok(&cfg, &["phone", "add", "alice", &unknown]);
    let info = |env| TokenInfo { environment: Some(env), unregistered_at: None };
    sim.state.register(&live, info(Environment::Production));
    sim.state.register(&pad, info(Environment::Sandbox));
    sim.state.register(&stale, info(Environment::Production));
    sim.state.unregister(&stale, dingdong::domain::now_ms() + 1_000);

    let daemon = Daemon::spawn(&cfg, d);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    obs.wait_online().await;
    let before = scrape(port);
    assert_eq!(sum(&before, "dingdong_notifications_total", &[]), 0.0, "{before}");
    obs.press("front", dingdong::domain::now_ms()).await;
    let outcome = obs.ring_outcome().await;
    assert_eq!((outcome["delivered"].as_i64(), outcome["pruned"].as_i64()), (Some(2), Some(2)), "{outcome}");

    let t0 = Instant::now();
    let m = scrape(port);
    let scrape_time = t0.elapsed();
    for state in ["delivered", "failed", "pruned", "expired"] {
        let counted = sum(&m, "dingdong_notifications_total", &[&format!("outcome=\"{state}\"")]);
        assert_eq!(counted, outcome[state].as_f64().unwrap(), "{state}: {m}");
    }
    let delivered_sandbox =
        sum(&m, "dingdong_notifications_total", &["environment=\"sandbox\"", "outcome=\"delivered\""]);
    assert_eq!(delivered_sandbox, 1.0, "{m}");
    assert_eq!(sum(&m, "dingdong_notifications_total", &["reason=\"Unregistered\""]), 1.0, "{m}");
    assert_eq!(sum(&m, "dingdong_notifications_total", &["reason=\"BadDeviceToken\""]), 1.0, "{m}");
    assert_eq!(sum(&m, "dingdong_presses_total", &["source=\"native\""]), 1.0, "{m}");
    assert_eq!(sum(&m, "dingdong_rings_total", &[]), 1.0, "{m}");
    assert_eq!(sum(&m, "dingdong_rings_finished_total", &["state=\"done\""]), 1.0, "{m}");
    assert_eq!(sum(&m, "dingdong_press_to_last_answer_seconds_count", &[]), 1.0, "{m}");
    assert_eq!(sum(&m, "dingdong_press_to_first_request_seconds_count", &[]), 1.0, "{m}");
    assert_eq!(sum(&m, "dingdong_outbox_pending_phones", &[]), 0.0, "{m}");
    assert_eq!(sum(&m, "dingdong_mqtt_events_dropped_total", &[]), 0.0, "{m}");
    assert!(sum(&m, "dingdong_apns_connections", &[]) >= 1.0, "{m}");
    assert!(sum(&m, "dingdong_apns_jwt_age_seconds", &[]) >= 0.0 && m.contains("dingdong_apns_jwt_age_seconds "));
    eprintln!("scrape of {} bytes in {scrape_time:?}", m.len());

    // The history: the same ring, counts and latency.
    let ring_id = outcome["ring_id"].as_str().unwrap();
    let list: serde_json::Value = serde_json::from_str(&ok(&cfg, &["rings", "--json"])).unwrap();
    let r = &list[0];
    assert_eq!(r["ring_id"], ring_id);
    for key in ["state", "phones", "delivered", "failed", "pruned", "expired", "pending", "presses"] {
        assert_eq!(r[key], outcome[key], "{key}");
    }
    assert_eq!(r["latency_ms"], outcome["latency_ms"], "the latency the outbox measured is kept");
    assert_eq!(r["doorbell_name"], "Front door");
    let table = ok(&cfg, &["rings", "--doorbell", "front", "--since", "1h"]);
    assert!(table.contains(ring_id) && table.contains("done"), "{table}");
    assert!(ok(&cfg, &["rings", "--doorbell", "back"]).contains("no rings match"));
    let show: serde_json::Value = serde_json::from_str(&ok(&cfg, &["rings", "show", ring_id, "--json"])).unwrap();
    let phones = show["results"].as_array().unwrap();
    assert_eq!(phones.len(), 4, "{show}");
    assert!(phones.iter().all(|p| p["token"].as_str().unwrap().len() == 8), "shortened: {show}");
    let full: serde_json::Value =
        serde_json::from_str(&ok(&cfg, &["rings", "show", ring_id, "--json", "--full"])).unwrap();
    assert!(full["results"].as_array().unwrap().iter().any(|p| p["token"] == live.as_str()));
    let text = ok(&cfg, &["rings", "show", ring_id]);
    assert!(text.contains("Unregistered") && text.contains(&stale[..8]) && !text.contains(&stale), "{text}");
    let missing = cli(&cfg, &["rings", "show", "nosuchring"]);
    assert_eq!(missing.status.code(), Some(2));

    // A backup while the daemon runs.
    let copy = d.join("backups/copy.db");
    std::fs::create_dir(d.join("backups")).unwrap();
    let said = ok(&cfg, &["backup", copy.to_str().unwrap()]);
    assert!(said.contains("backed up"), "{said}");
    assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600);
    let store = dingdong::store::Store::open_readonly(&copy).unwrap();
    assert_eq!(store.ring_line(ring_id).unwrap().summary.delivered, 2);
    drop(store);
    let again = cli(&cfg, &["backup", copy.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2), "refused without --force");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("exists already") && err.lines().count() == 1, "{err}");
    ok(&cfg, &["backup", copy.to_str().unwrap(), "--force"]);
    assert_eq!(daemon.terminate(), Some(0));
}

/// A database a newer dingdong wrote: every command refuses it with one line, exit 2, and
/// leaves it as it is.
#[test]
fn a_database_from_a_newer_dingdong_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = d.join("dingdong.db");
    drop(dingdong::store::Store::open(&db).unwrap());
    let newer = dingdong::store::schema::MIGRATIONS.len() as u32 + 3;
    rusqlite::Connection::open(&db).unwrap().pragma_update(None, "user_version", newer).unwrap();
    let cfg = d.join("config.toml");
    std::fs::write(
        &cfg,
        "[gateway]\nid = \"gw\"\ndatabase = \"dingdong.db\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\nclient_id = \"c\"\n\
         topic_prefix = \"dd/gw\"\n[apns]\ntransport = \"http2\"\nenvironment = \"production\"\ntopic = \"t.t\"\n\
         [apns.token]\nkey_file = \"AuthKey_KEYID12345.p8\"\nkey_id = \"KEYID12345\"\nteam_id = \"TEAMID1234\"\n",
    )
    .unwrap();
    // Never read: the database is refused first.
    std::fs::write(d.join("AuthKey_KEYID12345.p8"), "not a key").unwrap();
    for args in [&["user", "list"][..], &["run"][..]] {
        let out = cli(&cfg, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
        assert!(line.contains(&format!("schema version {newer} is newer than this dingdong knows")), "{err}");
    }
    let v: u32 = rusqlite::Connection::open(&db).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, newer);
}

/// The retained discovery config of `doorbell`, as the observer sees it next.
async fn config_of(obs: &mut Observer, doorbell: &str) -> String {
    let topic = format!("homeassistant/event/gw-test_{doorbell}/config");
    obs.wait_for(|t, p| (t == topic).then(|| String::from_utf8_lossy(p).into_owned())).await
}

/// Doorbells added, renamed and removed with the CLI beside the running daemon reach Home
/// Assistant within a second; one removed while the daemon was stopped is removed at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_follows_the_doorbells() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let sim = start_sim(d).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    ok(&cfg, &["user", "add", "alice"]);
    ok(&cfg, &["doorbell", "add", "front", "--owner", "alice"]);
    ok(&cfg, &["doorbell", "add", "garage", "--owner", "alice"]);
    let daemon = Daemon::spawn(&cfg, d);
    let mut obs = Observer::connect(broker.port, &["homeassistant/event/+/config"]).await;
    let front: serde_json::Value = serde_json::from_str(&config_of(&mut obs, "front").await).unwrap();
    assert_eq!(front["default_entity_id"], "event.gw_test_front");
    assert!(front.get("object_id").is_none());

    ok(&cfg, &["doorbell", "add", "back", "--name", "Back", "--owner", "alice"]);
    let back: serde_json::Value = serde_json::from_str(&config_of(&mut obs, "back").await).unwrap();
    assert_eq!(back["name"], "Back");
    ok(&cfg, &["doorbell", "rename", "back", "--name", "Garden gate"]);
    let renamed: serde_json::Value = serde_json::from_str(&config_of(&mut obs, "back").await).unwrap();
    assert_eq!(renamed["name"], "Garden gate");
    ok(&cfg, &["doorbell", "rm", "back"]);
    assert_eq!(config_of(&mut obs, "back").await, "", "an empty retained config removes the entity");

    // Removed while stopped: its retained config is found and removed at the next start.
    assert_eq!(daemon.terminate(), Some(0));
    ok(&cfg, &["doorbell", "rm", "garage"]);
    let daemon = Daemon::spawn(&cfg, d);
    assert_eq!(config_of(&mut obs, "garage").await, "");
    drop(obs);
    // The broker keeps front's config and no other.
    let mut fresh = Observer::connect(broker.port, &["homeassistant/event/+/config"]).await;
    let (t, _) = fresh.wait_for(|t, p| (!p.is_empty()).then(|| (t.to_string(), p.len()))).await;
    assert_eq!(t, "homeassistant/event/gw-test_front/config");
    assert_eq!(daemon.terminate(), Some(0));
}

/// Bridge topics come from `[bridges]`: a Tasmota with another FullTopic, rtl_433 with its
/// own events topic, and Tasmota's RFRECEIVED topic (SetOption4) ring their bound buttons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_topics_come_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let sim = start_sim(d).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    append(
        &cfg,
        "\n[bridges]\nrtl_433_events = \"sdr/433/events\"\ntasmota_topics = [\"+/tele/RESULT\", \"tele/+/RFRECEIVED\"]\n",
    );
    ok(&cfg, &["user", "add", "alice"]);
    ok(&cfg, &["doorbell", "add", "marker", "--owner", "alice"]);
    for (bell, source, key) in
        [("front", "tasmota", "E5CD7E"), ("back", "rtl_433", "doorbell/{25}fb2dd58"), ("side", "tasmota", "A1B2C3")]
    {
        ok(&cfg, &["doorbell", "add", bell, "--owner", "alice"]);
        ok(&cfg, &["doorbell", "bind", bell, "--source", source, "--key", key]);
    }
    let daemon = Daemon::spawn(&cfg, d);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    obs.wait_online().await;
    let rf = |data: &str| {
        format!(
            r#"{{"Time":"2026-11-23T11:14:14","RfReceived":{{"Sync":12220,"Low":440,"High":1210,"Data":"{data}","RfKey":"None"}}}}"#
        )
    };
    obs.publish("rfbridge/tele/RESULT", rf("E5CD7E").as_bytes()).await;
    assert_eq!(obs.ring_outcome().await["doorbell"], "front");
    let flex = r#"{"time":"2026-11-23 11:14:15","model":"doorbell","count":3,"num_rows":3,"rows":[{"len":25,"data":"fb2dd58"},{"len":25,"data":"fb2dd58"},{"len":25,"data":"fb2dd58"}],"codes":["{25}fb2dd58","{25}fb2dd58","{25}fb2dd58"]}"#;
    obs.publish("sdr/433/events", flex.as_bytes()).await;
    assert_eq!(obs.ring_outcome().await["doorbell"], "back");
    obs.publish("tele/rfbridge/RFRECEIVED", rf("A1B2C3").as_bytes()).await;
    assert_eq!(obs.ring_outcome().await["doorbell"], "side");
    // The default shapes are not listened to any more.
    obs.publish("tele/rfbridge/RESULT", rf("E5CD7E").as_bytes()).await;
    obs.publish("rtl_433/gw/events", flex.as_bytes()).await;
    ok(&cfg, &["ring", "marker"]); // published after them: its outcome is the next one
    assert_eq!(obs.ring_outcome().await["doorbell"], "marker");
    assert_eq!(daemon.terminate(), Some(0));
}

/// systemd's notify socket, played by a datagram socket: READY=1, then a STATUS= line with
/// the counts, and after a ring, the ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_line_says_ready_counts_and_the_last_ring() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let sim = start_sim(d).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    ok(&cfg, &["user", "add", "alice"]);
    ok(&cfg, &["doorbell", "add", "front", "--owner", "alice"]);
    ok(&cfg, &["phone", "add", "alice", &token(1)]);
    sim.state.register(&token(1), TokenInfo { environment: Some(Environment::Production), unregistered_at: None });
    let socket_path = d.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let log = d.join("daemon.log");
    let mut child = std::process::Command::new(bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut said = Vec::new();
    let wait_for = |want: &dyn Fn(&str) -> bool, said: &mut Vec<String>| {
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 4096];
        loop {
            if said.iter().any(|s| want(s)) {
                return;
            }
            assert!(Instant::now() < deadline, "notify messages: {said:?}");
            if let Ok(n) = socket.recv(&mut buf) {
                said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    wait_for(&|s| s.contains("READY=1"), &mut said);
    wait_for(&|s| s.contains("STATUS=ready; 1 doorbells, 1 phones; no ring yet"), &mut said);
    ok(&cfg, &["ring", "front"]);
    wait_for(&|s| s.starts_with("STATUS=ready") && s.contains("front: done (1/1 delivered)"), &mut said);
    let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
