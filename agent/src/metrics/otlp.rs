//! Snapshots in the OTLP metrics data model (`opentelemetry-proto`
//! messages), one `ResourceMetrics` per process, split into requests of
//! bounded size.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar as PExemplar, ExponentialHistogram,
    ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, exemplar, exponential_histogram_data_point, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource as PResource;

use super::attrs::{Key, OwnedVal};
use super::catalog::Instrument;
use super::hist::RawUnit;
use super::store::{Exemplar, MetricSnap, Point, PointValue, Snapshot, Temporality};
use crate::enrich::Resource;
use crate::span::model::AttrValue;

/// Data points per export request, at most; a snapshot with more is sent
/// in several requests (collectors refuse messages over 4 MiB by default,
/// and a smaller request keeps the agent's memory small).
pub const MAX_POINTS_PER_REQUEST: usize = 500;

/// Series read from the store at a time while a request is gathered.
pub const SERIES_PER_PART: usize = 100;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn resource(r: &Resource) -> PResource {
    PResource {
        attributes: r
            .attributes
            .iter()
            .map(|(k, v)| {
                kv(
                    k,
                    match v {
                        AttrValue::Str(s) => any_value::Value::StringValue(s.to_string()),
                        AttrValue::Int(i) => any_value::Value::IntValue(*i),
                        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
                    },
                )
            })
            .collect(),
        ..Default::default()
    }
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

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "sonde".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
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

/// One metric with the points `points` (a slice of `m.points`).
fn metric(m: &MetricSnap, points: &[Point], time_ns: u64, t: Temporality) -> Metric {
    let number = |p: &Point, v: f64| NumberDataPoint {
        attributes: attributes(&p.attrs),
        start_time_unix_nano: p.start_ns,
        time_unix_nano: time_ns,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    };
    let data = match m.instrument {
        Instrument::Counter => metric::Data::Sum(Sum {
            data_points: points
                .iter()
                .filter_map(|p| match p.value {
                    PointValue::Sum(v) | PointValue::Gauge(v) => Some(number(p, v)),
                    _ => None,
                })
                .collect(),
            aggregation_temporality: temporality(t),
            is_monotonic: true,
        }),
        Instrument::Gauge => metric::Data::Gauge(Gauge {
            data_points: points
                .iter()
                .filter_map(|p| match p.value {
                    PointValue::Sum(v) | PointValue::Gauge(v) => Some(number(p, v)),
                    _ => None,
                })
                .collect(),
        }),
        Instrument::Histogram => {
            let exponential = points
                .iter()
                .any(|p| matches!(p.value, PointValue::Exponential(_)));
            if exponential {
                metric::Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: points
                        .iter()
                        .filter_map(|p| match &p.value {
                            PointValue::Exponential(h) => Some(ExponentialHistogramDataPoint {
                                attributes: attributes(&p.attrs),
                                start_time_unix_nano: p.start_ns,
                                time_unix_nano: time_ns,
                                count: h.count,
                                sum: Some(m.raw.sum_to_unit(h.sum)),
                                scale: h.scale,
                                zero_count: h.zero_count,
                                positive: Some(exponential_histogram_data_point::Buckets {
                                    offset: h.offset,
                                    bucket_counts: h.counts.clone(),
                                }),
                                negative: None,
                                exemplars: exemplars(&p.exemplars, m.raw),
                                min: (t == Temporality::Cumulative && h.count > 0)
                                    .then(|| m.raw.to_unit(h.min)),
                                max: (t == Temporality::Cumulative && h.count > 0)
                                    .then(|| m.raw.to_unit(h.max)),
                                ..Default::default()
                            }),
                            _ => None,
                        })
                        .collect(),
                    aggregation_temporality: temporality(t),
                })
            } else {
                metric::Data::Histogram(Histogram {
                    data_points: points
                        .iter()
                        .filter_map(|p| match &p.value {
                            PointValue::Explicit { bounds, hist } => Some(HistogramDataPoint {
                                attributes: attributes(&p.attrs),
                                start_time_unix_nano: p.start_ns,
                                time_unix_nano: time_ns,
                                count: hist.count,
                                sum: Some(m.raw.sum_to_unit(hist.sum)),
                                bucket_counts: hist.counts.to_vec(),
                                explicit_bounds: bounds.values().to_vec(),
                                exemplars: exemplars(&p.exemplars, m.raw),
                                // Min and max cover the whole series, so they
                                // only go with cumulative points.
                                min: (t == Temporality::Cumulative && hist.count > 0)
                                    .then(|| m.raw.to_unit(hist.min)),
                                max: (t == Temporality::Cumulative && hist.count > 0)
                                    .then(|| m.raw.to_unit(hist.max)),
                                ..Default::default()
                            }),
                            _ => None,
                        })
                        .collect(),
                    aggregation_temporality: temporality(t),
                })
            }
        }
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
    req.resource_metrics.push(ResourceMetrics {
        resource: Some(resource(r)),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(scope()),
            metrics,
            ..Default::default()
        }],
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::hist::{Bounds, Explicit};
    use crate::metrics::store::ResourceSnap;
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
}
