//! Press latency for a 20-phone household, through mosquitto with and without
//! `set_tcp_nodelay true` (Debian installs it without).
//!
//! - 200 presses over 20 doorbells, 60 ms apart: a bridge client publishes the presses, another
//!   client listens for the outcomes, as on a gateway (radio bridge on one side, Home Assistant
//!   or an app on the other). Press published -> first APNs request (the simulator's arrival
//!   time), and -> ring outcome received.
//! - 500 presses one after the other, through both brokers: each is published as soon as the
//!   previous ring's outcome arrived, so it reaches the broker right after the broker
//!   acknowledged that outcome to dingdong (with Nagle's algorithm on the broker, the press
//!   then waits for dingdong's TCP acknowledgement). Press published -> first request, -> 20th
//!   request, -> outcome received.

use super::*;

const HOUSEHOLD: u32 = 20;
const DOORBELLS: usize = 20;
const SPACED: usize = 200;
const SPACING: Duration = Duration::from_millis(60);
const BACK_TO_BACK: usize = 500;

pub async fn latency(figs: &mut Vec<Figure>, d: &Path) {
    let names: [[&'static str; 4]; 2] = [
        [
            "200 presses 60 ms apart, mosquitto with set_tcp_nodelay: press -> first request, p50",
            "  same: press -> first request, p99",
            "  same: press -> outcome received, p50",
            "  same: press -> outcome received, p99",
        ],
        [
            "200 presses 60 ms apart, stock mosquitto (Nagle): press -> first request, p50",
            "  same: press -> first request, p99",
            "  same: press -> outcome received, p50",
            "  same: press -> outcome received, p99",
        ],
    ];
    for (nodelay, names) in [(true, &names[0]), (false, &names[1])] {
        spaced(figs, &d.join(format!("latency-{nodelay}")), nodelay, names).await;
    }
    let names: [[&'static str; 5]; 2] = [
        [
            "500 presses back to back, mosquitto with set_tcp_nodelay: press -> first request, p50",
            "  same: press -> first request, p99",
            "  same: press -> 20th request, p99",
            "  same: press -> outcome received, p50",
            "  same: press -> outcome received, p99",
        ],
        [
            "500 presses back to back, stock mosquitto (Nagle): press -> first request, p50",
            "  same: press -> first request, p99",
            "  same: press -> 20th request, p99",
            "  same: press -> outcome received, p50",
            "  same: press -> outcome received, p99",
        ],
    ];
    for (nodelay, names) in [(true, &names[0]), (false, &names[1])] {
        back_to_back(figs, &d.join(format!("back-to-back-{nodelay}")), nodelay, names).await;
    }
    answers(figs, &d.join("answers")).await;
}

/// "I'm coming" in a 20-phone household (20 people, one phone each, through mosquitto with
/// `set_tcp_nodelay`): a ring, then one person's signed answer; answer published -> the last
/// replacement answered by the simulator (its arrival time), and -> the ring's outcome
/// published again with `answered_by`. 50 rings.
async fn answers(figs: &mut Vec<Figure>, dir: &Path) {
    use dingdong::codec::pairing::wire::{Action, SignedRequest};
    const RINGS: usize = 50;
    std::fs::create_dir_all(dir).unwrap();
    let broker = Mosquitto::start_with(dir, free_port(), true);
    let sim = start_sim(dir).await;
    let creds = serde_json::to_value(&sim.credentials).unwrap();
    let cfg = write_bench_config(dir, &broker.url(), &sim.http2_addr.unwrap().to_string(), &creds);
    ok(&cfg, &["user", "add", "p0"]);
    for i in 0..RINGS {
        ok(&cfg, &["doorbell", "add", &format!("d{i}"), "--owner", "p0"]);
    }
    let (mut daemon, _) = spawn_daemon_ready(&cfg, dir);
    // Each person pairs with the reference phone (the answer is a signed request).
    let mut phones = Vec::new();
    for p in 0..HOUSEHOLD {
        let user = format!("p{p}");
        let opened = ok(&cfg, &["pair", "open", "--user", &user]);
        let code: String =
            opened.split(": ").nth(1).unwrap_or("").chars().filter(char::is_ascii_digit).take(8).collect();
        let state = dir.join(format!("{user}.json"));
        let t = format!("{:064x}", 0xabc0_0000u64 + u64::from(p));
        ok(&cfg, &["phone-sim", "pair", "--code", &code, "--token", &t, "--state", state.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
        phones.push((v["phone_id"].as_i64().unwrap(), hex::decode(v["secret"].as_str().unwrap()).unwrap()));
        if p > 0 {
            for i in 0..RINGS {
                ok(&cfg, &["share", &format!("d{i}"), &user]);
            }
        }
    }
    let bridge = Observer::connect(broker.port, &[]).await;
    let mut listener = Observer::connect(broker.port, &[&format!("{PREFIX}/ring/+")]).await;
    let (mut last, mut republished, mut wave) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RINGS {
        bridge.press(&format!("d{i}"), dingdong::domain::now_ms()).await;
        let outcome = listener.ring_outcome().await;
        assert_eq!(outcome["delivered"].as_u64(), Some(HOUSEHOLD as u64), "{outcome}");
        let ring = outcome["ring_id"].as_str().unwrap().to_string();
        sim.state.take_received();
        let (id, secret) = &phones[i % HOUSEHOLD as usize];
        let nonce = format!("{:032x}", i as u128 + 1);
        let req = SignedRequest::signed(
            *id,
            secret,
            Action::Answer { ring_id: ring.clone() },
            "a",
            dingdong::domain::now_ms(),
            &nonce,
        );
        let t0 = dingdong::domain::now_us();
        bridge.publish(&format!("{PREFIX}/phone/{id}/answer"), req.encode().as_bytes()).await;
        let again = listener
            .wait_for(|t, p| {
                let v: serde_json::Value = serde_json::from_slice(p).ok()?;
                (t.ends_with(&ring) && v.get("answered_by").is_some()).then_some(v)
            })
            .await;
        let t_end = dingdong::domain::now_us();
        assert_eq!(again["answer"]["delivered"].as_u64(), Some(HOUSEHOLD as u64 - 1), "{again}");
        let got = sim.state.take_received();
        assert_eq!(got.len(), HOUSEHOLD as usize - 1);
        last.push((got.iter().map(|r| r.at_us).max().unwrap() - t0) as f64 / 1000.0);
        republished.push((t_end - t0) as f64 / 1000.0);
        wave.push(again["answer"]["ms"].as_f64().unwrap_or(f64::NAN));
    }
    for v in [&mut last, &mut republished, &mut wave] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    report(
        figs,
        "answer (20-phone household): published -> last replacement received, p50",
        percentile(&last, 0.5),
        "ms",
        "-",
    );
    report(figs, "  same: p99", percentile(&last, 0.99), "ms", "-");
    report(figs, "  same: answer published -> outcome published again, p50", percentile(&republished, 0.5), "ms", "-");
    report(
        figs,
        "  same: the wave as the daemon measured it (accepted -> last answer), p50",
        percentile(&wave, 0.5),
        "ms",
        "-",
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// A household daemon against the in-process simulator, on `broker`.
async fn household(dir: &Path, broker: &Mosquitto) -> (dingdong::app::sim::Sim, Child) {
    std::fs::create_dir_all(dir).unwrap();
    let sim = start_sim(dir).await;
    let creds = serde_json::to_value(&sim.credentials).unwrap();
    let cfg = write_bench_config(dir, &broker.url(), &sim.http2_addr.unwrap().to_string(), &creds);
    ok(&cfg, &["user", "add", "family"]);
    import_phones(&cfg, dir, "family", 1_000_000, HOUSEHOLD);
    {
        let mut store = dingdong::store::Store::open(&dir.join("dingdong.db")).unwrap();
        for i in 0..DOORBELLS {
            store.add_doorbell(&format!("d{i}"), None, "family").unwrap();
        }
    }
    let (daemon, _) = spawn_daemon_ready(&cfg, dir);
    (sim, daemon)
}

async fn spaced(figs: &mut Vec<Figure>, dir: &Path, nodelay: bool, names: &[&'static str; 4]) {
    std::fs::create_dir_all(dir).unwrap();
    let broker = Mosquitto::start_with(dir, free_port(), nodelay);
    let (sim, mut daemon) = household(dir, &broker).await;
    let bridge = Observer::connect(broker.port, &[]).await;
    let mut listener = Observer::connect(broker.port, &[&format!("{PREFIX}/ring/+")]).await;
    // One ring first: connections confirmed, as on a gateway that has rung before.
    bridge.press("d0", dingdong::domain::now_ms()).await;
    listener.ring_outcome().await;
    sim.state.take_received();
    // The outcomes are taken as they arrive, while the presses go on. The first press follows
    // the one that opened the connections by the same 60 ms as the others.
    let t0 = Instant::now() + SPACING;
    let press = async {
        let mut pressed = Vec::with_capacity(SPACED);
        for k in 0..SPACED {
            tokio::time::sleep_until((t0 + SPACING * k as u32).into()).await;
            let bell = format!("d{}", k % DOORBELLS);
            let at_us = dingdong::domain::now_us();
            bridge.press(&bell, at_us / 1000).await;
            pressed.push((bell, at_us));
        }
        pressed
    };
    let collect = async {
        let mut outcomes = std::collections::HashMap::new();
        while outcomes.len() < SPACED {
            let (id, delivered) = listener
                .wait_for(|t, p| {
                    let v: serde_json::Value = serde_json::from_slice(p).ok()?;
                    Some((t.rsplit('/').next()?.to_string(), v["delivered"].as_u64()))
                })
                .await;
            assert_eq!(delivered, Some(HOUSEHOLD as u64), "ring {id}");
            outcomes.insert(id, dingdong::domain::now_us());
        }
        outcomes
    };
    let (pressed, outcomes) = tokio::join!(press, collect);
    let received = sim.state.take_received();
    let (mut first, mut outcome) = (Vec::new(), Vec::new());
    for (bell, at_us) in &pressed {
        let id = dingdong::service::ringer::ring_id(bell, Some(at_us / 1000));
        // This press's requests: its doorbell's, after the press, before the doorbell's next.
        let next = at_us + (SPACING.as_micros() as i64) * DOORBELLS as i64;
        let f = received
            .iter()
            .filter(|r| r.collapse_id.as_deref() == Some(bell.as_str()) && r.at_us >= *at_us && r.at_us < next)
            .map(|r| r.at_us)
            .min()
            .expect("every press reached the simulator");
        first.push((f - at_us) as f64 / 1000.0);
        outcome.push((outcomes[&id] - at_us) as f64 / 1000.0);
    }
    // The slowest presses, with their place in the run: a pattern (every keep-alive, every
    // other press) says which hop held them.
    let mut slow: Vec<(usize, f64, f64)> = (0..SPACED).map(|k| (k, first[k], outcome[k])).collect();
    slow.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    let slow: Vec<String> = slow.iter().take(6).map(|(k, f, o)| format!("#{k} {f:.1}/{o:.1}")).collect();
    println!("slowest presses (first request / outcome, ms): {}", slow.join(", "));
    for v in [&mut first, &mut outcome] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    report(figs, names[0], percentile(&first, 0.5), "ms", "-");
    report(figs, names[1], percentile(&first, 0.99), "ms", "p99 < 5 ms");
    report(figs, names[2], percentile(&outcome, 0.5), "ms", "-");
    report(figs, names[3], percentile(&outcome, 0.99), "ms", "p99 < 20 ms");
    println!(
        "{}: first request max {:.1} ms, outcome max {:.1} ms",
        if nodelay { "set_tcp_nodelay true" } else { "stock mosquitto" },
        percentile(&first, 1.0),
        percentile(&outcome, 1.0)
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// One press at a time, each as soon as the previous outcome arrived.
async fn back_to_back(figs: &mut Vec<Figure>, dir: &Path, nodelay: bool, names: &[&'static str; 5]) {
    std::fs::create_dir_all(dir).unwrap();
    let broker = Mosquitto::start_with(dir, free_port(), nodelay);
    let (sim, mut daemon) = household(dir, &broker).await;
    let bridge = Observer::connect(broker.port, &[]).await;
    let mut listener = Observer::connect(broker.port, &[&format!("{PREFIX}/ring/+")]).await;
    let (mut first, mut all, mut last_req) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_at = 0;
    for _ in 0..BACK_TO_BACK {
        let mut at = dingdong::domain::now_ms();
        while at <= last_at {
            tokio::task::yield_now().await;
            at = dingdong::domain::now_ms();
        }
        last_at = at;
        let t0 = dingdong::domain::now_us();
        bridge.press("d0", at).await;
        let outcome = listener.ring_outcome().await;
        let t_all = dingdong::domain::now_us();
        assert_eq!(outcome["delivered"].as_u64(), Some(HOUSEHOLD as u64), "{outcome}");
        let received = sim.state.take_received();
        let arrivals: Vec<i64> = received.iter().map(|r| r.at_us).collect();
        first.push((arrivals.iter().min().unwrap() - t0) as f64 / 1000.0);
        last_req.push((arrivals.iter().max().unwrap() - t0) as f64 / 1000.0);
        all.push((t_all - t0) as f64 / 1000.0);
    }
    for v in [&mut first, &mut all, &mut last_req] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    report(figs, names[0], percentile(&first, 0.5), "ms", "-");
    report(figs, names[1], percentile(&first, 0.99), "ms", "p99 < 5 ms");
    report(figs, names[2], percentile(&last_req, 0.99), "ms", "-");
    report(figs, names[3], percentile(&all, 0.5), "ms", "-");
    report(figs, names[4], percentile(&all, 0.99), "ms", "p99 < 20 ms");
    let _ = daemon.kill();
    let _ = daemon.wait();
}
