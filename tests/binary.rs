//! The legacy binary transport end to end: real TLS with client certificates, real SQLite
//! files, the built-in simulator in this process on 127.0.0.1:0. No sleeps as
//! synchronisation: every wait is on an answer or a finished task.
#![cfg(feature = "sim")]

use dingdong::app::sim::{Sim, SimOptions, TokenInfo};
use dingdong::codec::apns_binary::frames::Format;
use dingdong::domain::{Environment, Message, Outcome, Target};
use dingdong::net::apns::auth::ClientIdentity;
use dingdong::net::apns::binary::feedback::FeedbackClient;
use dingdong::net::apns::binary::{BinarySender, BinarySettings};
use dingdong::service::feedback::poll_and_prune;
use dingdong::service::outbox::{Outbox, OutboxSettings, RetryPolicy, Transport};
use dingdong::store::import::ImportFormat;
use dingdong::store::rings::{Press, RingStart};
use dingdong::store::{Store, StoreHandle};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const PHONES: usize = 120_000;

/// Distinct, never all-zero tokens (multiplying by an odd constant is a bijection mod 2^128).
fn token(i: usize) -> String {
    let a = (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    let b = (i as u128 + 7).wrapping_mul(0xc2b2_ae3d_27d4_eb4f_1656_67b1_9e37_79f9);
    format!("{a:032x}{b:032x}")
}

/// About 1% of the phones, scattered (not clustered at either end).
fn is_invalid(i: usize) -> bool {
    (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d).rotate_left(17).is_multiple_of(100)
}

async fn start_sim(dir: &Path, shutdown_after: Option<u64>, drop_after: Option<u64>) -> Sim {
    Sim::start(SimOptions {
        binary: Some(([127, 0, 0, 1], 0).into()),
        feedback: Some(([127, 0, 0, 1], 0).into()),
        out_dir: dir.join("sim"),
        shutdown_after,
        binary_drop_after: drop_after,
        ..Default::default()
    })
    .await
    .expect("simulator starts")
}

fn identity(sim: &Sim) -> ClientIdentity {
    let c = &sim.credentials;
    ClientIdentity::from_p12(&c.client_p12, &c.client_p12_password_file).expect("the simulator's .p12 loads")
}

fn sender(sim: &Sim, format: Format) -> BinarySender {
    let addr = sim.binary_addr.expect("gateway listening");
    let settings = BinarySettings::new((addr.ip().to_string(), addr.port()), format, Environment::Production);
    BinarySender::new(&identity(sim), Some(&sim.credentials.ca_file), settings).expect("sender builds")
}

/// A household of `n` phones on doorbell "front"; the valid tokens are known to the simulator.
fn seed(db: &Path, sim: &Sim, n: usize, invalid: impl Fn(usize) -> bool) -> (HashSet<String>, HashSet<String>) {
    let mut s = Store::open(db).unwrap();
    s.add_user("u").unwrap();
    s.add_doorbell("front", Some("Front door"), "u").unwrap();
    let (mut valid, mut bad) = (HashSet::new(), HashSet::new());
    let mut list = String::with_capacity(n * 65);
    for i in 0..n {
        let t = token(i);
        list.push_str(&t);
        list.push('\n');
        if invalid(i) {
            bad.insert(t);
        } else {
            sim.state.register(&t, TokenInfo::default());
            valid.insert(t);
        }
    }
    let r = s.import_phones(ImportFormat::Tokens { user: "u" }, list.as_bytes(), Environment::Production).unwrap();
    assert_eq!(r.added, n);
    (valid, bad)
}

/// Creates a ring for "front" and delivers it through `transport`; returns the report.
async fn ring(db: &Path, transport: Transport) -> dingdong::service::outbox::RingReport {
    let store = StoreHandle::spawn(Store::open(db).unwrap());
    let now = dingdong::domain::now_ms();
    let job = store
        .run(move |s| {
            s.create_ring(&Press {
                ring_id: "r1",
                doorbell_id: "front",
                doorbell_name: "Front door",
                pressed_at: now,
                received_at: now,
                recorded_at: now,
                expiry_ms: 600_000,
                debounce_ms: 3_000,
                read_later: false,
            })
        })
        .await
        .unwrap();
    let RingStart::Created(job) = job else { panic!("ring not created: {job:?}") };
    let settings = OutboxSettings {
        topic: "com.example.doorbell".into(),
        environment: dingdong::domain::Environment::Production,
        sound: "default".into(),
        retry: RetryPolicy::default(),
        timezone: jiff::tz::TimeZone::UTC,
    };
    let outbox = Outbox::new(store, transport, None, settings);
    outbox
        .deliver(job, dingdong::domain::RingTiming::default(), CancellationToken::new())
        .await
        .expect("ring delivered")
}

fn phones_left(db: &Path) -> HashSet<String> {
    Store::open(db).unwrap().list_phones().unwrap().into_iter().map(|p| p.token).collect()
}

/// 120,000 phones, 1% invalid, one status-10 shutdown midway: exact for formats with
/// identifiers.
async fn exact_run(format: Format) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let sim = start_sim(dir.path(), Some(60_000), None).await;
    let (valid, bad) = seed(&db, &sim, PHONES, is_invalid);
    assert!(bad.len() > 1000 && bad.len() < 1400, "{}", bad.len());
    let t0 = Instant::now();
    let report = ring(&db, Transport::Binary(sender(&sim, format))).await;
    eprintln!("{format:?}: {PHONES} phones in {:?}: {:?}", t0.elapsed(), report.summary);

    let counts = sim.state.counts();
    for t in &valid {
        assert_eq!(counts.get(t), Some(&1), "valid token {} received {:?} times", &t[..8], counts.get(t));
    }
    assert_eq!(counts.len(), valid.len(), "only valid tokens are received");
    let s = &report.summary;
    assert_eq!((s.delivered as usize, s.pruned as usize, s.failed, s.pending), (valid.len(), bad.len(), 0, 0));
    assert_eq!(phones_left(&db), valid, "every invalid phone pruned, no valid phone deleted");
    assert_eq!(sim.state.stats()["reasons"]["sentinel"].as_u64().map(|n| n > 0), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_120k_one_percent_invalid_with_shutdown_is_exact() {
    exact_run(Format::Frame).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_120k_one_percent_invalid_with_shutdown_is_exact() {
    exact_run(Format::Enhanced).await;
}

/// The simple format carries no identifier, so an error-response cannot say which
/// notification failed, and a shutdown cannot say how far the gateway got. What it can do:
/// every phone gets a final recorded outcome (none silently lost), nothing is recorded
/// delivered that the gateway did not accept, no valid phone is deleted, and no token is
/// received twice except around the shutdown (resent at-least-once, bounded by the window).
/// What it cannot do: prune the invalid tokens (we do not know which they are) or deliver
/// the valid ones that shared an unconfirmed run with an invalid one (recorded failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_120k_one_percent_invalid_loses_nothing_silently() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let sim = start_sim(dir.path(), Some(60_000), None).await;
    let (valid, bad) = seed(&db, &sim, PHONES, is_invalid);
    let snd = sender(&sim, Format::Simple);
    let window = snd.settings().window;
    let report = ring(&db, Transport::Binary(snd)).await;
    eprintln!("Simple: {:?}", report.summary);

    let s = &report.summary;
    assert_eq!((s.pending, s.expired, s.phones as usize), (0, 0, PHONES), "every phone has a final outcome");
    assert_eq!(s.pruned, 0, "simple format cannot attribute an error, so it never prunes");
    assert_eq!(phones_left(&db).len(), PHONES, "no phone deleted");
    let counts = sim.state.counts();
    assert!(counts.keys().all(|t| !bad.contains(t)));
    let dupes: usize = counts.values().map(|&c| c - 1).sum();
    assert!(dupes <= window, "{dupes} duplicates");
    let store = Store::open(&db).unwrap();
    let delivered: Vec<String> = store
        .ring_states(&s.ring_id)
        .unwrap()
        .into_iter()
        .filter(|l| l.state == dingdong::domain::PhoneState::Delivered)
        .map(|l| l.token)
        .collect();
    assert_eq!(delivered.len() as i64, s.delivered);
    assert!(delivered.iter().all(|t| counts.contains_key(t)), "recorded delivered => received");
    assert!(s.delivered > 0 && valid.len() > s.delivered as usize);
}

/// With only valid tokens, simple format delivers everything, the shutdown included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_all_valid_with_shutdown_delivers_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let sim = start_sim(dir.path(), Some(10_000), None).await;
    let (valid, _) = seed(&db, &sim, 20_000, |_| false);
    let snd = sender(&sim, Format::Simple);
    let window = snd.settings().window;
    let report = ring(&db, Transport::Binary(snd)).await;
    assert_eq!(report.summary.delivered as usize, valid.len());
    let counts = sim.state.counts();
    assert!(valid.iter().all(|t| counts.get(t).is_some_and(|&c| c >= 1)));
    let dupes: usize = counts.values().map(|&c| c - 1).sum();
    assert!(dupes <= window, "{dupes} duplicates");
}

/// The gateway drops the connection mid-batch without an error-response: the unconfirmed
/// tail is resent, nothing is lost, duplicates are bounded by the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_mid_batch_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let sim = start_sim(dir.path(), None, Some(3_000)).await;
    let (valid, _) = seed(&db, &sim, 10_000, |_| false);
    let snd = sender(&sim, Format::Frame);
    let window = snd.settings().window;
    let report = ring(&db, Transport::Binary(snd)).await;
    assert_eq!(report.summary.delivered as usize, valid.len());
    let counts = sim.state.counts();
    for t in &valid {
        assert!(counts.get(t).is_some_and(|&c| c >= 1), "{} lost", &t[..8]);
    }
    let dupes: usize = counts.values().map(|&c| c - 1).sum();
    assert!(dupes <= window, "{dupes} duplicates");
}

/// Nobody listens: after max_reconnects attempts every phone goes back as a retry.
#[tokio::test]
async fn unreachable_gateway_hands_everything_back_as_retry() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), None, None).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut settings = BinarySettings::new(("127.0.0.1".into(), port), Format::Frame, Environment::Production);
    settings.max_reconnects = 2;
    settings.backoff = Duration::from_millis(1);
    let snd = BinarySender::new(&identity(&sim), Some(&sim.credentials.ca_file), settings).unwrap();
    let targets: Arc<Vec<Target>> = Arc::new(
        (0..5)
            .map(|i| {
                Target::apns(i as i64, dingdong::domain::Token::from_hex(&token(i)).unwrap(), Environment::Production)
            })
            .chain([Target::apns(9, dingdong::domain::Token::from_hex(&token(9)).unwrap(), Environment::Sandbox)])
            .collect(),
    );
    let msg = Arc::new(Message {
        topic: "t".into(),
        payload: bytes::Bytes::from_static(b"{}"),
        expiration: 0,
        collapse_id: "c".into(),
        priority: 10,
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    snd.send(msg, targets, tx).await;
    let mut got = HashMap::new();
    while let Some((i, o)) = rx.recv().await {
        assert!(got.insert(i, o).is_none(), "one outcome per phone");
    }
    assert_eq!(got.len(), 6);
    assert!((0..5).all(|i| matches!(got[&i], Outcome::Retry { .. })), "{got:?}");
    // A production certificate cannot serve a sandbox phone.
    assert!(matches!(got[&5], Outcome::Failed { .. }));
}

/// Feedback: an unregistered token is pruned, one registered again after Apple's timestamp
/// is kept, tuples cut across reads (the simulator writes 25-byte pieces; a tuple is 38) are
/// parsed, and the service forgets what it replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_prunes_unless_registered_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let sim = start_sim(dir.path(), None, None).await;
    let mut s = Store::open(&db).unwrap();
    s.add_user("u").unwrap();
    let (gone, back, fine) = (token(1), token(2), token(3));
    for t in [&gone, &back, &fine] {
        s.add_phone("u", t, Environment::Production, None, None).unwrap();
    }
    // `gone` registered a day ago; `back` registered again after Apple's timestamp.
    let now = dingdong::domain::now_ms();
    s.conn().execute("UPDATE phones SET registered_at = ?1 WHERE token = ?2", (now - 86_400_000, &gone)).unwrap();
    sim.state.unregister(&gone, now - 3_600_000);
    sim.state.unregister(&back, now - 3_600_000);
    drop(s);

    let addr = sim.feedback_addr.unwrap();
    let client =
        FeedbackClient::new(&identity(&sim), Some(&sim.credentials.ca_file), (addr.ip().to_string(), addr.port()))
            .unwrap();
    let tuples = client.poll().await.unwrap();
    assert_eq!(tuples.len(), 2, "two 38-byte tuples arrive in 25-byte pieces");
    assert!(tuples.iter().all(|t| t.token.len() == 32 && t.timestamp as i64 == (now - 3_600_000) / 1000));
    // Polled once: forgotten. Unregister again to check pruning through the full path.
    assert!(client.poll().await.unwrap().is_empty());
    sim.state.unregister(&gone, now - 3_600_000);
    sim.state.unregister(&back, now - 3_600_000);
    let store = StoreHandle::spawn(Store::open(&db).unwrap());
    let r = poll_and_prune(&client, &store).await.unwrap();
    assert_eq!((r.read, r.pruned, r.kept, r.unknown, r.malformed), (2, 1, 1, 0, 0));
    assert_eq!(phones_left(&db), HashSet::from([back, fine]));
}

/// The gateway replays what it rejected on the feedback port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_tokens_show_up_in_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let sim = start_sim(dir.path(), None, None).await;
    let (_, bad) = seed(&db, &sim, 200, |i| i % 50 == 7);
    let report = ring(&db, Transport::Binary(sender(&sim, Format::Enhanced))).await;
    assert_eq!(report.summary.pruned as usize, bad.len());
    // The sentinel is never reported: no device has it.
    assert_eq!(sim.state.feedback_pending(), bad.len());
}

/// The simulator refuses a client without a certificate.
#[tokio::test]
async fn gateway_requires_a_client_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), None, None).await;
    let cfg = dingdong::net::tls::client_config(Some(&sim.credentials.ca_file), None, &[]).unwrap();
    let addr = sim.binary_addr.unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let refused = match tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await {
        Err(_) => true,
        // TLS 1.3 reports a refused client certificate at the first read.
        Ok(mut tls) => {
            let _ = tls.write_all(&[0u8; 8]).await;
            let mut b = [0u8; 8];
            !matches!(tls.read(&mut b).await, Ok(n) if n > 0)
        }
    };
    assert!(refused);
    assert_eq!(sim.state.stats()["accepted"], 0);
}
