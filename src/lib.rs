//! dingdong: a doorbell push hub.
//!
//! A wireless button press arrives on the local MQTT broker, becomes a *ring*, and is pushed
//! through Apple's push service to every phone of the doorbell's owner and of every user the
//! doorbell is shared with. See `ARCHITECTURE.md` in the shared design notes for the flow; each
//! module's own docs say what it owns.
#![forbid(unsafe_code)]

pub mod apns;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod diag;
pub mod homeassistant;
pub mod mqtt;
pub mod outbox;
pub mod pairing;
pub mod push;
pub mod ring;
pub mod store;
pub mod util;

/// Microseconds since the Unix epoch, for latency measurements.
pub fn now_us() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Milliseconds since the Unix epoch, the one time unit the store and the wire formats share.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
