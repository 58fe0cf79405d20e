//! The agent's own health as metrics: the counters of [`Stats`], the
//! connection table, per-protocol parse errors, what the metric stage
//! itself holds and drops, and the agent's CPU time and resident memory
//! from `/proc/self`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use super::attrs::{Key, OwnedAttrs, OwnedVal};
use super::catalog::{Instrument, SELF_METRICS};
use super::hist::RawUnit;
use super::store::{MetricSnap, Point, PointValue, Temporality};
use crate::enrich::{HostInfo, ProcFacts, Resource, build_resource};
use crate::stats::RouteCounts;
use procfs::process::Stat;

/// The agent's own resource (`service.name` is its executable name): its
/// health metrics and the service graph are reported under it.
pub fn agent_resource() -> Arc<Resource> {
    let pid = std::process::id();
    let facts = ProcFacts::read(std::path::Path::new("/proc"), pid);
    Arc::new(build_resource(&HostInfo::detect(), pid, &facts))
}

/// (counter, metric, attribute key and value)
type CounterMetric = (&'static str, &'static str, Option<(Key, &'static str)>);

/// Which metric each [`crate::stats::Stats`] counter feeds. `parser_resyncs`
/// is absent: it is reported per protocol. A counter not listed here is
/// exported as `sonde.<counter>`.
const COUNTERS: &[CounterMetric] = &[
    ("events_read", "sonde.events.read", None),
    (
        "events_lost_ringbuf_full",
        "sonde.events.dropped",
        Some((Key::Reason, "ringbuf_full")),
    ),
    (
        "events_lost_slot_taken",
        "sonde.events.dropped",
        Some((Key::Reason, "slot_taken")),
    ),
    (
        "events_malformed",
        "sonde.events.dropped",
        Some((Key::Reason, "malformed")),
    ),
    (
        "events_unseen_not_a_syscall",
        "sonde.events.unseen",
        Some((Key::Reason, "not_a_syscall")),
    ),
    ("calls_cut", "sonde.calls.cut", None),
    ("events_excluded", "sonde.events.excluded", None),
    ("bytes_captured", "sonde.captured", None),
    ("bytes_not_captured", "sonde.not_captured", None),
    ("conns_evicted", "sonde.connections.evicted", None),
    ("parser_resync_bytes", "sonde.parse.skipped", None),
    ("requests_unanswered", "sonde.requests.unanswered", None),
    ("responses_unpaired", "sonde.responses.unpaired", None),
    ("spans_built", "sonde.spans.built", None),
    ("spans_exported", "sonde.spans.exported", None),
    ("spans_sampled_out", "sonde.spans.sampled_out", None),
    ("spans_excluded", "sonde.spans.excluded", None),
    (
        "spans_dropped_queue_full",
        "sonde.spans.dropped",
        Some((Key::Reason, "queue_full")),
    ),
    ("spans_export_failed", "sonde.spans.export_failed", None),
];

/// The [`crate::stats::Stats`] counters that are reported per route when
/// routes are known (each route's counts add up to the total).
const ROUTE_COUNTERS: &[&str] = &[
    "spans_dropped_queue_full",
    "spans_exported",
    "spans_export_failed",
];

/// What the self-metrics are made of, gathered by [`super::Metrics`].
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Every [`crate::stats::Stats`] counter.
    pub stats: Vec<(&'static str, u64)>,
    pub connections: u64,
    /// Parse errors by protocol.
    pub parse_errors: Vec<(&'static str, u64)>,
    /// (metric, series, folded measurements).
    pub series: Vec<(&'static str, usize, u64)>,
    pub metric_export_failures: u64,
    /// The export counters of each route; when there are any, the span
    /// export counters and metric export failures are reported per route.
    pub routes: Vec<RouteCounts>,
    /// (pushed out early, client-only edges, server-only edges).
    pub graph: Option<(u64, u64, u64)>,
    pub process: Option<ProcessUsage>,
}

/// The agent's own resource use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessUsage {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

impl ProcessUsage {
    /// Reads `/proc/self/stat`.
    pub fn read() -> Option<ProcessUsage> {
        let me = procfs::process::Process::myself().ok()?;
        let stat = crate::enrich::proc::read_stat(&me)?;
        Some(ProcessUsage::from_stat(
            &stat,
            procfs::ticks_per_second(),
            procfs::page_size(),
        ))
    }

    /// CPU time from `utime` and `stime` (clock ticks) and resident memory
    /// from `rss` (pages: the count `VmRSS` in `/proc/PID/status` shows in
    /// KiB).
    pub fn from_stat(stat: &Stat, ticks_per_sec: u64, page_size: u64) -> ProcessUsage {
        ProcessUsage {
            cpu_seconds: stat.utime.saturating_add(stat.stime) as f64 / ticks_per_sec.max(1) as f64,
            rss_bytes: stat.rss.saturating_mul(page_size),
        }
    }
}

/// Remembers the last exported counter values, for delta export.
#[derive(Debug, Default)]
pub struct DeltaState {
    /// By (metric, attribute values).
    last: HashMap<(String, Vec<String>), f64>,
    at_ns: Option<u64>,
}

struct Builder<'a> {
    out: Vec<MetricSnap>,
    temporality: Temporality,
    start_ns: u64,
    delta: &'a mut DeltaState,
}

impl Builder<'_> {
    fn add(
        &mut self,
        name: Cow<'static, str>,
        attr: Option<(Key, String)>,
        value: f64,
        gauge: bool,
    ) {
        self.add_with(name, attr.into_iter().collect(), value, gauge);
    }

    fn add_with(
        &mut self,
        name: Cow<'static, str>,
        attrs: Vec<(Key, String)>,
        value: f64,
        gauge: bool,
    ) {
        let (unit, instrument, description) = SELF_METRICS
            .iter()
            .find(|m| m.0 == name)
            .map(|m| (m.1, m.2, m.3))
            .unwrap_or((
                "1",
                if gauge {
                    Instrument::Gauge
                } else {
                    Instrument::Counter
                },
                "An agent counter.",
            ));
        let mut value = value;
        let mut start = self.start_ns;
        if instrument == Instrument::Counter && self.temporality == Temporality::Delta {
            let key = (
                name.to_string(),
                attrs.iter().map(|(_, v)| v.clone()).collect(),
            );
            let before = self.delta.last.insert(key, value).unwrap_or(0.0);
            value = (value - before).max(0.0);
            if let Some(at) = self.delta.at_ns {
                start = at;
            }
        }
        let attrs: OwnedAttrs = attrs
            .into_iter()
            .map(|(k, v)| (k, OwnedVal::Str(v.into())))
            .collect::<Vec<_>>()
            .into();
        let point = Point {
            attrs,
            start_ns: start,
            value: if instrument == Instrument::Gauge {
                PointValue::Gauge(value)
            } else {
                PointValue::Sum(value)
            },
            exemplars: Vec::new(),
        };
        match self.out.iter_mut().find(|m| m.name == name) {
            Some(m) => m.points.push(point),
            None => self.out.push(MetricSnap {
                name,
                unit,
                description,
                instrument,
                raw: RawUnit::One,
                points: vec![point],
            }),
        }
    }
}

/// The self-metrics from `inputs`. `start_ns` is when the agent started
/// (the start of every cumulative sum); with delta temporality `delta`
/// holds the values of the previous call.
pub fn build(
    inputs: &Inputs,
    temporality: Temporality,
    start_ns: u64,
    now_ns: u64,
    delta: &mut DeltaState,
) -> Vec<MetricSnap> {
    let mut b = Builder {
        out: Vec::new(),
        temporality,
        start_ns,
        delta,
    };
    let mut resyncs = 0u64;
    for &(counter, value) in &inputs.stats {
        if counter == "parser_resyncs" {
            resyncs = value;
            continue;
        }
        if !inputs.routes.is_empty() && ROUTE_COUNTERS.contains(&counter) {
            continue;
        }
        match COUNTERS.iter().find(|c| c.0 == counter) {
            Some((_, metric, attr)) => b.add(
                Cow::Borrowed(metric),
                attr.map(|(k, v)| (k, v.to_string())),
                value as f64,
                false,
            ),
            None => b.add(
                Cow::Owned(format!("sonde.{counter}")),
                None,
                value as f64,
                false,
            ),
        }
    }
    b.add(
        Cow::Borrowed("sonde.connections.tracked"),
        None,
        inputs.connections as f64,
        true,
    );
    let mut known = 0u64;
    for &(protocol, n) in &inputs.parse_errors {
        known += n;
        b.add(
            Cow::Borrowed("sonde.parse.errors"),
            Some((Key::Protocol, protocol.to_string())),
            n as f64,
            false,
        );
    }
    if resyncs > known || inputs.parse_errors.is_empty() {
        b.add(
            Cow::Borrowed("sonde.parse.errors"),
            Some((Key::Protocol, "unknown".to_string())),
            resyncs.saturating_sub(known) as f64,
            false,
        );
    }
    for &(metric, series, folded) in &inputs.series {
        b.add(
            Cow::Borrowed("sonde.metrics.series"),
            Some((Key::Metric, metric.to_string())),
            series as f64,
            true,
        );
        b.add(
            Cow::Borrowed("sonde.metrics.overflow"),
            Some((Key::Metric, metric.to_string())),
            folded as f64,
            false,
        );
    }
    if inputs.routes.is_empty() {
        b.add(
            Cow::Borrowed("sonde.metrics.export_failed"),
            None,
            inputs.metric_export_failures as f64,
            false,
        );
    }
    for r in &inputs.routes {
        let route = (Key::ExportRoute, r.route.clone());
        b.add_with(
            Cow::Borrowed("sonde.spans.dropped"),
            vec![(Key::Reason, "queue_full".into()), route.clone()],
            r.spans_dropped_queue_full as f64,
            false,
        );
        for (metric, n) in [
            ("sonde.spans.exported", r.spans_exported),
            ("sonde.spans.export_failed", r.spans_export_failed),
            ("sonde.metrics.export_failed", r.metric_export_failed),
        ] {
            b.add_with(Cow::Borrowed(metric), vec![route.clone()], n as f64, false);
        }
    }
    if let Some((dropped, client, server)) = inputs.graph {
        for (side, n) in [("client", client), ("server", server)] {
            b.add(
                Cow::Borrowed("sonde.service_graph.unpaired"),
                Some((Key::Side, side.to_string())),
                n as f64,
                false,
            );
        }
        b.add(
            Cow::Borrowed("sonde.service_graph.dropped"),
            None,
            dropped as f64,
            false,
        );
    }
    if let Some(p) = inputs.process {
        b.add(
            Cow::Borrowed("sonde.process.cpu.time"),
            None,
            p.cpu_seconds,
            false,
        );
        b.add(
            Cow::Borrowed("sonde.process.memory.rss"),
            None,
            p.rss_bytes as f64,
            true,
        );
    }
    if temporality == Temporality::Delta {
        b.delta.at_ns = Some(now_ns);
    }
    b.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_from_stat() {
        use procfs::FromRead as _;
        let line = b"4242 (sonde (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 3 0 1234 100000 2000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 3 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let stat = Stat::from_read(&line[..]).unwrap();
        let u = ProcessUsage::from_stat(&stat, 100, 4096);
        assert_eq!(u.cpu_seconds, 3.0);
        assert_eq!(u.rss_bytes, 2000 * 4096);
        assert_eq!(ProcessUsage::from_stat(&stat, 250, 16384).cpu_seconds, 1.2);
    }

    #[test]
    fn reads_own_usage() {
        let vm_rss_kib = || -> f64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap()
        };
        // The same count as VmRSS in status; other tests allocate in
        // between, so it is bracketed by a reading before and after.
        let before = vm_rss_kib();
        let u = ProcessUsage::read().unwrap();
        let after = vm_rss_kib();
        let rss_kib = u.rss_bytes as f64 / 1024.0;
        assert!(
            rss_kib >= before.min(after) * 0.95 && rss_kib <= before.max(after) * 1.05,
            "{rss_kib} KiB, VmRSS {before} then {after}"
        );
        // CPU time grows while this thread spins.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let later = ProcessUsage::read().unwrap();
            if later.cpu_seconds > u.cpu_seconds {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{u:?} {later:?}");
            std::hint::black_box((0..100_000u64).sum::<u64>());
        }
    }

    fn value(ms: &[MetricSnap], name: &str, attr: Option<&str>) -> Option<f64> {
        let m = ms.iter().find(|m| m.name == name)?;
        let p = m.points.iter().find(|p| match attr {
            None => p.attrs.is_empty(),
            Some(v) => p.attrs.first().is_some_and(|(_, a)| a.as_str() == Some(v)),
        })?;
        match p.value {
            PointValue::Sum(v) | PointValue::Gauge(v) => Some(v),
            _ => None,
        }
    }

    #[test]
    fn export_counters_per_route() {
        let route = |name: &str, dropped, exported| RouteCounts {
            route: name.into(),
            spans_dropped_queue_full: dropped,
            spans_exported: exported,
            spans_export_failed: 0,
            metric_export_failed: 1,
        };
        let mut inputs = Inputs {
            stats: vec![
                ("spans_dropped_queue_full", 7),
                ("spans_exported", 30),
                ("spans_built", 40),
            ],
            routes: vec![route("default", 0, 10), route("acme", 7, 20)],
            ..Inputs::default()
        };
        let point = |ms: &[MetricSnap], name: &str, route: &str| -> Option<(f64, usize)> {
            let m = ms.iter().find(|m| m.name == name)?;
            m.points.iter().find_map(|p| {
                let on_route = p
                    .attrs
                    .iter()
                    .any(|(k, v)| *k == Key::ExportRoute && v.as_str() == Some(route));
                match p.value {
                    PointValue::Sum(v) if on_route => Some((v, p.attrs.len())),
                    _ => None,
                }
            })
        };
        let mut delta = DeltaState::default();
        let ms = build(&inputs, Temporality::Delta, 1, 2, &mut delta);
        // Per route instead of the totals: the routes add up to them.
        assert_eq!(point(&ms, "sonde.spans.dropped", "acme"), Some((7.0, 2)));
        assert_eq!(point(&ms, "sonde.spans.dropped", "default"), Some((0.0, 2)));
        assert_eq!(point(&ms, "sonde.spans.exported", "acme"), Some((20.0, 1)));
        assert_eq!(
            point(&ms, "sonde.metrics.export_failed", "acme"),
            Some((1.0, 1))
        );
        let exported = ms
            .iter()
            .find(|m| m.name == "sonde.spans.exported")
            .unwrap();
        assert_eq!(exported.points.len(), 2);
        assert_eq!(value(&ms, "sonde.spans.built", None), Some(40.0));
        // Each route's delta is its own.
        inputs.routes = vec![route("default", 0, 15), route("acme", 9, 20)];
        let ms = build(&inputs, Temporality::Delta, 1, 3, &mut delta);
        assert_eq!(
            point(&ms, "sonde.spans.exported", "default"),
            Some((5.0, 1))
        );
        assert_eq!(point(&ms, "sonde.spans.exported", "acme"), Some((0.0, 1)));
        assert_eq!(point(&ms, "sonde.spans.dropped", "acme"), Some((2.0, 2)));
    }

    #[test]
    fn maps_counters_and_reports_deltas() {
        let inputs = Inputs {
            stats: vec![
                ("events_read", 10),
                ("events_lost_ringbuf_full", 2),
                ("events_malformed", 1),
                ("parser_resyncs", 5),
                ("a_new_counter", 7),
            ],
            connections: 3,
            parse_errors: vec![("http1", 4)],
            series: vec![("http.server.request.duration", 12, 0)],
            metric_export_failures: 0,
            routes: Vec::new(),
            graph: Some((0, 1, 2)),
            process: Some(ProcessUsage {
                cpu_seconds: 1.5,
                rss_bytes: 1 << 20,
            }),
        };
        let mut delta = DeltaState::default();
        let ms = build(&inputs, Temporality::Cumulative, 1, 2, &mut delta);
        assert_eq!(value(&ms, "sonde.events.read", None), Some(10.0));
        assert_eq!(
            value(&ms, "sonde.events.dropped", Some("ringbuf_full")),
            Some(2.0)
        );
        assert_eq!(
            value(&ms, "sonde.events.dropped", Some("malformed")),
            Some(1.0)
        );
        assert_eq!(value(&ms, "sonde.parse.errors", Some("http1")), Some(4.0));
        assert_eq!(value(&ms, "sonde.parse.errors", Some("unknown")), Some(1.0));
        assert_eq!(value(&ms, "sonde.a_new_counter", None), Some(7.0));
        assert_eq!(value(&ms, "sonde.connections.tracked", None), Some(3.0));
        assert_eq!(
            value(&ms, "sonde.service_graph.unpaired", Some("server")),
            Some(2.0)
        );
        assert_eq!(
            value(&ms, "sonde.process.memory.rss", None),
            Some(1048576.0)
        );
        let dropped = ms
            .iter()
            .find(|m| m.name == "sonde.events.dropped")
            .unwrap();
        assert_eq!(dropped.points.len(), 2);
        assert_eq!(dropped.instrument, Instrument::Counter);

        let d1 = build(&inputs, Temporality::Delta, 1, 100, &mut delta);
        assert_eq!(value(&d1, "sonde.events.read", None), Some(10.0));
        let mut later = inputs.clone();
        later.stats[0].1 = 25;
        later.connections = 9;
        let d2 = build(&later, Temporality::Delta, 1, 200, &mut delta);
        assert_eq!(value(&d2, "sonde.events.read", None), Some(15.0));
        // Gauges are values, not differences.
        assert_eq!(value(&d2, "sonde.connections.tracked", None), Some(9.0));
        let p = &d2
            .iter()
            .find(|m| m.name == "sonde.events.read")
            .unwrap()
            .points[0];
        assert_eq!(p.start_ns, 100);
    }
}
