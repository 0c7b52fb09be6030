//! Sockets: TLS, the MQTT client, the push transports (APNs, FCM, Web Push, and the HTTPS
//! client the last two share). Each part is built from its own settings; none reads the
//! configuration or the store.

pub mod apns;
pub mod fcm;
pub mod https;
pub mod mqtt;
pub mod quickack;
pub mod scrape;
pub mod tls;
pub mod webpush;
