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
//! bounded. The decision reads only the span and its tenant, so it is pure
//! and replayable.
//!
//! Tenants share the node's budget fairly. Each tenant seen this second or
//! the last is guaranteed an equal part of the budget; as many spans as it
//! offered last second (up to that part) are held back for it, and a tenant
//! goes past its part only with what no other tenant has a claim on. A
//! tenant with a hundred times another's traffic thus cannot push the
//! other's errors and slow spans out, while budget nobody uses is not
//! wasted. (In the first second a tenant is seen it has no claim yet.)
//! Ordinary spans fill at most half of a tenant's part.
//! `per_tenant_max_per_second` caps each tenant besides. Without tenants
//! every span is one tenant's, and the rules above are the node's.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::config::SampleConfig;
use crate::metrics::attrs::{FastBuild, FastHasher};
use crate::span::model::{Span, SpanKind, SpanStatus};

/// Operations tracked per second; beyond that, new operations share the
/// node-wide budget only.
const MAX_OPERATIONS: usize = 4096;

/// Tenants tracked per second; beyond that, new tenants share one count.
const MAX_TENANTS: usize = 1024;

/// One tenant's counts in a one-second window.
#[derive(Clone, Copy, Debug, Default)]
struct TenantWindow {
    kept: u32,
    ordinary: u32,
    offered: u32,
    /// What it offered in the window before (its claim on this one).
    offered_before: u32,
}

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
    /// Keyed by a hash of the tenant id (0: no tenant).
    per_tenant: HashMap<u64, TenantWindow, FastBuild>,
}

impl Sampler {
    pub fn new(config: SampleConfig) -> Self {
        Sampler {
            config,
            window: 0,
            kept_in_window: 0,
            ordinary_in_window: 0,
            per_operation: HashMap::default(),
            per_tenant: HashMap::default(),
        }
    }

    /// Decides by `config` from now on (a config reload). The counts of
    /// the current second are kept: a lower budget applies to what is
    /// left of it, not to a fresh second.
    pub fn set_config(&mut self, config: SampleConfig) {
        self.config = config;
    }

    /// Starts the window of `second`: what each tenant offered in the
    /// last window becomes its claim on this one; after a quiet second
    /// there are no claims.
    fn roll(&mut self, second: u64) {
        let contiguous = second == self.window + 1;
        self.window = second;
        self.kept_in_window = 0;
        self.ordinary_in_window = 0;
        self.per_operation.clear();
        self.per_tenant.retain(|_, t| contiguous && t.offered > 0);
        for t in self.per_tenant.values_mut() {
            *t = TenantWindow {
                offered_before: t.offered,
                ..TenantWindow::default()
            };
        }
    }

    /// The equal part of the budget each tenant is guaranteed.
    fn part(&self) -> u32 {
        self.config.max_per_second / (self.per_tenant.len().max(1) as u32)
    }

    /// Budget held back for other tenants than `me`: what each offered
    /// last window, up to its part, less what it kept in this one.
    fn held_for_others(&self, me: u64, part: u32) -> u32 {
        self.per_tenant
            .iter()
            .filter(|(k, _)| **k != me)
            .map(|(_, t)| t.offered_before.min(part).saturating_sub(t.kept))
            .sum()
    }

    /// Whether `span`, of `tenant` (none: no tenant), is exported. Spans
    /// arriving late (their second is already past) count in the current
    /// window.
    pub fn decide(&mut self, span: &Span, tenant: Option<&str>) -> Decision {
        if !self.config.enabled {
            return Decision::Kept;
        }
        let second = span.end_unix_ns / 1_000_000_000;
        if second > self.window {
            self.roll(second);
        }
        let me = tenant_key(tenant);
        if !self.per_tenant.contains_key(&me) && self.per_tenant.len() < MAX_TENANTS {
            self.per_tenant.insert(me, TenantWindow::default());
        }
        if let Some(t) = self.per_tenant.get_mut(&me) {
            t.offered += 1;
        }
        if self.kept_in_window >= self.config.max_per_second {
            return Decision::Dropped;
        }
        let part = self.part();
        let Some(&mine) = self.per_tenant.get(&me) else {
            // Past MAX_TENANTS: only what nobody has a claim on.
            return self.decide_spare(span, part);
        };
        if self
            .config
            .per_tenant_max_per_second
            .is_some_and(|cap| mine.kept >= cap)
        {
            return Decision::Dropped;
        }
        // Within its part, or past it with budget no other tenant claims.
        let spare = || {
            self.config
                .max_per_second
                .saturating_sub(self.kept_in_window)
                .saturating_sub(self.held_for_others(me, part))
                > 0
        };
        if mine.kept >= part && !spare() {
            return Decision::Dropped;
        }
        let slow = span.duration_ns() >= u64::from(self.config.slow_ms) * 1_000_000;
        let failed = matches!(span.status, SpanStatus::Error { .. });
        let decision = if failed || slow {
            Decision::KeptNotable
        } else {
            if self.ordinary_in_window >= self.config.max_per_second / 2
                || mine.ordinary >= (part / 2).max(1)
            {
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
            Decision::Kept
        };
        self.kept_in_window += 1;
        if let Some(t) = self.per_tenant.get_mut(&me) {
            t.kept += 1;
            if decision == Decision::Kept {
                t.ordinary += 1;
            }
        }
        decision
    }

    /// A span of a tenant past the table: kept only if notable and no
    /// tenant in the table has a claim on the budget left.
    fn decide_spare(&mut self, span: &Span, part: u32) -> Decision {
        let slow = span.duration_ns() >= u64::from(self.config.slow_ms) * 1_000_000;
        let failed = matches!(span.status, SpanStatus::Error { .. });
        let free = self
            .config
            .max_per_second
            .saturating_sub(self.kept_in_window)
            .saturating_sub(self.held_for_others(u64::MAX, part));
        if (failed || slow) && free > 0 {
            self.kept_in_window += 1;
            return Decision::KeptNotable;
        }
        Decision::Dropped
    }

    /// Tenants counted in this window.
    pub fn tenants(&self) -> usize {
        self.per_tenant.len()
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

fn tenant_key(tenant: Option<&str>) -> u64 {
    let Some(tenant) = tenant else {
        return 0;
    };
    let mut hasher = FastHasher::default();
    tenant.hash(&mut hasher);
    // 0 and u64::MAX are kept for no tenant and "none of them".
    hasher.finish().clamp(1, u64::MAX - 1)
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
            per_tenant_max_per_second: None,
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
            tenant_headers: Default::default(),
            rest: Default::default(),
        }
    }

    fn kept(sampler: &mut Sampler, spans: &[Span]) -> usize {
        spans
            .iter()
            .filter(|s| sampler.decide(s, None).kept())
            .count()
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
        assert!(s.decide(&span("GET /b", 1, 100.6, 1, false), None).kept());
        assert!(s.decide(&span("GET /a", 2, 100.6, 1, false), None).kept());
        // The next second starts afresh.
        assert_eq!(
            s.decide(&span("GET /a", 1, 101.0, 1, false), None),
            Decision::Kept
        );
    }

    #[test]
    fn errors_and_slow_spans_are_kept_beyond_the_share() {
        let mut s = Sampler::new(config(1, 1000));
        assert!(s.decide(&span("GET /a", 1, 5.0, 1, false), None).kept());
        assert!(!s.decide(&span("GET /a", 1, 5.1, 1, false), None).kept());
        assert_eq!(
            s.decide(&span("GET /a", 1, 5.2, 1, true), None),
            Decision::KeptNotable
        );
        // Exactly at the threshold counts as slow.
        assert_eq!(
            s.decide(&span("GET /a", 1, 5.3, 500, false), None),
            Decision::KeptNotable
        );
        assert!(!s.decide(&span("GET /a", 1, 5.4, 499, false), None).kept());
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
        assert!(s.decide(&span("GET /a", 1, 10.0, 1, false), None).kept());
        assert!(s.decide(&span("GET /a", 1, 10.5, 1, false), None).kept());
        // Ended in an earlier second, arrives now: no fresh share.
        assert!(!s.decide(&span("GET /a", 1, 9.9, 1, false), None).kept());
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

    /// One tenant with a hundred times another's traffic, all of it
    /// errors (kept first): after the first second the quiet tenant's
    /// errors are all kept, and the noisy one gets the rest.
    #[test]
    fn a_noisy_tenant_cannot_push_another_out() {
        let mut s = Sampler::new(config(1000, 100));
        let mut kept = HashMap::new();
        for second in 0..3u32 {
            let base = 50.0 + f64::from(second);
            let mut noisy_kept = 0;
            let mut quiet_kept = 0;
            // The noisy tenant's spans come first in each second.
            for i in 0..2000 {
                let t = base + f64::from(i) / 4000.0;
                if s.decide(&span("GET /a", 1, t, 1, true), Some("noisy"))
                    .kept()
                {
                    noisy_kept += 1;
                }
            }
            for i in 0..20 {
                let t = base + 0.6 + f64::from(i) / 100.0;
                if s.decide(&span("GET /b", 2, t, 1, true), Some("quiet"))
                    .kept()
                {
                    quiet_kept += 1;
                }
            }
            kept.insert(second, (noisy_kept, quiet_kept));
        }
        // The first second: the quiet tenant has no claim yet.
        assert_eq!(kept[&0], (100, 0));
        // Then it keeps all of its 20; the noisy one the other 80.
        assert_eq!(kept[&1], (80, 20));
        assert_eq!(kept[&2], (80, 20));
    }

    /// A claim is at most the tenant's equal part; budget no one claims
    /// goes to whoever asks.
    #[test]
    fn claims_are_bounded_by_the_equal_part() {
        let mut s = Sampler::new(config(1000, 100));
        for second in 0..2u32 {
            let base = 10.0 + f64::from(second);
            let a = (0..500)
                .filter(|i| {
                    let t = base + f64::from(*i) / 1000.0;
                    s.decide(&span("GET /a", 1, t, 1, true), Some("a")).kept()
                })
                .count();
            let b = (0..500)
                .filter(|i| {
                    let t = base + 0.5 + f64::from(*i) / 1000.0;
                    s.decide(&span("GET /b", 1, t, 1, true), Some("b")).kept()
                })
                .count();
            if second == 1 {
                assert_eq!((a, b), (50, 50), "both offered more than half");
            }
        }
        // Ordinary spans fill half a tenant's part.
        let ordinary = (0..100)
            .filter(|i| {
                let t = 12.0 + f64::from(*i) / 1000.0;
                s.decide(&span(&format!("GET /{i}"), 1, t, 1, false), Some("a"))
                    .kept()
            })
            .count();
        assert_eq!(ordinary, 25);
        assert_eq!(s.tenants(), 2);
    }

    #[test]
    fn per_tenant_cap() {
        let mut s = Sampler::new(SampleConfig {
            per_tenant_max_per_second: Some(3),
            ..config(1000, 100)
        });
        let kept = (0..10)
            .filter(|_| s.decide(&span("GET /a", 1, 1.0, 1, true), Some("a")).kept())
            .count();
        assert_eq!(kept, 3);
        assert!(s.decide(&span("GET /a", 1, 1.0, 1, true), Some("b")).kept());
        assert!(s.decide(&span("GET /a", 1, 1.0, 1, true), None).kept());
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
            s.decide(&span(&format!("GET /{i}"), 1, 1.0, 1, false), None);
        }
        assert_eq!(s.per_operation.len(), MAX_OPERATIONS);
    }
}
