//! The per-node configuration (`sonde run --config PATH`).
//!
//! Every section is optional and every key has a default; an unknown key or a
//! bad value is an error that names the key and its line.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer};

pub use crate::enrich::select::Selection;
pub use crate::enrich::tenant::TenantConfig;
use crate::protocol::{PROTOCOLS, ProtocolSpec};

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    #[serde(deserialize_with = "or_default")]
    pub capture: CaptureConfig,
    #[serde(deserialize_with = "or_default")]
    pub http: HttpConfig,
    #[serde(deserialize_with = "or_default")]
    pub db: DbConfig,
    #[serde(deserialize_with = "or_default")]
    pub export: ExportConfig,
    #[serde(deserialize_with = "or_default")]
    pub metrics: MetricsConfig,
    #[serde(deserialize_with = "or_default")]
    pub sample: SampleConfig,
    #[serde(deserialize_with = "or_default")]
    pub log: LogConfig,
    #[serde(deserialize_with = "or_default")]
    pub kubernetes: KubernetesConfig,
    #[serde(deserialize_with = "or_default")]
    pub containers: ContainersConfig,
    #[serde(deserialize_with = "or_default")]
    pub health: HealthConfig,
    #[serde(deserialize_with = "or_default")]
    pub select: Selection,
    #[serde(deserialize_with = "or_default")]
    pub protocols: ProtocolsConfig,
    #[serde(deserialize_with = "or_default")]
    pub tenants: TenantConfig,
}

/// Which protocols are parsed on this node, by their names in
/// [`PROTOCOLS`]: `protocols: {redis: false}`. A protocol not named is on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProtocolsConfig {
    /// The names of the protocols turned off.
    off: BTreeSet<String>,
}

impl<'de> Deserialize<'de> for ProtocolsConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = ProtocolsConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of protocol names to true or false")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(ProtocolsConfig::default())
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut config = ProtocolsConfig::default();
                while let Some(name) = map.next_key::<String>()? {
                    // Refused at its key, so the error points at its line.
                    if spec(&name).is_none() {
                        static NAMES: std::sync::OnceLock<Vec<&str>> = std::sync::OnceLock::new();
                        let known =
                            NAMES.get_or_init(|| PROTOCOLS.iter().map(|p| p.name).collect());
                        return Err(serde::de::Error::unknown_field(&name, known));
                    }
                    let on: bool = map.next_value()?;
                    config.set(&name, on);
                }
                Ok(config)
            }
        }
        d.deserialize_any(Names)
    }
}

fn spec(name: &str) -> Option<&'static ProtocolSpec> {
    PROTOCOLS.iter().find(|p| p.name == name)
}

impl ProtocolsConfig {
    /// Turns protocol `name` on or off (for code that builds a config).
    pub fn set(&mut self, name: &str, on: bool) {
        if on {
            self.off.remove(name);
        } else {
            self.off.insert(name.to_owned());
        }
    }

    pub fn is_on(&self, name: &str) -> bool {
        !self.off.contains(name)
    }

    /// The protocols on, in detection order.
    pub fn enabled(&self) -> Vec<&'static ProtocolSpec> {
        PROTOCOLS.iter().filter(|p| self.is_on(p.name)).collect()
    }
}

/// The liveness and readiness endpoint (`/healthz`, `/readyz`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// `IP:PORT` to serve it on; off when unset.
    pub listen: Option<String>,
}

/// A section or map written with nothing under it (`capture:` with every
/// key commented out) is null in YAML; it means the defaults.
pub(crate) fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The value of an enum setting from its name as written in the file, for
/// the same setting read from an environment variable.
pub fn from_name<T: for<'de> Deserialize<'de>>(name: &str) -> Option<T> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(name)).ok()
}

/// Kernel-side capture and the connection table.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Bytes copied from each syscall's buffer, 1..=16384.
    pub bytes: u32,
    /// Size of the kernel ring buffer in bytes: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Connections tracked at once, in the kernel and in user space (LRU).
    pub max_connections: u32,
    /// Bytes buffered per stream while a message head is incomplete.
    pub max_buffered_bytes: u32,
    /// The kernel wakes the agent once this many bytes wait in the ring buffer.
    pub wakeup_bytes: u32,
    /// Otherwise the agent looks every this many milliseconds.
    pub poll_interval_ms: u32,
    /// Which kernel hooks capture socket bytes.
    pub path: CapturePath,
}

/// The kernel hooks that capture socket bytes (`capture.path`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CapturePath {
    /// The socket-layer tracepoints where the kernel has them (6.3 and
    /// later), else syscall tracepoints.
    #[default]
    Auto,
    /// The socket-layer tracepoints `sock:sock_send_length` and
    /// `sock:sock_recv_length`; the agent refuses to start without them.
    Socket,
    /// Syscall tracepoints, which every syscall of every process pays for
    /// while they are attached.
    Syscall,
}

impl std::fmt::Display for CapturePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CapturePath::Auto => "auto",
            CapturePath::Socket => "socket",
            CapturePath::Syscall => "syscall",
        })
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            bytes: sonde_common::DEFAULT_CAPTURE,
            ring_buffer_bytes: 4 << 20,
            max_connections: 65536,
            max_buffered_bytes: 16384,
            wakeup_bytes: 256 << 10,
            poll_interval_ms: 50,
            path: CapturePath::Auto,
        }
    }
}

/// HTTP span options.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Record `url.query` (off by default: query strings often carry secrets).
    pub capture_query: bool,
}

/// Database span options.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DbConfig {
    /// Replace literals in `db.query.text` with `?` (on by default: values
    /// in queries are often personal data).
    pub sanitize_query: bool,
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig {
            sanitize_query: true,
        }
    }
}

/// Where spans go.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// Print one line per span on stdout. `None` means: on unless OTLP is configured.
    pub console: Option<bool>,
    #[serde(deserialize_with = "or_default")]
    pub otlp: OtlpConfig,
    /// Spans waiting for export; when full, new spans are dropped and counted.
    pub queue_size: u32,
    /// Tenants' own routes, by tenant id; `otlp` is the route of the rest.
    #[serde(deserialize_with = "or_default")]
    pub tenants: std::collections::BTreeMap<String, TenantRoute>,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            console: None,
            otlp: OtlpConfig::default(),
            queue_size: 8192,
            tenants: Default::default(),
        }
    }
}

/// One tenant's route (`export.tenants.<id>`): its own OTLP destination,
/// queue and retries. Unset numbers and the protocol are those of
/// `export` and `export.otlp`; headers are not inherited (they often carry
/// the default collector's credentials). No environment variable is read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TenantRoute {
    /// Base URL, as `export.otlp.endpoint`.
    pub endpoint: Option<String>,
    /// Full traces URL; wins over `endpoint`.
    pub traces_endpoint: Option<String>,
    /// Full metrics URL; wins over `endpoint`.
    pub metrics_endpoint: Option<String>,
    pub protocol: Option<OtlpProtocol>,
    /// Request headers; `${tenant}` in a value is the tenant id.
    #[serde(deserialize_with = "or_default")]
    pub headers: std::collections::BTreeMap<String, String>,
    pub queue_size: Option<u32>,
    pub batch_size: Option<u32>,
    pub batch_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// The name of the default route in counters (`route="default"`); no
/// tenant route may take it.
pub const DEFAULT_ROUTE: &str = "default";

/// What `${tenant}` in a route's header value stands for.
pub const TENANT_PLACEHOLDER: &str = "${tenant}";

impl TenantRoute {
    /// The route's header values with `${tenant}` replaced by `tenant`.
    pub fn headers_for(&self, tenant: &str) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(k, v)| {
                (
                    k.trim().to_owned(),
                    v.trim().replace(TENANT_PLACEHOLDER, tenant),
                )
            })
            .collect()
    }
}

impl ExportConfig {
    /// The first problem of `export.tenants`, as (key path, message): the
    /// path's parts are kept apart because a tenant id may hold dots.
    pub fn check_tenants(&self) -> Result<(), (Vec<String>, String)> {
        for (id, route) in &self.tenants {
            let at = |key: &str| {
                let mut path = vec!["export".to_owned(), "tenants".to_owned(), id.clone()];
                if !key.is_empty() {
                    path.push(key.to_owned());
                }
                path
            };
            if id.trim().is_empty() {
                return Err((
                    vec!["export".to_owned(), "tenants".to_owned()],
                    "a tenant id is empty".into(),
                ));
            }
            if id.trim() != id {
                return Err((
                    at(""),
                    "the tenant id has spaces around it; tenant ids are matched as written \
                     without them"
                        .into(),
                ));
            }
            if id == DEFAULT_ROUTE {
                return Err((
                    at(""),
                    "`default` names the default route (export.otlp), where spans of tenants \
                     without a route go; give this route the tenant's own id"
                        .into(),
                ));
            }
            let endpoints = [
                ("endpoint", &route.endpoint),
                ("traces_endpoint", &route.traces_endpoint),
                ("metrics_endpoint", &route.metrics_endpoint),
            ];
            if endpoints
                .iter()
                .all(|(_, v)| v.as_deref().is_none_or(|v| v.trim().is_empty()))
            {
                return Err((
                    at(""),
                    "names no endpoint: set endpoint (or traces_endpoint, metrics_endpoint)".into(),
                ));
            }
            for (key, value) in endpoints {
                if let Some(value) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                    crate::export::otlp::endpoint_problem(value).map_err(|m| (at(key), m))?;
                }
            }
            let protocol = route
                .protocol
                .or(self.otlp.protocol)
                .unwrap_or(OtlpProtocol::Grpc);
            for (name, value) in route.headers_for(id) {
                crate::export::otlp::header_problem(&name, &value, protocol)
                    .map_err(|m| (at("headers"), m))?;
            }
            for (key, value) in [
                ("queue_size", route.queue_size),
                ("batch_size", route.batch_size),
            ] {
                if value == Some(0) {
                    return Err((at(key), "0 is out of range (at least 1)".into()));
                }
            }
        }
        Ok(())
    }
}

/// OTLP exporter. Each key falls back to the standard `OTEL_EXPORTER_OTLP_*`
/// environment variable when unset.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// Base endpoint, e.g. `http://127.0.0.1:4317` (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub endpoint: Option<String>,
    /// Full traces endpoint (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    pub traces_endpoint: Option<String>,
    /// Transport (`OTEL_EXPORTER_OTLP_PROTOCOL`), default `grpc`.
    pub protocol: Option<OtlpProtocol>,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`, `k=v,k2=v2`).
    #[serde(deserialize_with = "or_default")]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Spans per export request.
    pub batch_size: u32,
    /// Longest a span waits before its batch is sent, in milliseconds.
    pub batch_timeout_ms: u64,
    /// Per-request timeout, in milliseconds.
    pub timeout_ms: u64,
}

/// The OTLP transport.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: None,
            traces_endpoint: None,
            protocol: None,
            headers: Default::default(),
            batch_size: 512,
            batch_timeout_ms: 1000,
            timeout_ms: 10000,
        }
    }
}

/// RED metrics and the service graph, aggregated from every span.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Aggregate metrics at all (off: no metric costs, no endpoint).
    pub enabled: bool,
    /// Attribute sets kept per metric; the rest are folded into one
    /// `otel.metric.overflow = true` series and counted.
    pub max_series_per_metric: u32,
    /// Series not updated for this many seconds are forgotten (0: never).
    pub idle_series_secs: u64,
    /// Bucket boundaries below, or base-2 exponential buckets.
    pub histogram: Histogram,
    /// Most buckets an exponential histogram keeps.
    pub exponential_max_size: u32,
    /// Boundaries of duration histograms, in seconds.
    pub duration_buckets: Vec<f64>,
    /// Boundaries of body size histograms, in bytes.
    pub size_buckets: Vec<f64>,
    /// Boundaries for one metric, by its name; wins over the two above.
    #[serde(deserialize_with = "or_default")]
    pub buckets: std::collections::BTreeMap<String, Vec<f64>>,
    /// Keep the trace and span id of a recent span per bucket.
    pub exemplars: bool,
    #[serde(deserialize_with = "or_default")]
    pub service_graph: ServiceGraphConfig,
    #[serde(deserialize_with = "or_default")]
    pub otlp: MetricsOtlpConfig,
    #[serde(deserialize_with = "or_default")]
    pub prometheus: PrometheusConfig,
    /// Seconds between the console table of the busiest routes (printed
    /// when export.console is on; 0 turns it off).
    pub console_interval_secs: u64,
}

/// How duration and size histograms bucket their values.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Histogram {
    /// Fixed boundaries (`duration_buckets`, `size_buckets`, `buckets`).
    #[default]
    Explicit,
    /// Base-2 exponential (native) histograms.
    Exponential,
}

/// The OpenTelemetry default duration boundaries for HTTP, RPC and database
/// durations, in seconds.
pub const DEFAULT_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Body size boundaries, in bytes: powers of four from 16 B to 16 MiB.
pub const DEFAULT_SIZE_BUCKETS: [f64; 12] = [
    0.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0,
];

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            max_series_per_metric: 2000,
            idle_series_secs: 900,
            histogram: Histogram::Explicit,
            exponential_max_size: 160,
            duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            size_buckets: DEFAULT_SIZE_BUCKETS.to_vec(),
            buckets: Default::default(),
            exemplars: true,
            service_graph: ServiceGraphConfig::default(),
            otlp: MetricsOtlpConfig::default(),
            prometheus: PrometheusConfig::default(),
            console_interval_secs: 60,
        }
    }
}

/// Service graph pairing.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceGraphConfig {
    pub enabled: bool,
    /// How long one side of a request waits for the other, in milliseconds.
    pub wait_ms: u64,
    /// Sides waiting at once; beyond, the oldest stops waiting.
    pub max_pending: u32,
}

impl Default for ServiceGraphConfig {
    fn default() -> Self {
        ServiceGraphConfig {
            enabled: true,
            wait_ms: 2000,
            max_pending: 4096,
        }
    }
}

/// OTLP metric export. Endpoint, protocol, headers and timeout come from
/// `export.otlp` and the `OTEL_EXPORTER_OTLP_*` variables, as for spans.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsOtlpConfig {
    /// Export metrics over OTLP whenever an OTLP endpoint is known.
    pub enabled: bool,
    /// Full metrics URL (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`).
    pub endpoint: Option<String>,
    /// Milliseconds between exports (`OTEL_METRIC_EXPORT_INTERVAL`, else 60000).
    pub interval_ms: Option<u64>,
    /// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`, else cumulative.
    pub temporality: Option<Temporality>,
}

/// How metric points report counts.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    /// Totals since each series started.
    Cumulative,
    /// What changed since the last delta snapshot (series with no change
    /// are left out).
    Delta,
}

impl Default for MetricsOtlpConfig {
    fn default() -> Self {
        MetricsOtlpConfig {
            enabled: true,
            endpoint: None,
            interval_ms: None,
            temporality: None,
        }
    }
}

/// The Prometheus/OpenMetrics scrape endpoint.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// `HOST:PORT` to serve `/metrics` on (a bare `PORT` or `:PORT` means
    /// 127.0.0.1); null: no endpoint. `sonde run --prometheus` wins.
    pub listen: Option<String>,
}

/// Parses a listen address: `HOST:PORT` with an IP address or `localhost`,
/// `[V6]:PORT`, or a bare `PORT` / `:PORT` (loopback).
pub fn parse_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    let t = text.trim();
    let port_only = t.strip_prefix(':').unwrap_or(t);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = t.strip_prefix("localhost:")
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    t.parse::<SocketAddr>().map_err(|_| {
        format!(
            "{text:?} is not a listen address; write IP:PORT (127.0.0.1:9464, [::1]:9464, \
             0.0.0.0:9464) or a port alone for loopback"
        )
    })
}

fn check_buckets(key: &'static str, values: &[f64]) -> Result<(), (&'static str, String)> {
    if values.is_empty() {
        return Err((key, "must hold at least one boundary".to_string()));
    }
    for (i, v) in values.iter().enumerate() {
        if !v.is_finite() || *v < 0.0 {
            return Err((key, format!("{v} is not a finite number of at least 0")));
        }
        if i > 0 && *v <= values[i - 1] {
            return Err((
                key,
                format!("boundaries must increase ({} then {v})", values[i - 1]),
            ));
        }
    }
    Ok(())
}

impl MetricsConfig {
    fn check(&self) -> Result<(), (&'static str, String)> {
        at_least(
            "metrics.max_series_per_metric",
            self.max_series_per_metric.into(),
            1,
        )?;
        if !(2..=16384).contains(&self.exponential_max_size) {
            return Err((
                "metrics.exponential_max_size",
                format!("{} is out of range (2..=16384)", self.exponential_max_size),
            ));
        }
        check_buckets("metrics.duration_buckets", &self.duration_buckets)?;
        check_buckets("metrics.size_buckets", &self.size_buckets)?;
        let known: Vec<&str> = crate::metrics::catalog::histogram_names().collect();
        for (name, values) in &self.buckets {
            if !known.contains(&name.as_str()) {
                return Err((
                    "metrics.buckets",
                    format!(
                        "{name:?} is not a histogram sonde makes (expected one of: {})",
                        known.join(", ")
                    ),
                ));
            }
            check_buckets("metrics.buckets", values)?;
        }
        at_least(
            "metrics.service_graph.wait_ms",
            self.service_graph.wait_ms,
            1,
        )?;
        at_least(
            "metrics.service_graph.max_pending",
            self.service_graph.max_pending.into(),
            1,
        )?;
        if let Some(ms) = self.otlp.interval_ms {
            at_least("metrics.otlp.interval_ms", ms, 100)?;
        }
        if let Some(listen) = &self.prometheus.listen {
            parse_listen(listen).map_err(|e| ("metrics.prometheus.listen", e))?;
        }
        Ok(())
    }
}

/// Which spans are exported (metrics always see every span).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SampleConfig {
    /// Off: every span is exported.
    pub enabled: bool,
    /// Ordinary spans kept per second for each (process, span name, kind).
    pub per_operation_per_second: u32,
    /// All spans kept per second on this node, errors and slow ones
    /// included; ordinary spans fill at most half of it.
    pub max_per_second: u32,
    /// Spans at least this long are kept like errors.
    pub slow_ms: u32,
    /// All spans kept per second of one tenant; none: its fair part of
    /// `max_per_second` only.
    pub per_tenant_max_per_second: Option<u32>,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            enabled: true,
            per_operation_per_second: 100,
            max_per_second: 5000,
            slow_ms: 1000,
            per_tenant_max_per_second: None,
        }
    }
}

/// Logging.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace` (or a tracing filter); `RUST_LOG` wins.
    pub level: String,
    /// Seconds between the one-line counter summaries (0 turns them off).
    pub stats_interval_secs: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            stats_interval_secs: 60,
        }
    }
}

/// Whether pod metadata is read from the Kubernetes API server: `auto`,
/// `true` or `false`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KubernetesMode {
    /// On when the agent runs in a pod (`KUBERNETES_SERVICE_HOST` is set).
    #[default]
    Auto,
    On,
    Off,
}

impl<'de> Deserialize<'de> for KubernetesMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bool(bool),
            Name(String),
        }
        match Written::deserialize(d)? {
            Written::Bool(true) => Ok(KubernetesMode::On),
            Written::Bool(false) => Ok(KubernetesMode::Off),
            Written::Name(name) => match name.as_str() {
                "auto" => Ok(KubernetesMode::Auto),
                "true" | "on" => Ok(KubernetesMode::On),
                "false" | "off" => Ok(KubernetesMode::Off),
                other => Err(serde::de::Error::custom(format!(
                    "{other:?} is not auto, true or false"
                ))),
            },
        }
    }
}

/// Kubernetes metadata on spans and metrics.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    /// `auto`, `on` (`true`) or `off` (`false`).
    pub enabled: KubernetesMode,
    /// `k8s.cluster.name` (the API does not know its cluster's name).
    pub cluster_name: Option<String>,
    /// The node whose pods are watched; default `$NODE_NAME` (set from the
    /// downward API by the DaemonSet), else the host name.
    pub node_name: Option<String>,
    /// How long a deleted pod's metadata is kept for its last spans.
    pub deleted_pod_retention_secs: u64,
    /// Pod labels copied onto resources as `k8s.pod.label.<key>`.
    pub pod_labels: Vec<String>,
    /// Pod annotations copied as `k8s.pod.annotation.<key>`.
    pub pod_annotations: Vec<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: KubernetesMode::Auto,
            cluster_name: None,
            node_name: None,
            deleted_pod_retention_secs: 120,
            pod_labels: Vec::new(),
            pod_annotations: Vec::new(),
        }
    }
}

impl KubernetesConfig {
    /// Whether to watch the API server, given the environment.
    pub fn wanted(&self, in_pod: bool) -> bool {
        match self.enabled {
            KubernetesMode::Auto => in_pod,
            KubernetesMode::On => true,
            KubernetesMode::Off => false,
        }
    }
}

/// Where Docker and Podman keep what they know of their containers, read
/// for the names of containers outside Kubernetes.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ContainersConfig {
    /// Docker's data root (`data-root` in its daemon.json).
    pub docker_root: PathBuf,
    /// Rootful Podman's storage root (`graphroot` in storage.conf).
    pub podman_root: PathBuf,
}

impl Default for ContainersConfig {
    fn default() -> Self {
        ContainersConfig {
            docker_root: crate::enrich::containers::DEFAULT_DOCKER_ROOT.into(),
            podman_root: crate::enrich::containers::DEFAULT_PODMAN_ROOT.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Loading and checking
// ---------------------------------------------------------------------------

/// Where in the configuration a problem sits: the file (when it came from
/// one) and the 1-based line (when it could be found).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Place {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("config")?;
        if let Some(file) = &self.file {
            write!(f, " {}", file.display())?;
        }
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be used. Each variant says where the
/// problem is; the message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error(
        "config {}: cannot read it: {source} (check the path given to --config and that it is readable)",
        path.display()
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not YAML, or not a mapping of sections.
    #[error("{at}: {message}")]
    Format { at: Place, message: String },
    /// A key that the schema does not know (often a typo).
    #[error("{at}: unknown key {key} (expected one of: {expected})")]
    UnknownKey {
        at: Place,
        key: String,
        expected: String,
    },
    /// A known key with a value of the wrong type or out of range.
    #[error("{at}: {key}: {message}")]
    Invalid {
        at: Place,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// The place the error points at, if it points at one.
    pub fn place(&self) -> Option<&Place> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Format { at, .. }
            | ConfigError::UnknownKey { at, .. }
            | ConfigError::Invalid { at, .. } => Some(at),
        }
    }

    /// The 1-based line the error points at, if known.
    pub fn line(&self) -> Option<usize> {
        self.place().and_then(|p| p.line)
    }

    /// The dotted key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    fn in_file(mut self, path: &Path) -> Self {
        match &mut self {
            ConfigError::Read { .. } => {}
            ConfigError::Format { at, .. }
            | ConfigError::UnknownKey { at, .. }
            | ConfigError::Invalid { at, .. } => at.file = Some(path.to_path_buf()),
        }
        self
    }
}

/// Reads and checks the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|e| e.in_file(path))
}

/// Parses and checks configuration text. Empty text (or only comments)
/// gives the defaults.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let mut path = None;
    // No snippets: the error names the key and its line itself.
    let options = serde_saphyr::options! { with_snippet: false };
    let decoded = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize::<_, Option<Config>>(de).map_err(|e| {
            path = Some(e.path().clone());
            e.into_inner()
        })
    });
    let config = decoded
        .map_err(|e| decode_error(text, path.as_ref(), &e))?
        .unwrap_or_default();
    if let Err((key, message)) = config.check() {
        return Err(ConfigError::Invalid {
            at: Place {
                file: None,
                line: line_of_key(text, key),
            },
            key: key.to_string(),
            message,
        });
    }
    if let Err((path, message)) = config.export.check_tenants() {
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        return Err(ConfigError::Invalid {
            at: Place {
                file: None,
                line: nth_line_of_path(text, &parts, 0),
            },
            key: path.join("."),
            message,
        });
    }
    Ok(config)
}

impl Config {
    /// Checks the ranges that the types alone do not enforce. The error has
    /// no line: use [`parse`] or [`load`] to get one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check()
            .map_err(|(key, message)| (key.to_string(), message))
            .and_then(|()| {
                self.export
                    .check_tenants()
                    .map_err(|(path, message)| (path.join("."), message))
            })
            .map_err(|(key, message)| ConfigError::Invalid {
                at: Place::default(),
                key,
                message,
            })
    }

    /// The first value out of range, as (dotted key, what is wrong).
    fn check(&self) -> Result<(), (&'static str, String)> {
        let max_capture = sonde_common::MAX_CAPTURE as u32;
        let c = &self.capture;
        if !(1..=max_capture).contains(&c.bytes) {
            return Err((
                "capture.bytes",
                format!("{} is out of range (1..={max_capture})", c.bytes),
            ));
        }
        if c.ring_buffer_bytes < 4096 || !c.ring_buffer_bytes.is_power_of_two() {
            return Err((
                "capture.ring_buffer_bytes",
                format!(
                    "{} must be a power of two of at least 4096 (for example 16777216)",
                    c.ring_buffer_bytes
                ),
            ));
        }
        at_least("capture.max_connections", c.max_connections.into(), 1)?;
        at_least(
            "capture.max_buffered_bytes",
            c.max_buffered_bytes.into(),
            256,
        )?;
        at_least("capture.wakeup_bytes", c.wakeup_bytes.into(), 1)?;
        if !(1..=1000).contains(&c.poll_interval_ms) {
            return Err((
                "capture.poll_interval_ms",
                format!("{} is out of range (1..=1000)", c.poll_interval_ms),
            ));
        }
        at_least("export.queue_size", self.export.queue_size.into(), 1)?;
        at_least(
            "export.otlp.batch_size",
            self.export.otlp.batch_size.into(),
            1,
        )?;
        self.metrics.check()?;
        if let Some(listen) = &self.health.listen {
            parse_listen(listen).map_err(|e| ("health.listen", e))?;
        }
        at_least(
            "sample.per_operation_per_second",
            self.sample.per_operation_per_second.into(),
            1,
        )?;
        at_least(
            "sample.max_per_second",
            self.sample.max_per_second.into(),
            2,
        )?;
        for (key, rules) in [
            ("select.include", &self.select.include),
            ("select.exclude", &self.select.exclude),
        ] {
            if rules.iter().any(crate::enrich::select::Rule::is_empty) {
                return Err((
                    key,
                    "a rule names none of namespace, pod, labels, namespace_labels, container, \
                     systemd_unit"
                        .to_string(),
                ));
            }
        }
        self.tenants.check()?;
        if self.protocols.enabled().is_empty() {
            return Err((
                "protocols",
                "every protocol is off: nothing would be traced".to_string(),
            ));
        }
        if self.log.level.trim().is_empty() {
            return Err((
                "log.level",
                "must not be empty (for example info or sonde=debug)".to_string(),
            ));
        }
        Ok(())
    }
}

fn at_least(key: &'static str, value: u64, min: u64) -> Result<(), (&'static str, String)> {
    if value < min {
        return Err((key, format!("{value} is out of range (at least {min})")));
    }
    Ok(())
}

/// Turns a decoding error into one that names the key and its line.
/// `path` is where in the schema the decoder was, when it got that far.
fn decode_error(
    text: &str,
    path: Option<&serde_path_to_error::Path>,
    err: &serde_saphyr::Error,
) -> ConfigError {
    use serde_saphyr::Error as E;
    let err = err.without_snippet();
    let line = err.location().map(|l| l.line() as usize);
    let at = Place { file: None, line };
    let key = path.map(ToString::to_string).unwrap_or_default();
    let at_root = path.is_none_or(|p| p.iter().next().is_none());
    match err {
        E::MultipleDocuments { .. } => {
            // The separator is the line to remove; the decoder points past it.
            let separator = text
                .lines()
                .take(line.unwrap_or(usize::MAX))
                .enumerate()
                .filter(|(_, l)| l.starts_with("---"))
                .map(|(i, _)| i + 1)
                .last();
            ConfigError::Format {
                at: Place {
                    file: None,
                    line: separator.or(line),
                },
                message:
                    "the file holds more than one YAML document; keep one (remove the `---` separator)"
                        .to_string(),
            }
        }
        E::ExternalMessage { .. } => ConfigError::Format {
            at,
            message: format!("YAML syntax: {}", wording(err)),
        },
        E::SerdeUnknownField {
            field, expected, ..
        } => ConfigError::UnknownKey {
            at,
            // A struct's unknown field is in the path already; a checked
            // map's key (protocols) is not.
            key: if key.rsplit('.').next() == Some(field.as_str()) {
                key
            } else {
                format!("{key}.{field}").trim_start_matches('.').to_string()
            },
            expected: if expected.is_empty() {
                "no keys here".to_string()
            } else {
                expected.join(", ")
            },
        },
        E::DuplicateMappingKey {
            key: Some(name), ..
        } => {
            let parent = key.strip_suffix('?').unwrap_or(&key);
            ConfigError::Invalid {
                at,
                key: format!("{parent}{name}")
                    .trim_start_matches('.')
                    .to_string(),
                message: "is set more than once (keep one)".to_string(),
            }
        }
        E::Unexpected { .. } if at_root => ConfigError::Format {
            at,
            message: format!(
                "{}; the file must be a mapping of sections (capture, http, db, export, metrics, sample, log)",
                wording(err)
            ),
        },
        _ if at_root || key.contains('?') => ConfigError::Format {
            at,
            message: wording(err),
        },
        _ => ConfigError::Invalid {
            at,
            key,
            message: wording(err),
        },
    }
}

/// The decoder's message for `err`, without its position (the error
/// reports that itself), in this file's words where the decoder's are terse.
fn wording(err: &serde_saphyr::Error) -> String {
    use serde_saphyr::MessageFormatter;
    struct Wording;
    impl MessageFormatter for Wording {
        fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> Cow<'a, str> {
            use serde_saphyr::Error as E;
            match err {
                E::InvalidScalar { ty, .. } => format!("expected {}", what(ty)).into(),
                E::Unexpected { expected, .. } => format!("expected {}", what(expected)).into(),
                E::SerdeUnknownVariant {
                    variant, expected, ..
                } => format!("{variant:?} is not one of: {}", expected.join(", ")).into(),
                _ => serde_saphyr::UserMessageFormatter.format_message(err),
            }
        }
    }
    /// What a value must look like, for the decoder's name of a type.
    fn what(name: &str) -> &str {
        match name {
            "u16" | "u32" | "u64" => "a whole number of at least 0",
            "f64" | "f32" => "a number",
            "boolean" | "bool" => "true or false",
            "mapping start" => "a mapping (key: value lines)",
            "sequence start" => "a list ([a, b] or lines starting with -)",
            other => other,
        }
    }
    // Keys and values quoted in the message come from the file: control
    // characters in them are shown escaped.
    Wording
        .format_message(err)
        .chars()
        .flat_map(|c| {
            let escaped = c.is_control().then(|| c.escape_debug());
            escaped
                .into_iter()
                .flatten()
                .chain((!c.is_control()).then_some(c))
        })
        .collect()
}

/// Finds the 1-based line of a dotted key (`export.otlp.endpoint`) in block
/// style YAML, following indentation. When the key itself is not written
/// as a block key (flow style, for example) the line of its nearest
/// ancestor that is is returned.
pub fn line_of_key(text: &str, dotted: &str) -> Option<usize> {
    nth_line_of_key(text, dotted, 0)
}

/// Like [`line_of_key`], for the `nth` (0-based) time the key is written.
fn nth_line_of_key(text: &str, dotted: &str, nth: usize) -> Option<usize> {
    let wanted: Vec<&str> = dotted.split('.').collect();
    nth_line_of_path(text, &wanted, nth)
}

/// Like [`nth_line_of_key`], for a key given as its parts (a part may hold dots).
fn nth_line_of_path(text: &str, wanted: &[&str], nth: usize) -> Option<usize> {
    // Keys open at the current position, with their indentation.
    let mut open: Vec<(usize, String)> = Vec::new();
    let mut nearest: Option<(usize, usize)> = None; // (matched depth, line)
    let mut seen = 0;
    for (index, raw) in text.lines().enumerate() {
        let body = raw.trim_start_matches(' ');
        let indent = raw.len() - body.len();
        if body.is_empty() || body.starts_with('#') || body.starts_with("---") {
            continue;
        }
        let Some(key) = block_key(body) else {
            continue;
        };
        while open.last().is_some_and(|(i, _)| *i >= indent) {
            open.pop();
        }
        open.push((indent, key));
        let depth = open.len();
        let matches = depth <= wanted.len()
            && open
                .iter()
                .zip(wanted)
                .all(|((_, have), want)| have == want);
        if !matches {
            continue;
        }
        if depth == wanted.len() {
            if seen == nth {
                return Some(index + 1);
            }
            seen += 1;
        }
        if nearest.is_none_or(|(d, _)| depth > d) {
            nearest = Some((depth, index + 1));
        }
    }
    nearest.map(|(_, line)| line)
}

/// The key of a `key: value` or `key:` line, quotes removed.
fn block_key(body: &str) -> Option<String> {
    if body.starts_with('-') || body.starts_with('{') || body.starts_with('[') {
        return None;
    }
    let (key, rest) = match body.chars().next()? {
        q @ ('"' | '\'') => {
            let close = body[1..].find(q)? + 1;
            (&body[1..close], &body[close + 1..])
        }
        _ => {
            let colon = body
                .match_indices(':')
                .map(|(i, _)| i)
                .find(|&i| matches!(body.as_bytes().get(i + 1), None | Some(b' ' | b'\t')))?;
            (body[..colon].trim_end(), &body[colon..])
        }
    };
    let rest = rest.trim_start();
    if !rest.starts_with(':') {
        return None;
    }
    Some(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_gives_defaults() {
        for text in ["", "\n", "# nothing here\n", "---\n", "capture:\n"] {
            assert_eq!(parse(text).unwrap(), Config::default(), "text {text:?}");
        }
    }

    #[test]
    fn empty_sections_and_maps_give_defaults() {
        let text = "export:\n  otlp:\n    headers:\nmetrics:\n  buckets:\n  prometheus:\n";
        assert_eq!(parse(text).unwrap(), Config::default());
    }

    #[test]
    fn enum_names_as_written() {
        assert_eq!(from_name("http/protobuf"), Some(OtlpProtocol::HttpProtobuf));
        assert_eq!(from_name("grpc"), Some(OtlpProtocol::Grpc));
        assert_eq!(from_name("delta"), Some(Temporality::Delta));
        assert_eq!(from_name("exponential"), Some(Histogram::Exponential));
        assert_eq!(from_name::<OtlpProtocol>("http/json"), None);
        assert_eq!(from_name::<Temporality>("Delta"), None);
        assert_eq!(from_name("socket"), Some(CapturePath::Socket));
        assert_eq!(from_name::<CapturePath>("sockets"), None);
    }

    #[test]
    fn defaults_pass_validation() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn example_file_holds_the_defaults() {
        let text = include_str!("../../deploy/sonde.example.yaml");
        assert_eq!(parse(text).unwrap(), Config::default());
    }

    #[test]
    fn documented_example_parses() {
        let doc = include_str!("../../docs/CONFIGURATION.md");
        let doc = &doc[doc.find("## Example").expect("an example section")..];
        let start = doc.find("```yaml\n").expect("a yaml block in the docs") + 8;
        let len = doc[start..].find("```").expect("the end of the yaml block");
        let c = parse(&doc[start..start + len]).unwrap();
        assert_eq!(c.capture.bytes, 512);
        assert_eq!(c.export.otlp.protocol, Some(OtlpProtocol::HttpProtobuf));
    }

    #[test]
    fn every_key_set() {
        let text = "\
capture:
  bytes: 4096
  ring_buffer_bytes: 16777216
  max_connections: 1000
  max_buffered_bytes: 512
  wakeup_bytes: 4096
  poll_interval_ms: 10
  path: syscall
http:
  capture_query: true
db:
  sanitize_query: false
export:
  console: false
  queue_size: 100
  otlp:
    endpoint: http://collector:4318
    traces_endpoint: http://collector:4318/v1/traces
    protocol: http/protobuf
    headers:
      authorization: Bearer abc
      x-tenant: \"7\"
    batch_size: 64
    batch_timeout_ms: 250
    timeout_ms: 3000
  tenants:
    acme:
      endpoint: http://acme-collector:4318
      traces_endpoint: http://acme-collector:4318/t
      metrics_endpoint: http://acme-collector:4318/m
      protocol: grpc
      headers:
        X-Scope-OrgID: acme
      queue_size: 10
      batch_size: 5
      batch_timeout_ms: 50
      timeout_ms: 500
metrics:
  enabled: true
  max_series_per_metric: 500
  idle_series_secs: 60
  histogram: exponential
  exponential_max_size: 80
  duration_buckets: [0.001, 0.01, 0.1, 1]
  size_buckets: [0, 100, 10000]
  buckets:
    http.server.request.duration: [0.5, 1, 2]
  exemplars: false
  service_graph:
    enabled: false
    wait_ms: 500
    max_pending: 100
  otlp:
    enabled: false
    endpoint: http://collector:4318/v1/metrics
    interval_ms: 15000
    temporality: delta
  prometheus:
    listen: 0.0.0.0:9464
  console_interval_secs: 0
sample:
  enabled: false
  per_operation_per_second: 7
  max_per_second: 90
  slow_ms: 250
  per_tenant_max_per_second: 30
log:
  level: debug
  stats_interval_secs: 0
kubernetes:
  enabled: true
  cluster_name: prod-eu
  node_name: node-7
  deleted_pod_retention_secs: 30
  pod_labels: [team]
  pod_annotations: [owner]
containers:
  docker_root: /host/var/lib/docker
  podman_root: /host/var/lib/containers/storage
health:
  listen: 0.0.0.0:9465
select:
  include:
    - namespace: shop-*
  exclude:
    - labels: track=canary
      container: web
protocols:
  redis: false
  mysql: true
tenants:
  attribute: org.id
  rules:
    - header: x-org
    - pod_label: tenant
  default: shared
";
        let c = parse(text).unwrap();
        let rule = |yaml: &str| serde_saphyr::from_str(yaml).unwrap();
        let mut protocols = ProtocolsConfig::default();
        protocols.set("redis", false);
        let want = Config {
            capture: CaptureConfig {
                bytes: 4096,
                ring_buffer_bytes: 16 << 20,
                max_connections: 1000,
                max_buffered_bytes: 512,
                wakeup_bytes: 4096,
                poll_interval_ms: 10,
                path: CapturePath::Syscall,
            },
            http: HttpConfig {
                capture_query: true,
            },
            db: DbConfig {
                sanitize_query: false,
            },
            export: ExportConfig {
                console: Some(false),
                queue_size: 100,
                otlp: OtlpConfig {
                    endpoint: Some("http://collector:4318".into()),
                    traces_endpoint: Some("http://collector:4318/v1/traces".into()),
                    protocol: Some(OtlpProtocol::HttpProtobuf),
                    headers: [
                        ("authorization".to_string(), "Bearer abc".to_string()),
                        ("x-tenant".to_string(), "7".to_string()),
                    ]
                    .into_iter()
                    .collect(),
                    batch_size: 64,
                    batch_timeout_ms: 250,
                    timeout_ms: 3000,
                },
                tenants: [(
                    "acme".to_string(),
                    TenantRoute {
                        endpoint: Some("http://acme-collector:4318".into()),
                        traces_endpoint: Some("http://acme-collector:4318/t".into()),
                        metrics_endpoint: Some("http://acme-collector:4318/m".into()),
                        protocol: Some(OtlpProtocol::Grpc),
                        headers: [("X-Scope-OrgID".to_string(), "acme".to_string())]
                            .into_iter()
                            .collect(),
                        queue_size: Some(10),
                        batch_size: Some(5),
                        batch_timeout_ms: Some(50),
                        timeout_ms: Some(500),
                    },
                )]
                .into_iter()
                .collect(),
            },
            metrics: MetricsConfig {
                enabled: true,
                max_series_per_metric: 500,
                idle_series_secs: 60,
                histogram: Histogram::Exponential,
                exponential_max_size: 80,
                duration_buckets: vec![0.001, 0.01, 0.1, 1.0],
                size_buckets: vec![0.0, 100.0, 10000.0],
                buckets: [(
                    "http.server.request.duration".to_string(),
                    vec![0.5, 1.0, 2.0],
                )]
                .into_iter()
                .collect(),
                exemplars: false,
                service_graph: ServiceGraphConfig {
                    enabled: false,
                    wait_ms: 500,
                    max_pending: 100,
                },
                otlp: MetricsOtlpConfig {
                    enabled: false,
                    endpoint: Some("http://collector:4318/v1/metrics".into()),
                    interval_ms: Some(15000),
                    temporality: Some(Temporality::Delta),
                },
                prometheus: PrometheusConfig {
                    listen: Some("0.0.0.0:9464".into()),
                },
                console_interval_secs: 0,
            },
            sample: SampleConfig {
                enabled: false,
                per_operation_per_second: 7,
                max_per_second: 90,
                slow_ms: 250,
                per_tenant_max_per_second: Some(30),
            },
            log: LogConfig {
                level: "debug".into(),
                stats_interval_secs: 0,
            },
            kubernetes: KubernetesConfig {
                enabled: KubernetesMode::On,
                cluster_name: Some("prod-eu".into()),
                node_name: Some("node-7".into()),
                deleted_pod_retention_secs: 30,
                pod_labels: vec!["team".into()],
                pod_annotations: vec!["owner".into()],
            },
            containers: ContainersConfig {
                docker_root: "/host/var/lib/docker".into(),
                podman_root: "/host/var/lib/containers/storage".into(),
            },
            health: HealthConfig {
                listen: Some("0.0.0.0:9465".into()),
            },
            select: Selection {
                include: vec![rule("namespace: shop-*")],
                exclude: vec![rule("labels: track=canary\ncontainer: web")],
            },
            protocols,
            tenants: TenantConfig {
                attribute: "org.id".into(),
                rules: vec![
                    serde_saphyr::from_str("header: x-org").unwrap(),
                    serde_saphyr::from_str("pod_label: tenant").unwrap(),
                ],
                default: Some("shared".into()),
            },
        };
        assert_eq!(c, want);
        let names: Vec<&str> = c.protocols.enabled().iter().map(|p| p.name).collect();
        assert_eq!(names, ["http2", "http1", "mysql"]);
        // The mode is written as a boolean or a word.
        for (text, want) in [
            ("kubernetes: {enabled: false}", KubernetesMode::Off),
            ("kubernetes: {enabled: auto}", KubernetesMode::Auto),
            ("kubernetes: {enabled: \"true\"}", KubernetesMode::On),
        ] {
            assert_eq!(parse(text).unwrap().kubernetes.enabled, want, "{text}");
        }
        let err = parse("kubernetes:\n  enabled: maybe\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("auto, true or false"),
            "{err}"
        );
        let err = parse("health:\n  listen: nowhere\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("health.listen"), "{err}");
    }

    /// A bad rule or protocol names the key, the line and what is wrong.
    #[test]
    fn bad_selection_and_protocols() {
        for (text, line, says) in [
            (
                "select:\n  exclude:\n    - namespace: kube-system\n    - labels: app in web\n",
                4,
                "parentheses",
            ),
            (
                "select:\n  include:\n    - nmespace: shop\n",
                3,
                "unknown key",
            ),
            ("select:\n  exclude:\n    - {}\n", 2, "a rule names none"),
            ("select:\n  include:\n    - pod: ''\n", 3, "empty pattern"),
            (
                "protocols:\n  redis: false\n  amqp: false\n",
                3,
                "unknown key protocols.amqp (expected one of: http2, http1, redis, mysql)",
            ),
            ("protocols:\n  redis: maybe\n", 2, "redis"),
            (
                "protocols: {http1: false, http2: false, redis: false, mysql: false}\n",
                1,
                "every protocol is off",
            ),
            (
                "tenants:\n  rules:\n    - env: A\n      header: b\n",
                2,
                "more than one matcher",
            ),
            (
                "tenants:\n  rules:\n    - cgroup: '(unclosed'\n",
                3,
                "not a regular expression",
            ),
            ("tenants:\n  rules:\n    - label: x\n", 3, "unknown key"),
        ] {
            let err = parse(text).expect_err(text);
            let message = err.to_string();
            assert!(message.contains(says), "{text:?}: {message}");
            assert_eq!(err.line(), Some(line), "{text:?}: {message}");
        }
    }

    #[test]
    fn listen_addresses() {
        use std::net::SocketAddr;
        let ok = |t: &str| parse_listen(t).unwrap();
        assert_eq!(ok("9464"), "127.0.0.1:9464".parse::<SocketAddr>().unwrap());
        assert_eq!(ok(":9464"), "127.0.0.1:9464".parse::<SocketAddr>().unwrap());
        assert_eq!(
            ok("localhost:9464"),
            "127.0.0.1:9464".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            ok("0.0.0.0:80"),
            "0.0.0.0:80".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            ok("[::1]:9464"),
            "[::1]:9464".parse::<SocketAddr>().unwrap()
        );
        for bad in ["", "host:1", "127.0.0.1", "127.0.0.1:99999", "::1:9464"] {
            assert!(parse_listen(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = parse("capture:\n  bytes: 64\n").unwrap();
        assert_eq!(c.capture.bytes, 64);
        assert_eq!(c.capture.max_connections, 65536);
        assert_eq!(c.export, ExportConfig::default());
    }

    /// (name, text, expected key, expected line, words the message must hold)
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        usize,
        &'static str,
    );

    #[test]
    fn unknown_keys_name_key_and_line() {
        let cases: [Case; 5] = [
            (
                "top level",
                "capture:\n  bytes: 10\n\ncaptur:\n  bytes: 1\n",
                "captur",
                4,
                "expected one of: capture, http, db, export, metrics, sample, log",
            ),
            (
                "in a section",
                "capture:\n  bytes: 10\n  bytez: 3\n",
                "capture.bytez",
                3,
                "ring_buffer_bytes",
            ),
            (
                "two levels down",
                "log:\n  level: info\nexport:\n  queue_size: 5\n  otlp:\n    protocol: grpc\n    endpiont: http://x:4317\n",
                "export.otlp.endpiont",
                7,
                "endpoint, traces_endpoint, protocol",
            ),
            (
                "flow style",
                "http: {capture_query: true, capture_body: true}\n",
                "http.capture_body",
                1,
                "capture_query",
            ),
            (
                "in the metrics section",
                "metrics:\n  prometheus:\n    port: 9464\n",
                "metrics.prometheus.port",
                3,
                "expected one of: listen",
            ),
        ];
        for (name, text, key, line, words) in cases {
            let err = parse(text).unwrap_err();
            assert!(
                matches!(err, ConfigError::UnknownKey { .. }),
                "{name}: {err:?}"
            );
            assert_eq!(err.key(), Some(key), "{name}");
            assert_eq!(err.line(), Some(line), "{name}: {err}");
            let shown = err.to_string();
            assert!(shown.contains(words), "{name}: {shown}");
            assert!(
                shown.starts_with(&format!("config line {line}: unknown key {key} (")),
                "{name}: {shown}"
            );
        }
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let cases: [Case; 23] = [
            (
                "string for a number",
                "capture:\n  bytes: lots\n",
                "capture.bytes",
                2,
                "expected a whole number of at least 0",
            ),
            (
                "negative number",
                "\ncapture:\n  max_connections: -1\n",
                "capture.max_connections",
                3,
                "expected a whole number of at least 0",
            ),
            (
                "string for a bool",
                "http:\n  capture_query: sometimes\n",
                "http.capture_query",
                2,
                "expected true or false",
            ),
            (
                "number for a section",
                "log: 3\n",
                "log",
                1,
                "expected a mapping (key: value lines)",
            ),
            (
                "bytes too large",
                "# comment\ncapture:\n  # another\n  bytes: 20000\n",
                "capture.bytes",
                4,
                "20000 is out of range (1..=16384)",
            ),
            (
                "bytes zero",
                "capture:\n  bytes: 0\n",
                "capture.bytes",
                2,
                "0 is out of range (1..=16384)",
            ),
            (
                "ring buffer not a power of two",
                "capture:\n  bytes: 10\n  ring_buffer_bytes: 5000\n",
                "capture.ring_buffer_bytes",
                3,
                "power of two",
            ),
            (
                "ring buffer too small",
                "capture:\n  ring_buffer_bytes: 2048\n",
                "capture.ring_buffer_bytes",
                2,
                "at least 4096",
            ),
            (
                "buffered bytes too small",
                "capture:\n  max_buffered_bytes: 100\n",
                "capture.max_buffered_bytes",
                2,
                "100 is out of range (at least 256)",
            ),
            (
                "bad protocol",
                "export:\n  otlp:\n    endpoint: http://x\n    protocol: http/json\n",
                "export.otlp.protocol",
                4,
                "\"http/json\" is not one of: grpc, http/protobuf",
            ),
            (
                "zero batch",
                "export:\n  otlp:\n    batch_size: 0\n",
                "export.otlp.batch_size",
                3,
                "at least 1",
            ),
            (
                "empty log level",
                "log:\n  level: \"\"\n",
                "log.level",
                2,
                "must not be empty",
            ),
            (
                "histogram kind",
                "metrics:\n  histogram: native\n",
                "metrics.histogram",
                2,
                "\"native\" is not one of: explicit, exponential",
            ),
            (
                "buckets out of order",
                "metrics:\n  enabled: true\n  duration_buckets: [0.1, 0.05]\n",
                "metrics.duration_buckets",
                3,
                "boundaries must increase (0.1 then 0.05)",
            ),
            (
                "negative bucket",
                "metrics:\n  size_buckets: [-1, 5]\n",
                "metrics.size_buckets",
                2,
                "-1 is not a finite number of at least 0",
            ),
            (
                "no buckets",
                "metrics:\n  size_buckets: []\n",
                "metrics.size_buckets",
                2,
                "must hold at least one boundary",
            ),
            (
                "buckets of an unknown metric",
                "metrics:\n  buckets:\n    http.server.duration: [1]\n",
                "metrics.buckets",
                2,
                "\"http.server.duration\" is not a histogram sonde makes (expected one of: http.server.request.duration,",
            ),
            (
                "zero series",
                "metrics:\n  max_series_per_metric: 0\n",
                "metrics.max_series_per_metric",
                2,
                "0 is out of range (at least 1)",
            ),
            (
                "temporality",
                "metrics:\n  otlp:\n    temporality: sometimes\n",
                "metrics.otlp.temporality",
                3,
                "\"sometimes\" is not one of: cumulative, delta",
            ),
            (
                "interval too short",
                "metrics:\n  otlp:\n    interval_ms: 5\n",
                "metrics.otlp.interval_ms",
                3,
                "5 is out of range (at least 100)",
            ),
            (
                "listen address",
                "metrics:\n  prometheus:\n    listen: everywhere:9464\n",
                "metrics.prometheus.listen",
                3,
                "\"everywhere:9464\" is not a listen address",
            ),
            (
                "exponential size",
                "metrics:\n  exponential_max_size: 1\n",
                "metrics.exponential_max_size",
                2,
                "1 is out of range (2..=16384)",
            ),
            (
                "graph wait",
                "metrics:\n  service_graph:\n    wait_ms: 0\n",
                "metrics.service_graph.wait_ms",
                3,
                "0 is out of range (at least 1)",
            ),
        ];
        for (name, text, key, line, words) in cases {
            let err = parse(text).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { .. }),
                "{name}: {err:?}"
            );
            assert_eq!(err.key(), Some(key), "{name}: {err}");
            assert_eq!(err.line(), Some(line), "{name}: {err}");
            let shown = err.to_string();
            assert_eq!(
                shown,
                format!(
                    "config line {line}: {key}: {}",
                    shown.split_once(&format!("{key}: ")).unwrap().1
                ),
                "{name}"
            );
            assert!(shown.contains(words), "{name}: {shown}");
            assert!(!shown.contains(" at line "), "{name}: {shown}");
        }
    }

    #[test]
    fn duplicate_keys_point_at_the_second() {
        let text = "capture:\n  bytes: 1\n  max_connections: 5\n  bytes: 2\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.key(), Some("capture.bytes"));
        assert_eq!(err.line(), Some(4), "{err}");
        assert_eq!(
            err.to_string(),
            "config line 4: capture.bytes: is set more than once (keep one)"
        );
    }

    #[test]
    fn two_documents_are_refused() {
        let err = parse("capture:\n  bytes: 1\n---\nlog:\n  level: info\n").unwrap_err();
        assert!(matches!(err, ConfigError::Format { .. }), "{err:?}");
        assert_eq!(err.line(), Some(3), "{err}");
    }

    #[test]
    fn zero_values_with_lower_bound_one() {
        for (text, key) in [
            (
                "capture:\n  max_connections: 0\n",
                "capture.max_connections",
            ),
            ("export:\n  queue_size: 0\n", "export.queue_size"),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.key(), Some(key));
            assert_eq!(err.line(), Some(2));
        }
    }

    #[test]
    fn tenant_routes() {
        // One route written once and shared by YAML alias: `${tenant}`
        // gives each tenant its own header value.
        let text = "\
export:
  otlp:
    endpoint: http://default:4317
  tenants:
    acme: &gateway
      endpoint: http://gateway:4318
      protocol: http/protobuf
      headers:
        X-Scope-OrgID: ${tenant}
    globex: *gateway
    \"team.a\":
      metrics_endpoint: http://team-a:4318/v1/metrics
";
        let c = parse(text).unwrap();
        let ids: Vec<&str> = c.export.tenants.keys().map(String::as_str).collect();
        assert_eq!(ids, ["acme", "globex", "team.a"]);
        assert_eq!(c.export.tenants["acme"], c.export.tenants["globex"]);
        assert_eq!(
            c.export.tenants["globex"].headers_for("globex"),
            [("X-Scope-OrgID".to_string(), "globex".to_string())]
        );
        assert_eq!(
            c.export.tenants["team.a"].protocol, None,
            "left to export.otlp.protocol"
        );

        for (what, text, key, line, words) in [
            (
                "not a URL",
                "export:\n  tenants:\n    acme:\n      endpoint: acme:4318\n",
                "export.tenants.acme.endpoint",
                4,
                "http://",
            ),
            (
                "https",
                "export:\n  tenants:\n    acme:\n      traces_endpoint: https://acme\n",
                "export.tenants.acme.traces_endpoint",
                4,
                "TLS",
            ),
            (
                "no endpoint",
                "export:\n  tenants:\n    acme:\n      headers: {a: b}\n",
                "export.tenants.acme",
                3,
                "names no endpoint",
            ),
            (
                "empty id",
                "export:\n  tenants:\n    \"\": {endpoint: http://a:1}\n",
                "export.tenants",
                2,
                "a tenant id is empty",
            ),
            (
                "the default route's name",
                "export:\n  tenants:\n    default:\n      endpoint: http://a:1\n",
                "export.tenants.default",
                3,
                "export.otlp",
            ),
            (
                "a dotted id finds its line",
                "export:\n  tenants:\n    a.b:\n      endpoint: http://a:1\n      \
                 metrics_endpoint: nope\n",
                "export.tenants.a.b.metrics_endpoint",
                5,
                "http://",
            ),
            (
                "bad header name",
                "export:\n  tenants:\n    acme:\n      endpoint: http://a:1\n      \
                 headers:\n        \"bad name\": x\n",
                "export.tenants.acme.headers",
                5,
                "not a valid header name",
            ),
            (
                "zero queue",
                "export:\n  tenants:\n    acme:\n      endpoint: http://a:1\n      \
                 queue_size: 0\n",
                "export.tenants.acme.queue_size",
                5,
                "at least 1",
            ),
            (
                "unknown key",
                "export:\n  tenants:\n    acme:\n      endpiont: http://a:1\n",
                "export.tenants.acme.endpiont",
                4,
                "metrics_endpoint",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.key(), Some(key), "{what}: {err}");
            assert_eq!(err.line(), Some(line), "{what}: {err}");
            assert!(err.to_string().contains(words), "{what}: {err}");
        }

        // Built in code, without lines.
        let mut c = Config::default();
        c.export
            .tenants
            .insert("acme".into(), TenantRoute::default());
        let err = c.validate().unwrap_err();
        assert_eq!(err.key(), Some("export.tenants.acme"));
        assert!(err.to_string().contains("names no endpoint"), "{err}");
    }

    #[test]
    fn not_a_mapping() {
        for text in ["- capture\n- log\n", "just words\n", "42\n"] {
            let err = parse(text).unwrap_err();
            assert!(
                matches!(err, ConfigError::Format { .. }),
                "{text:?}: {err:?}"
            );
            assert_eq!(err.line(), Some(1), "{text:?}: {err}");
            assert!(err.to_string().contains("must be a mapping"), "{err}");
        }
    }

    #[test]
    fn yaml_syntax_errors_give_the_line() {
        let cases = [
            ("capture:\n  bytes: 'open\n", 2),
            ("capture:\n\tbytes: 1\n", 2),
            ("capture:\n  bytes: 1\n - x\n", 3),
        ];
        for (text, line) in cases {
            let err = parse(text).unwrap_err();
            assert!(
                matches!(err, ConfigError::Format { .. }),
                "{text:?}: {err:?}"
            );
            assert_eq!(err.line(), Some(line), "{text:?}: {err}");
            let shown = err.to_string();
            assert!(
                shown.starts_with(&format!("config line {line}: YAML syntax: ")),
                "{shown}"
            );
            assert!(!shown.contains(" column "), "{shown}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("sonde-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sonde.yaml");
        std::fs::write(
            &path,
            "capture:\n  bytes: 1\nexport:\n  otlp:\n    endpiont: x\n",
        )
        .unwrap();
        let err = load(&path).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!(
                "config {} line 5: unknown key export.otlp.endpiont (expected one of: endpoint,",
                path.display()
            )),
            "{shown}"
        );
        std::fs::write(&path, "capture:\n  bytes: 20000\n").unwrap();
        let shown = load(&path).unwrap_err().to_string();
        assert_eq!(
            shown,
            format!(
                "config {} line 2: capture.bytes: 20000 is out of range (1..=16384)",
                path.display()
            )
        );
        std::fs::write(&path, "log:\n  level: warn\n").unwrap();
        assert_eq!(load(&path).unwrap().log.level, "warn");
        std::fs::remove_dir_all(&dir).unwrap();

        let missing = load(Path::new("/nonexistent/sonde.yaml")).unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }));
        assert!(missing.to_string().contains("/nonexistent/sonde.yaml"));
    }

    #[test]
    fn line_of_key_follows_indentation() {
        let text = "\
capture:
  bytes: 1
export:
  # a comment
  queue_size: 3
  otlp:
    headers:
      \"bytes\": x
    protocol: grpc
log: {level: info}
";
        let cases = [
            ("capture", Some(1)),
            ("capture.bytes", Some(2)),
            ("export.queue_size", Some(5)),
            ("export.otlp", Some(6)),
            ("export.otlp.headers.bytes", Some(8)),
            ("export.otlp.protocol", Some(9)),
            ("export.otlp.endpoint", Some(6)),
            ("log.level", Some(10)),
            ("http", None),
        ];
        for (key, line) in cases {
            assert_eq!(line_of_key(text, key), line, "{key}");
        }
    }
}

#[cfg(test)]
mod deploy_tests {
    /// The config embedded in the Kubernetes manifest is a valid config.
    #[test]
    fn kubernetes_configmap_parses() {
        let manifest = include_str!("../../deploy/kubernetes/sonde.yaml");
        let mut found = false;
        let docs = serde_saphyr::from_str_multiple::<serde_json::Value, Vec<_>>(manifest)
            .expect("manifest is valid YAML");
        for value in docs {
            if let Some(text) = value
                .get("data")
                .and_then(|d| d.get("sonde.yaml"))
                .and_then(|t| t.as_str())
            {
                let config = super::parse(text).expect("embedded config parses");
                assert_eq!(config.export.console, Some(false));
                assert_eq!(config.kubernetes.enabled, super::KubernetesMode::On);
                assert_eq!(config.health.listen.as_deref(), Some("0.0.0.0:9465"));
                found = true;
            }
        }
        assert!(found, "the manifest has a ConfigMap with sonde.yaml");
    }
}
