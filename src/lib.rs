//! dingdong: a doorbell push hub.
//!
//! A wireless button press arrives on the local MQTT broker, becomes a *ring*, and is pushed
//! through Apple's push service to every phone of the doorbell's owner and of every user the
//! doorbell is shared with. The crate is built in layers, each importing only those below it
//! (docs/architecture.md walks one ring through them):
//!
//! - [`domain`]: the vocabulary (tokens, outcomes, presses); imports nothing of ours.
//! - [`codec`]: pure bytes <-> values (bridge payloads, pairing wire, APNs frames and answers).
//! - [`store`]: SQLite, taking and returning domain values.
//! - [`net`]: TLS, the MQTT client, the push transports; each built from its own settings.
//! - [`service`]: intake, ringer, outbox, publisher, pairing: the business rules.
//! - [`app`]: configuration, the daemon's wiring, the CLI, diag, demo and the simulators.
#![forbid(unsafe_code)]

pub mod app;
pub mod codec;
pub mod domain;
pub mod net;
pub mod service;
pub mod store;
