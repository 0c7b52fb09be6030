//! Pairing and signed phone requests through real parts: mosquitto, the `dingdong` binary as
//! a child process, its SQLite file, and the built-in APNs simulator counting deliveries.
//! Every reply is awaited on the broker with a timeout; nothing sleeps to synchronise.
#![cfg(feature = "sim")]

mod util;

use dingdong::codec::pairing::{sign, signing_string};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use util::*;

struct Home {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    _broker: Mosquitto,
    sim: dingdong::app::sim::Sim,
    cfg: PathBuf,
    daemon: Option<Daemon>,
    obs: Observer,
    /// Every token, secret and code the test handled: none may appear in the daemon's log.
    secrets: Vec<String>,
    codes: Vec<String>,
}

/// alice owns `front`, bob owns `back`; the daemon is up and online.
async fn home() -> Home {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let broker = Mosquitto::start(&d);
    let sim = start_sim(&d).await;
    let cfg = write_config(&d, &broker.url(), &sim, Auth::Token);
    ok(&cfg, &["user", "add", "alice"]);
    ok(&cfg, &["user", "add", "bob"]);
    ok(&cfg, &["doorbell", "add", "front", "--name", "Front door", "--owner", "alice"]);
    ok(&cfg, &["doorbell", "add", "back", "--owner", "bob"]);
    let daemon = Daemon::spawn(&cfg, &d);
    let topics = [
        format!("{PREFIX}/status"),
        format!("{PREFIX}/ring/+"),
        format!("{PREFIX}/pair/response/+"),
        format!("{PREFIX}/phone-response/+"),
    ];
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut obs = Observer::connect(broker.port, &topics).await;
    obs.wait_online().await;
    Home { _dir: dir, dir: d, _broker: broker, sim, cfg, daemon: Some(daemon), obs, secrets: vec![], codes: vec![] }
}

impl Home {
    /// `dingdong pair open`; returns the code printed.
    fn open(&mut self, user: &str, extra: &[&str]) -> String {
        let mut args = vec!["pair", "open", "--user", user];
        args.extend_from_slice(extra);
        let out = ok(&self.cfg, &args);
        let code = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("pairing code for {user}: ")))
            .unwrap_or_else(|| panic!("no code in: {out}"))
            .to_string();
        assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()), "{code}");
        assert!(out.contains("valid once, for"), "{out}");
        self.codes.push(code.clone());
        code
    }

    async fn pair_raw(&mut self, rid: &str, payload: &[u8]) -> Value {
        self.obs.publish(&format!("{PREFIX}/pair/request"), payload).await;
        let topic = format!("{PREFIX}/pair/response/{rid}");
        self.obs.wait_for(|t, p| (t == topic).then(|| serde_json::from_slice(p).unwrap())).await
    }

    async fn pair(&mut self, rid: &str, code: &str, token: &str) -> Value {
        self.secrets.push(token.to_string());
        let req = json!({"request_id": rid, "code": code, "token": token, "environment": "production",
            "topic": TOPIC, "name": "Test phone"});
        let r = self.pair_raw(rid, req.to_string().as_bytes()).await;
        if let Some(s) = r["secret"].as_str() {
            self.secrets.push(s.to_string());
        }
        r
    }

    /// Publishes on `P/phone/<id>/<action>` and returns the next reply for that phone.
    async fn phone_raw(&mut self, phone_id: i64, action: &str, payload: &[u8]) -> Value {
        self.obs.publish(&format!("{PREFIX}/phone/{phone_id}/{action}"), payload).await;
        let topic = format!("{PREFIX}/phone-response/{phone_id}");
        self.obs.wait_for(|t, p| (t == topic).then(|| serde_json::from_slice(p).unwrap())).await
    }

    fn phones(&self) -> Vec<Value> {
        serde_json::from_str(&ok(&self.cfg, &["phone", "list", "--json", "--full"])).unwrap()
    }

    async fn press(&mut self, doorbell: &str) -> Value {
        self.obs.press(doorbell, dingdong::domain::now_ms()).await;
        self.obs.ring_outcome().await
    }

    /// Stops the daemon (it must exit 0) and checks its log for leaks.
    fn finish(mut self) -> String {
        let daemon = self.daemon.take().unwrap();
        let log_path = daemon.log.clone();
        assert_eq!(daemon.terminate(), Some(0), "the daemon kept running and stops cleanly");
        let log = std::fs::read_to_string(log_path).unwrap();
        for s in &self.secrets {
            assert!(!log.contains(s.as_str()), "a whole token or secret is in the log: {}…", &s[..8]);
        }
        for c in &self.codes {
            assert!(!standalone_digits(&log).any(|d| d == c), "a code is in the log");
        }
        log
    }
}

/// Runs of exactly 6 digits not glued to other digits, '.' or ':' (timestamps).
fn standalone_digits(log: &str) -> impl Iterator<Item = &str> {
    let b = log.as_bytes();
    (0..b.len().saturating_sub(5)).filter_map(move |i| {
        let run = &b[i..i + 6];
        let before = if i == 0 { b' ' } else { b[i - 1] };
        let after = b.get(i + 6).copied().unwrap_or(b' ');
        let glued = |c: u8| c.is_ascii_digit() || c == b'.' || c == b':';
        (run.iter().all(u8::is_ascii_digit) && !glued(before) && !glued(after)).then(|| &log[i..i + 6])
    })
}

struct Phone {
    id: i64,
    secret: Vec<u8>,
}

fn phone_of(reply: &Value) -> Phone {
    assert_eq!(reply["ok"], true, "{reply}");
    let secret = hex::decode(reply["secret"].as_str().unwrap()).unwrap();
    assert_eq!(secret.len(), 32);
    Phone { id: reply["phone_id"].as_i64().unwrap(), secret }
}

/// A signed request body for `action` with `args`, signed with `key`.
fn signed(phone_id: i64, key: &[u8], action: &str, rid: &str, ts: i64, nonce: &str, args: &[(&str, Value)]) -> Vec<u8> {
    let strs: Vec<String> =
        args.iter().map(|(_, v)| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect();
    let refs: Vec<&str> = strs.iter().map(String::as_str).collect();
    let sig = sign(key, &signing_string(phone_id, action, rid, ts, nonce, &refs));
    let mut body = json!({"request_id": rid, "ts": ts, "nonce": nonce, "sig": hex::encode(sig)});
    for (k, v) in args {
        body[*k] = v.clone();
    }
    body.to_string().into_bytes()
}

fn nonce() -> String {
    hex::encode(dingdong::codec::pairing::new_salt())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_pairs_with_the_right_code_appears_in_phone_list_and_rings() {
    let mut h = home().await;
    let code = h.open("alice", &[]);
    let t = token(100);
    let reply = h.pair("pair-1", &code, &t).await;
    let phone = phone_of(&reply);
    assert_eq!(reply["request_id"], "pair-1");
    assert_eq!(reply["user"], "alice");
    assert_eq!(reply["doorbells"], json!([{"id": "front", "name": "Front door"}]));

    let list = h.phones();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0]["user"].as_str(), list[0]["token"].as_str()), (Some("alice"), Some(t.as_str())));
    assert_eq!(list[0]["id"].as_i64(), Some(phone.id));
    let short = ok(&h.cfg, &["phone", "list"]);
    assert!(short.contains(&t[..8]) && !short.contains(&t));

    let outcome = h.press("front").await;
    assert_eq!(outcome["delivered"].as_i64(), Some(1), "{outcome}");
    assert_eq!(h.sim.state.counts().get(&t), Some(&1));

    // Valid once: the used code now reads exactly like a wrong one.
    let used = h.pair("pair-2", &code, &token(101)).await;
    let wrong = h.pair("pair-3", if code == "000000" { "000001" } else { "000000" }, &token(101)).await;
    assert_eq!((used["ok"].clone(), used["error"].clone()), (json!(false), json!("invalid_code")));
    assert_eq!((used["error"].clone(), used["detail"].clone()), (wrong["error"].clone(), wrong["detail"].clone()));
    assert!(used.get("secret").is_none() && used.get("phone_id").is_none());
    assert_eq!(h.phones().len(), 1);
    let log = h.finish();
    assert!(log.contains("phone paired") && log.contains(&t[..8]), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_codes_lock_the_window_and_a_thousand_random_codes_never_pair() {
    const BURST: usize = 1000;
    let mut h = home().await;
    let code = h.open("guest", &["--share", "front"]);
    let wrong: Vec<String> =
        (0..5).map(|i| format!("{:06}", (code.parse::<u32>().unwrap() + 1 + i * 7919) % 1_000_000)).collect();
    for (i, w) in wrong.iter().enumerate() {
        let r = h.pair(&format!("w{i}"), w, &token(200)).await;
        assert_eq!(r["error"], "invalid_code", "{r}");
    }
    let r = h.pair("right-after-five", &code, &token(200)).await;
    assert_eq!((r["ok"].clone(), r["error"].clone()), (json!(false), json!("invalid_code")), "locked: {r}");

    // A fresh window, then a burst of 1,000 random wrong codes.
    let code = h.open("guest", &[]);
    let mut sent = 0;
    while sent < BURST {
        let c = dingdong::codec::pairing::Code::generate();
        if c.reveal() == code {
            continue;
        }
        let req = json!({"request_id": format!("burst-{sent}"), "code": c.reveal(), "token": token(201),
            "environment": "production", "topic": TOPIC});
        h.obs.publish(&format!("{PREFIX}/pair/request"), req.to_string().as_bytes()).await;
        sent += 1;
    }
    let prefix = format!("{PREFIX}/pair/response/burst-");
    let (mut invalid, mut limited) = (0, 0);
    for _ in 0..BURST {
        let r: Value = h.obs.wait_for(|t, p| t.starts_with(&prefix).then(|| serde_json::from_slice(p).unwrap())).await;
        assert_eq!(r["ok"], false, "{r}");
        match r["error"].as_str() {
            Some("invalid_code") => invalid += 1,
            Some("rate_limited") => limited += 1,
            _ => panic!("{r}"),
        }
    }
    assert_eq!(invalid + limited, 1000);
    assert!(limited > 900, "the global limit stops a burst: {invalid} judged, {limited} limited");
    assert!(h.phones().is_empty(), "no phone paired");
    // The right code of the burst's window is refused too (locked, or rate limited).
    let r = h.pair("right-after-burst", &code, &token(201)).await;
    assert_eq!(r["ok"], false);
    let log = h.finish();
    assert!(log.contains("pair request refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_requests_replace_tokens_and_refuse_replays_forgeries_stale_and_cross_user() {
    let mut h = home().await;
    let (t_a, t_b, t_new) = (token(300), token(301), token(302));
    h.secrets.push(t_new.clone());
    let code = h.open("alice", &[]);
    let a = phone_of(&h.pair("pa", &code, &t_a).await);
    let code = h.open("bob", &[]);
    let b = phone_of(&h.pair("pb", &code, &t_b).await);
    let before = h.phones();
    let tok_args = |t: &str| vec![("token", json!(t)), ("environment", json!("production"))];
    let now = dingdong::domain::now_ms();

    // Forged: a random key; bob's key on alice's phone; alice's key on bob's phone.
    let forged = signed(a.id, &[7u8; 32], "token", "f1", now, &nonce(), &tok_args(&t_new));
    assert_eq!(h.phone_raw(a.id, "token", &forged).await["error"], "unauthorized");
    let cross = signed(a.id, &b.secret, "token", "f2", now, &nonce(), &tok_args(&t_new));
    assert_eq!(h.phone_raw(a.id, "token", &cross).await["error"], "unauthorized");
    let cross = signed(b.id, &a.secret, "unpair", "f3", now, &nonce(), &[]);
    assert_eq!(h.phone_raw(b.id, "unpair", &cross).await["error"], "unauthorized");
    let cross = signed(b.id, &a.secret, "token", "f4", now, &nonce(), &tok_args(&t_new));
    assert_eq!(h.phone_raw(b.id, "token", &cross).await["error"], "unauthorized");
    // Alice's correctly signed request, re-published on bob's topic.
    let mine = signed(a.id, &a.secret, "unpair", "f5", now, &nonce(), &[]);
    assert_eq!(h.phone_raw(b.id, "unpair", &mine).await["error"], "unauthorized");
    // Unsigned.
    let unsigned = json!({"request_id": "f6", "ts": now, "nonce": nonce()}).to_string();
    assert_eq!(h.phone_raw(a.id, "unpair", unsigned.as_bytes()).await["error"], "bad_request");
    // Stale, either way.
    let stale = signed(a.id, &a.secret, "token", "s1", now - 6 * 60_000, &nonce(), &tok_args(&t_new));
    assert_eq!(h.phone_raw(a.id, "token", &stale).await["error"], "stale");
    let future = signed(a.id, &a.secret, "token", "s2", now + 6 * 60_000, &nonce(), &tok_args(&t_new));
    assert_eq!(h.phone_raw(a.id, "token", &future).await["error"], "stale");
    // Taking bob's token.
    let steal = signed(a.id, &a.secret, "token", "c1", now, &nonce(), &tok_args(&t_b));
    assert_eq!(h.phone_raw(a.id, "token", &steal).await["error"], "conflict");
    // A share code for bob's doorbell.
    let share = [("user", json!("mallory")), ("doorbell", json!("back")), ("minutes", json!(5))];
    let r = h.phone_raw(a.id, "share-code", &signed(a.id, &a.secret, "share-code", "c2", now, &nonce(), &share)).await;
    assert_eq!(r["error"], "forbidden");
    assert_eq!(h.phones(), before, "refusals changed nothing");

    // The real replacement works ...
    let good = signed(a.id, &a.secret, "token", "ok1", now, &nonce(), &tok_args(&t_new));
    let r = h.phone_raw(a.id, "token", &good).await;
    assert_eq!((r["ok"].clone(), r["request_id"].clone()), (json!(true), json!("ok1")), "{r}");
    // ... once.
    assert_eq!(h.phone_raw(a.id, "token", &good).await["error"], "replayed");
    let after = h.phones();
    let token_of = |list: &[Value], id: i64| {
        list.iter().find(|p| p["id"].as_i64() == Some(id)).map(|p| p["token"].as_str().unwrap().to_string())
    };
    assert_eq!(token_of(&after, a.id), Some(t_new.clone()));
    assert_eq!(token_of(&after, b.id), Some(t_b.clone()), "bob's phone untouched");

    // The old token stops ringing, the new one rings, bob's doorbell still reaches bob.
    let outcome = h.press("front").await;
    assert_eq!(outcome["delivered"].as_i64(), Some(1), "{outcome}");
    let outcome = h.press("back").await;
    assert_eq!(outcome["delivered"].as_i64(), Some(1), "{outcome}");
    let counts = h.sim.state.counts();
    assert_eq!((counts.get(&t_new), counts.get(&t_a), counts.get(&t_b)), (Some(&1), None, Some(&1)));
    let log = h.finish();
    assert!(log.contains("phone request refused") && log.contains("phone token replaced"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_phone_shares_a_doorbell_and_a_phone_unpairs_itself() {
    let mut h = home().await;
    let code = h.open("alice", &[]);
    let a = phone_of(&h.pair("pa", &code, &token(400)).await);
    let now = dingdong::domain::now_ms();
    let share = [("user", json!("carol")), ("doorbell", json!("front")), ("minutes", json!(10))];
    let r = h.phone_raw(a.id, "share-code", &signed(a.id, &a.secret, "share-code", "sc", now, &nonce(), &share)).await;
    assert_eq!(r["ok"], true, "{r}");
    let code = r["code"].as_str().unwrap().to_string();
    h.codes.push(code.clone());
    assert!(r["expires_at"].as_i64().unwrap() > now + 9 * 60_000);
    let c = phone_of(&h.pair("pc", &code, &token(401)).await);
    // carol's phone rings for front, alongside alice's.
    let outcome = h.press("front").await;
    assert_eq!(outcome["delivered"].as_i64(), Some(2), "{outcome}");
    // carol's phone unpairs itself; then its secret is gone too.
    let bye = signed(c.id, &c.secret, "unpair", "bye", now, &nonce(), &[]);
    assert_eq!(h.phone_raw(c.id, "unpair", &bye).await["ok"], true);
    let again = signed(c.id, &c.secret, "unpair", "bye2", now, &nonce(), &[]);
    assert_eq!(h.phone_raw(c.id, "unpair", &again).await["error"], "unauthorized");
    assert_eq!(h.phones().len(), 1);
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pair_button_opens_a_window_for_the_button_user() {
    let mut h = home().await;
    let code_file = h.dir.join("pair-code.json");
    h.obs.publish(&format!("{PREFIX}/gateway/pair-button"), b"").await;
    let text = wait_file(&code_file);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["user"], "household");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&code_file).unwrap().permissions().mode() & 0o777, 0o600);
    let code = v["code"].as_str().unwrap().to_string();
    h.codes.push(code.clone());
    let r = h.pair("btn", &code, &token(500)).await;
    assert_eq!((r["ok"].clone(), r["user"].clone()), (json!(true), json!("household")), "{r}");
    h.secrets.push(r["secret"].as_str().unwrap().to_string());
    h.finish();
}

/// Waits for a file the daemon writes, within PATIENCE (a readiness poll, not a sleep).
fn wait_file(path: &Path) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            return t;
        }
        assert!(std::time::Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_payloads_get_error_replies_and_the_daemon_keeps_ringing() {
    let mut h = home().await;
    let big = format!(r#"{{"request_id":"big","name":"{}"}}"#, "x".repeat(5000));
    // Unreadable pair requests have no reply topic: they are logged and dropped.
    h.obs.publish(&format!("{PREFIX}/pair/request"), big.as_bytes()).await;
    h.obs.publish(&format!("{PREFIX}/pair/request"), b"{not json").await;
    h.obs.publish(&format!("{PREFIX}/pair/request"), b"\xff\xfe").await;
    // Readable ones with a bad field are answered, naming the field but echoing nothing.
    let t = token(600);
    h.secrets.push(t.clone());
    let cases: Vec<(Value, &str)> = vec![
        (json!({"request_id": "m1", "code": "12345", "token": t, "environment": "production", "topic": TOPIC}), "code"),
        (
            json!({"request_id": "m2", "code": "123456", "token": "abc", "environment": "production", "topic": TOPIC}),
            "token",
        ),
        (
            json!({"request_id": "m3", "code": "123456", "token": t, "environment": "prod", "topic": TOPIC}),
            "environment",
        ),
        (
            json!({"request_id": "m4", "code": "123456", "token": t, "environment": "production", "topic": "com.evil"}),
            "topic",
        ),
        (
            json!({"request_id": "m5", "code": "123456", "token": t, "environment": "production", "topic": TOPIC, "x": 1}),
            "unknown field",
        ),
        (json!({"request_id": "m6"}), "missing"),
    ];
    for (req, says) in cases {
        let rid = req["request_id"].as_str().unwrap().to_string();
        let r = h.pair_raw(&rid, req.to_string().as_bytes()).await;
        assert_eq!((r["ok"].clone(), r["error"].clone()), (json!(false), json!("bad_request")), "{r}");
        assert!(r["detail"].as_str().unwrap().contains(says), "{r}");
        assert!(!r.to_string().contains(&t) && !r.to_string().contains("123456"));
    }
    // Phone topics always have a reply topic.
    for payload in [big.as_bytes(), b"{not json", b"[]", b"", br#"{"request_id":"a/b"}"#] {
        let r = h.phone_raw(5, "token", payload).await;
        assert_eq!((r["ok"].clone(), r["error"].clone()), (json!(false), json!("bad_request")), "{r}");
    }
    let r = h.phone_raw(5, "reboot", br#"{"request_id":"x"}"#).await;
    assert!(r["detail"].as_str().unwrap().contains("unknown action"), "{r}");
    // The pair button: junk is logged, no window opens.
    h.obs.publish(&format!("{PREFIX}/gateway/pair-button"), big.as_bytes()).await;
    h.obs.publish(&format!("{PREFIX}/gateway/pair-button"), b"{\"user\":\"me\"}").await;
    h.obs.publish(&format!("{PREFIX}/phone/abc/token"), b"{}").await;
    // Still alive: a phone pairs and a press rings.
    let code = h.open("alice", &[]);
    phone_of(&h.pair("alive", &code, &token(601)).await);
    let outcome = h.press("front").await;
    assert_eq!(outcome["delivered"].as_i64(), Some(1));
    assert!(!h.dir.join("pair-code.json").exists(), "junk on the button topic opened no window");
    let log = h.finish();
    assert!(log.contains("pair button message refused"), "{log}");
    assert!(log.matches("pair request refused").count() >= 9, "{log}");
}
