//! dingdong's benchmarks: `cargo bench --bench bench` (or `scripts/bench.sh`, which installs
//! mosquitto and h2load first). Prints one line per figure and a summary table.
//!
//! - HTTP/2 fan-out of 120,000 phones (`bench/fanout.rs`): `dingdong run` (a child process)
//!   against the simulator in accept-all mode (another child process), on loopback; cold rings
//!   (a newly started daemon each) first, then warm ones, each paired with h2load against the
//!   same simulator (the machine's practical limit): rates, the time of each stage, CPU per
//!   notification, peak RSS; idle RSS, wake-ups and CPU of a gateway holding its connections.
//! - Press latency for a 20-phone household (`bench/latency.rs`), through mosquitto with and
//!   without `set_tcp_nodelay true`.
//! - The legacy binary fan-out of 120,000 phones, cold, press published to outcome received.
//! - A burst of 20,000 QoS 1 presses over 200 doorbells through mosquitto: presses recorded
//!   per second, peak RSS, how soon a fresh press rings after the burst, how long SIGTERM takes.
//! - FCM and Web Push fan-out of 20,000 phones each (Web Push over HTTP/2 and over HTTP/1.1),
//!   each beside h2load sending the same requests to the same simulator; CPU per notification
//!   (`parts/push.rs`).

#[path = "parts/fanout.rs"]
mod fanout;
#[path = "parts/latency.rs"]
mod latency;
#[path = "parts/push.rs"]
mod push;
#[path = "../tests/util/mod.rs"]
mod util;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use util::*;

const FANOUT: u32 = 120_000;

struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
    target: &'static str,
}

fn report(figs: &mut Vec<Figure>, name: &'static str, value: f64, unit: &'static str, target: &'static str) {
    println!("figure: {name} = {value:.3} {unit}  (target: {target})");
    figs.push(Figure { name, value, unit, target });
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// A field of `/proc/<pid>/io` (`syscr:`, `syscw:`, `wchar:`, ...).
fn io_field(pid: u32, name: &str) -> f64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
}

/// Read and write system calls a process has made so far.
fn syscalls(pid: u32) -> (f64, f64) {
    (io_field(pid, "syscr:"), io_field(pid, "syscw:"))
}

/// A `/proc/<pid>/status` field in MB (VmRSS, VmHWM).
fn mem_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// `dingdong apns-sim` as a child process; returns it with its address and credentials.
fn spawn_sim(dir: &Path, extra: &[&str]) -> (Child, String, serde_json::Value) {
    let (child, info) = spawn_sim_info(dir, extra);
    (child, info["http2"].as_str().unwrap().to_string(), info["credentials"].clone())
}

/// Like [`spawn_sim`], returning the whole JSON line the simulator printed.
fn spawn_sim_info(dir: &Path, extra: &[&str]) -> (Child, serde_json::Value) {
    let mut child = Command::new(bin())
        .args(["apns-sim", "--http2", "127.0.0.1:0", "--out"])
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("apns-sim starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let info: serde_json::Value = serde_json::from_str(&line).expect("apns-sim prints its address");
    (child, info)
}

fn write_bench_config(dir: &Path, broker: &str, endpoint: &str, creds: &serde_json::Value) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            r#"[gateway]
id = "bench"
database = "dingdong.db"
[mqtt]
url = "{broker}"
client_id = "dingdong-bench-{port}"
topic_prefix = "{PREFIX}"
[apns]
transport = "http2"
environment = "production"
topic = "{TOPIC}"
endpoint = "https://{endpoint}"
ca_file = "{ca}"
max_streams = 1000
max_connections = 4
[apns.token]
key_file = "{key}"
key_id = "{kid}"
team_id = "{tid}"
[ring]
expiry = "5m"
debounce = "0s"
"#,
            port = free_port(),
            ca = creds["ca_file"].as_str().unwrap(),
            key = creds["key_file"].as_str().unwrap(),
            kid = creds["key_id"].as_str().unwrap(),
            tid = creds["team_id"].as_str().unwrap(),
        ),
    )
    .unwrap();
    path
}

/// Starts `dingdong run` with a NOTIFY_SOCKET and waits for READY=1; returns the child and
/// the time from spawn to READY.
fn spawn_daemon_ready(cfg: &Path, dir: &Path) -> (Child, Duration) {
    let sock_path = dir.join(format!("notify-{}.sock", free_port()));
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let t0 = Instant::now();
    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon starts");
    let mut child = child;
    let mut buf = [0u8; 512];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") => {
                return (child, t0.elapsed())
            }
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no READY=1 from the daemon: {e}");
            }
        }
    }
}

/// h2load (Debian nghttp2-client) against the simulator, as the machine's practical limit.
///
/// It sends what dingdong sends: the same payload, the same headers (provider token, topic,
/// push type, priority, expiration, collapse id) and a different device path per request
/// (the 120,000 tokens of the fan-out, read from a file with `-i`).
struct H2load {
    payload: PathBuf,
    /// h2load's arguments for dingdong's requests: the headers and `-i` the path list.
    same: String,
    /// For reference: one device path and four headers (no expiration, no collapse id), as
    /// this bench measured h2load before it sent dingdong's requests.
    lighter: String,
}

impl H2load {
    /// None when h2load is not installed.
    fn new(dir: &Path, sim_addr: &str, creds: &serde_json::Value, tokens: &[String]) -> Option<H2load> {
        Command::new("h2load").arg("--version").output().ok()?;
        let minter = dingdong::net::apns::auth::JwtMinter::from_p8_file(
            Path::new(creds["key_file"].as_str().unwrap()),
            creds["key_id"].as_str().unwrap(),
            creds["team_id"].as_str().unwrap(),
        )
        .unwrap();
        let payload = dir.join("payload.json");
        std::fs::write(
            &payload,
            dingdong::codec::apns_payload::ring_payload("building", "building", "0123456789abcdef", "default").unwrap(),
        )
        .unwrap();
        let uris = dir.join("uris.txt");
        let list: String = tokens.iter().map(|t| format!("https://{sim_addr}/3/device/{t}\n")).collect();
        std::fs::write(&uris, list).unwrap();
        // The ring's expiry, as dingdong sends it: five minutes from now, in UNIX seconds.
        let expiration = dingdong::domain::now_ms() / 1000 + 300;
        let common = format!(
            " -H 'authorization: {}' -H 'apns-topic: {TOPIC}' -H 'apns-push-type: alert' -H 'apns-priority: 10'",
            minter.bearer()
        );
        let same = format!(
            "{common} -H 'apns-expiration: {expiration}' -H 'apns-collapse-id: building' -i '{}'",
            uris.display()
        );
        let lighter = format!("{common} 'https://{sim_addr}/3/device/{}'", tokens[0]);
        Some(H2load { payload, same, lighter })
    }

    /// One run of FANOUT requests (dingdong's, or the `lighter` ones for reference):
    /// `(requests/s, h2load's CPU seconds, the simulator's)`. Through sh, whose `times`
    /// prints the CPU its child (h2load) used.
    fn run(&self, lighter: bool, conns: u32, streams: u32, threads: u32, sim_pid: u32) -> Option<(f64, f64, f64)> {
        let requests = if lighter { &self.lighter } else { &self.same };
        let cmd = format!(
            "h2load -n {FANOUT} -c {conns} -m {streams} -t {threads} -d '{}'{requests}; times",
            self.payload.display()
        );
        let sim_cpu0 = cpu_seconds(sim_pid);
        let sim_io0 = syscalls(sim_pid);
        let out = Command::new("sh").arg("-c").arg(&cmd).output().expect("h2load runs");
        let sim_cpu = cpu_seconds(sim_pid) - sim_cpu0;
        let sim_io = syscalls(sim_pid);
        println!(
            "h2load -m {streams} -t {threads}: simulator made {:.3} reads and {:.3} writes per request",
            (sim_io.0 - sim_io0.0) / FANOUT as f64,
            (sim_io.1 - sim_io0.1) / FANOUT as f64
        );
        let text = String::from_utf8_lossy(&out.stdout);
        // The last line of `times`: children's user and system time, as "0m1.234s 0m0.567s".
        let cpu: f64 = text
            .lines()
            .last()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|t| {
                let (m, s) = t.trim_end_matches('s').split_once('m')?;
                Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
            })
            .sum();
        let rate = text
            .lines()
            .find(|l| l.starts_with("finished in"))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok());
        if rate.is_none() {
            println!("h2load -m {streams} -t {threads} gave no rate: {text}");
        }
        Some((rate?, cpu, sim_cpu))
    }
}

/// `DINGDONG_BENCH_PERF=FILE`: records a CPU profile of `pid` into FILE + `suffix` until
/// [`stop_perf`].
fn start_perf(pid: u32, suffix: &str) -> Option<Child> {
    let file = std::env::var("DINGDONG_BENCH_PERF").ok()? + suffix;
    let child = Command::new("perf")
        .args(["record", "--call-graph", "dwarf,8192", "-F", "499", "-o", &file, "-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf starts");
    Some(child)
}

fn stop_perf(perf: Option<Child>) {
    if let Some(p) = perf {
        let _ = Command::new("kill").arg("-INT").arg(p.id().to_string()).status();
        let _ = p.wait_with_output();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run());
}

async fn run() {
    let mut figs = Vec::new();
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim()
    );
    println!("machine: {machine}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    // DINGDONG_BENCH_ONLY=fanout,latency,legacy,burst,push runs only those parts.
    let only = std::env::var("DINGDONG_BENCH_ONLY").ok();
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o.split(',').any(|p| p.trim() == part));
    if wanted("fanout") {
        fanout::fanout(&mut figs, d, &broker).await;
    }
    if wanted("latency") {
        latency::latency(&mut figs, d).await;
    }
    if wanted("legacy") {
        legacy(&mut figs, d, &broker).await;
    }
    if wanted("burst") {
        burst(&mut figs, d, &broker).await;
    }
    if wanted("push") {
        push::push(&mut figs, d, &broker).await;
    }
    println!();
    println!("summary ({machine})");
    println!("| figure | value | target |");
    println!("| --- | ---: | --- |");
    for f in &figs {
        println!("| {} | {:.2} {} | {} |", f.name, f.value, f.unit, f.target);
    }
}

/// Legacy binary fan-out of 120,000 phones with 1% invalid tokens.
async fn legacy(figs: &mut Vec<Figure>, d: &Path, broker: &Mosquitto) {
    // ---- Legacy binary fan-out: 120,000 phones, 1% invalid, a status-10 shutdown midway ----
    let leg = d.join("legacy");
    std::fs::create_dir_all(&leg).unwrap();
    let tokens: Vec<String> = (0..FANOUT).map(|i| token(2_000_000 + i)).collect();
    let valid: Vec<&str> = tokens.iter().enumerate().filter(|(i, _)| i % 100 != 37).map(|(_, t)| t.as_str()).collect();
    std::fs::write(leg.join("known.txt"), valid.join("\n")).unwrap();
    let known = leg.join("known.txt");
    let (mut sim, info) = spawn_sim_info(
        &leg.join("sim"),
        &[
            "--binary",
            "127.0.0.1:0",
            "--feedback",
            "127.0.0.1:0",
            "--fast",
            "--shutdown-after",
            "60000",
            "--tokens",
            known.to_str().unwrap(),
        ],
    );
    let creds = &info["credentials"];
    let cfg = write_bench_config(&leg, &broker.url(), info["http2"].as_str().unwrap(), creds);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let token_auth = text[text.find("[apns.token]").unwrap()..text.find("[ring]").unwrap()].to_string();
    let text = text.replace("transport = \"http2\"", "transport = \"binary\"").replace(
        &token_auth,
        &format!(
            "[apns.certificate]\nfile = \"{}\"\npassword_file = \"{}\"\n[apns.binary]\ngateway = \"{}\"\nfeedback = \"{}\"\nformat = \"frame\"\n",
            creds["client_p12"].as_str().unwrap(),
            creds["client_p12_password_file"].as_str().unwrap(),
            info["binary"].as_str().unwrap(),
            info["feedback"].as_str().unwrap()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    ok(&cfg, &["user", "add", "owner"]);
    ok(&cfg, &["doorbell", "add", "building", "--owner", "owner"]);
    std::fs::write(leg.join("phones.txt"), tokens.join("\n")).unwrap();
    ok(&cfg, &["phone", "import", "owner", leg.join("phones.txt").to_str().unwrap()]);
    let (mut daemon, _) = spawn_daemon_ready(&cfg, &leg);
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/ring/+")]).await;
    let perf = start_perf(daemon.id(), ".legacy");
    let cpu0 = cpu_seconds(daemon.id());
    let wrote0 = io_field(daemon.id(), "wchar:");
    let t0 = Instant::now();
    obs.press("building", dingdong::domain::now_ms()).await;
    let outcome = obs.ring_outcome().await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(daemon.id()) - cpu0;
    stop_perf(perf);
    let settled = outcome["delivered"].as_f64().unwrap_or(0.0) + outcome["pruned"].as_f64().unwrap_or(0.0);
    assert_eq!(settled as u32, FANOUT, "every phone delivered or pruned: {outcome}");
    assert_eq!(outcome["pruned"].as_u64(), Some(1_200), "{outcome}");
    let all_ms = outcome["latency_ms"]["all"].as_f64().unwrap_or(1.0);
    // What was written includes what the gateway dropped unread after each invalid token
    // and was written again on the next connection.
    let frame = 45
        + dingdong::codec::apns_payload::ring_payload("building", "building", "0123456789abcdef", "default")
            .unwrap()
            .len();
    println!(
        "legacy fan-out: first answer {:.0} ms, all answered {all_ms:.0} ms, dingdong {cpu:.2} s CPU, wrote {:.2} frames' worth per notification",
        outcome["latency_ms"]["first"].as_f64().unwrap_or(0.0),
        (io_field(daemon.id(), "wchar:") - wrote0) / (FANOUT as f64 * frame as f64)
    );
    report(
        figs,
        "legacy binary fan-out 120,000 (1% invalid, status 10 midway), cold: press published -> outcome received, notifications/s",
        settled / wall,
        "/s",
        ">= 100,000/s",
    );
    report(
        figs,
        "legacy binary fan-out: press received -> last answer, notifications/s",
        settled / (all_ms / 1000.0),
        "/s",
        "-",
    );
    report(figs, "legacy binary fan-out 120,000: press received to last outcome", all_ms / 1000.0, "s", "< 2 s");
    report(figs, "legacy binary fan-out 120,000: dingdong CPU", cpu, "s", "-");
    report(figs, "legacy binary fan-out 120,000: dingdong peak RSS", mem_mb(daemon.id(), "VmHWM:"), "MB", "-");
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = sim.kill();
    let _ = sim.wait();
}

/// 20,000 QoS 1 presses over 200 doorbells (100 each, inside one debounce window) as fast as
/// mosquitto takes them, Home Assistant discovery on; then a fresh press on another doorbell.
async fn burst(figs: &mut Vec<Figure>, d: &Path, broker: &Mosquitto) {
    const DOORBELLS: usize = 200;
    const EACH: i64 = 100;
    let dir = d.join("burst");
    std::fs::create_dir_all(&dir).unwrap();
    let sim = start_sim(&dir).await;
    let creds = serde_json::to_value(&sim.credentials).unwrap();
    let cfg = write_bench_config(&dir, &broker.url(), &sim.http2_addr.unwrap().to_string(), &creds);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("debounce = \"0s\"", "debounce = \"3s\"");
    std::fs::write(&cfg, text).unwrap();
    ok(&cfg, &["user", "add", "family"]);
    import_phones(&cfg, &dir, "family", 3_000_000, 4);
    {
        let mut store = dingdong::store::Store::open(&dir.join("dingdong.db")).unwrap();
        for i in 0..=DOORBELLS {
            store.add_doorbell(&format!("b{i}"), None, "family").unwrap();
        }
    }
    let (mut daemon, _) = spawn_daemon_ready(&cfg, &dir);
    let pid = daemon.id();
    let rss0 = mem_mb(pid, "VmRSS");
    let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/ring/+")]).await;
    let db = dir.join("dingdong.db");
    let recorded = || {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("SELECT COALESCE(SUM(presses), 0) FROM rings", [], |r| r.get::<_, i64>(0)).unwrap_or(0)
    };
    let t0 = Instant::now();
    let at0 = dingdong::domain::now_ms();
    for k in 0..EACH {
        for i in 0..DOORBELLS {
            obs.press(&format!("b{i}"), at0 + k * 29).await;
        }
    }
    let published = t0.elapsed();
    // The fresh press, right behind the burst.
    let fresh_at = dingdong::domain::now_ms();
    let fresh_sent = Instant::now();
    obs.press(&format!("b{DOORBELLS}"), fresh_at).await;
    let fresh_id = dingdong::service::ringer::ring_id(&format!("b{DOORBELLS}"), Some(fresh_at));
    let want = format!("{PREFIX}/ring/{fresh_id}");
    let outcome: serde_json::Value = obs.wait_for(|t, p| (t == want).then(|| serde_json::from_slice(p).unwrap())).await;
    let fresh = fresh_sent.elapsed();
    // From the moment the daemon took the fresh press off the broker (behind the whole burst)
    // to its last answer: how soon a press rings once the burst is handled.
    let fresh_handled = outcome["latency_ms"]["all"].as_f64().unwrap_or(f64::NAN);
    let total = DOORBELLS as i64 * EACH;
    while recorded() < total + 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(t0.elapsed() < Duration::from_secs(300), "the burst was not recorded");
    }
    let all = t0.elapsed();
    let peak = mem_mb(pid, "VmHWM");
    let rings: i64 =
        rusqlite::Connection::open(&db).unwrap().query_row("SELECT COUNT(*) FROM rings", [], |r| r.get(0)).unwrap();
    println!(
        "burst: {total} presses published in {:.2} s, all recorded after {:.2} s, {rings} rings; RSS {rss0:.1} -> peak {peak:.1} MB",
        published.as_secs_f64(),
        all.as_secs_f64()
    );
    report(figs, "burst: presses recorded per second", total as f64 / all.as_secs_f64(), "/s", "-");
    report(figs, "burst: publish time of 20,000 presses (the bridge side)", published.as_secs_f64(), "s", "-");
    report(
        figs,
        "burst: fresh press published behind the burst -> its outcome",
        fresh.as_secs_f64() * 1000.0,
        "ms",
        "-",
    );
    report(figs, "burst: fresh press taken off the broker -> rung", fresh_handled, "ms", "< 50 ms");
    report(figs, "burst: peak RSS", peak, "MB", "bounded");
    let t = Instant::now();
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let code = daemon.wait().unwrap().code();
    assert_eq!(code, Some(0), "SIGTERM after the burst exits 0");
    report(figs, "burst: SIGTERM -> exit", t.elapsed().as_secs_f64(), "s", "< 10 s");
}
