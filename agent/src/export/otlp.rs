//! OTLP export, by gRPC or HTTP/protobuf, with the `opentelemetry-otlp`
//! crate.
//!
//! An OTLP exporter carries a single resource, but spans come from many
//! processes. So there is one exporter per resource (per `Arc<Resource>`
//! from the enrich stage), created when the first span of that process is
//! sent and kept in a small LRU cache ([`MAX_EXPORTERS`]). All of them share
//! one transport: one gRPC channel (one HTTP/2 connection, multiplexed) or
//! one HTTP client with its connection pool.
//!
//! A flush groups its spans by resource and sends one request per group,
//! all groups at once. The worker starts the next flush only after this one
//! finished, so an exporter is never called twice at the same time.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind as OtelKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use tokio::task::{JoinHandle, JoinSet};

use super::{ExportError, ExportItem, OtlpTarget, Protocol};
use crate::enrich::Resource;
use crate::span::model::{AttrValue, Span, SpanKind, SpanStatus, Text};
use crate::stats::Stats;

/// Exporters (one per process resource) kept at once.
pub const MAX_EXPORTERS: usize = 256;

/// The instrumentation scope of every span sonde exports.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("sonde")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// Converts a sonde span into the SDK's span record.
///
/// A parent span id comes from a W3C `traceparent` seen on the wire, so it
/// belongs to another process: the parent is marked remote.
pub fn to_span_data(span: Span, scope: InstrumentationScope) -> SpanData {
    let span_context = SpanContext::new(
        TraceId::from_bytes(span.trace_id),
        SpanId::from_bytes(span.span_id),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    let (parent_span_id, parent_span_is_remote) = match span.parent_span_id {
        Some(id) => (SpanId::from_bytes(id), true),
        None => (SpanId::INVALID, false),
    };
    let attributes = span
        .attributes
        .into_iter()
        .map(|(k, v)| KeyValue::new(k, to_value(v)))
        .collect();
    SpanData {
        span_context,
        parent_span_id,
        parent_span_is_remote,
        span_kind: match span.kind {
            SpanKind::Server => OtelKind::Server,
            SpanKind::Client => OtelKind::Client,
        },
        name: span.name.into(),
        start_time: unix_ns_to_time(span.start_unix_ns),
        end_time: unix_ns_to_time(span.end_unix_ns),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match span.status {
            SpanStatus::Unset => Status::Unset,
            SpanStatus::Error { description } => Status::error(description),
        },
        instrumentation_scope: scope,
    }
}

fn unix_ns_to_time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn to_value(v: AttrValue) -> Value {
    match v {
        AttrValue::Str(Text::Static(s)) => s.into(),
        AttrValue::Str(Text::Inline(s)) => s.as_str().to_owned().into(),
        AttrValue::Str(Text::Owned(s)) => s.into(),
        AttrValue::Int(i) => i.into(),
        AttrValue::Bool(b) => b.into(),
    }
}

/// The SDK form of a process resource (no attribute is added: the SDK's
/// own detectors describe the agent, not the traced process).
pub fn to_sdk_resource(resource: &Resource) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder_empty()
        .with_attributes(
            resource
                .attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), to_value(v.clone()))),
        )
        .build()
}

/// The transport every exporter shares.
enum Transport {
    Grpc {
        channel: tonic::transport::Channel,
        metadata: Arc<
            Vec<(
                tonic::metadata::AsciiMetadataKey,
                tonic::metadata::AsciiMetadataValue,
            )>,
        >,
    },
    Http {
        endpoint: String,
        client: Arc<HeaderClient>,
    },
}

struct CachedExporter {
    /// Held so that the pointer used as key stays this resource's.
    _resource: Arc<Resource>,
    exporter: Arc<opentelemetry_otlp::SpanExporter>,
    last_used: u64,
}

/// OTLP state owned by the export worker.
pub(crate) struct OtlpSink {
    transport: Transport,
    timeout: Duration,
    scope: InstrumentationScope,
    exporters: HashMap<usize, CachedExporter>,
    clock: u64,
}

impl OtlpSink {
    /// Sets up the shared transport and builds one exporter as a check, so
    /// that a configuration the crate refuses (for example an unsupported
    /// `OTEL_EXPORTER_OTLP_COMPRESSION`) fails at start. Needs a tokio
    /// runtime context.
    pub(crate) fn new(target: &OtlpTarget, timeout: Duration) -> Result<Self, ExportError> {
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
                    channel: endpoint.connect_lazy(),
                    metadata: Arc::new(metadata),
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
                    endpoint: target.endpoint.clone(),
                    client: Arc::new(HeaderClient {
                        inner: client,
                        headers,
                    }),
                }
            }
        };
        let sink = OtlpSink {
            transport,
            timeout,
            scope: scope(),
            exporters: HashMap::new(),
            clock: 0,
        };
        let probe = Resource {
            service_name: "sonde-probe".into(),
            attributes: Vec::new(),
        };
        sink.build_exporter(&probe).map_err(ExportError::Build)?;
        Ok(sink)
    }

    fn build_exporter(
        &self,
        resource: &Resource,
    ) -> Result<opentelemetry_otlp::SpanExporter, String> {
        let built = match &self.transport {
            Transport::Grpc { channel, metadata } => {
                let metadata = Arc::clone(metadata);
                // Runs after the crate's own metadata (which includes the
                // OTEL_EXPORTER_OTLP_*HEADERS variables), so sonde's resolved
                // headers are what the collector sees.
                let set_headers = move |mut request: tonic::Request<()>| {
                    for (k, v) in metadata.iter() {
                        request.metadata_mut().insert(k.clone(), v.clone());
                    }
                    Ok(request)
                };
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_channel(channel.clone())
                    .with_interceptor(set_headers)
                    .with_timeout(self.timeout)
                    .build()
            }
            Transport::Http { endpoint, client } => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint.clone())
                .with_timeout(self.timeout)
                .with_shared_http_client(
                    Arc::clone(client) as Arc<dyn opentelemetry_http::HttpClient>
                )
                .build(),
        };
        let mut exporter = built.map_err(|e| e.to_string())?;
        exporter.set_resource(&to_sdk_resource(resource));
        Ok(exporter)
    }

    /// The exporter of `resource`, created on first use.
    fn exporter_for(
        &mut self,
        resource: &Arc<Resource>,
    ) -> Result<Arc<opentelemetry_otlp::SpanExporter>, String> {
        self.clock += 1;
        let key = Arc::as_ptr(resource) as usize;
        if let Some(cached) = self.exporters.get_mut(&key) {
            cached.last_used = self.clock;
            return Ok(Arc::clone(&cached.exporter));
        }
        let exporter = Arc::new(self.build_exporter(resource)?);
        if self.exporters.len() >= MAX_EXPORTERS
            && let Some(oldest) = self
                .exporters
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| *k)
        {
            self.exporters.remove(&oldest);
        }
        self.exporters.insert(
            key,
            CachedExporter {
                _resource: Arc::clone(resource),
                exporter: Arc::clone(&exporter),
                last_used: self.clock,
            },
        );
        Ok(exporter)
    }

    /// Sends `batch`: one request per resource, all at once, in a task of
    /// its own. Counts every span as exported or failed (and in `counted`),
    /// and returns the error messages.
    pub(crate) fn flush(
        &mut self,
        batch: Vec<ExportItem>,
        stats: Arc<Stats>,
        counted: Arc<AtomicU64>,
    ) -> JoinHandle<Vec<String>> {
        let mut groups: Vec<(Arc<Resource>, Vec<SpanData>)> = Vec::new();
        let mut index: HashMap<usize, usize> = HashMap::new();
        for item in batch {
            let key = Arc::as_ptr(&item.resource) as usize;
            let i = *index.entry(key).or_insert_with(|| {
                groups.push((Arc::clone(&item.resource), Vec::new()));
                groups.len() - 1
            });
            groups[i]
                .1
                .push(to_span_data(item.span, self.scope.clone()));
        }

        let mut errors = Vec::new();
        let mut sends = Vec::with_capacity(groups.len());
        for (resource, spans) in groups {
            match self.exporter_for(&resource) {
                Ok(exporter) => sends.push((exporter, spans)),
                Err(e) => {
                    let n = spans.len() as u64;
                    Stats::add(&stats.spans_export_failed, n);
                    counted.fetch_add(n, Ordering::Relaxed);
                    errors.push(format!(
                        "cannot build an exporter for service {:?}: {e}",
                        resource.service_name
                    ));
                }
            }
        }

        // The crate bounds retries by the timeout but not a request already
        // under way; this is the last word.
        let limit = self.timeout * 2 + Duration::from_secs(1);
        tokio::spawn(async move {
            let mut set = JoinSet::new();
            for (exporter, spans) in sends {
                set.spawn(async move {
                    let n = spans.len() as u64;
                    let result = tokio::time::timeout(limit, exporter.export(spans)).await;
                    (n, result)
                });
            }
            while let Some(joined) = set.join_next().await {
                let Ok((n, result)) = joined else { continue };
                match result {
                    Ok(Ok(())) => Stats::add(&stats.spans_exported, n),
                    Ok(Err(e)) => {
                        Stats::add(&stats.spans_export_failed, n);
                        errors.push(e.to_string());
                    }
                    Err(_) => {
                        Stats::add(&stats.spans_export_failed, n);
                        errors.push(format!("no answer within {limit:?}"));
                    }
                }
                counted.fetch_add(n, Ordering::Relaxed);
            }
            errors
        })
    }
}

/// The HTTP client every HTTP exporter shares. It sets sonde's resolved
/// headers on each request last, so that they win over what the crate adds
/// from the `OTEL_EXPORTER_OTLP_*HEADERS` variables on its own.
#[derive(Debug)]
struct HeaderClient {
    inner: reqwest::Client,
    headers: reqwest::header::HeaderMap,
}

type SendResult =
    Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError>;

impl opentelemetry_http::HttpClient for HeaderClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        mut request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Pin<Box<dyn Future<Output = SendResult> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        for (name, value) in &self.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        opentelemetry_http::HttpClient::send_bytes(&self.inner, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_conversion() {
        let span = Span {
            trace_id: [0x11; 16],
            span_id: [0x22; 8],
            parent_span_id: Some([0x33; 8]),
            name: "GET /users/{id}".into(),
            kind: SpanKind::Server,
            start_unix_ns: 1_700_000_000_000_000_123,
            end_unix_ns: 1_700_000_000_500_000_000,
            attributes: vec![
                ("http.request.method", "GET".into()),
                ("http.response.status_code", AttrValue::Int(500)),
                ("sonde.truncated", AttrValue::Bool(true)),
            ],
            status: SpanStatus::Error {
                description: "internal".into(),
            },
            pid: 7,
        };
        let data = to_span_data(span, scope());
        assert_eq!(
            data.span_context.trace_id(),
            TraceId::from_bytes([0x11; 16])
        );
        assert_eq!(data.span_context.span_id(), SpanId::from_bytes([0x22; 8]));
        assert!(data.span_context.is_sampled());
        assert_eq!(data.parent_span_id, SpanId::from_bytes([0x33; 8]));
        assert!(data.parent_span_is_remote);
        assert_eq!(data.span_kind, OtelKind::Server);
        assert_eq!(data.name, "GET /users/{id}");
        assert_eq!(
            data.start_time.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_700_000_000, 123)
        );
        assert_eq!(
            data.end_time.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_700_000_000, 500_000_000)
        );
        assert_eq!(
            data.attributes,
            vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.response.status_code", 500_i64),
                KeyValue::new("sonde.truncated", true),
            ]
        );
        assert_eq!(data.status, Status::error("internal"));
        assert_eq!(data.instrumentation_scope.name(), "sonde");
        assert_eq!(
            data.instrumentation_scope.version(),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn root_client_span_conversion() {
        let span = Span {
            trace_id: [0xab; 16],
            span_id: [0xcd; 8],
            parent_span_id: None,
            name: "SET".into(),
            kind: SpanKind::Client,
            start_unix_ns: 5,
            end_unix_ns: 9,
            attributes: vec![],
            status: SpanStatus::Unset,
            pid: 1,
        };
        let data = to_span_data(span, scope());
        assert_eq!(data.parent_span_id, SpanId::INVALID);
        assert!(!data.parent_span_is_remote);
        assert_eq!(data.span_kind, OtelKind::Client);
        assert_eq!(data.status, Status::Unset);
        assert_eq!(
            data.end_time.duration_since(data.start_time).unwrap(),
            Duration::from_nanos(4)
        );
    }

    #[test]
    fn resource_conversion() {
        let r = Resource {
            service_name: "shop".into(),
            attributes: vec![
                ("service.name".into(), "shop".into()),
                ("process.pid".into(), AttrValue::Int(12)),
            ],
        };
        let sdk = to_sdk_resource(&r);
        assert_eq!(sdk.len(), 2);
        assert_eq!(
            sdk.get(&opentelemetry::Key::from_static_str("service.name")),
            Some(Value::from("shop"))
        );
        assert_eq!(
            sdk.get(&opentelemetry::Key::from_static_str("process.pid")),
            Some(Value::I64(12))
        );
    }
}
