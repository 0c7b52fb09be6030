//! Pure bytes <-> values, no I/O: the bridges' payloads, the pairing wire format, Home
//! Assistant discovery, the APNs payload, answers and legacy frames. Unit-tested and fuzzed
//! without a network.

pub mod apns_binary;
pub mod apns_http2;
pub mod apns_payload;
pub mod bridge;
pub mod homeassistant;
pub mod pairing;
pub mod push;
