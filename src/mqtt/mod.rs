//! MQTT: the client event loop (`client`), the pure payload decoders (`sources`) and the
//! embedded broker (`broker`).

pub mod broker;
pub mod client;
pub mod sources;

pub use client::{Incoming, MqttHandle, MqttSettings};
