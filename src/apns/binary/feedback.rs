//! The legacy feedback service: one poll (connect with the push certificate, read tuples until
//! EOF; the service forgets them once sent), pruning through `store` with the re-registration
//! rule, and the daemon's periodic poller (`apns.binary.feedback_interval`).
//!
//! Tuples cut by a read boundary are kept by [`FeedbackParser`]; which phones to delete is the
//! store's decision (`Store::prune_feedback`).

use super::codec::{FeedbackParser, FeedbackTuple};
use super::BinaryError;
use crate::apns::auth::ClientIdentity;
use crate::store::StoreHandle;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// One poll may take this long, connection included.
const POLL_TIMEOUT: Duration = Duration::from_secs(60);

/// What one poll did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FeedbackReport {
    /// Tuples read.
    pub read: usize,
    /// Phones removed: registered before Apple's timestamp.
    pub pruned: usize,
    /// Phones kept: registered again after Apple's timestamp.
    pub kept: usize,
    /// Tuples naming no phone we know.
    pub unknown: usize,
    /// Tuples whose token is not a device token.
    pub malformed: usize,
}

/// A client of the feedback service.
#[derive(Clone)]
pub struct FeedbackClient {
    connector: TlsConnector,
    addr: (String, u16),
}

impl FeedbackClient {
    pub fn new(identity: &ClientIdentity, ca_file: Option<&Path>, addr: (String, u16)) -> Result<Self, BinaryError> {
        let tls = crate::apns::tls::client_config(ca_file, Some(identity), &[])?;
        Ok(FeedbackClient { connector: TlsConnector::from(tls), addr })
    }

    /// The client `[apns.certificate]`, `apns.ca_file` and `apns.binary.feedback` describe.
    pub fn from_config(apns: &crate::config::Apns) -> Result<Self, BinaryError> {
        let (identity, binary) = super::legacy_config(apns)?;
        let addr = crate::config::parse_host_port(&binary.feedback)
            .ok_or_else(|| BinaryError::Address(binary.feedback.clone()))?;
        Self::new(&identity, apns.ca_file.as_deref(), addr)
    }

    fn fail(&self, reason: impl ToString) -> BinaryError {
        BinaryError::Feedback { addr: format!("{}:{}", self.addr.0, self.addr.1), reason: reason.to_string() }
    }

    /// Connects, reads every tuple until the service closes, returns them.
    pub async fn poll(&self) -> Result<Vec<FeedbackTuple>, BinaryError> {
        match tokio::time::timeout(POLL_TIMEOUT, self.read_all()).await {
            Ok(r) => r,
            Err(_) => Err(self.fail("timed out")),
        }
    }

    async fn read_all(&self) -> Result<Vec<FeedbackTuple>, BinaryError> {
        let (host, port) = &self.addr;
        let tcp = TcpStream::connect((host.as_str(), *port)).await.map_err(|e| self.fail(e))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| self.fail(e))?;
        let mut tls = self.connector.connect(name, tcp).await.map_err(|e| self.fail(format!("TLS: {e}")))?;
        let mut parser = FeedbackParser::default();
        let mut tuples = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            let n = match tls.read(&mut buf).await {
                Ok(n) => n,
                // Apple's service was known to close without TLS close_notify: that is EOF too.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(self.fail(e)),
            };
            if n == 0 {
                break;
            }
            parser.push(&buf[..n]);
            while let Some(t) = parser.next_tuple() {
                tuples.push(t);
            }
        }
        if parser.pending() > 0 {
            warn!(bytes = parser.pending(), "feedback service closed in the middle of a tuple: its rest is ignored");
        }
        Ok(tuples)
    }
}

/// One poll and its pruning, logged.
pub async fn poll_and_prune(client: &FeedbackClient, store: &StoreHandle) -> Result<FeedbackReport, BinaryError> {
    let tuples = client.poll().await?;
    let mut report = FeedbackReport { read: tuples.len(), ..Default::default() };
    let mut items = Vec::with_capacity(tuples.len());
    for t in tuples {
        match crate::apns::normalize_token(&hex::encode(&t.token)) {
            Ok(token) => items.push((token, t.timestamp)),
            Err(_) => report.malformed += 1,
        }
    }
    let r = store.run(move |s| s.prune_feedback(&items)).await?;
    report.pruned = r.pruned;
    report.kept = r.kept;
    report.unknown = r.unknown;
    info!(
        read = report.read,
        pruned = report.pruned,
        kept_reregistered = report.kept,
        unknown = report.unknown,
        malformed = report.malformed,
        "feedback service polled"
    );
    Ok(report)
}

/// The daemon's task: a poll at start, then one every `interval`, until `stop`.
pub async fn run_poller(client: FeedbackClient, store: StoreHandle, interval: Duration, stop: CancellationToken) {
    loop {
        if let Err(e) = poll_and_prune(&client, &store).await {
            warn!(error = %e, "feedback poll failed; trying again at the next interval");
        }
        tokio::select! {
            // cancel-safe: only a timer
            _ = tokio::time::sleep(interval) => {}
            // cancel-safe: stopping between polls loses nothing
            _ = stop.cancelled() => return,
        }
    }
}
