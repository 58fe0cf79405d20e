//! Spans in the OTLP trace data model, and the span worker's OTLP side.
//!
//! A flush groups its spans by process resource and sends one
//! `ExportTraceServiceRequest` per process, all at once, over the signal's
//! [`OtlpClient`]. The worker starts the next flush only after this one
//! finished.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span as PSpan, SpanFlags, Status, span, status,
};
use tokio::task::{JoinHandle, JoinSet};

use super::client::SendError;
use super::{OtlpClient, OtlpTarget, attr_value, kv};
use crate::enrich::Resource;
use crate::export::{ExportError, ExportItem, RouteCounters};
use crate::span::model::{Span, SpanKind, SpanStatus};

/// A sonde span in the OTLP data model.
///
/// A parent span id comes from a W3C `traceparent` seen on the wire, so it
/// belongs to another process: the parent is marked remote. A tenant a
/// header rule gave the request goes in attribute `tenant_attribute`
/// (`tenants.attribute`); the process's own is on the resource.
pub fn to_proto(span: Span, tenant_attribute: &str) -> PSpan {
    let mut flags = 1 | SpanFlags::ContextHasIsRemoteMask as u32; // sampled
    let parent_span_id = match span.parent_span_id {
        Some(id) => {
            flags |= SpanFlags::ContextIsRemoteMask as u32;
            id.to_vec()
        }
        None => Vec::new(),
    };
    let (code, message) = match span.status {
        SpanStatus::Unset => (status::StatusCode::Unset, String::new()),
        SpanStatus::Error { description } => (status::StatusCode::Error, description.clone()),
    };
    PSpan {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        parent_span_id,
        flags,
        name: span.name.clone(),
        kind: match span.kind {
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: span.start_unix_ns,
        end_time_unix_nano: span.end_unix_ns,
        attributes: span
            .attributes
            .iter()
            .map(|(k, v)| kv(k, attr_value(v)))
            .chain(span.tenant.map(|t| {
                let name = match tenant_attribute {
                    "" => crate::enrich::tenant::DEFAULT_ATTRIBUTE,
                    name => name,
                };
                kv(name, Value::StringValue(t.to_string()))
            }))
            .collect(),
        status: Some(Status {
            code: code as i32,
            message,
        }),
        ..Default::default()
    }
}

/// The request that carries `spans` of one process.
pub fn request(resource_of: &Resource, spans: Vec<PSpan>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![for_resource!(
            ResourceSpans,
            scope_spans: ScopeSpans { spans },
            resource_of
        )],
    }
}

/// The OTLP side of the span worker.
pub(crate) struct TraceSink {
    client: Arc<OtlpClient>,
}

impl TraceSink {
    /// Needs a tokio runtime context.
    pub(crate) fn new(target: &OtlpTarget) -> Result<Self, ExportError> {
        Ok(TraceSink {
            client: Arc::new(OtlpClient::new(target)?),
        })
    }

    /// Sends `batch`: one request per resource, all at once, in a task of
    /// its own. Counts every span as exported or failed (and in `counted`),
    /// and returns the error messages.
    pub(crate) fn flush(
        &mut self,
        batch: Vec<ExportItem>,
        counters: RouteCounters,
        counted: Arc<AtomicU64>,
    ) -> JoinHandle<Vec<String>> {
        let mut groups: Vec<(Arc<Resource>, Vec<PSpan>)> = Vec::new();
        let mut index: HashMap<usize, usize> = HashMap::new();
        for item in batch {
            let key = Arc::as_ptr(&item.resource) as usize;
            let i = *index.entry(key).or_insert_with(|| {
                groups.push((Arc::clone(&item.resource), Vec::new()));
                groups.len() - 1
            });
            groups[i]
                .1
                .push(to_proto(item.span, &item.resource.tenant.attribute));
        }
        let client = Arc::clone(&self.client);
        tokio::spawn(async move {
            let mut set = JoinSet::new();
            for (resource_of, spans) in groups {
                let client = Arc::clone(&client);
                set.spawn(async move {
                    let n = spans.len() as u64;
                    let result = client.export(&request(&resource_of, spans)).await;
                    (n, result)
                });
            }
            let mut errors = Vec::new();
            while let Some(joined) = set.join_next().await {
                let Ok((n, result)) = joined else { continue };
                let failed = match &result {
                    Ok(()) => 0,
                    Err(SendError::Rejected { count, .. }) => (*count).min(n),
                    Err(_) => n,
                };
                counters.exported(n - failed);
                counters.failed(failed);
                if let Err(e) = result {
                    errors.push(e.to_string());
                }
                counted.fetch_add(n, Ordering::Relaxed);
            }
            errors
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::model::AttrValue;

    fn value(s: &PSpan, key: &str) -> Option<Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    }

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
            endpoints: crate::capture::Endpoints::UNKNOWN,
            tenant: None,
            tenant_headers: Default::default(),
            rest: Default::default(),
        };
        let p = to_proto(span, "tenant.id");
        assert_eq!(p.trace_id, vec![0x11; 16]);
        assert_eq!(p.span_id, vec![0x22; 8]);
        assert_eq!(p.parent_span_id, vec![0x33; 8]);
        // Sampled, and the parent is remote.
        assert_eq!(p.flags, 0x301);
        assert_eq!(p.kind, span::SpanKind::Server as i32);
        assert_eq!(p.name, "GET /users/{id}");
        assert_eq!(p.start_time_unix_nano, 1_700_000_000_000_000_123);
        assert_eq!(p.end_time_unix_nano, 1_700_000_000_500_000_000);
        let keys: Vec<&str> = p.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.request.method",
                "http.response.status_code",
                "sonde.truncated"
            ]
        );
        assert_eq!(
            value(&p, "http.request.method"),
            Some(Value::StringValue("GET".into()))
        );
        assert_eq!(
            value(&p, "http.response.status_code"),
            Some(Value::IntValue(500))
        );
        assert_eq!(value(&p, "sonde.truncated"), Some(Value::BoolValue(true)));
        assert_eq!(
            p.status,
            Some(Status {
                code: status::StatusCode::Error as i32,
                message: "internal".into()
            })
        );
    }

    #[test]
    fn root_client_span_conversion() {
        let mut span = crate::export::testing::span("SET", 0xab, (5, 9), vec![]);
        span.kind = SpanKind::Client;
        let p = to_proto(span, "tenant.id");
        assert!(p.parent_span_id.is_empty());
        assert_eq!(p.flags, 0x101);
        assert_eq!(p.kind, span::SpanKind::Client as i32);
        assert_eq!(p.status.map(|s| s.code), Some(0));
    }

    /// A header rule's tenant is a span attribute under the configured
    /// name; a span without one carries none (its resource does).
    #[test]
    fn a_requests_tenant_is_a_span_attribute() {
        let mut span = crate::export::testing::span("GET /", 1, (5, 9), vec![]);
        span.tenant = Some("acme".into());
        let p = to_proto(span.clone(), "org.id");
        assert_eq!(value(&p, "org.id"), Some(Value::StringValue("acme".into())));
        assert_eq!(value(&p, "tenant.id"), None);
        span.tenant = None;
        let p = to_proto(span, "org.id");
        assert!(p.attributes.is_empty(), "{:?}", p.attributes);
    }

    #[test]
    fn request_carries_the_resource_and_scope() {
        let r = Resource {
            service_name: "shop".into(),
            attributes: vec![
                ("service.name".into(), "shop".into()),
                ("process.pid".into(), AttrValue::Int(12)),
            ],
            ..Default::default()
        };
        let req = request(&r, vec![PSpan::default()]);
        let rs = &req.resource_spans[0];
        let attrs = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].key, "service.name");
        assert_eq!(
            attrs[1].value.as_ref().unwrap().value,
            Some(Value::IntValue(12))
        );
        let scope = rs.scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(scope.name, "sonde");
        assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(rs.scope_spans[0].spans.len(), 1);
    }
}
