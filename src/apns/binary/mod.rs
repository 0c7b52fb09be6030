//! The legacy binary provider protocol (retired by Apple in 2021, still spoken by the seeds'
//! systems): `codec` (pure frames, error-responses, feedback tuples), `sender` (the resumable
//! window and its connection loop) and `feedback` (the feedback-service poller).
//!
//! No SQL here: outcomes go back to `outbox` in the shared [`crate::apns::Outcome`]
//! vocabulary, and feedback tuples are handed to `store` for pruning.

pub mod codec;
