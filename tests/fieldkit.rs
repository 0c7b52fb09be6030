//! The field kit through real parts: `dingdong diag` against a healthy setup and eight
//! injected faults; the radio bridges' own payloads (and the real `rtl_433`) ringing bound
//! doorbells through mosquitto; `doorbell learn`; Home Assistant discovery.
#![cfg(feature = "sim")]

mod util;

use dingdong::app::sim::{CertOptions, Sim, SimOptions};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use util::*;

const RTL_KEY: &str = "Generic-Remote/1234/42";
/// rtl_433's own `-y` example: a Generic-Remote (EV1527-style) code, id 1234, cmd 42.
const RTL_CODE: &str = "{25}fb2dd58";
/// Tasmota docs, RF bridge.
const TASMOTA: &str = r#"{"RfReceived":{"Sync":12220,"Low":440,"High":1210,"Data":"E5CD7E","RfKey":"None"}}"#;
/// zigbee2mqtt docs: an Aqara wireless mini switch's single click.
const Z2M: &str = r#"{"action":"single","battery":100,"linkquality":134,"voltage":3025}"#;

struct Setup {
    dir: tempfile::TempDir,
    broker: Mosquitto,
    sim: Sim,
    cfg: PathBuf,
}

async fn setup(certs: CertOptions, clock_skew_secs: i64, auth: Auth) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let sim = Sim::start(SimOptions {
        http2: Some(([127, 0, 0, 1], 0).into()),
        out_dir: d.join("apns-sim"),
        max_streams: 1000,
        certs: CertOptions { topic: TOPIC.into(), ..certs },
        clock_skew_secs,
        ..Default::default()
    })
    .await
    .expect("simulator starts");
    let cfg = write_config(d, &broker.url(), &sim, auth);
    ok(&cfg, &["user", "add", "alice"]);
    ok(&cfg, &["doorbell", "add", "front", "--name", "Front door", "--owner", "alice"]);
    ok(&cfg, &["doorbell", "bind", "front", "--source", "rtl_433", "--key", RTL_KEY]);
    ok(&cfg, &["phone", "add", "alice", &token(1)]);
    Setup { dir, broker, sim, cfg }
}

async fn healthy() -> Setup {
    setup(CertOptions::default(), 0, Auth::Token).await
}

/// Runs diag (`--json`) off the test's runtime threads; returns its exit code and report.
async fn diag(cfg: &Path) -> (i32, serde_json::Value) {
    let cfg = cfg.to_path_buf();
    let out = tokio::task::spawn_blocking(move || cli(&cfg, &["diag", "--json"])).await.unwrap();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("diag --json printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), report)
}

fn problems(report: &serde_json::Value, level: &str) -> BTreeSet<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["level"] == level)
        .map(|c| c["problem"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Diag exits 1 and names exactly `expected` among its failures.
async fn assert_fault(s: &Setup, expected: &str) {
    let (code, report) = diag(&s.cfg).await;
    let fails = problems(&report, "fail");
    assert_eq!(fails, BTreeSet::from([expected.to_string()]), "{report:#}");
    assert_eq!(code, 1, "{report:#}");
    // The table says the same in one line with its fix.
    let table = cli(&s.cfg, &["diag"]);
    let text = String::from_utf8_lossy(&table.stdout);
    let line = text.lines().find(|l| l.starts_with("FAIL") && l.contains(expected)).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("; fix: "), "{line}");
}

fn set_config(cfg: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(cfg).unwrap();
    assert!(text.contains(from), "{from} not in config");
    std::fs::write(cfg, text.replace(from, to)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diag_passes_a_healthy_setup() {
    let s = healthy().await;
    let (code, report) = diag(&s.cfg).await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(problems(&report, "fail"), BTreeSet::new(), "{report:#}");
    let names: BTreeSet<_> = report["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for n in [
        "config",
        "files",
        "database",
        "disk",
        "broker",
        "certificate",
        "apns",
        "apns credentials",
        "clock",
        "doorbells",
    ] {
        assert!(names.contains(n), "check {n} missing: {report:#}");
    }
    let creds = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "apns credentials").unwrap();
    assert!(creds["figure"].as_str().unwrap().contains("BadDeviceToken"), "{creds}");
    let table = ok(&s.cfg, &["diag"]);
    assert!(table.contains("round trip") && table.contains("0 failed"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diag_names_a_wrong_key_id() {
    let s = healthy().await;
    let kid = s.sim.credentials.key_id.clone();
    set_config(&s.cfg, &format!("key_id = \"{kid}\""), "key_id = \"WRONGKEY12\"");
    assert_fault(&s, "wrong key id").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diag_names_an_expired_certificate() {
    let s = setup(CertOptions { expired_client_cert: true, ..Default::default() }, 0, Auth::Pem).await;
    assert_fault(&s, "expired certificate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diag_names_a_broker_down() {
    let s = healthy().await;
    set_config(&s.cfg, &s.broker.url(), &format!("mqtt://127.0.0.1:{}", free_port()));
    assert_fault(&s, "broker down").await;
}

/// A broker as Debian installs it (Nagle's algorithm on): a press that follows an
/// acknowledgement waits some 40 ms. diag measures it and says how to fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diag_names_a_broker_that_holds_messages_back() {
    let s = healthy().await;
    let dir = s.dir.path().join("stock");
    std::fs::create_dir_all(&dir).unwrap();
    let stock = Mosquitto::start_with(&dir, free_port(), false);
    set_config(&s.cfg, &s.broker.url(), &stock.url());
    let (code, report) = diag(&s.cfg).await;
    assert_eq!(code, 0, "a warning, not a failure: {report:#}");
    let broker = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "broker").unwrap();
    assert_eq!(broker["level"], "warn", "{broker}");
    assert!(broker["fix"].as_str().unwrap().contains("set_tcp_nodelay true"), "{broker}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diag_names_clock_skew() {
    let s = setup(CertOptions::default(), 600, Auth::Token).await;
    assert_fault(&s, "clock skew").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diag_names_a_corrupt_database() {
    let s = healthy().await;
    let db = s.dir.path().join("dingdong.db");
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[..100].fill(0x55);
    std::fs::write(&db, bytes).unwrap();
    assert_fault(&s, "corrupt database").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diag_names_a_wrong_apns_environment() {
    let s = setup(CertOptions { sandbox_client_cert: true, ..Default::default() }, 0, Auth::Pem).await;
    assert_fault(&s, "wrong APNs environment").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diag_names_a_doorbell_with_no_binding() {
    let s = healthy().await;
    ok(&s.cfg, &["doorbell", "add", "back", "--owner", "alice"]);
    assert_fault(&s, "no doorbell bound").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diag_names_an_unreadable_key_file() {
    let s = healthy().await;
    let key = s.sim.credentials.key_file.clone();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    if std::fs::read(&key).is_ok() {
        // root reads anything: make it unreadable for everyone instead.
        std::fs::remove_file(&key).unwrap();
        std::fs::create_dir(&key).unwrap();
    }
    assert_fault(&s, "unreadable key file").await;
}

/// `rtl_433 -y CODE -F json`: the real decoder's output lines for a known code.
fn rtl_433_events(code: &str) -> Vec<String> {
    let out = Command::new("rtl_433")
        .args(["-c", "0", "-R", "30", "-F", "json", "-M", "time:unix:usec:utc", "-y", code])
        .stdin(Stdio::null())
        .output()
        .expect("rtl_433 is installed (scripts/test.sh installs the rtl-433 package)");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(str::to_string)
        .collect();
    assert!(!lines.is_empty(), "rtl_433 decoded nothing: {}", String::from_utf8_lossy(&out.stderr));
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridges_ring_bound_doorbells_only_and_learn_binds_the_next_press() {
    let s = healthy().await;
    let d = s.dir.path();
    ok(&s.cfg, &["doorbell", "add", "back", "--name", "Back door", "--owner", "alice"]);
    ok(&s.cfg, &["doorbell", "bind", "back", "--source", "tasmota", "--key", "E5CD7E"]);
    ok(&s.cfg, &["doorbell", "add", "side", "--owner", "alice"]);
    ok(&s.cfg, &["doorbell", "bind", "side", "--source", "zigbee2mqtt", "--key", "side_button/single"]);
    ok(&s.cfg, &["doorbell", "add", "garden", "--owner", "alice"]);

    let mut obs = Observer::connect(
        s.broker.port,
        &[
            &format!("{PREFIX}/status"),
            &format!("{PREFIX}/ring/+"),
            &format!("{PREFIX}/doorbell/+/event"),
            "homeassistant/event/+/config",
        ],
    )
    .await;
    let daemon = Daemon::spawn(&s.cfg, d);
    obs.wait_online().await;

    // Home Assistant discovery: one event entity per doorbell.
    let mut announced = BTreeSet::new();
    while announced.len() < 4 {
        let (topic, v) =
            obs.wait_for(|t, p| t.starts_with("homeassistant/event/").then(|| (t.to_string(), p.to_vec()))).await;
        let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(v["device_class"], "doorbell");
        assert!(v["event_types"].as_array().unwrap().contains(&"ring".into()));
        assert_eq!(v["availability"][0]["topic"], format!("{PREFIX}/status"));
        announced.insert(topic);
    }
    assert!(announced.contains("homeassistant/event/gw-test_front/config"), "{announced:?}");

    // The real rtl_433's output, published three times as a bridge repeats a code: one ring.
    let events = rtl_433_events(RTL_CODE);
    for _ in 0..3 {
        for e in &events {
            obs.publish("rtl_433/gw/events", e.as_bytes()).await;
        }
    }
    // Unbound buttons: ignored, recorded for diag.
    obs.publish(
        "tele/rfbridge/RESULT",
        br#"{"RfReceived":{"Sync":12000,"Low":400,"High":1200,"Data":"ABCDEF","RfKey":"None"}}"#,
    )
    .await;
    obs.publish("zigbee2mqtt/side_button", br#"{"action":"release"}"#).await;
    obs.publish("tele/rfbridge/RESULT", TASMOTA.as_bytes()).await;
    obs.publish("zigbee2mqtt/side_button", Z2M.as_bytes()).await;

    let mut rung = vec![];
    let mut events_seen = BTreeSet::new();
    while rung.len() < 3 || events_seen.len() < 3 {
        let (t, p) = obs
            .wait_for(|t, p| {
                (t.starts_with(&format!("{PREFIX}/ring/")) || t.ends_with("/event"))
                    .then(|| (t.to_string(), p.to_vec()))
            })
            .await;
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        if t.ends_with("/event") {
            assert_eq!(v["event_type"], "ring");
            events_seen.insert(v["doorbell"].as_str().unwrap().to_string());
        } else {
            rung.push(v["doorbell"].as_str().unwrap().to_string());
        }
    }
    rung.sort();
    assert_eq!(rung, vec!["back", "front", "side"], "each bound doorbell rang once, nothing else");
    assert_eq!(events_seen, BTreeSet::from(["back".into(), "front".into(), "side".into()]));

    // diag reports the unbound button.
    let (_, report) = diag(&s.cfg).await;
    let unbound = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "unbound presses").unwrap();
    assert_eq!(unbound["level"], "warn", "{unbound}");
    assert!(unbound["figure"].as_str().unwrap().contains("tasmota:ABCDEF"), "{unbound}");

    // Home Assistant restarts: discovery is published again.
    obs.publish("homeassistant/status", b"online").await;
    obs.wait_for(|t, _| (t == "homeassistant/event/gw-test_garden/config").then_some(())).await;

    // learn: the next unknown press is bound to garden and rings it.
    let mut learn = Command::new(bin())
        .args(["doorbell", "learn", "garden", "--seconds", "20", "--config"])
        .arg(&s.cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(learn.stdout.take().unwrap());
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        (line, stdout)
    })
    .await
    .unwrap();
    assert!(first.0.contains("press the button"), "{}", first.0);
    obs.publish("zigbee2mqtt/garden_button", br#"{"action":"single","linkquality":90}"#).await;
    let v = obs.ring_outcome().await;
    assert_eq!(v["doorbell"], "garden");
    let mut rest = String::new();
    let mut reader = first.1;
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert!(learn.wait().unwrap().success());
    assert!(rest.contains("zigbee2mqtt button garden_button/single now rings doorbell garden"), "{rest}");

    assert_eq!(daemon.terminate(), Some(0));
}
