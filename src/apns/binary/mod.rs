//! The legacy binary provider protocol (retired by Apple in 2021, still spoken by the seeds'
//! systems): `codec` (pure frames, error-responses, feedback tuples), `window` (the resumable
//! sender's state machine), `sender` (its connection loop) and `feedback` (the poller).
//!
//! No SQL here: outcomes go back to `outbox` in the shared [`crate::apns::Outcome`]
//! vocabulary, and feedback tuples are handed to `store` for pruning.
//! docs/legacy-binary.md explains the design and what each format can guarantee.

pub mod codec;
pub mod feedback;
pub mod sender;
pub mod window;

pub use sender::{BinarySender, BinarySettings};

use crate::apns::auth::{AuthError, ClientIdentity};

#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Tls(#[from] crate::apns::tls::TlsError),
    #[error("the legacy protocol needs [apns.certificate] (a push certificate), not [apns.token]")]
    NoCertificate,
    #[error("the legacy protocol needs an [apns.binary] table")]
    NoBinaryTable,
    #[error("'{0}' is not HOST:PORT")]
    Address(String),
    #[error("feedback service {addr}: {reason}")]
    Feedback { addr: String, reason: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The client certificate and the `[apns.binary]` table, which both legacy services need.
pub(crate) fn legacy_config(
    apns: &crate::config::Apns,
) -> Result<(ClientIdentity, &crate::config::Binary), BinaryError> {
    let cert = apns.certificate.as_ref().ok_or(BinaryError::NoCertificate)?;
    let binary = apns.binary.as_ref().ok_or(BinaryError::NoBinaryTable)?;
    Ok((ClientIdentity::from_config(cert)?, binary))
}
