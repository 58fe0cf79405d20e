use super::*;
use crate::protocol::test_chunks::{
    damaged, feed_garbage, feed_randomly, feed_whole, gapped, whole,
};
use crate::protocol::test_rng::Rng;

/// A compact, comparable description of a message (times left out).
fn summary(m: &Message) -> String {
    fn dir(d: Direction) -> &'static str {
        match d {
            Direction::Egress => "E",
            Direction::Ingress => "I",
        }
    }
    fn num(n: Option<u64>) -> String {
        n.map_or_else(|| "-".to_owned(), |n| n.to_string())
    }
    match m {
        Message::Request(r) => {
            let mut s = format!(
                "{} {} {} 1.{} cl={} body={}",
                dir(r.dir),
                r.method,
                r.target,
                r.version_minor,
                num(r.content_length),
                r.body_len
            );
            if let Some(h) = &r.host {
                s += &format!(" host={h}");
            }
            if let Some(ua) = &r.user_agent {
                s += &format!(" ua={ua}");
            }
            if let Some(tp) = &r.traceparent {
                s += &format!(" tp={tp}");
            }
            if r.head_truncated {
                s += " trunc";
            }
            s
        }
        Message::Response(r) => {
            let mut s = format!(
                "{} {} 1.{} cl={} body={}",
                dir(r.dir),
                r.status,
                r.version_minor,
                num(r.content_length),
                r.body_len
            );
            if r.head_truncated {
                s += " trunc";
            }
            s
        }
    }
}

fn summaries(msgs: &[Message]) -> Vec<String> {
    msgs.iter().map(summary).collect()
}

struct Case {
    name: &'static str,
    /// Requests travel Ingress (the process is the server) when true.
    server: bool,
    requests: &'static [&'static [u8]],
    responses: &'static [&'static [u8]],
    /// Summaries: all requests, then all responses.
    expect: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "keep-alive GETs",
        server: false,
        requests: &[
            b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
            b"GET /style.css HTTP/1.1\r\nHost: example.com\r\n\r\n",
        ],
        responses: &[
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n<html></html>",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ],
        expect: &[
            "E GET /index.html 1.1 cl=- body=0 host=example.com ua=curl/8.5.0",
            "E GET /style.css 1.1 cl=- body=0 host=example.com",
            "I 200 1.1 cl=13 body=13",
            "I 404 1.1 cl=0 body=0",
        ],
    },
    Case {
        name: "POST with Content-Length and traceparent",
        server: false,
        requests: &[
            b"POST /api/items?dry=1 HTTP/1.1\r\nHost: api:8080\r\nContent-Type: application/json\r\nContent-Length: 17\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n{\"name\":\"widget\"}",
        ],
        responses: &[
            b"HTTP/1.1 201 Created\r\nLocation: /api/items/9\r\nContent-Length: 8\r\n\r\n{\"id\":9}",
        ],
        expect: &[
            "E POST /api/items?dry=1 1.1 cl=17 body=17 host=api:8080 tp=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "I 201 1.1 cl=8 body=8",
        ],
    },
    Case {
        name: "HEAD then GET, pipelined",
        server: false,
        requests: &[
            b"HEAD /file HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /file HTTP/1.1\r\nHost: h\r\n\r\n",
        ],
        responses: &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        ],
        expect: &[
            "E HEAD /file 1.1 cl=- body=0 host=h",
            "E GET /file 1.1 cl=- body=0 host=h",
            "I 200 1.1 cl=5 body=0",
            "I 200 1.1 cl=5 body=5",
        ],
    },
    Case {
        name: "chunked response with extension and trailer",
        server: false,
        requests: &[
            b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n",
        ],
        responses: &[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Expires\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nExpires: never\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ],
        expect: &[
            "E GET /stream 1.1 cl=- body=0 host=h",
            "E GET /next 1.1 cl=- body=0 host=h",
            "I 200 1.1 cl=- body=49",
            "I 204 1.1 cl=- body=0",
        ],
    },
    Case {
        name: "chunked request body",
        server: false,
        requests: &[
            b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nWiki\r\n0\r\n\r\n",
        ],
        responses: &[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        expect: &[
            "E POST /upload 1.1 cl=- body=14 host=h",
            "I 200 1.1 cl=2 body=2",
        ],
    },
    Case {
        name: "100-continue",
        server: false,
        requests: &[
            b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
        ],
        responses: &[
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        ],
        expect: &[
            "E POST /upload 1.1 cl=5 body=5 host=h",
            "I 100 1.1 cl=- body=0",
            "I 201 1.1 cl=0 body=0",
        ],
    },
    Case {
        name: "204 and 304 have no body",
        server: false,
        requests: &[
            b"DELETE /items/3 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /logo.png HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"abc\"\r\n\r\n",
            b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n",
        ],
        responses: &[
            b"HTTP/1.1 204 No Content\r\nServer: test\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\nContent-Length: 1234\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes",
        ],
        expect: &[
            "E DELETE /items/3 1.1 cl=- body=0 host=h",
            "E GET /logo.png 1.1 cl=- body=0 host=h",
            "E GET /after 1.1 cl=- body=0 host=h",
            "I 204 1.1 cl=- body=0",
            "I 304 1.1 cl=1234 body=0",
            "I 200 1.1 cl=3 body=3",
        ],
    },
    Case {
        name: "HTTP/1.0 body until close",
        server: false,
        requests: &[b"GET /old HTTP/1.0\r\n\r\n"],
        responses: &[b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"],
        expect: &["E GET /old 1.0 cl=- body=0", "I 200 1.0 cl=- body=13"],
    },
    Case {
        name: "three pipelined requests",
        server: false,
        requests: &[
            b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n",
        ],
        responses: &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nbb",
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 3\r\n\r\nerr",
        ],
        expect: &[
            "E GET /a 1.1 cl=- body=0 host=h",
            "E GET /b 1.1 cl=- body=0 host=h",
            "E GET /c 1.1 cl=- body=0 host=h",
            "I 200 1.1 cl=1 body=1",
            "I 200 1.1 cl=2 body=2",
            "I 500 1.1 cl=3 body=3",
        ],
    },
    Case {
        name: "server side, lower-case headers",
        server: true,
        requests: &[
            b"PUT /v1/kv/key HTTP/1.1\r\nhost: kv.local\r\nuser-agent: Go-http-client/1.1\r\ncontent-length: 3\r\n\r\nabc",
        ],
        responses: &[b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: keep-alive\r\n\r\ntrue"],
        expect: &[
            "I PUT /v1/kv/key 1.1 cl=3 body=3 host=kv.local ua=Go-http-client/1.1",
            "E 200 1.1 cl=4 body=4",
        ],
    },
    Case {
        name: "OPTIONS * and a status line without reason",
        server: false,
        requests: &[b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"],
        responses: &[b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok"],
        expect: &["E OPTIONS * 1.1 cl=- body=0 host=h", "I 200 1.1 cl=2 body=2"],
    },
    Case {
        name: "other method token, absolute-form target",
        server: false,
        requests: &[
            b"PROPFIND http://dav.example/files/ HTTP/1.1\r\nHost: dav.example\r\nDepth: 1\r\nContent-Length: 0\r\n\r\n",
        ],
        responses: &[b"HTTP/1.1 207 Multi-Status\r\nContent-Length: 0\r\n\r\n"],
        expect: &[
            "E PROPFIND http://dav.example/files/ 1.1 cl=0 body=0 host=dav.example",
            "I 207 1.1 cl=0 body=0",
        ],
    },
    Case {
        name: "a body that looks like a request",
        server: true,
        requests: &[
            b"POST /batch HTTP/1.1\r\nHost: h\r\nContent-Length: 32\r\n\r\nGET /inner HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /outer HTTP/1.1\r\nHost: h\r\n\r\n",
        ],
        responses: &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 26\r\n\r\nHTTP/1.1 404 Not Found\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ],
        expect: &[
            "I POST /batch 1.1 cl=32 body=32 host=h",
            "I GET /outer 1.1 cl=- body=0 host=h",
            "E 200 1.1 cl=26 body=26",
            "E 200 1.1 cl=0 body=0",
        ],
    },
];

fn request_dir(case: &Case) -> Direction {
    if case.server {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

/// Feeds a case's requests, then its responses, each stream cut at the
/// given positions, then closes the connection.
fn run(case: &Case, req_cuts: &[usize], resp_cuts: &[usize]) -> (Vec<Message>, Http1Conn) {
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    let mut t = 1000;
    let dir = request_dir(case);
    for (stream, cuts, d) in [
        (case.requests.concat(), req_cuts, dir),
        (case.responses.concat(), resp_cuts, dir.opposite()),
    ] {
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            if cut > from {
                conn.feed(d, &whole(&stream[from..cut], t), &mut out);
                t += 10;
                from = cut;
            }
        }
    }
    conn.close(t, &mut out);
    (out, conn)
}

#[test]
fn cases_whole_streams() {
    for case in CASES {
        let (out, mut conn) = run(case, &[], &[]);
        assert_eq!(summaries(&out), case.expect, "{}", case.name);
        assert_eq!(conn.take_resync(), (0, 0), "{}", case.name);
    }
}

#[test]
fn cases_one_message_per_syscall() {
    for case in CASES {
        let cuts = |msgs: &[&[u8]]| -> Vec<usize> {
            msgs.iter()
                .scan(0, |at, m| {
                    *at += m.len();
                    Some(*at)
                })
                .collect()
        };
        let (out, mut conn) = run(case, &cuts(case.requests), &cuts(case.responses));
        assert_eq!(summaries(&out), case.expect, "{}", case.name);
        assert_eq!(conn.take_resync(), (0, 0), "{}", case.name);
    }
}

#[test]
fn cases_split_at_every_byte_position() {
    for case in CASES {
        let req_len = case.requests.concat().len();
        let resp_len = case.responses.concat().len();
        for i in 1..req_len {
            let (out, mut conn) = run(case, &[i], &[]);
            assert_eq!(
                summaries(&out),
                case.expect,
                "{} request cut at {i}",
                case.name
            );
            assert_eq!(
                conn.take_resync(),
                (0, 0),
                "{} request cut at {i}",
                case.name
            );
        }
        for i in 1..resp_len {
            let (out, mut conn) = run(case, &[], &[i]);
            assert_eq!(
                summaries(&out),
                case.expect,
                "{} response cut at {i}",
                case.name
            );
            assert_eq!(
                conn.take_resync(),
                (0, 0),
                "{} response cut at {i}",
                case.name
            );
        }
    }
}

#[test]
fn cases_byte_by_byte() {
    for case in CASES {
        let req: Vec<usize> = (1..case.requests.concat().len()).collect();
        let resp: Vec<usize> = (1..case.responses.concat().len()).collect();
        let (out, mut conn) = run(case, &req, &resp);
        assert_eq!(summaries(&out), case.expect, "{}", case.name);
        assert_eq!(conn.take_resync(), (0, 0), "{}", case.name);
    }
}

#[test]
fn cases_request_direction() {
    for case in CASES {
        let (_, conn) = run(case, &[], &[]);
        // close() keeps what was learnt about the directions.
        assert_eq!(
            conn.request_direction(),
            Some(request_dir(case)),
            "{}",
            case.name
        );
    }
}

/// Every strict prefix of every valid head is "incomplete"; the whole
/// head, with or without body bytes after it, is consumed exactly.
#[test]
fn every_strict_prefix_is_incomplete() {
    for case in CASES {
        for msg in case.requests.iter().chain(case.responses) {
            let head_len = msg
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| i + 4)
                .unwrap_or_else(|| panic!("{}: test message without head end", case.name));
            for p in 0..head_len {
                assert_eq!(
                    parse_head(&msg[..p], HeaderNames::none()),
                    Ok(None),
                    "{}: prefix of {p} bytes of {:?}",
                    case.name,
                    String::from_utf8_lossy(msg)
                );
            }
            for p in head_len..=msg.len() {
                let parsed = parse_head(&msg[..p], HeaderNames::none());
                assert!(
                    matches!(parsed, Ok(Some((_, n))) if n == head_len),
                    "{}: {p} bytes: {parsed:?}",
                    case.name
                );
            }
        }
    }
}

#[test]
fn parse_head_fields() {
    let (head, n) = parse_head(
        b"GET /x?y=1 HTTP/1.1\r\nhOsT: a.example\r\nUSER-AGENT:  ua/1 \r\nTraceParent: tp\r\nHost: second\r\nX-Empty:\r\n\r\nrest",
        HeaderNames::none(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(n, 101);
    assert_eq!(
        head,
        Head {
            start: StartLine::Request {
                method: "GET".into(),
                target: "/x?y=1".into()
            },
            version_minor: 1,
            host: Some("a.example".into()),
            user_agent: Some("ua/1".into()),
            traceparent: Some("tp".into()),
            kept_headers: Default::default(),
            content_length: None,
            transfer_encoding: false,
            chunked: false,
        }
    );
    let (head, _) = parse_head(
        b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 7, 7\r\n\r\n",
        HeaderNames::none(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(head.start, StartLine::Response { status: 503 });
    assert_eq!(head.version_minor, 0);
    assert_eq!(head.content_length, Some(7));
    // A response may use a coding other than chunked: body until close.
    let (head, _) = parse_head(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        HeaderNames::none(),
    )
    .unwrap()
    .unwrap();
    assert!(head.transfer_encoding && !head.chunked);
}

#[test]
fn parse_head_errors() {
    #[rustfmt::skip]
    let table: &[(&[u8], ParseError)] = &[
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", ParseError::ContentLength),
        (b"GET / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n", ParseError::ContentLength),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", ParseError::ContentLength),
        (b"GET / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", ParseError::ContentLength),
        (b"GET / HTTP/1.1\r\nContent-Length:\r\n\r\n", ParseError::ContentLength),
        (b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", ParseError::ContentLength),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", ParseError::TransferEncoding),
        (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", ParseError::HeaderLine),
        (b"GET / HTTP/1.1\r\n: h\r\n\r\n", ParseError::HeaderLine),
        (b"GET / HTTP/1.1\r\n folded\r\n\r\n", ParseError::HeaderLine),
        (b"GET / HTTP/1.1\r\nHost: h\n\r\n", ParseError::HeaderLine),
        (b"GET / HTTP/1.1\r\nHost: h\x00\r\n\r\n", ParseError::HeaderLine),
        (b"GET / HTTP/1.1\r\n\rx", ParseError::HeaderLine),
        (b"GET / HTTP/1.1\n\n", ParseError::StartLine),
        (b"GET / HTTP/1.2\r\n\r\n", ParseError::StartLine),
        (b"GET / HTTP/2.0\r\n\r\n", ParseError::StartLine),
        (b"GET  / HTTP/1.1\r\n\r\n", ParseError::StartLine),
        (b"get / HTTP/1.1\r\n\r\n", ParseError::StartLine),
        (b"GET /\r\n", ParseError::StartLine),
        (b"AVERYVERYLONGMETHODNAME / HTTP/1.1\r\n", ParseError::StartLine),
        (b"HTTP/1.1 600 Odd\r\n\r\n", ParseError::StartLine),
        (b"HTTP/1.1 20x OK\r\n\r\n", ParseError::StartLine),
        (b"HTTP/1.1 200OK\r\n\r\n", ParseError::StartLine),
        (b"HTTP/1.1  200 OK\r\n\r\n", ParseError::StartLine),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ParseError::StartLine),
        (b"*1\r\n$4\r\nPING\r\n", ParseError::StartLine),
    ];
    for (input, want) in table {
        assert_eq!(
            parse_head(input, HeaderNames::none()),
            Err(*want),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

const TLS_CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x5b\x8c\x0e\x2a\x10\x7f\x00\x01\xc0\x2b\xc0\x2f\x00\x9e\xcc\xa9\xcc\xa8\x00\x00\x00\x0e\x00\x0c\x00\x00\x09localhost\x00\x0b\x00\x02\x01\x00";
const REDIS_PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

#[test]
fn detect_table() {
    #[rustfmt::skip]
    let table: &[(&[u8], Detect)] = &[
        (b"", Detect::NeedMore),
        (b"G", Detect::NeedMore),
        (b"GE", Detect::NeedMore),
        (b"GET", Detect::NeedMore),
        (b"GET ", Detect::NeedMore),
        (b"GET /", Detect::Request),
        (b"GET / HTTP/1.1\r\n", Detect::Request),
        (b"DELETE /items/1 HTTP/1.1\r\nHost: h\r\n\r\n", Detect::Request),
        (b"CONNECT example.com:443 HTTP/1.1\r\n", Detect::Request),
        (b"OPTIONS * HTTP/1.1\r\n", Detect::Request),
        (b"PROPFIND /x HTTP/1.1\r\n", Detect::Request),
        (b"PROPFIND /x", Detect::No),
        (b"H", Detect::NeedMore),
        (b"HTTP/1.", Detect::NeedMore),
        (b"HTTP/1.1 20", Detect::NeedMore),
        (b"HTTP/1.1 200", Detect::Response),
        (b"HTTP/1.1 200 OK\r\n", Detect::Response),
        (b"HTTP/2 200", Detect::No),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Detect::No),
        (b"get / HTTP/1.1\r\n", Detect::No),
        (b"GET\t/", Detect::No),
        (b"GET \x00", Detect::No),
        (b"PING\r\n", Detect::No),
        (b"SET key value\r\n", Detect::No),
        (REDIS_PING, Detect::No),
        (TLS_CLIENT_HELLO, Detect::No),
        (b"\x00\x00\x00\x0a\x00\x00\x00\x00", Detect::No),
        (b"J\x00\x00\x00\x0a5.7.44\x00", Detect::No),
    ];
    for (input, want) in table {
        assert_eq!(detect(input), *want, "{:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn garbage_never_yields_messages() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut inputs: Vec<Vec<u8>> = vec![TLS_CLIENT_HELLO.to_vec(), REDIS_PING.repeat(20)];
    for len in [1, 2, 7, 64, 1024, 4096, 20000] {
        inputs.push(rng.bytes(len));
    }
    let new = || Http1Conn::new(Limits::default());
    feed_garbage(&inputs, &mut rng, new, |conn, out| {
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(conn.request_direction(), None);
    });
}

/// Damaged streams of real messages, cut and gapped at random: the
/// parser must not panic, and whatever it emits must be well formed.
#[test]
fn damaged_streams_do_not_panic() {
    let mut rng = Rng(12345);
    for round in 0..400 {
        let case = &CASES[round % CASES.len()];
        let mut conn = Http1Conn::new(Limits {
            max_buffered_bytes: 16 + rng.below(200),
        });
        let mut out = Vec::new();
        let dir = request_dir(case);
        for (stream, d) in [
            (case.requests.concat(), dir),
            (case.responses.concat(), dir.opposite()),
        ] {
            let stream = damaged(&stream, &mut rng);
            feed_randomly(&mut conn, d, &stream, 0, &mut rng, &mut out);
        }
        conn.close(u64::MAX, &mut out);
        for m in &out {
            match m {
                Message::Request(r) => assert!(r.method.bytes().all(is_method_byte)),
                Message::Response(r) => assert!((100..600).contains(&r.status)),
            }
            assert!(m.first_ns() <= m.last_ns(), "{m:?}");
        }
    }
}

#[test]
fn timing_follows_the_direction() {
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    let at = |data: &'static [u8], start_ns, end_ns| Chunk {
        data,
        total_len: data.len() as u64,
        start_ns,
        end_ns,
    };
    conn.feed(
        Direction::Egress,
        &at(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", 100, 110),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &at(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
            200,
            210,
        ),
        &mut out,
    );
    conn.feed(Direction::Ingress, &at(b"world", 300, 310), &mut out);
    // A head split over two syscalls starts with the first.
    conn.feed(
        Direction::Egress,
        &at(b"GET /b HTTP/1.1\r\n", 400, 405),
        &mut out,
    );
    conn.feed(
        Direction::Egress,
        &at(b"Host: h\r\n\r\n", 500, 505),
        &mut out,
    );
    // A body until close ends with the last syscall that carried it.
    conn.feed(
        Direction::Ingress,
        &at(b"HTTP/1.1 200 OK\r\n\r\nab", 600, 610),
        &mut out,
    );
    conn.feed(Direction::Ingress, &at(b"cd", 700, 710), &mut out);
    conn.close(900, &mut out);
    let times: Vec<(u64, u64)> = out.iter().map(|m| (m.first_ns(), m.last_ns())).collect();
    assert_eq!(times, [(100, 100), (210, 310), (400, 500), (610, 710)]);
}

#[test]
fn resync_after_garbage_in_the_same_syscall() {
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    let data = b"\x16\x03\x01junk\r\nmore junk\r\nGET /ok HTTP/1.1\r\nHost: h\r\n\r\n";
    conn.feed(Direction::Egress, &whole(data, 0), &mut out);
    assert_eq!(summaries(&out), ["E GET /ok 1.1 cl=- body=0 host=h"]);
    assert_eq!(conn.take_resync(), (20, 1));
    assert_eq!(conn.take_resync(), (0, 0), "take_resync resets");
}

#[test]
fn resync_at_the_next_syscall() {
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    let syscalls: &[(Direction, &[u8])] = &[
        (Direction::Ingress, b"tail of an unknown body"),
        (Direction::Ingress, b"more of it\r\n"),
        (
            Direction::Ingress,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ),
    ];
    feed_whole(&mut conn, syscalls, &mut out);
    assert_eq!(summaries(&out), ["I 200 1.1 cl=0 body=0"]);
    assert_eq!(conn.take_resync(), (35, 1));
    assert_eq!(conn.request_direction(), Some(Direction::Egress));
}

#[test]
fn bad_content_length_loses_sync_then_recovers() {
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    let bad = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx";
    conn.feed(Direction::Egress, &whole(bad, 0), &mut out);
    conn.feed(
        Direction::Egress,
        &whole(b"GET /ok HTTP/1.1\r\n\r\n", 10),
        &mut out,
    );
    assert_eq!(summaries(&out), ["E GET /ok 1.1 cl=- body=0"]);
    assert_eq!(conn.take_resync(), (bad.len() as u64, 1));
}

#[test]
fn a_direction_keeps_its_role() {
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(
        Direction::Egress,
        &whole(b"GET / HTTP/1.1\r\n\r\n", 0),
        &mut out,
    );
    // A status line where requests flow, or a request line where
    // responses flow, is not believed.
    conn.feed(
        Direction::Egress,
        &whole(b"HTTP/1.1 200 OK\r\n\r\n", 10),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &whole(b"GET / HTTP/1.1\r\n\r\n", 20),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &whole(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 30),
        &mut out,
    );
    assert_eq!(
        summaries(&out),
        ["E GET / 1.1 cl=- body=0", "I 200 1.1 cl=0 body=0"]
    );
    assert_eq!(conn.take_resync(), (37, 2));
}

#[test]
fn head_longer_than_the_limit_is_dropped() {
    let mut conn = Http1Conn::new(Limits {
        max_buffered_bytes: 64,
    });
    let mut out = Vec::new();
    let long = [b"GET /", &[b'a'; 40][..], b" HTTP/1.1\r\n"].concat();
    conn.feed(Direction::Egress, &whole(&long, 0), &mut out);
    conn.feed(
        Direction::Egress,
        &whole(b"X-Pad: 0123456789012345678901234567\r\n\r\n", 10),
        &mut out,
    );
    assert!(out.is_empty());
    conn.feed(
        Direction::Egress,
        &whole(b"GET /short HTTP/1.1\r\n\r\n", 20),
        &mut out,
    );
    assert_eq!(summaries(&out), ["E GET /short 1.1 cl=- body=0"]);
    let (skipped, lost) = conn.take_resync();
    assert_eq!(lost, 1);
    assert_eq!(skipped, long.len() as u64 + 39);
}

#[test]
fn body_in_a_gap_is_skipped_by_length() {
    let head = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 10240\r\n\r\n";
    let mut first = head.to_vec();
    first.resize(1024, b'x');
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(
        Direction::Egress,
        &gapped(&first, head.len() + 10240, 0),
        &mut out,
    );
    conn.feed(
        Direction::Egress,
        &whole(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n", 10),
        &mut out,
    );
    // The same on the response side, body split over two gapped syscalls.
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10240\r\n\r\n";
    let mut first = head.to_vec();
    first.resize(1024, b'y');
    conn.feed(
        Direction::Ingress,
        &gapped(&first, head.len() + 5000, 20),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &gapped(&[b'y'; 1024], 5240, 30),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &whole(b"HTTP/1.1 204 No Content\r\n\r\n", 40),
        &mut out,
    );
    assert_eq!(
        summaries(&out),
        [
            "E POST /upload 1.1 cl=10240 body=10240 host=h",
            "E GET /next 1.1 cl=- body=0 host=h",
            "I 200 1.1 cl=10240 body=10240",
            "I 204 1.1 cl=- body=0",
        ]
    );
    assert_eq!(out[2].last_ns(), 31);
    assert_eq!(conn.take_resync(), (0, 0));
}

#[test]
fn gap_past_the_body_loses_the_next_start() {
    let head = b"POST /a HTTP/1.1\r\nContent-Length: 100\r\n\r\n";
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    // 100 body bytes and a 30-byte request, none of them captured.
    conn.feed(
        Direction::Egress,
        &gapped(head, head.len() + 130, 0),
        &mut out,
    );
    conn.feed(
        Direction::Egress,
        &whole(b"GET /after HTTP/1.1\r\n\r\n", 10),
        &mut out,
    );
    assert_eq!(
        summaries(&out),
        [
            "E POST /a 1.1 cl=100 body=100",
            "E GET /after 1.1 cl=- body=0"
        ]
    );
    assert_eq!(conn.take_resync(), (30, 1));
}

#[test]
fn truncated_heads_are_reported() {
    let request = [
        &b"GET /search?q=x HTTP/1.1\r\nHost: h\r\nCookie: "[..],
        &[b'a'; 2000],
        b"\r\n\r\n",
    ]
    .concat();
    let response = [
        &b"HTTP/1.1 200 OK\r\nSet-Cookie: "[..],
        &[b'b'; 2000],
        b"\r\nContent-Length: 5\r\n\r\nhello",
    ]
    .concat();
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(
        Direction::Egress,
        &gapped(&request[..1024], request.len(), 0),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &gapped(&response[..1024], response.len(), 10),
        &mut out,
    );
    conn.feed(
        Direction::Egress,
        &whole(b"GET /next HTTP/1.1\r\n\r\n", 20),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &whole(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!", 30),
        &mut out,
    );
    assert_eq!(
        summaries(&out),
        [
            "E GET /search?q=x 1.1 cl=- body=0 host=h trunc",
            "I 200 1.1 cl=- body=0 trunc",
            "E GET /next 1.1 cl=- body=0",
            "I 200 1.1 cl=1 body=1",
        ]
    );
    assert_eq!(out[0].last_ns(), 0);
    assert_eq!(conn.take_resync(), (0, 0));
}

#[test]
fn truncated_head_split_over_syscalls() {
    // The head starts in one syscall and its end falls in the gap of the next.
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(Direction::Egress, &whole(b"GET /split HTT", 0), &mut out);
    conn.feed(
        Direction::Egress,
        &gapped(b"P/1.1\r\nHost: h\r\nAcc", 3000, 10),
        &mut out,
    );
    assert_eq!(
        summaries(&out),
        ["E GET /split 1.1 cl=- body=0 host=h trunc"]
    );
    assert_eq!((out[0].first_ns(), out[0].last_ns()), (0, 10));
}

#[test]
fn start_line_in_a_gap_is_not_guessed() {
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(Direction::Egress, &gapped(b"", 500, 0), &mut out);
    conn.feed(
        Direction::Egress,
        &gapped(b"GET /a-very-lo", 3000, 10),
        &mut out,
    );
    conn.feed(
        Direction::Egress,
        &whole(b"GET /b HTTP/1.1\r\n\r\n", 20),
        &mut out,
    );
    assert_eq!(summaries(&out), ["E GET /b 1.1 cl=- body=0"]);
    assert_eq!(conn.take_resync(), (500 + 3000, 1));
}

const CHUNKED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

/// First syscall of a chunked response: head, a 2048-byte chunk's size
/// line and the first 500 bytes of its data.
fn chunked_start() -> Vec<u8> {
    [CHUNKED_HEAD, b"800\r\n", &[b'z'; 500]].concat()
}

#[test]
fn chunked_body_across_syscalls_with_a_gap_in_data() {
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(Direction::Ingress, &whole(&chunked_start(), 0), &mut out);
    // 1548 data bytes left: 1024 captured, 524 in the gap.
    conn.feed(
        Direction::Ingress,
        &gapped(&[b'z'; 1024], 1548, 10),
        &mut out,
    );
    assert!(out.is_empty());
    conn.feed(Direction::Ingress, &whole(b"\r\n0\r\n\r\n", 20), &mut out);
    conn.feed(
        Direction::Ingress,
        &whole(b"HTTP/1.1 204 No Content\r\n\r\n", 30),
        &mut out,
    );
    assert_eq!(
        summaries(&out),
        ["I 200 1.1 cl=- body=2060", "I 204 1.1 cl=- body=0"]
    );
    assert_eq!(out[0].last_ns(), 21);
    assert_eq!(conn.take_resync(), (0, 0));
}

#[test]
fn chunked_body_whose_sizes_fall_in_a_gap() {
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(Direction::Ingress, &whole(&chunked_start(), 0), &mut out);
    // The last chunk and terminator are not captured: the message is
    // taken to end with this syscall.
    conn.feed(
        Direction::Ingress,
        &gapped(&[b'z'; 1024], 1548 + 7, 10),
        &mut out,
    );
    assert_eq!(summaries(&out), ["I 200 1.1 cl=- body=2060"]);
    assert_eq!(out[0].last_ns(), 11);
    conn.feed(
        Direction::Ingress,
        &whole(b"HTTP/1.1 204 No Content\r\n\r\n", 20),
        &mut out,
    );
    assert_eq!(summaries(&out)[1], "I 204 1.1 cl=- body=0");
    assert_eq!(conn.take_resync(), (0, 1));
}

#[test]
fn broken_chunk_framing_ends_the_message() {
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    // After "3\r\nabc" the chunk's CRLF is missing: the 6 bytes read
    // count as body, "XY\r\n" is skipped, the next response parses.
    let data = [
        CHUNKED_HEAD,
        b"3\r\nabcXY\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ]
    .concat();
    conn.feed(Direction::Ingress, &whole(&data, 0), &mut out);
    assert_eq!(
        summaries(&out),
        ["I 200 1.1 cl=- body=6", "I 200 1.1 cl=0 body=0"]
    );
    assert_eq!(conn.take_resync(), (4, 1));
}

#[test]
fn early_response_does_not_disturb_the_request_body() {
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(
        Direction::Egress,
        &whole(
            b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n0123456789",
            0,
        ),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &whole(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n",
            10,
        ),
        &mut out,
    );
    conn.feed(Direction::Egress, &whole(b"abcdefghij", 20), &mut out);
    conn.feed(
        Direction::Egress,
        &whole(b"GET /again HTTP/1.1\r\n\r\n", 30),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &whole(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 40),
        &mut out,
    );
    assert_eq!(
        summaries(&out),
        [
            "I 413 1.1 cl=0 body=0",
            "E POST /upload 1.1 cl=20 body=20 host=h",
            "E GET /again 1.1 cl=- body=0",
            "I 200 1.1 cl=0 body=0",
        ]
    );
    assert_eq!(conn.take_resync(), (0, 0));
}

#[test]
fn close_drops_partial_messages() {
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(
        Direction::Egress,
        &whole(b"POST / HTTP/1.1\r\nContent-Length: 20\r\n\r\n0123", 0),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &whole(b"HTTP/1.1 200 OK\r\nContent-Len", 10),
        &mut out,
    );
    conn.close(20, &mut out);
    assert!(out.is_empty());
    conn.feed(
        Direction::Ingress,
        &whole(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n01", 30),
        &mut out,
    );
    conn.close(40, &mut out);
    assert!(
        out.is_empty(),
        "a body with a known length is not cut short by close"
    );
}

#[test]
fn upgrade_and_tunnel_stop_parsing() {
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(
        Direction::Egress,
        &whole(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            0,
        ),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &whole(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
            10,
        ),
        &mut out,
    );
    conn.feed(
        Direction::Egress,
        &whole(b"\x81\x85\x00\x00\x00\x00hello", 20),
        &mut out,
    );
    assert_eq!(
        summaries(&out),
        ["E GET /ws 1.1 cl=- body=0 host=h", "I 101 1.1 cl=- body=0"]
    );
    assert_eq!(conn.take_resync(), (0, 0));

    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(
        Direction::Egress,
        &whole(
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            0,
        ),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &whole(b"HTTP/1.1 200 Connection Established\r\n\r\n", 10),
        &mut out,
    );
    conn.feed(Direction::Egress, &whole(TLS_CLIENT_HELLO, 20), &mut out);
    conn.feed(
        Direction::Ingress,
        &whole(b"\x16\x03\x03\x00\x5a\x02", 30),
        &mut out,
    );
    assert_eq!(
        summaries(&out),
        [
            "E CONNECT example.com:443 1.1 cl=- body=0 host=example.com:443",
            "I 200 1.1 cl=- body=0",
        ]
    );
    assert_eq!(conn.take_resync(), (0, 0));
}

#[test]
fn request_direction_from_content() {
    let mut conn = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    assert_eq!(conn.request_direction(), None);
    conn.feed(
        Direction::Egress,
        &whole(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0),
        &mut out,
    );
    assert_eq!(conn.request_direction(), Some(Direction::Ingress));
}

/// The kept headers of each request `stream` carries, read by a server
/// keeping `names`, fed whole and split at every byte.
fn kept_of(names: &[&str], stream: &[u8]) -> Vec<crate::protocol::headers::KeptHeaders> {
    let names = crate::protocol::headers::header_names(names);
    let read = |cut: usize| {
        let mut conn = Http1Conn::new(Limits::default()).keeping_headers(names.clone());
        let mut out = Vec::new();
        conn.feed(Direction::Ingress, &whole(&stream[..cut], 0), &mut out);
        conn.feed(Direction::Ingress, &whole(&stream[cut..], 10), &mut out);
        out.into_iter()
            .filter_map(|m| match m {
                Message::Request(r) => Some(r.kept_headers),
                Message::Response(_) => None,
            })
            .collect::<Vec<_>>()
    };
    let kept = read(stream.len());
    for cut in 1..stream.len() {
        assert_eq!(read(cut), kept, "split at {cut}");
    }
    kept
}

fn kept(pairs: &[(u8, &str)]) -> crate::protocol::headers::KeptHeaders {
    pairs.iter().map(|&(i, v)| (i, v.into())).collect()
}

#[test]
fn kept_headers_in_any_case() {
    let stream = b"GET /a HTTP/1.1\r\nX-Tenant-Id: acme\r\n\r\n\
        GET /b HTTP/1.1\r\nx-tenant-id:globex \r\n\r\n\
        GET /c HTTP/1.1\r\nX-TENANT-ID: \t initech\r\nX-Org: ops\r\n\r\n";
    assert_eq!(
        kept_of(&["X-Tenant-ID", "x-org"], stream),
        [
            kept(&[(0, "acme")]),
            kept(&[(0, "globex")]),
            kept(&[(0, "initech"), (1, "ops")]),
        ]
    );
}

#[test]
fn a_repeated_header_keeps_its_first_non_empty_value() {
    let stream = b"POST /a HTTP/1.1\r\nx-tenant-id:\r\nX-Tenant-Id:  \r\n\
        x-tenant-id: acme\r\nX-Tenant-Id: globex\r\nContent-Length: 2\r\n\r\nhi\
        GET /b HTTP/1.1\r\nx-tenant-id: initech\r\nx-tenant-id: acme\r\n\r\n";
    assert_eq!(
        kept_of(&["x-tenant-id"], stream),
        [kept(&[(0, "acme")]), kept(&[(0, "initech")])]
    );
}

#[test]
fn absent_or_unasked_headers_are_not_kept() {
    let stream = b"GET /a HTTP/1.1\r\nHost: h\r\nX-Tenant: acme\r\n\r\n";
    assert_eq!(kept_of(&["x-tenant-id"], stream), [kept(&[])]);
    let asked = b"GET /a HTTP/1.1\r\nx-tenant-id: acme\r\n\r\n";
    assert_eq!(kept_of(&[], asked), [kept(&[])], "no names, nothing kept");
    // A rule may name a header the parser reads for itself too.
    assert_eq!(
        kept_of(&["host"], b"GET /a HTTP/1.1\r\nHost: shop\r\n\r\n"),
        [kept(&[(0, "shop")])]
    );
    // Responses keep nothing.
    let mut conn = Http1Conn::new(Limits::default())
        .keeping_headers(crate::protocol::headers::header_names(["x-tenant-id"]));
    let mut out = Vec::new();
    feed_whole(
        &mut conn,
        &[
            (Direction::Ingress, asked),
            (
                Direction::Egress,
                b"HTTP/1.1 204 No Content\r\nx-tenant-id: acme\r\n\r\n",
            ),
        ],
        &mut out,
    );
    assert_eq!(out.len(), 2);
    assert!(matches!(&out[0], Message::Request(r) if r.kept_headers == kept(&[(0, "acme")])));
}

#[test]
fn a_kept_value_is_bounded_text() {
    use crate::protocol::headers::MAX_KEPT_VALUE;
    let long = "t".repeat(MAX_KEPT_VALUE - 1) + "éé";
    let stream = format!("GET /a HTTP/1.1\r\nx-tenant-id: {long}\r\n\r\n");
    let got = kept_of(&["x-tenant-id"], stream.as_bytes());
    assert_eq!(got, [kept(&[(0, &long[..MAX_KEPT_VALUE - 1])])]);
    // Bytes that are not UTF-8 do not break the request.
    let got = kept_of(
        &["x-tenant-id"],
        b"GET /a HTTP/1.1\r\nx-tenant-id: t\xff\xfe1\r\n\r\n",
    );
    assert_eq!(got, [kept(&[(0, "t\u{fffd}\u{fffd}1")])]);
}
