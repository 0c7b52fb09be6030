//! Shared helpers of the integration tests: a real mosquitto on a free loopback port, the
//! built-in APNs simulator, config files pointing at both, the `dingdong` binary as a child
//! process, and an MQTT observer. No fixed ports; readiness is awaited, never slept for.
#![allow(dead_code)]

use dingdong::app::sim::{CertOptions, Faults, Sim, SimOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const PREFIX: &str = "dingdong/test";
pub const TOPIC: &str = "com.example.doorbell";
/// Generous bound for things that take milliseconds; only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The `dingdong` binary under test; `DINGDONG_BIN` points the benchmark at another build
/// (to compare two versions in alternating runs).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| std::env::var("DINGDONG_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dingdong").to_string()))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls until `addr` accepts TCP connections: a readiness check, bounded by PATIENCE.
pub fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "{addr} never started listening");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("mosquitto is not installed: run the README's test command (scripts/test.sh), which installs it");
}

/// A real mosquitto broker, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Self::start_on(dir, free_port())
    }

    /// Starts on a given port (to restart a broker where clients expect it), with
    /// persistence in `dir` so QoS 1 sessions survive a restart.
    pub fn start_on(dir: &Path, port: u16) -> Mosquitto {
        Self::start_with(dir, port, true)
    }

    /// Like [`Mosquitto::start_on`]; `nodelay: false` leaves out `set_tcp_nodelay true`, as
    /// Debian's mosquitto is installed (Nagle's algorithm on the broker's sockets).
    pub fn start_with(dir: &Path, port: u16, nodelay: bool) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        let nodelay = if nodelay { "set_tcp_nodelay true\n" } else { "" };
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nuser root\nallow_anonymous true\n{nodelay}persistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mosquitto.log")).unwrap())
            .spawn()
            .expect("mosquitto starts");
        wait_listening(([127, 0, 0, 1], port).into());
        Mosquitto { port, child, dir: dir.to_path_buf() }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stops the broker gracefully (SIGTERM), so it saves its sessions.
    pub fn stop(mut self) -> (u16, PathBuf) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        (self.port, self.dir.clone())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the simulator's HTTP/2 API on a free port.
pub async fn start_sim(dir: &Path) -> Sim {
    start_sim_with(dir, Faults::default(), 1000).await
}

/// Starts the simulator with faults and a stream limit.
pub async fn start_sim_with(dir: &Path, faults: Faults, max_streams: u32) -> Sim {
    Sim::start(SimOptions {
        http2: Some(([127, 0, 0, 1], 0).into()),
        out_dir: dir.join("apns-sim"),
        max_streams,
        certs: CertOptions { topic: TOPIC.into(), ..Default::default() },
        faults,
        ..Default::default()
    })
    .await
    .expect("simulator starts")
}

/// Polls `cond` until it holds: for progress that has no event to await (a counter in the
/// simulator). Bounded by PATIENCE.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Registers `n` phones (tokens `token(base..base+n)`) for `user` through `phone import`.
pub fn import_phones(config: &Path, dir: &Path, user: &str, base: u32, n: u32) -> Vec<String> {
    let tokens: Vec<String> = (base..base + n).map(token).collect();
    let file = dir.join(format!("import-{user}-{base}.txt"));
    std::fs::write(&file, tokens.join("\n")).unwrap();
    ok(config, &["phone", "import", user, file.to_str().unwrap()]);
    tokens
}

/// How the daemon proves itself to the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    Token,
    P12,
    Pem,
}

/// Writes a config for a daemon using `broker` and `sim`; returns its path.
pub fn write_config(dir: &Path, broker_url: &str, sim: &Sim, auth: Auth) -> PathBuf {
    let c = &sim.credentials;
    let auth_toml = match auth {
        Auth::Token => format!(
            "[apns.token]\nkey_file = \"{}\"\nkey_id = \"{}\"\nteam_id = \"{}\"\n",
            c.key_file.display(),
            c.key_id,
            c.team_id
        ),
        Auth::P12 => format!(
            "[apns.certificate]\nfile = \"{}\"\npassword_file = \"{}\"\n",
            c.client_p12.display(),
            c.client_p12_password_file.display()
        ),
        Auth::Pem => format!(
            "[apns.certificate]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            c.client_cert.display(),
            c.client_key.display()
        ),
    };
    let text = format!(
        r#"[gateway]
id = "gw-test"
database = "dingdong.db"

[mqtt]
url = "{broker_url}"
client_id = "dingdong-test-{port}"
topic_prefix = "{PREFIX}"

[apns]
transport = "http2"
environment = "production"
topic = "{TOPIC}"
endpoint = "{endpoint}"
ca_file = "{ca}"

{auth_toml}
[ring]
expiry = "5m"
debounce = "2s"
"#,
        port = free_port(),
        endpoint = sim.endpoint().unwrap(),
        ca = c.ca_file.display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `dingdong ARGS --config CONFIG` to completion.
pub fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).arg("--config").arg(config).env("RUST_LOG", "warn").output().expect("dingdong runs")
}

/// Like [`cli`], asserting success; returns stdout.
pub fn ok(config: &Path, args: &[&str]) -> String {
    let out = cli(config, args);
    assert!(
        out.status.success(),
        "dingdong {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dingdong run` as a child process, logging to `dir/daemon.log`; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(config: &Path, dir: &Path) -> Daemon {
        let filter = std::env::var("DINGDONG_TEST_LOG").unwrap_or_else(|_| "info,dingdong=debug".into());
        Daemon::spawn_logging(config, dir, &filter)
    }

    /// Like [`Daemon::spawn`], logging with the `RUST_LOG` filter `filter` (`trace`: all).
    pub fn spawn_logging(config: &Path, dir: &Path, filter: &str) -> Daemon {
        let log = dir.join(format!("daemon-{}.log", free_port()));
        let child = Command::new(bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("daemon starts");
        Daemon { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status();
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until the log has a line containing `needle` (a readiness check, not a sleep).
    pub async fn wait_log(&self, needle: &str) {
        until(&format!("the daemon to log {needle:?}"), || self.log_text().contains(needle)).await
    }

    /// SIGTERM, then wait; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: a power cut, as far as the process can tell.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the daemon said.
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- daemon log (last {} lines) ---", tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// An MQTT client for tests: a task polls the event loop and forwards publishes; the test
/// uses the client from its own task.
pub struct Observer {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    subscribed: mpsc::UnboundedReceiver<()>,
}

// The observer plays a bridge and a phone: it publishes with its own client (the daemon's
// rule of one publisher is for the daemon).
#[allow(clippy::disallowed_methods)]
impl Observer {
    pub async fn connect(port: u16, filters: &[&str]) -> Observer {
        let mut o = MqttOptions::new(format!("observer-{}", free_port()), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(o, 1024);
        dingdong::net::mqtt::no_delay(&mut eventloop);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, mut subscribed) = mpsc::unbounded_channel();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let n = filters.len();
        let c2 = client.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    // Clean session: subscribe again after every (re)connect.
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &filters {
                            let _ = c2.try_subscribe(f.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        for _ in 0..n {
            tokio::time::timeout(PATIENCE, subscribed.recv()).await.expect("suback in time");
        }
        Observer { client, rx, subscribed }
    }

    /// Waits until the observer has subscribed again (after a broker restart).
    pub async fn wait_resubscribed(&mut self) {
        tokio::time::timeout(PATIENCE, self.subscribed.recv()).await.expect("resubscribed in time");
    }

    /// The next publish for which `pick` returns something, within PATIENCE.
    pub async fn wait_for<T>(&mut self, mut pick: impl FnMut(&str, &[u8]) -> Option<T>) -> T {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let (t, p) = self.rx.recv().await.expect("observer alive");
                if let Some(v) = pick(&t, &p) {
                    return v;
                }
            }
        })
        .await
        .expect("the awaited MQTT message arrived in time")
    }

    /// Waits for the daemon's retained `online` status.
    pub async fn wait_online(&mut self) {
        let status = format!("{PREFIX}/status");
        self.wait_for(|t, p| (t == status && String::from_utf8_lossy(p).contains("\"online\"")).then_some(())).await
    }

    /// Waits for the outcome of any ring.
    pub async fn ring_outcome(&mut self) -> serde_json::Value {
        let prefix = format!("{PREFIX}/ring/");
        self.wait_for(|t, p| t.starts_with(&prefix).then(|| serde_json::from_slice(p).unwrap())).await
    }

    /// Publishes a press of `button` stamped `at` (ms), as a bridge would.
    pub async fn press(&self, button: &str, at: i64) {
        self.client
            .publish(format!("{PREFIX}/button/{button}/press"), QoS::AtLeastOnce, false, format!("{{\"at\":{at}}}"))
            .await
            .unwrap();
    }

    pub async fn publish(&self, topic: &str, payload: &[u8]) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()).await.unwrap();
    }

    /// Publishes a retained message (a bridge that retains, a stale state).
    pub async fn publish_retained(&self, topic: &str, payload: &[u8]) {
        self.client.publish(topic, QoS::AtLeastOnce, true, payload.to_vec()).await.unwrap();
    }
}

/// A deterministic 32-byte token for test phone `n`.
/// A production phone with id `n` and [`token`]`(n)`, as the transports take it.
pub fn target(n: u32) -> dingdong::domain::Target {
    dingdong::domain::Target::apns(
        n as i64,
        dingdong::domain::Token::from_hex(&token(n)).unwrap(),
        dingdong::domain::Environment::Production,
    )
}

pub fn token(n: u32) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("test-phone-{n}").as_bytes()))
}

/// Starts the simulator with the FCM and Web Push services beside the APNs HTTP/2 API, with
/// `phones` test phones for each (`http1`: the push service speaks HTTP/1.1 only).
pub async fn start_push_sim(dir: &Path, faults: Faults, max_streams: u32, phones: u32, http1: bool) -> Sim {
    Sim::start(SimOptions {
        http2: Some(([127, 0, 0, 1], 0).into()),
        fcm: Some(([127, 0, 0, 1], 0).into()),
        webpush: Some(([127, 0, 0, 1], 0).into()),
        push_phones: phones,
        webpush_http1: http1,
        out_dir: dir.join("apns-sim"),
        max_streams,
        certs: CertOptions { topic: TOPIC.into(), ..Default::default() },
        faults,
        ..Default::default()
    })
    .await
    .expect("simulator starts")
}

/// Adds `[fcm]` and `[webpush]` tables pointing at `sim` to the config at `cfg` (a fresh
/// VAPID key beside it).
pub fn add_push_tables(cfg: &Path, sim: &Sim) {
    let fcm = sim.fcm.as_ref().expect("the FCM simulator runs");
    let dir = cfg.parent().unwrap();
    let vapid = dir.join("vapid.pem");
    if !vapid.exists() {
        let key = dingdong::codec::push::vapid::VapidKey::generate(&mut rand::thread_rng());
        std::fs::write(&vapid, key.to_pem().as_bytes()).unwrap();
    }
    let mut text = std::fs::read_to_string(cfg).unwrap();
    text.push_str(&format!(
        "\n[fcm]\nservice_account_file = \"{}\"\nendpoint = \"https://{}\"\nca_file = \"{ca}\"\n\n[webpush]\nvapid_key_file = \"{}\"\nsubject = \"mailto:test@example.com\"\nca_file = \"{ca}\"\n",
        fcm.service_account_file.display(),
        fcm.addr,
        vapid.display(),
        ca = sim.credentials.ca_file.display(),
    ));
    std::fs::write(cfg, text).unwrap();
}

/// Notifications every simulated service accepted.
pub fn accepted_all(sim: &Sim) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    sim.state.accepted.load(Relaxed)
        + sim.fcm.as_ref().map_or(0, |f| f.state.accepted.load(Relaxed))
        + sim.webpush.as_ref().map_or(0, |w| w.state.accepted.load(Relaxed))
}
