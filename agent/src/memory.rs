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

/// The agent's allocator: mimalloc, in the calling thread's heap unless
/// a [`KeptHeap::scope`] is open on the thread.
pub struct Allocator;

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;

thread_local! {
    /// The heap a [`KeptHeap::scope`] opened on this thread, or null.
    static KEPT: Cell<*mut mi::mi_heap_t> = const { Cell::new(std::ptr::null_mut()) };
}

// SAFETY: every call passes its arguments to the mimalloc function of the
// same contract; mi_free frees a block of any heap, from any thread.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let heap = KEPT.get();
        unsafe {
            if heap.is_null() {
                mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
            } else {
                mi::mi_heap_malloc_aligned(heap, layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let heap = KEPT.get();
        unsafe {
            if heap.is_null() {
                mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
            } else {
                mi::mi_heap_zalloc_aligned(heap, layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let heap = KEPT.get();
        unsafe {
            if heap.is_null() {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            } else {
                mi::mi_heap_realloc_aligned(heap, ptr as *mut c_void, new_size, layout.align())
                    as *mut u8
            }
        }
    }
}

/// A mimalloc heap for data the agent keeps long but builds among
/// short-lived allocations (the pod store, filled while list pages are
/// parsed). In the thread's own heap every kept object would pin the page
/// it shares with parsing garbage, and those pages would never be wholly
/// free to go back to the system; in a heap of their own, kept objects fill
/// pages of their own. Any thread may free what it holds.
#[derive(Clone, Copy)]
pub struct KeptHeap(*mut mi::mi_heap_t);

// SAFETY: a mimalloc heap may be allocated from and freed to from any
// thread.
unsafe impl Send for KeptHeap {}

impl KeptHeap {
    /// A new heap; it lives as long as the process.
    pub fn new() -> KeptHeap {
        // SAFETY: mi_heap_new takes no arguments; null means no heap (and
        // then scopes change nothing).
        KeptHeap(unsafe { mi::mi_heap_new() })
    }

    /// Runs `f` with the calling thread's allocations made in this heap
    /// (when [`Allocator`] is the global allocator). `f` must not yield to
    /// other work on the thread (no `.await` inside): that would allocate
    /// here too.
    pub fn scope<R>(self, f: impl FnOnce() -> R) -> R {
        struct Restore(*mut mi::mi_heap_t);
        impl Drop for Restore {
            fn drop(&mut self) {
                KEPT.set(self.0);
            }
        }
        let _restore = Restore(KEPT.replace(self.0));
        f()
    }

    /// Gives the heap's free pages back to the system (see [`release`]).
    pub fn collect(self) {
        if !self.0.is_null() {
            // SAFETY: the heap is live; collecting only frees unused pages.
            unsafe { mi::mi_heap_collect(self.0, false) };
        }
    }
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

    /// Allocations in a scope land in the kept heap, before and after it in
    /// the thread's own; realloc in a scope moves a block there.
    #[test]
    fn a_scope_allocates_in_the_kept_heap() {
        unsafe extern "C" {
            fn mi_heap_contains(heap: *const mi::mi_heap_t, p: *const c_void) -> bool;
        }
        let heap = KeptHeap::new();
        assert!(!heap.0.is_null());
        let layout = Layout::from_size_align(48, 8).expect("a layout");
        // SAFETY: blocks of `layout` from the allocator, freed by it.
        unsafe {
            let before = Allocator.alloc(layout);
            let (inside, moved) = heap.scope(|| {
                (
                    Allocator.alloc(layout),
                    Allocator.realloc(before, layout, 4096),
                )
            });
            let after = Allocator.alloc(layout);
            let kept = |p: *mut u8| mi_heap_contains(heap.0, p as *const c_void);
            assert!(kept(inside));
            assert!(kept(moved));
            assert!(!kept(after));
            let nested = heap.scope(|| KeptHeap::new().scope(|| Allocator.alloc(layout)));
            assert!(!kept(nested), "the inner scope's heap");
            let zeroed = Allocator.alloc_zeroed(layout);
            assert!(!kept(zeroed), "the outer scope ended");
            for p in [inside, after, nested, zeroed] {
                Allocator.dealloc(p, layout);
            }
            Allocator.dealloc(moved, Layout::from_size_align(4096, 8).expect("a layout"));
        }
    }
}
