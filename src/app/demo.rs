//! `dingdong demo`: a newcomer's tour with nothing installed and no Apple or Google account.
//! Starts an embedded broker, the simulators (APNs, FCM, a Web Push service) and the daemon in
//! this process, seeds a household of iPhones, an Android phone and a browser, presses the
//! button through MQTT and shows who got the push, how fast, and which stale phone was pruned.

use crate::app::config::Config;
use crate::app::sim::{Sim, SimOptions, TokenInfo};
use crate::domain::Environment;
use crate::store::phones::Registration;
use crate::store::Store;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "dingdong/demo";

/// How a demo phone is reached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Iphone(Environment),
    Android,
    Browser,
}

struct Phone {
    user: &'static str,
    name: &'static str,
    kind: Kind,
    stale: bool,
}

const HOUSEHOLD: &[Phone] = &[
    Phone { user: "alice", name: "Alice's iPhone", kind: Kind::Iphone(Environment::Production), stale: false },
    Phone { user: "alice", name: "Alice's iPad (dev build)", kind: Kind::Iphone(Environment::Sandbox), stale: false },
    Phone { user: "alice", name: "Alice's old iPhone", kind: Kind::Iphone(Environment::Production), stale: true },
    Phone { user: "alice", name: "Alice's laptop browser", kind: Kind::Browser, stale: false },
    Phone { user: "bob", name: "Bob's iPhone", kind: Kind::Iphone(Environment::Production), stale: false },
    Phone { user: "bob", name: "Bob's Android phone", kind: Kind::Android, stale: false },
    Phone { user: "carol", name: "Carol's iPhone", kind: Kind::Iphone(Environment::Production), stale: false },
];

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Iphone(Environment::Production) => "APNs",
            Kind::Iphone(Environment::Sandbox) => "APNs sandbox",
            Kind::Android => "FCM",
            Kind::Browser => "Web Push",
        }
    }
}

fn token_for(i: usize) -> String {
    let seed = format!("dingdong-demo-phone-{i}");
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(seed.as_bytes()))
}

fn write_config(dir: &Path, broker: std::net::SocketAddr, sim: &Sim) -> Result<Config, String> {
    let c = &sim.credentials;
    let fcm = sim.fcm.as_ref().ok_or("the FCM simulator did not start")?;
    let fcm_endpoint = format!("https://{}", fcm.addr);
    let vapid = dir.join("vapid.pem");
    let key = crate::codec::push::vapid::VapidKey::generate(&mut rand::thread_rng());
    crate::app::sim::certs::write_secret(&vapid, key.to_pem().as_bytes()).map_err(|e| e.to_string())?;
    let text = format!(
        r#"[gateway]
id = "demo"
database = "dingdong.db"

[mqtt]
url = "mqtt://{broker}"
client_id = "dingdong-demo"
topic_prefix = "{PREFIX}"

[apns]
transport = "http2"
environment = "production"
topic = "com.example.doorbell"
endpoint = "{endpoint}"
ca_file = "{ca}"

[apns.token]
key_file = "{key}"
key_id = "{kid}"
team_id = "{tid}"

[ring]
expiry = "5m"
debounce = "3s"

[fcm]
service_account_file = "{fcm_key}"
endpoint = "{fcm_endpoint}"
ca_file = "{ca}"

[webpush]
vapid_key_file = "{vapid}"
subject = "mailto:demo@example.com"
ca_file = "{ca}"
"#,
        fcm_key = fcm.service_account_file.display(),
        fcm_endpoint = fcm_endpoint,
        vapid = vapid.display(),
        endpoint = sim.endpoint().unwrap_or_default(),
        ca = c.ca_file.display(),
        key = c.key_file.display(),
        kid = c.key_id,
        tid = c.team_id,
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Config::load(&path).map_err(|e| e.to_string())
}

/// Seeds the household; returns each phone by what the simulators record it under (APNs
/// token, FCM token, Web Push subscription id).
fn seed(cfg: &Config, sim: &Sim) -> Result<HashMap<String, usize>, String> {
    let mut s = Store::open(&cfg.gateway.database).map_err(|e| e.to_string())?;
    let e = |e: crate::store::StoreError| e.to_string();
    for u in ["alice", "bob", "carol"] {
        s.add_user(u).map_err(e)?;
    }
    s.add_doorbell("front", Some("the front door"), "alice").map_err(e)?;
    s.share("front", "bob").map_err(e)?;
    let mut by_token = HashMap::new();
    let (fcm, web) =
        (sim.fcm.as_ref().ok_or("no FCM simulator")?, sim.webpush.as_ref().ok_or("no Web Push simulator")?);
    for (i, p) in HOUSEHOLD.iter().enumerate() {
        let (reg, key) = match p.kind {
            Kind::Iphone(env) => {
                let t = token_for(i);
                sim.state.register(&t, TokenInfo { environment: Some(env), unregistered_at: None });
                if p.stale {
                    // Apple learnt the app was removed after the phone registered with us.
                    sim.state.unregister(&t, crate::domain::now_ms() + 1);
                }
                (Registration::apns(&t, env).map_err(e)?, t)
            }
            Kind::Android => (Registration::fcm(&fcm.tokens[0]).map_err(e)?, fcm.tokens[0].clone()),
            Kind::Browser => {
                let sub = &web.subscriptions[0];
                (Registration::webpush(sub.json.as_bytes()).map_err(e)?, sub.id.clone())
            }
        };
        s.register_phone(p.user, &reg, None, Some(p.name)).map_err(e)?;
        by_token.insert(key, i);
    }
    Ok(by_token)
}

pub async fn run() -> Result<(), String> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("dingdong-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = tour(&dir, started).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn tour(dir: &Path, started: Instant) -> Result<(), String> {
    let broker = tokio::task::spawn_blocking(|| crate::app::broker::start_embedded(([127, 0, 0, 1], 0).into()))
        .await
        .map_err(|e| e.to_string())??;
    let sim = Sim::start(SimOptions {
        http2: Some(([127, 0, 0, 1], 0).into()),
        fcm: Some(([127, 0, 0, 1], 0).into()),
        webpush: Some(([127, 0, 0, 1], 0).into()),
        push_phones: 1,
        out_dir: dir.join("apns-sim"),
        max_streams: 1000,
        ..Default::default()
    })
    .await?;
    let cfg = write_config(dir, broker, &sim)?;
    let by_token = seed(&cfg, &sim)?;

    println!("dingdong demo: everything runs on this machine, no Apple or Google account needed");
    println!("  MQTT broker    mqtt://{broker} (embedded)");
    println!("  APNs simulator {} (HTTP/2, token auth)", sim.endpoint().unwrap_or_default());
    if let (Some(f), Some(w)) = (&sim.fcm, &sim.webpush) {
        println!("  FCM simulator  https://{} (OAuth token endpoint + HTTP v1 send API)", f.addr);
        println!("  Web Push       https://{} (a push service: checks VAPID, decrypts every message)", w.addr);
    }
    println!("  database       {}", cfg.gateway.database.display());
    println!();
    println!("Household: alice owns \"the front door\" and shares it with bob; carol has no share.");
    for p in HOUSEHOLD {
        let note = if p.stale { "  <- app deleted: Apple says Unregistered" } else { "" };
        println!("  {:<6} {:<26} {:<12}{note}", p.user, p.name, p.kind.label());
    }

    let stop = CancellationToken::new();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let control = crate::app::daemon::Control { stop: stop.clone(), ready: Some(ready_tx), ..Default::default() };
    let daemon = tokio::spawn(crate::app::daemon::run(cfg.clone(), control));
    tokio::time::timeout(Duration::from_secs(5), ready)
        .await
        .map_err(|_| "the daemon did not become ready in 5s".to_string())?
        .map_err(|_| "the daemon stopped".to_string())?;

    println!();
    println!("Pressing the button: MQTT {PREFIX}/button/front/press ...");
    let (pressed, report) = press_and_wait(broker).await?;
    let rtt = pressed.elapsed();

    let received = sim.state.received();
    let (android, browser) = (
        sim.fcm.as_ref().map(|f| f.state.received()).unwrap_or_default(),
        sim.webpush.as_ref().map(|w| w.state.received()).unwrap_or_default(),
    );
    println!();
    println!(
        "Ring {}: {} phones, {} delivered, {} pruned, {} failed",
        report["ring_id"].as_str().unwrap_or("?"),
        report["phones"],
        report["delivered"],
        report["pruned"],
        report["failed"]
    );
    for r in &received {
        let who = by_token.get(&r.token).map(|&i| &HOUSEHOLD[i]);
        if let Some(p) = who {
            let title = r.payload["aps"]["alert"]["title"].as_str().unwrap_or("");
            println!("  pushed  {:<6} {:<26} via {:<13} \"{title}\"", p.user, p.name, p.kind.label());
        }
    }
    for r in &android {
        if let Some(&i) = by_token.get(&r.token) {
            let p = &HOUSEHOLD[i];
            println!(
                "  pushed  {:<6} {:<26} via {:<13} \"{}\" (high priority, ttl {}s)",
                p.user, p.name, "FCM", r.title, r.ttl_secs
            );
        }
    }
    for r in &browser {
        if let Some(&i) = by_token.get(&r.subscription) {
            let p = &HOUSEHOLD[i];
            let title = r.payload["title"].as_str().unwrap_or("");
            println!(
                "  pushed  {:<6} {:<26} via {:<13} \"{title}\" (decrypted by the push service's browser)",
                p.user, p.name, "Web Push"
            );
        }
    }
    if let Some(results) = report["results"].as_array() {
        for r in results.iter().filter(|r| r["state"] == "pruned") {
            let short = r["token"].as_str().unwrap_or("");
            let name = by_token
                .iter()
                .find(|(t, &i)| t.starts_with(short) && HOUSEHOLD[i].stale)
                .map(|(_, &i)| HOUSEHOLD[i].name)
                .unwrap_or("?");
            println!("  pruned  {name} {short} ({}): removed from the database", r["reason"].as_str().unwrap_or(""));
        }
    }
    let carol =
        by_token.iter().find(|(_, &i)| HOUSEHOLD[i].user == "carol").map(|(t, _)| t.clone()).unwrap_or_default();
    let carol_got = received.iter().any(|r| r.token == carol);
    println!(
        "  carol   {}",
        if carol_got { "was pushed (unexpected!)" } else { "got nothing: the doorbell is not shared with her" }
    );
    println!();
    println!(
        "Latency: press received -> first answer {} ms, -> all answered {} ms; button press -> outcome on MQTT {:.1} ms",
        report["latency_ms"]["first"],
        report["latency_ms"]["all"],
        rtt.as_secs_f64() * 1000.0
    );
    let remaining =
        Store::open(&cfg.gateway.database).map_err(|e| e.to_string())?.list_phones().map_err(|e| e.to_string())?.len();
    println!("Phones left in the database: {remaining} of {}", HOUSEHOLD.len());

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), daemon).await;
    println!("Demo finished in {:.1} s.", started.elapsed().as_secs_f64());
    let pushes = received.len() + android.len() + browser.len();
    if carol_got || pushes != 5 || report["pruned"] != 1 {
        return Err(format!("the demo did not go as expected: {pushes} pushes, report {report}"));
    }
    Ok(())
}

/// Subscribes to ring outcomes, presses the button, and returns the press instant and the
/// first outcome. The event loop is polled here; the client is only used with `try_*`.
async fn press_and_wait(broker: std::net::SocketAddr) -> Result<(Instant, serde_json::Value), String> {
    let mut o = MqttOptions::new("dingdong-demo-phone", broker.ip().to_string(), broker.port());
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    crate::net::mqtt::no_delay(&mut eventloop);
    client.try_subscribe(format!("{PREFIX}/ring/+"), QoS::AtLeastOnce).map_err(|e| e.to_string())?;
    let mut pressed = None;
    let wait = async {
        loop {
            match eventloop.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::SubAck(_)) => {
                    let body = serde_json::json!({ "at": crate::domain::now_ms() }).to_string();
                    pressed = Some(Instant::now());
                    client
                        .try_publish(format!("{PREFIX}/button/front/press"), QoS::AtLeastOnce, false, body)
                        .map_err(|e| e.to_string())?;
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let v: serde_json::Value = serde_json::from_slice(&p.payload).map_err(|e| e.to_string())?;
                    return Ok::<_, String>(v);
                }
                _ => {}
            }
        }
    };
    let report = tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .map_err(|_| "no ring outcome within 5s".to_string())??;
    Ok((pressed.unwrap_or_else(Instant::now), report))
}
