//! Apple's push service: credentials (`auth`), certificate facts (`certinfo`), the HTTP/2
//! client (`http2`) and the legacy binary protocol (`binary`).

pub mod auth;
pub mod binary;
pub mod certinfo;
pub mod http2;

use crate::domain::Environment;

/// Apple's HTTP/2 host for an environment.
pub fn host(env: Environment) -> &'static str {
    match env {
        Environment::Sandbox => "api.sandbox.push.apple.com",
        Environment::Production => "api.push.apple.com",
    }
}
