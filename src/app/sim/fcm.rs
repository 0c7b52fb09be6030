//! The FCM simulator: Google's OAuth token endpoint (`POST /token`, the JWT-bearer grant
//! checked against the service account it generated) and the HTTP v1 send API (`POST
//! /v1/projects/<id>/messages:send`), answering as Google documents: 200 with a message name,
//! 401 for an access token it did not issue (or revoked), 404 `UNREGISTERED` for a token that
//! was unregistered, 400 `INVALID_ARGUMENT` for a body or token FCM would refuse, and with
//! `--fail-rate` 429/500/503 with `Retry-After`. `GET /sim/stats` and `/sim/received` tell
//! what it accepted.
//!
//! Writes into the out dir: `fcm-service-account.json` (the key file a config points at; its
//! `token_uri` is this simulator) and `fcm-tokens.txt` (registration tokens of test phones).

use super::serve::{self, Req, Resp};
use super::{Faults, SimCredentials};
use crate::codec::push::fcm::sim as fsim;
use rand::Rng;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio_util::sync::CancellationToken;

/// The simulated project.
pub const PROJECT: &str = "dingdong-sim";
const CLIENT_EMAIL: &str = "dingdong@dingdong-sim.iam.gserviceaccount.com";
/// How long an access token lives.
const TOKEN_LIFETIME: u64 = 3600;

/// One accepted message, as the Android phone would see it.
#[derive(Debug, Clone, Serialize)]
pub struct FcmReceived {
    pub token: String,
    pub title: String,
    pub body: String,
    pub doorbell: String,
    pub ring: String,
    pub ttl_secs: u64,
    pub high_priority: bool,
    pub collapse_key: Option<String>,
    pub channel_id: Option<String>,
    pub at_us: i64,
}

/// What the FCM simulator knows and has seen.
#[derive(Default)]
pub struct FcmState {
    /// Known registration tokens; with any, unknown ones are INVALID_ARGUMENT.
    tokens: RwLock<HashSet<String>>,
    unregistered: RwLock<HashSet<String>>,
    /// Access tokens issued and not revoked, with their expiry (UNIX s).
    access: RwLock<HashMap<String, u64>>,
    received: Mutex<Vec<FcmReceived>>,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub tokens_issued: AtomicU64,
    reasons: Mutex<HashMap<String, u64>>,
    fast: bool,
}

impl FcmState {
    /// Registers a test phone's token (strict mode: unknown tokens are refused).
    pub fn register(&self, token: &str) {
        self.tokens.write().expect("tokens").insert(token.to_string());
    }

    /// The app was removed from that phone: 404 UNREGISTERED from now on.
    pub fn unregister(&self, token: &str) {
        self.unregistered.write().expect("tokens").insert(token.to_string());
    }

    /// Forgets every access token issued: the next send is answered 401.
    pub fn revoke_access_tokens(&self) {
        self.access.write().expect("access").clear();
    }

    pub fn received(&self) -> Vec<FcmReceived> {
        self.received.lock().expect("received").clone()
    }

    /// How many messages each registration token received.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in self.received.lock().expect("received").iter() {
            *m.entry(r.token.clone()).or_default() += 1;
        }
        m
    }

    pub fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "accepted": self.accepted.load(Ordering::Relaxed),
            "rejected": self.rejected.load(Ordering::Relaxed),
            "tokens_issued": self.tokens_issued.load(Ordering::Relaxed),
            "reasons": *self.reasons.lock().expect("reasons"),
        })
    }

    fn refuse(&self, status: u16, code: Option<&str>, message: &str) -> Resp {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let key = format!("{status} {}", code.unwrap_or(""));
        *self.reasons.lock().expect("reasons").entry(key.trim().to_string()).or_default() += 1;
        serve::bytes(status, fsim::error_body(status, code, message), "application/json; charset=UTF-8")
    }
}

/// A running FCM simulator's facts.
pub struct FcmSim {
    pub addr: SocketAddr,
    pub state: Arc<FcmState>,
    /// The service account key file written for dingdong.
    pub service_account_file: PathBuf,
    /// Registration tokens of the generated test phones.
    pub tokens: Vec<String>,
}

struct Server {
    state: Arc<FcmState>,
    public: rsa::RsaPublicKey,
    token_uri: String,
    faults: Faults,
}

/// A registration token shaped like FCM's: an instance id, ':', and a long base64url part.
pub fn test_token(rng: &mut impl Rng) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut part = |n: usize| (0..n).map(|_| B64[rng.gen_range(0..64)] as char).collect::<String>();
    format!("{}:APA91b{}", part(22), part(134))
}

/// The simulator's RSA key, made once and kept in `dir` (an RSA-2048 key takes a moment).
fn account_key(dir: &Path) -> Result<rsa::RsaPrivateKey, String> {
    let path = dir.join("fcm-key.pem");
    if let Ok(pem) = std::fs::read_to_string(&path) {
        if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_pem(&pem) {
            return Ok(k);
        }
    }
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(|e| e.to_string())?;
    let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| e.to_string())?;
    super::certs::write_secret(&path, pem.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(key)
}

/// Starts the FCM simulator on `addr`, with `phones` test tokens registered.
pub async fn start(
    listener: std::net::TcpListener,
    creds: &SimCredentials,
    dir: &Path,
    phones: u32,
    fast: bool,
    faults: Faults,
    cancel: CancellationToken,
) -> Result<FcmSim, String> {
    let key = account_key(dir)?;
    // Bound first: the key file's token_uri names the port.
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let token_uri = format!("https://{local}/token");
    let account = fsim::account_json(&key, PROJECT, CLIENT_EMAIL, &token_uri);
    let service_account_file = dir.join("fcm-service-account.json");
    super::certs::write_secret(&service_account_file, account.json.as_bytes())
        .map_err(|e| format!("{}: {e}", service_account_file.display()))?;
    let state = Arc::new(FcmState { fast, ..Default::default() });
    let mut rng = rand::thread_rng();
    let tokens: Vec<String> = (0..phones).map(|_| test_token(&mut rng)).collect();
    for t in &tokens {
        state.register(t);
    }
    let _ = std::fs::write(dir.join("fcm-tokens.txt"), tokens.join("\n") + "\n");
    let server = Arc::new(Server { state: state.clone(), public: account.public, token_uri, faults });
    let addr = serve::listen(listener, creds, false, cancel, move |req| {
        let server = server.clone();
        async move { server.handle(req).await }
    })
    .await?;
    Ok(FcmSim { addr, state, service_account_file, tokens })
}

fn unix_now() -> u64 {
    crate::domain::now_ms() as u64 / 1000
}

impl Server {
    async fn handle(&self, req: Req) -> Resp {
        let path = req.parts.uri.path().to_string();
        if req.parts.method == http::Method::GET {
            return match path.as_str() {
                "/sim/stats" => serve::json(200, &self.state.stats()),
                "/sim/received" => serve::json(200, &serde_json::to_value(self.state.received()).unwrap_or_default()),
                _ => self.state.refuse(404, None, "not found"),
            };
        }
        if path == "/token" {
            return self.token(&req);
        }
        if !self.faults.latency.is_zero() {
            tokio::time::sleep(self.faults.latency).await;
        }
        self.send(&req, &path)
    }

    /// The OAuth token endpoint: errors as Google's (`{"error","error_description"}`).
    fn token(&self, req: &Req) -> Resp {
        let refuse = |why: String| {
            self.state.rejected.fetch_add(1, Ordering::Relaxed);
            serve::json(400, &serde_json::json!({"error": "invalid_grant", "error_description": why}))
        };
        let Some(body) = &req.body else { return refuse("request too large".into()) };
        let assertion = match fsim::parse_token_request(body) {
            Ok(a) => a,
            Err(e) => return refuse(e.to_string()),
        };
        if let Err(e) = fsim::verify_assertion(&assertion, &self.public, CLIENT_EMAIL, &self.token_uri, unix_now()) {
            return refuse(e.to_string());
        }
        let token = format!("ya29.sim-{}", uuid::Uuid::new_v4().simple());
        self.state.access.write().expect("access").insert(token.clone(), unix_now() + TOKEN_LIFETIME);
        self.state.tokens_issued.fetch_add(1, Ordering::Relaxed);
        serve::bytes(200, fsim::token_response(&token, TOKEN_LIFETIME), "application/json; charset=UTF-8")
    }

    fn send(&self, req: &Req, path: &str) -> Resp {
        let st = &self.state;
        let Some(project) = path.strip_prefix("/v1/projects/").and_then(|p| p.strip_suffix("/messages:send")) else {
            return st.refuse(404, None, "Requested entity was not found.");
        };
        let bearer = serve::header(&req.parts, "authorization").and_then(fsim::bearer);
        let valid = bearer.is_some_and(|b| st.access.read().expect("access").get(b).is_some_and(|&e| e > unix_now()));
        if !valid {
            return st.refuse(401, None, "Request had invalid authentication credentials.");
        }
        if project != PROJECT {
            return st.refuse(403, Some("SENDER_ID_MISMATCH"), "Permission denied on project.");
        }
        if self.faults.fail_rate > 0.0 && rand::thread_rng().gen_bool(self.faults.fail_rate.min(1.0)) {
            return match rand::thread_rng().gen_range(0..3) {
                0 => serve::retry_after(st.refuse(429, Some("QUOTA_EXCEEDED"), "Quota exceeded."), 1),
                1 => st.refuse(500, Some("INTERNAL"), "Internal error."),
                _ => serve::retry_after(st.refuse(503, Some("UNAVAILABLE"), "The service is unavailable."), 1),
            };
        }
        let Some(body) = &req.body else {
            return st.refuse(400, Some("INVALID_ARGUMENT"), "Message is too big.");
        };
        let m = match fsim::parse_send(body) {
            Ok(m) => m,
            Err(e) => return st.refuse(400, Some("INVALID_ARGUMENT"), &e.to_string()),
        };
        if st.unregistered.read().expect("tokens").contains(&m.token) {
            return st.refuse(404, Some("UNREGISTERED"), "Requested entity was not found.");
        }
        let strict = !st.tokens.read().expect("tokens").is_empty();
        if strict && !st.tokens.read().expect("tokens").contains(&m.token) {
            return st.refuse(
                400,
                Some("INVALID_ARGUMENT"),
                "The registration token is not a valid FCM registration token",
            );
        }
        st.accepted.fetch_add(1, Ordering::Relaxed);
        if !st.fast {
            st.received.lock().expect("received").push(FcmReceived {
                token: m.token,
                title: m.title,
                body: m.body,
                doorbell: m.doorbell,
                ring: m.ring,
                ttl_secs: m.ttl_secs,
                high_priority: m.high_priority,
                collapse_key: m.collapse_key,
                channel_id: m.channel_id,
                at_us: crate::domain::now_us(),
            });
        }
        let name = format!("projects/{PROJECT}/messages/{}", uuid::Uuid::new_v4().simple());
        serve::json(200, &serde_json::json!({ "name": name }))
    }
}
