//! HTTP/1.x spans: requests paired with responses in order, then turned into
//! spans with the HTTP semantic conventions.

use std::collections::VecDeque;

use crate::protocol::Direction;
use crate::protocol::http1::{Message, Request, Response};
use crate::span::model::{self, AttrValue, Span, SpanKind, SpanStatus};
use crate::span::{
    HttpRest, HttpSpanOptions, Pairing, PairingLoss, PairingOut, SpanContext, http_server_attrs,
    new_span, route,
};

/// Requests or responses waiting for their other half, per connection; more
/// than this means pairing is lost, and the oldest is dropped and counted.
const MAX_WAITING: usize = 256;

/// Pairs one connection's requests and responses in order (HTTP/1.x
/// answers in request order, pipelined or not).
#[derive(Debug, Default)]
pub struct HttpPairing {
    requests: VecDeque<Request>,
    responses: VecDeque<Response>,
}

impl Pairing for HttpPairing {
    type Message = Message;

    /// Takes one parsed message; pushes a span for every completed pair.
    fn push(&mut self, msg: Message, out: &mut PairingOut<'_>) {
        match msg {
            Message::Request(req) => {
                if self.requests.len() >= MAX_WAITING {
                    self.requests.pop_front();
                    out.loss.requests_unanswered += 1;
                }
                self.requests.push_back(req);
            }
            // Interim responses (100 Continue, 103 Early Hints) do not answer.
            Message::Response(resp) if (100..200).contains(&resp.status) => {}
            Message::Response(resp) => {
                if self.responses.len() >= MAX_WAITING {
                    self.responses.pop_front();
                    out.loss.responses_unpaired += 1;
                }
                self.responses.push_back(resp);
            }
        }
        while let (Some(req), Some(resp)) = (self.requests.front(), self.responses.front()) {
            // A response that ended before its request began answers a
            // request we never saw: drop it rather than shift every pair.
            if resp.last_ns < req.first_ns {
                self.responses.pop_front();
                out.loss.responses_unpaired += 1;
                continue;
            }
            if let (Some(req), Some(resp)) = (self.requests.pop_front(), self.responses.pop_front())
            {
                out.spans
                    .push(build_span(req, &resp, out.ctx, out.ctx.options.http));
            }
        }
    }

    /// The connection ended: whatever still waits is lost.
    fn finish(&mut self, loss: &mut PairingLoss) {
        loss.requests_unanswered += self.requests.len() as u64;
        loss.responses_unpaired += self.responses.len() as u64;
        self.requests.clear();
        self.responses.clear();
    }
}

/// The method as an attribute value; the common ones without allocating.
fn method_value(method: &str) -> AttrValue {
    const COMMON: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    match COMMON.iter().find(|m| **m == method) {
        Some(m) => AttrValue::fixed(m),
        None => AttrValue::from(method),
    }
}

/// `{method} {route}`, without the formatting machinery (every span).
fn span_name(method: &str, route: &str) -> String {
    let mut name = String::with_capacity(method.len() + 1 + route.len());
    name.push_str(method);
    name.push(' ');
    name.push_str(route);
    name
}

/// Builds the span of one request/response pair: at once what metrics and
/// sampling read, the rest when it is kept (see [`Span::complete`]).
pub fn build_span(
    req: Request,
    resp: &Response,
    ctx: &SpanContext,
    options: HttpSpanOptions,
) -> Span {
    let kind = match req.dir {
        Direction::Ingress => SpanKind::Server,
        Direction::Egress => SpanKind::Client,
    };
    let route = route::route(route::path_only(&req.target));
    let mut attrs: Vec<(&'static str, AttrValue)> = Vec::with_capacity(16);
    attrs.push(("http.request.method", method_value(&req.method)));
    attrs.push(("http.response.status_code", i64::from(resp.status).into()));
    attrs.push(("url.scheme", AttrValue::fixed("http")));
    let span_name = span_name(&req.method, &route);
    attrs.push(("http.route", route.into()));
    attrs.push(("network.protocol.name", AttrValue::fixed("http")));
    let version = match req.version_minor {
        0 => AttrValue::fixed("1.0"),
        1 => AttrValue::fixed("1.1"),
        minor => format!("1.{minor}").into(),
    };
    attrs.push(("network.protocol.version", version));
    http_server_attrs(&mut attrs, kind, &ctx.endpoints, req.host.as_deref());
    if let Some(n) = req.content_length {
        attrs.push(("http.request.body.size", (n as i64).into()));
    }
    if let Some(n) = resp.content_length {
        attrs.push(("http.response.body.size", (n as i64).into()));
    }

    // Servers own 5xx; a client also failed on 4xx.
    let failed = match kind {
        SpanKind::Server => resp.status >= 500,
        SpanKind::Client => resp.status >= 400,
    };
    let status = if failed {
        attrs.push(("error.type", resp.status.to_string().into()));
        SpanStatus::Error {
            description: String::new(),
        }
    } else {
        SpanStatus::Unset
    };

    let (first_ns, kept_headers) = (req.first_ns, req.kept_headers);
    let rest = HttpRest {
        target: Some(req.target),
        host: req.host,
        scheme: Some(model::Text::Static("http")),
        unnamed: Some("localhost"),
        url: true,
        user_agent: req.user_agent,
        traceparent: req.traceparent,
        capture_query: options.capture_query,
    };
    Span {
        attributes: attrs,
        status,
        tenant_headers: kept_headers,
        rest: model::Rest::later(move |span| rest.write(span)),
        ..new_span(ctx, span_name, kind, first_ns, resp.last_ns)
    }
}
