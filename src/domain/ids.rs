//! What may be called what: the ids of users and doorbells (they end up in MQTT topics, log
//! lines and terminals) and free-text names (a phone's, a doorbell's display name), which are
//! shown raw by `phone list` and the like. Every entrance (CLI, pairing, signed requests)
//! checks with these, so that a name can never steer a terminal or reorder the text around
//! it; errors never repeat a value they refuse.

use std::borrow::Cow;

/// A phone's name: at most this many characters.
pub const NAME_MAX: usize = 64;
/// A doorbell's display name: at most this many characters (what a notification shows).
pub const DOORBELL_NAME_MAX: usize = 100;
/// An id of a user or a doorbell: at most this many bytes.
pub const ID_MAX: usize = 64;

/// Ids of users and doorbells end up in MQTT topics and log lines, so they are kept to a
/// conservative alphabet: letters, digits, `-`, `_`, `.`, 1 to 64 characters. The error names
/// the id only when it is printable (one line, nothing that steers a terminal).
pub fn check_id(kind: &str, id: &str) -> Result<(), String> {
    let shown = match check_text(id) {
        Ok(()) if id.chars().count() <= ID_MAX => format!(" '{id}'"),
        _ => String::new(),
    };
    if id.is_empty() || id.len() > ID_MAX {
        return Err(format!("{kind}{shown} must be 1 to {ID_MAX} characters"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(format!("{kind}{shown} may only contain letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// Whether `s` is a valid id (see [`check_id`]).
pub fn valid_id(s: &str) -> bool {
    check_id("", s).is_ok()
}

/// Why a name is refused. The messages never repeat the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {0} characters")]
    TooLong(usize),
    #[error("must not contain control characters")]
    Control,
    #[error("must not contain bidirectional formatting characters")]
    Bidi,
}

/// The characters that change the direction of the text after them (embeddings, overrides,
/// isolates, marks), with which a name can make a line read as something else.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Control characters: C0, DEL, C1, and the line and paragraph separators U+2028/U+2029,
/// which break lines like a newline.
fn is_control(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Checks a phone's name: 1 to [`NAME_MAX`] characters, no control characters and no
/// bidirectional formatting characters (U+202A..U+202E, U+2066..U+2069, U+200E, U+200F,
/// U+061C). Callers prefix the error with the field: `name: must not ...`.
pub fn check_name(name: &str) -> Result<(), NameError> {
    check_name_within(name, NAME_MAX)
}

/// [`check_name`] with another longest length ([`DOORBELL_NAME_MAX`] for doorbells).
pub fn check_name_within(name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > max {
        return Err(NameError::TooLong(max));
    }
    check_text(name)
}

/// The character rules of [`check_name`] without its length bounds, for longer texts that
/// are shown or logged (a refusal's `detail` as the phone prints it).
pub fn check_text(text: &str) -> Result<(), NameError> {
    if text.chars().any(is_control) {
        return Err(NameError::Control);
    }
    if text.chars().any(is_bidi_control) {
        return Err(NameError::Bidi);
    }
    Ok(())
}

/// `text` as it may be printed on a terminal: unchanged when [`check_text`] passes, else with
/// every control and bidirectional character escaped (`\u{202e}`). For names an older version
/// stored before they were checked.
pub fn printable(text: &str) -> Cow<'_, str> {
    if check_text(text).is_ok() {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| if is_control(c) || is_bidi_control(c) { c.escape_unicode().to_string() } else { c.to_string() })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("doorbell", "front-door_1.a").is_ok());
        assert!(check_id("doorbell", "").is_err());
        assert!(check_id("doorbell", "a/b").unwrap_err().contains("'a/b'"));
        assert!(check_id("doorbell", "a+").is_err());
        assert!(check_id("doorbell", &"x".repeat(65)).is_err());
        assert!(valid_id("alice") && !valid_id("al ice"));
        assert_eq!(super::super::short_token("abcdef0123456789"), "abcdef01");
        assert_eq!(super::super::short_token("abc"), "abc");
    }

    #[test]
    fn an_id_that_steers_the_terminal_is_refused_without_being_repeated() {
        for bad in ["a\nb", "a\u{1b}[2Jb", "evil\u{202e}txt.exe", "x\u{2028}y"] {
            let e = check_id("user", bad).unwrap_err();
            assert!(e.starts_with("user may only contain"), "{e:?}");
            assert!(!e.chars().any(|c| is_control(c) || is_bidi_control(c)), "{e:?}");
        }
    }

    #[test]
    fn names_people_use_pass() {
        for ok in ["Ann's iPhone", "Küchentür", "باب المطبخ", "玄関", "📱 Pixel 8", &"x".repeat(NAME_MAX)]
        {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_name_within(&"x".repeat(DOORBELL_NAME_MAX), DOORBELL_NAME_MAX), Ok(()));
    }

    #[test]
    fn steering_characters_are_refused() {
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name(&"é".repeat(NAME_MAX + 1)), Err(NameError::TooLong(NAME_MAX)));
        for c in ['\0', '\n', '\r', '\t', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\u{2028}', '\u{2029}'] {
            assert_eq!(check_name(&format!("a{c}b")), Err(NameError::Control), "{:?}", c);
        }
        for c in ['\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}']
            .into_iter()
            .chain(['\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}'])
        {
            assert_eq!(check_name(&format!("phone{c}gpj.exe")), Err(NameError::Bidi), "{:?}", c);
        }
        // The messages never carry the name.
        assert!(!NameError::Bidi.to_string().contains("phone"));
    }

    #[test]
    fn old_names_are_printed_escaped() {
        assert_eq!(printable("Front door"), "Front door");
        assert_eq!(printable("a\u{202e}b\nc"), "a\\u{202e}b\\u{a}c");
    }
}
