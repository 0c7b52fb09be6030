//! The program around the layers: the configuration, the daemon's wiring, the command line,
//! the technician's diag, the demo, the embedded broker and the push services' simulators.

pub mod broker;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod diag;
pub mod instance;
pub mod logging;
pub mod service_user;
pub mod settings;
pub mod sim;
