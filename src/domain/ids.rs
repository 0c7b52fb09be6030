//! Names that end up in MQTT topics, log lines and terminals: ids of users and doorbells.

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
        assert_eq!(super::super::short_token("abcdef0123456789"), "abcdef01");
        assert_eq!(super::super::short_token("abc"), "abc");
    }
}
