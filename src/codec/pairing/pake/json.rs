//! The JSON reading shared by the pairing v2 messages and the sealed registration and grant:
//! one object of bounded size, only known keys, strings and base64url fields checked by hand.
//! Every error names the field and what is wrong with it, never the value.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

/// Base64url characters needed for `n` bytes, without padding.
pub(super) const fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// Reads a payload as one JSON object of at most `max` bytes; errors name what is wrong.
pub(super) fn object(payload: &[u8], max: usize) -> Result<Map<String, Value>, String> {
    if payload.len() > max {
        return Err(format!("payload is larger than {max} bytes"));
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("payload is not a JSON object".into()),
        Err(_) => Err("payload is not JSON".into()),
    }
}

/// Refuses keys outside `allowed`. A key is named only when it is a short plain word.
pub(super) fn only(m: &Map<String, Value>, what: &str, allowed: &[&str]) -> Result<(), String> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) if k.len() <= 32 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
            Err(format!("{what}unknown field '{k}'"))
        }
        Some(_) => Err(format!("{what}unknown field")),
    }
}

pub(super) fn text<'a>(m: &'a Map<String, Value>, what: &str, key: &str) -> Result<&'a str, String> {
    match m.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("{what}{key}: must be a string")),
        None => Err(format!("{what}{key}: missing")),
    }
}

/// A base64url field of `min..=max` decoded bytes.
pub(super) fn bytes(m: &Map<String, Value>, what: &str, key: &str, min: usize, max: usize) -> Result<Vec<u8>, String> {
    let s = text(m, what, key)?;
    let bad = || format!("{what}{key}: must be {min} to {max} bytes as base64url without padding");
    if s.len() < b64_len(min) || s.len() > b64_len(max) {
        return Err(bad());
    }
    let v = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    if v.len() < min || v.len() > max {
        return Err(bad());
    }
    Ok(v)
}
