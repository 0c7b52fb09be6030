//! The legacy binary transport's benchmark: one ring to 120,000 phones, 1% of them invalid
//! and scattered, one status-10 shutdown midway, through the real outbox (SQLite recording
//! and pruning included), the real sender and the built-in simulator over TLS with client
//! certificates, all in this process.
//!
//! `cargo run --release --example binary_bench [-- FORMAT [PHONES]]` (FORMAT: frame, enhanced,
//! simple). Prints the ring time and the process's peak RSS (VmHWM); run it under
//! `/usr/bin/time -v` for an outside view of the same figure.

use dingdong::app::sim::{Sim, SimOptions, TokenInfo};
use dingdong::codec::apns_binary::frames::Format;
use dingdong::domain::Environment;
use dingdong::net::apns::auth::ClientIdentity;
use dingdong::net::apns::binary::{BinarySender, BinarySettings};
use dingdong::service::outbox::{Outbox, OutboxSettings, RetryPolicy, Transport};
use dingdong::store::import::ImportFormat;
use dingdong::store::rings::{Press, RingStart};
use dingdong::store::{Store, StoreHandle};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

fn token(i: usize) -> String {
    let a = (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    let b = (i as u128 + 7).wrapping_mul(0xc2b2_ae3d_27d4_eb4f_1656_67b1_9e37_79f9);
    format!("{a:032x}{b:032x}")
}

fn is_invalid(i: usize) -> bool {
    (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d).rotate_left(17).is_multiple_of(100)
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat(5), counted after the command name: utime, stime in 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let format = match args.next().as_deref() {
        None | Some("frame") => Format::Frame,
        Some("enhanced") => Format::Enhanced,
        Some("simple") => Format::Simple,
        Some(other) => panic!("unknown format {other}"),
    };
    let phones: usize = args.next().map(|n| n.parse().expect("PHONES is a number")).unwrap_or(120_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("bench.db");
    // fast: the simulator counts instead of keeping every notification, like a real gateway.
    let sim = Sim::start(SimOptions {
        binary: Some(([127, 0, 0, 1], 0).into()),
        out_dir: dir.path().join("sim"),
        shutdown_after: Some(phones as u64 / 2),
        fast: true,
        ..Default::default()
    })
    .await
    .expect("simulator");

    let mut s = Store::open(&db).expect("db");
    s.add_user("u").unwrap();
    s.add_doorbell("front", Some("Front door"), "u").unwrap();
    let mut list = String::new();
    let mut invalid = 0;
    for i in 0..phones {
        let t = token(i);
        list.push_str(&t);
        list.push('\n');
        if is_invalid(i) {
            invalid += 1;
        } else {
            sim.state.register(&t, TokenInfo::default());
        }
    }
    s.import_phones(ImportFormat::Tokens { user: "u" }, list.as_bytes(), Environment::Production).unwrap();
    drop(list);
    let store = StoreHandle::spawn(s);
    let now = dingdong::domain::now_ms();
    let press = move |s: &mut Store| {
        s.create_ring(&Press {
            ring_id: "bench",
            doorbell_id: "front",
            doorbell_name: "Front door",
            pressed_at: now,
            received_at: now,
            recorded_at: now,
            expiry_ms: 600_000,
            debounce_ms: 3_000,
            read_later: false,
        })
    };
    let RingStart::Created(job) = store.run(press).await.unwrap() else { panic!("no ring") };

    let addr = sim.binary_addr.unwrap();
    let c = &sim.credentials;
    let identity = ClientIdentity::from_p12(&c.client_p12, &c.client_p12_password_file).unwrap();
    let settings = BinarySettings::new((addr.ip().to_string(), addr.port()), format, Environment::Production);
    let sender = BinarySender::new(&identity, Some(&c.ca_file), settings).unwrap();

    if std::env::var_os("BENCH_TRANSPORT_ONLY").is_some() {
        // The sender alone, outcomes only counted: what the transport costs without SQLite.
        let targets = job.phones.targets.clone();
        let msg = std::sync::Arc::new(dingdong::domain::Message {
            topic: "com.example.doorbell".into(),
            payload: dingdong::codec::apns_payload::ring_payload("front", "Front door", "bench", "default").unwrap(),
            expiration: 0,
            collapse_id: "front".into(),
            priority: 10,
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (t0, cpu0) = (Instant::now(), cpu_secs());
        let count = tokio::spawn(async move {
            let mut n = 0usize;
            while rx.recv().await.is_some() {
                n += 1;
            }
            n
        });
        sender.send(msg, targets, tx).await;
        let n = count.await.unwrap();
        println!(
            "{format:?} transport only: {n} outcomes in {:.3} s, {:.2} s CPU; gateway accepted {}",
            t0.elapsed().as_secs_f64(),
            cpu_secs() - cpu0,
            sim.state.stats()["accepted"]
        );
        return;
    }
    let outbox = Outbox::new(
        store,
        Transport::Binary(sender),
        None,
        OutboxSettings {
            topic: "com.example.doorbell".into(),
            environment: dingdong::domain::Environment::Production,
            sound: "default".into(),
            retry: RetryPolicy::default(),
            timezone: jiff::tz::TimeZone::UTC,
        },
    );
    let (t0, cpu0) = (Instant::now(), cpu_secs());
    let report = outbox
        .deliver(job, dingdong::domain::RingTiming::default(), CancellationToken::new())
        .await
        .expect("delivered");
    let took = t0.elapsed();
    let cpu = cpu_secs() - cpu0;
    let s = &report.summary;
    println!(
        "{format:?}: {phones} phones ({invalid} invalid) in {:.3} s ({:.0}/s, {cpu:.2} s CPU): delivered {}, pruned {}, failed {}, pending {}; gateway accepted {} rejected {}; peak RSS {} MiB",
        took.as_secs_f64(),
        phones as f64 / took.as_secs_f64(),
        s.delivered,
        s.pruned,
        s.failed,
        s.pending,
        sim.state.stats()["accepted"],
        sim.state.stats()["rejected"],
        peak_rss_kib() / 1024
    );
}
