//! Where in the file a config problem is: the dotted key and its line, for serde's errors (an
//! unknown, missing or mistyped key, a value its type refuses) and for `validate`'s (a value
//! that parses but is wrong). Lines come from the document itself (toml_edit keeps every
//! key's place), so the key named and the line shown always agree.

use super::ConfigError;

/// The 1-based line on which `key` (dotted, `apns.token.team_id`; `[n]` indexes of arrays are
/// ignored) is written in `text`; for a key that is not there, the line of the table that
/// should hold it. `None` when neither is in the text (a whole table is missing).
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let segments: Vec<&str> =
        key.split('.').map(|s| s.split('[').next().unwrap_or(s)).filter(|s| !s.is_empty()).collect();
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut found = None;
    for (i, seg) in segments.iter().enumerate() {
        match table.key(seg) {
            Some(k) => found = k.span().or(found),
            // Missing: the table that should hold it (its header, or where it starts).
            None => return found.map(|s| line_at(text, s.start)),
        }
        let last = i + 1 == segments.len();
        match table.get(seg) {
            Some(item) if !last => match item.as_table_like() {
                Some(t) => {
                    table = t;
                    if let Some(span) = table_span(item) {
                        found = Some(span);
                    }
                }
                None => break,
            },
            _ => break,
        }
    }
    found.map(|s| line_at(text, s.start))
}

/// A table's own place: its `[header]` for a standard table.
fn table_span(item: &toml_edit::Item) -> Option<std::ops::Range<usize>> {
    match item {
        toml_edit::Item::Table(t) => t.span(),
        toml_edit::Item::Value(v) => v.span(),
        _ => None,
    }
}

/// The 1-based line of byte `offset`: one more than the newlines before it.
pub fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Turns serde's error at `path` (serde_path_to_error's dotted path) into one line naming the
/// file, the key, the line and the fix.
pub fn describe_serde_error(file: &str, text: &str, path: &str, msg: &str, span_line: Option<usize>) -> ConfigError {
    let path = if path == "." { "" } else { path };
    // serde's own words name the field; the path may or may not end with it already.
    let field = |rest: &str| rest.split('`').next().unwrap_or("").to_string();
    let join = |field: &str| {
        if path.is_empty() {
            field.to_string()
        } else if path == field || path.ends_with(&format!(".{field}")) {
            path.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    let (key, problem, fix) = if let Some(rest) = msg.strip_prefix("unknown field `") {
        let key = join(&field(rest));
        (key, "unknown key".to_string(), "remove it or fix its spelling; config.example.toml lists every key")
    } else if let Some(rest) = msg.strip_prefix("missing field `") {
        (join(&field(rest)), "missing".to_string(), "add it; config.example.toml shows its form")
    } else if msg.starts_with("unknown variant") {
        (path.to_string(), msg.to_string(), "use one of the values listed")
    } else {
        (path.to_string(), msg.to_string(), "write it as config.example.toml shows")
    };
    let line = line_of(text, &key).or(span_line);
    ConfigError::Key { file: file.to_string(), key, problem: with_line(&problem, line), fix: fix.to_string() }
}

/// `problem (line N)`, on one line.
pub fn with_line(problem: &str, line: Option<usize>) -> String {
    let problem = problem.replace('\n', " ");
    match line {
        Some(n) => format!("{problem} (line {n})"),
        None => problem,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::path::Path;

    const GOOD: &str = include_str!("../../../config.example.toml");

    /// The 1-based line of the first line containing `needle`.
    fn line(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).expect("needle in the text") + 1
    }

    fn error(text: &str) -> String {
        let e = Config::parse(text, Path::new("/etc/dd/config.toml")).unwrap_err().to_string();
        assert!(e.starts_with("config /etc/dd/config.toml: key `"), "names the file: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(e.contains("; fix: "), "says the fix: {e}");
        e
    }

    /// The example with `old` replaced by `new`, checked to have changed.
    fn with(old: &str, new: &str) -> String {
        assert!(GOOD.contains(old), "{old:?} is in config.example.toml");
        GOOD.replacen(old, new, 1)
    }

    #[test]
    fn an_unknown_key_is_named_once_with_its_own_line() {
        let text = with("team_id = ", "teamid = ");
        let e = error(&text);
        let n = line(&text, "teamid = ");
        assert!(e.contains("key `apns.token.teamid`: unknown key"), "{e}");
        assert!(!e.contains("teamid.teamid"), "{e}");
        assert!(e.contains(&format!("(line {n})")), "line {n}: {e}");
        // At the top level too.
        let e = error(&format!("colour = \"red\"\n{GOOD}"));
        assert!(e.contains("key `colour`: unknown key (line 1)"), "{e}");
    }

    #[test]
    fn a_missing_key_points_at_its_table() {
        let text = with("topic_prefix = ", "# topic_prefix = ");
        let e = error(&text);
        assert!(e.contains("key `mqtt.topic_prefix`: missing"), "{e}");
        assert!(e.contains(&format!("(line {})", line(&text, "[mqtt]"))), "{e}");
    }

    #[test]
    fn a_wrong_type_names_the_key_and_its_line() {
        let text = with("expiry = \"5m\"", "expiry = 5");
        let e = error(&text);
        assert!(e.contains("key `ring.expiry`"), "{e}");
        assert!(e.contains(&format!("(line {})", line(&text, "expiry = 5"))), "{e}");
    }

    #[test]
    fn a_bad_value_names_the_key_and_its_line() {
        // Refused by the type (not a duration) ...
        let text = with("debounce = \"3s\"", "debounce = \"soon\"");
        let e = error(&text);
        assert!(e.contains("key `ring.debounce`") && e.contains("not a duration"), "{e}");
        assert!(e.contains(&format!("(line {})", line(&text, "debounce = \"soon\""))), "{e}");
        // ... and by validation (parses, but is no broker address).
        let text = with("url = \"mqtt://127.0.0.1:1883\"", "url = \"http://x\"");
        let e = error(&text);
        assert!(e.contains("key `mqtt.url`") && e.contains("not a broker address"), "{e}");
        assert!(e.contains(&format!("(line {})", line(&text, "url = \"http://x\""))), "{e}");
    }

    #[test]
    fn a_bad_enum_variant_lists_the_values() {
        let text = with("transport = \"http2\"", "transport = \"carrier-pigeon\"");
        let e = error(&text);
        assert!(e.contains("key `apns.transport`: unknown variant `carrier-pigeon`"), "{e}");
        assert!(e.contains("http2") && e.contains("binary"), "{e}");
        assert!(e.contains(&format!("(line {})", line(&text, "carrier-pigeon"))), "{e}");
    }

    #[test]
    fn lines_count_from_one() {
        assert_eq!(super::line_at("a\nb\nc", 0), 1);
        assert_eq!(super::line_at("a\nb\nc", 2), 2);
        assert_eq!(super::line_at("a\nb\nc", 99), 3);
        assert_eq!(super::line_of("[x]\ny = 1\n", "x.y"), Some(2));
        assert_eq!(super::line_of("[x]\ny = 1\n", "x.z"), Some(1));
        assert_eq!(super::line_of("[x]\ny = 1\n", "w.z"), None);
    }
}
