//! Times the store's half of a 120,000-phone ring, phase by phase, on a real SQLite file:
//! `cargo run --release --example store_bench [phones]`.
//!
//! The outbox writes a ring and its phones before the first send, records outcomes in batches
//! of up to 2,048 (in roughly the order the lanes took them) and closes the ring; these are
//! the same calls, without the network.

use dingdong::domain::{Environment, Outcome};
use dingdong::store::import::ImportFormat;
use dingdong::store::rings::{OutcomeRow, Press, RingStart};
use dingdong::store::Store;
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(120_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = Store::open(&dir.path().join("bench.db")).expect("store opens");
    store.add_user("owner").unwrap();
    store.add_doorbell("building", None, "owner").unwrap();
    let tokens: String = (0..n).map(|i| format!("{:064x}\n", 0xd1d0_0000_u64 + i as u64)).collect();
    let t = Instant::now();
    store.import_phones(ImportFormat::Tokens { user: "owner" }, tokens.as_bytes(), Environment::Production).unwrap();
    println!("import {n}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);

    // Round 0 reads the recipients; round 1 reuses the list kept from round 0 (nothing
    // changed); before round 2 a phone is added, so round 2 reads them again.
    for round in 0..3 {
        if round == 2 {
            store.add_phone("owner", &"ab".repeat(32), Environment::Production, None, None).unwrap();
        }
        let now = dingdong::domain::now_ms();
        let ring_id = format!("ring{round}");
        let press = Press {
            ring_id: &ring_id,
            doorbell_id: "building",
            doorbell_name: "building",
            pressed_at: now,
            received_at: now,
            recorded_at: now,
            expiry_ms: 300_000,
            debounce_ms: 0,
            read_later: false,
        };
        let t = Instant::now();
        let RingStart::Created(job) = store.create_ring(&press).unwrap() else { panic!("ring not created") };
        let created = t.elapsed();
        // Answers arrive roughly in order, four lanes interleaved.
        let mut rows: Vec<OutcomeRow> = job
            .phones
            .targets
            .iter()
            .enumerate()
            .map(|(seq, p)| OutcomeRow {
                seq: seq as i64,
                phone_id: p.phone_id,
                address: p.address.clone(),
                outcome: Outcome::Delivered,
            })
            .collect();
        for chunk in rows.chunks_mut(64) {
            chunk.reverse();
        }
        let t = Instant::now();
        for batch in rows.chunks(2048) {
            store.record_outcomes(&ring_id, batch).unwrap();
        }
        let recorded = t.elapsed();
        let t = Instant::now();
        let summary = store.finish_ring(&ring_id, Default::default()).unwrap();
        let finished = t.elapsed();
        assert_eq!(summary.delivered as usize, n + usize::from(round == 2));
        println!(
            "ring {round}: create {:.1} ms, record {:.1} ms ({:.2} us/phone), finish {:.1} ms, total {:.2} us/phone",
            created.as_secs_f64() * 1e3,
            recorded.as_secs_f64() * 1e3,
            recorded.as_secs_f64() * 1e6 / n as f64,
            finished.as_secs_f64() * 1e3,
            (created + recorded + finished).as_secs_f64() * 1e6 / n as f64,
        );
    }
}
