//! The HTTP/2 fan-out of 120,000 phones, cold and warm, each ring paired with h2load.
//!
//! Cold: five rounds, each a newly started daemon pressed as soon as it said READY=1 (no
//! connection open, no recipient list in memory). Warm: five rings on one daemon that has
//! rung before (connections open, recipients kept). A ring's rate is 120,000 over the time
//! from the press published on the broker to its outcome received from the broker; each is
//! followed by h2load at its best setting, and the share is the median of the paired shares.

use super::*;

/// Rounds of each kind; medians are reported.
const ROUNDS: usize = 5;

/// What one ring measured.
struct Ring {
    /// Press published -> outcome received (s).
    wall: f64,
    /// The daemon's CPU seconds over the ring.
    cpu: f64,
    sim_cpu: f64,
    /// Press published -> each stage (ms): received, recorded, recipients read, first request,
    /// full width, last answer, outcome finished, outcome received.
    stages: [Option<f64>; 8],
    /// Paired h2load's requests/s.
    h2load: Option<f64>,
    peak_mb: f64,
}

const STAGES: [&str; 8] = [
    "press taken off the broker",
    "ring recorded",
    "recipients read",
    "first request",
    "pool at full width",
    "last answer",
    "outcome published",
    "outcome received",
];

/// Presses `building` and waits for its outcome; the stages from the outcome's `timing_us`.
async fn ring(obs: &mut Observer, pid: u32, sim_pid: u32) -> Ring {
    let cpu0 = cpu_seconds(pid);
    let sim_cpu0 = cpu_seconds(sim_pid);
    let t0 = dingdong::domain::now_us();
    obs.press("building", t0 / 1000).await;
    let outcome = obs.ring_outcome().await;
    let t_end = dingdong::domain::now_us();
    let cpu = cpu_seconds(pid) - cpu0;
    let sim_cpu = cpu_seconds(sim_pid) - sim_cpu0;
    assert_eq!(outcome["delivered"].as_u64(), Some(FANOUT as u64), "every phone delivered: {outcome}");
    let t = &outcome["timing_us"];
    let received = t["received_at_us"].as_i64().map(|r| r - t0);
    let at = |k: &str| match (received, t[k].as_i64()) {
        (Some(r), Some(v)) => Some((r + v) as f64 / 1000.0),
        _ => None,
    };
    let stages = [
        received.map(|r| r as f64 / 1000.0),
        at("recorded"),
        at("recipients"),
        at("first_request"),
        at("full_width"),
        at("last_answer"),
        at("finished"),
        Some((t_end - t0) as f64 / 1000.0),
    ];
    Ring { wall: (t_end - t0) as f64 / 1e6, cpu, sim_cpu, stages, h2load: None, peak_mb: mem_mb(pid, "VmHWM:") }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Prints one kind's rounds and reports its medians.
fn summarize(figs: &mut Vec<Figure>, kind: &'static str, rings: &[Ring], names: &[&'static str; 5]) {
    let n = FANOUT as f64;
    let rates: Vec<f64> = rings.iter().map(|r| n / r.wall).collect();
    let shares: Vec<f64> = rings.iter().filter_map(|r| r.h2load.map(|h| n / r.wall / h)).collect();
    println!("{kind} rings, press published -> outcome received, stage by stage (ms, median of {}):", rings.len());
    for (i, stage) in STAGES.iter().enumerate() {
        let v: Vec<f64> = rings.iter().filter_map(|r| r.stages[i]).collect();
        let rounds: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        println!("  {stage:<28} {:>8.1}   (rounds: {})", median(v.clone()), rounds.join(", "));
    }
    report(figs, names[0], median(rates), "/s", "-");
    if !shares.is_empty() {
        let rounds: Vec<String> = shares.iter().map(|s| format!("{:.2}", s)).collect();
        println!("{kind}: shares of h2load per round: {}", rounds.join(", "));
        report(figs, names[1], median(shares), "", ">= 0.90");
    }
    let cpu: Vec<f64> = rings.iter().map(|r| r.cpu / n * 1e6).collect();
    report(figs, names[2], median(cpu), "us", "<= 12 us");
    let sim: Vec<f64> = rings.iter().map(|r| r.sim_cpu / n * 1e6).collect();
    println!("{kind}: simulator CPU per request (median) {:.2} us", median(sim));
    report(figs, names[3], rings.iter().map(|r| r.peak_mb).fold(0.0, f64::max), "MB", "< 40 MB");
    report(figs, names[4], median(rings.iter().map(|r| r.wall).collect()), "s", "-");
}

/// HTTP/2 fan-out of 120,000 phones against the simulator, cold rounds then warm ones.
pub async fn fanout(figs: &mut Vec<Figure>, d: &Path, broker: &Mosquitto) {
    let fan = d.join("fanout");
    std::fs::create_dir_all(&fan).unwrap();
    let (mut sim, sim_addr, creds) = spawn_sim(&fan.join("sim"), &["--fast"]);
    let cfg = write_bench_config(&fan, &broker.url(), &sim_addr, &creds);
    ok(&cfg, &["user", "add", "owner"]);
    ok(&cfg, &["doorbell", "add", "building", "--owner", "owner"]);
    let t = Instant::now();
    let tokens = import_phones(&cfg, &fan, "owner", 0, FANOUT);
    report(figs, "phone import, 120,000 tokens", t.elapsed().as_secs_f64(), "s", "seconds, not minutes");
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/ring/+")]).await;

    // h2load's best setting on this machine, tried once each.
    let h2load = H2load::new(&fan, &sim_addr, &creds, &tokens);
    let mut best: Option<(f64, u32, u32, u32)> = None;
    if let Some(h) = &h2load {
        for (conns, streams, threads) in [(1, 1000, 1), (4, 1000, 1), (4, 1000, 2), (4, 250, 1), (4, 250, 2)] {
            if let Some((rate, _, _)) = h.run(false, conns, streams, threads, sim.id()) {
                println!("h2load -c {conns} -m {streams} -t {threads}: {rate:.0} requests/s");
                if best.is_none_or(|(r, ..)| rate > r) {
                    best = Some((rate, conns, streams, threads));
                }
            }
        }
    } else {
        println!("h2load not installed (Debian nghttp2-client): skipping its figures");
    }
    let paired = |sim_pid: u32| -> Option<f64> {
        let (h, (_, c, m, t)) = (h2load.as_ref()?, best?);
        let (r, ..) = h.run(false, c, m, t, sim_pid)?;
        Some(r)
    };

    // Cold: a newly started daemon per round, pressed at READY=1.
    let mut cold = Vec::new();
    let mut ready = Vec::new();
    for round in 1..=ROUNDS {
        let (mut daemon, took) = spawn_daemon_ready(&cfg, &fan);
        ready.push(took.as_secs_f64() * 1000.0);
        let perf = if round == 1 { start_perf(daemon.id(), ".cold") } else { None };
        let mut r = ring(&mut obs, daemon.id(), sim.id()).await;
        stop_perf(perf);
        let _ = daemon.kill();
        let _ = daemon.wait();
        r.h2load = paired(sim.id());
        println!(
            "cold round {round}: {:.0}/s press to outcome ({:.3} s), first request {:.1} ms, {:.2} us/notification, peak RSS {:.1} MB; h2load {:.0}/s",
            FANOUT as f64 / r.wall,
            r.wall,
            r.stages[3].unwrap_or(f64::NAN),
            r.cpu / FANOUT as f64 * 1e6,
            r.peak_mb,
            r.h2load.unwrap_or(f64::NAN)
        );
        cold.push(r);
    }
    report(figs, "start to READY=1 (median)", median(ready), "ms", "-");
    summarize(
        figs,
        "cold",
        &cold,
        &[
            "cold HTTP/2 ring, 120,000 phones: notifications/s (median of 5)",
            "cold ring: share of h2load's rate (median of 5 paired rounds)",
            "cold ring: dingdong CPU per notification",
            "cold ring: dingdong peak RSS",
            "cold ring: press published -> outcome received",
        ],
    );

    // Warm: one daemon, one ring to open its connections and keep its recipients, then five.
    let (mut daemon, _) = spawn_daemon_ready(&cfg, &fan);
    tokio::time::sleep(Duration::from_secs(1)).await;
    report(figs, "idle RSS after start-up", mem_mb(daemon.id(), "VmRSS:"), "MB", "< 15 MB");
    ring(&mut obs, daemon.id(), sim.id()).await;
    let perf = start_perf(daemon.id(), "");
    let warm = rounds("warm", &mut obs, daemon.id(), sim.id(), &paired).await;
    stop_perf(perf);
    summarize(
        figs,
        "warm",
        &warm,
        &[
            "warm HTTP/2 ring, 120,000 phones: notifications/s (median of 5)",
            "warm ring: share of h2load's rate (median of 5 paired rounds)",
            "warm ring: dingdong CPU per notification",
            "warm ring: dingdong peak RSS",
            "warm ring: press published -> outcome received",
        ],
    );
    // With household rules: the owner of the 120,000 phones alerted `active` (every phone a
    // profile of its own, so the ring is split by rule, not sent as one share), a neighbour
    // muted and a concierge in quiet hours (`silent`) on the same doorbell.
    ok(&cfg, &["alert", "owner", "--level", "active"]);
    for (user, n) in [("neighbour", 1u32), ("concierge", 2)] {
        ok(&cfg, &["user", "add", user]);
        ok(&cfg, &["share", "building", user]);
        ok(&cfg, &["phone", "add", user, &format!("{:064x}", 0xfeed_0000u64 + u64::from(n))]);
    }
    ok(&cfg, &["mute", "neighbour", "--for", "1h"]);
    ok(&cfg, &["quiet", "set", "concierge", "--from", "00:00", "--to", "23:59", "--mode", "silent"]);
    ring(&mut obs, daemon.id(), sim.id()).await; // the rules read, the new phones in the list
    let ruled = rounds("with rules", &mut obs, daemon.id(), sim.id(), &paired).await;
    let share =
        |rings: &[Ring]| median(rings.iter().filter_map(|r| r.h2load.map(|h| FANOUT as f64 / r.wall / h)).collect());
    let rate = |rings: &[Ring]| median(rings.iter().map(|r| FANOUT as f64 / r.wall).collect());
    report(figs, "warm ring with household rules: notifications/s (median of 5)", rate(&ruled), "/s", "-");
    report(figs, "  with rules / without: rate", rate(&ruled) / rate(&warm), "", ">= 0.97");
    report(figs, "  with rules / without: share of h2load", share(&ruled) / share(&warm), "", ">= 0.97");
    report(
        figs,
        "  with rules: dingdong CPU per notification",
        median(ruled.iter().map(|r| r.cpu / FANOUT as f64 * 1e6).collect()),
        "us",
        "-",
    );
    if let Some((r, c, m, t)) = best {
        println!("h2load's best setting: -c {c} -m {m} -t {t} ({r:.0} requests/s when tried)");
    }
    idle(figs, &daemon);
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = sim.kill();
    let _ = sim.wait();
}

/// [`ROUNDS`] rings on a running daemon, each followed by h2load.
async fn rounds(
    kind: &str,
    obs: &mut Observer,
    pid: u32,
    sim_pid: u32,
    paired: &dyn Fn(u32) -> Option<f64>,
) -> Vec<Ring> {
    let mut rings = Vec::new();
    for round in 1..=ROUNDS {
        let mut r = ring(obs, pid, sim_pid).await;
        r.h2load = paired(sim_pid);
        println!(
            "{kind} round {round}: {:.0}/s press to outcome ({:.3} s), first request {:.1} ms, {:.2} us/notification; h2load {:.0}/s",
            FANOUT as f64 / r.wall,
            r.wall,
            r.stages[3].unwrap_or(f64::NAN),
            r.cpu / FANOUT as f64 * 1e6,
            r.h2load.unwrap_or(f64::NAN)
        );
        rings.push(r);
    }
    rings
}

/// What an idle gateway costs: RSS and wake-ups per minute (context switches of all its
/// threads) while it holds its connections, after a big ring.
fn idle(figs: &mut Vec<Figure>, daemon: &Child) {
    let switches = |pid: u32| -> f64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
        tasks
            .flatten()
            .map(|t| {
                let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                status
                    .lines()
                    .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                    .sum::<f64>()
            })
            .sum()
    };
    const WATCH: Duration = Duration::from_secs(30);
    std::thread::sleep(Duration::from_secs(2));
    let (s0, cpu0) = (switches(daemon.id()), cpu_seconds(daemon.id()));
    std::thread::sleep(WATCH);
    let per_min = (switches(daemon.id()) - s0) * 60.0 / WATCH.as_secs_f64();
    let cpu = (cpu_seconds(daemon.id()) - cpu0) * 60.0 / WATCH.as_secs_f64();
    report(figs, "idle after a big ring: RSS", mem_mb(daemon.id(), "VmRSS:"), "MB", "-");
    report(figs, "idle: wake-ups per minute (context switches, all threads)", per_min, "/min", "-");
    report(figs, "idle: CPU per minute", cpu * 1000.0, "ms", "-");
}
