use super::*;
use crate::protocol::http2::hpack::{encode_int, encode_str};

const E: Direction = Direction::Egress;
const I: Direction = Direction::Ingress;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let h = FrameHeader {
        length: payload.len() as u32,
        kind,
        flags,
        stream_id: stream,
        reserved: false,
    };
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// Header field representations for building blocks.
#[derive(Clone, Copy)]
enum H<'a> {
    /// Indexed field.
    Idx(u32),
    /// Literal, new name, without indexing.
    Lit(&'a str, &'a str),
    /// Literal, new name, incremental indexing.
    Inc(&'a str, &'a str),
    /// Literal, indexed name, without indexing.
    NameLit(u32, &'a str),
    /// Literal, indexed name, incremental indexing.
    NameInc(u32, &'a str),
    /// Literal, new name, incremental indexing, Huffman-coded.
    Huff(&'a str, &'a str),
    /// Dynamic table size update.
    Size(u32),
}

fn block(fields: &[H<'_>]) -> Vec<u8> {
    let mut b = Vec::new();
    for f in fields {
        match *f {
            H::Idx(i) => encode_int(i, 7, 0x80, &mut b),
            H::Lit(n, v) | H::Inc(n, v) => {
                b.push(if matches!(f, H::Inc(..)) { 0x40 } else { 0 });
                encode_str(n.as_bytes(), false, &mut b);
                encode_str(v.as_bytes(), false, &mut b);
            }
            H::NameLit(i, v) => {
                encode_int(i, 4, 0, &mut b);
                encode_str(v.as_bytes(), false, &mut b);
            }
            H::NameInc(i, v) => {
                encode_int(i, 6, 0x40, &mut b);
                encode_str(v.as_bytes(), false, &mut b);
            }
            H::Huff(n, v) => {
                b.push(0x40);
                encode_str(n.as_bytes(), true, &mut b);
                encode_str(v.as_bytes(), true, &mut b);
            }
            H::Size(n) => encode_int(n, 5, 0x20, &mut b),
        }
    }
    b
}

fn headers(stream: u32, end_stream: bool, fields: &[H<'_>]) -> Vec<u8> {
    let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
    frame(kind::HEADERS, flags, stream, &block(fields))
}

fn data(stream: u32, end_stream: bool, body: &[u8]) -> Vec<u8> {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    frame(kind::DATA, flags, stream, body)
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(kind::SETTINGS, 0, 0, &p)
}

fn settings_ack() -> Vec<u8> {
    frame(kind::SETTINGS, flag::ACK, 0, &[])
}

fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(kind::RST_STREAM, 0, stream, &code.to_be_bytes())
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A connection fed one syscall at a time; syscall `n` runs from
/// `100 n` to `100 n + 10` ns.
struct Run {
    conn: Http2Conn,
    out: Vec<Message>,
    t: u64,
}

impl Run {
    fn new() -> Run {
        Run::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Run {
        Run {
            conn: Http2Conn::new(limits),
            out: Vec::new(),
            t: 0,
        }
    }

    fn send(&mut self, dir: Direction, bytes: &[u8]) {
        self.send_gap(dir, bytes, bytes.len() as u64);
    }

    /// The client's preface with `frames` in one syscall.
    fn send_preface(&mut self, dir: Direction, frames: &[u8]) {
        self.send(dir, &cat(&[PREFACE, frames]));
    }

    /// The client's preface and the headers opening stream 1, in one syscall.
    fn open_stream(&mut self, dir: Direction, end_stream: bool, fields: &[H<'_>]) {
        self.send_preface(dir, &headers(1, end_stream, fields));
    }

    /// A syscall that moved `total` bytes of which `captured` were copied.
    fn send_gap(&mut self, dir: Direction, captured: &[u8], total: u64) {
        self.t += 1;
        let chunk = Chunk {
            data: captured,
            total_len: total,
            start_ns: self.t * 100,
            end_ns: self.t * 100 + 10,
        };
        self.conn.feed(dir, &chunk, &mut self.out);
    }

    fn streams(&self) -> Vec<StreamDone> {
        self.out
            .iter()
            .filter_map(|m| match m {
                Message::Stream(s) => Some((**s).clone()),
                Message::Lost { .. } => None,
            })
            .collect()
    }

    fn lost(&self) -> (u64, u64) {
        self.out.iter().fold((0, 0), |(a, b), m| match m {
            Message::Lost {
                requests_unanswered,
                responses_unpaired,
            } => (a + requests_unanswered, b + responses_unpaired),
            Message::Stream(_) => (a, b),
        })
    }
}

/// A client's first flight: preface, SETTINGS, a GET on stream 1.
fn client_bytes() -> Vec<u8> {
    cat(&[
        PREFACE,
        &settings(&[
            (SETTINGS_ENABLE_PUSH, 0),
            (SETTINGS_INITIAL_WINDOW_SIZE, 65535),
        ]),
        &frame(kind::WINDOW_UPDATE, 0, 0, &1_000_000u32.to_be_bytes()),
        &headers(
            1,
            true,
            &[
                H::Idx(2),
                H::Idx(6),
                H::NameInc(4, "/users/42?q=1"),
                H::NameInc(1, "example.com:8080"),
                H::Huff("user-agent", "curl/8.5.0"),
                H::Lit(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                H::Inc("x-request-id", "r-1"),
            ],
        ),
        &settings_ack(),
    ])
}

/// The server's answer: SETTINGS, ACK, 200 with a body in two frames.
fn server_bytes() -> Vec<u8> {
    cat(&[
        &settings(&[(SETTINGS_MAX_FRAME_SIZE, 1 << 20)]),
        &settings_ack(),
        &headers(1, false, &[H::Idx(8), H::NameInc(31, "text/plain")]),
        &data(1, false, b"hello "),
        &data(1, true, b"world"),
    ])
}

pub(super) fn expected_get(request_dir: Direction, first_ns: u64, last_ns: u64) -> StreamDone {
    StreamDone {
        stream_id: 1,
        request_dir,
        request: RequestHead {
            method: Some("GET".into()),
            path: Some("/users/42?q=1".into()),
            authority: Some("example.com:8080".into()),
            scheme: Some("http".into()),
            content_type: None,
            te: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            user_agent: Some("curl/8.5.0".into()),
            content_length: None,
            kept_headers: Default::default(),
        },
        status: Some(200),
        response_content_type: Some("text/plain".into()),
        grpc_status: None,
        grpc_message: None,
        reset: None,
        request_ended: true,
        response_ended: true,
        request_body_size: Some(0),
        response_body_size: Some(11),
        request_fields_unknown: false,
        response_fields_unknown: false,
        first_ns,
        last_ns,
    }
}

#[test]
fn frame_header_table() {
    // (bytes, kind, flags, stream, length, check)
    /// Bytes; kind, flags, stream and length read; what `check` says.
    type Row = (&'static [u8], u8, u8, u32, u32, Result<(), FrameError>);
    #[rustfmt::skip]
    let table: &[Row] = &[
        (&[0, 0, 6, 4, 0, 0, 0, 0, 0], kind::SETTINGS, 0, 0, 6, Ok(())),
        (&[0, 0, 5, 4, 0, 0, 0, 0, 0], kind::SETTINGS, 0, 0, 5, Err(FrameError::Length)),
        (&[0, 0, 0, 4, 1, 0, 0, 0, 0], kind::SETTINGS, 1, 0, 0, Ok(())),
        (&[0, 0, 6, 4, 1, 0, 0, 0, 0], kind::SETTINGS, 1, 0, 6, Err(FrameError::Length)),
        (&[0, 0, 0, 4, 0, 0, 0, 0, 1], kind::SETTINGS, 0, 1, 0, Err(FrameError::NeedsStreamZero)),
        (&[0, 0, 3, 0, 1, 0, 0, 0, 0], kind::DATA, 1, 0, 3, Err(FrameError::NeedsStream)),
        (&[0, 0, 0, 0, 8, 0, 0, 0, 1], kind::DATA, 8, 1, 0, Err(FrameError::Length)),
        (&[0, 0x40, 0, 0, 1, 0, 0, 0, 3], kind::DATA, 1, 3, 16384, Ok(())),
        (&[0, 0, 5, 1, 0x28, 0, 0, 0, 1], kind::HEADERS, 0x28, 1, 5, Err(FrameError::Length)),
        (&[0, 0, 6, 1, 0x28, 0, 0, 0, 1], kind::HEADERS, 0x28, 1, 6, Ok(())),
        (&[0, 0, 5, 2, 0, 0, 0, 0, 7], kind::PRIORITY, 0, 7, 5, Ok(())),
        (&[0, 0, 4, 2, 0, 0, 0, 0, 7], kind::PRIORITY, 0, 7, 4, Err(FrameError::Length)),
        (&[0, 0, 4, 3, 0, 0, 0, 0, 7], kind::RST_STREAM, 0, 7, 4, Ok(())),
        (&[0, 0, 4, 3, 0, 0, 0, 0, 0], kind::RST_STREAM, 0, 0, 4, Err(FrameError::NeedsStream)),
        (&[0, 0, 4, 5, 0, 0, 0, 0, 1], kind::PUSH_PROMISE, 0, 1, 4, Ok(())),
        (&[0, 0, 4, 5, 8, 0, 0, 0, 1], kind::PUSH_PROMISE, 8, 1, 4, Err(FrameError::Length)),
        (&[0, 0, 8, 6, 1, 0, 0, 0, 0], kind::PING, 1, 0, 8, Ok(())),
        (&[0, 0, 8, 6, 0, 0, 0, 0, 3], kind::PING, 0, 3, 8, Err(FrameError::NeedsStreamZero)),
        (&[0, 0, 7, 6, 0, 0, 0, 0, 0], kind::PING, 0, 0, 7, Err(FrameError::Length)),
        (&[0, 0, 8, 7, 0, 0, 0, 0, 0], kind::GOAWAY, 0, 0, 8, Ok(())),
        (&[0, 0, 7, 7, 0, 0, 0, 0, 0], kind::GOAWAY, 0, 0, 7, Err(FrameError::Length)),
        (&[0, 0, 4, 8, 0, 0, 0, 0, 0], kind::WINDOW_UPDATE, 0, 0, 4, Ok(())),
        (&[0, 0, 4, 8, 0, 0, 0, 0, 9], kind::WINDOW_UPDATE, 0, 9, 4, Ok(())),
        (&[0, 0, 5, 8, 0, 0, 0, 0, 9], kind::WINDOW_UPDATE, 0, 9, 5, Err(FrameError::Length)),
        (&[0, 0, 9, 9, 4, 0, 0, 0, 1], kind::CONTINUATION, 4, 1, 9, Ok(())),
        (&[0, 0, 9, 9, 4, 0, 0, 0, 0], kind::CONTINUATION, 4, 0, 9, Err(FrameError::NeedsStream)),
        // Unknown types are ignored by peers, so they pass.
        (&[0xff, 0xff, 0xff, 0x10, 0xff, 0x7f, 0xff, 0xff, 0xff], 0x10, 0xff, 0x7fff_ffff, 0xff_ffff, Ok(())),
    ];
    for (i, (bytes, k, f, id, len, check)) in table.iter().enumerate() {
        let h = FrameHeader::parse(bytes).unwrap();
        assert_eq!(
            (h.kind, h.flags, h.stream_id, h.length),
            (*k, *f, *id, *len),
            "row {i}"
        );
        assert_eq!(h.check(), *check, "row {i}");
        assert!(!h.reserved);
        assert_eq!(&h.to_bytes()[..], *bytes, "row {i}");
    }
    let h = FrameHeader::parse(&[0, 0, 0, 0, 0, 0x80, 0, 0, 1]).unwrap();
    assert!(h.reserved);
    assert_eq!(h.stream_id, 1);
    assert_eq!(FrameHeader::parse(&[0; 8]), None);
}

#[test]
fn detect_table() {
    let get = headers(1, true, &[H::Idx(2), H::Idx(6), H::Idx(4)]);
    let resp = headers(1, true, &[H::Idx(8)]);
    let table: Vec<(&str, Vec<u8>, Detect)> = vec![
        ("preface", client_bytes(), Detect::Request),
        ("preface alone", PREFACE.to_vec(), Detect::Request),
        ("preface prefix", PREFACE[..10].to_vec(), Detect::NeedMore),
        ("empty", Vec::new(), Detect::NeedMore),
        ("server settings", server_bytes(), Detect::Response),
        ("request headers", get.clone(), Detect::Request),
        ("response headers", resp, Detect::Response),
        ("partial header", get[..5].to_vec(), Detect::NeedMore),
        (
            "settings ack then headers",
            cat(&[&settings_ack(), &get]),
            Detect::Request,
        ),
        (
            "data mid-connection",
            data(5, false, &[0, 0, 0, 0, 3, 1, 2, 3]),
            Detect::Response,
        ),
        (
            "http/1 request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Detect::No,
        ),
        (
            "http/1 response",
            b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
            Detect::No,
        ),
        (
            "http/1 with PRI method",
            b"PRI / HTTP/1.1\r\n".to_vec(),
            Detect::No,
        ),
        ("resp array", b"*1\r\n$4\r\nPING\r\n".to_vec(), Detect::No),
        ("resp simple", b"+OK\r\n".to_vec(), Detect::No),
        (
            "mysql greeting",
            b"\x4a\x00\x00\x00\x0a8.0.36\x00\x08\x00\x00\x00".to_vec(),
            Detect::No,
        ),
        (
            "mysql 256-byte query",
            cat(&[&[0x00, 0x01, 0x00, 0x00, 0x03], &[b'S'; 20]]),
            Detect::No,
        ),
        (
            "tls client hello",
            vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ],
            Detect::No,
        ),
        (
            "too long",
            cat(&[&[0, 0x40, 1, 0, 0, 0, 0, 0, 1], &[0; 8]]),
            Detect::No,
        ),
        ("unknown type", frame(0x0a, 0, 0, &[1, 2]), Detect::No),
        (
            "reserved bit",
            vec![0, 0, 0, 4, 0, 0x80, 0, 0, 0],
            Detect::No,
        ),
        (
            "undefined flag",
            frame(kind::SETTINGS, 0x02, 0, &[]),
            Detect::No,
        ),
        (
            "settings on a stream",
            frame(kind::SETTINGS, 0, 1, &[]),
            Detect::No,
        ),
        (
            "settings bad length",
            frame(kind::SETTINGS, 0, 0, &[0; 5]),
            Detect::No,
        ),
        (
            "settings bad push value",
            settings(&[(SETTINGS_ENABLE_PUSH, 2)]),
            Detect::No,
        ),
        (
            "headers on even stream",
            headers(2, true, &[H::Idx(8)]),
            Detect::No,
        ),
        (
            "continuation first",
            frame(kind::CONTINUATION, 4, 1, &[0x82]),
            Detect::No,
        ),
        (
            "headers then not continuation",
            cat(&[&frame(kind::HEADERS, 0, 1, &[0x82]), &data(1, true, b"")]),
            Detect::No,
        ),
        (
            "zero window update",
            frame(kind::WINDOW_UPDATE, 0, 0, &[0; 4]),
            Detect::No,
        ),
        (
            "good then garbage",
            cat(&[&settings_ack(), b"GET / HTTP/1.1\r\n"]),
            Detect::No,
        ),
        (
            "good then short garbage",
            cat(&[&settings_ack(), b"GET"]),
            Detect::No,
        ),
        (
            "headers then partial continuation",
            cat(&[&frame(kind::HEADERS, 0, 1, &[0x82]), &[0, 0, 1, 9]]),
            Detect::Request,
        ),
        (
            "headers then partial data",
            cat(&[&frame(kind::HEADERS, 0, 1, &[0x82]), &[0, 0, 1, 0]]),
            Detect::No,
        ),
    ];
    for (name, bytes, want) in table {
        assert_eq!(detect(&bytes), want, "{name}");
    }
}

#[test]
fn client_request_and_response() {
    let mut r = Run::new();
    r.send(E, &client_bytes());
    assert!(r.out.is_empty());
    r.send(I, &server_bytes());
    // Request written at t=1 (start 100); response read at t=2 (end 210).
    assert_eq!(r.streams(), [expected_get(E, 100, 210)]);
    assert_eq!(r.conn.take_resync(), (0, 0));
    assert_eq!(r.conn.request_direction(), Some(E));
    assert_eq!(r.conn.open_streams(), 0);
    assert!(r.conn.hpack_synchronised(E));
    assert!(r.conn.hpack_synchronised(I));
}

#[test]
fn server_side_times() {
    let mut r = Run::new();
    r.send(I, &client_bytes());
    r.send(E, &server_bytes());
    // Request read at t=1 (end 110); response handed over at t=2 (start 200).
    assert_eq!(r.streams(), [expected_get(I, 110, 200)]);
}

#[test]
fn every_strict_prefix_is_incomplete() {
    let client = client_bytes();
    let server = server_bytes();
    // Client complete, server cut anywhere.
    for k in 0..server.len() {
        let mut r = Run::new();
        r.send(E, &client);
        r.send(I, &server[..k]);
        assert!(r.out.is_empty(), "server prefix {k}");
        assert_eq!(r.conn.take_resync(), (0, 0), "server prefix {k}");
    }
    // Client cut anywhere.
    for k in 0..client.len() {
        let mut r = Run::new();
        r.send(E, &client[..k]);
        assert!(r.out.is_empty(), "client prefix {k}");
        assert_eq!(r.conn.take_resync(), (0, 0), "client prefix {k}");
    }
    // Both complete, then a second stream cut anywhere on both sides.
    let second_req = headers(3, true, &[H::Idx(2), H::Idx(62)]);
    let second_resp = cat(&[
        &frame(kind::HEADERS, 0, 3, &block(&[H::Idx(8)])),
        &frame(kind::CONTINUATION, flag::END_HEADERS, 3, &[]),
        &data(3, true, b"x"),
    ]);
    for k in 0..second_resp.len() {
        let mut r = Run::new();
        r.send(E, &client);
        r.send(I, &server);
        r.send(E, &second_req);
        r.send(I, &second_resp[..k]);
        assert_eq!(r.out.len(), 1, "second response prefix {k}");
        assert_eq!(r.conn.take_resync(), (0, 0), "second response prefix {k}");
    }
}

/// Feeds `bytes` as syscalls cut at `cuts`, all with the same times.
fn feed_cut(
    conn: &mut Http2Conn,
    dir: Direction,
    bytes: &[u8],
    cuts: &[usize],
    t: u64,
    out: &mut Vec<Message>,
) {
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let part = &bytes[at..c];
        at = c;
        let chunk = Chunk {
            data: part,
            total_len: part.len() as u64,
            start_ns: t,
            end_ns: t + 10,
        };
        conn.feed(dir, &chunk, out);
    }
}

#[test]
fn split_at_every_byte_gives_the_same_messages() {
    let client = client_bytes();
    let server = server_bytes();
    let mut want = Vec::new();
    let mut conn = Http2Conn::new(Limits::default());
    feed_cut(&mut conn, E, &client, &[], 100, &mut want);
    feed_cut(&mut conn, I, &server, &[], 200, &mut want);
    assert_eq!(want.len(), 1);
    for i in 0..=client.len() {
        for j in [0, 1, 9, 10, server.len() / 2, server.len() - 1] {
            let mut out = Vec::new();
            let mut conn = Http2Conn::new(Limits::default());
            feed_cut(&mut conn, E, &client, &[i], 100, &mut out);
            feed_cut(&mut conn, I, &server, &[j], 200, &mut out);
            assert_eq!(out, want, "client cut {i}, server cut {j}");
            assert_eq!(conn.take_resync(), (0, 0));
        }
    }
    for j in 0..=server.len() {
        let mut out = Vec::new();
        let mut conn = Http2Conn::new(Limits::default());
        feed_cut(&mut conn, E, &client, &[], 100, &mut out);
        feed_cut(&mut conn, I, &server, &[j], 200, &mut out);
        assert_eq!(out, want, "server cut {j}");
    }
    // One byte per syscall.
    let mut out = Vec::new();
    let mut conn = Http2Conn::new(Limits::default());
    let every: Vec<usize> = (1..client.len()).collect();
    feed_cut(&mut conn, E, &client, &every, 100, &mut out);
    let every: Vec<usize> = (1..server.len()).collect();
    feed_cut(&mut conn, I, &server, &every, 200, &mut out);
    assert_eq!(out, want);
}

#[test]
fn mid_connection_start_with_unknown_dynamic_entries() {
    // The agent attaches to a gRPC server's connection long open: the
    // client's encoder holds entries (user-agent, content-type,
    // :authority) this parser never saw. The first bytes it sees are a
    // new call on stream 41, read by the server (Ingress).
    let request = cat(&[
        &headers(
            41,
            false,
            &[
                H::Idx(3),                     // :method POST
                H::Idx(6),                     // :scheme http
                H::NameInc(4, "/pkg.Svc/Get"), // :path, now index 62
                H::Idx(65),                    // :authority (unseen)
                H::Idx(64),                    // content-type (unseen)
                H::Lit("te", "trailers"),
            ],
        ),
        &data(41, true, &[0, 0, 0, 0, 2, 8, 1]),
    ]);
    assert_eq!(detect(&request), Detect::Request);
    let mut r = Run::new();
    r.send(I, &request);
    // The server's encoder state is unknown too; its answer uses static
    // entries and literals.
    r.send(
        E,
        &cat(&[
            &headers(41, false, &[H::Idx(8), H::NameLit(31, "application/grpc")]),
            &data(41, false, &[0, 0, 0, 0, 0]),
            &headers(41, true, &[H::Lit("grpc-status", "0")]),
        ]),
    );
    let got = r.streams();
    assert_eq!(got.len(), 1);
    let s = &got[0];
    assert_eq!(s.request_dir, I);
    assert_eq!(s.request.method.as_deref(), Some("POST"));
    assert_eq!(s.request.path.as_deref(), Some("/pkg.Svc/Get"));
    assert_eq!(s.request.te.as_deref(), Some("trailers"));
    assert_eq!(s.request.authority, None);
    assert_eq!(s.request.content_type, None);
    assert!(s.request_fields_unknown);
    assert_eq!(s.status, Some(200));
    assert_eq!(s.grpc_status, Some(0));
    assert_eq!(s.response_content_type.as_deref(), Some("application/grpc"));
    assert!(!s.response_fields_unknown);
    assert!(!r.conn.hpack_synchronised(I));
    // Unknown entries are not sync losses.
    assert_eq!(r.conn.take_resync(), (0, 0));

    // The next call reuses the :path entry it saw inserted (index 62)
    // and one it never saw, for the same method on stream 43.
    r.send(
        I,
        &headers(43, true, &[H::Idx(3), H::Idx(6), H::Idx(62), H::Idx(66)]),
    );
    r.send(E, &headers(43, true, &[H::Idx(13)]));
    let got = r.streams();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].request.path.as_deref(), Some("/pkg.Svc/Get"));
    assert_eq!(got[1].status, Some(404));
    assert!(got[1].request_fields_unknown);

    // A call whose :path is itself an unseen entry: the method and
    // status are still right, the path is left out.
    r.send(I, &headers(45, true, &[H::Idx(3), H::Idx(70)]));
    r.send(E, &headers(45, true, &[H::Idx(8)]));
    let got = r.streams();
    assert_eq!(got[2].request.method.as_deref(), Some("POST"));
    assert_eq!(got[2].request.path, None);
    assert_eq!(got[2].status, Some(200));
    assert!(got[2].request_fields_unknown);

    // The end of a call opened before the agent, below the highest
    // stream id seen: ignored.
    r.send(E, &headers(39, true, &[H::Idx(8)]));
    assert_eq!(r.streams().len(), 3);
    assert_eq!(r.lost(), (0, 0));
}

#[test]
fn mid_connection_start_from_the_server_side_first() {
    // The first bytes are a response (HEADERS with :status) for a
    // stream never seen, then a request: the client side is told from
    // the pseudo-headers, not from who spoke first.
    let mut r = Run::new();
    r.send(E, &headers(7, false, &[H::Idx(8)]));
    r.send(I, &headers(9, true, &[H::Idx(2), H::Idx(4)]));
    r.send(E, &headers(9, true, &[H::Idx(9)]));
    r.send(E, &data(7, true, b"x"));
    assert_eq!(r.conn.request_direction(), Some(I));
    let got = r.streams();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].stream_id, 9);
    assert_eq!(got[0].status, Some(204));
    assert_eq!(r.lost(), (0, 1));
}

#[test]
fn fifty_interleaved_streams() {
    let mut r = Run::new();
    r.send_preface(I, &settings(&[]));
    r.send(E, &cat(&[&settings(&[]), &settings_ack()]));
    // Requests in batches of 10 per syscall; the user-agent goes into
    // the dynamic table once and is referenced after.
    let mut batch = Vec::new();
    for i in 0..50u32 {
        let id = 2 * i + 1;
        let path = format!("/item/{i}");
        let mut fields = vec![H::Idx(2), H::Idx(6), H::Lit(":path", &path)];
        if i == 0 {
            fields.push(H::Huff("user-agent", "bench/1"));
        } else {
            fields.push(H::Idx(62));
        }
        batch.extend(headers(id, true, &fields));
        if i % 10 == 9 {
            r.send(I, &batch);
            batch.clear();
        }
    }
    // Responses in reverse order, each in two DATA frames, interleaved
    // with the next stream's headers.
    let mut wire = Vec::new();
    for i in (0..50u32).rev() {
        let id = 2 * i + 1;
        let status = if i % 3 == 0 { 14 } else { 8 }; // 500 or 200
        wire.extend(headers(id, false, &[H::Idx(status)]));
        wire.extend(data(id, false, &vec![b'a'; i as usize]));
    }
    for i in (0..50u32).rev() {
        wire.extend(data(2 * i + 1, true, b"!"));
    }
    for part in wire.chunks(777) {
        r.send(E, part);
    }
    let got = r.streams();
    assert_eq!(got.len(), 50);
    for s in &got {
        let i = (s.stream_id - 1) / 2;
        assert_eq!(s.request.path, Some(format!("/item/{i}")));
        assert_eq!(s.request.user_agent.as_deref(), Some("bench/1"));
        assert_eq!(s.status, Some(if i % 3 == 0 { 500 } else { 200 }));
        assert_eq!(s.response_body_size, Some(u64::from(i) + 1));
        assert!(!s.request_fields_unknown && !s.response_fields_unknown);
        assert!(s.first_ns <= s.last_ns);
    }
    assert_eq!(r.conn.take_resync(), (0, 0));
    assert_eq!(r.conn.open_streams(), 0);
}

#[test]
fn rst_stream_ends_the_stream() {
    let mut r = Run::new();
    r.open_stream(E, false, &[H::Idx(3), H::Idx(4)]);
    r.send(E, &data(1, false, b"part"));
    assert!(r.out.is_empty());
    // The client gives up (CANCEL).
    r.send(E, &rst(1, 8));
    let got = r.streams();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].reset,
        Some(Reset {
            code: Some(8),
            dir: E
        })
    );
    assert!(!got[0].request_ended && !got[0].response_ended);
    assert_eq!(got[0].status, None);
    assert_eq!(got[0].last_ns, 300);
    // The server refuses the next one after its headers.
    r.send(E, &headers(3, true, &[H::Idx(2), H::Idx(4)]));
    r.send(I, &cat(&[&headers(3, false, &[H::Idx(8)]), &rst(3, 7)]));
    let got = r.streams();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[1].reset,
        Some(Reset {
            code: Some(7),
            dir: I
        })
    );
    assert_eq!(got[1].status, Some(200));
    // Frames for the reset stream afterwards are ignored.
    r.send(I, &data(3, true, b"late"));
    r.send(E, &frame(kind::WINDOW_UPDATE, 0, 3, &[0, 0, 1, 0]));
    assert_eq!(r.out.len(), 2);
}

#[test]
fn reset_after_the_response_ended() {
    // The server answers before the upload ends; the client then stops
    // with RST_STREAM(NO_ERROR).
    let mut r = Run::new();
    r.open_stream(E, false, &[H::Idx(3), H::Idx(4)]);
    r.send(I, &headers(1, true, &[H::Idx(14)]));
    assert!(r.out.is_empty());
    r.send(E, &rst(1, 0));
    let got = r.streams();
    assert_eq!(got[0].status, Some(500));
    assert!(got[0].response_ended && !got[0].request_ended);
    assert_eq!(got[0].reset.and_then(|r| r.code), Some(0));
}

#[test]
fn grpc_trailers_only_error() {
    let mut r = Run::new();
    r.send(
        E,
        &cat(&[
            PREFACE,
            &settings(&[]),
            &headers(
                1,
                false,
                &[
                    H::Idx(3),
                    H::Idx(6),
                    H::NameLit(4, "/helloworld.Greeter/Nope"),
                    H::NameLit(1, "localhost:50051"),
                    H::NameInc(31, "application/grpc"),
                    H::Lit("te", "trailers"),
                ],
            ),
            &data(1, true, &[0, 0, 0, 0, 0]),
        ]),
    );
    r.send(
        I,
        &cat(&[
            &settings(&[]),
            &headers(
                1,
                true,
                &[
                    H::Idx(8),
                    H::NameLit(31, "application/grpc"),
                    H::Lit("grpc-status", "12"),
                    H::Lit("grpc-message", "unknown method Nope for %2Fhelloworld"),
                ],
            ),
        ]),
    );
    let got = r.streams();
    assert_eq!(got.len(), 1);
    let s = &got[0];
    assert_eq!(s.request.path.as_deref(), Some("/helloworld.Greeter/Nope"));
    assert_eq!(s.request.content_type.as_deref(), Some("application/grpc"));
    assert_eq!(s.status, Some(200));
    assert_eq!(s.grpc_status, Some(12));
    assert_eq!(
        s.grpc_message.as_deref(),
        Some("unknown method Nope for /helloworld")
    );
    assert_eq!(s.response_body_size, Some(0));
    assert_eq!(s.request_body_size, Some(5));
}

#[test]
fn grpc_streaming_call_is_one_stream() {
    let mut r = Run::new();
    r.open_stream(
        E,
        false,
        &[
            H::Idx(3),
            H::NameLit(4, "/chat.Chat/Talk"),
            H::NameLit(31, "application/grpc"),
        ],
    );
    r.send(
        I,
        &headers(1, false, &[H::Idx(8), H::NameLit(31, "application/grpc")]),
    );
    for k in 0..20u8 {
        r.send(E, &data(1, false, &[0, 0, 0, 0, 1, k]));
        r.send(I, &data(1, false, &[0, 0, 0, 0, 1, k]));
    }
    r.send(E, &data(1, true, &[]));
    assert!(r.out.is_empty());
    r.send(I, &headers(1, true, &[H::Lit("grpc-status", "0")]));
    let got = r.streams();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].first_ns, 100);
    assert_eq!(got[0].last_ns, r.t * 100 + 10);
    assert_eq!(got[0].request_body_size, Some(120));
    assert_eq!(got[0].grpc_status, Some(0));
}

#[test]
fn continuation_padding_and_priority() {
    let req = block(&[
        H::Idx(2),
        H::Idx(7),
        H::NameLit(4, "/padded"),
        H::NameLit(1, "h.example"),
        H::Lit("x-filler", "0123456789"),
    ]);
    let (a, rest) = req.split_at(3);
    let (b, c) = rest.split_at(5);
    // HEADERS with PADDED and PRIORITY: pad length, 5 priority bytes,
    // fragment, padding.
    let mut p = vec![4u8, 0x80, 0, 0, 0, 16];
    p.extend_from_slice(a);
    p.extend_from_slice(&[0; 4]);
    let mut padded_data = vec![3u8];
    padded_data.extend_from_slice(b"body");
    padded_data.extend_from_slice(&[0; 3]);
    let mut r = Run::new();
    r.send(
        E,
        &cat(&[
            PREFACE,
            &frame(kind::HEADERS, flag::PADDED | flag::PRIORITY, 1, &p),
            &frame(kind::CONTINUATION, 0, 1, b),
            &frame(kind::CONTINUATION, flag::END_HEADERS, 1, c),
            &frame(kind::PRIORITY, 0, 1, &[0, 0, 0, 0, 7]),
            &frame(kind::PING, 0, 0, &[1; 8]),
            &frame(kind::DATA, flag::PADDED | flag::END_STREAM, 1, &padded_data),
        ]),
    );
    r.send(
        I,
        &cat(&[
            &frame(kind::PING, flag::ACK, 0, &[1; 8]),
            &headers(1, true, &[H::Idx(9)]),
        ]),
    );
    let got = r.streams();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request.path.as_deref(), Some("/padded"));
    assert_eq!(got[0].request.scheme.as_deref(), Some("https"));
    assert_eq!(got[0].request.authority.as_deref(), Some("h.example"));
    assert_eq!(got[0].request_body_size, Some(4));
    assert_eq!(got[0].status, Some(204));
    assert_eq!(r.conn.take_resync(), (0, 0));
}

#[test]
fn empty_pseudo_headers_are_not_kept() {
    let mut r = Run::new();
    r.open_stream(E, true, &[H::NameLit(2, ""), H::NameLit(4, "")]);
    r.send(I, &headers(1, true, &[H::NameLit(8, ""), H::Idx(8)]));
    let got = r.streams();
    assert_eq!(got[0].request.method, None);
    assert_eq!(got[0].request.path, None);
    assert_eq!(got[0].status, Some(200));
}

#[test]
fn informational_responses_are_skipped() {
    let mut r = Run::new();
    r.open_stream(
        E,
        false,
        &[H::Idx(3), H::Idx(4), H::Lit("expect", "100-continue")],
    );
    r.send(I, &headers(1, false, &[H::NameLit(8, "100")]));
    r.send(E, &data(1, true, b"payload"));
    r.send(I, &headers(1, true, &[H::NameLit(8, "201")]));
    assert_eq!(r.streams()[0].status, Some(201));
}

#[test]
fn push_promise_keeps_hpack_in_step() {
    let mut r = Run::new();
    r.open_stream(E, true, &[H::Idx(2), H::Idx(5)]);
    // The promised request inserts an entry into the server's table;
    // the response then refers to it by index.
    let mut pp = 2u32.to_be_bytes().to_vec();
    pp.extend(block(&[H::Idx(2), H::NameInc(4, "/style.css"), H::Idx(6)]));
    r.send(
        I,
        &cat(&[
            &frame(kind::PUSH_PROMISE, flag::END_HEADERS, 1, &pp),
            &headers(1, false, &[H::Idx(8), H::NameInc(31, "text/html")]),
            &headers(2, false, &[H::Idx(8), H::Idx(62)]),
            &data(2, true, b"body{}"),
            &data(1, true, b"<html>"),
        ]),
    );
    let got = r.streams();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].stream_id, 1);
    assert_eq!(got[0].response_content_type.as_deref(), Some("text/html"));
    assert!(!got[0].response_fields_unknown);
    assert!(r.conn.hpack_synchronised(I));
    assert_eq!(r.lost(), (0, 0));
}

#[test]
fn settings_header_table_size_and_ack() {
    let mut r = Run::new();
    // The client allows the server a 0-byte table; once the server
    // acknowledges, a larger size update is a protocol error, so the
    // block is not trusted.
    r.send_preface(E, &settings(&[(SETTINGS_HEADER_TABLE_SIZE, 0)]));
    r.send(I, &cat(&[&settings(&[]), &settings_ack()]));
    r.send(
        E,
        &cat(&[&settings_ack(), &headers(1, true, &[H::Idx(2), H::Idx(4)])]),
    );
    r.send(I, &headers(1, true, &[H::Size(0), H::Idx(8)]));
    let got = r.streams();
    assert_eq!(got[0].status, Some(200));
    assert!(!got[0].response_fields_unknown);
    assert_eq!(r.conn.take_resync(), (0, 0));
    r.send(E, &headers(3, true, &[H::Idx(2), H::Idx(4)]));
    r.send(I, &headers(3, true, &[H::Size(4096), H::Idx(8)]));
    let got = r.streams();
    assert_eq!(got[1].status, None);
    assert!(got[1].response_fields_unknown);
    assert_eq!(r.conn.take_resync(), (0, 1));
    assert!(!r.conn.hpack_synchronised(I));
    // Before the ACK the old limit still counts: a 4096 update is fine.
    let mut r = Run::new();
    r.send_preface(E, &settings(&[(SETTINGS_HEADER_TABLE_SIZE, 0)]));
    r.send(E, &headers(1, true, &[H::Idx(2), H::Idx(4)]));
    r.send(I, &headers(1, true, &[H::Size(4096), H::Idx(8)]));
    assert!(!r.streams()[0].response_fields_unknown);
}

#[test]
fn uncaptured_data_keeps_sync() {
    let mut r = Run::new();
    r.open_stream(E, false, &[H::Idx(3), H::Idx(4)]);
    // A 10000-byte DATA frame of which the first 100 bytes were copied.
    let big = data(1, true, &vec![7u8; 10_000]);
    r.send_gap(E, &big[..100], big.len() as u64);
    r.send(I, &headers(1, false, &[H::Idx(8)]));
    // A response body whose syscall copied only the frame header.
    let body = data(1, true, &vec![1u8; 5000]);
    r.send_gap(I, &body[..9], body.len() as u64);
    let got = r.streams();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request_body_size, Some(10_000));
    assert_eq!(got[0].response_body_size, Some(5000));
    assert_eq!(r.conn.take_resync(), (0, 0));
}

#[test]
fn uncaptured_header_block_leaves_hpack_unknown() {
    let mut r = Run::new();
    r.send_preface(E, &settings(&[]));
    // Stream 1's HEADERS: only the frame header was copied. Its block
    // inserted :authority into the table.
    let h1 = headers(
        1,
        true,
        &[H::Idx(2), H::Idx(4), H::NameInc(1, "secret.example")],
    );
    r.send_gap(E, &h1[..9], h1.len() as u64);
    r.send(I, &headers(1, true, &[H::Idx(8)]));
    let got = r.streams();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request.method, None);
    assert!(got[0].request_fields_unknown);
    assert_eq!(got[0].status, Some(200));
    assert!(!r.conn.hpack_synchronised(E));
    assert_eq!(r.conn.take_resync(), (0, 1));
    // Stream 3 refers to the entry it inserted: unknown, not wrong;
    // static and literal fields still decode.
    r.send(
        E,
        &headers(3, true, &[H::Idx(2), H::NameLit(4, "/next"), H::Idx(62)]),
    );
    r.send(I, &headers(3, true, &[H::Idx(8)]));
    let got = r.streams();
    assert_eq!(got[1].request.method.as_deref(), Some("GET"));
    assert_eq!(got[1].request.path.as_deref(), Some("/next"));
    assert_eq!(got[1].request.authority, None);
    assert!(got[1].request_fields_unknown);
    assert_eq!(r.conn.take_resync(), (0, 0));
}

#[test]
fn uncaptured_frame_header_loses_framing_until_a_plausible_syscall() {
    let mut r = Run::new();
    r.open_stream(E, true, &[H::Idx(2), H::Idx(4)]);
    // A syscall with two frames; the second frame's header was not
    // copied, so this direction's framing is lost.
    let wire = cat(&[&headers(1, false, &[H::Idx(8)]), &data(1, true, &[1; 50])]);
    r.send_gap(I, &wire[..12], wire.len() as u64);
    let (skipped, events) = r.conn.take_resync();
    assert_eq!(events, 1);
    assert_eq!(skipped, (wire.len() - 10) as u64);
    // The lost side of stream 1 keeps it open.
    assert!(r.out.is_empty());
    // A syscall starting mid-frame is skipped.
    r.send(I, &[1; 30]);
    assert_eq!(r.conn.take_resync(), (30, 0));
    // One starting with plausible frames resynchronises; the server's
    // HPACK table is unknown from here, static entries still decode.
    r.send(E, &headers(3, true, &[H::Idx(2), H::Idx(4)]));
    r.send(
        I,
        &cat(&[&headers(3, true, &[H::Idx(13)]), &data(1, true, b"")]),
    );
    let got = r.streams();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].stream_id, got[0].status), (3, Some(404)));
    assert_eq!((got[1].stream_id, got[1].status), (1, Some(200)));
    assert!(got[1].response_fields_unknown);
    assert_eq!(r.conn.take_resync(), (0, 0));
}

#[test]
fn lost_client_side_ends_with_the_response() {
    let mut r = Run::new();
    r.open_stream(I, false, &[H::Idx(3), H::Idx(4)]);
    // The request body's end is in bytes whose framing was lost.
    r.send_gap(I, &[], 100);
    r.send(E, &headers(1, true, &[H::Idx(8)]));
    let got = r.streams();
    assert_eq!(got.len(), 1);
    assert!(!got[0].request_ended);
    assert_eq!(got[0].request_body_size, None);
    assert_eq!(r.conn.take_resync(), (100, 1));
}

#[test]
fn bounds_are_kept_and_counted() {
    // More open streams than MAX_STREAMS: the oldest are dropped.
    let mut r = Run::new();
    r.send(E, PREFACE);
    for i in 0..(MAX_STREAMS as u32 + 6) {
        r.send(E, &headers(2 * i + 1, true, &[H::Idx(2), H::Idx(4)]));
    }
    assert_eq!(r.conn.open_streams(), MAX_STREAMS);
    assert_eq!(r.lost(), (6, 0));
    // A header block over the bound is not decoded.
    let mut r = Run::with_limits(Limits {
        max_buffered_bytes: 64,
    });
    let long = "v".repeat(100);
    r.open_stream(E, true, &[H::Idx(2), H::Lit("x-long", &long)]);
    r.send(I, &headers(1, true, &[H::Idx(8)]));
    let got = r.streams();
    assert_eq!(got[0].request.method, None);
    assert!(got[0].request_fields_unknown);
    assert!(!r.conn.hpack_synchronised(E));
    // Header values past MAX_STREAM_HEADER_BYTES are left out.
    let mut r = Run::new();
    let path = format!("/{}", "p".repeat(MAX_STREAM_HEADER_BYTES));
    r.open_stream(E, true, &[H::Idx(2), H::NameLit(4, &path)]);
    r.send(I, &headers(1, true, &[H::Idx(8)]));
    let got = r.streams();
    assert_eq!(got[0].request.method.as_deref(), Some("GET"));
    assert_eq!(got[0].request.path, None);
    assert!(got[0].request_fields_unknown);
}

#[test]
fn close_reports_started_streams_and_counts_the_rest() {
    let mut r = Run::new();
    r.send(
        E,
        &cat(&[
            PREFACE,
            &headers(1, true, &[H::Idx(2), H::Idx(4)]),
            &headers(3, true, &[H::Idx(2), H::Idx(5)]),
        ]),
    );
    r.send(
        I,
        &cat(&[
            &headers(1, false, &[H::Idx(8)]),
            &data(1, false, b"partial"),
        ]),
    );
    r.conn.close(10_000, &mut r.out);
    let got = r.streams();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].stream_id, 1);
    assert!(!got[0].response_ended);
    assert_eq!(got[0].response_body_size, None);
    assert_eq!(got[0].last_ns, 210);
    assert_eq!(r.lost(), (1, 0));
}

#[test]
fn goaway_and_unknown_frames_are_skipped() {
    let mut r = Run::new();
    r.send(
        E,
        &cat(&[
            PREFACE,
            &frame(0x0a, 0, 0, b"altsvc"),
            &headers(1, true, &[H::Idx(2), H::Idx(4)]),
        ]),
    );
    r.send(
        I,
        &cat(&[
            &frame(
                kind::GOAWAY,
                0,
                0,
                &[0, 0, 0, 1, 0, 0, 0, 0, b'b', b'y', b'e'],
            ),
            &headers(1, true, &[H::Idx(8)]),
        ]),
    );
    assert_eq!(r.streams().len(), 1);
    assert_eq!(r.conn.take_resync(), (0, 0));
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x9e37_79b9_u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let valid = cat(&[&client_bytes(), &server_bytes()]);
    for round in 0..300u32 {
        let mut conn = Http2Conn::new(Limits {
            max_buffered_bytes: 256,
        });
        let mut out = Vec::new();
        let mut t = 0;
        if round.is_multiple_of(2) {
            let chunk = Chunk {
                data: PREFACE,
                total_len: 24,
                start_ns: 0,
                end_ns: 0,
            };
            conn.feed(E, &chunk, &mut out);
        }
        for _ in 0..40 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Mix in pieces of real frames so parsing gets deep.
            if next().is_multiple_of(2) {
                let at = next() as usize % valid.len();
                let end = (at + len).min(valid.len());
                bytes = valid[at..end].to_vec();
                if next() % 4 == 0
                    && let Some(b) = bytes.get_mut(next() as usize % len.max(1))
                {
                    *b ^= next() as u8;
                }
            }
            let gap = if next() % 5 == 0 {
                u64::from(next() % 100)
            } else {
                0
            };
            t += 1;
            let chunk = Chunk {
                data: &bytes,
                total_len: bytes.len() as u64 + gap,
                start_ns: t,
                end_ns: t,
            };
            let dir = if next().is_multiple_of(2) { E } else { I };
            conn.feed(dir, &chunk, &mut out);
            let _ = detect(&bytes);
        }
        conn.close(t + 1, &mut out);
        let _ = conn.take_resync();
        for m in &out {
            if let Some((a, b)) = m.times() {
                assert!(a <= b);
            }
        }
    }
}

/// A server connection that keeps the `names` headers of each request.
fn keeping(names: &[&str]) -> Run {
    let mut r = Run::new();
    r.conn = Http2Conn::new(Limits::default())
        .keeping_headers(crate::protocol::headers::header_names(names));
    r
}

fn kept(pairs: &[(u8, &str)]) -> KeptHeaders {
    pairs.iter().map(|&(i, v)| (i, v.into())).collect()
}

/// `GET /` on `stream` with `more` fields after the pseudo-headers, and
/// its answer.
fn get_with(r: &mut Run, stream: u32, more: &[H<'_>]) {
    let mut fields = vec![H::Idx(2), H::Idx(6), H::Idx(4)];
    fields.extend_from_slice(more);
    r.send(I, &headers(stream, true, &fields));
    r.send(E, &headers(stream, true, &[H::Idx(8)]));
}

fn kept_by_stream(r: &Run) -> Vec<(u32, KeptHeaders)> {
    r.streams()
        .into_iter()
        .map(|s| (s.stream_id, s.request.kept_headers))
        .collect()
}

#[test]
fn kept_headers_literal_indexed_and_huffman() {
    let mut r = keeping(&["x-tenant-id"]);
    r.send(I, PREFACE);
    // A literal the encoder adds to its table (dynamic index 62)...
    get_with(&mut r, 1, &[H::Inc("x-tenant-id", "acme")]);
    // ...then sends again by that index alone,
    get_with(&mut r, 3, &[H::Idx(62)]);
    // or by its name's index with a new value.
    get_with(&mut r, 5, &[H::NameLit(62, "globex")]);
    // Huffman-coded, and in a case HTTP/2 forbids but a peer may send.
    get_with(&mut r, 7, &[H::Huff("X-Tenant-Id", "initech")]);
    // Not indexed, among other fields.
    get_with(
        &mut r,
        9,
        &[H::Lit("x-org", "ops"), H::Lit("x-tenant-id", "umbrella")],
    );
    get_with(&mut r, 11, &[H::Lit("x-tenant", "nope")]);
    assert_eq!(
        kept_by_stream(&r),
        [
            (1, kept(&[(0, "acme")])),
            (3, kept(&[(0, "acme")])),
            (5, kept(&[(0, "globex")])),
            (7, kept(&[(0, "initech")])),
            (9, kept(&[(0, "umbrella")])),
            (11, kept(&[])),
        ]
    );
    assert_eq!(r.conn.take_resync(), (0, 0));
}

#[test]
fn a_repeated_kept_header_keeps_its_first_non_empty_value() {
    let mut r = keeping(&["x-org", "x-tenant-id"]);
    r.send(I, PREFACE);
    get_with(
        &mut r,
        1,
        &[
            H::Lit("x-tenant-id", ""),
            H::Lit("x-tenant-id", "acme"),
            H::Lit("x-tenant-id", "globex"),
            H::Lit("x-org", "ops"),
        ],
    );
    // Request headers, then request trailers naming it again: the first
    // block's value stays.
    r.send(
        I,
        &cat(&[
            &headers(
                3,
                false,
                &[
                    H::Idx(3),
                    H::Idx(6),
                    H::Idx(4),
                    H::Lit("x-tenant-id", "initech"),
                ],
            ),
            &data(3, false, b"x"),
            &headers(
                3,
                true,
                &[H::Lit("x-tenant-id", "late"), H::Lit("x-org", "dev")],
            ),
        ]),
    );
    r.send(E, &headers(3, true, &[H::Idx(8)]));
    assert_eq!(
        kept_by_stream(&r),
        [
            (1, kept(&[(1, "acme"), (0, "ops")])),
            (3, kept(&[(1, "initech"), (0, "dev")])),
        ]
    );
}

#[test]
fn kept_headers_only_of_requests_and_bounded() {
    use crate::protocol::headers::MAX_KEPT_VALUE;
    let mut r = keeping(&["x-tenant-id"]);
    r.send(I, PREFACE);
    // A response's header of that name is not the request's.
    r.send(I, &headers(1, true, &[H::Idx(2), H::Idx(6), H::Idx(4)]));
    r.send(
        E,
        &headers(1, true, &[H::Idx(8), H::Lit("x-tenant-id", "acme")]),
    );
    let long = "v".repeat(MAX_KEPT_VALUE + 50);
    get_with(&mut r, 3, &[H::Lit("x-tenant-id", &long)]);
    assert_eq!(
        kept_by_stream(&r),
        [(1, kept(&[])), (3, kept(&[(0, &long[..MAX_KEPT_VALUE])])),]
    );
    // Without names nothing is kept.
    let mut r = Run::new();
    r.send(I, PREFACE);
    get_with(&mut r, 1, &[H::Lit("x-tenant-id", "acme")]);
    assert_eq!(kept_by_stream(&r), [(1, kept(&[]))]);
}
