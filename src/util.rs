//! Small helpers shared by several modules: token shortening for logs, id validation.

/// The first 8 hex characters of a device token: the only form a token may take in a log line.
pub fn short_token(token: &str) -> &str {
    &token[..token.len().min(8)]
}

/// How to hand memory that is free but still resident back to the system (glibc keeps freed
/// heap pages mapped). The library has no unsafe code: the binary installs `malloc_trim`.
pub static RELEASE_FREE_MEMORY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Returns free memory to the system, if the binary said how: a gateway that just sent a
/// 120,000-phone ring goes back towards its idle size.
pub fn release_free_memory() {
    if let Some(release) = RELEASE_FREE_MEMORY.get() {
        release();
    }
}

/// Ids of users and doorbells end up in MQTT topics and log lines, so they are kept to a
/// conservative alphabet: letters, digits, `-`, `_`, `.`, 1 to 64 characters.
pub fn check_id(kind: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!("{kind} '{id}' must be 1 to 64 characters"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(format!("{kind} '{id}' may only contain letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("doorbell", "front-door_1.a").is_ok());
        assert!(check_id("doorbell", "").is_err());
        assert!(check_id("doorbell", "a/b").is_err());
        assert!(check_id("doorbell", "a+").is_err());
        assert!(check_id("doorbell", &"x".repeat(65)).is_err());
        assert_eq!(short_token("abcdef0123456789"), "abcdef01");
        assert_eq!(short_token("abc"), "abc");
    }
}
