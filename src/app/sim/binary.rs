//! The simulator's legacy gateway and feedback service, over TLS that requires a client
//! certificate signed by the simulator's CA (as Apple required a push certificate).
//!
//! The gateway reads notifications in commands 0, 1 and 2, judges each token with
//! [`SimState::judge_token`] (strict mode, unregistered tokens) plus the all-zero token no
//! device ever has, answers the first bad one with the 6-byte error-response, discards
//! everything read after it and closes, as Apple's gateway did. It can also announce a
//! shutdown (status 10, naming the last accepted notification) or drop a connection without
//! any answer, once, after N accepted notifications. The feedback port replays the tokens the
//! gateway rejected or that were marked unregistered, with their timestamps, then forgets them.

use super::{Received, SimCredentials, SimState};
use crate::codec::apns_binary::frames::{self as codec, ErrorResponse, Status};
use crate::domain::Environment;
use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// After an error-response the gateway keeps reading (and discarding) for at most this long
/// before it closes: closing with unread input would send a TCP reset, which can destroy the
/// error-response before the client reads it.
const LINGER: Duration = Duration::from_secs(5);
/// The feedback service writes its tuples in pieces this small, so clients meet tuples cut
/// across reads, as they did on Apple's service.
const FEEDBACK_CHUNK: usize = 25;

/// The environment the legacy gateway judges tokens for: a production push certificate.
const GATEWAY_ENV: Environment = Environment::Production;

/// Behaviour switches of the gateway, from `apns-sim --shutdown-after/--drop-after`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GatewayFaults {
    /// Answer status 10 once, after this many accepted notifications.
    pub shutdown_after: Option<u64>,
    /// Drop the connection once, without any answer, after this many accepted notifications.
    pub drop_after: Option<u64>,
}

pub struct BinarySim {
    acceptor: TlsAcceptor,
    state: Arc<SimState>,
    faults: GatewayFaults,
    /// Notifications accepted by this gateway (the faults count these).
    accepted: AtomicU64,
    shutdown_fired: AtomicBool,
    drop_fired: AtomicBool,
}

/// How one gateway connection ended.
enum End {
    Eof,
    Answered(ErrorResponse),
    Dropped,
}

impl BinarySim {
    pub fn new(creds: &SimCredentials, state: Arc<SimState>, faults: GatewayFaults) -> Result<Arc<BinarySim>, String> {
        Ok(Arc::new(BinarySim {
            acceptor: TlsAcceptor::from(creds.server_config(true, &[])?),
            state,
            faults,
            accepted: AtomicU64::new(0),
            shutdown_fired: AtomicBool::new(false),
            drop_fired: AtomicBool::new(false),
        }))
    }

    /// Binds the gateway and serves until `cancel`; returns the bound address.
    pub async fn listen_gateway(
        self: Arc<Self>,
        addr: SocketAddr,
        cancel: CancellationToken,
    ) -> Result<SocketAddr, String> {
        self.listen(addr, cancel, false).await
    }

    /// Binds the feedback service and serves until `cancel`; returns the bound address.
    pub async fn listen_feedback(
        self: Arc<Self>,
        addr: SocketAddr,
        cancel: CancellationToken,
    ) -> Result<SocketAddr, String> {
        self.listen(addr, cancel, true).await
    }

    async fn listen(
        self: Arc<Self>,
        addr: SocketAddr,
        cancel: CancellationToken,
        feedback: bool,
    ) -> Result<SocketAddr, String> {
        super::listen(addr, cancel, move |tcp| {
            let me = self.clone();
            async move { me.serve(tcp, feedback).await }
        })
        .await
    }

    async fn serve(&self, tcp: TcpStream, feedback: bool) -> Result<(), String> {
        let _ = tcp.set_nodelay(true);
        let tls = self.acceptor.accept(tcp).await.map_err(|e| format!("TLS: {e}"))?;
        if feedback {
            return self.serve_feedback(tls).await;
        }
        let mut tls = tls;
        match self.gateway(&mut tls).await? {
            End::Eof => Ok(()),
            End::Dropped => Ok(()), // dropping the stream without close_notify is the fault
            End::Answered(e) => {
                tls.write_all(&e.encode()).await.map_err(|e| e.to_string())?;
                let _ = tls.shutdown().await;
                // Discard whatever the client still sends until it hangs up.
                let mut sink = vec![0u8; 64 * 1024];
                let _ = tokio::time::timeout(LINGER, async {
                    while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
                Ok(())
            }
        }
    }

    /// Reads and judges notifications until EOF, a bad one, or a configured fault.
    async fn gateway(&self, tls: &mut TlsStream<TcpStream>) -> Result<End, String> {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        // The payload of a ring is the same for every phone: parse its JSON once.
        let mut last_payload: Option<(Vec<u8>, serde_json::Value)> = None;
        loop {
            let mut used = 0;
            loop {
                let (d, n) = match codec::parse(&buf[used..]) {
                    Ok(Some(x)) => x,
                    Ok(None) => break,
                    Err(e) => return Ok(End::Answered(ErrorResponse { status: e.status(), identifier: 0 })),
                };
                used += n;
                let identifier = d.identifier.unwrap_or(0);
                let token = match self.judge(&d) {
                    Ok(t) => t,
                    Err(status) => return Ok(End::Answered(ErrorResponse { status, identifier })),
                };
                self.record(&d, token, identifier, &mut last_payload);
                let count = self.accepted.fetch_add(1, Ordering::AcqRel) + 1;
                if self.faults.drop_after == Some(count) && !self.drop_fired.swap(true, Ordering::AcqRel) {
                    debug!(count, "sim gateway drops a connection without an answer");
                    return Ok(End::Dropped);
                }
                if self.faults.shutdown_after == Some(count) && !self.shutdown_fired.swap(true, Ordering::AcqRel) {
                    debug!(count, "sim gateway announces a shutdown");
                    return Ok(End::Answered(ErrorResponse { status: Status::Shutdown, identifier }));
                }
            }
            buf.advance(used);
            buf.reserve(32 * 1024);
            match tls.read_buf(&mut buf).await {
                Ok(0) => return Ok(End::Eof),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Apple's verdict: the token in hex, or the status to answer.
    fn judge(&self, d: &codec::Decoded) -> Result<String, Status> {
        codec::check(d).inspect_err(|s| self.state.record_reject(&format!("status {}", s.code())))?;
        let raw = d.token.unwrap_or_default();
        // No device has the all-zero token; dingdong's sentinel relies on its rejection.
        if raw.iter().all(|&b| b == 0) {
            self.state.record_reject("sentinel");
            return Err(Status::InvalidToken);
        }
        let token = hex::encode(raw);
        match self.state.judge_token(&token, GATEWAY_ENV) {
            Ok(()) => Ok(token),
            Err((_, reason, at)) => {
                self.state.record_reject(reason);
                self.state.report_feedback(&token, at.unwrap_or_else(crate::domain::now_ms));
                Err(Status::InvalidToken)
            }
        }
    }

    fn record(
        &self,
        d: &codec::Decoded,
        token: String,
        identifier: u32,
        last: &mut Option<(Vec<u8>, serde_json::Value)>,
    ) {
        self.state.record_accept(|| {
            let raw = d.payload.unwrap_or_default();
            let payload = match last {
                Some((bytes, v)) if bytes.as_slice() == raw => v.clone(),
                _ => {
                    let v: serde_json::Value = serde_json::from_slice(raw).unwrap_or(serde_json::Value::Null);
                    *last = Some((raw.to_vec(), v.clone()));
                    v
                }
            };
            Received {
                token,
                environment: GATEWAY_ENV,
                topic: None,
                push_type: Some(format!("legacy-command-{}", d.command)),
                priority: Some(d.priority.unwrap_or(10).to_string()),
                expiration: d.expiry.map(|e| e.to_string()),
                collapse_id: None,
                apns_id: identifier.to_string(),
                auth: "certificate",
                payload,
                at_us: crate::domain::now_us(),
            }
        });
    }

    /// Writes every pending tuple, in small pieces, then closes.
    async fn serve_feedback(&self, mut tls: TlsStream<TcpStream>) -> Result<(), String> {
        let mut wire = Vec::new();
        let pending = self.state.take_feedback();
        for (token, at_ms) in &pending {
            let Ok(raw) = hex::decode(token) else { continue };
            let secs = (at_ms / 1000).clamp(0, u32::MAX as i64) as u32;
            if codec::encode_feedback(secs, &raw, &mut wire).is_err() {
                continue;
            }
        }
        debug!(tuples = pending.len(), "sim feedback replays tuples");
        for piece in wire.chunks(FEEDBACK_CHUNK) {
            tls.write_all(piece).await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
        }
        tls.shutdown().await.map_err(|e| e.to_string())
    }
}
