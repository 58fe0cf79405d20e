//! Returning freed memory to the system.
//!
//! The agent allocates in bursts (start-up, an export, a scrape page) and
//! otherwise runs small. mimalloc keeps freed pages for a while in each
//! thread's heap and purges them only when that thread allocates again, so
//! an idle thread would hold its last burst for good. Each thread calls
//! [`release`] after its bursts, and [`configure`] shortens how long freed
//! pages are kept at all.

/// mimalloc's `mi_option_purge_delay`, by its place in the C enum
/// `mi_option_e` (the Rust bindings do not name it). A test checks that
/// the option there has purge_delay's default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed pages stay with the agent before they go back to the
/// system. mimalloc's own 1 s let the busy second of a load hold every page
/// it freed: 10,000 new series under load peaked at 56 – 72 MiB of RSS,
/// against 50 – 65 MiB (mostly under 59) with 100 ms. 100 ms cost no CPU
/// that the nginx overhead bench could see; purging at once cost 10 – 20%
/// more per request (docs/PERFORMANCE.md).
const PURGE_DELAY_MS: libc::c_long = 100;

/// Sets the allocator's options; call once, first thing in `main`.
pub fn configure() {
    // SAFETY: mi_option_set only stores the value; it is read at each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

/// Gives the calling thread's free pages back to the system; `all` also
/// frees the allocator's caches (for once, after start-up).
pub fn release(all: bool) {
    // SAFETY: mi_collect takes no pointers and may run at any time on any
    // thread; without mimalloc as the global allocator it has nothing to do.
    unsafe { libmimalloc_sys::mi_collect(all) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option at `MI_OPTION_PURGE_DELAY` is purge_delay: it has that
    /// option's default (1000 ms in mimalloc v3), which its neighbours in
    /// the enum do not (1 and 0).
    #[test]
    fn purge_delay_is_the_option_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            eprintln!("skipped: MIMALLOC_PURGE_DELAY is set");
            return;
        }
        // SAFETY: reads of option values.
        let get = |o| unsafe { libmimalloc_sys::mi_option_get(o) };
        assert_eq!(get(MI_OPTION_PURGE_DELAY - 1), 1); // deprecated_eager_commit_delay
        assert_eq!(get(MI_OPTION_PURGE_DELAY), 1000);
        assert_eq!(get(MI_OPTION_PURGE_DELAY + 1), 0); // use_numa_nodes
        configure();
        assert_eq!(get(MI_OPTION_PURGE_DELAY), PURGE_DELAY_MS);
    }
}
