//! Metric data points as the receiver stores them: one [`ReceivedPoint`]
//! per data point of an OTLP export request, with its resource and metric.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{exemplar, metric, number_data_point};

use crate::receiver::{Value, Via};

/// One exemplar: trace and span ids (lower-case hex) and the value.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedExemplar {
    pub trace_id: String,
    pub span_id: String,
    pub value: f64,
    pub time_ns: u64,
}

/// What a data point holds.
#[derive(Clone, Debug, PartialEq)]
pub enum PointData {
    Histogram {
        count: u64,
        sum: Option<f64>,
        bucket_counts: Vec<u64>,
        bounds: Vec<f64>,
        min: Option<f64>,
        max: Option<f64>,
    },
    ExponentialHistogram {
        count: u64,
        sum: Option<f64>,
        scale: i32,
        zero_count: u64,
        positive: Vec<u64>,
    },
    Sum {
        value: f64,
        monotonic: bool,
    },
    Gauge {
        value: f64,
    },
}

/// One data point with its metric and resource.
#[derive(Clone, Debug)]
pub struct ReceivedPoint {
    pub via: Via,
    pub resource: HashMap<String, Value>,
    pub scope: String,
    pub name: String,
    pub unit: String,
    /// 1 delta, 2 cumulative, 0 for gauges.
    pub temporality: i32,
    pub attributes: HashMap<String, Value>,
    pub start_ns: u64,
    pub time_ns: u64,
    pub data: PointData,
    pub exemplars: Vec<ReceivedExemplar>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), Value::from_any(kv.value.as_ref())))
        .collect()
}

fn exemplars(list: &[opentelemetry_proto::tonic::metrics::v1::Exemplar]) -> Vec<ReceivedExemplar> {
    list.iter()
        .map(|e| ReceivedExemplar {
            trace_id: hex(&e.trace_id),
            span_id: hex(&e.span_id),
            value: match e.value {
                Some(exemplar::Value::AsDouble(v)) => v,
                Some(exemplar::Value::AsInt(v)) => v as f64,
                None => f64::NAN,
            },
            time_ns: e.time_unix_nano,
        })
        .collect()
}

fn number(v: Option<number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => f64::NAN,
    }
}

/// Flattens one export request into data points.
pub fn flatten(req: &ExportMetricsServiceRequest, via: Via) -> Vec<ReceivedPoint> {
    let mut out = Vec::new();
    for rm in &req.resource_metrics {
        let resource = rm
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for sm in &rm.scope_metrics {
            let scope = sm
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for m in &sm.metrics {
                let base = |temporality: i32,
                            a: &[KeyValue],
                            start_ns: u64,
                            time_ns: u64,
                            data: PointData,
                            ex: Vec<ReceivedExemplar>| ReceivedPoint {
                    via,
                    resource: resource.clone(),
                    scope: scope.clone(),
                    name: m.name.clone(),
                    unit: m.unit.clone(),
                    temporality,
                    attributes: attrs(a),
                    start_ns,
                    time_ns,
                    data,
                    exemplars: ex,
                };
                match &m.data {
                    Some(metric::Data::Histogram(h)) => {
                        for p in &h.data_points {
                            out.push(base(
                                h.aggregation_temporality,
                                &p.attributes,
                                p.start_time_unix_nano,
                                p.time_unix_nano,
                                PointData::Histogram {
                                    count: p.count,
                                    sum: p.sum,
                                    bucket_counts: p.bucket_counts.clone(),
                                    bounds: p.explicit_bounds.clone(),
                                    min: p.min,
                                    max: p.max,
                                },
                                exemplars(&p.exemplars),
                            ));
                        }
                    }
                    Some(metric::Data::ExponentialHistogram(h)) => {
                        for p in &h.data_points {
                            out.push(base(
                                h.aggregation_temporality,
                                &p.attributes,
                                p.start_time_unix_nano,
                                p.time_unix_nano,
                                PointData::ExponentialHistogram {
                                    count: p.count,
                                    sum: p.sum,
                                    scale: p.scale,
                                    zero_count: p.zero_count,
                                    positive: p
                                        .positive
                                        .as_ref()
                                        .map(|b| b.bucket_counts.clone())
                                        .unwrap_or_default(),
                                },
                                exemplars(&p.exemplars),
                            ));
                        }
                    }
                    Some(metric::Data::Sum(s)) => {
                        for p in &s.data_points {
                            out.push(base(
                                s.aggregation_temporality,
                                &p.attributes,
                                p.start_time_unix_nano,
                                p.time_unix_nano,
                                PointData::Sum {
                                    value: number(p.value),
                                    monotonic: s.is_monotonic,
                                },
                                exemplars(&p.exemplars),
                            ));
                        }
                    }
                    Some(metric::Data::Gauge(g)) => {
                        for p in &g.data_points {
                            out.push(base(
                                0,
                                &p.attributes,
                                p.start_time_unix_nano,
                                p.time_unix_nano,
                                PointData::Gauge {
                                    value: number(p.value),
                                },
                                exemplars(&p.exemplars),
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

impl ReceivedPoint {
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }

    pub fn attr_int(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(Value::as_int)
    }

    pub fn service(&self) -> Option<&str> {
        self.resource.get("service.name").and_then(Value::as_str)
    }

    pub fn pid(&self) -> Option<u32> {
        self.resource
            .get("process.pid")
            .and_then(Value::as_int)
            .and_then(|p| u32::try_from(p).ok())
    }

    /// The series identity: resource instance, metric and attributes.
    pub fn series_key(&self) -> String {
        let mut a: Vec<String> = self
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        a.sort();
        let instance = self
            .resource
            .get("service.instance.id")
            .map(std::string::ToString::to_string)
            .unwrap_or_default();
        format!("{instance}|{}|{}", self.name, a.join(","))
    }

    /// Count of a histogram point.
    pub fn count(&self) -> Option<u64> {
        match &self.data {
            PointData::Histogram { count, .. } | PointData::ExponentialHistogram { count, .. } => {
                Some(*count)
            }
            _ => None,
        }
    }

    /// Sum of a histogram point, or the value of a sum or gauge.
    pub fn value(&self) -> Option<f64> {
        match &self.data {
            PointData::Histogram { sum, .. } | PointData::ExponentialHistogram { sum, .. } => *sum,
            PointData::Sum { value, .. } | PointData::Gauge { value } => Some(*value),
        }
    }

    /// One line for failure messages.
    pub fn compact(&self) -> String {
        let mut a: Vec<String> = self
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        a.sort();
        let data = match &self.data {
            PointData::Histogram {
                count,
                sum,
                bucket_counts,
                ..
            } => format!("count={count} sum={sum:?} buckets={bucket_counts:?}"),
            other => format!("{other:?}"),
        };
        format!(
            "{} svc={} pid={} {{{}}} {data} exemplars={}",
            self.name,
            self.service().unwrap_or("-"),
            self.pid()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            a.join(","),
            self.exemplars.len()
        )
    }
}

/// The newest point of every series among `points` (cumulative export
/// repeats every series each time).
pub fn latest(points: &[ReceivedPoint]) -> Vec<ReceivedPoint> {
    let mut by: HashMap<String, ReceivedPoint> = HashMap::new();
    for p in points {
        let key = p.series_key();
        match by.get(&key) {
            Some(old) if old.time_ns > p.time_ns => {}
            _ => {
                by.insert(key, p.clone());
            }
        }
    }
    let mut v: Vec<ReceivedPoint> = by.into_values().collect();
    v.sort_by_key(ReceivedPoint::series_key);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
    use opentelemetry_proto::tonic::metrics::v1::{
        Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn request(time: u64) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", any_value::Value::StringValue("shop".into())),
                        kv("process.pid", any_value::Value::IntValue(42)),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        Metric {
                            name: "http.server.request.duration".into(),
                            unit: "s".into(),
                            data: Some(metric::Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint {
                                    attributes: vec![kv(
                                        "http.route",
                                        any_value::Value::StringValue("/a".into()),
                                    )],
                                    time_unix_nano: time,
                                    count: 3,
                                    sum: Some(0.5),
                                    bucket_counts: vec![2, 1],
                                    explicit_bounds: vec![0.1],
                                    ..Default::default()
                                }],
                                aggregation_temporality: 2,
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "sonde.events.read".into(),
                            data: Some(metric::Data::Sum(Sum {
                                data_points: vec![NumberDataPoint {
                                    time_unix_nano: time,
                                    value: Some(number_data_point::Value::AsDouble(7.0)),
                                    ..Default::default()
                                }],
                                aggregation_temporality: 2,
                                is_monotonic: true,
                            })),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn flattens_and_keeps_the_newest_point() {
        let mut points = flatten(&request(10), Via::Grpc);
        points.extend(flatten(&request(20), Via::Http));
        assert_eq!(points.len(), 4);
        let newest = latest(&points);
        assert_eq!(newest.len(), 2);
        let h = newest
            .iter()
            .find(|p| p.name == "http.server.request.duration")
            .unwrap();
        assert_eq!(h.time_ns, 20);
        assert_eq!((h.count(), h.value()), (Some(3), Some(0.5)));
        assert_eq!(h.attr_str("http.route"), Some("/a"));
        assert_eq!((h.service(), h.pid()), (Some("shop"), Some(42)));
        let s = newest
            .iter()
            .find(|p| p.name == "sonde.events.read")
            .unwrap();
        assert_eq!(s.value(), Some(7.0));
    }

    #[test]
    fn receiver_takes_metrics_over_grpc_and_http() {
        let rx = crate::Receiver::start().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let endpoint = rx.grpc_endpoint();
        rt.block_on(async {
            let mut client = MetricsServiceClient::connect(endpoint).await.unwrap();
            client.export(request(1)).await.unwrap();
        });
        let body = request(2).encode_to_vec();
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", rx.http_port())).unwrap();
        let head = format!(
            "POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(&body).unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(rx.wait_points(Duration::from_secs(5), |p| p.len() == 4));
        assert_eq!(rx.metric_requests(), 2);
        let vias: Vec<Via> = rx.points().iter().map(|p| p.via).collect();
        assert!(vias.contains(&Via::Grpc) && vias.contains(&Via::Http));
        assert!(rx.errors().is_empty(), "{:?}", rx.errors());
    }
}
