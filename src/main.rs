//! The `dingdong` binary: parse, set up logging, dispatch, map errors to exit codes.
use clap::Parser;

/// Help and version as clap prints them; a usage error on one line (what is wrong, the
/// arguments it names) and exit 2.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind::{DisplayHelp, DisplayHelpOnMissingArgumentOrSubcommand, DisplayVersion};
    if matches!(e.kind(), DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand) {
        e.exit();
    }
    let text = e.render().to_string();
    let said: Vec<&str> = text.lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
    eprintln!("{} (see --help)", said.join(" "));
    std::process::exit(2);
}

fn main() {
    fixed_mmap_threshold();
    let _ = dingdong::domain::mem::RELEASE_FREE_MEMORY.set(release_free_memory);
    let cli = match dingdong::app::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    dingdong::app::logging::init("info");
    let _ = dingdong::app::daemon::LOG_FILTER.set(dingdong::app::logging::set_filter);
    if let Err(e) = dingdong::app::cli::dispatch(cli) {
        eprintln!("error: {}", e.message);
        std::process::exit(e.code);
    }
}

/// glibc raises its mmap threshold each time a large block is freed, so after the first big
/// ring the next ring's job (megabytes) lands in the heap, where freeing it does not give the
/// memory back: resident memory grew about 10 MB per ring until it plateaued. A fixed
/// threshold keeps blocks of 1 MB and more in their own mappings, returned when freed.
#[allow(unsafe_code)] // the one allocator setting the library cannot make (it forbids unsafe)
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
#[allow(unsafe_code)] // malloc_trim: see fixed_mmap_threshold
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}
