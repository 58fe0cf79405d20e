//! Counters of what the agent saw and what it lost. Every drop has one.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Process-wide counters, shared by every stage.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Stats {
            /// Every counter with its name, for the periodic summary and for metrics.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Records read from the ring buffer.
    events_read,
    /// Records the kernel could not put in the ring buffer (it was full).
    events_lost_ringbuf_full,
    /// Records lost because another thread's syscall took the kernel's
    /// pending-call slot (threads whose ids share a slot, in socket calls
    /// at once).
    events_lost_slot_taken,
    /// Records too short or of an unknown kind.
    events_malformed,
    /// Records of processes the `select` rules exclude, sent before the
    /// kernel was told to mute them.
    events_excluded,
    /// Payload bytes captured by the kernel.
    bytes_captured,
    /// Bytes that moved on streams but were not captured (gaps).
    bytes_not_captured,
    /// Connections evicted from the user-space table because it was full.
    conns_evicted,
    /// Bytes a parser skipped to find the next message boundary.
    parser_resync_bytes,
    /// Times a parser lost sync.
    parser_resyncs,
    /// Requests that never got a response (connection closed or evicted).
    requests_unanswered,
    /// Responses with no request to pair with.
    responses_unpaired,
    /// Spans built.
    spans_built,
    /// Spans the sample stage did not export (metrics counted them).
    spans_sampled_out,
    /// Spans of processes the `select` rules exclude (built before their
    /// pod was known to be excluded), neither counted nor exported.
    spans_excluded,
    /// Spans dropped because the export queue was full.
    spans_dropped_queue_full,
    /// Spans handed to an exporter successfully.
    spans_exported,
    /// Spans lost because an export request failed.
    spans_export_failed,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One line: `name=value` for every non-zero counter.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .snapshot()
            .into_iter()
            .filter(|(_, v)| *v != 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if parts.is_empty() {
            "no events yet".to_owned()
        } else {
            parts.join(" ")
        }
    }
}
