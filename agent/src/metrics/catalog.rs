//! Every metric the agent produces: name, unit, instrument, the attributes a
//! span contributes, and its Prometheus name.
//!
//! Prometheus names follow the OpenTelemetry-to-Prometheus rules (the ones
//! the Collector's Prometheus exporter applies), so a dashboard works the
//! same whether it reads the agent's `/metrics` endpoint or metrics that
//! went through a collector: dots become underscores, the unit is appended
//! (`_seconds`, `_bytes`) unless the name already ends with it, and
//! monotonic counters end in `_total`.

use super::attrs::Key;
use super::hist::RawUnit;

/// The kind of instrument behind a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instrument {
    Histogram,
    /// Monotonic sum.
    Counter,
    Gauge,
}

/// Where a request metric's attributes come from and what they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Http,
    Rpc,
    Db,
    /// Service graph edges.
    Graph,
}

/// One metric of the span-derived catalog.
#[derive(Debug, PartialEq)]
pub struct MetricDesc {
    pub id: MetricId,
    /// OpenTelemetry name.
    pub name: &'static str,
    /// UCUM unit.
    pub unit: &'static str,
    pub description: &'static str,
    pub instrument: Instrument,
    pub raw: RawUnit,
    /// Whether these are sizes (their buckets come from `size_buckets`).
    pub size: bool,
}

macro_rules! catalog {
    ($($id:ident => $name:literal, $unit:literal, $inst:ident, $raw:ident, $size:literal, $desc:literal;)*) => {
        /// Identifies a metric of [`CATALOG`]; its value is the index.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum MetricId { $($id,)* }

        /// The span-derived metrics, in [`MetricId`] order.
        pub static CATALOG: &[MetricDesc] = &[
            $(MetricDesc {
                id: MetricId::$id,
                name: $name,
                unit: $unit,
                description: $desc,
                instrument: Instrument::$inst,
                raw: RawUnit::$raw,
                size: $size,
            },)*
        ];
    };
}

catalog! {
    HttpServerDuration => "http.server.request.duration", "s", Histogram, Nanos, false,
        "Duration of HTTP server requests, first request byte read to last response byte written.";
    HttpClientDuration => "http.client.request.duration", "s", Histogram, Nanos, false,
        "Duration of HTTP client requests, first request byte written to last response byte read.";
    HttpServerRequestSize => "http.server.request.body.size", "By", Histogram, One, true,
        "Size of HTTP server request bodies, when the request said it.";
    HttpServerResponseSize => "http.server.response.body.size", "By", Histogram, One, true,
        "Size of HTTP server response bodies, when the response said it.";
    HttpClientRequestSize => "http.client.request.body.size", "By", Histogram, One, true,
        "Size of HTTP client request bodies, when the request said it.";
    HttpClientResponseSize => "http.client.response.body.size", "By", Histogram, One, true,
        "Size of HTTP client response bodies, when the response said it.";
    RpcServerDuration => "rpc.server.duration", "s", Histogram, Nanos, false,
        "Duration of RPCs served.";
    RpcClientDuration => "rpc.client.duration", "s", Histogram, Nanos, false,
        "Duration of RPCs made.";
    DbClientDuration => "db.client.operation.duration", "s", Histogram, Nanos, false,
        "Duration of database operations, seen from the client.";
    DbServerDuration => "db.server.operation.duration", "s", Histogram, Nanos, false,
        "Duration of database operations, seen from the database server.";
    GraphRequests => "traces_service_graph_request_total", "{request}", Counter, One, false,
        "Requests between two services (client and server labels).";
    GraphFailed => "traces_service_graph_request_failed_total", "{request}", Counter, One, false,
        "Failed requests between two services (either side saw an error).";
    GraphServerSeconds => "traces_service_graph_request_server_seconds", "s", Histogram, Nanos, false,
        "Duration of requests between two services, seen by the server.";
    GraphClientSeconds => "traces_service_graph_request_client_seconds", "s", Histogram, Nanos, false,
        "Duration of requests between two services, seen by the client.";
}

impl MetricId {
    pub fn desc(self) -> &'static MetricDesc {
        &CATALOG[self as usize]
    }

    pub fn family(self) -> Family {
        use MetricId::*;
        match self {
            HttpServerDuration
            | HttpClientDuration
            | HttpServerRequestSize
            | HttpServerResponseSize
            | HttpClientRequestSize
            | HttpClientResponseSize => Family::Http,
            RpcServerDuration | RpcClientDuration => Family::Rpc,
            DbClientDuration | DbServerDuration => Family::Db,
            GraphRequests | GraphFailed | GraphServerSeconds | GraphClientSeconds => Family::Graph,
        }
    }
}

/// The histogram metrics whose buckets `metrics.buckets` may set.
pub fn histogram_names() -> impl Iterator<Item = &'static str> {
    CATALOG
        .iter()
        .filter(|d| d.instrument == Instrument::Histogram)
        .map(|d| d.name)
}

/// Attributes of HTTP server metrics, in the order they are kept.
pub const HTTP_SERVER_KEYS: &[Key] = &[
    Key::Method,
    Key::Route,
    Key::StatusCode,
    Key::ErrorType,
    Key::UrlScheme,
    Key::ProtocolName,
    Key::ProtocolVersion,
];
/// Attributes of HTTP client metrics.
pub const HTTP_CLIENT_KEYS: &[Key] = &[
    Key::Method,
    Key::StatusCode,
    Key::ErrorType,
    Key::ServerAddress,
    Key::ServerPort,
    Key::UrlScheme,
    Key::ProtocolName,
    Key::ProtocolVersion,
];
/// Attributes of RPC server metrics.
pub const RPC_SERVER_KEYS: &[Key] = &[
    Key::RpcSystem,
    Key::RpcService,
    Key::RpcMethod,
    Key::GrpcStatus,
    Key::ErrorType,
];
/// Attributes of RPC client metrics.
pub const RPC_CLIENT_KEYS: &[Key] = &[
    Key::RpcSystem,
    Key::RpcService,
    Key::RpcMethod,
    Key::GrpcStatus,
    Key::ErrorType,
    Key::ServerAddress,
    Key::ServerPort,
];
/// Attributes of database client metrics.
pub const DB_CLIENT_KEYS: &[Key] = &[
    Key::DbSystem,
    Key::DbOperation,
    Key::DbNamespace,
    Key::DbCollection,
    Key::DbStatus,
    Key::ErrorType,
    Key::ServerAddress,
    Key::ServerPort,
];
/// Attributes of database server metrics.
pub const DB_SERVER_KEYS: &[Key] = &[
    Key::DbSystem,
    Key::DbOperation,
    Key::DbNamespace,
    Key::DbCollection,
    Key::DbStatus,
    Key::ErrorType,
];
/// Attributes of the service graph metrics.
pub const GRAPH_KEYS: &[Key] = &[Key::Client, Key::Server, Key::ConnectionType];

/// One of the agent's own health metrics: (OpenTelemetry name, unit,
/// instrument, description, attribute when the metric is split).
pub type SelfMetric = (
    &'static str,
    &'static str,
    Instrument,
    &'static str,
    Option<Key>,
);

/// The agent's own health metrics.
pub static SELF_METRICS: &[SelfMetric] = &[
    (
        "sonde.events.read",
        "{record}",
        Instrument::Counter,
        "Records read from the kernel ring buffer.",
        None,
    ),
    (
        "sonde.events.excluded",
        "{record}",
        Instrument::Counter,
        "Records of processes the select rules exclude, sent before the kernel muted them.",
        None,
    ),
    (
        "sonde.events.dropped",
        "{record}",
        Instrument::Counter,
        "Records lost, by reason: ringbuf_full (the kernel found no room), slot_taken (two threads shared a pending-call slot) or malformed.",
        Some(Key::Reason),
    ),
    (
        "sonde.events.unseen",
        "{call}",
        Instrument::Counter,
        "Socket sends and receives not recorded, by reason: not_a_syscall (io_uring, or socket I/O a kernel thread does; socket-layer path only).",
        Some(Key::Reason),
    ),
    (
        "sonde.calls.cut",
        "{call}",
        Instrument::Counter,
        "Calls on connections copied whole (Redis) that moved more than the kernel copies in pieces (64 KiB): the rest of each is not captured.",
        None,
    ),
    (
        "sonde.captured",
        "By",
        Instrument::Counter,
        "Payload bytes the kernel copied.",
        None,
    ),
    (
        "sonde.not_captured",
        "By",
        Instrument::Counter,
        "Payload bytes that moved on traced sockets but were not copied (skipped by length).",
        None,
    ),
    (
        "sonde.connections.tracked",
        "{connection}",
        Instrument::Gauge,
        "Connections in the agent's table now.",
        None,
    ),
    (
        "sonde.connections.evicted",
        "{connection}",
        Instrument::Counter,
        "Connections forgotten because the table was full.",
        None,
    ),
    (
        "sonde.parse.errors",
        "{error}",
        Instrument::Counter,
        "Times a protocol parser lost sync, by protocol.",
        Some(Key::Protocol),
    ),
    (
        "sonde.parse.skipped",
        "By",
        Instrument::Counter,
        "Bytes parsers skipped to find the next message boundary.",
        None,
    ),
    (
        "sonde.requests.unanswered",
        "{request}",
        Instrument::Counter,
        "Requests that never got a response.",
        None,
    ),
    (
        "sonde.responses.unpaired",
        "{response}",
        Instrument::Counter,
        "Responses with no request to pair with.",
        None,
    ),
    (
        "sonde.spans.built",
        "{span}",
        Instrument::Counter,
        "Spans built.",
        None,
    ),
    (
        "sonde.spans.exported",
        "{span}",
        Instrument::Counter,
        "Spans handed to an exporter successfully.",
        None,
    ),
    (
        "sonde.spans.excluded",
        "{span}",
        Instrument::Counter,
        "Spans of processes the select rules exclude, built before their pod was known.",
        None,
    ),
    (
        "sonde.spans.sampled_out",
        "{span}",
        Instrument::Counter,
        "Spans the sample stage did not export; metrics counted them.",
        None,
    ),
    (
        "sonde.spans.dropped",
        "{span}",
        Instrument::Counter,
        "Spans dropped before export, by reason (queue_full).",
        Some(Key::Reason),
    ),
    (
        "sonde.spans.export_failed",
        "{span}",
        Instrument::Counter,
        "Spans lost because an export request failed.",
        None,
    ),
    (
        "sonde.metrics.series",
        "{series}",
        Instrument::Gauge,
        "Metric series held, by metric.",
        Some(Key::Metric),
    ),
    (
        "sonde.metrics.overflow",
        "{measurement}",
        Instrument::Counter,
        "Measurements folded into the otel.metric.overflow series, by metric.",
        Some(Key::Metric),
    ),
    (
        "sonde.metrics.export_failed",
        "{request}",
        Instrument::Counter,
        "OTLP metric export requests that failed.",
        None,
    ),
    (
        "sonde.service_graph.unpaired",
        "{span}",
        Instrument::Counter,
        "Service graph edges recorded with one side only, by the side seen (client or server).",
        Some(Key::Side),
    ),
    (
        "sonde.service_graph.dropped",
        "{span}",
        Instrument::Counter,
        "Spans that stopped waiting for their other half early because the pending table was full.",
        None,
    ),
    (
        "sonde.process.cpu.time",
        "s",
        Instrument::Counter,
        "CPU time the agent used (user and system).",
        None,
    ),
    (
        "sonde.process.memory.rss",
        "By",
        Instrument::Gauge,
        "The agent's resident memory.",
        None,
    ),
];

/// The Prometheus name of an OpenTelemetry metric.
pub fn prometheus_name(name: &str, unit: &str, instrument: Instrument) -> String {
    let mut out = String::with_capacity(name.len() + 16);
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            c
        } else {
            '_'
        };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    let suffix = match unit {
        "s" => Some("seconds"),
        "ms" => Some("milliseconds"),
        "By" => Some("bytes"),
        "1" if instrument == Instrument::Gauge => Some("ratio"),
        _ => None,
    };
    let counter = instrument == Instrument::Counter;
    if counter && out.ends_with("_total") {
        out.truncate(out.len() - "_total".len());
    }
    if let Some(suffix) = suffix
        && !out.ends_with(&format!("_{suffix}"))
    {
        out.push('_');
        out.push_str(suffix);
    }
    if counter {
        out.push_str("_total");
    }
    out
}

/// A label name from an attribute key: anything but letters, digits and `_`
/// becomes `_`; a leading digit or a reserved `__` prefix gets `key_` in front.
pub fn label_name(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.starts_with("__") || out.is_empty() {
        out.insert_str(0, "key_");
    }
    out
}

/// Every series name the Prometheus endpoint can serve: histograms with
/// their `_bucket`, `_sum` and `_count`, counters with `_total`, and
/// `target_info`. Dashboards may only query these.
pub fn prometheus_series_names() -> Vec<String> {
    let mut names = vec!["target_info".to_string()];
    let all = CATALOG
        .iter()
        .map(|d| (d.name, d.unit, d.instrument))
        .chain(SELF_METRICS.iter().map(|m| (m.0, m.1, m.2)));
    for (name, unit, instrument) in all {
        let base = prometheus_name(name, unit, instrument);
        if instrument == Instrument::Histogram {
            for s in ["_bucket", "_sum", "_count"] {
                names.push(format!("{base}{s}"));
            }
        } else {
            names.push(base);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_index_the_catalog() {
        for (i, d) in CATALOG.iter().enumerate() {
            assert_eq!(d.id as usize, i);
            assert_eq!(d.id.desc().name, d.name);
        }
    }

    #[test]
    fn prometheus_names() {
        let cases = [
            (
                "http.server.request.duration",
                "s",
                Instrument::Histogram,
                "http_server_request_duration_seconds",
            ),
            (
                "http.client.response.body.size",
                "By",
                Instrument::Histogram,
                "http_client_response_body_size_bytes",
            ),
            (
                "traces_service_graph_request_total",
                "{request}",
                Instrument::Counter,
                "traces_service_graph_request_total",
            ),
            (
                "traces_service_graph_request_server_seconds",
                "s",
                Instrument::Histogram,
                "traces_service_graph_request_server_seconds",
            ),
            (
                "sonde.events.read",
                "{record}",
                Instrument::Counter,
                "sonde_events_read_total",
            ),
            (
                "sonde.captured",
                "By",
                Instrument::Counter,
                "sonde_captured_bytes_total",
            ),
            (
                "sonde.process.cpu.time",
                "s",
                Instrument::Counter,
                "sonde_process_cpu_time_seconds_total",
            ),
            (
                "sonde.process.memory.rss",
                "By",
                Instrument::Gauge,
                "sonde_process_memory_rss_bytes",
            ),
            ("a..b-c", "1", Instrument::Gauge, "a_b_c_ratio"),
        ];
        for (name, unit, inst, want) in cases {
            assert_eq!(prometheus_name(name, unit, inst), want, "{name}");
        }
    }

    #[test]
    fn label_names() {
        assert_eq!(label_name("http.route"), "http_route");
        assert_eq!(label_name("otel.metric.overflow"), "otel_metric_overflow");
        assert_eq!(label_name("k8s.pod-name"), "k8s_pod_name");
        assert_eq!(label_name("9lives"), "key_9lives");
        assert_eq!(label_name("__x"), "key___x");
    }

    #[test]
    fn series_names_cover_the_catalog() {
        let names = prometheus_series_names();
        for want in [
            "http_server_request_duration_seconds_bucket",
            "http_server_request_duration_seconds_count",
            "traces_service_graph_request_total",
            "traces_service_graph_request_failed_total",
            "traces_service_graph_request_client_seconds_bucket",
            "db_client_operation_duration_seconds_sum",
            "sonde_events_dropped_total",
            "sonde_connections_tracked",
            "target_info",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing");
        }
    }
}

/// The Grafana dashboard in deploy/grafana queries only what the agent exports.
#[cfg(test)]
mod dashboard_tests {
    use super::prometheus_series_names;

    const DASHBOARD: &str = include_str!("../../../deploy/grafana/sonde-dashboard.json");

    /// Words of PromQL that are not metric names when they stand alone
    /// (aggregations may be followed by `by (...)` before their argument).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    /// Keywords followed by a list of label names in parentheses.
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];

    /// The metric names a PromQL expression selects: identifiers that are
    /// not functions, keywords, label names or values, durations or
    /// dashboard variables.
    fn metric_names(expr: &str) -> Vec<String> {
        let b = expr.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        let skip_to = |i: usize, open: u8, close: u8| {
            let mut depth = 0;
            let mut j = i;
            while j < b.len() {
                if b[j] == b'"' {
                    j += 1;
                    while j < b.len() && b[j] != b'"' {
                        j += if b[j] == b'\\' { 2 } else { 1 };
                    }
                } else if b[j] == open {
                    depth += 1;
                } else if b[j] == close {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                j += 1;
            }
            b.len()
        };
        while i < b.len() {
            let c = b[i];
            if c == b'{' {
                i = skip_to(i, b'{', b'}');
            } else if c == b'[' {
                i = skip_to(i, b'[', b']');
            } else if c == b'"' {
                i = skip_to(i, b'"', b'"');
                i = i.max(i + 1);
            } else if c == b'$' {
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
            } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let mut j = i;
                while j < b.len() && b[j] == b' ' {
                    j += 1;
                }
                let call = j < b.len() && b[j] == b'(';
                if LABEL_LISTS.contains(&word) {
                    if call {
                        i = skip_to(j, b'(', b')');
                    }
                } else if !call && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                    out.push(word.to_string());
                }
            } else if c.is_ascii_digit() || c == b'.' {
                // Numbers, including 1e-3 and durations outside brackets.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
        out
    }

    /// Every `expr` in the dashboard and the metric of every
    /// `label_values(metric, label)` variable query.
    fn queries(v: &serde_json::Value, exprs: &mut Vec<String>, variables: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => exprs.push(s.clone()),
                        ("definition", serde_json::Value::String(s)) => variables.push(s.clone()),
                        _ => queries(v, exprs, variables),
                    }
                }
            }
            serde_json::Value::Array(list) => {
                for v in list {
                    queries(v, exprs, variables);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn finds_metric_names_in_promql() {
        let names = metric_names(
            "histogram_quantile(0.99, sum by (service_name, le) (rate(a_bucket{x=\"y{z}\",q!=\"\"}[$__rate_interval]))) / sum without (le) (b_total offset 5m) or on (k) c",
        );
        assert_eq!(names, vec!["a_bucket", "b_total", "c"]);
    }

    #[test]
    fn dashboard_is_valid_and_queries_only_exported_metrics() {
        let dashboard: serde_json::Value =
            serde_json::from_str(DASHBOARD).expect("the dashboard is valid JSON");
        assert!(dashboard["title"].is_string());
        assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() > 10));
        let (mut exprs, mut variables) = (Vec::new(), Vec::new());
        queries(&dashboard, &mut exprs, &mut variables);
        assert!(exprs.len() > 20, "{exprs:?}");
        let exported = prometheus_series_names();
        let mut used = Vec::new();
        for e in &exprs {
            let names = metric_names(e);
            assert!(!names.is_empty(), "no metric in {e:?}");
            used.extend(names);
        }
        for v in &variables {
            let inner = v
                .strip_prefix("label_values(")
                .and_then(|r| r.split(',').next())
                .unwrap_or_else(|| panic!("unexpected variable query {v:?}"));
            used.push(inner.trim().to_string());
        }
        for name in &used {
            assert!(
                exported.contains(name),
                "the dashboard queries {name}, which sonde does not export"
            );
        }
        // The dashboard covers RED, the service graph and the agent's health.
        for want in [
            "http_server_request_duration_seconds_bucket",
            "traces_service_graph_request_total",
            "sonde_events_read_total",
            "sonde_process_memory_rss_bytes",
        ] {
            assert!(
                used.iter().any(|u| u == want),
                "{want} is not on the dashboard"
            );
        }
        // Every panel points at the data source variable.
        for p in dashboard["panels"].as_array().into_iter().flatten() {
            if p["type"] != "row" {
                assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            }
        }
    }
}
