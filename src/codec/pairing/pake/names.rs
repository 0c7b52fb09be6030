//! Free-text names (a phone's, a doorbell's display name): what may be stored and printed.
//! A name is shown raw by `phone list` and the like, so characters that steer a terminal or
//! reorder the text around them are refused wherever a name enters (CLI, pairing, signed
//! requests). The ids of users and doorbells have their own, stricter, ASCII rule.

/// A name's longest length, in characters.
pub const NAME_MAX: usize = 64;

/// Why a name is refused. The messages never repeat the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {NAME_MAX} characters")]
    TooLong,
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

/// Checks a name: 1 to [`NAME_MAX`] characters, no control characters (C0, DEL, C1, and the
/// line and paragraph separators U+2028/U+2029, which break lines like a newline) and no
/// bidirectional formatting characters (U+202A..U+202E, U+2066..U+2069, U+200E, U+200F,
/// U+061C). Callers prefix the error with the field: `name: must not ...`.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > NAME_MAX {
        return Err(NameError::TooLong);
    }
    check_text(name)
}

/// The character rules of [`check_name`] without its length bounds, for longer texts that
/// are shown or logged (a refusal's `detail` as the phone prints it).
pub fn check_text(text: &str) -> Result<(), NameError> {
    if text.chars().any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}') {
        return Err(NameError::Control);
    }
    if text.chars().any(is_bidi_control) {
        return Err(NameError::Bidi);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_people_use_pass() {
        for ok in ["Ann's iPhone", "Küchentür", "باب المطبخ", "玄関", "📱 Pixel 8", &"x".repeat(NAME_MAX)]
        {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn steering_characters_are_refused() {
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name(&"é".repeat(NAME_MAX + 1)), Err(NameError::TooLong));
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
}
