//! The simulator's HTTP/2 provider API: TLS with an optional client certificate, one task per
//! connection, Apple's checks in Apple's order, and `GET /sim/stats` / `GET /sim/received`
//! for tools that want to count deliveries from another process.

use super::{Faults, Received, SimCredentials, SimState};
use crate::domain::Environment;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use rand::Rng;
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

const PUSH_TYPES: &[&str] =
    &["alert", "background", "location", "voip", "complication", "fileprovider", "mdm", "liveactivity", "pushtotalk"];
/// Apple's limit for everything but VoIP.
const MAX_PAYLOAD: usize = 4096;
/// A JWT older than this is ExpiredProviderToken.
const JWT_MAX_AGE_SECS: i64 = 3600;

pub struct Http2Sim {
    acceptor: TlsAcceptor,
    state: Arc<SimState>,
    key: p256::ecdsa::VerifyingKey,
    key_id: String,
    team_id: String,
    max_streams: u32,
    faults: Faults,
    /// Seconds the simulator's clock is off (a diag fault).
    clock_skew_secs: i64,
    /// Verified JWTs, so each distinct token costs one ECDSA verification (as at Apple).
    jwts: Mutex<HashMap<String, Result<i64, &'static str>>>,
    /// The `date` header and the second it says.
    date: Mutex<(i64, HeaderValue)>,
}

/// Why a request was refused: status, reason, optional 410 timestamp.
type Refusal = (u16, &'static str, Option<i64>);

impl Http2Sim {
    pub fn new(
        creds: &SimCredentials,
        state: Arc<SimState>,
        max_streams: u32,
        faults: Faults,
        clock_skew_secs: i64,
    ) -> Result<Arc<Http2Sim>, String> {
        Ok(Arc::new(Http2Sim {
            acceptor: TlsAcceptor::from(creds.server_config(false, &[b"h2"])?),
            state,
            key: creds.verifying_key()?,
            key_id: creds.key_id.clone(),
            team_id: creds.team_id.clone(),
            max_streams,
            faults,
            clock_skew_secs,
            jwts: Mutex::new(HashMap::new()),
            date: Mutex::new((-1, HeaderValue::from_static(""))),
        }))
    }

    /// Binds and serves until `cancel`; returns the bound address.
    pub async fn listen(self: Arc<Self>, addr: SocketAddr, cancel: CancellationToken) -> Result<SocketAddr, String> {
        super::listen(addr, cancel, move |tcp| self.clone().serve(tcp)).await
    }

    async fn serve(self: Arc<Self>, tcp: TcpStream) -> Result<(), String> {
        let _ = tcp.set_nodelay(true);
        let tls = self.acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        // None: token auth; Some(None): a certificate good for both environments.
        let cert_env = peer.map(|c| crate::net::apns::certinfo::parse(c).ok().and_then(|i| i.environment));
        let mut conn = h2::server::Builder::new()
            .max_concurrent_streams(self.max_streams)
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 22)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| e.to_string())?;
        let mut streams = FuturesUnordered::new();
        let mut requests = 0u64;
        loop {
            tokio::select! {
                // cancel-safe: accept() keeps unaccepted streams in the connection
                next = conn.accept() => match next {
                    Some(Ok((req, respond))) => {
                        requests += 1;
                        streams.push(self.handle(req, respond, cert_env));
                        if self.faults.goaway_after > 0 && requests.is_multiple_of(self.faults.goaway_after) {
                            // As Apple does: accepted streams are still answered, later ones refused.
                            conn.graceful_shutdown();
                        }
                        if self.faults.drop_after > 0 && requests >= self.faults.drop_after {
                            return Ok(()); // abrupt close: no GOAWAY, in-flight streams lost
                        }
                    }
                    Some(Err(e)) => return Err(e.to_string()),
                    None => break,
                },
                // cancel-safe: FuturesUnordered::next keeps the other futures
                Some(()) = streams.next(), if !streams.is_empty() => {}
            }
        }
        while streams.next().await.is_some() {}
        Ok(())
    }

    /// The simulator's clock, skewed as asked.
    fn now_ms(&self) -> i64 {
        crate::domain::now_ms() + self.clock_skew_secs * 1000
    }

    /// The `date` header for now, formatted once a second.
    fn date(&self) -> HeaderValue {
        let now = self.now_ms().max(0);
        let mut cached = self.date.lock().expect("date lock");
        if cached.0 != now / 1000 {
            let text = httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(now as u64));
            *cached = (now / 1000, HeaderValue::from_str(&text).expect("an HTTP date is a header value"));
        }
        cached.1.clone()
    }

    async fn handle(
        &self,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        cert_env: Option<Option<Environment>>,
    ) {
        let cert_auth = cert_env.is_some();
        let date = self.date();
        let (parts, mut body) = req.into_parts();
        let path = parts.uri.path();
        if parts.method == http::Method::GET && path.starts_with("/sim/") {
            let json = match path {
                "/sim/stats" => self.state.stats(),
                "/sim/received" => serde_json::to_value(self.state.received()).unwrap_or_default(),
                _ => serde_json::json!({"reason": "BadPath"}),
            };
            reply(&mut respond, 200, None, date, Some(json.to_string().into()));
            return;
        }
        // Nearly every payload arrives as one DATA frame: kept as it came, not copied.
        let mut payload = Bytes::new();
        let mut too_large = false;
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else { return };
            let _ = body.flow_control().release_capacity(chunk.len());
            if payload.len() + chunk.len() > MAX_PAYLOAD {
                too_large = true;
            } else if payload.is_empty() {
                payload = chunk;
            } else {
                let mut joined = Vec::with_capacity(payload.len() + chunk.len());
                joined.extend_from_slice(&payload);
                joined.extend_from_slice(&chunk);
                payload = joined.into();
            }
        }
        // A well-formed apns-id is echoed; otherwise (absent, or refused below) a fresh one.
        let apns_id = match parts.headers.get("apns-id") {
            Some(v) if v.to_str().is_ok_and(|id| uuid::Uuid::try_parse(id).is_ok()) => v.clone(),
            _ => {
                let mut buf = uuid::Uuid::encode_buffer();
                let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
                HeaderValue::from_str(id).expect("a UUID is a header value")
            }
        };
        if !self.faults.latency.is_zero() {
            tokio::time::sleep(self.faults.latency).await;
        }
        let verdict = if self.faults.fail_rate > 0.0 && rand::thread_rng().gen_bool(self.faults.fail_rate.min(1.0)) {
            if rand::thread_rng().gen_bool(0.5) {
                Err((500, "InternalServerError", None))
            } else {
                Err((503, "ServiceUnavailable", None))
            }
        } else {
            self.check(&parts, path, &payload, too_large, cert_env)
        };
        match verdict {
            Ok((token, env)) => {
                self.state.record_accept(|| Received {
                    token: token.into_owned(),
                    environment: env,
                    topic: header(&parts.headers, "apns-topic").map(str::to_string),
                    push_type: header(&parts.headers, "apns-push-type").map(str::to_string),
                    priority: header(&parts.headers, "apns-priority").map(str::to_string),
                    expiration: header(&parts.headers, "apns-expiration").map(str::to_string),
                    collapse_id: header(&parts.headers, "apns-collapse-id").map(str::to_string),
                    apns_id: apns_id.to_str().unwrap_or_default().to_string(),
                    auth: if cert_auth { "certificate" } else { "token" },
                    payload: serde_json::from_slice(&payload).unwrap_or(serde_json::Value::Null),
                    at_us: crate::domain::now_us(),
                });
                reply(&mut respond, 200, Some(apns_id), date, None);
            }
            Err((status, reason, ts)) => {
                self.state.record_reject(reason);
                let body = match ts {
                    Some(t) => serde_json::json!({"reason": reason, "timestamp": t}),
                    None => serde_json::json!({"reason": reason}),
                };
                reply(&mut respond, status, Some(apns_id), date, Some(body.to_string().into()));
            }
        }
    }

    /// Apple's checks; `Ok((token, environment))` when the notification is accepted.
    fn check<'a>(
        &self,
        parts: &http::request::Parts,
        path: &'a str,
        payload: &[u8],
        too_large: bool,
        cert_env: Option<Option<Environment>>,
    ) -> Result<(Cow<'a, str>, Environment), Refusal> {
        let cert_auth = cert_env.is_some();
        if parts.method != http::Method::POST {
            return Err((405, "MethodNotAllowed", None));
        }
        let Some(token) = path.strip_prefix("/3/device/") else {
            return Err((404, "BadPath", None));
        };
        if token.is_empty() {
            return Err((400, "MissingDeviceToken", None));
        }
        let h = &parts.headers;
        for name in [
            "apns-topic",
            "apns-push-type",
            "apns-priority",
            "apns-expiration",
            "apns-collapse-id",
            "apns-id",
            "authorization",
        ] {
            let mut all = h.get_all(name).iter();
            if all.next().is_some() && all.next().is_some() {
                return Err((400, "DuplicateHeaders", None));
            }
        }
        let authority = parts.uri.authority().map(|a| a.host()).unwrap_or("");
        let env = if authority.contains("sandbox") { Environment::Sandbox } else { Environment::Production };
        match cert_env {
            None => self.check_jwt(h)?,
            Some(Some(cert)) if cert != env => return Err((403, "BadCertificateEnvironment", None)),
            Some(_) => {}
        }
        if header(h, "apns-topic").is_none() && !cert_auth {
            return Err((400, "MissingTopic", None));
        }
        if let Some(t) = header(h, "apns-push-type") {
            if !PUSH_TYPES.contains(&t) {
                return Err((400, "InvalidPushType", None));
            }
        }
        if let Some(p) = header(h, "apns-priority") {
            if !matches!(p, "1" | "5" | "10") {
                return Err((400, "BadPriority", None));
            }
        }
        if let Some(e) = header(h, "apns-expiration") {
            if e.parse::<u64>().is_err() {
                return Err((400, "BadExpirationDate", None));
            }
        }
        if header(h, "apns-collapse-id").is_some_and(|c| c.len() > 64) {
            return Err((400, "BadCollapseId", None));
        }
        if header(h, "apns-id").is_some_and(|id| uuid::Uuid::try_parse(id).is_err()) {
            return Err((400, "BadMessageId", None));
        }
        if too_large {
            return Err((413, "PayloadTooLarge", None));
        }
        if payload.is_empty() {
            return Err((400, "PayloadEmpty", None));
        }
        // Hex of a size Apple issues; an all-zero token is never issued (diag's deliberately
        // invalid probe token).
        let bytes = token.len() / 2;
        if token.len() % 2 != 0
            || !(crate::domain::TOKEN_MIN_BYTES..=crate::domain::TOKEN_MAX_BYTES).contains(&bytes)
            || !token.bytes().all(|b| b.is_ascii_hexdigit())
            || token.bytes().all(|b| b == b'0')
        {
            return Err((400, "BadDeviceToken", None));
        }
        let token = if token.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(token.to_ascii_lowercase())
        } else {
            Cow::Borrowed(token)
        };
        self.state.judge_token(&token, env)?;
        Ok((token, env))
    }

    fn check_jwt(&self, h: &HeaderMap) -> Result<(), Refusal> {
        let Some(auth) = header(h, "authorization") else {
            return Err((403, "MissingProviderToken", None));
        };
        let Some(jwt) = auth.strip_prefix("bearer ") else {
            return Err((403, "InvalidProviderToken", None));
        };
        let verdict = {
            let cache = self.jwts.lock().expect("jwt cache");
            cache.get(jwt).copied()
        };
        let verdict = match verdict {
            Some(v) => v,
            None => {
                let v = match crate::net::apns::auth::verify_jwt(jwt, &self.key) {
                    None => Err("InvalidProviderToken"),
                    Some((kid, _, _)) if kid != self.key_id => Err("InvalidProviderToken"),
                    Some((_, iss, _)) if iss != self.team_id => Err("InvalidProviderToken"),
                    Some((_, _, iat)) => Ok(iat as i64),
                };
                self.jwts.lock().expect("jwt cache").insert(jwt.to_string(), v);
                v
            }
        };
        match verdict {
            Err(reason) => Err((403, reason, None)),
            Ok(iat) if self.now_ms() / 1000 - iat > JWT_MAX_AGE_SECS => Err((403, "ExpiredProviderToken", None)),
            Ok(_) => Ok(()),
        }
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn reply(
    respond: &mut SendResponse<Bytes>,
    status: u16,
    apns_id: Option<HeaderValue>,
    date: HeaderValue,
    body: Option<Bytes>,
) {
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(http::header::DATE, date);
    if let Some(mut id) = apns_id {
        // Unique per response: never worth a place in the HPACK table, where it would only
        // push out the headers that do repeat.
        id.set_sensitive(true);
        h.insert(HeaderName::from_static("apns-id"), id);
    }
    if body.is_some() {
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    match body {
        None => {
            let _ = respond.send_response(resp, true);
        }
        Some(b) => {
            if let Ok(mut stream) = respond.send_response(resp, false) {
                let _ = stream.send_data(b, true);
            }
        }
    }
}
