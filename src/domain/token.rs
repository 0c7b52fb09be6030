//! Device tokens and APNs environments: the one token type, parsed at the edge (CLI, pairing,
//! import, the database) and carried as bytes everywhere else.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Shortest and longest device token we accept, in bytes.
pub const TOKEN_MIN_BYTES: usize = 32;
pub const TOKEN_MAX_BYTES: usize = 100;
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Sandbox,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Sandbox => "sandbox",
            Environment::Production => "production",
        }
    }

    pub fn parse(s: &str) -> Option<Environment> {
        match s {
            "sandbox" | "development" => Some(Environment::Sandbox),
            "production" => Some(Environment::Production),
            _ => None,
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token was refused when it was registered or imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is empty")]
    Empty,
    #[error("token has a character that is not hex: '{0}'")]
    NotHex(char),
    #[error("token has an odd number of hex digits ({0})")]
    OddLength(usize),
    #[error("token is {0} bytes; a device token is 32 to 100 bytes")]
    BadSize(usize),
}

/// Normalises a device token: drops whitespace and the `<...>` of iOS's old description
/// format, lower-cases, and checks it is 32 to 100 bytes of hex.
pub fn normalize_token(raw: &str) -> Result<String, TokenError> {
    let trimmed = raw.trim().trim_start_matches('<').trim_end_matches('>');
    let mut out = String::with_capacity(trimmed.len());
    for c in trimmed.chars() {
        if c.is_whitespace() {
            continue;
        }
        if !c.is_ascii_hexdigit() {
            return Err(TokenError::NotHex(c));
        }
        out.push(c.to_ascii_lowercase());
    }
    if out.is_empty() {
        return Err(TokenError::Empty);
    }
    if !out.len().is_multiple_of(2) {
        return Err(TokenError::OddLength(out.len()));
    }
    let bytes = out.len() / 2;
    if !(TOKEN_MIN_BYTES..=TOKEN_MAX_BYTES).contains(&bytes) {
        return Err(TokenError::BadSize(bytes));
    }
    Ok(out)
}

/// A device token as Apple issued it: bytes, written as lowercase hex. The usual 32 bytes
/// are held inline, so a 120,000-phone ring holds its tokens without 120,000 allocations;
/// longer tokens (Apple reserves the right to issue them) share one allocation each.
/// `Debug` shows the first 8 hex characters only, as the logs do.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Token {
    Inline([u8; 32]),
    Long(Arc<[u8]>),
}

impl Token {
    /// The token of a hex string of [`TOKEN_MIN_BYTES`]..=[`TOKEN_MAX_BYTES`] bytes (either
    /// case; see [`normalize_token`] for what users may type).
    pub fn from_hex(hex: &str) -> Option<Token> {
        let n = hex.len() / 2;
        if !hex.len().is_multiple_of(2) || !(TOKEN_MIN_BYTES..=TOKEN_MAX_BYTES).contains(&n) {
            return None;
        }
        if n == 32 {
            let mut b = [0u8; 32];
            hex::decode_to_slice(hex, &mut b).ok()?;
            Some(Token::Inline(b))
        } else {
            let mut b = vec![0u8; n];
            hex::decode_to_slice(hex, &mut b).ok()?;
            Some(Token::Long(b.into()))
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Token::Inline(b) => b,
            Token::Long(b) => b,
        }
    }

    /// Appends the lowercase hex (what APNs' request path and the database hold) to `out`.
    pub fn write_hex(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + 2 * self.bytes().len(), 0);
        hex::encode_to_slice(self.bytes(), &mut out[start..]).expect("the slice is twice the token's length");
    }

    pub fn hex(&self) -> String {
        hex::encode(self.bytes())
    }

    /// The first 8 hex characters: all a log line or a report may show.
    pub fn short(&self) -> String {
        hex::encode(&self.bytes()[..4])
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}…)", self.short())
    }
}

/// The first 8 hex characters of a device token in hex: the only form a token may take in a
/// log line.
pub fn short_token(token: &str) -> &str {
    &token[..token.len().min(8)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bytes_written_as_lowercase_hex_and_logged_short() {
        let hex = "AB".repeat(32);
        let t = Token::from_hex(&hex).unwrap();
        assert!(matches!(t, Token::Inline(_)));
        assert_eq!(t.hex(), "ab".repeat(32));
        let mut path = b"/3/device/".to_vec();
        t.write_hex(&mut path);
        assert_eq!(path, format!("/3/device/{}", "ab".repeat(32)).into_bytes());
        assert_eq!(format!("{t:?}"), "Token(abababab…)");
        let long = Token::from_hex(&"0f".repeat(64)).unwrap();
        assert!(matches!(long, Token::Long(_)));
        assert_eq!(long.hex(), "0f".repeat(64));
        for bad in ["ab".repeat(31), "a".repeat(65), "zz".repeat(32), "ab".repeat(101)] {
            assert_eq!(Token::from_hex(&bad), None, "{bad}");
        }
    }

    #[test]
    fn tokens_are_normalised() {
        let seed = "740f4707bebcf74f 9b7c25d4 8e3358945f6aa01da5ddb387462c7eaf 61bb78ad";
        assert_eq!(normalize_token(seed).unwrap(), "740f4707bebcf74f9b7c25d48e3358945f6aa01da5ddb387462c7eaf61bb78ad");
        assert_eq!(normalize_token(&format!("<{}>", seed.to_uppercase())).unwrap().len(), 64);
        assert_eq!(normalize_token(""), Err(TokenError::Empty));
        assert_eq!(normalize_token("zz"), Err(TokenError::NotHex('z')));
        assert_eq!(normalize_token("abc"), Err(TokenError::OddLength(3)));
        assert_eq!(normalize_token(&"ab".repeat(31)), Err(TokenError::BadSize(31)));
        assert_eq!(normalize_token(&"ab".repeat(101)), Err(TokenError::BadSize(101)));
        assert!(normalize_token(&"ab".repeat(100)).is_ok());
    }
}
