use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::capture::Endpoint;
use crate::capture::Endpoints;
use crate::protocol::http2::tests::expected_get;
use crate::span::SpanOptions;
use crate::span::split_host as split_authority;

fn ctx() -> SpanContext {
    SpanContext {
        pid: 42,
        endpoints: Endpoints {
            local: Endpoint::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 8080),
            peer: Endpoint::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 50000),
        },
        options: SpanOptions::default(),
    }
}

fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}

/// The GET stream of the parser's tests, with values these tests check.
fn stream(dir: Direction) -> StreamDone {
    let mut s = expected_get(dir, 1_000, 5_000);
    s.request.path = some("/users/42?x=1");
    s.request.authority = some("api.example:8080");
    s.request.traceparent = None;
    s.request.user_agent = some("curl/8");
    s.response_content_type = some("application/json");
    s.response_body_size = Some(12);
    s
}

fn grpc(dir: Direction, code: Option<u32>) -> StreamDone {
    let mut s = stream(dir);
    s.request.method = some("POST");
    s.request.path = some("/helloworld.Greeter/SayHello");
    s.request.content_type = some("application/grpc");
    s.request.te = some("trailers");
    s.response_content_type = some("application/grpc+proto");
    s.grpc_status = code;
    s
}

/// The span of `s`, as exported.
fn build_span(s: &StreamDone, ctx: &SpanContext) -> Span {
    let mut span = super::build_span(s.clone(), ctx);
    span.complete();
    span
}

fn attr(span: &Span, key: &str) -> Option<AttrValue> {
    span.attr(key).cloned()
}

fn str_attr(span: &Span, key: &str) -> Option<String> {
    match span.attr(key) {
        Some(AttrValue::Str(s)) => Some(s.to_string()),
        _ => None,
    }
}

/// Asserts each attribute `want` names: equal to its value, or absent.
fn assert_attrs(span: &Span, want: &[(&str, Option<AttrValue>)]) {
    for (key, value) in want {
        assert_eq!(span.attr(key), value.as_ref(), "{key}");
    }
}

fn is_error(span: &Span) -> bool {
    matches!(span.status, SpanStatus::Error { .. })
}

#[test]
fn http_server_span() {
    let span = build_span(&stream(Direction::Ingress), &ctx());
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.name, "GET /users/{id}");
    assert_attrs(
        &span,
        &[
            ("http.request.method", Some("GET".into())),
            ("http.response.status_code", Some(AttrValue::Int(200))),
            ("url.path", Some("/users/42".into())),
            ("url.scheme", Some("http".into())),
            ("http.route", Some("/users/{id}".into())),
            ("network.protocol.name", Some("http".into())),
            ("network.protocol.version", Some("2".into())),
            ("server.address", Some("api.example".into())),
            ("server.port", Some(AttrValue::Int(8080))),
            ("client.address", Some("10.0.0.2".into())),
            ("network.peer.address", Some("10.0.0.2".into())),
            ("user_agent.original", Some("curl/8".into())),
            ("http.response.body.size", Some(AttrValue::Int(12))),
            ("http.request.body.size", None),
            ("url.full", None),
            ("url.query", None),
            ("rpc.system", None),
        ],
    );
    assert_eq!((span.start_unix_ns, span.end_unix_ns), (1_000, 5_000));
    assert_eq!(span.status, SpanStatus::Unset);
    assert_eq!(span.pid, 42);
}

#[test]
fn http_error_rules() {
    let mut s = stream(Direction::Ingress);
    s.status = Some(404);
    let span = build_span(&s, &ctx());
    assert!(!is_error(&span));
    s.status = Some(503);
    let span = build_span(&s, &ctx());
    assert!(is_error(&span));
    assert_eq!(str_attr(&span, "error.type").as_deref(), Some("503"));
    let mut s = stream(Direction::Egress);
    s.status = Some(404);
    let span = build_span(&s, &ctx());
    assert_eq!(span.kind, SpanKind::Client);
    assert!(is_error(&span));
    assert_eq!(str_attr(&span, "error.type").as_deref(), Some("404"));
}

#[test]
fn http_client_span_has_url_full() {
    let span = build_span(&stream(Direction::Egress), &ctx());
    assert_attrs(
        &span,
        &[
            ("url.full", Some("http://api.example:8080/users/42".into())),
            ("server.address", Some("api.example".into())),
            ("server.port", Some(AttrValue::Int(8080))),
            ("client.address", None),
        ],
    );
    // No :authority: the peer address stands in.
    let mut s = stream(Direction::Egress);
    s.request.authority = None;
    s.request.scheme = some("https");
    let span = build_span(&s, &ctx());
    assert_eq!(
        str_attr(&span, "url.full").as_deref(),
        Some("https://10.0.0.2:50000/users/42")
    );
    // Default port left out.
    let mut s = stream(Direction::Egress);
    s.request.authority = some("example.com");
    let mut c = ctx();
    c.endpoints.peer = Endpoint::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 80);
    let span = build_span(&s, &c);
    assert_eq!(
        str_attr(&span, "url.full").as_deref(),
        Some("http://example.com/users/42")
    );
}

#[test]
fn unknown_fields_are_left_out() {
    // :path unknown: name is the method alone, no route or path.
    let mut s = stream(Direction::Ingress);
    s.request.path = None;
    s.request.scheme = None;
    s.request_fields_unknown = true;
    let span = build_span(&s, &ctx());
    assert_eq!(span.name, "GET");
    assert_eq!(attr(&span, "http.route"), None);
    assert_eq!(attr(&span, "url.path"), None);
    assert_eq!(attr(&span, "url.scheme"), None);
    // An empty method is no method.
    s.request.method = some("");
    assert_eq!(build_span(&s, &ctx()).name, "HTTP");
    // Method unknown too.
    s.request.method = None;
    s.status = None;
    let span = build_span(&s, &ctx());
    assert_eq!(span.name, "HTTP");
    assert_eq!(attr(&span, "http.request.method"), None);
    assert_eq!(attr(&span, "http.response.status_code"), None);
    // A client without scheme gets no url.full.
    let mut s = stream(Direction::Egress);
    s.request.scheme = None;
    assert_eq!(attr(&build_span(&s, &ctx()), "url.full"), None);
}

#[test]
fn grpc_spans() {
    let span = build_span(&grpc(Direction::Ingress, Some(0)), &ctx());
    assert_eq!(span.name, "helloworld.Greeter/SayHello");
    assert_attrs(
        &span,
        &[
            ("rpc.system", Some("grpc".into())),
            ("rpc.service", Some("helloworld.Greeter".into())),
            ("rpc.method", Some("SayHello".into())),
            ("rpc.grpc.status_code", Some(AttrValue::Int(0))),
            ("http.request.method", None),
            ("network.protocol.version", Some("2".into())),
            ("server.address", Some("api.example".into())),
        ],
    );
    assert!(!is_error(&span));

    // NOT_FOUND (5): an error for the client only.
    let span = build_span(&grpc(Direction::Ingress, Some(5)), &ctx());
    assert!(!is_error(&span));
    let span = build_span(&grpc(Direction::Egress, Some(5)), &ctx());
    assert!(is_error(&span));
    assert_eq!(str_attr(&span, "error.type").as_deref(), Some("5"));
    assert_eq!(attr(&span, "url.full"), None);

    // The server-side error codes.
    for code in 0..=16 {
        let span = build_span(&grpc(Direction::Ingress, Some(code)), &ctx());
        assert_eq!(
            is_error(&span),
            [2, 4, 12, 13, 14, 15].contains(&code),
            "{code}"
        );
        let span = build_span(&grpc(Direction::Egress, Some(code)), &ctx());
        assert_eq!(is_error(&span), code != 0, "{code}");
    }

    // UNIMPLEMENTED with a message.
    let mut s = grpc(Direction::Ingress, Some(12));
    s.grpc_message = some("unknown method Nope");
    let span = build_span(&s, &ctx());
    assert_eq!(
        span.status,
        SpanStatus::Error {
            description: "unknown method Nope".to_owned()
        }
    );
    assert_eq!(str_attr(&span, "error.type").as_deref(), Some("12"));
}

#[test]
fn grpc_detected_from_trailers_alone() {
    // content-type unknown (HPACK), but grpc-status decoded.
    let mut s = grpc(Direction::Egress, Some(14));
    s.request.content_type = None;
    s.response_content_type = None;
    let span = build_span(&s, &ctx());
    assert_eq!(str_attr(&span, "rpc.system").as_deref(), Some("grpc"));
    assert!(is_error(&span));
}

#[test]
fn resets() {
    let mut s = grpc(Direction::Ingress, None);
    s.reset = Some(Reset {
        code: Some(8),
        dir: Direction::Ingress,
    });
    s.response_ended = false;
    let span = build_span(&s, &ctx());
    assert!(is_error(&span));
    assert_eq!(str_attr(&span, "error.type").as_deref(), Some("CANCEL"));
    assert_eq!(attr(&span, "rpc.grpc.status_code"), None);
    // Code not captured.
    s.reset = Some(Reset {
        code: None,
        dir: Direction::Egress,
    });
    let span = build_span(&s, &ctx());
    assert_eq!(str_attr(&span, "error.type").as_deref(), Some("RST_STREAM"));
    // A reset after the response ended (the client stops sending) is
    // not a failure.
    let mut s = stream(Direction::Ingress);
    s.reset = Some(Reset {
        code: Some(0),
        dir: Direction::Egress,
    });
    let span = build_span(&s, &ctx());
    assert!(!is_error(&span));
    // Plain HTTP reset before the response.
    s.response_ended = false;
    s.status = None;
    s.reset = Some(Reset {
        code: Some(2),
        dir: Direction::Egress,
    });
    let span = build_span(&s, &ctx());
    assert_eq!(
        str_attr(&span, "error.type").as_deref(),
        Some("INTERNAL_ERROR")
    );
}

#[test]
fn traceparent_is_honoured() {
    let mut s = stream(Direction::Ingress);
    s.request.traceparent = some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let span = build_span(&s, &ctx());
    assert_eq!(span.trace_id[0], 0x4b);
    assert_eq!(span.trace_id[15], 0x36);
    assert_eq!(
        span.parent_span_id,
        Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
    );
}

#[test]
fn grpc_paths_and_authorities() {
    assert_eq!(grpc_method("/a.B/C"), Some(("a.B", "C")));
    assert_eq!(grpc_method("/a.B/C/D"), None);
    assert_eq!(grpc_method("/a.B/"), None);
    assert_eq!(grpc_method("a.B/C"), None);
    assert_eq!(split_authority("h:1"), ("h", Some(1)));
    assert_eq!(split_authority("u@h:1"), ("h", Some(1)));
    assert_eq!(split_authority("[::1]:50051"), ("::1", Some(50051)));
    assert_eq!(split_authority("h"), ("h", None));
    assert_eq!(error_code_name(8), Some("CANCEL"));
    assert_eq!(error_code_name(99), None);
}

/// Bytes of one frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let h = crate::protocol::http2::FrameHeader {
        length: payload.len() as u32,
        kind,
        flags,
        stream_id: stream,
        reserved: false,
    };
    [&h.to_bytes()[..], payload].concat()
}

/// A header block of (static name index or 0, name, value) literals.
fn block(fields: &[(u32, &str, &str)]) -> Vec<u8> {
    use crate::protocol::http2::hpack::{encode_int, encode_str};
    let mut b = Vec::new();
    for &(index, name, value) in fields {
        encode_int(index, 4, 0, &mut b);
        if index == 0 {
            encode_str(name.as_bytes(), true, &mut b);
        }
        encode_str(value.as_bytes(), true, &mut b);
    }
    b
}

#[test]
fn grpc_trailers_only_error_end_to_end() {
    use crate::protocol::http2::{Http2Conn, Limits, PREFACE, flag, kind};
    use crate::protocol::{Chunk, StreamParser};

    // A gRPC server reads a call to an unknown method and answers with
    // a trailers-only response.
    let request = [
        &PREFACE[..],
        &frame(kind::SETTINGS, 0, 0, &[]),
        &frame(
            kind::HEADERS,
            flag::END_HEADERS,
            1,
            &block(&[
                (2, "", "POST"),
                (6, "", "http"),
                (4, "", "/shop.Cart/Nope"),
                (1, "", "cart:50051"),
                (31, "", "application/grpc"),
                (0, "te", "trailers"),
            ]),
        ),
        &frame(kind::DATA, flag::END_STREAM, 1, &[0, 0, 0, 0, 0]),
    ]
    .concat();
    let response = [
        &frame(kind::SETTINGS, 0, 0, &[])[..],
        &frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &block(&[
                (8, "", "200"),
                (31, "", "application/grpc"),
                (0, "grpc-status", "12"),
                (0, "grpc-message", "unknown method"),
            ]),
        ),
    ]
    .concat();
    let mut conn = Http2Conn::new(Limits::default());
    let mut msgs = Vec::new();
    for (dir, bytes, t) in [
        (Direction::Ingress, &request, 1_000),
        (Direction::Egress, &response, 2_000),
    ] {
        let chunk = Chunk {
            data: bytes,
            total_len: bytes.len() as u64,
            start_ns: t,
            end_ns: t + 50,
        };
        conn.feed(dir, &chunk, &mut msgs);
    }
    let mut pairing = Http2Pairing::default();
    let ctx = ctx();
    let mut spans = Vec::new();
    let mut out = PairingOut::new(&ctx, &mut spans);
    for m in msgs {
        pairing.push(m, &mut out);
    }
    let loss = out.loss;
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.name, "shop.Cart/Nope");
    assert_eq!(attr(span, "rpc.grpc.status_code"), Some(AttrValue::Int(12)));
    assert_eq!(str_attr(span, "error.type").as_deref(), Some("12"));
    assert_eq!(
        span.status,
        SpanStatus::Error {
            description: "unknown method".to_owned()
        }
    );
    assert_eq!(str_attr(span, "server.address").as_deref(), Some("cart"));
    assert_eq!(attr(span, "server.port"), Some(AttrValue::Int(50051)));
    assert_eq!((span.start_unix_ns, span.end_unix_ns), (1_050, 2_000));
    assert_eq!(loss, PairingLoss::default());
}

#[test]
fn pairing_counts_losses() {
    let mut p = Http2Pairing::default();
    let ctx = ctx();
    let mut spans = Vec::new();
    let mut out = PairingOut::new(&ctx, &mut spans);
    let lost = Message::Lost {
        requests_unanswered: 2,
        responses_unpaired: 1,
    };
    p.push(lost, &mut out);
    p.push(
        Message::Stream(Box::new(stream(Direction::Ingress))),
        &mut out,
    );
    assert_eq!(out.spans.len(), 1);
    assert_eq!(
        out.loss,
        PairingLoss {
            requests_unanswered: 2,
            responses_unpaired: 1
        }
    );
}

/// gRPC metadata are request headers: the session keeps the ones it was
/// told to, and the span carries them to the pipeline.
#[test]
fn grpc_metadata_kept_for_the_tenant_rules() {
    use crate::protocol::headers::header_names;
    use crate::protocol::http2::{PREFACE, flag, kind};
    use crate::protocol::{Chunk, SessionOptions};

    let call = |stream: u32, metadata: &[(u32, &str, &str)]| {
        let mut fields = vec![
            (2, "", "POST"),
            (6, "", "http"),
            (4, "", "/shop.Cart/Get"),
            (31, "", "application/grpc"),
            (0, "te", "trailers"),
        ];
        fields.extend_from_slice(metadata);
        let request = [
            frame(kind::HEADERS, flag::END_HEADERS, stream, &block(&fields)),
            frame(kind::DATA, flag::END_STREAM, stream, &[0, 0, 0, 0, 0]),
        ]
        .concat();
        let response = [
            frame(
                kind::HEADERS,
                flag::END_HEADERS,
                stream,
                &block(&[(8, "", "200"), (31, "", "application/grpc")]),
            ),
            frame(
                kind::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                stream,
                // Trailers naming the header are not the request's.
                &block(&[(0, "grpc-status", "0"), (0, "x-tenant-id", "trailer")]),
            ),
        ]
        .concat();
        (request, response)
    };
    let calls = [
        call(1, &[(0, "x-tenant-id", "acme"), (0, "x-org", "ops")]),
        call(3, &[(0, "x-org", "ops")]),
    ];
    let options = SessionOptions {
        kept_headers: header_names(["x-tenant-id", "x-org"]),
        ..SessionOptions::default()
    };
    let mut session = (super::super::PROTOCOL.new_session)(&options);
    let ctx = ctx();
    let mut spans = Vec::new();
    let mut out = PairingOut::new(&ctx, &mut spans);
    let mut t = 0;
    let mut send = |dir: Direction, bytes: &[u8], out: &mut PairingOut<'_>| {
        t += 100;
        let chunk = Chunk {
            data: bytes,
            total_len: bytes.len() as u64,
            start_ns: t,
            end_ns: t + 10,
        };
        session.run(Some((dir, &chunk)), t + 10, out);
    };
    send(Direction::Ingress, PREFACE, &mut out);
    for (request, response) in &calls {
        send(Direction::Ingress, request, &mut out);
        send(Direction::Egress, response, &mut out);
    }
    let kept: Vec<_> = spans
        .iter()
        .map(|s| {
            let values: Vec<(u8, &str)> =
                s.tenant_headers.iter().map(|(i, v)| (*i, &**v)).collect();
            (s.name.as_str(), values)
        })
        .collect();
    assert_eq!(
        kept,
        [
            ("shop.Cart/Get", vec![(0, "acme"), (1, "ops")]),
            ("shop.Cart/Get", vec![(1, "ops")]),
        ]
    );
}
