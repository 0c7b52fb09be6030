//! The business rules, as tasks: the ringer (press -> ring), the outbox (delivery), pairing.
//! They talk to the store and the transports, never to TOML.

pub mod feedback;
pub mod history;
pub mod intake;
pub mod metrics;
pub mod outbox;
pub mod pairing;
pub mod publisher;
pub mod ringer;
