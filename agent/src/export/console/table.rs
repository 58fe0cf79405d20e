//! The console table: every minute (by default), the busiest operations of
//! the last interval with their rate, error ratio, p50 and p99, computed
//! from the duration histograms.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::attrs::OwnedVal;
use crate::metrics::store::{Point, PointValue, Snapshot, point_attr};
use crate::metrics::{Metrics, Temporality, unix_now_ns};

/// Rows printed at most.
pub const TOP: usize = 10;

/// (service, kind, operation)
type Key = (String, &'static str, String);

#[derive(Clone, Debug, Default, PartialEq)]
struct Totals {
    count: u64,
    errors: u64,
    /// Upper bound (as f64 bits, which sort like the values for positive
    /// numbers) → count.
    buckets: BTreeMap<u64, u64>,
}

/// Remembers the previous totals, to report what happened in between.
#[derive(Debug, Default)]
pub struct Table {
    previous: HashMap<Key, Totals>,
    previous_ns: Option<u64>,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub service: String,
    pub kind: &'static str,
    pub operation: String,
    /// Requests per second.
    pub rate: f64,
    /// Failed share, 0..=1.
    pub error_ratio: f64,
    /// Seconds.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

fn text(p: &Point, key: &str) -> String {
    point_attr(p, key)
        .map(OwnedVal::to_string)
        .unwrap_or_default()
}

/// Which rows a duration metric feeds: (kind, operation name).
fn operation(metric: &str, p: &Point) -> Option<(&'static str, String)> {
    let op = match metric {
        "http.server.request.duration" => ("server", {
            let route = text(p, "http.route");
            format!(
                "{} {}",
                text(p, "http.request.method"),
                if route.is_empty() { "-" } else { &route }
            )
        }),
        "http.client.request.duration" => (
            "client",
            format!(
                "{} {}:{}",
                text(p, "http.request.method"),
                text(p, "server.address"),
                text(p, "server.port")
            ),
        ),
        "rpc.server.duration" | "rpc.client.duration" => (
            if metric.starts_with("rpc.server") {
                "server"
            } else {
                "client"
            },
            match (text(p, "rpc.service"), text(p, "rpc.method")) {
                (s, m) if s.is_empty() && m.is_empty() => text(p, "rpc.system"),
                (s, m) => format!("{s}/{m}"),
            },
        ),
        "db.server.operation.duration" | "db.client.operation.duration" => (
            if metric.starts_with("db.server") {
                "server"
            } else {
                "client"
            },
            format!(
                "{} {}",
                text(p, "db.system.name"),
                text(p, "db.operation.name")
            ),
        ),
        _ => return None,
    };
    Some(op)
}

/// (upper bound, count) of every bucket of a point.
fn buckets(p: &Point) -> Vec<(f64, u64)> {
    match &p.value {
        PointValue::Explicit { bounds, hist } => bounds
            .values()
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(hist.counts.iter().copied())
            .collect(),
        PointValue::Exponential(h) => std::iter::once((0.0, h.zero_count))
            .chain(
                h.counts
                    .iter()
                    .enumerate()
                    .map(|(k, c)| (h.upper_bound(h.offset + k as i32), *c)),
            )
            .collect(),
        _ => Vec::new(),
    }
}

fn count(p: &Point) -> u64 {
    match &p.value {
        PointValue::Explicit { hist, .. } => hist.count,
        PointValue::Exponential(h) => h.count,
        _ => 0,
    }
}

impl Table {
    /// The rows for the time since the previous call (since each series
    /// started, the first time), busiest first, at most `top`.
    pub fn rows(&mut self, snap: &Snapshot, start_ns: u64, top: usize) -> (Vec<Row>, usize, f64) {
        let mut now: HashMap<Key, Totals> = HashMap::new();
        for r in &snap.resources {
            for m in &r.metrics {
                for p in &m.points {
                    let Some((kind, op)) = operation(&m.name, p) else {
                        continue;
                    };
                    let t = now
                        .entry((r.resource.service_name.clone(), kind, op))
                        .or_default();
                    let n = count(p);
                    t.count += n;
                    if point_attr(p, "error.type").is_some() {
                        t.errors += n;
                    }
                    for (upper, c) in buckets(p) {
                        *t.buckets.entry(upper.to_bits()).or_default() += c;
                    }
                }
            }
        }
        let since = self.previous_ns.unwrap_or(start_ns);
        let seconds = (snap.time_ns.saturating_sub(since) as f64 / 1e9).max(1e-3);
        let mut rows = Vec::new();
        for (key, t) in &now {
            let before = self.previous.get(key);
            let delta = |a: u64, b: Option<u64>| a.saturating_sub(b.unwrap_or(0));
            let n = delta(t.count, before.map(|b| b.count));
            if n == 0 {
                continue;
            }
            let errors = delta(t.errors, before.map(|b| b.errors));
            let buckets: Vec<(f64, u64)> = t
                .buckets
                .iter()
                .map(|(upper, c)| {
                    let b = before.and_then(|b| b.buckets.get(upper).copied());
                    (f64::from_bits(*upper), delta(*c, b))
                })
                .collect();
            rows.push(Row {
                service: key.0.clone(),
                kind: key.1,
                operation: key.2.clone(),
                rate: n as f64 / seconds,
                error_ratio: errors as f64 / n as f64,
                p50: crate::metrics::hist::quantile(0.5, &buckets),
                p99: crate::metrics::hist::quantile(0.99, &buckets),
            });
        }
        rows.sort_by(|a, b| {
            b.rate
                .total_cmp(&a.rate)
                .then_with(|| a.service.cmp(&b.service))
                .then_with(|| a.operation.cmp(&b.operation))
        });
        let active = rows.len();
        rows.truncate(top);
        self.previous = now;
        self.previous_ns = Some(snap.time_ns);
        (rows, active, seconds)
    }
}

/// A duration for people: `850µs`, `12.3ms`, `1.25s`.
pub fn human(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s < 1e-3 => format!("{:.0}µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The table as text.
pub fn format(rows: &[Row], active: usize, seconds: f64) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        let _ = writeln!(out, "sonde: no requests in the last {seconds:.0}s");
        return out;
    }
    let _ = writeln!(
        out,
        "sonde: busiest operations over the last {seconds:.0}s ({} of {active})",
        rows.len()
    );
    let _ = writeln!(
        out,
        "{:<20} {:<6} {:<40} {:>9} {:>7} {:>9} {:>9}",
        "SERVICE", "KIND", "OPERATION", "REQ/S", "ERR%", "P50", "P99"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<20} {:<6} {:<40} {:>9.2} {:>6.1}% {:>9} {:>9}",
            cut(&r.service, 20),
            r.kind,
            cut(&r.operation, 40),
            r.rate,
            r.error_ratio * 100.0,
            human(r.p50),
            human(r.p99)
        );
    }
    out
}

/// Prints the table on stdout every `every`, until the task is aborted.
pub async fn print_loop(metrics: Arc<Metrics>, every: Duration) {
    let mut table = Table::default();
    let started = unix_now_ns();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticker.tick().await;
        let snap = metrics.snapshot(Temporality::Cumulative);
        let (rows, active, seconds) = table.rows(&snap, started, TOP);
        let text = format(&rows, active, seconds);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{Endpoint, Endpoints};
    use crate::enrich::Resource;
    use crate::metrics::store::Store;
    use crate::metrics::store_options;
    use crate::span::model::{AttrValue, Span, SpanStatus};

    fn span(route: &str, status: i64, ms: u64, end_ms: u64) -> Span {
        let mut attributes = vec![
            ("http.request.method", AttrValue::from("GET")),
            ("http.route", route.into()),
            ("http.response.status_code", AttrValue::Int(status)),
        ];
        if status >= 500 {
            attributes.push(("error.type", status.to_string().into()));
        }
        let mut s = crate::export::testing::span(
            route,
            1,
            ((end_ms - ms) * 1_000_000, end_ms * 1_000_000),
            attributes,
        );
        if status >= 500 {
            s.status = SpanStatus::Error {
                description: String::new(),
            };
        }
        s
    }

    #[test]
    fn rows_rate_errors_and_quantiles_per_interval() {
        let mut config = crate::config::MetricsConfig::default();
        config.service_graph.enabled = false;
        let agent = Arc::new(Resource {
            service_name: "sonde".into(),
            attributes: vec![],
            ..Default::default()
        });
        let mut store = Store::new(store_options(&config), agent);
        let shop = Arc::new(Resource {
            service_name: "shop".into(),
            attributes: vec![("service.name".into(), "shop".into())],
            ..Default::default()
        });
        let e = Endpoints {
            local: Endpoint::Unknown,
            peer: Endpoint::Unknown,
        };
        for i in 0..90 {
            store.record(&shop, &span("/a", 200, 3, 1000 + i), &e);
        }
        for i in 0..10 {
            store.record(&shop, &span("/a", 503, 300, 2000 + i), &e);
        }
        store.record(&shop, &span("/b", 200, 1, 3000), &e);
        let mut table = Table::default();
        let snap = store.snapshot(10_000_000_000, Temporality::Cumulative);
        let (rows, active, seconds) = table.rows(&snap, 0, 1);
        assert_eq!((active, rows.len(), seconds), (2, 1, 10.0));
        let a = &rows[0];
        assert_eq!(
            (a.service.as_str(), a.kind, a.operation.as_str()),
            ("shop", "server", "GET /a")
        );
        assert!((a.rate - 10.0).abs() < 1e-9, "{a:?}");
        assert!((a.error_ratio - 0.1).abs() < 1e-9);
        // 90 of 100 in (0.0, 0.005]: p50 inside it; p99 in (0.25, 0.5].
        assert!(a.p50.unwrap() <= 0.005, "{a:?}");
        let p99 = a.p99.unwrap();
        assert!(p99 > 0.25 && p99 <= 0.5, "{a:?}");
        let shown = format(&rows, active, seconds);
        assert!(shown.contains("GET /a"), "{shown}");
        assert!(shown.contains("10.0%"), "{shown}");

        // The next interval only counts what came after.
        store.record(&shop, &span("/b", 200, 1, 11_000), &e);
        let snap = store.snapshot(20_000_000_000, Temporality::Cumulative);
        let (rows, active, _) = table.rows(&snap, 0, 10);
        assert_eq!(active, 1);
        assert_eq!(rows[0].operation, "GET /b");
        assert!((rows[0].rate - 0.1).abs() < 1e-9);
        assert_eq!(human(Some(0.0005)), "500µs");
        assert_eq!(human(Some(0.0123)), "12.3ms");
        assert_eq!(human(Some(2.0)), "2.00s");
    }
}
