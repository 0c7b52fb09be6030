//! The tracing subscriber: where log lines go and how they look, and the log filter that a
//! configuration reload can replace. Owns only the output format; what is logged is the
//! business of each module.
//!
//! Three outputs, chosen once at start from what stderr is:
//! - **the journal** (systemd connected stderr to journald, `JOURNAL_STREAM` names it): each
//!   line starts with the sd-daemon priority prefix `<N>` so `journalctl -p warning` finds the
//!   warnings, carries no timestamp (journald stamps every line) and no colour codes (they made
//!   journald store MESSAGE as a byte array);
//! - **a terminal**: the usual coloured lines with a timestamp (no colours with `NO_COLOR`);
//! - **anything else** (a pipe, a file): the same without colours.

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Layer, Registry};

/// The live filter, kept so that a reload (SIGHUP) can replace it.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Where stderr leads, which decides the line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Journal,
    Terminal,
    Plain,
}

/// Picks the output: journald when `JOURNAL_STREAM` ("DEV:INODE", decimal) names the very
/// stream stderr is (a child that inherited the variable but not the stream must not write
/// priority prefixes into a file), else a terminal when stderr is one, else plain.
pub fn output(journal_stream: Option<&str>, stderr_id: Option<(u64, u64)>, stderr_is_terminal: bool) -> Output {
    let parsed = journal_stream.and_then(|v| {
        let (dev, ino) = v.trim().split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    });
    match (parsed, stderr_id) {
        (Some(j), Some(s)) if j == s => Output::Journal,
        _ if stderr_is_terminal => Output::Terminal,
        _ => Output::Plain,
    }
}

/// The sd-daemon priority of a level (sd-daemon(3)): err, warning, info, debug.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Device and inode of stderr, as `JOURNAL_STREAM` states them (fstat on a duplicate of fd 2).
fn stderr_id() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Formats an event with `inner` and puts the event's priority prefix before every line (a
/// multi-line message would otherwise reach the journal as info from its second line on).
pub struct JournalFormat<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for JournalFormat<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        let prefix = priority(*event.metadata().level());
        // The level is padded to line up in a terminal; the journal needs no padding.
        for line in text.trim_start().trim_end_matches('\n').split('\n') {
            writeln!(writer, "<{prefix}>{line}")?;
        }
        Ok(())
    }
}

/// The journal's line format: no timestamp, no colours, the priority prefix.
pub fn journal_format(
) -> JournalFormat<tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, ()>> {
    JournalFormat(tracing_subscriber::fmt::format().without_time().with_ansi(false))
}

/// Installs the global subscriber: `RUST_LOG` if set and valid, else `default_filter`; the
/// output format from what stderr is. Call once, from `main`.
pub fn init(default_filter: &str) {
    let spec = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty());
    let filter =
        spec.and_then(|s| EnvFilter::try_new(quiet(&s)).ok()).unwrap_or_else(|| EnvFilter::new(quiet(default_filter)));
    let (filter, handle) = reload::Layer::new(filter);
    // NO_COLOR (no-color.org) turns the terminal's colours off.
    let colour_terminal = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let out = output(std::env::var("JOURNAL_STREAM").ok().as_deref(), stderr_id(), colour_terminal);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match out {
        Output::Journal => fmt.with_ansi(false).event_format(journal_format()).boxed(),
        Output::Terminal => fmt.with_ansi(true).boxed(),
        Output::Plain => fmt.with_ansi(false).boxed(),
    };
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Replaces the log filter (`RUST_LOG` syntax) of the running process, e.g. on SIGHUP.
pub fn set_filter(spec: &str) -> Result<(), String> {
    let handle = FILTER.get().ok_or("logging is not initialised")?;
    replace_filter(handle, spec)
}

/// What the libraries may say unless the filter names them.
const QUIET: &str = "rumqttd=off,rumqttc=warn,h2=warn,rustls=warn";

/// `spec`, with the chatty libraries kept at warnings unless it names them.
fn quiet(spec: &str) -> String {
    if ["rumqttd", "rumqttc", "h2", "rustls"].iter().any(|t| spec.contains(t)) {
        spec.to_string()
    } else {
        format!("{spec},{QUIET}")
    }
}

fn replace_filter<S>(handle: &reload::Handle<EnvFilter, S>, spec: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(quiet(spec)).map_err(|e| format!("log filter \"{spec}\": {e}"))?;
    handle.reload(filter).map_err(|e| format!("log filter \"{spec}\": {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// What the journal output writes for one event of each level, a span and a two-line message.
    fn journal_lines() -> String {
        let buf = Buffer::default();
        let layer =
            tracing_subscriber::fmt::layer().with_writer(buf.clone()).with_ansi(false).event_format(journal_format());
        let subscriber = tracing_subscriber::registry().with(EnvFilter::new("trace")).with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("conn", peer = "127.0.0.1:1883");
            let _g = span.enter();
            tracing::error!(ring = "r1", "cannot record the press");
            tracing::warn!(topic = "P/button/x/press", "unknown button");
            tracing::info!("dingdong ready");
            tracing::debug!("expected disconnect");
            tracing::trace!("frame");
            tracing::warn!("first line\nsecond line");
        });
        buf.text()
    }

    #[test]
    fn journal_lines_carry_the_priority_of_their_level() {
        let text = journal_lines();
        let prefixes: Vec<&str> = text.lines().map(|l| &l[..3]).collect();
        assert_eq!(prefixes, ["<3>", "<4>", "<6>", "<7>", "<7>", "<4>", "<4>"], "{text}");
        assert!(text.lines().next().unwrap().contains("cannot record the press"), "{text}");
        assert!(text.contains("ring=\"r1\"") || text.contains("ring=r1"), "{text}");
        assert!(text.contains("conn{peer="), "spans are kept: {text}");
    }

    #[test]
    fn journal_lines_have_no_colour_codes_and_no_timestamp() {
        let text = journal_lines();
        assert!(!text.contains('\x1b'), "{text:?}");
        for line in text.lines() {
            // `<N>` then the level: a timestamp would start with a digit (2026-...).
            assert!(line[3..].starts_with(char::is_alphabetic), "a timestamp or junk before the level: {line}");
        }
    }

    #[test]
    fn a_multi_line_message_keeps_its_priority_on_every_line() {
        let text = journal_lines();
        let last: Vec<&str> = text.lines().rev().take(2).collect();
        assert_eq!(last[0], "<4>second line", "{text}");
        assert!(last[1].starts_with("<4>") && last[1].ends_with("first line"), "{text}");
    }

    #[test]
    fn the_journal_is_chosen_only_for_the_stream_it_names() {
        assert_eq!(output(Some("64769:12345"), Some((64769, 12345)), false), Output::Journal);
        assert_eq!(output(Some("64769:12345"), Some((64769, 12345)), true), Output::Journal);
        // Inherited from a parent under systemd, but stderr is now a terminal or a file.
        assert_eq!(output(Some("64769:12345"), Some((64769, 999)), true), Output::Terminal);
        assert_eq!(output(Some("64769:12345"), Some((1, 12345)), false), Output::Plain);
        assert_eq!(output(Some("junk"), Some((64769, 12345)), false), Output::Plain);
        assert_eq!(output(None, Some((64769, 12345)), true), Output::Terminal);
        assert_eq!(output(None, None, false), Output::Plain);
    }

    #[test]
    fn levels_map_to_sd_daemon_priorities() {
        assert_eq!([Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE].map(priority), [3, 4, 6, 7, 7]);
    }

    #[test]
    fn a_new_filter_applies_at_once_and_a_bad_one_changes_nothing() {
        let buf = Buffer::default();
        let (filter, handle) = reload::Layer::new(EnvFilter::new("info"));
        let layer = tracing_subscriber::fmt::layer().with_writer(buf.clone()).event_format(journal_format());
        let subscriber = tracing_subscriber::registry().with(filter).with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("one");
            replace_filter(&handle, "warn").unwrap();
            tracing::info!("two");
            tracing::warn!("three");
            let e = replace_filter(&handle, "info,dingdong=[").unwrap_err();
            assert!(e.contains("info,dingdong=["), "{e}");
            tracing::info!("four");
        });
        let text = buf.text();
        assert!(text.contains("one") && text.contains("three"), "{text}");
        assert!(!text.contains("two") && !text.contains("four"), "{text}");
    }
}
