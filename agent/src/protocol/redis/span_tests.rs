use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::capture::Endpoint;
use crate::capture::Endpoints;
use crate::protocol::Chunk;
use crate::protocol::redis::fixtures::{records, replay, resp, whole};
use crate::protocol::redis::{Limits, RedisConn};
use crate::protocol::test_chunks::feed_whole;
use crate::span::{DbSpanOptions, SpanOptions};

const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

/// A connection from 127.0.0.2:51000 to 127.0.0.1:6379, seen from the
/// client (`client`) or from the server.
fn ctx(client: bool, sanitize: bool) -> SpanContext {
    let (c, s) = (
        Endpoint::Ip(CLIENT_IP, 51000),
        Endpoint::Ip(SERVER_IP, 6379),
    );
    SpanContext {
        pid: 42,
        endpoints: if client {
            Endpoints { local: c, peer: s }
        } else {
            Endpoints { local: s, peer: c }
        },
        options: SpanOptions {
            db: DbSpanOptions {
                sanitize_query: sanitize,
            },
            ..SpanOptions::default()
        },
    }
}

fn pair(msgs: Vec<Message>, ctx: &SpanContext) -> (Vec<Span>, PairingLoss) {
    let mut pairing = RedisPairing::default();
    let mut spans = Vec::new();
    let mut out = PairingOut::new(ctx, &mut spans);
    for m in msgs {
        pairing.push(m, &mut out);
    }
    pairing.finish(&mut out.loss);
    let loss = out.loss;
    (crate::span::completed(spans), loss)
}

fn text(span: &Span, key: &str) -> String {
    match span.attr(key) {
        Some(AttrValue::Str(s)) => s.to_string(),
        Some(AttrValue::Int(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => "-".to_owned(),
    }
}

/// `name | query | namespace`, then `| code: description` for errors.
fn line(span: &Span) -> String {
    let mut s = format!(
        "{} | {} | {}",
        span.name,
        text(span, "db.query.text"),
        text(span, "db.namespace")
    );
    if let SpanStatus::Error { description } = &span.status {
        s += &format!(
            " | {}: {description}",
            text(span, "db.response.status_code")
        );
    }
    s
}

fn fixture_spans(name: &str, client: bool, sanitize: bool) -> (Vec<Span>, PairingLoss) {
    let mut conn = RedisConn::new(Limits::default());
    let msgs = replay(&mut conn, &records(name, client));
    pair(msgs, &ctx(client, sanitize))
}

const EXPECTED: &[(&str, &[&str])] = &[
    (
        "resp2_basic",
        &[
            "SET | SET user:1 ? | 0",
            "GET | GET user:1 | 0",
            "GET | GET missing | 0",
            "INCR | INCR counter | 0",
            "RPUSH | RPUSH list ? ? ? | 0",
            "LRANGE | LRANGE list ? ? | 0",
            "HSET | HSET h ? ? ? ? | 0",
            "HGETALL | HGETALL h | 0",
            "GET | GET h | 0 | WRONGTYPE: WRONGTYPE",
            "NOSUCHCMD | NOSUCHCMD ? | 0 | ERR: ERR",
            "CLIENT SETNAME | CLIENT SETNAME ? | 0",
            "CONFIG GET | CONFIG GET ? | 0",
            "DEL | DEL user:1 ? ? ? | 0",
            "PING | PING | 0",
        ],
    ),
    (
        "resp3_types",
        &[
            "HELLO | HELLO ? | 0",
            "HSET | HSET h ? ? | 0",
            "HGETALL | HGETALL h | 0",
            "ZADD | ZADD z ? ? | 0",
            "ZSCORE | ZSCORE z ? | 0",
            "GET | GET missing | 0",
            "DEBUG PROTOCOL | DEBUG PROTOCOL ? | 0",
            "DEBUG PROTOCOL | DEBUG PROTOCOL ? | 0",
            "DEBUG PROTOCOL | DEBUG PROTOCOL ? | 0",
            "DEBUG PROTOCOL | DEBUG PROTOCOL ? | 0",
            "DEBUG PROTOCOL | DEBUG PROTOCOL ? | 0",
            "DEBUG PROTOCOL | DEBUG PROTOCOL ? | 0",
            "DEBUG PROTOCOL | DEBUG PROTOCOL ? | 0",
            "SMEMBERS | SMEMBERS nothing | 0",
            "DEL | DEL h ? | 0",
        ],
    ),
    (
        "multi_select",
        &[
            "MULTI | MULTI | 0",
            "SET | SET a ? | 0",
            "INCR | INCR a | 0",
            "GET | GET a | 0",
            "EXEC | EXEC | 0",
            "SELECT | SELECT ? | 0",
            "SET | SET b ? | 2",
            "MULTI | MULTI | 2",
            "SELECT | SELECT ? | 2",
            "EXEC | EXEC | 2",
            "GET | GET b | 3",
            "DISCARD | DISCARD | 3 | ERR: ERR",
            "SELECT | SELECT ? | 3",
            "DEL | DEL a | 0",
        ],
    ),
    (
        "pipeline16",
        &[
            "SET | SET k0 ? | 0",
            "SET | SET k1 ? | 0",
            "SET | SET k2 ? | 0",
            "SET | SET k3 ? | 0",
            "SET | SET k4 ? | 0",
            "SET | SET k5 ? | 0",
            "SET | SET k6 ? | 0",
            "SET | SET k7 ? | 0",
            "GET | GET k0 | 0",
            "GET | GET k1 | 0",
            "GET | GET k2 | 0",
            "GET | GET k3 | 0",
            "GET | GET k4 | 0",
            "GET | GET k5 | 0",
            "GET | GET k6 | 0",
            "GET | GET k7 | 0",
        ],
    ),
    (
        // Commands that get no reply end with themselves, at once.
        "client_reply",
        &[
            "CLIENT REPLY | CLIENT REPLY ? | 0",
            "SET | SET x ? | 0",
            "CLIENT REPLY | CLIENT REPLY ? | 0",
            "SET | SET y ? | 0",
            "GET | GET y | 0",
            "GET | GET x | 0",
            "CLIENT REPLY | CLIENT REPLY ? | 0",
            "GET | GET y | 0",
        ],
    ),
    (
        "pubsub_resp2",
        &[
            "SUBSCRIBE | SUBSCRIBE ? ? | 0",
            "PSUBSCRIBE | PSUBSCRIBE ? | 0",
            "PING | PING | 0",
            "UNSUBSCRIBE | UNSUBSCRIBE | 0",
            "PUNSUBSCRIBE | PUNSUBSCRIBE | 0",
            "GET | GET news | 0",
        ],
    ),
    (
        "pubsub_resp3",
        &[
            "HELLO | HELLO ? | 0",
            "SUBSCRIBE | SUBSCRIBE ? | 0",
            "GET | GET k | 0",
            "UNSUBSCRIBE | UNSUBSCRIBE ? | 0",
        ],
    ),
    (
        "monitor",
        &[
            "MONITOR | MONITOR | 0",
            "RESET | RESET | 0",
            "PING | PING | 0",
        ],
    ),
    ("auth", &["AUTH | AUTH ? | 0", "GET | GET k | 0"]),
    (
        "auth_user_resp3",
        &[
            "AUTH | AUTH ? | 0",
            "HELLO | HELLO ? | 0",
            "GET | GET k | 0",
        ],
    ),
    (
        "hello_auth",
        &[
            "GET | GET k | 0 | NOAUTH: NOAUTH",
            "HELLO | HELLO ? | 0 | WRONGPASS: WRONGPASS",
            "HELLO | HELLO ? | 0",
            "GET | GET k | 0",
        ],
    ),
];

#[test]
fn fixture_spans_from_both_ends() {
    for (name, want) in EXPECTED {
        for client in [true, false] {
            let (spans, loss) = fixture_spans(name, client, true);
            let lines: Vec<_> = spans.iter().map(line).collect();
            assert_eq!(lines, *want, "{name} client={client}");
            assert_eq!(loss, PairingLoss::default(), "{name}");
            for s in &spans {
                assert!(s.start_unix_ns <= s.end_unix_ns);
                assert_eq!(s.attr("db.system.name"), Some(&"redis".into()));
                assert_eq!(s.attr("db.operation.name"), Some(&s.name.clone().into()));
                assert_eq!(s.pid, 42);
                let kind = if client {
                    SpanKind::Client
                } else {
                    SpanKind::Server
                };
                assert_eq!(s.kind, kind);
            }
        }
    }
}

#[test]
fn every_fixture_is_paired() {
    for (name, _) in crate::protocol::redis::fixtures::LOGS {
        assert!(EXPECTED.iter().any(|(n, _)| n == name), "{name}");
    }
}

#[test]
fn queries_as_sent_when_not_sanitising() {
    let (spans, _) = fixture_spans("resp2_basic", true, false);
    let queries: Vec<_> = spans.iter().map(|s| text(s, "db.query.text")).collect();
    assert_eq!(
        queries,
        [
            "SET user:1 alice",
            "GET user:1",
            "GET missing",
            "INCR counter",
            "RPUSH list a b c",
            "LRANGE list 0 -1",
            "HSET h f1 v1 f2 v2",
            "HGETALL h",
            "GET h",
            "NOSUCHCMD x",
            "CLIENT SETNAME app",
            "CONFIG GET maxmemory",
            "DEL user:1 list h counter",
            "PING",
        ]
    );
    let (spans, _) = fixture_spans("hello_auth", true, false);
    let queries: Vec<_> = spans.iter().map(|s| text(s, "db.query.text")).collect();
    assert_eq!(queries, ["GET k", "HELLO 3 ?", "HELLO 3 ?", "GET k"]);
}

#[test]
fn passwords_never_reach_a_span() {
    for name in ["auth", "auth_user_resp3", "hello_auth"] {
        for client in [true, false] {
            for sanitize in [true, false] {
                let (spans, _) = fixture_spans(name, client, sanitize);
                assert!(!spans.is_empty());
                let all = format!("{spans:?}");
                assert!(!all.contains("s3cret"), "{name}: {all}");
                assert!(!all.contains("wrong"), "{name}: {all}");
            }
        }
    }
    // Other places passwords travel.
    for (args, want) in [
        (
            &[&b"CONFIG"[..], b"SET", b"requirepass", b"s3cret"][..],
            "CONFIG SET requirepass ?",
        ),
        (
            &[&b"ACL"[..], b"SETUSER", b"bob", b"on", b">s3cret"],
            "ACL SETUSER bob ? ?",
        ),
        (&[&b"auth"[..], b"s3cret"], "AUTH ?"),
        (&[&b"HELLO"[..]], "HELLO"),
        (
            &[&b"HELLO"[..], b"3", b"AUTH", b"u", b"s3cret"],
            "HELLO 3 ?",
        ),
    ] {
        let mut conn = RedisConn::new(Limits::default());
        let mut msgs = Vec::new();
        conn.feed(Direction::Egress, &whole(&resp(args), 0), &mut msgs);
        conn.feed(Direction::Ingress, &whole(b"+OK\r\n", 10), &mut msgs);
        let (spans, _) = pair(msgs, &ctx(true, false));
        assert_eq!(text(&spans[0], "db.query.text"), want);
    }
}

#[test]
fn error_reply_attributes() {
    let (spans, _) = fixture_spans("resp2_basic", true, true);
    let wrongtype = &spans[8];
    assert_eq!(
        wrongtype.attr("db.response.status_code"),
        Some(&"WRONGTYPE".into())
    );
    assert_eq!(wrongtype.attr("error.type"), Some(&"WRONGTYPE".into()));
    assert_eq!(
        wrongtype.status,
        SpanStatus::Error {
            description: "WRONGTYPE".into()
        },
        "sanitised: the server's message may quote arguments"
    );
    let (unsanitised, _) = fixture_spans("resp2_basic", true, false);
    assert_eq!(
        unsanitised[8].status,
        SpanStatus::Error {
            description: "Operation against a key holding the wrong kind of value".into()
        }
    );
    // Successful spans carry neither.
    assert_eq!(spans[7].attr("error.type"), None);
    assert_eq!(spans[7].attr("db.response.status_code"), None);
    assert_eq!(spans[7].status, SpanStatus::Unset);
}

#[test]
fn endpoints_by_span_kind() {
    let (spans, _) = fixture_spans("resp2_basic", true, true);
    let s = &spans[0];
    assert_eq!(s.kind, SpanKind::Client);
    assert_eq!(s.attr("server.address"), Some(&"127.0.0.1".into()));
    assert_eq!(s.attr("server.port"), Some(&6379.into()));
    assert_eq!(s.attr("network.peer.address"), Some(&"127.0.0.1".into()));
    assert_eq!(s.attr("network.peer.port"), Some(&6379.into()));
    assert_eq!(s.attr("client.address"), None);
    assert_eq!(s.attr("network.transport"), Some(&"tcp".into()));

    let (spans, _) = fixture_spans("resp2_basic", false, true);
    let s = &spans[0];
    assert_eq!(s.kind, SpanKind::Server);
    assert_eq!(s.attr("server.address"), Some(&"127.0.0.1".into()));
    assert_eq!(s.attr("server.port"), Some(&6379.into()));
    assert_eq!(s.attr("network.peer.address"), Some(&"127.0.0.2".into()));
    assert_eq!(s.attr("network.peer.port"), Some(&51000.into()));
    assert_eq!(s.attr("client.address"), Some(&"127.0.0.2".into()));
    assert_eq!(s.attr("client.port"), Some(&51000.into()));

    // Unix sockets have no addresses to give.
    let mut unix = ctx(true, true);
    unix.endpoints = Endpoints {
        local: Endpoint::Unix,
        peer: Endpoint::Unix,
    };
    let mut conn = RedisConn::new(Limits::default());
    let msgs = replay(&mut conn, &records("auth", true));
    let (spans, _) = pair(msgs, &unix);
    assert_eq!(spans[0].attr("server.address"), None);
    assert_eq!(spans[0].attr("network.transport"), Some(&"unix".into()));
}

/// 16 commands in one write, their replies in several reads: each span
/// ends with its own reply.
#[test]
fn pipelined_commands_get_their_own_replies() {
    let mut conn = RedisConn::new(Limits::default());
    let mut msgs = Vec::new();
    let batch: Vec<u8> = (0..16)
        .flat_map(|i| resp(&[b"INCR", format!("k{i}").as_bytes()]))
        .collect();
    conn.feed(Direction::Egress, &whole(&batch, 100), &mut msgs);
    let replies: Vec<Vec<u8>> = (0..16)
        .map(|i| {
            if i == 3 || i == 11 {
                b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n".to_vec()
            } else {
                format!(":{i}\r\n").into_bytes()
            }
        })
        .collect();
    // Reads of 1, 2, 3, ... replies, 1000 ns apart; some cut mid-reply.
    let stream = replies.concat();
    let mut at = 0;
    for (k, size) in [5, 30, 7, 100, 3, 64, 200, 1000].iter().enumerate() {
        let end = (at + size).min(stream.len());
        conn.feed(
            Direction::Ingress,
            &whole(&stream[at..end], 1000 * (k as u64 + 1)),
            &mut msgs,
        );
        at = end;
    }
    let (spans, loss) = pair(msgs, &ctx(true, true));
    assert_eq!(loss, PairingLoss::default());
    assert_eq!(spans.len(), 16);
    for (i, s) in spans.iter().enumerate() {
        assert_eq!(text(s, "db.query.text"), format!("INCR k{i}"));
        assert_eq!(s.start_unix_ns, 100);
        let failed = matches!(s.status, SpanStatus::Error { .. });
        assert_eq!(failed, i == 3 || i == 11, "span {i}");
    }
    // Each ends when the read that completed its reply returned.
    let mut ends_at = Vec::new();
    let mut at = 0;
    let mut done = 0;
    for (k, size) in [5, 30, 7, 100, 3, 64, 200, 1000].iter().enumerate() {
        at = (at + size).min(stream.len());
        while done < 16 && replies[..=done].concat().len() <= at {
            ends_at.push(1000 * (k as u64 + 1) + 1);
            done += 1;
        }
    }
    let ends: Vec<_> = spans.iter().map(|s| s.end_unix_ns).collect();
    assert_eq!(ends, ends_at);
}

#[test]
fn full_queue_drops_the_oldest_and_keeps_order() {
    let n = MAX_WAITING + 88;
    let mut conn = RedisConn::new(Limits::default());
    let mut msgs = Vec::new();
    for i in 0..n {
        let cmd = resp(&[b"GET", format!("k{i}").as_bytes()]);
        conn.feed(Direction::Egress, &whole(&cmd, 10 * i as u64), &mut msgs);
    }
    for i in 0..n {
        conn.feed(
            Direction::Ingress,
            &whole(b"$-1\r\n", 100_000 + 10 * i as u64),
            &mut msgs,
        );
    }
    let (spans, loss) = pair(msgs, &ctx(true, true));
    assert_eq!(loss.requests_unanswered, 88);
    assert_eq!(loss.responses_unpaired, 0);
    assert_eq!(spans.len(), MAX_WAITING);
    // Replies of dropped commands were skipped, so every span still has
    // its own reply: all last the same.
    assert_eq!(text(&spans[0], "db.query.text"), "GET k88");
    assert!(spans.iter().all(|s| s.duration_ns() == 100_001));
}

#[test]
fn lost_command_does_not_shift_pairs() {
    let mut conn = RedisConn::new(Limits::default());
    let mut msgs = Vec::new();
    let syscalls: &[(Direction, &[u8])] = &[
        (Direction::Egress, &resp(&[b"PING"])),
        (Direction::Ingress, b"+PONG\r\n"),
        // A command the parser cannot read, then its reply.
        (Direction::Egress, b"*2\r\n$3\r\nGET\r\n#x\r\n"),
        (Direction::Ingress, b"$1\r\nv\r\n"),
        (Direction::Egress, &resp(&[b"INCR", b"n"])),
        (Direction::Ingress, b":7\r\n"),
    ];
    feed_whole(&mut conn, syscalls, &mut msgs);
    let (spans, loss) = pair(msgs, &ctx(true, true));
    let got: Vec<_> = spans
        .iter()
        .map(|s| (s.name.as_str(), s.start_unix_ns, s.end_unix_ns))
        .collect();
    assert_eq!(got, [("PING", 0, 11), ("INCR", 40, 51)]);
    assert_eq!(loss.responses_unpaired, 1);
    assert_eq!(loss.requests_unanswered, 0);
}

#[test]
fn lost_reply_drops_the_waiting_commands() {
    let mut conn = RedisConn::new(Limits::default());
    let mut msgs = Vec::new();
    let two = [resp(&[b"GET", b"a"]), resp(&[b"GET", b"b"])].concat();
    let syscalls: &[(Direction, &[u8])] = &[
        (Direction::Egress, &two),
        // The reply stream breaks: which reply answers which is unknown.
        (Direction::Ingress, b"$1\r\na\r\n\x00\x01"),
        (Direction::Ingress, b"junk"),
        (Direction::Egress, &resp(&[b"GET", b"c"])),
        (Direction::Ingress, b"$1\r\nc\r\n"),
    ];
    feed_whole(&mut conn, syscalls, &mut msgs);
    let (spans, loss) = pair(msgs, &ctx(true, true));
    let got: Vec<_> = spans
        .iter()
        .map(|s| (text(s, "db.query.text"), s.end_unix_ns))
        .collect();
    assert_eq!(got, [("GET a".to_owned(), 11), ("GET c".to_owned(), 41)]);
    assert_eq!(loss.requests_unanswered, 1);
    assert_eq!(loss.responses_unpaired, 0);
}

#[test]
fn replies_without_commands_are_counted() {
    let ctx = ctx(true, true);
    let mut pairing = RedisPairing::default();
    let mut spans = Vec::new();
    let mut out = PairingOut::new(&ctx, &mut spans);
    let reply = |first_ns, last_ns| {
        Message::Reply(Reply {
            dir: Direction::Ingress,
            kind: ReplyKind::Ok,
            truncated: false,
            first_ns,
            last_ns,
        })
    };
    pairing.push(reply(1, 2), &mut out);
    let mut conn = RedisConn::new(Limits::default());
    let mut msgs = Vec::new();
    conn.feed(Direction::Egress, &whole(&resp(&[b"PING"]), 100), &mut msgs);
    for m in msgs {
        pairing.push(m, &mut out);
    }
    // A reply that ended before the command was sent is not its reply.
    pairing.push(reply(50, 60), &mut out);
    assert!(out.spans.is_empty());
    pairing.push(reply(120, 130), &mut out);
    assert_eq!(out.spans.len(), 1);
    assert_eq!(out.loss.responses_unpaired, 2);
    // Unanswered commands are counted when the connection ends.
    let mut msgs = Vec::new();
    conn.feed(Direction::Egress, &whole(&resp(&[b"PING"]), 200), &mut msgs);
    conn.feed(Direction::Egress, &whole(&resp(&[b"PING"]), 300), &mut msgs);
    for m in msgs {
        pairing.push(m, &mut out);
    }
    pairing.finish(&mut out.loss);
    assert_eq!(out.loss.requests_unanswered, 2);
}

/// Messages published between a subscription's confirmations and a
/// PING's reply make no spans and shift nothing.
#[test]
fn pubsub_messages_are_not_replies() {
    for resp3 in [false, true] {
        let mut conn = RedisConn::new(Limits::default());
        let mut msgs = Vec::new();
        let mut t = 0;
        let mut feed = |dir, bytes: &[u8], msgs: &mut Vec<Message>| {
            conn.feed(dir, &whole(bytes, t), msgs);
            t += 10;
        };
        let (e, i) = (Direction::Egress, Direction::Ingress);
        let push = if resp3 { ">" } else { "*" };
        if resp3 {
            feed(e, &resp(&[b"HELLO", b"3"]), &mut msgs);
            feed(i, b"%1\r\n$5\r\nproto\r\n:3\r\n", &mut msgs);
        }
        let conf = |kind: &str, ch: &str, n: u32| {
            format!(
                "{push}3\r\n${}\r\n{kind}\r\n${}\r\n{ch}\r\n:{n}\r\n",
                kind.len(),
                ch.len()
            )
        };
        let message = format!("{push}3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n");
        feed(e, &resp(&[b"SUBSCRIBE", b"a", b"b", b"c"]), &mut msgs);
        feed(i, conf("subscribe", "a", 1).as_bytes(), &mut msgs);
        feed(i, message.as_bytes(), &mut msgs);
        feed(i, conf("subscribe", "b", 2).as_bytes(), &mut msgs);
        feed(i, conf("subscribe", "c", 3).as_bytes(), &mut msgs);
        feed(i, message.as_bytes(), &mut msgs);
        feed(e, &resp(&[b"PING"]), &mut msgs);
        feed(i, message.as_bytes(), &mut msgs);
        let pong: &[u8] = if resp3 {
            b"+PONG\r\n"
        } else {
            b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
        };
        feed(i, pong, &mut msgs);
        feed(e, &resp(&[b"UNSUBSCRIBE", b"a"]), &mut msgs);
        feed(i, message.as_bytes(), &mut msgs);
        feed(i, conf("unsubscribe", "a", 2).as_bytes(), &mut msgs);
        let (spans, loss) = pair(msgs, &ctx(true, true));
        let got: Vec<_> = spans
            .iter()
            .filter(|s| s.name != "HELLO")
            .map(|s| (s.name.as_str(), s.start_unix_ns, s.end_unix_ns))
            .collect();
        let o = if resp3 { 20 } else { 0 };
        assert_eq!(
            got,
            [
                ("SUBSCRIBE", o, o + 41),
                ("PING", o + 60, o + 81),
                ("UNSUBSCRIBE", o + 90, o + 111),
            ],
            "resp3={resp3}"
        );
        assert_eq!(loss, PairingLoss::default());
    }
}

#[test]
fn select_sets_the_namespace() {
    let mut conn = RedisConn::new(Limits::default());
    let mut msgs = Vec::new();
    // Pipelined: SELECT applies to what follows it.
    let batch = [
        resp(&[b"SELECT", b"5"]),
        resp(&[b"GET", b"a"]),
        resp(&[b"SELECT", b"99"]),
        resp(&[b"GET", b"b"]),
        resp(&[b"RESET"]),
        resp(&[b"GET", b"c"]),
    ]
    .concat();
    conn.feed(Direction::Egress, &whole(&batch, 0), &mut msgs);
    conn.feed(
        Direction::Ingress,
        &whole(
            b"+OK\r\n$-1\r\n-ERR DB index is out of range\r\n$-1\r\n+RESET\r\n$-1\r\n",
            10,
        ),
        &mut msgs,
    );
    let (spans, _) = pair(msgs, &ctx(true, true));
    let ns: Vec<_> = spans.iter().map(|s| text(s, "db.namespace")).collect();
    assert_eq!(ns, ["0", "5", "5", "5", "5", "0"]);
}

/// The command `args` on a connection that already showed its roles
/// (unknown commands decide nothing on their own).
fn cmd(args: &[&[u8]]) -> Command {
    let mut conn = RedisConn::new(Limits::default());
    let mut msgs = Vec::new();
    conn.feed(Direction::Egress, &whole(&resp(&[b"PING"]), 0), &mut msgs);
    conn.feed(Direction::Egress, &whole(&resp(args), 10), &mut msgs);
    match msgs.pop() {
        Some(Message::Command(c)) => c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn query_text_table() {
    let many: Vec<Vec<u8>> = (0..40).map(|i| format!("f{i}").into_bytes()).collect();
    let mut hset: Vec<&[u8]> = vec![b"HSET", b"h"];
    hset.extend(many.iter().map(Vec::as_slice));
    let long_key = [b'k'; 100];
    let table: &[(&[&[u8]], &str, &str)] = &[
        (&[b"GET", b"user:1"], "GET user:1", "GET user:1"),
        (
            &[b"set", b"k", b"v", b"EX", b"10"],
            "SET k ? ? ?",
            "SET k v EX 10",
        ),
        (&[b"MGET", b"a", b"b"], "MGET a ?", "MGET a b"),
        (
            &[b"EVAL", b"return 1", b"1", b"key", b"arg"],
            "EVAL ? ? key ?",
            "EVAL \"return 1\" 1 key arg",
        ),
        (
            &[b"EVALSHA", b"abc", b"0", b"arg"],
            "EVALSHA ? ? ?",
            "EVALSHA abc 0 arg",
        ),
        (
            &[b"ZUNION", b"2", b"z1", b"z2"],
            "ZUNION ? z1 ?",
            "ZUNION 2 z1 z2",
        ),
        (
            &[b"BLMPOP", b"0", b"1", b"l", b"LEFT"],
            "BLMPOP ? ? l ?",
            "BLMPOP 0 1 l LEFT",
        ),
        (
            &[b"BITOP", b"AND", b"dest", b"a"],
            "BITOP ? dest ?",
            "BITOP AND dest a",
        ),
        (
            &[b"OBJECT", b"ENCODING", b"k"],
            "OBJECT ENCODING k",
            "OBJECT ENCODING k",
        ),
        (
            &[b"XINFO", b"STREAM", b"s"],
            "XINFO STREAM s",
            "XINFO STREAM s",
        ),
        (
            &[b"client", b"setname", b"app"],
            "CLIENT SETNAME ?",
            "CLIENT SETNAME app",
        ),
        (&[b"CONFIG", b"GET", b"*"], "CONFIG GET ?", "CONFIG GET *"),
        (
            &[b"PUBLISH", b"ch", b"msg"],
            "PUBLISH ? ?",
            "PUBLISH ch msg",
        ),
        (&[b"MYCMD", b"a", b"b"], "MYCMD ? ?", "MYCMD a b"),
        (
            &[b"SET", b"sp ace", b"v\x00\xff\""],
            "SET \"sp ace\" ?",
            "SET \"sp ace\" \"v\\x00\\xff\\\"\"",
        ),
        (
            &[b"GET", &long_key],
            "GET kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...",
            "GET kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...",
        ),
        (&[b"SET", b"", b""], "SET \"\" ?", "SET \"\" \"\""),
        (
            &hset,
            "HSET h ? ? ? ? ? ? ? ? ? ? ? ? ? ? ? ...",
            "HSET h f0 f1 f2 f3 ...",
        ),
    ];
    for (args, sanitized, raw) in table {
        let c = cmd(args);
        let op = operation_name(&c);
        assert_eq!(query_text(&c, &op, true), *sanitized, "{c:?}");
        assert_eq!(query_text(&c, &op, false), *raw, "{c:?}");
    }
}

#[test]
fn operation_names() {
    for (args, want) in [
        (&[&b"get"[..], b"k"][..], "GET"),
        (&[&b"CLIENT"[..], b"setname", b"x"], "CLIENT SETNAME"),
        (&[&b"CONFIG"[..], b"GET", b"*"], "CONFIG GET"),
        (&[&b"ACL"[..], b"WHOAMI"], "ACL WHOAMI"),
        (&[&b"CLUSTER"[..], b"SLOTS"], "CLUSTER SLOTS"),
        (
            &[&b"XGROUP"[..], b"CREATE", b"s", b"g", b"$"],
            "XGROUP CREATE",
        ),
        (&[&b"CLIENT"[..]], "CLIENT"),
        (&[&b"CLIENT"[..], b"not a word"], "CLIENT"),
        (&[&b"JSON.GET"[..], b"doc"], "JSON.GET"),
    ] {
        assert_eq!(operation_name(&cmd(args)), want);
    }
}

#[test]
fn chunk_helper_is_whole() {
    let c: Chunk<'_> = whole(b"x", 1);
    assert_eq!(c.gap_len(), 0);
}
