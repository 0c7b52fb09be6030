//! Handing free memory back to the system after a big ring.

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
