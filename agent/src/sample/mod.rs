//! Sample stage: decides which spans are exported. It runs after the
//! metrics stage, so histograms and the service graph count every span
//! whatever is decided here.
//!
//! What is kept, per second of span end time:
//! - errors and slow spans, until the node-wide budget is spent;
//! - of the rest, a fair share: at most `per_operation_per_second` for each
//!   (process, span name, kind), and together at most half of the budget,
//!   so that a flood of ordinary calls never crowds out the errors.
//!
//! Exporting a span costs far more than building it; under a load of tens
//! of thousands of calls per second this is what keeps the agent's CPU
//! bounded. The decision reads only the span, so it is pure and replayable.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::config::SampleConfig;
use crate::metrics::attrs::{FastBuild, FastHasher};
use crate::span::model::{Span, SpanKind, SpanStatus};

/// Operations tracked per second; beyond that, new operations share the
/// node-wide budget only.
const MAX_OPERATIONS: usize = 4096;

/// Why a span was kept or dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An error or a slow span.
    KeptNotable,
    /// Within its operation's fair share.
    Kept,
    /// Over its operation's share or over the budget.
    Dropped,
}

impl Decision {
    pub fn kept(self) -> bool {
        self != Decision::Dropped
    }
}

/// The sampler's state: counts within the current one-second window.
#[derive(Debug)]
pub struct Sampler {
    config: SampleConfig,
    /// The second (of span end time) the counts belong to.
    window: u64,
    kept_in_window: u32,
    ordinary_in_window: u32,
    /// Keyed by a hash of (process, kind, span name): two operations that
    /// collide share one count, which costs a few spans, not correctness.
    per_operation: HashMap<u64, u32, FastBuild>,
}

impl Sampler {
    pub fn new(config: SampleConfig) -> Self {
        Sampler {
            config,
            window: 0,
            kept_in_window: 0,
            ordinary_in_window: 0,
            per_operation: HashMap::default(),
        }
    }

    /// Decides by `config` from now on (a config reload). The counts of
    /// the current second are kept: a lower budget applies to what is
    /// left of it, not to a fresh second.
    pub fn set_config(&mut self, config: SampleConfig) {
        self.config = config;
    }

    /// Whether `span` is exported. Spans arriving late (their second is
    /// already past) count in the current window.
    pub fn decide(&mut self, span: &Span) -> Decision {
        if !self.config.enabled {
            return Decision::Kept;
        }
        let second = span.end_unix_ns / 1_000_000_000;
        if second > self.window {
            self.window = second;
            self.kept_in_window = 0;
            self.ordinary_in_window = 0;
            self.per_operation.clear();
        }
        if self.kept_in_window >= self.config.max_per_second {
            return Decision::Dropped;
        }
        let slow = span.duration_ns() >= u64::from(self.config.slow_ms) * 1_000_000;
        let failed = matches!(span.status, SpanStatus::Error { .. });
        if failed || slow {
            self.kept_in_window += 1;
            return Decision::KeptNotable;
        }
        if self.ordinary_in_window >= self.config.max_per_second / 2 {
            return Decision::Dropped;
        }
        let share = self.config.per_operation_per_second;
        if let Some(count) = self.operation_count(span) {
            if *count >= share {
                return Decision::Dropped;
            }
            *count += 1;
        }
        self.ordinary_in_window += 1;
        self.kept_in_window += 1;
        Decision::Kept
    }

    /// The count of the span's operation in this window; `None` when the
    /// table is full and the operation is new.
    fn operation_count(&mut self, span: &Span) -> Option<&mut u32> {
        let mut hasher = FastHasher::default();
        (span.pid, span.kind == SpanKind::Server, &span.name).hash(&mut hasher);
        let key = hasher.finish();
        if self.per_operation.len() >= MAX_OPERATIONS && !self.per_operation.contains_key(&key) {
            return None;
        }
        Some(self.per_operation.entry(key).or_insert(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::model::SpanStatus;

    fn config(per_operation: u32, max: u32) -> SampleConfig {
        SampleConfig {
            enabled: true,
            per_operation_per_second: per_operation,
            max_per_second: max,
            slow_ms: 500,
        }
    }

    fn span(name: &str, pid: u32, end_s: f64, duration_ms: u64, failed: bool) -> Span {
        let end = (end_s * 1e9) as u64;
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            name: name.to_owned(),
            kind: SpanKind::Server,
            start_unix_ns: end - duration_ms * 1_000_000,
            end_unix_ns: end,
            attributes: Vec::new(),
            status: if failed {
                SpanStatus::Error {
                    description: String::new(),
                }
            } else {
                SpanStatus::Unset
            },
            pid,
            endpoints: crate::capture::Endpoints::UNKNOWN,
            tenant: None,
        }
    }

    fn kept(sampler: &mut Sampler, spans: &[Span]) -> usize {
        spans.iter().filter(|s| sampler.decide(s).kept()).count()
    }

    #[test]
    fn fair_share_per_operation_and_second() {
        let mut s = Sampler::new(config(10, 1000));
        let busy: Vec<Span> = (0..100)
            .map(|i| span("GET /a", 1, 100.0 + f64::from(i) / 200.0, 1, false))
            .collect();
        // 100 calls over half a second: 10 kept.
        assert_eq!(kept(&mut s, &busy), 10);
        // Another operation, and the same name in another process, have
        // shares of their own.
        assert!(s.decide(&span("GET /b", 1, 100.6, 1, false)).kept());
        assert!(s.decide(&span("GET /a", 2, 100.6, 1, false)).kept());
        // The next second starts afresh.
        assert_eq!(
            s.decide(&span("GET /a", 1, 101.0, 1, false)),
            Decision::Kept
        );
    }

    #[test]
    fn errors_and_slow_spans_are_kept_beyond_the_share() {
        let mut s = Sampler::new(config(1, 1000));
        assert!(s.decide(&span("GET /a", 1, 5.0, 1, false)).kept());
        assert!(!s.decide(&span("GET /a", 1, 5.1, 1, false)).kept());
        assert_eq!(
            s.decide(&span("GET /a", 1, 5.2, 1, true)),
            Decision::KeptNotable
        );
        // Exactly at the threshold counts as slow.
        assert_eq!(
            s.decide(&span("GET /a", 1, 5.3, 500, false)),
            Decision::KeptNotable
        );
        assert!(!s.decide(&span("GET /a", 1, 5.4, 499, false)).kept());
    }

    #[test]
    fn ordinary_spans_fill_at_most_half_the_budget() {
        let mut s = Sampler::new(config(1000, 100));
        let ordinary: Vec<Span> = (0..300)
            .map(|i| {
                span(
                    &format!("GET /{}", i % 7),
                    1,
                    7.0 + f64::from(i) / 1000.0,
                    1,
                    false,
                )
            })
            .collect();
        assert_eq!(kept(&mut s, &ordinary), 50);
        let errors: Vec<Span> = (0..300)
            .map(|i| span("GET /e", 1, 7.5 + f64::from(i) / 1000.0, 1, true))
            .collect();
        // Errors take the other half, then the budget is spent.
        assert_eq!(kept(&mut s, &errors), 50);
    }

    #[test]
    fn late_spans_count_in_the_current_window() {
        let mut s = Sampler::new(config(2, 1000));
        assert!(s.decide(&span("GET /a", 1, 10.0, 1, false)).kept());
        assert!(s.decide(&span("GET /a", 1, 10.5, 1, false)).kept());
        // Ended in an earlier second, arrives now: no fresh share.
        assert!(!s.decide(&span("GET /a", 1, 9.9, 1, false)).kept());
    }

    #[test]
    fn disabled_keeps_everything() {
        let mut s = Sampler::new(SampleConfig {
            enabled: false,
            ..config(1, 1)
        });
        let spans: Vec<Span> = (0..50).map(|_| span("GET /a", 1, 3.0, 1, false)).collect();
        assert_eq!(kept(&mut s, &spans), 50);
    }

    /// A reload changes the shares at once, and what was kept in the
    /// current second still counts.
    #[test]
    fn new_config_applies_within_the_second() {
        let mut s = Sampler::new(config(2, 1000));
        let calls: Vec<Span> = (0..10)
            .map(|i| span("GET /a", 1, 20.0 + f64::from(i) / 100.0, 1, false))
            .collect();
        assert_eq!(kept(&mut s, &calls[..5]), 2);
        s.set_config(config(4, 1000));
        assert_eq!(
            kept(&mut s, &calls[5..]),
            2,
            "2 more up to the new share of 4"
        );
        s.set_config(SampleConfig {
            enabled: false,
            ..config(1, 2)
        });
        assert_eq!(kept(&mut s, &calls), 10, "off: everything");
    }

    #[test]
    fn operation_table_is_bounded() {
        let mut s = Sampler::new(config(1, u32::MAX));
        for i in 0..(MAX_OPERATIONS + 100) {
            s.decide(&span(&format!("GET /{i}"), 1, 1.0, 1, false));
        }
        assert_eq!(s.per_operation.len(), MAX_OPERATIONS);
    }
}
