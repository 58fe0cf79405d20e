//! OTLP metric export: where metrics go ([`resolve_metrics_target`], a pure
//! function of the configuration and the environment) and the transport
//! ([`MetricsExporter`]): the OTLP `MetricsService` over gRPC, or protobuf
//! bodies POSTed to `/v1/metrics`.
//!
//! The settings mirror the span exporter's, with the metric variables of
//! the OpenTelemetry specification:
//!
//! - Endpoint: `metrics.otlp.endpoint` (full URL), `export.otlp.endpoint`
//!   (base URL), `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (full URL),
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (base URL); for HTTP a base URL gets
//!   `/v1/metrics`. No endpoint: no OTLP metrics (the Prometheus endpoint
//!   may still serve them).
//! - Protocol: `export.otlp.protocol`, `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`,
//!   `OTEL_EXPORTER_OTLP_PROTOCOL`, else `grpc`.
//! - Headers: `OTEL_EXPORTER_OTLP_METRICS_HEADERS` (or else
//!   `OTEL_EXPORTER_OTLP_HEADERS`), then `export.otlp.headers` on top.
//! - Interval: `metrics.otlp.interval_ms`, `OTEL_METRIC_EXPORT_INTERVAL`
//!   (ms), else 60 s.
//! - Temporality: `metrics.otlp.temporality`,
//!   `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` (`cumulative`,
//!   `delta`, or `lowmemory`, which is delta for everything sonde makes),
//!   else cumulative.
//! - `OTEL_METRICS_EXPORTER` without `otlp` in its list (`none`,
//!   `prometheus`) turns OTLP metrics off, as does `metrics.otlp.enabled: false`.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use prost::Message;

use super::{
    ENDPOINT, ExportError, PROTOCOL, Protocol, check_endpoint, protocol_from_env, resolve_headers,
};
use crate::config::{ExportConfig, MetricsConfig};
use crate::metrics::Temporality;

const METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
const METRICS_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL";
const METRICS_HEADERS: &str = "OTEL_EXPORTER_OTLP_METRICS_HEADERS";
const INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
const TEMPORALITY: &str = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
const EXPORTER: &str = "OTEL_METRICS_EXPORTER";

/// The export interval when nothing sets one (the OpenTelemetry default).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Where and how metrics are sent, once resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsTarget {
    pub protocol: Protocol,
    /// gRPC: the collector's URL; HTTP: the full metrics URL.
    pub endpoint: String,
    /// Lower-case names, sorted.
    pub headers: Vec<(String, String)>,
    pub interval: Duration,
    pub temporality: Temporality,
    pub timeout: Duration,
}

/// Decides whether and where metrics go over OTLP (`env`: variable name →
/// value; empty values count as unset). See the module documentation.
pub fn resolve_metrics_target(
    export: &ExportConfig,
    metrics: &MetricsConfig,
    env: &HashMap<String, String>,
) -> Result<Option<MetricsTarget>, ExportError> {
    if !metrics.enabled || !metrics.otlp.enabled {
        return Ok(None);
    }
    let var = |name: &str| {
        env.get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(|v| (name.to_owned(), v.to_owned()))
    };
    let key = |name: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| (name.to_owned(), v.to_owned()))
    };
    if let Some((_, list)) = var(EXPORTER)
        && !list
            .split(',')
            .any(|e| e.trim().eq_ignore_ascii_case("otlp"))
    {
        return Ok(None);
    }

    let protocol = match export.otlp.protocol {
        Some(p) => p,
        None => protocol_from_env(var(METRICS_PROTOCOL).or_else(|| var(PROTOCOL)))?,
    };

    // (setting, value, whether it is a base URL)
    let endpoint = key("metrics.otlp.endpoint", &metrics.otlp.endpoint)
        .map(|(s, v)| (s, v, false))
        .or_else(|| key("export.otlp.endpoint", &export.otlp.endpoint).map(|(s, v)| (s, v, true)))
        .or_else(|| var(METRICS_ENDPOINT).map(|(s, v)| (s, v, false)))
        .or_else(|| var(ENDPOINT).map(|(s, v)| (s, v, true)));
    let Some((setting, value, is_base)) = endpoint else {
        return Ok(None);
    };
    let endpoint = if is_base && protocol == Protocol::HttpProtobuf {
        format!("{}/v1/metrics", value.trim_end_matches('/'))
    } else {
        value
    };
    check_endpoint(&setting, &endpoint)?;
    let headers = resolve_headers(&export.otlp, env, protocol, METRICS_HEADERS)?;

    let interval = match metrics.otlp.interval_ms {
        Some(ms) => Duration::from_millis(ms),
        None => match var(INTERVAL) {
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

    let temporality = match (metrics.otlp.temporality, var(TEMPORALITY)) {
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

    Ok(Some(MetricsTarget {
        protocol,
        endpoint,
        headers,
        interval,
        temporality,
        timeout: Duration::from_millis(export.otlp.timeout_ms.max(1)),
    }))
}

enum Transport {
    Grpc {
        client: MetricsServiceClient<tonic::transport::Channel>,
        metadata: Vec<(
            tonic::metadata::AsciiMetadataKey,
            tonic::metadata::AsciiMetadataValue,
        )>,
    },
    Http {
        client: reqwest::Client,
        endpoint: String,
        headers: reqwest::header::HeaderMap,
    },
}

/// Sends metric export requests to one collector.
pub struct MetricsExporter {
    transport: Transport,
    timeout: Duration,
}

impl MetricsExporter {
    /// Sets up the transport; connects lazily. Needs a tokio runtime context.
    pub fn new(target: &MetricsTarget) -> Result<MetricsExporter, ExportError> {
        let timeout = target.timeout;
        let transport = match target.protocol {
            Protocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(target.endpoint.clone())
                    .map_err(|e| {
                        ExportError::Build(format!("endpoint {:?}: {e}", target.endpoint))
                    })?
                    .timeout(timeout)
                    .connect_timeout(timeout.min(Duration::from_secs(5)))
                    .tcp_nodelay(true);
                let metadata = target
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let key = tonic::metadata::AsciiMetadataKey::from_bytes(k.as_bytes())
                            .map_err(|_| ExportError::Build(format!("bad header name {k:?}")))?;
                        let value = v.parse().map_err(|_| {
                            ExportError::Build(format!("bad value for header {k:?}"))
                        })?;
                        Ok((key, value))
                    })
                    .collect::<Result<Vec<_>, ExportError>>()?;
                Transport::Grpc {
                    client: MetricsServiceClient::new(endpoint.connect_lazy()),
                    metadata,
                }
            }
            Protocol::HttpProtobuf => {
                let client = reqwest::Client::builder()
                    .timeout(timeout)
                    .connect_timeout(timeout.min(Duration::from_secs(5)))
                    .build()
                    .map_err(|e| ExportError::Build(format!("HTTP client: {e}")))?;
                let mut headers = reqwest::header::HeaderMap::new();
                for (k, v) in &target.headers {
                    let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| ExportError::Build(format!("bad header name {k:?}")))?;
                    let mut value = reqwest::header::HeaderValue::from_str(v)
                        .map_err(|_| ExportError::Build(format!("bad value for header {k:?}")))?;
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
                Transport::Http {
                    client,
                    endpoint: target.endpoint.clone(),
                    headers,
                }
            }
        };
        Ok(MetricsExporter { transport, timeout })
    }

    /// Sends one request; the error says what went wrong.
    pub async fn export(&mut self, request: ExportMetricsServiceRequest) -> Result<(), String> {
        let limit = self.timeout + Duration::from_secs(1);
        let sent = async {
            match &mut self.transport {
                Transport::Grpc { client, metadata } => {
                    let mut req = tonic::Request::new(request);
                    for (k, v) in metadata.iter() {
                        req.metadata_mut().insert(k.clone(), v.clone());
                    }
                    let reply = client
                        .export(req)
                        .await
                        .map_err(|s| format!("gRPC status {:?}: {}", s.code(), s.message()))?;
                    match reply.get_ref().partial_success.as_ref() {
                        Some(p) if p.rejected_data_points > 0 => Err(format!(
                            "the collector rejected {} data points: {}",
                            p.rejected_data_points, p.error_message
                        )),
                        _ => Ok(()),
                    }
                }
                Transport::Http {
                    client,
                    endpoint,
                    headers,
                } => {
                    let reply = client
                        .post(endpoint.as_str())
                        .headers(headers.clone())
                        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                        .body(request.encode_to_vec())
                        .send()
                        .await
                        .map_err(|e| format!("HTTP request failed: {e}"))?;
                    if reply.status().is_success() {
                        Ok(())
                    } else {
                        Err(format!("HTTP status {}", reply.status()))
                    }
                }
            }
        };
        match tokio::time::timeout(limit, sent).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn nothing_set_means_no_otlp_metrics() {
        let t = resolve(&ExportConfig::default(), &MetricsConfig::default(), &[]).unwrap();
        assert_eq!(t, None);
    }

    #[test]
    fn base_endpoint_gets_the_metrics_path_for_http() {
        let t = resolve(
            &ExportConfig::default(),
            &MetricsConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.endpoint, "http://collector:4318/v1/metrics");
        assert_eq!(t.protocol, Protocol::HttpProtobuf);
        assert_eq!(t.interval, DEFAULT_INTERVAL);
        assert_eq!(t.temporality, Temporality::Cumulative);
        // gRPC takes the base as it is.
        let t = resolve(
            &ExportConfig::default(),
            &MetricsConfig::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.endpoint, "http://collector:4317");
        assert_eq!(t.protocol, Protocol::Grpc);
    }

    #[test]
    fn metric_variables_win_over_the_shared_ones() {
        let t = resolve(
            &ExportConfig::default(),
            &MetricsConfig::default(),
            &[
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
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.endpoint, "http://b:9000/custom");
        assert_eq!(t.protocol, Protocol::HttpProtobuf);
        assert_eq!(t.headers, vec![("x-b".to_string(), "2".to_string())]);
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
        assert_eq!(t.endpoint, "http://cfg:4317");
        assert_eq!(t.interval, Duration::from_millis(250));
        assert_eq!(t.temporality, Temporality::Delta);
        metrics.otlp.endpoint = Some("http://full:4317".into());
        let t = resolve(&export, &metrics, &[]).unwrap().unwrap();
        assert_eq!(t.endpoint, "http://full:4317");
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
