//! The program around the layers: the configuration, the daemon's wiring, the command line,
//! the technician's diag, the demo, the embedded broker and the push services' simulators.

#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod cli;
pub mod config;
pub mod daemon;
#[cfg(all(feature = "sim", feature = "embedded-broker"))]
pub mod demo;
pub mod diag;
pub mod instance;
pub mod logging;
pub mod service_user;
pub mod settings;
#[cfg(feature = "sim")]
pub mod sim;
pub mod status;
