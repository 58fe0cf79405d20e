//! Returning freed memory to the system.
//!
//! The agent allocates in bursts (start-up, an export, a scrape page) and
//! otherwise runs small. mimalloc keeps freed pages for a while in each
//! thread's heap and purges them only when that thread allocates again, so
//! an idle thread would hold its last burst for good. Each thread calls
//! [`release`] after its bursts.

/// Gives the calling thread's free pages back to the system; `all` also
/// frees the allocator's caches (for once, after start-up).
pub fn release(all: bool) {
    // SAFETY: mi_collect takes no pointers and may run at any time on any
    // thread; without mimalloc as the global allocator it has nothing to do.
    unsafe { libmimalloc_sys::mi_collect(all) };
}
