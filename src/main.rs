//! The `dingdong` binary: parse, set up logging, dispatch, map errors to exit codes.
use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// What the libraries may say unless the filter names them.
const QUIET: &str = "rumqttd=off,rumqttc=warn,h2=warn,rustls=warn";

static FILTER: std::sync::OnceLock<reload::Handle<EnvFilter, Registry>> = std::sync::OnceLock::new();

/// `spec`, with the libraries kept quiet unless it names them.
fn filter(spec: &str) -> Result<EnvFilter, String> {
    let full = if ["rumqttd", "rumqttc", "h2", "rustls"].iter().any(|t| spec.contains(t)) {
        spec.to_string()
    } else {
        format!("{spec},{QUIET}")
    };
    EnvFilter::try_new(full).map_err(|e| e.to_string())
}

/// Logging to stderr; `RUST_LOG` filters (the config's `log.filter` replaces it in `run`).
fn init_logging() {
    let spec = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "info".into());
    let initial = filter(&spec).or_else(|_| filter("info")).expect("the default filter parses");
    let (layer, handle) = reload::Layer::new(initial);
    let _ = FILTER.set(handle);
    tracing_subscriber::registry()
        .with(layer)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    let _ = dingdong::app::daemon::LOG_FILTER.set(set_filter);
}

/// Replaces the log filter (the config's `log.filter`, at start and on reload).
fn set_filter(spec: &str) -> Result<(), String> {
    let f = filter(spec)?;
    FILTER.get().ok_or("logging is not set up")?.reload(f).map_err(|e| e.to_string())
}

fn main() {
    fixed_mmap_threshold();
    let _ = dingdong::domain::mem::RELEASE_FREE_MEMORY.set(release_free_memory);
    let cli = dingdong::app::cli::Cli::parse();
    init_logging();
    if let Err(e) = dingdong::app::cli::dispatch(cli) {
        eprintln!("error: {}", e.message);
        std::process::exit(e.code);
    }
}

/// glibc raises its mmap threshold each time a large block is freed, so after the first big
/// ring the next ring's job (megabytes) lands in the heap, where freeing it does not give the
/// memory back: resident memory grew about 10 MB per ring until it plateaued. A fixed
/// threshold keeps blocks of 1 MB and more in their own mappings, returned when freed.
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        // Fixing the mmap threshold also fixes the trim threshold at 128 KB: the heaps would
        // shrink and grow again (mprotect and fresh page faults) hundreds of times per big
        // ring. Free memory is handed back after big rings instead (release_free_memory).
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TOP_PAD, 1 << 20);
    }
}

/// Hands free heap pages back to the system (after a big ring).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}
