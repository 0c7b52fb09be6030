//! The legacy binary provider protocol, pure: `frames` (notification frames, error-responses,
//! feedback tuples) and `window` (the resumable sender's in-flight state machine). The
//! connection loop is `net::apns::binary`.

pub mod frames;
pub mod window;
