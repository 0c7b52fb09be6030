//! The household of the pairing tests: a real mosquitto, the simulator, the daemon logging at
//! `trace`, an observer on the broker, and `dingdong phone-sim` as the app. Every code, token
//! and secret the tests handle is remembered, and none may appear in any log line.
#![allow(dead_code)]

use crate::util::*;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct Home {
    pub dir: PathBuf,
    pub broker: Mosquitto,
    pub sim: dingdong::app::sim::Sim,
    pub cfg: PathBuf,
    pub daemon: Option<Daemon>,
    pub obs: Observer,
    /// Every token and secret the test handled (hex): none may be logged whole.
    pub secrets: Vec<String>,
    /// Every code: none may be logged.
    pub codes: Vec<String>,
    /// What the reference phone logged (stderr of each run).
    pub phone_logs: String,
    /// How long each pairing took, request to stored secret (phone-sim's `pairing_ms`).
    pub pairing_ms: Vec<f64>,
    /// Last: dropped after the daemon, so a failing test still shows the daemon's log.
    _dir: tempfile::TempDir,
}

/// alice owns `front`, bob owns `back`; the daemon is up (logging everything) and online.
pub async fn home() -> Home {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let broker = Mosquitto::start(&d);
    let sim = start_sim(&d).await;
    let cfg = write_config(&d, &broker.url(), &sim, Auth::Token);
    ok(&cfg, &["user", "add", "alice"]);
    ok(&cfg, &["user", "add", "bob"]);
    ok(&cfg, &["doorbell", "add", "front", "--name", "Front door", "--owner", "alice"]);
    ok(&cfg, &["doorbell", "add", "back", "--owner", "bob"]);
    let daemon = Daemon::spawn_logging(&cfg, &d, "trace");
    let topics = [format!("{PREFIX}/status"), format!("{PREFIX}/ring/+"), format!("{PREFIX}/phone-response/+")];
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut obs = Observer::connect(broker.port, &topics).await;
    obs.wait_online().await;
    Home {
        _dir: dir,
        dir: d,
        broker,
        sim,
        cfg,
        daemon: Some(daemon),
        obs,
        secrets: vec![],
        codes: vec![],
        phone_logs: String::new(),
        pairing_ms: vec![],
    }
}

/// What a phone keeps: its id and secret, read from its state file.
pub struct Phone {
    pub id: i64,
    pub secret: Vec<u8>,
    pub state: PathBuf,
}

impl Home {
    /// `dingdong pair open`; returns the code's 8 digits (printed in two groups).
    pub fn open(&mut self, user: &str, extra: &[&str]) -> String {
        let mut args = vec!["pair", "open", "--user", user];
        args.extend_from_slice(extra);
        let out = ok(&self.cfg, &args);
        let shown = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("pairing code for {user}: ")))
            .unwrap_or_else(|| panic!("no code in: {out}"));
        let code = shown.replace(' ', "");
        assert!(code.len() == 8 && code.bytes().all(|b| b.is_ascii_digit()), "{shown}");
        assert_eq!(shown, format!("{} {}", &code[..4], &code[4..]), "two groups of four");
        assert!(out.contains("valid once, for"), "{out}");
        self.codes.push(code.clone());
        code
    }

    pub fn state_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.phone.json"))
    }

    /// Runs `dingdong phone-sim ARGS` (logging at trace); its exit code and its JSON line.
    pub async fn phone_sim(&mut self, args: &[&str]) -> (i32, Value) {
        let out = tokio::process::Command::new(bin())
            .arg("phone-sim")
            .args(args)
            .arg("--config")
            .arg(&self.cfg)
            .env("RUST_LOG", "trace")
            .output()
            .await
            .expect("phone-sim runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        self.phone_logs.push_str(&String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "phone-sim {args:?} prints one JSON line: {stdout}");
        let v: Value = serde_json::from_str(lines[0]).unwrap_or_else(|_| panic!("not JSON: {stdout}"));
        let code = out.status.code().unwrap_or(-1);
        assert_eq!(v["ok"] == true, code == 0, "{args:?}: exit {code}, {v}");
        (code, v)
    }

    /// `phone-sim pair --code CODE --token TOKEN --state <dir>/<name>.phone.json [extra]`.
    pub async fn pair(&mut self, name: &str, code: &str, token: &str, extra: &[&str]) -> (i32, Value) {
        self.secrets.push(token.to_string());
        let state = self.state_path(name);
        let state = state.to_str().unwrap().to_string();
        let mut args = vec!["pair", "--code", code, "--token", token, "--state", &state];
        args.extend_from_slice(extra);
        let (code, v) = self.phone_sim(&args).await;
        if code == 0 {
            self.pairing_ms.push(v["pairing_ms"].as_f64().expect("pairing_ms"));
            let p = self.phone(name);
            self.secrets.push(hex::encode(&p.secret));
        }
        (code, v)
    }

    /// Pairs and expects success.
    pub async fn paired(&mut self, name: &str, code: &str, token: &str) -> Phone {
        let (exit, v) = self.pair(name, code, token, &[]).await;
        assert_eq!(exit, 0, "{v}");
        self.phone(name)
    }

    /// The phone of state file `name`.
    pub fn phone(&self, name: &str) -> Phone {
        let state = self.state_path(name);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o600, "state file is private");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
        Phone {
            id: v["phone_id"].as_i64().unwrap(),
            secret: hex::decode(v["secret"].as_str().unwrap()).unwrap(),
            state,
        }
    }

    /// A signed request of the reference phone: `phone-sim ACTION ARGS --state <name>`.
    pub async fn signed(&mut self, name: &str, args: &[&str]) -> (i32, Value) {
        let state = self.state_path(name);
        let state = state.to_str().unwrap().to_string();
        let mut all = args.to_vec();
        all.extend_from_slice(&["--state", &state]);
        self.phone_sim(&all).await
    }

    /// Publishes on `P/phone/<id>/<action>` and returns the reply for that phone with the
    /// payload's request id, or without one (a payload that could not be read): replies to the
    /// reference phone's own requests pass the observer too.
    pub async fn phone_raw(&mut self, phone_id: i64, action: &str, payload: &[u8]) -> Value {
        let rid = serde_json::from_slice::<Value>(payload).ok().and_then(|v| v.get("request_id").cloned());
        self.obs.publish(&format!("{PREFIX}/phone/{phone_id}/{action}"), payload).await;
        let topic = format!("{PREFIX}/phone-response/{phone_id}");
        self.obs
            .wait_for(|t, p| {
                let v: Value = serde_json::from_slice(p).unwrap();
                let ours = match v.get("request_id") {
                    None => true,
                    Some(r) => Some(r) == rid.as_ref(),
                };
                (t == topic && ours).then_some(v)
            })
            .await
    }

    pub fn phones(&self) -> Vec<Value> {
        serde_json::from_str(&ok(&self.cfg, &["phone", "list", "--json", "--full"])).unwrap()
    }

    pub async fn press(&mut self, doorbell: &str) -> Value {
        self.obs.press(doorbell, dingdong::domain::now_ms()).await;
        self.obs.ring_outcome().await
    }

    /// The database, opened beside the running daemon (as the CLI does).
    pub fn db(&self) -> dingdong::store::Store {
        dingdong::store::Store::open(&self.dir.join("dingdong.db")).unwrap()
    }

    /// Stops the daemon (it must exit 0) and checks its log and the phone's for leaks.
    pub fn finish(mut self) -> String {
        let daemon = self.daemon.take().unwrap();
        let log_path = daemon.log.clone();
        assert_eq!(daemon.terminate(), Some(0), "the daemon kept running and stops cleanly");
        let log = std::fs::read_to_string(log_path).unwrap();
        assert!(log.contains("TRACE"), "the daemon logged at trace");
        for (what, text) in [("daemon", &log), ("phone-sim", &self.phone_logs)] {
            assert_no_leak(what, text, &self.secrets, &self.codes);
        }
        log
    }
}

/// No whole token or secret (hex, base64) and no code (8 digits, or two groups of four) in
/// `text`.
pub fn assert_no_leak(what: &str, text: &str, secrets: &[String], codes: &[String]) {
    for s in secrets {
        let raw = hex::decode(s).unwrap();
        for form in [s.clone(), s.to_uppercase(), URL_SAFE_NO_PAD.encode(&raw), STANDARD_NO_PAD.encode(&raw)] {
            assert!(!text.contains(&form), "{what}: a whole token or secret is in the log: {}…", &s[..8]);
        }
    }
    for c in codes {
        assert!(!standalone_digits(text, 8).any(|d| d == c), "{what}: a code is in the log");
        assert!(!text.contains(&format!("{} {}", &c[..4], &c[4..])), "{what}: a code is in the log");
    }
}

/// Runs of exactly `n` digits not glued to other digits, '.' or ':' (timestamps).
pub fn standalone_digits(log: &str, n: usize) -> impl Iterator<Item = &str> {
    let b = log.as_bytes();
    (0..b.len().saturating_sub(n - 1)).filter_map(move |i| {
        let run = &b[i..i + n];
        let before = if i == 0 { b' ' } else { b[i - 1] };
        let after = b.get(i + n).copied().unwrap_or(b' ');
        let glued = |c: u8| c.is_ascii_digit() || c == b'.' || c == b':';
        (run.iter().all(u8::is_ascii_digit) && !glued(before) && !glued(after)).then(|| &log[i..i + n])
    })
}

/// A fresh nonce for a hand-made signed request.
pub fn nonce() -> String {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

/// A code that is not `code`.
pub fn other_code(code: &str, k: u32) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:08}", (n + 1 + k * 7919) % 100_000_000)
}

/// Waits for a file the daemon writes, within PATIENCE (a readiness poll, not a sleep).
pub fn wait_file(path: &Path) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            return t;
        }
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
