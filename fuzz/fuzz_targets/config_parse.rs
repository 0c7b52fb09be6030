//! `Config::parse` over arbitrary text: an error or a validated config, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = dingdong::app::config::Config::parse(text, std::path::Path::new("/etc/dingdong/config.toml"));
    }
});
