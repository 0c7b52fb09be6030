//! Faults: a crash mid-ring, a broker restart, presses while the daemon is down, Apple's bad
//! days, expiry. Every phone that should ring rings, within the ring's expiry.
#![cfg(feature = "sim")]

mod util;

use dingdong::app::sim::Faults;
use dingdong::store::rings::Press;
use dingdong::store::Store;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use util::*;

fn household(cfg: &std::path::Path, dir: &std::path::Path, phones: u32) -> Vec<String> {
    ok(cfg, &["user", "add", "alice"]);
    ok(cfg, &["doorbell", "add", "front", "--owner", "alice"]);
    import_phones(cfg, dir, "alice", 0, phones)
}

fn duplicates(sim: &dingdong::app::sim::Sim, tokens: &[String]) -> usize {
    let counts = sim.state.counts();
    for t in tokens {
        assert!(counts.get(t).copied().unwrap_or(0) >= 1, "token {} never delivered", &t[..8]);
    }
    let mut dups: usize = counts.values().map(|c| c - 1).sum();
    // The Android phones and browsers of a mixed household, each at least once too.
    if let Some(f) = &sim.fcm {
        let counts = f.state.counts();
        assert!(f.tokens.iter().all(|t| counts.get(t).copied().unwrap_or(0) >= 1), "an Android phone never got it");
        dups += counts.values().map(|c| c - 1).sum::<usize>();
    }
    if let Some(w) = &sim.webpush {
        let counts = w.state.counts();
        assert!(w.subscriptions.iter().all(|s| counts.get(&s.id).copied().unwrap_or(0) >= 1), "a browser never got it");
        dups += counts.values().map(|c| c - 1).sum::<usize>();
    }
    dups
}

/// A doorbell of 20,000 phones as a building has them: 16,000 iPhones, 2,000 Android phones
/// (FCM) and 2,000 browsers (Web Push), all registered through `phone import`.
const MIXED_APNS: u32 = 16_000;
const MIXED_EACH: u32 = 2_000;

fn mixed_household(cfg: &std::path::Path, dir: &std::path::Path, sim: &dingdong::app::sim::Sim) -> Vec<String> {
    add_push_tables(cfg, sim);
    let tokens = household(cfg, dir, MIXED_APNS);
    let (fcm, web) = (sim.fcm.as_ref().unwrap(), sim.webpush.as_ref().unwrap());
    let mut lines: Vec<String> = fcm.tokens.iter().map(|t| format!("fcm:{t}")).collect();
    lines.extend(web.subscriptions.iter().map(|s| s.json.clone()));
    let file = dir.join("import-mixed.txt");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = ok(cfg, &["phone", "import", "alice", file.to_str().unwrap()]);
    assert!(out.contains(&format!("{} added", 2 * MIXED_EACH)), "{out}");
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_or_sigterm_mid_ring_then_restart_delivers_every_phone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    // Slow answers keep the 20,000-phone ring in flight long enough to be interrupted.
    let faults = Faults { latency: Duration::from_millis(100), ..Default::default() };
    let sim = start_push_sim(d, faults, 200, MIXED_EACH, false).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    let tokens = mixed_household(&cfg, d, &sim);
    ok(&cfg, &["doorbell", "add", "back", "--owner", "alice"]);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;

    // Phase 1: power cut.
    let daemon = Daemon::spawn(&cfg, d);
    obs.wait_online().await;
    obs.press("front", dingdong::domain::now_ms()).await;
    until("a quarter of the ring delivered", || accepted_all(&sim) >= 5_000).await;
    daemon.kill9();
    let at_kill = accepted_all(&sim);
    let t0 = Instant::now();
    let daemon = Daemon::spawn(&cfg, d);
    let outcome = obs.ring_outcome().await;
    let recovered = t0.elapsed();
    assert_eq!(outcome["delivered"].as_i64(), Some(20_000), "{outcome}");
    assert_eq!(outcome["pending"].as_i64(), Some(0));
    let dups = duplicates(&sim, &tokens);
    // Only what was in flight (4 APNs connections x 200 streams, the FCM and Web Push windows)
    // or answered but not yet written (one outcome batch each) at the moment of the crash can
    // go twice.
    assert!(dups <= 4 * 200 + 2 * 1000 + 3 * 2048, "{dups} duplicates");
    println!(
        "kill -9 after {at_kill} accepted: {} delivered, {dups} duplicates, recovered in {recovered:?}",
        outcome["delivered"]
    );

    // Phase 2: SIGTERM mid-ring exits 0 and leaves the rest for the next start.
    let before = accepted_all(&sim);
    obs.press("back", dingdong::domain::now_ms()).await;
    until("the second ring under way", || accepted_all(&sim) >= before + 3_000).await;
    assert_eq!(daemon.terminate(), Some(0));
    let store = Store::open(&d.join("dingdong.db")).unwrap();
    let ring = store.recent_rings(1).unwrap().remove(0);
    assert!(
        ring.state == dingdong::domain::RingState::Pending && ring.pending > 0,
        "SIGTERM left the unsent phones pending: {ring:?}"
    );
    drop(store);
    let daemon = Daemon::spawn(&cfg, d);
    let outcome = obs.ring_outcome().await;
    assert_eq!(outcome["delivered"].as_i64(), Some(20_000), "{outcome}");
    assert_eq!(daemon.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presses_survive_a_broker_restart_and_a_daemon_that_is_down() {
    let dir = tempfile::tempdir().unwrap();

    let d = dir.path().join("broker");
    std::fs::create_dir_all(&d).unwrap();
    let broker = Mosquitto::start(&d);
    let sim = start_sim(dir.path()).await;
    let cfg = write_config(dir.path(), &broker.url(), &sim, Auth::Token);
    let tokens = household(&cfg, dir.path(), 3);
    ok(&cfg, &["doorbell", "add", "back", "--owner", "alice"]);
    ok(&cfg, &["doorbell", "add", "side", "--owner", "alice"]);

    // The daemon subscribes once (persistent session), then goes down.
    let daemon = Daemon::spawn(&cfg, dir.path());
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    obs.wait_online().await;
    assert_eq!(daemon.terminate(), Some(0));

    // The broker restarts too; presses arrive while dingdong is down.
    let (port, bdir) = broker.stop();
    let broker = Mosquitto::start_on(&bdir, port);
    obs.wait_resubscribed().await;
    obs.wait_resubscribed().await;
    let now = dingdong::domain::now_ms();
    obs.press("front", now).await;
    obs.press("back", now).await;
    let daemon = Daemon::spawn(&cfg, dir.path());
    let mut rung = vec![obs.ring_outcome().await["doorbell"].as_str().unwrap().to_string()];
    rung.push(obs.ring_outcome().await["doorbell"].as_str().unwrap().to_string());
    rung.sort();
    assert_eq!(rung, ["back", "front"]);

    // The broker restarts under a running daemon: it reconnects, resubscribes, rings.
    let (port, bdir) = broker.stop();
    let _broker = Mosquitto::start_on(&bdir, port);
    obs.wait_resubscribed().await;
    obs.wait_resubscribed().await;
    obs.wait_online().await;
    obs.press("side", dingdong::domain::now_ms()).await;
    assert_eq!(obs.ring_outcome().await["delivered"].as_i64(), Some(3));
    let counts = sim.state.counts();
    assert!(tokens.iter().all(|t| counts[t] == 3), "each phone rang once per ring: {counts:?}");
    assert_eq!(daemon.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apples_bad_days_still_deliver_everything() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let faults = Faults { fail_rate: 0.05, goaway_after: 1_000, latency: Duration::from_millis(50), drop_after: 0 };
    let sim = start_push_sim(d, faults, 1000, MIXED_EACH, false).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    let tokens = mixed_household(&cfg, d, &sim);
    let daemon = Daemon::spawn(&cfg, d);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    obs.wait_online().await;
    let t0 = Instant::now();
    obs.press("front", dingdong::domain::now_ms()).await;
    let outcome = obs.ring_outcome().await;
    assert_eq!(outcome["delivered"].as_i64(), Some(20_000), "{outcome}");
    let dups = duplicates(&sim, &tokens);
    println!(
        "5% 429/500/503 + GOAWAY every 1000 + 50 ms, 16,000 APNs + 2,000 FCM + 2,000 Web Push: 20000/20000 delivered in {:?}, {dups} duplicates",
        t0.elapsed()
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_dropped_without_goaway_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    eprintln!("DIR {}", dir.path().display());
    let dir = Box::leak(Box::new(dir));
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let sim = start_sim_with(d, Faults { drop_after: 700, ..Default::default() }, 1000).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    let tokens = household(&cfg, d, 3_000);
    let daemon = Daemon::spawn(&cfg, d);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    obs.wait_online().await;
    obs.press("front", dingdong::domain::now_ms()).await;
    let outcome = obs.ring_outcome().await;
    assert_eq!(outcome["delivered"].as_i64(), Some(3_000), "{outcome}");
    duplicates(&sim, &tokens);
    assert_eq!(daemon.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_ring_is_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let broker = Mosquitto::start(d);
    let sim = start_sim(d).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    household(&cfg, d, 2);
    // A ring left unfinished by a crash, whose time ran out while the daemon was down.
    {
        let mut s = Store::open(&d.join("dingdong.db")).unwrap();
        let old = dingdong::domain::now_ms() - 600_000;
        let p = Press {
            ring_id: "stale-ring",
            doorbell_id: "front",
            doorbell_name: "front",
            pressed_at: old,
            received_at: old + 10,
            recorded_at: old + 10,
            expiry_ms: 300_000,
            debounce_ms: 2_000,
            read_later: false,
        };
        assert!(matches!(s.create_ring(&p).unwrap(), dingdong::store::rings::RingStart::Created(_)));
    }
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    let daemon = Daemon::spawn(&cfg, d);
    let resumed = obs.ring_outcome().await;
    assert_eq!((resumed["ring_id"].as_str(), resumed["state"].as_str()), (Some("stale-ring"), Some("expired")));
    assert_eq!(resumed["expired"].as_i64(), Some(2));
    // The outcome came over MQTT, so the daemon is connected.
    // A press the bridge heard ten minutes ago (delivered late by the broker).
    obs.press("front", dingdong::domain::now_ms() - 600_000).await;
    let late = obs.ring_outcome().await;
    assert_eq!(late["state"], "expired", "{late}");
    assert_eq!(sim.state.accepted.load(Ordering::Relaxed), 0, "nothing was sent");
    assert_eq!(daemon.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_stop_the_transport_and_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let sim = start_sim(d).await;
    let cfg = write_config(d, &broker.url(), &sim, Auth::Token);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("key_id = \"{}\"", sim.credentials.key_id), "key_id = \"WRONGKEY12\"");
    std::fs::write(&cfg, text).unwrap();
    household(&cfg, d, 3);
    let daemon = Daemon::spawn(&cfg, d);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/status"), &format!("{PREFIX}/ring/+")]).await;
    obs.wait_online().await;
    obs.press("front", dingdong::domain::now_ms()).await;
    let outcome = obs.ring_outcome().await;
    assert_eq!(outcome["failed"].as_i64(), Some(3), "{outcome}");
    let status = format!("{PREFIX}/status");
    let reason = obs
        .wait_for(|t, p| {
            let v: serde_json::Value = serde_json::from_slice(p).ok()?;
            (t == status && v["apns"] == "stopped").then(|| v["reason"].as_str().unwrap_or("").to_string())
        })
        .await;
    assert_eq!(reason, "InvalidProviderToken");
    // Stopped means stopped: no retry loop against Apple.
    let rejected = sim.state.rejected.load(Ordering::Relaxed);
    assert!(rejected <= 3, "{rejected} refused requests");
    assert_eq!(daemon.terminate(), Some(0));
}

/// A connection that stops answering: after `apns.request_timeout` without an answer, every
/// request in flight on it comes back as a retry (the outbox resends them), and the next batch
/// goes out on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_connection_times_out_and_its_requests_come_back_as_retries() {
    use dingdong::domain::{Message, Outcome, Reason, Target};
    use dingdong::net::apns::auth::JwtMinter;
    use dingdong::net::apns::http2::{Credentials, Http2Client, Http2Settings};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    // The simulator answers only after a minute: the connection looks stalled.
    let sim = start_sim_with(dir.path(), Faults { latency: Duration::from_secs(60), ..Default::default() }, 1000).await;
    let c = &sim.credentials;
    let minter = JwtMinter::from_p8_file(&c.key_file, &c.key_id, &c.team_id).unwrap();
    let addr = sim.http2_addr.unwrap();
    let client = Http2Client::new(
        Credentials::Token(Arc::new(minter)),
        Http2Settings {
            endpoint: Some((addr.ip().to_string(), addr.port())),
            ca_file: Some(c.ca_file.clone()),
            max_streams: 100,
            max_connections: 1,
            request_timeout: Duration::from_millis(300),
            topic: TOPIC.into(),
        },
    )
    .unwrap();
    let msg = Arc::new(Message {
        topic: TOPIC.into(),
        payload: bytes::Bytes::from_static(br#"{"aps":{"alert":"ding"}}"#),
        expiration: 0,
        collapse_id: "front".into(),
        priority: 10,
    });
    let targets: Arc<Vec<Target>> = Arc::new((0..5).map(target).collect());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let t0 = Instant::now();
    client.send(msg, targets, tx, &tokio_util::sync::CancellationToken::new()).await;
    let waited = t0.elapsed();
    let mut outcomes = Vec::new();
    while let Ok(o) = rx.try_recv() {
        outcomes.push(o);
    }
    outcomes.sort_by_key(|(i, _)| *i);
    assert_eq!(outcomes.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2, 3, 4], "one outcome per phone");
    for (_, o) in &outcomes {
        assert!(
            matches!(o, Outcome::Retry { reason: Reason::Connection(why), .. } if why.contains("timed out")),
            "{o:?}"
        );
    }
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(30), "{waited:?}");
}
