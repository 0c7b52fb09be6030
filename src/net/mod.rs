//! Sockets: TLS, the MQTT client, the APNs transports. Each part is built from its own
//! settings; none reads the configuration or the store.

pub mod apns;
pub mod mqtt;
pub mod quickack;
pub mod scrape;
pub mod tls;
