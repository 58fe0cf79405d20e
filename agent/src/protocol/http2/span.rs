//! HTTP/2 and gRPC spans.
//!
//! The HTTP/2 parser pairs requests with responses itself (by stream id), so
//! pairing here only turns each finished stream into one span and counts
//! what the parser dropped. A stream whose request or response
//! `content-type` is `application/grpc*`, or whose response carries
//! `grpc-status`, becomes an RPC span; any other an HTTP span with the same
//! attributes as HTTP/1.x.
//!
//! Fields the parser could not decode (HPACK entries from before the agent
//! was watching, header blocks not captured) are absent from the message and
//! so from the span: no route without a path, no status code without a
//! status. Nothing is filled in by guessing.

use crate::protocol::Direction;
use crate::protocol::http2::{Message, Reset, StreamDone};
use crate::span::model::{self, AttrValue, Span, SpanKind, SpanStatus};
use crate::span::{
    HttpRest, Pairing, PairingLoss, PairingOut, SpanContext, http_server_attrs, new_span, route,
};

/// Turns one connection's finished HTTP/2 streams into spans.
#[derive(Debug, Default)]
pub struct Http2Pairing {}

impl Pairing for Http2Pairing {
    type Message = Message;

    fn push(&mut self, msg: Message, out: &mut PairingOut<'_>) {
        match msg {
            Message::Stream(stream) => out.spans.push(build_span(*stream, out.ctx)),
            Message::Lost {
                requests_unanswered,
                responses_unpaired,
            } => {
                out.loss.requests_unanswered += requests_unanswered;
                out.loss.responses_unpaired += responses_unpaired;
            }
        }
    }

    /// Nothing waits here: open streams live in the parser, which reports
    /// them when the connection closes.
    fn finish(&mut self, _loss: &mut PairingLoss) {}
}

/// gRPC status codes that are errors on the server side (OTel gRPC
/// conventions); on the client side every non-zero code is.
const GRPC_SERVER_ERRORS: [u32; 6] = [2, 4, 12, 13, 14, 15];

/// Is this stream a gRPC call?
pub fn is_grpc(s: &StreamDone) -> bool {
    let grpc_type = |t: &Option<String>| {
        t.as_deref()
            .is_some_and(|t| t.to_ascii_lowercase().starts_with("application/grpc"))
    };
    grpc_type(&s.request.content_type)
        || grpc_type(&s.response_content_type)
        || s.grpc_status.is_some()
}

/// Service and method of a gRPC path `/package.Service/Method`.
pub fn grpc_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let ok = |s: &str| !s.is_empty() && !s.contains('/');
    (ok(service) && ok(method)).then_some((service, method))
}

/// The name of an HTTP/2 error code (RFC 9113 section 7).
pub fn error_code_name(code: u32) -> Option<&'static str> {
    Some(match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => return None,
    })
}

/// `error.type` of a stream reset before its response ended, if it was.
fn reset_error(s: &StreamDone) -> Option<String> {
    let reset: Reset = s.reset.filter(|_| !s.response_ended)?;
    Some(
        reset
            .code
            .and_then(error_code_name)
            .unwrap_or("RST_STREAM")
            .to_owned(),
    )
}

/// Builds the span of one finished stream: at once what metrics and
/// sampling read, the rest when it is kept (see [`Span::complete`]).
pub fn build_span(s: StreamDone, ctx: &SpanContext) -> Span {
    let kind = match s.request_dir {
        Direction::Ingress => SpanKind::Server,
        Direction::Egress => SpanKind::Client,
    };
    let grpc = is_grpc(&s);
    let req = &s.request;
    let path = req.path.as_deref().map(route::path_only);
    let mut attrs: Vec<(&'static str, AttrValue)> = Vec::with_capacity(20);
    let mut error: Option<String> = None;
    let mut description = String::new();
    let name;

    if grpc {
        attrs.push(("rpc.system", AttrValue::fixed("grpc")));
        match path.and_then(grpc_method) {
            Some((service, method)) => {
                attrs.push(("rpc.service", service.into()));
                attrs.push(("rpc.method", method.into()));
                name = format!("{service}/{method}");
            }
            None => name = "grpc".to_owned(),
        }
        if let Some(code) = s.grpc_status {
            attrs.push(("rpc.grpc.status_code", i64::from(code).into()));
            let failed = match kind {
                SpanKind::Server => GRPC_SERVER_ERRORS.contains(&code),
                SpanKind::Client => code != 0,
            };
            if failed {
                error = Some(code.to_string());
                description = s.grpc_message.clone().unwrap_or_default();
            }
        } else if let Some(e) = reset_error(&s) {
            error = Some(e);
        } else if let Some(status) = s.status.filter(|&st| st != 200) {
            // Not a gRPC answer at all (a proxy's error page, say).
            attrs.push(("http.response.status_code", i64::from(status).into()));
            error = Some(status.to_string());
        }
    } else {
        let method = req.method.as_deref().filter(|m| !m.is_empty());
        if let Some(m) = method {
            attrs.push(("http.request.method", m.into()));
        }
        if let Some(status) = s.status {
            attrs.push(("http.response.status_code", i64::from(status).into()));
        }
        if let Some(scheme) = &req.scheme {
            attrs.push(("url.scheme", scheme.as_str().into()));
        }
        let route = path.map(route::route);
        if let Some(r) = &route {
            attrs.push(("http.route", r.as_str().into()));
        }
        name = match (method, &route) {
            (Some(m), Some(r)) => format!("{m} {r}"),
            (Some(m), None) => m.to_owned(),
            (None, _) => "HTTP".to_owned(),
        };
        if let Some(n) = s.request_body_size.filter(|&n| n > 0) {
            attrs.push(("http.request.body.size", (n as i64).into()));
        }
        if let Some(n) = s.response_body_size.filter(|&n| n > 0) {
            attrs.push(("http.response.body.size", (n as i64).into()));
        }
        // Servers own 5xx; a client also failed on 4xx.
        let failed = s.status.is_some_and(|st| match kind {
            SpanKind::Server => st >= 500,
            SpanKind::Client => st >= 400,
        });
        if let Some(st) = s.status.filter(|_| failed) {
            error = Some(st.to_string());
        } else if let Some(e) = reset_error(&s) {
            error = Some(e);
        }
    }

    attrs.push(("network.protocol.name", AttrValue::fixed("http")));
    attrs.push(("network.protocol.version", AttrValue::fixed("2")));
    http_server_attrs(&mut attrs, kind, &ctx.endpoints, req.authority.as_deref());
    let status = match error {
        Some(e) => {
            attrs.push(("error.type", e.into()));
            SpanStatus::Error { description }
        }
        None => SpanStatus::Unset,
    };
    let (first_ns, last_ns) = (s.first_ns, s.last_ns);
    let req = s.request;
    let rest = HttpRest {
        target: req.path,
        host: req.authority,
        scheme: req.scheme.map(model::Text::Owned),
        unnamed: None,
        url: !grpc,
        user_agent: req.user_agent,
        traceparent: req.traceparent,
        capture_query: ctx.options.http.capture_query,
    };
    Span {
        attributes: attrs,
        status,
        tenant_headers: req.kept_headers,
        rest: model::Rest::later(move |span| rest.write(span)),
        ..new_span(ctx, name, kind, first_ns, last_ns)
    }
}

#[cfg(test)]
#[path = "span_tests.rs"]
mod tests;
