//! Counters of what the agent saw and what it lost. Every drop has one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Process-wide counters, shared by every stage.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// The export counters of each route, beside the totals above.
            pub routes: Routes,
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
    /// Socket sends and receives the socket-layer path saw outside a
    /// syscall it reads buffers from (io_uring, kernel threads): not
    /// recorded.
    events_unseen_not_a_syscall,
    /// Calls on whole-call connections larger than the kernel copies in
    /// pieces: the rest of each is a gap.
    calls_cut,
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

    /// One line: `name=value` for every non-zero counter, and a tenant
    /// route's losses as `name[route]=value`.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .snapshot()
            .into_iter()
            .filter(|(_, v)| *v != 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let routes = self.routes.snapshot();
        if routes.len() > 1 {
            for r in routes {
                for (name, v) in [
                    ("spans_dropped_queue_full", r.spans_dropped_queue_full),
                    ("spans_export_failed", r.spans_export_failed),
                ] {
                    if v != 0 {
                        parts.push(format!("{name}[{}]={v}", r.route));
                    }
                }
            }
        }
        if parts.is_empty() {
            "no events yet".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// The export counters of one route: the default one (`export.otlp`, the
/// console) or a tenant's (`export.tenants.<id>`). Each is also counted in
/// the total of the same name in [`Stats`].
#[derive(Debug, Default)]
pub struct RouteStats {
    pub spans_dropped_queue_full: AtomicU64,
    pub spans_exported: AtomicU64,
    pub spans_export_failed: AtomicU64,
    /// OTLP metric requests that failed.
    pub metric_export_failed: AtomicU64,
}

/// One route's counters at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteCounts {
    pub route: String,
    pub spans_dropped_queue_full: u64,
    pub spans_exported: u64,
    pub spans_export_failed: u64,
    pub metric_export_failed: u64,
}

/// The routes' counters by route name, in the order routes were first
/// asked for. A route's counters live as long as the process, so that an
/// exporter started again counts on.
#[derive(Debug, Default)]
pub struct Routes(Mutex<Vec<(Box<str>, Arc<RouteStats>)>>);

impl Routes {
    /// The counters of route `name`, made on first use.
    pub fn get(&self, name: &str) -> Arc<RouteStats> {
        let mut list = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, stats)) = list.iter().find(|(n, _)| &**n == name) {
            return Arc::clone(stats);
        }
        let stats = Arc::new(RouteStats::default());
        list.push((name.into(), Arc::clone(&stats)));
        stats
    }

    /// Every route's counters now.
    pub fn snapshot(&self) -> Vec<RouteCounts> {
        let list = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        list.iter()
            .map(|(name, s)| RouteCounts {
                route: name.to_string(),
                spans_dropped_queue_full: s.spans_dropped_queue_full.load(Ordering::Relaxed),
                spans_exported: s.spans_exported.load(Ordering::Relaxed),
                spans_export_failed: s.spans_export_failed.load(Ordering::Relaxed),
                metric_export_failed: s.metric_export_failed.load(Ordering::Relaxed),
            })
            .collect()
    }
}
