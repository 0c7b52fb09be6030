//! The wall clock in the units the store and the wire formats share.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, for latency measurements.
pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Milliseconds since the Unix epoch, the one time unit the store and the wire formats share.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
