//! The legacy feedback service's client: one poll connects with the push certificate and reads
//! tuples until EOF (the service forgets them once sent). Tuples cut by a read boundary are
//! kept by [`FeedbackParser`]. Pruning is `service::feedback`'s business.

use super::BinaryError;
use crate::codec::apns_binary::frames::{FeedbackParser, FeedbackTuple};
use crate::net::apns::auth::ClientIdentity;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::warn;

/// One poll may take this long, connection included.
const POLL_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of the feedback service.
#[derive(Clone)]
pub struct FeedbackClient {
    connector: TlsConnector,
    addr: (String, u16),
}

impl FeedbackClient {
    pub fn new(identity: &ClientIdentity, ca_file: Option<&Path>, addr: (String, u16)) -> Result<Self, BinaryError> {
        let tls = crate::net::tls::client_config(ca_file, Some(identity), &[])?;
        Ok(FeedbackClient { connector: TlsConnector::from(tls), addr })
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
