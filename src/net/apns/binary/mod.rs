//! The legacy binary provider protocol (retired by Apple in 2021, still spoken by the seeds'
//! systems): `codec` (pure frames, error-responses, feedback tuples), `window` (the resumable
//! sender's state machine), `sender` (its connection loop) and `feedback` (the poller).
//!
//! No SQL here: outcomes go back to `outbox` in the shared [`crate::domain::Outcome`]
//! vocabulary, and feedback tuples are handed to `store` for pruning.
//! docs/legacy-binary.md explains the design and what each format can guarantee.

pub mod feedback;
pub mod sender;

pub use sender::{BinarySender, BinarySettings};

use crate::net::apns::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("'{0}' is not HOST:PORT")]
    Address(String),
    #[error("feedback service {addr}: {reason}")]
    Feedback { addr: String, reason: String },
}
