//! Metrics over OTLP: where they go ([`resolve_metrics_target`]), snapshots
//! in the OTLP metrics data model ([`Requests`]: one `ResourceMetrics` per
//! process, split into requests of bounded size), and the task that reads
//! the store every interval and sends it ([`export_loop`], one per route:
//! the default one, and each tenant's of `export.tenants`).
//!
//! The endpoint, protocol and headers follow the rules of every signal
//! (see [`super`]), with `metrics.otlp.endpoint` as the signal's own key.
//! Besides:
//!
//! - Interval: `metrics.otlp.interval_ms`, `OTEL_METRIC_EXPORT_INTERVAL`
//!   (ms), else 60 s.
//! - Temporality: `metrics.otlp.temporality`,
//!   `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` (`cumulative`,
//!   `delta`, or `lowmemory`, which is delta for everything sonde makes),
//!   else cumulative.
//! - `OTEL_METRICS_EXPORTER` without `otlp` in its list (`none`,
//!   `prometheus`) turns OTLP metrics off, as does `metrics.otlp.enabled: false`.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar as PExemplar, ExponentialHistogram,
    ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, exemplar, exponential_histogram_data_point, metric,
    number_data_point,
};
use tokio::sync::watch;

use super::{Env, OtlpClient, OtlpTarget, Signal, kv, resolve_route_target, resolve_target, var};
use crate::config::{ExportConfig, MetricsConfig};
use crate::enrich::Resource;
use crate::export::{ExportError, WarnLimiter};
use crate::metrics::attrs::{Key, OwnedVal};
use crate::metrics::catalog::Instrument;
use crate::metrics::hist::RawUnit;
use crate::metrics::store::{
    Exemplar, MetricSnap, Point, PointValue, ResourceSnap, Snapshot, Temporality, merge_resources,
};
use crate::metrics::{Collection, Metrics, SeriesFilter};
use crate::stats::{RouteStats, Stats};

const INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
const TEMPORALITY: &str = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
const EXPORTER: &str = "OTEL_METRICS_EXPORTER";

/// The export interval when nothing sets one (the OpenTelemetry default).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Data points per export request, at most; a snapshot with more is sent
/// in several requests (collectors refuse messages over 4 MiB by default,
/// and a smaller request keeps the agent's memory small).
pub const MAX_POINTS_PER_REQUEST: usize = 500;

/// Series read from the store at a time while a request is gathered.
pub const SERIES_PER_PART: usize = 100;

/// Where and how metrics are sent, once resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsTarget {
    pub otlp: OtlpTarget,
    pub interval: Duration,
    pub temporality: Temporality,
}

/// Decides whether and where metrics go over OTLP. See the module
/// documentation.
pub fn resolve_metrics_target(
    export: &ExportConfig,
    metrics: &MetricsConfig,
    env: &Env,
) -> Result<Option<MetricsTarget>, ExportError> {
    if !otlp_metrics_on(metrics, env) {
        return Ok(None);
    }
    let Some(otlp) = resolve_target(
        Signal::Metrics,
        &export.otlp,
        ("metrics.otlp.endpoint", &metrics.otlp.endpoint),
        env,
    )?
    else {
        return Ok(None);
    };
    let (interval, temporality) = schedule(metrics, env)?;
    Ok(Some(MetricsTarget {
        otlp,
        interval,
        temporality,
    }))
}

/// Where the metrics of each tenant with a route of its own go
/// (`export.tenants.<id>`: `metrics_endpoint`, else `endpoint`), by
/// tenant id. The interval and temporality are the default route's.
pub fn resolve_tenant_metrics_targets(
    export: &ExportConfig,
    metrics: &MetricsConfig,
    env: &Env,
) -> Result<Vec<(String, MetricsTarget)>, ExportError> {
    let mut out = Vec::new();
    if !otlp_metrics_on(metrics, env) {
        return Ok(out);
    }
    for (tenant, route) in &export.tenants {
        let Some(otlp) = resolve_route_target(Signal::Metrics, tenant, route, &export.otlp)? else {
            continue;
        };
        let (interval, temporality) = schedule(metrics, env)?;
        out.push((
            tenant.clone(),
            MetricsTarget {
                otlp,
                interval,
                temporality,
            },
        ));
    }
    Ok(out)
}

/// Whether metrics may go out over OTLP at all.
fn otlp_metrics_on(metrics: &MetricsConfig, env: &Env) -> bool {
    if !metrics.enabled || !metrics.otlp.enabled {
        return false;
    }
    var(env, EXPORTER).is_none_or(|(_, list)| {
        list.split(',')
            .any(|e| e.trim().eq_ignore_ascii_case("otlp"))
    })
}

/// The export interval and temporality.
fn schedule(metrics: &MetricsConfig, env: &Env) -> Result<(Duration, Temporality), ExportError> {
    let interval = match metrics.otlp.interval_ms {
        Some(ms) => Duration::from_millis(ms),
        None => match var(env, INTERVAL) {
            None => DEFAULT_INTERVAL,
            Some((setting, v)) => match v.parse::<u64>() {
                Ok(ms) if ms >= 100 => Duration::from_millis(ms),
                _ => {
                    return Err(ExportError::Endpoint {
                        setting,
                        reason: format!(
                            "{v:?} is not an interval; write milliseconds, at least 100 (60000 is a minute)"
                        ),
                    });
                }
            },
        },
    };

    let temporality = match (metrics.otlp.temporality, var(env, TEMPORALITY)) {
        (Some(t), _) => t,
        (None, None) => Temporality::Cumulative,
        (None, Some((setting, v))) => match v.to_ascii_lowercase().as_str() {
            // The specification's third choice; delta is what it asks of histograms.
            "lowmemory" => Temporality::Delta,
            name => crate::config::from_name(name).ok_or_else(|| ExportError::Endpoint {
                setting,
                reason: format!("{v:?} is not a temporality; write cumulative or delta"),
            })?,
        },
    };
    Ok((interval, temporality))
}

fn attributes(attrs: &[(Key, OwnedVal)]) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| {
            kv(
                k.name(),
                match v {
                    OwnedVal::Str(s) => any_value::Value::StringValue(s.to_string()),
                    OwnedVal::Int(i) => any_value::Value::IntValue(*i),
                    OwnedVal::Bool(b) => any_value::Value::BoolValue(*b),
                },
            )
        })
        .collect()
}

fn exemplars(list: &[Exemplar], raw: RawUnit) -> Vec<PExemplar> {
    list.iter()
        .map(|e| PExemplar {
            time_unix_nano: e.time_ns,
            span_id: e.span_id.to_vec(),
            trace_id: e.trace_id.to_vec(),
            value: Some(exemplar::Value::AsDouble(raw.to_unit(e.raw))),
            ..Default::default()
        })
        .collect()
}

fn temporality(t: Temporality) -> i32 {
    match t {
        Temporality::Cumulative => AggregationTemporality::Cumulative as i32,
        Temporality::Delta => AggregationTemporality::Delta as i32,
    }
}

/// Min and max of a histogram point: they cover the whole series, so they
/// only go with cumulative points.
fn min_max(m: &MetricSnap, t: Temporality, count: u64, raw: (u64, u64)) -> [Option<f64>; 2] {
    let keep = t == Temporality::Cumulative && count > 0;
    [raw.0, raw.1].map(|v| keep.then(|| m.raw.to_unit(v)))
}

/// A histogram data point of type `$ty`: the fields every histogram
/// point has, from `$h` (an explicit or exponential histogram), then
/// `$field: $value` for the rest.
macro_rules! histogram_point {
    ($ty:ident, $m:expr, $p:expr, $h:expr, $time_ns:expr, $t:expr, { $($field:ident: $value:expr),* $(,)? }) => {{
        let [min, max] = min_max($m, $t, $h.count, ($h.min, $h.max));
        $ty {
            attributes: attributes(&$p.attrs),
            start_time_unix_nano: $p.start_ns,
            time_unix_nano: $time_ns,
            count: $h.count,
            sum: Some($m.raw.sum_to_unit($h.sum)),
            exemplars: exemplars(&$p.exemplars, $m.raw),
            min,
            max,
            $($field: $value,)*
            ..Default::default()
        }
    }};
}

fn explicit_point(
    m: &MetricSnap,
    p: &Point,
    time_ns: u64,
    t: Temporality,
) -> Option<HistogramDataPoint> {
    let PointValue::Explicit { bounds, hist } = &p.value else {
        return None;
    };
    Some(
        histogram_point!(HistogramDataPoint, m, p, hist, time_ns, t, {
            bucket_counts: hist.counts.to_vec(),
            explicit_bounds: bounds.values().to_vec(),
        }),
    )
}

fn exponential_point(
    m: &MetricSnap,
    p: &Point,
    time_ns: u64,
    t: Temporality,
) -> Option<ExponentialHistogramDataPoint> {
    let PointValue::Exponential(h) = &p.value else {
        return None;
    };
    Some(
        histogram_point!(ExponentialHistogramDataPoint, m, p, h, time_ns, t, {
            scale: h.scale,
            zero_count: h.zero_count,
            positive: Some(exponential_histogram_data_point::Buckets {
                offset: h.offset,
                bucket_counts: h.counts.clone(),
            }),
        }),
    )
}

/// One metric with the points `points` (a slice of `m.points`).
fn metric(m: &MetricSnap, points: &[Point], time_ns: u64, t: Temporality) -> Metric {
    let numbers = || -> Vec<NumberDataPoint> {
        points
            .iter()
            .filter_map(|p| match p.value {
                PointValue::Sum(v) | PointValue::Gauge(v) => Some(NumberDataPoint {
                    attributes: attributes(&p.attrs),
                    start_time_unix_nano: p.start_ns,
                    time_unix_nano: time_ns,
                    value: Some(number_data_point::Value::AsDouble(v)),
                    ..Default::default()
                }),
                _ => None,
            })
            .collect()
    };
    let data = match m.instrument {
        Instrument::Counter => metric::Data::Sum(Sum {
            data_points: numbers(),
            aggregation_temporality: temporality(t),
            is_monotonic: true,
        }),
        Instrument::Gauge => metric::Data::Gauge(Gauge {
            data_points: numbers(),
        }),
        Instrument::Histogram
            if points
                .iter()
                .any(|p| matches!(p.value, PointValue::Exponential(_))) =>
        {
            metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points: points
                    .iter()
                    .filter_map(|p| exponential_point(m, p, time_ns, t))
                    .collect(),
                aggregation_temporality: temporality(t),
            })
        }
        Instrument::Histogram => metric::Data::Histogram(Histogram {
            data_points: points
                .iter()
                .filter_map(|p| explicit_point(m, p, time_ns, t))
                .collect(),
            aggregation_temporality: temporality(t),
        }),
    };
    Metric {
        name: m.name.to_string(),
        description: m.description.to_string(),
        unit: m.unit.to_string(),
        data: Some(data),
        ..Default::default()
    }
}

/// The export requests for `snap`, each with at most `max_points` data
/// points (one metric's points may be split across requests), built one
/// at a time as the iterator is advanced.
pub struct Requests<'a> {
    snap: &'a Snapshot,
    max_points: usize,
    resource: usize,
    metric: usize,
    point: usize,
}

impl<'a> Requests<'a> {
    pub fn new(snap: &'a Snapshot, max_points: usize) -> Requests<'a> {
        Requests {
            snap,
            max_points: max_points.max(1),
            resource: 0,
            metric: 0,
            point: 0,
        }
    }
}

impl Iterator for Requests<'_> {
    type Item = ExportMetricsServiceRequest;

    fn next(&mut self) -> Option<ExportMetricsServiceRequest> {
        let mut req = ExportMetricsServiceRequest::default();
        let mut room = self.max_points;
        while room > 0 {
            let Some(r) = self.snap.resources.get(self.resource) else {
                break;
            };
            let mut metrics = Vec::new();
            while room > 0 {
                let Some(m) = r.metrics.get(self.metric) else {
                    break;
                };
                let rest = m.points.get(self.point..).unwrap_or_default();
                let take = rest.len().min(room);
                if take > 0 {
                    metrics.push(metric(
                        m,
                        &rest[..take],
                        self.snap.time_ns,
                        self.snap.temporality,
                    ));
                }
                room -= take;
                self.point += take;
                if self.point >= m.points.len() {
                    self.metric += 1;
                    self.point = 0;
                }
            }
            push_resource(&mut req, r.resource.as_ref(), metrics);
            if self.metric >= r.metrics.len() {
                self.resource += 1;
                self.metric = 0;
                self.point = 0;
            }
        }
        (!req.resource_metrics.is_empty()).then_some(req)
    }
}

/// Every request for `snap` at once.
pub fn requests(snap: &Snapshot, max_points: usize) -> Vec<ExportMetricsServiceRequest> {
    Requests::new(snap, max_points).collect()
}

fn push_resource(req: &mut ExportMetricsServiceRequest, r: &Resource, metrics: Vec<Metric>) {
    if metrics.is_empty() {
        return;
    }
    req.resource_metrics.push(for_resource!(
        ResourceMetrics,
        scope_metrics: ScopeMetrics { metrics },
        r
    ));
}

/// One export's series as snapshots of about [`MAX_POINTS_PER_REQUEST`]
/// points each, read from the store in parts of [`SERIES_PER_PART`] series
/// so that the whole store is never copied at once.
pub struct Batches<'m> {
    collection: Collection<'m>,
    temporality: Temporality,
    done: bool,
}

impl<'m> Batches<'m> {
    pub fn new(metrics: &'m Metrics, temporality: Temporality) -> Self {
        Self::of(metrics, temporality, SeriesFilter::All)
    }

    /// The batches of the series `filter` keeps.
    pub fn of(metrics: &'m Metrics, temporality: Temporality, filter: SeriesFilter) -> Self {
        Batches {
            collection: metrics.collect_of(temporality, filter),
            temporality,
            done: false,
        }
    }
}

impl Iterator for Batches<'_> {
    type Item = Snapshot;

    fn next(&mut self) -> Option<Snapshot> {
        let mut gathered: Vec<ResourceSnap> = Vec::new();
        let mut points = 0;
        while !self.done && points < MAX_POINTS_PER_REQUEST {
            let Some(part) = self.collection.next_part(SERIES_PER_PART) else {
                self.done = true;
                break;
            };
            points += part
                .resources
                .iter()
                .flat_map(|r| &r.metrics)
                .map(|m| m.points.len())
                .sum::<usize>();
            gathered.extend(part.resources);
        }
        if gathered.is_empty() {
            return None;
        }
        Some(Snapshot {
            time_ns: self.collection.now,
            temporality: self.temporality,
            resources: merge_resources(gathered),
        })
    }
}

/// One route's metric export: which series it takes, and its counters.
pub struct MetricRoute {
    pub filter: SeriesFilter,
    pub counters: Arc<RouteStats>,
}

/// One export: the store read a part at a time, parts gathered into
/// requests of up to [`MAX_POINTS_PER_REQUEST`] points, each sent before
/// the next is built.
async fn export_once(
    metrics: &Metrics,
    client: &OtlpClient,
    temporality: Temporality,
    route: &MetricRoute,
    warnings: &mut WarnLimiter,
) {
    for snap in Batches::of(metrics, temporality, route.filter.clone()) {
        for request in Requests::new(&snap, MAX_POINTS_PER_REQUEST) {
            if let Err(e) = client.export(&request).await {
                metrics.count_export_failure();
                Stats::add(&route.counters.metric_export_failed, 1);
                warnings.warn(&e.to_string());
            }
        }
    }
    crate::memory::release(false);
}

/// Exports the series of `route` every `target.interval` until `stop`
/// says so, then once more. Each route has its own loop, so a collector
/// that hangs delays only its own route's exports.
pub async fn export_loop(
    metrics: Arc<Metrics>,
    client: OtlpClient,
    target: MetricsTarget,
    route: MetricRoute,
    warning: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut warnings = WarnLimiter::new(warning, Duration::from_secs(60));
    let start = tokio::time::Instant::now() + target.interval;
    let mut ticker = tokio::time::interval_at(start, target.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                export_once(&metrics, &client, target.temporality, &route, &mut warnings).await;
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    // The last export: what waited in the service graph goes too.
    metrics.finish();
    export_once(&metrics, &client, target.temporality, &route, &mut warnings).await;
}

#[cfg(test)]
mod tests {
    use super::super::Protocol;
    use super::*;
    use crate::metrics::hist::{Bounds, Explicit};
    use crate::metrics::store::ResourceSnap;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn snap(points: usize) -> Snapshot {
        let bounds = Arc::new(Bounds::new(&[0.1, 1.0], RawUnit::Nanos));
        let mut hist = Explicit::new(&bounds);
        hist.record(&bounds, 50_000_000);
        hist.record(&bounds, 2_000_000_000);
        let point = |i: usize| Point {
            attrs: vec![(Key::Route, OwnedVal::Str(format!("/r{i}").into()))].into(),
            start_ns: 5,
            value: PointValue::Explicit {
                bounds: Arc::clone(&bounds),
                hist: hist.clone(),
            },
            exemplars: vec![Exemplar {
                trace_id: [7; 16],
                span_id: [8; 8],
                raw: 50_000_000,
                time_ns: 9,
                failed: false,
            }],
        };
        Snapshot {
            time_ns: 100,
            temporality: Temporality::Cumulative,
            resources: vec![ResourceSnap {
                resource: Arc::new(Resource {
                    service_name: "shop".into(),
                    attributes: vec![("service.name".into(), "shop".into())],
                    ..Default::default()
                }),
                metrics: vec![MetricSnap {
                    name: "http.server.request.duration".into(),
                    unit: "s",
                    description: "d",
                    instrument: Instrument::Histogram,
                    raw: RawUnit::Nanos,
                    points: (0..points).map(point).collect(),
                }],
            }],
        }
    }

    #[test]
    fn histogram_points_carry_buckets_sum_and_exemplars() {
        let reqs = requests(&snap(1), 100);
        assert_eq!(reqs.len(), 1);
        let rm = &reqs[0].resource_metrics[0];
        assert_eq!(
            rm.resource.as_ref().unwrap().attributes[0].key,
            "service.name"
        );
        let m = &rm.scope_metrics[0].metrics[0];
        assert_eq!(m.name, "http.server.request.duration");
        assert_eq!(m.unit, "s");
        let Some(metric::Data::Histogram(h)) = &m.data else {
            panic!("{m:?}")
        };
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &h.data_points[0];
        assert_eq!(p.bucket_counts, vec![1, 0, 1]);
        assert_eq!(p.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(p.count, 2);
        assert_eq!(p.sum, Some(2.05));
        assert_eq!((p.min, p.max), (Some(0.05), Some(2.0)));
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (5, 100));
        assert_eq!(p.exemplars[0].trace_id, vec![7; 16]);
        assert_eq!(p.exemplars[0].value, Some(exemplar::Value::AsDouble(0.05)));
    }

    #[test]
    fn large_snapshots_are_split() {
        let reqs = requests(&snap(25), 10);
        assert_eq!(reqs.len(), 3);
        let counts: Vec<usize> = reqs
            .iter()
            .map(|r| {
                r.resource_metrics
                    .iter()
                    .flat_map(|rm| &rm.scope_metrics)
                    .flat_map(|s| &s.metrics)
                    .map(|m| match &m.data {
                        Some(metric::Data::Histogram(h)) => h.data_points.len(),
                        _ => 0,
                    })
                    .sum()
            })
            .collect();
        assert_eq!(counts, vec![10, 10, 5]);
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn resolve(
        export: &ExportConfig,
        metrics: &MetricsConfig,
        pairs: &[(&str, &str)],
    ) -> Result<Option<MetricsTarget>, ExportError> {
        resolve_metrics_target(export, metrics, &env(pairs))
    }

    /// The target of the default configuration with `pairs` set.
    fn target(pairs: &[(&str, &str)]) -> MetricsTarget {
        resolve(&ExportConfig::default(), &MetricsConfig::default(), pairs)
            .unwrap()
            .expect("OTLP metrics on")
    }

    #[test]
    fn nothing_set_means_no_otlp_metrics() {
        let t = resolve(&ExportConfig::default(), &MetricsConfig::default(), &[]).unwrap();
        assert_eq!(t, None);
    }

    #[test]
    fn base_endpoint_gets_the_metrics_path_for_http() {
        let t = target(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(t.otlp.endpoint, "http://collector:4318/v1/metrics");
        assert_eq!(t.otlp.protocol, Protocol::HttpProtobuf);
        assert_eq!(t.interval, DEFAULT_INTERVAL);
        assert_eq!(t.temporality, Temporality::Cumulative);
        // gRPC takes the base as it is.
        let t = target(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]);
        assert_eq!(t.otlp.endpoint, "http://collector:4317");
        assert_eq!(t.otlp.protocol, Protocol::Grpc);
    }

    #[test]
    fn metric_variables_win_over_the_shared_ones() {
        let t = target(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://b:9000/custom",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-a=1"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-b=2"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
        ]);
        assert_eq!(t.otlp.endpoint, "http://b:9000/custom");
        assert_eq!(t.otlp.protocol, Protocol::HttpProtobuf);
        assert_eq!(t.otlp.headers, vec![("x-b".to_string(), "2".to_string())]);
        assert_eq!(t.interval, Duration::from_millis(1500));
        assert_eq!(t.temporality, Temporality::Delta);
    }

    #[test]
    fn config_keys_win_over_the_environment() {
        let mut export = ExportConfig::default();
        export.otlp.endpoint = Some("http://cfg:4317".into());
        let mut metrics = MetricsConfig::default();
        metrics.otlp.interval_ms = Some(250);
        metrics.otlp.temporality = Some(Temporality::Delta);
        let t = resolve(
            &export,
            &metrics,
            &[
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://env:4317"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
                (
                    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                    "cumulative",
                ),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.otlp.endpoint, "http://cfg:4317");
        assert_eq!(t.interval, Duration::from_millis(250));
        assert_eq!(t.temporality, Temporality::Delta);
        metrics.otlp.endpoint = Some("http://full:4317".into());
        let t = resolve(&export, &metrics, &[]).unwrap().unwrap();
        assert_eq!(t.otlp.endpoint, "http://full:4317");
    }

    #[test]
    fn tenant_metric_routes() {
        use crate::config::TenantRoute;
        let mut export = ExportConfig::default();
        export.otlp.protocol = Some(Protocol::HttpProtobuf);
        export.otlp.timeout_ms = 1234;
        export.tenants = [
            (
                "acme",
                TenantRoute {
                    endpoint: Some("http://acme:4318".into()),
                    headers: [("X-Scope-OrgID".to_string(), "${tenant}".to_string())].into(),
                    ..TenantRoute::default()
                },
            ),
            (
                "globex",
                TenantRoute {
                    endpoint: Some("http://globex:4318".into()),
                    metrics_endpoint: Some("http://globex:9090/otlp/v1/metrics".into()),
                    protocol: Some(Protocol::Grpc),
                    ..TenantRoute::default()
                },
            ),
            (
                "initech",
                TenantRoute {
                    traces_endpoint: Some("http://initech:4318/v1/traces".into()),
                    ..TenantRoute::default()
                },
            ),
        ]
        .into_iter()
        .map(|(id, r)| (id.to_string(), r))
        .collect();
        let mut metrics = MetricsConfig::default();
        metrics.otlp.interval_ms = Some(500);
        let routes = resolve_tenant_metrics_targets(&export, &metrics, &env(&[])).unwrap();
        let ids: Vec<&str> = routes.iter().map(|(t, _)| t.as_str()).collect();
        // initech routes spans only.
        assert_eq!(ids, ["acme", "globex"]);
        let acme = &routes[0].1;
        assert_eq!(acme.otlp.endpoint, "http://acme:4318/v1/metrics");
        assert_eq!(acme.otlp.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            acme.otlp.headers,
            [("x-scope-orgid".to_string(), "acme".to_string())]
        );
        assert_eq!(acme.otlp.timeout, Duration::from_millis(1234));
        assert_eq!(acme.interval, Duration::from_millis(500));
        let globex = &routes[1].1;
        assert_eq!(globex.otlp.endpoint, "http://globex:9090/otlp/v1/metrics");
        assert_eq!(globex.otlp.protocol, Protocol::Grpc);
        // No default endpoint: the tenants' routes still go.
        assert_eq!(resolve(&export, &metrics, &[]).unwrap(), None);
        // Off is off for every route.
        let none = env(&[("OTEL_METRICS_EXPORTER", "none")]);
        assert!(
            resolve_tenant_metrics_targets(&export, &metrics, &none)
                .unwrap()
                .is_empty()
        );
        metrics.otlp.enabled = false;
        assert!(
            resolve_tenant_metrics_targets(&export, &metrics, &env(&[]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn turned_off() {
        let shared = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317")];
        let mut metrics = MetricsConfig::default();
        metrics.otlp.enabled = false;
        assert_eq!(
            resolve(&ExportConfig::default(), &metrics, &shared).unwrap(),
            None
        );
        let none = [shared[0], ("OTEL_METRICS_EXPORTER", "none")];
        assert_eq!(
            resolve(&ExportConfig::default(), &MetricsConfig::default(), &none).unwrap(),
            None
        );
        let both = [shared[0], ("OTEL_METRICS_EXPORTER", "prometheus,otlp")];
        assert!(
            resolve(&ExportConfig::default(), &MetricsConfig::default(), &both)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317");
        for (pairs, words) in [
            (
                vec![base, ("OTEL_METRIC_EXPORT_INTERVAL", "soon")],
                "OTEL_METRIC_EXPORT_INTERVAL",
            ),
            (
                vec![
                    base,
                    (
                        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                        "sometimes",
                    ),
                ],
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            ),
            (
                vec![base, ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json")],
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "collector:4317")],
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            ),
        ] {
            let err = resolve(&ExportConfig::default(), &MetricsConfig::default(), &pairs)
                .unwrap_err()
                .to_string();
            assert!(err.contains(words), "{err}");
        }
    }
}
