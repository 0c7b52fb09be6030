//! FCM and Web Push fan-out of 20,000 phones each: `dingdong run` against `dingdong apns-sim
//! --fcm --webpush --fast` (child processes), each beside h2load sending the same requests
//! to the same simulator in the same run (same method, path or paths, headers and body
//! size; FCM's bodies differ from phone to phone only in the token, so h2load repeats one;
//! Web Push bodies are encrypted once for h2load, and the simulator in `--fast` mode checks
//! VAPID but decrypts nothing, for dingdong and h2load alike). The HTTP/1.1 Web Push variant
//! runs against a simulator speaking HTTP/1.1 only, beside `h2load --h1` with as many
//! connections as dingdong's pool.

use super::util::*;
use super::{cpu_seconds, mem_mb, report, spawn_daemon_ready, Figure};
use dingdong::codec::push::fcm::ServiceAccount;
use dingdong::net::https::{Https, HttpsSettings};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

const PHONES: u32 = 20_000;
const RUNS: usize = 3;
/// dingdong's HTTP/1.1 pool per push service (the `[webpush] max_connections` default).
const H1_CONNECTIONS: u32 = 32;

struct PushSim {
    child: Child,
    info: serde_json::Value,
}

fn spawn_push_sim(dir: &Path, http1: bool) -> PushSim {
    let mut cmd = Command::new(bin());
    cmd.args(["apns-sim", "--fcm", "127.0.0.1:0", "--webpush", "127.0.0.1:0", "--fast", "--push-phones"])
        .arg(PHONES.to_string())
        .arg("--out")
        .arg(dir);
    if http1 {
        cmd.arg("--webpush-http1");
    }
    let mut child =
        cmd.env("RUST_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("apns-sim starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    PushSim { child, info: serde_json::from_str(&line).expect("apns-sim prints its addresses") }
}

fn write_config(dir: &Path, broker: &str, sim: &PushSim) -> PathBuf {
    // APNs is required by the config; the simulator's credentials serve, nothing is sent there.
    let c = &sim.info["credentials"];
    let vapid = dir.join("vapid.pem");
    let key = dingdong::codec::push::vapid::VapidKey::generate(&mut rand::thread_rng());
    std::fs::write(&vapid, key.to_pem().as_bytes()).unwrap();
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
endpoint = "https://127.0.0.1:1"
ca_file = "{ca}"
[apns.token]
key_file = "{key}"
key_id = "{kid}"
team_id = "{tid}"
[ring]
expiry = "5m"
debounce = "0s"
[fcm]
service_account_file = "{sa}"
endpoint = "{fcm}"
ca_file = "{ca}"
[webpush]
vapid_key_file = "{vapid}"
subject = "mailto:bench@example.com"
ca_file = "{ca}"
max_connections = {H1_CONNECTIONS}
"#,
            port = free_port(),
            ca = c["ca_file"].as_str().unwrap(),
            key = c["key_file"].as_str().unwrap(),
            kid = c["key_id"].as_str().unwrap(),
            tid = c["team_id"].as_str().unwrap(),
            sa = sim.info["fcm"]["service_account_file"].as_str().unwrap(),
            fcm = sim.info["fcm"]["endpoint"].as_str().unwrap(),
            vapid = vapid.display(),
        ),
    )
    .unwrap();
    path
}

/// Runs h2load (`args` after the common ones) through sh; `(requests/s, h2load's CPU s)`.
fn h2load(args: &str) -> Option<(f64, f64)> {
    let out = Command::new("sh").arg("-c").arg(format!("h2load {args}; times")).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
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
    let ok = text.lines().find(|l| l.starts_with("status codes:")).unwrap_or("").to_string();
    if rate.is_none() {
        println!("h2load gave no rate: {text}");
    }
    println!("h2load {ok}");
    Some((rate?, cpu))
}

/// An access token from the simulator's token endpoint, as dingdong obtains one.
async fn access_token(sim: &PushSim) -> String {
    let sa = std::fs::read(sim.info["fcm"]["service_account_file"].as_str().unwrap()).unwrap();
    let account = ServiceAccount::from_json(&sa).unwrap();
    let ca = sim.info["credentials"]["ca_file"].as_str().unwrap();
    let https = Https::new(HttpsSettings { ca_file: Some(ca.into()), ..Default::default() }).unwrap();
    let mut req = http::Request::new(http_body_util::Full::new(bytes::Bytes::from(
        account.token_request_body(dingdong::domain::now_ms() as u64 / 1000),
    )));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = account.token_uri().parse().unwrap();
    req.headers_mut().insert(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded".parse().unwrap());
    let a = https.request(req).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

/// One platform's rings: `(median rate, median dingdong CPU per notification in us, peak RSS)`.
async fn rings(daemon: &Child, obs: &mut Observer, doorbell: &str, sim_pid: u32) -> (f64, f64, f64) {
    let mut runs = Vec::new();
    for run in 1..=RUNS {
        let (cpu0, sim0) = (cpu_seconds(daemon.id()), cpu_seconds(sim_pid));
        obs.press(doorbell, dingdong::domain::now_ms()).await;
        let outcome = obs.ring_outcome().await;
        let delivered = outcome["delivered"].as_f64().unwrap_or(0.0);
        assert_eq!(delivered as u32, PHONES, "every phone delivered: {outcome}");
        let all_ms = outcome["latency_ms"]["all"].as_f64().unwrap_or(1.0).max(1.0);
        let cpu = (cpu_seconds(daemon.id()) - cpu0) / delivered * 1e6;
        let sim_cpu = (cpu_seconds(sim_pid) - sim0) / delivered * 1e6;
        let rate = delivered / (all_ms / 1000.0);
        println!(
            "{doorbell} run {run}: {rate:.0}/s, all answered {all_ms:.0} ms, dingdong {cpu:.1} us/notification, simulator {sim_cpu:.1} us/request"
        );
        runs.push((rate, cpu));
    }
    runs.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let (rate, cpu) = runs[runs.len() / 2];
    (rate, cpu, mem_mb(daemon.id(), "VmHWM:"))
}

/// FCM and Web Push fan-outs of 20,000 phones each, with h2load beside each.
pub async fn push(figs: &mut Vec<Figure>, d: &Path, broker: &Mosquitto) {
    let have_h2load = Command::new("h2load").arg("--version").output().is_ok();
    for http1 in [false, true] {
        let dir = d.join(if http1 { "push-h1" } else { "push" });
        std::fs::create_dir_all(&dir).unwrap();
        let t = Instant::now();
        let mut sim = spawn_push_sim(&dir.join("sim"), http1);
        println!("push simulator with {PHONES} FCM tokens and {PHONES} subscriptions ready in {:?}", t.elapsed());
        let cfg = write_config(&dir, &broker.url(), &sim);
        ok(&cfg, &["user", "add", "android"]);
        ok(&cfg, &["user", "add", "browsers"]);
        ok(&cfg, &["doorbell", "add", "android", "--owner", "android"]);
        ok(&cfg, &["doorbell", "add", "browsers", "--owner", "browsers"]);
        let tokens: Vec<String> =
            sim.info["fcm"]["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
        let subs: Vec<String> = sim.info["webpush"]["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| std::fs::read_to_string(f.as_str().unwrap()).unwrap())
            .collect();
        let (fcm_file, web_file) = (dir.join("fcm.txt"), dir.join("web.txt"));
        std::fs::write(&fcm_file, tokens.iter().map(|t| format!("fcm:{t}\n")).collect::<String>()).unwrap();
        std::fs::write(&web_file, subs.join("\n")).unwrap();
        let t = Instant::now();
        ok(&cfg, &["phone", "import", "android", fcm_file.to_str().unwrap()]);
        ok(&cfg, &["phone", "import", "browsers", web_file.to_str().unwrap()]);
        if !http1 {
            report(figs, "phone import, 20,000 FCM tokens + 20,000 subscriptions", t.elapsed().as_secs_f64(), "s", "-");
        }
        let (mut daemon, _) = spawn_daemon_ready(&cfg, &dir);
        let mut obs = Observer::connect(broker.port, &[&format!("{PREFIX}/ring/+")]).await;
        let sim_pid = sim.child.id();

        if !http1 {
            let (rate, cpu, rss) = rings(&daemon, &mut obs, "android", sim_pid).await;
            report(figs, "FCM fan-out 20,000 over HTTP/2 (median of 3): notifications/s", rate, "/s", "-");
            report(figs, "FCM fan-out: dingdong CPU per notification", cpu, "us", "-");
            if have_h2load {
                let bearer = access_token(&sim).await;
                let body = dir.join("fcm-body.json");
                let template =
                    dingdong::codec::push::fcm::MessageTemplate::new(&dingdong::codec::push::fcm::RingMessage {
                        doorbell_id: "android",
                        doorbell_name: "android",
                        ring_id: "0123456789abcdef",
                        ttl_secs: 299,
                        channel_id: "doorbell",
                        profile: &Default::default(),
                        answered_by: None,
                    });
                std::fs::write(&body, template.body(&tokens[0])).unwrap();
                let url = format!(
                    "{}/v1/projects/{}/messages:send",
                    sim.info["fcm"]["endpoint"].as_str().unwrap(),
                    dingdong::app::sim::fcm::PROJECT
                );
                // dingdong's settings: 2 connections, up to 1,000 streams in flight.
                let args = format!(
                    "-n {PHONES} -c 2 -m 500 -t 1 -d '{}' -H 'authorization: Bearer {bearer}' -H 'content-type: application/json; charset=UTF-8' '{url}'",
                    body.display()
                );
                if let Some((r, h2cpu)) = h2load(&args) {
                    println!("h2load FCM: {r:.0} requests/s, {:.1} us/request", h2cpu / PHONES as f64 * 1e6);
                    report(figs, "h2load, same FCM requests and simulator: requests/s", r, "/s", "the machine's limit");
                    report(figs, "FCM fan-out as a share of h2load's", rate / r * 100.0, "%", "-");
                }
            }
            report(figs, "FCM fan-out: dingdong peak RSS", rss, "MB", "-");
        }

        let (rate, cpu, rss) = rings(&daemon, &mut obs, "browsers", sim_pid).await;
        let proto = if http1 { "HTTP/1.1" } else { "HTTP/2" };
        let name = |what: &str| -> &'static str { Box::leak(format!("Web Push {proto}: {what}").into_boxed_str()) };
        report(figs, name("fan-out 20,000 (median of 3): notifications/s"), rate, "/s", "-");
        report(figs, name("dingdong CPU per notification (encryption included)"), cpu, "us", "-");
        report(figs, name("dingdong peak RSS"), rss, "MB", "-");
        if have_h2load {
            let key = dingdong::app::settings::vapid_key(&dir.join("vapid.pem")).unwrap();
            let first: serde_json::Value = serde_json::from_str(&subs[0]).unwrap();
            let endpoint = first["endpoint"].as_str().unwrap();
            let sub = dingdong::codec::push::webpush::Subscription::from_json(subs[0].as_bytes()).unwrap();
            let payload =
                dingdong::codec::push::webpush::ring_payload("browsers", "browsers", "0123456789abcdef", 0).unwrap();
            let body = dir.join("web-body.bin");
            std::fs::write(&body, sub.encrypt(&payload, &mut rand::thread_rng()).unwrap()).unwrap();
            let subject = dingdong::codec::push::vapid::Subject::parse("mailto:bench@example.com").unwrap();
            let aud = dingdong::codec::push::vapid::audience(endpoint).unwrap();
            let auth = key.authorization(&aud, &subject, dingdong::domain::now_ms() as u64 / 1000 + 3600);
            let uris = dir.join("web-uris.txt");
            let list: String = subs
                .iter()
                .map(|s| {
                    serde_json::from_str::<serde_json::Value>(s).unwrap()["endpoint"].as_str().unwrap().to_string()
                        + "\n"
                })
                .collect();
            std::fs::write(&uris, list).unwrap();
            let headers = format!(
                "-H 'authorization: {auth}' -H 'ttl: 299' -H 'urgency: high' -H 'topic: {}' -H 'content-encoding: aes128gcm' -H 'content-type: application/octet-stream'",
                dingdong::codec::push::webpush::topic("browsers")
            );
            let conns = if http1 { format!("--h1 -c {H1_CONNECTIONS} -m 1") } else { "-c 2 -m 500".to_string() };
            let args = format!("-n {PHONES} {conns} -t 1 -d '{}' {headers} -i '{}'", body.display(), uris.display());
            if let Some((r, h2cpu)) = h2load(&args) {
                println!("h2load Web Push {proto}: {r:.0} requests/s, {:.1} us/request", h2cpu / PHONES as f64 * 1e6);
                report(figs, name("h2load, same requests and simulator: requests/s"), r, "/s", "the machine's limit");
                report(figs, name("fan-out as a share of h2load's"), rate / r * 100.0, "%", "-");
            }
        }
        let _ = daemon.kill();
        let _ = daemon.wait();
        let _ = sim.child.kill();
        let _ = sim.child.wait();
    }
}
