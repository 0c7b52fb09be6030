//! The pure building blocks of the FCM and Web Push transports: bytes and values in, bodies,
//! headers, tokens and decisions out. No sockets, no runtime, no SQL, no `Config`; each file
//! imports only external crates and its siblings here, so the directory can move as a whole
//! (to `codec/` or `net/`) when the crate is layered.
//!
//! - [`ece`]: RFC 8291 `aes128gcm` encryption of a Web Push message, and the browser's
//!   decryption the simulator checks with.
//! - [`vapid`]: RFC 8292 keys, tokens, the per-audience token cache, and header verification.
//! - [`webpush`]: RFC 8030 subscriptions, the ring payload, request headers, answer rules.
//! - [`fcm`]: FCM HTTP v1 service account, OAuth assertion and token, send body, answer rules;
//!   [`fcm::sim`] the simulator's checks.
//! - [`common`]: the [`common::Verdict`] both answer rules return, `Retry-After`, the
//!   remaining TTL and the words of a ring notification.

pub mod common;
pub mod ece;
pub mod fcm;
pub mod vapid;
pub mod webpush;
