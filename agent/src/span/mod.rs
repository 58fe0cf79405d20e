//! Span stage: pairs requests with responses and builds spans with the
//! OpenTelemetry semantic conventions. SERVER spans for requests the process
//! read, CLIENT spans for requests it wrote.

pub mod ids;
pub mod model;
pub mod route;
pub mod sql;

use crate::capture::{Endpoint, Endpoints};
use model::AttrValue;

/// What the span stage knows of the connection a message came from.
#[derive(Clone, Copy, Debug)]
pub struct SpanContext {
    pub pid: u32,
    pub endpoints: Endpoints,
    pub options: SpanOptions,
}

/// Span options from the config.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpanOptions {
    pub http: HttpSpanOptions,
    pub db: DbSpanOptions,
}

/// HTTP span options (HTTP/1.x and HTTP/2) from the config.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpSpanOptions {
    pub capture_query: bool,
}

/// Database span options from the config.
#[derive(Clone, Copy, Debug)]
pub struct DbSpanOptions {
    /// Replace literals in `db.query.text` with `?` (on unless configured off).
    pub sanitize_query: bool,
}

impl Default for DbSpanOptions {
    fn default() -> Self {
        DbSpanOptions {
            sanitize_query: true,
        }
    }
}

/// What pairing lost, for the agent's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PairingLoss {
    pub requests_unanswered: u64,
    pub responses_unpaired: u64,
}

/// What pairing reads (the connection) and writes (spans, losses): one
/// argument, the same for every protocol.
pub struct PairingOut<'a> {
    pub ctx: &'a SpanContext,
    pub spans: &'a mut Vec<Span>,
    pub loss: PairingLoss,
}

impl<'a> PairingOut<'a> {
    /// Spans of the connection `ctx` go to `spans`; no loss yet.
    pub fn new(ctx: &'a SpanContext, spans: &'a mut Vec<Span>) -> Self {
        PairingOut {
            ctx,
            spans,
            loss: PairingLoss::default(),
        }
    }
}

/// Turns one connection's parsed messages into spans.
pub trait Pairing: Default {
    type Message;
    /// Takes one message; pushes a span for every request it completes.
    fn push(&mut self, msg: Self::Message, out: &mut PairingOut<'_>);
    /// The connection ended: whatever still waits is lost, and counted.
    fn finish(&mut self, loss: &mut PairingLoss);
}

use model::Span;

/// A span of the connection `ctx` names from `start_ns` to `end_ns` (never
/// before its start); no attributes yet, status unset, no ids until
/// [`Span::complete`].
pub fn new_span(
    ctx: &SpanContext,
    name: String,
    kind: model::SpanKind,
    start_ns: u64,
    end_ns: u64,
) -> Span {
    Span {
        trace_id: [0; 16],
        span_id: [0; 8],
        parent_span_id: None,
        name,
        kind,
        start_unix_ns: start_ns,
        end_unix_ns: end_ns.max(start_ns),
        attributes: Vec::new(),
        status: model::SpanStatus::Unset,
        pid: ctx.pid,
        endpoints: ctx.endpoints,
        tenant: None,
        tenant_headers: Default::default(),
        rest: model::Rest::default(),
    }
}

/// `spans` as exported (for tests that read what only exported spans carry).
#[cfg(test)]
pub fn completed(mut spans: Vec<Span>) -> Vec<Span> {
    spans.iter_mut().for_each(Span::complete);
    spans
}

/// Puts `span` in the trace a W3C `traceparent` value names, if it is valid.
pub fn join_trace(span: &mut Span, traceparent: Option<&str>) {
    if let Some((trace, parent)) = traceparent.and_then(ids::parse_traceparent) {
        span.trace_id = trace;
        span.parent_span_id = Some(parent);
    }
}

/// `addr_key`/`port_key` for an IP endpoint; nothing for a Unix socket.
pub fn endpoint_attrs(
    attrs: &mut Vec<(&'static str, AttrValue)>,
    addr_key: &'static str,
    port_key: &'static str,
    ep: Endpoint,
) {
    if let Endpoint::Ip(ip, port) = ep {
        attrs.push((addr_key, ip_value(ip)));
        attrs.push((port_key, i64::from(port).into()));
    }
}

/// The text form of an address; IPv4, on every span, without the
/// formatting machinery `Display` goes through.
pub fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut s = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if octet >= 100 {
            s.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            s.push(char::from(b'0' + octet / 10 % 10));
        }
        s.push(char::from(b'0' + octet % 10));
    }
    s
}

/// An address as an attribute value; IPv4 written in place (every span
/// has one or two).
pub fn ip_value(ip: std::net::IpAddr) -> AttrValue {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string().into();
    };
    let inline = model::Inline::build(|buf| {
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                buf[len] = b'.';
                len += 1;
            }
            for (digit, shown) in [
                (octet / 100, octet >= 100),
                (octet / 10 % 10, octet >= 10),
                (octet % 10, true),
            ] {
                if shown {
                    buf[len] = b'0' + digit;
                    len += 1;
                }
            }
        }
        len
    });
    match inline {
        Some(text) => AttrValue::Str(model::Text::Inline(text)),
        None => ip_text(ip).into(),
    }
}

/// `network.transport` and `network.peer.*` of the span's connection.
pub fn network_attrs(attrs: &mut Vec<(&'static str, AttrValue)>, endpoints: &Endpoints) {
    let transport = match endpoints.peer {
        Endpoint::Unix => "unix",
        _ => "tcp",
    };
    attrs.push(("network.transport", AttrValue::fixed(transport)));
    endpoint_attrs(
        attrs,
        "network.peer.address",
        "network.peer.port",
        endpoints.peer,
    );
}

/// Splits a Host header or an `:authority` (`host`, `host:port`,
/// `[v6]:port`, userinfo cut off) into name and port.
pub fn split_host(host: &str) -> (&str, Option<u16>) {
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if let Some(rest) = host.strip_prefix('[')
        && let Some((addr, tail)) = rest.split_once(']')
    {
        return (addr, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, port.parse().ok()),
        _ => (host, None),
    }
}

/// The server an HTTP request went to, as name and port. A SERVER span
/// names itself by the Host the client asked for (port from the socket
/// when the Host has none); a CLIENT span names the host it asked for, or
/// the socket's peer.
pub fn http_server(
    kind: model::SpanKind,
    endpoints: &Endpoints,
    host: Option<&str>,
) -> (Option<AttrValue>, Option<u16>) {
    let host = host.map(split_host);
    match (kind, host, endpoints.peer) {
        (model::SpanKind::Server, Some((name, port)), _) => {
            let local_port = match endpoints.local {
                Endpoint::Ip(_, p) => Some(p),
                _ => None,
            };
            (Some(name.into()), port.or(local_port))
        }
        (model::SpanKind::Server, None, _) => (None, None),
        (model::SpanKind::Client, Some((name, port)), Endpoint::Ip(_, peer_port)) => {
            (Some(name.into()), Some(port.unwrap_or(peer_port)))
        }
        (model::SpanKind::Client, Some((name, port)), _) => (Some(name.into()), port),
        (model::SpanKind::Client, None, Endpoint::Ip(ip, p)) => (Some(ip_value(ip)), Some(p)),
        (model::SpanKind::Client, None, _) => (None, None),
    }
}

/// `server.address` and `server.port` of an HTTP span (see [`http_server`]):
/// what its metrics read.
pub fn http_server_attrs(
    attrs: &mut Vec<(&'static str, AttrValue)>,
    kind: model::SpanKind,
    endpoints: &Endpoints,
    host: Option<&str>,
) {
    let (name, port) = http_server(kind, endpoints, host);
    if let Some(n) = name {
        attrs.push(("server.address", n));
    }
    if let Some(p) = port {
        attrs.push(("server.port", i64::from(p).into()));
    }
}

/// What an exported HTTP span (HTTP/1.x, HTTP/2, gRPC) carries besides
/// what metrics read, written by [`HttpRest::write`] when it is kept.
pub struct HttpRest {
    /// The request target as sent (`/p?q`); none when not decoded.
    pub target: Option<String>,
    /// The Host header or `:authority`.
    pub host: Option<String>,
    /// The scheme `url.full` takes; none: no `url.full`.
    pub scheme: Option<model::Text>,
    /// The server's name in `url.full` when neither the host nor the
    /// socket names one (none: no `url.full` then).
    pub unnamed: Option<&'static str>,
    /// The URL, the user agent and `url.full` (not for gRPC calls).
    pub url: bool,
    pub user_agent: Option<String>,
    pub traceparent: Option<String>,
    pub capture_query: bool,
}

impl HttpRest {
    pub fn write(&self, span: &mut Span) {
        let attrs = &mut span.attributes;
        let target = self.target.as_deref();
        let path = target.map(route::path_only);
        if self.url {
            if let Some(p) = path {
                attrs.push(("url.path", p.into()));
            }
            if self.capture_query
                && let Some(q) = target.and_then(route::query)
            {
                attrs.push(("url.query", q.into()));
            }
            if let Some(ua) = &self.user_agent {
                attrs.push(("user_agent.original", ua.as_str().into()));
            }
        }
        network_attrs(attrs, &span.endpoints);
        match span.kind {
            model::SpanKind::Server => {
                endpoint_attrs(attrs, "client.address", "client.port", span.endpoints.peer);
            }
            model::SpanKind::Client if self.url => {
                let host = self.host.as_deref();
                if let (Some(scheme), Some(p)) = (&self.scheme, path)
                    && let Some(url) = url_full(scheme, &span.endpoints, host, self.unnamed, p)
                {
                    attrs.push(("url.full", url.into()));
                }
            }
            model::SpanKind::Client => {}
        }
        join_trace(span, self.traceparent.as_deref());
    }
}

/// `url.full` of a CLIENT span: `scheme://host[:port]path`, the port left
/// out when it is the scheme's own; `unnamed` names a server that has no
/// name (none: no `url.full` then).
pub fn url_full(
    scheme: &str,
    endpoints: &Endpoints,
    host: Option<&str>,
    unnamed: Option<&str>,
    path: &str,
) -> Option<String> {
    let (name, port) = http_server(model::SpanKind::Client, endpoints, host);
    let name = match &name {
        Some(AttrValue::Str(n)) => n.as_str(),
        _ => unnamed?,
    };
    let default_port = match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    Some(match port {
        Some(p) if Some(p) != default_port => format!("{scheme}://{name}:{p}{path}"),
        _ => format!("{scheme}://{name}{path}"),
    })
}

/// `server.address` and `server.port` of a database span, what its
/// metrics read: the peer for a CLIENT span, the socket's own address for
/// a SERVER span.
pub fn db_server_attrs(
    attrs: &mut Vec<(&'static str, AttrValue)>,
    kind: model::SpanKind,
    endpoints: &Endpoints,
) {
    let server = match kind {
        model::SpanKind::Client => endpoints.peer,
        model::SpanKind::Server => endpoints.local,
    };
    endpoint_attrs(attrs, "server.address", "server.port", server);
}

/// What an exported span adds to [`db_server_attrs`]: a SERVER span's
/// client, then `network.*`.
pub fn db_peer_attrs(span: &mut Span) {
    if span.kind == model::SpanKind::Server {
        let peer = span.endpoints.peer;
        endpoint_attrs(&mut span.attributes, "client.address", "client.port", peer);
    }
    network_attrs(&mut span.attributes, &span.endpoints);
}

#[cfg(test)]
mod tests {
    use super::split_host;

    #[test]
    fn ip_text_matches_display() {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        for o in 0..=255u8 {
            let ip = IpAddr::V4(Ipv4Addr::from([o, 127, o / 3, 9]));
            assert_eq!(super::ip_text(ip), ip.to_string());
            assert_eq!(super::ip_value(ip), ip.to_string().as_str().into());
        }
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(super::ip_text(v6), "::1");
        for ip in [
            IpAddr::V4(Ipv4Addr::from([255, 255, 255, 255])),
            IpAddr::V4(Ipv4Addr::from([0, 0, 0, 0])),
            IpAddr::V4(Ipv4Addr::from([10, 100, 9, 250])),
            v6,
        ] {
            assert_eq!(super::ip_value(ip), ip.to_string().as_str().into());
        }
    }

    #[test]
    fn host_header_forms() {
        assert_eq!(split_host("example.com"), ("example.com", None));
        assert_eq!(split_host("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(split_host("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_host("[::1]"), ("::1", None));
        assert_eq!(split_host("::1"), ("::1", None));
        assert_eq!(split_host("h:notaport"), ("h", None));
        assert_eq!(split_host("user:pw@h:81"), ("h", Some(81)));
    }
}
