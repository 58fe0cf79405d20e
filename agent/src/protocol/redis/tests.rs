use super::fixtures::*;
use super::*;
use crate::protocol::test_chunks::{damaged, feed_garbage, feed_randomly};
use crate::protocol::test_rng::Rng;

fn d(dir: Direction) -> &'static str {
    match dir {
        Direction::Egress => "E",
        Direction::Ingress => "I",
    }
}

fn elem(e: &Elem) -> String {
    match e {
        Elem::Str { bytes, len } => {
            let mut s = lossy(bytes);
            if (bytes.len() as u64) < *len {
                s += &format!("..({len})");
            }
            s
        }
        Elem::Int(v) => format!(":{v}"),
        Elem::Null => "nil".to_owned(),
        Elem::Secret => "<secret>".to_owned(),
        Elem::Other => "_".to_owned(),
    }
}

/// A compact, comparable description of a message (times left out).
fn summary(m: &Message) -> String {
    match m {
        Message::Command(c) => {
            let mut s = format!("{} {}", d(c.dir), c.name);
            for a in &c.args {
                s += " ";
                s += &match a {
                    Arg::Kept { bytes, len } => elem(&Elem::Str {
                        bytes: bytes.clone(),
                        len: *len,
                    }),
                    Arg::Secret => "<secret>".to_owned(),
                };
            }
            if c.arg_count > c.args.len() as u64 {
                s += &format!(" +{}", c.arg_count - c.args.len() as u64);
            }
            if c.inline {
                s += " inline";
            }
            if c.truncated {
                s += " trunc";
            }
            s
        }
        Message::Reply(r) => {
            let k = match &r.kind {
                ReplyKind::Ok => "ok".to_owned(),
                ReplyKind::Simple(t) => format!("+{t}"),
                ReplyKind::Error { prefix, message } => format!("-{prefix}|{message}"),
                ReplyKind::Integer(v) => format!(":{v}"),
                ReplyKind::Double => "double".to_owned(),
                ReplyKind::Boolean(b) => format!("bool {b}"),
                ReplyKind::BigNumber => "big".to_owned(),
                ReplyKind::Bulk { len } => format!("bulk {len}"),
                ReplyKind::Null => "null".to_owned(),
                ReplyKind::Array { len, head } => format!(
                    "array {len} [{}]",
                    head.iter().map(elem).collect::<Vec<_>>().join(",")
                ),
                ReplyKind::Map { len } => format!("map {len}"),
                ReplyKind::Set { len } => format!("set {len}"),
            };
            let mut s = format!("{} {k}", d(r.dir));
            if r.truncated {
                s += " trunc";
            }
            s
        }
        Message::Push(p) => format!(
            "{} push {} {} [{}]",
            d(p.dir),
            p.kind,
            p.len,
            p.head.iter().map(elem).collect::<Vec<_>>().join(",")
        ),
        Message::Desync(x) => format!("{} desync {:?}", d(x.dir), x.role),
    }
}

fn summaries(msgs: &[Message]) -> Vec<String> {
    msgs.iter().map(summary).collect()
}

fn conn() -> RedisConn {
    RedisConn::new(Limits::default())
}

/// The expected messages of each fixture, seen from the client.
const EXPECTED: &[(&str, &[&str])] = &[
    (
        "resp2_basic",
        &[
            "E SET user:1 alice",
            "I ok",
            "E GET user:1",
            "I bulk 5",
            "E GET missing",
            "I null",
            "E INCR counter",
            "I :1",
            "E RPUSH list a b c",
            "I :3",
            "E LRANGE list 0 -1",
            "I array 3 [a,b,c]",
            "E HSET h f1 v1 f2 v2",
            "I :2",
            "E HGETALL h",
            "I array 4 [f1,v1,f2]",
            "E GET h",
            "I -WRONGTYPE|Operation against a key holding the wrong kind of value",
            "E NOSUCHCMD x",
            "I -ERR|unknown command 'NOSUCHCMD', with args beginning with: 'x' ",
            "E CLIENT SETNAME app",
            "I ok",
            "E CONFIG GET maxmemory",
            "I array 2 [maxmemory,0]",
            "E DEL user:1 list h counter",
            "I :4",
            "E PING",
            "I +PONG",
        ],
    ),
    (
        "resp3_types",
        &[
            "E HELLO 3",
            "I map 7",
            "E HSET h a 1",
            "I :1",
            "E HGETALL h",
            "I map 1",
            "E ZADD z 1.5 m",
            "I :1",
            "E ZSCORE z m",
            "I double",
            "E GET missing",
            "I null",
            "E DEBUG PROTOCOL attrib",
            "I bulk 39",
            "E DEBUG PROTOCOL bignum",
            "I big",
            "E DEBUG PROTOCOL verbatim",
            "I bulk 29",
            "E DEBUG PROTOCOL true",
            "I bool true",
            "E DEBUG PROTOCOL false",
            "I bool false",
            "E DEBUG PROTOCOL set",
            "I set 3",
            "E DEBUG PROTOCOL null",
            "I null",
            "E SMEMBERS nothing",
            "I set 0",
            "E DEL h z",
            "I :2",
        ],
    ),
    (
        "multi_select",
        &[
            "E MULTI",
            "I ok",
            "E SET a 1",
            "I +QUEUED",
            "E INCR a",
            "I +QUEUED",
            "E GET a",
            "I +QUEUED",
            "E EXEC",
            "I array 3 [OK,:2,2]",
            "E SELECT 2",
            "I ok",
            "E SET b 2",
            "I ok",
            "E MULTI",
            "I ok",
            "E SELECT 3",
            "I +QUEUED",
            "E EXEC",
            "I array 1 [OK]",
            "E GET b",
            "I null",
            "E DISCARD",
            "I -ERR|DISCARD without MULTI",
            "E SELECT 0",
            "I ok",
            "E DEL a",
            "I :1",
        ],
    ),
    (
        "pipeline16",
        &[
            "E SET k0 v0",
            "E SET k1 v1",
            "E SET k2 v2",
            "E SET k3 v3",
            "E SET k4 v4",
            "E SET k5 v5",
            "E SET k6 v6",
            "E SET k7 v7",
            "E GET k0",
            "E GET k1",
            "E GET k2",
            "E GET k3",
            "E GET k4",
            "E GET k5",
            "E GET k6",
            "E GET k7",
            "I ok",
            "I ok",
            "I ok",
            "I ok",
            "I ok",
            "I ok",
            "I ok",
            "I ok",
            "I bulk 2",
            "I bulk 2",
            "I bulk 2",
            "I bulk 2",
            "I bulk 2",
            "I bulk 2",
            "I bulk 2",
            "I bulk 2",
        ],
    ),
    (
        "client_reply",
        &[
            "E CLIENT REPLY SKIP",
            "E SET x 1",
            "E GET x",
            "E CLIENT REPLY OFF",
            "E SET y 2",
            "E GET y",
            "E CLIENT REPLY ON",
            "E GET y",
            "I bulk 1",
            "I ok",
            "I bulk 1",
        ],
    ),
    (
        "pubsub_resp2",
        &[
            "E SUBSCRIBE news weather",
            "I push subscribe 3 [subscribe,news,:1]",
            "I push subscribe 3 [subscribe,weather,:2]",
            "E PSUBSCRIBE w*",
            "I push psubscribe 3 [psubscribe,w*,:3]",
            "I push message 3 [message,news,hello]",
            "I push message 3 [message,weather,sunny]",
            "I push pmessage 4 [pmessage,w*,weather]",
            "E PING",
            "I array 2 [pong,]",
            "E UNSUBSCRIBE",
            "I push unsubscribe 3 [unsubscribe,news,:2]",
            "I push unsubscribe 3 [unsubscribe,weather,:1]",
            "E PUNSUBSCRIBE",
            "I push punsubscribe 3 [punsubscribe,w*,:0]",
            "E GET news",
            "I null",
        ],
    ),
    (
        "pubsub_resp3",
        &[
            "E HELLO 3",
            "I map 7",
            "E SUBSCRIBE news",
            "I push subscribe 3 [subscribe,news,:1]",
            "I push message 3 [message,news,hello]",
            "E GET k",
            "I null",
            "E UNSUBSCRIBE news",
            "I push unsubscribe 3 [unsubscribe,news,:0]",
        ],
    ),
    (
        "monitor",
        &[
            "E MONITOR",
            "I ok",
            "I push monitor 1 [1795714244.474418 [0 unix:/tmp/sonde-redis-eyy5wolq/plain.sock] ..(77)]",
            "I push monitor 1 [1795714244.524462 [0 unix:/tmp/sonde-redis-eyy5wolq/plain.sock] ..(73)]",
            "E RESET",
            "I +RESET",
            "E PING",
            "I +PONG",
        ],
    ),
    ("auth", &["E AUTH <secret>", "I ok", "E GET k", "I null"]),
    (
        "auth_user_resp3",
        &[
            "E AUTH <secret> <secret>",
            "I ok",
            "E HELLO 3",
            "I map 7",
            "E GET k",
            "I null",
        ],
    ),
    (
        "hello_auth",
        &[
            "E GET k",
            "I -NOAUTH|Authentication required.",
            "E HELLO 3 <secret> <secret> <secret>",
            "I -WRONGPASS|invalid username-password pair or user is disabled.",
            "E HELLO 3 <secret> <secret> <secret>",
            "I map 7",
            "E GET k",
            "I null",
        ],
    ),
];

fn expected(name: &str, client: bool) -> Vec<String> {
    let (_, lines) = EXPECTED
        .iter()
        .find(|(n, _)| *n == name)
        .copied()
        .unwrap_or(("", &[]));
    lines
        .iter()
        .map(|l| {
            if client {
                (*l).to_owned()
            } else {
                let (dir, rest) = l.split_at(1);
                let dir = if dir == "E" { "I" } else { "E" };
                format!("{dir}{rest}")
            }
        })
        .collect()
}

#[test]
fn every_fixture_has_expectations() {
    for (name, _) in LOGS {
        assert!(EXPECTED.iter().any(|(n, _)| n == name), "{name}");
    }
}

#[test]
fn fixtures_parse_from_both_ends() {
    for (name, _) in LOGS {
        for client in [true, false] {
            let mut conn = conn();
            let out = replay(&mut conn, &records(name, client));
            assert_eq!(
                summaries(&out),
                expected(name, client),
                "{name} client={client}"
            );
            assert_eq!(conn.take_resync(), (0, 0), "{name}");
            let commands = if client {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            assert_eq!(conn.command_direction(), Some(commands));
        }
    }
}

#[test]
fn fixtures_split_at_every_byte() {
    for (name, _) in LOGS {
        let records = records(name, true);
        let want = expected(name, true);
        for (r, (dir, bytes)) in records.iter().enumerate() {
            for cut in 1..bytes.len() {
                let mut conn = conn();
                let mut out = Vec::new();
                for (i, (d, b)) in records.iter().enumerate() {
                    let t = 10 * i as u64;
                    if i == r {
                        conn.feed(*dir, &whole(&b[..cut], t), &mut out);
                        conn.feed(*dir, &whole(&b[cut..], t + 5), &mut out);
                    } else {
                        conn.feed(*d, &whole(b, t), &mut out);
                    }
                }
                assert_eq!(summaries(&out), want, "{name} record {r} cut at {cut}");
                assert_eq!(conn.take_resync(), (0, 0));
            }
        }
        // And one byte per syscall.
        let mut conn = conn();
        let mut out = Vec::new();
        for (i, (d, b)) in records.iter().enumerate() {
            for (k, byte) in b.iter().enumerate() {
                let t = 1000 * i as u64 + k as u64;
                conn.feed(*d, &whole(std::slice::from_ref(byte), t), &mut out);
            }
        }
        assert_eq!(summaries(&out), want, "{name} byte by byte");
    }
}

#[test]
fn times_follow_the_syscalls() {
    let mut conn = conn();
    let mut out = Vec::new();
    let cmd = resp(&[b"GET", b"k"]);
    conn.feed(Direction::Egress, &whole(&cmd[..5], 100), &mut out);
    conn.feed(Direction::Egress, &whole(&cmd[5..], 200), &mut out);
    conn.feed(Direction::Ingress, &whole(b"$3\r\nab", 300), &mut out);
    conn.feed(Direction::Ingress, &whole(b"c\r\n", 400), &mut out);
    // Egress is timed by its writes' starts, ingress by its reads'
    // returns.
    let times: Vec<_> = out.iter().map(|m| (m.first_ns(), m.last_ns())).collect();
    assert_eq!(times, [(100, 200), (301, 401)]);
}

/// Single valid frames: spec examples and real replies.
const REPLY_FRAMES: &[(&[u8], &str)] = &[
    (b"+OK\r\n", "ok"),
    (b"+PONG\r\n", "+PONG"),
    (b"-ERR unknown command 'foobar'\r\n", "-ERR|unknown command 'foobar'"),
    (
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        "-WRONGTYPE|Operation against a key holding the wrong kind of value",
    ),
    (b"-MOVED 3999 127.0.0.1:6381\r\n", "-MOVED|3999 127.0.0.1:6381"),
    (b"-\r\n", "-ERR|"),
    (b":0\r\n", ":0"),
    (b":-9223372036854775808\r\n", ":-9223372036854775808"),
    (b":+42\r\n", ":42"),
    (b"$5\r\nhello\r\n", "bulk 5"),
    (b"$0\r\n\r\n", "bulk 0"),
    (b"$-1\r\n", "null"),
    (b"*-1\r\n", "null"),
    (b"*0\r\n", "array 0 []"),
    (
        b"*2\r\n$5\r\nhello\r\n$5\r\nworld\r\n",
        "array 2 [hello,world]",
    ),
    (
        b"*5\r\n:1\r\n:2\r\n:3\r\n:4\r\n$5\r\nhello\r\n",
        "array 5 [:1,:2,:3]",
    ),
    (
        b"*2\r\n*3\r\n:1\r\n:2\r\n:3\r\n*2\r\n+Hello\r\n-World\r\n",
        "array 2 [_,_]",
    ),
    (
        b"*3\r\n$5\r\nhello\r\n$-1\r\n$5\r\nworld\r\n",
        "array 3 [hello,nil,world]",
    ),
    (b"_\r\n", "null"),
    (b",1.23\r\n", "double"),
    (b",-inf\r\n", "double"),
    (b",1.5e-10\r\n", "double"),
    (b"#t\r\n", "bool true"),
    (b"#f\r\n", "bool false"),
    (b"!21\r\nSYNTAX invalid syntax\r\n", "-SYNTAX|invalid syntax"),
    (b"=15\r\ntxt:Some string\r\n", "bulk 15"),
    (b"(3492890328409238509324850943850943825024385\r\n", "big"),
    (b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n", "map 2"),
    (b"~5\r\n+orange\r\n+apple\r\n#t\r\n:100\r\n:999\r\n", "set 5"),
    (
        b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n",
        "array 2 [:2039123,:9543892]",
    ),
    (
        b"*3\r\n:1\r\n|1\r\n+ttl\r\n:3600\r\n:2\r\n:3\r\n",
        "array 3 [:1,:2,:3]",
    ),
    (
        b"$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n",
        "bulk 10",
    ),
    (b"*?\r\n:1\r\n:2\r\n:3\r\n.\r\n", "array 3 [:1,:2,:3]"),
    (b"%?\r\n+a\r\n:1\r\n+b\r\n:2\r\n.\r\n", "map 2"),
    (
        b"*2\r\n$?\r\n;2\r\nab\r\n;0\r\n*?\r\n.\r\n",
        "array 2 [_,_]",
    ),
];

const COMMAND_FRAMES: &[(&[u8], &str)] = &[
    (b"*1\r\n$4\r\nPING\r\n", "PING"),
    (b"*2\r\n$3\r\nget\r\n$3\r\nkey\r\n", "GET key"),
    (
        b"*3\r\n$3\r\nSET\r\n$5\r\nmykey\r\n$7\r\nmyvalue\r\n",
        "SET mykey myvalue",
    ),
    (
        b"*8\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n$1\r\nc\r\n$1\r\n3\r\n$0\r\n\r\n",
        "MSET a 1 b 2 c +2",
    ),
    (
        b"*3\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$11\r\nrequirepass\r\n",
        "CONFIG SET requirepass",
    ),
    (
        b"*4\r\n$6\r\nCONFIG\r\n$3\r\nset\r\n$10\r\nmasterauth\r\n$3\r\npw1\r\n",
        "CONFIG set masterauth <secret>",
    ),
    (
        b"*4\r\n$3\r\nACL\r\n$7\r\nSETUSER\r\n$5\r\nalice\r\n$7\r\n>p4ssw0\r\n",
        "ACL SETUSER alice <secret>",
    ),
    (
        b"*9\r\n$7\r\nMIGRATE\r\n$4\r\nhost\r\n$4\r\n6379\r\n$1\r\nk\r\n$1\r\n0\r\n$4\r\n5000\r\n$4\r\nAUTH\r\n$2\r\npw\r\n$4\r\nCOPY\r\n",
        "MIGRATE host 6379 k 0 5000 +3",
    ),
    (
        b"*2\r\n$8\r\nJSON.GET\r\n$3\r\ndoc\r\n",
        "JSON.GET doc",
    ),
];

/// A connection that knows Egress carries commands.
fn client_conn() -> RedisConn {
    let mut c = conn();
    let mut out = Vec::new();
    c.feed(
        Direction::Egress,
        &whole(b"*1\r\n$4\r\nPING\r\n", 0),
        &mut out,
    );
    c
}

#[test]
fn reply_frames_table() {
    for (frame, want) in REPLY_FRAMES {
        let mut c = client_conn();
        let mut out = Vec::new();
        c.feed(Direction::Ingress, &whole(frame, 10), &mut out);
        assert_eq!(
            summaries(&out),
            [format!("I {want}")],
            "{:?}",
            String::from_utf8_lossy(frame)
        );
        assert_eq!(c.take_resync(), (0, 0));
    }
}

#[test]
fn command_frames_table() {
    for (frame, want) in COMMAND_FRAMES {
        let mut c = conn();
        let mut out = Vec::new();
        c.feed(Direction::Egress, &whole(frame, 0), &mut out);
        assert_eq!(
            summaries(&out),
            [format!("E {want}")],
            "{:?}",
            String::from_utf8_lossy(frame)
        );
    }
}

#[test]
fn strict_prefixes_are_incomplete() {
    let frames = REPLY_FRAMES
        .iter()
        .map(|(f, _)| (Direction::Ingress, *f))
        .chain(COMMAND_FRAMES.iter().map(|(f, _)| (Direction::Egress, *f)));
    for (dir, frame) in frames {
        for cut in 0..frame.len() {
            let mut c = client_conn();
            let mut out = Vec::new();
            c.feed(dir, &whole(&frame[..cut], 10), &mut out);
            assert!(
                out.is_empty(),
                "{:?}: {out:?}",
                String::from_utf8_lossy(&frame[..cut])
            );
            assert_eq!(c.take_resync(), (0, 0));
            // The rest completes it.
            c.feed(dir, &whole(&frame[cut..], 20), &mut out);
            assert_eq!(
                out.len(),
                1,
                "{:?} cut at {cut}",
                String::from_utf8_lossy(frame)
            );
        }
    }
}

#[test]
fn detect_table() {
    #[rustfmt::skip]
    let table: &[(&[u8], Detect)] = &[
        (b"", Detect::NeedMore),
        (b"*", Detect::NeedMore),
        (b"*1", Detect::NeedMore),
        (b"*1\r", Detect::NeedMore),
        (b"*1\r\n", Detect::NeedMore),
        (b"*1\r\n$", Detect::NeedMore),
        (b"*1\r\n$4", Detect::NeedMore),
        (b"*1\r\n$4\r\n", Detect::NeedMore),
        (b"*1\r\n$4\r\nP", Detect::Request),
        (b"*1\r\n$4\r\nPING\r\n", Detect::Request),
        (b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$1\r\nv\r\n", Detect::Request),
        (b"*123456789\r\n$12\r\nabc", Detect::Request),
        (b"*1234567890\r\n$4\r\nPING\r\n", Detect::No),
        (b"*0\r\n", Detect::No),
        (b"*01\r\n$4\r\nPING\r\n", Detect::No),
        (b"*1\r\n$0\r\n\r\n", Detect::No),
        (b"*1\r\n$4\r\n1234\r\n", Detect::No),
        (b"*1\n$4\nPING\n", Detect::No),
        (b"*1\r\n:4\r\n", Detect::No),
        (b"*-1\r\n", Detect::No),
        (b"+OK\r\n", Detect::No),
        (b"$5\r\nhello\r\n", Detect::No),
        (b"PING\r\n", Detect::No),
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", Detect::No),
        (b"HTTP/1.1 200 OK\r\n", Detect::No),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Detect::No),
        (TLS_CLIENT_HELLO, Detect::No),
        (MYSQL_GREETING, Detect::No),
        (b"\x00\x00\x00\x0a", Detect::No),
    ];
    for (input, want) in table {
        assert_eq!(detect(input), *want, "{:?}", String::from_utf8_lossy(input));
    }
}

const TLS_CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x5b\x8c\x0e\x2a\x10\x7f\x00\x01\xc0\x2b\xc0\x2f\x00\x9e\xcc\xa9\xcc\xa8\x00\x00\x00\x0e\x00\x0c\x00\x00\x09localhost\x00\x0b\x00\x02\x01\x00";
const MYSQL_GREETING: &[u8] =
    b"J\x00\x00\x00\x0a5.7.44\x00\x0b\x00\x00\x00\x2a\x3b\x4c\x5d\x6e\x7f\x10\x21\x00\xff\xf7\x08\x02\x00";

#[test]
fn garbage_never_yields_messages() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut inputs: Vec<Vec<u8>> = vec![
        TLS_CLIENT_HELLO.to_vec(),
        MYSQL_GREETING.to_vec(),
        b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    ];
    for len in [1, 2, 7, 64, 1024, 4096, 20000] {
        inputs.push(rng.bytes(len));
    }
    feed_garbage(&inputs, &mut rng, conn, |_, out| {
        assert!(
            out.iter().all(|m| matches!(m, Message::Desync(_))),
            "{out:?}"
        );
        assert_eq!(out.len(), 1);
    });
}

/// Damaged streams of real conversations, cut and gapped at random: the
/// parser must not panic, and what it emits must be well formed.
#[test]
fn damaged_streams_do_not_panic() {
    let mut rng = Rng(12345);
    for round in 0..600 {
        let (name, _) = LOGS[round % LOGS.len()];
        let mut c = RedisConn::new(Limits {
            max_buffered_bytes: 1 + rng.below(64),
        });
        let mut out = Vec::new();
        for (dir, bytes) in records(name, round % 2 == 0) {
            let stream = damaged(&bytes, &mut rng);
            let t = rng.next() % 1000;
            feed_randomly(&mut c, dir, &stream, t, &mut rng, &mut out);
        }
        c.close(u64::MAX, &mut out);
        for m in &out {
            assert!(m.first_ns() <= m.last_ns(), "{m:?}");
            match m {
                Message::Command(cmd) => {
                    assert!(cmd.name.len() <= 3 * MAX_ARG_BYTES);
                    assert!(cmd.args.len() <= MAX_KEPT_ARGS);
                    assert!(cmd.args.len() as u64 <= cmd.arg_count);
                }
                Message::Reply(r) => {
                    if let ReplyKind::Array { head, .. } = &r.kind {
                        assert!(head.len() <= MAX_HEAD_ELEMS);
                    }
                }
                Message::Push(p) => assert!(p.head.len() <= MAX_HEAD_ELEMS),
                Message::Desync(_) => {}
            }
        }
    }
}

#[test]
fn big_value_in_a_gap_is_skipped_by_length() {
    let value = vec![b'v'; 100 * 1024];
    let set = resp(&[b"SET", b"big", &value]);
    let mut c = conn();
    let mut out = Vec::new();
    // Only the first 1024 bytes of the 100 KB write were captured.
    c.feed(
        Direction::Egress,
        &gapped(&set[..1024], set.len(), 0),
        &mut out,
    );
    c.feed(Direction::Ingress, &whole(b"+OK\r\n", 10), &mut out);
    c.feed(
        Direction::Egress,
        &whole(&resp(&[b"GET", b"big"]), 20),
        &mut out,
    );
    // The reply is read in three syscalls, the first two with gaps.
    let reply = [format!("${}\r\n", value.len()).as_bytes(), &value, b"\r\n"].concat();
    c.feed(
        Direction::Ingress,
        &gapped(&reply[..1024], 60000, 30),
        &mut out,
    );
    c.feed(
        Direction::Ingress,
        &gapped(&reply[60000..61024], 40000, 40),
        &mut out,
    );
    c.feed(Direction::Ingress, &whole(&reply[100000..], 50), &mut out);
    c.feed(
        Direction::Egress,
        &whole(&resp(&[b"DEL", b"big"]), 60),
        &mut out,
    );
    c.feed(Direction::Ingress, &whole(b":1\r\n", 70), &mut out);
    let long = format!(
        "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv..({})",
        value.len()
    );
    assert_eq!(
        summaries(&out),
        [
            format!("E SET big {long}"),
            "I ok".to_owned(),
            "E GET big".to_owned(),
            format!("I bulk {}", value.len()),
            "E DEL big".to_owned(),
            "I :1".to_owned(),
        ]
    );
    assert_eq!(out[3].last_ns(), 51);
    assert_eq!(c.take_resync(), (0, 0));
}

#[test]
fn header_in_a_gap_reports_what_is_known() {
    // MSET whose second pair falls past the capture limit: the command
    // is reported truncated, then sync is lost until the next syscall.
    let mset = resp(&[b"MSET", b"a", &[b'x'; 2000], b"b", b"2"]);
    let mut c = conn();
    let mut out = Vec::new();
    c.feed(
        Direction::Egress,
        &gapped(&mset[..1024], mset.len(), 0),
        &mut out,
    );
    c.feed(Direction::Ingress, &whole(b"+OK\r\n", 10), &mut out);
    c.feed(
        Direction::Egress,
        &whole(&resp(&[b"GET", b"a"]), 20),
        &mut out,
    );
    let s = summaries(&out);
    assert_eq!(s.len(), 4, "{s:?}");
    assert!(
        s[0].starts_with("E MSET a xxxx") && s[0].ends_with("..(2000) +2 trunc"),
        "{s:?}"
    );
    assert_eq!(&s[1..], ["E desync Some(Commands)", "I ok", "E GET a"]);
    assert_eq!(
        c.take_resync(),
        (("$1\r\nb\r\n$1\r\n2\r\n".len()) as u64, 1)
    );

    // A reply line cut by the capture limit.
    let mut c = client_conn();
    let mut out = Vec::new();
    let err = [b"-ERR ".as_slice(), &[b'e'; 3000], b"\r\n"].concat();
    c.feed(
        Direction::Ingress,
        &gapped(&err[..1024], err.len(), 10),
        &mut out,
    );
    c.feed(
        Direction::Egress,
        &whole(b"*1\r\n$4\r\nPING\r\n", 20),
        &mut out,
    );
    c.feed(Direction::Ingress, &whole(b"+PONG\r\n", 30), &mut out);
    let s = summaries(&out);
    assert!(
        s[0].starts_with("I -ERR|eeee") && s[0].ends_with(" trunc"),
        "{s:?}"
    );
    assert_eq!(&s[1..], ["I desync Some(Replies)", "E PING", "I +PONG"]);

    // A frame that starts in a gap is not guessed.
    let mut c = client_conn();
    let mut out = Vec::new();
    c.feed(Direction::Ingress, &gapped(b"", 500, 10), &mut out);
    c.feed(Direction::Ingress, &gapped(b":1\r\n:2", 40, 20), &mut out);
    c.feed(Direction::Ingress, &whole(b":3\r\n", 30), &mut out);
    assert_eq!(
        summaries(&out),
        [
            "I desync Some(Replies)",
            "I :1",
            "I desync Some(Replies)",
            "I :3"
        ]
    );
    assert_eq!(c.take_resync(), (500 + 40 - 6, 2));
}

#[test]
fn resync_inside_a_chunk() {
    let mut c = client_conn();
    let mut out = Vec::new();
    let data = [
        b"*2\r\n$3\r\nGET\r\n#oops\r\n".as_slice(),
        b"*1\r\n$4\r\nPING\r\n",
    ]
    .concat();
    c.feed(Direction::Egress, &whole(&data, 10), &mut out);
    assert_eq!(summaries(&out), ["E desync Some(Commands)", "E PING"]);
    assert_eq!(c.take_resync(), (7, 1));
}

#[test]
fn bounded_buffering() {
    // A header longer than any valid one loses sync.
    let mut c = client_conn();
    let mut out = Vec::new();
    let long = [b"$".as_slice(), &[b'1'; 40]].concat();
    c.feed(Direction::Ingress, &whole(&long, 10), &mut out);
    assert_eq!(summaries(&out), ["I desync Some(Replies)"]);
    // A small buffer limit cuts header lines split over syscalls.
    let mut c = RedisConn::new(Limits {
        max_buffered_bytes: 4,
    });
    let mut out = Vec::new();
    c.feed(
        Direction::Egress,
        &whole(b"*1\r\n$4\r\nPING\r\n", 0),
        &mut out,
    );
    c.feed(Direction::Ingress, &whole(b"$123", 10), &mut out);
    c.feed(Direction::Ingress, &whole(b"45\r\n", 20), &mut out);
    assert_eq!(summaries(&out), ["E PING", "I desync Some(Replies)"]);
    // Long simple strings are kept in part, not buffered whole.
    let mut c = client_conn();
    let mut out = Vec::new();
    let line = [b"+".as_slice(), &[b's'; 5000], b"\r\n"].concat();
    for part in line.chunks(700) {
        c.feed(Direction::Ingress, &whole(part, 10), &mut out);
    }
    match out.as_slice() {
        [
            Message::Reply(Reply {
                kind: ReplyKind::Simple(s),
                truncated: false,
                ..
            }),
        ] => assert_eq!(s.len(), MAX_TEXT_BYTES),
        other => panic!("{other:?}"),
    }
    // Deep nesting is refused.
    let mut c = client_conn();
    let mut out = Vec::new();
    c.feed(
        Direction::Ingress,
        &whole(&b"*1\r\n".repeat(40), 10),
        &mut out,
    );
    assert_eq!(summaries(&out), ["I desync Some(Replies)"]);
    // Counts and lengths past belief are refused...
    for header in [&b"*4294967297\r\n"[..], b"$1099511627777\r\n"] {
        let mut c = client_conn();
        let mut out = Vec::new();
        c.feed(Direction::Ingress, &whole(header, 10), &mut out);
        assert_eq!(summaries(&out), ["I desync Some(Replies)"]);
    }
    // ... and the largest believed are only numbers: nothing is sized by them.
    let mut c = client_conn();
    let mut out = Vec::new();
    c.feed(
        Direction::Ingress,
        &whole(b"*4294967296\r\n:1\r\n", 10),
        &mut out,
    );
    c.feed(
        Direction::Ingress,
        &gapped(b"$1099511627776\r\n", 1 << 41, 20),
        &mut out,
    );
    assert_eq!(
        summaries(&out),
        [
            "I array 4294967296 [:1,..(1099511627776)] trunc",
            "I desync Some(Replies)"
        ]
    );
}

#[test]
fn secrets_are_never_kept() {
    let frames: &[&[u8]] = &[
        b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n",
        b"*3\r\n$4\r\nauth\r\n$7\r\ndefault\r\n$6\r\ns3cret\r\n",
        b"*7\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$6\r\ns3cret\r\n$7\r\nSETNAME\r\n$3\r\napp\r\n",
        b"*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$11\r\nrequirepass\r\n$6\r\ns3cret\r\n",
        b"*4\r\n$3\r\nACL\r\n$7\r\nSETUSER\r\n$1\r\nu\r\n$7\r\n>s3cret\r\n",
        b"*8\r\n$7\r\nMIGRATE\r\n$1\r\nh\r\n$1\r\n1\r\n$1\r\nk\r\n$1\r\n0\r\n$5\r\nAUTH2\r\n$1\r\nu\r\n$6\r\ns3cret\r\n",
    ];
    for frame in frames {
        let mut c = conn();
        let mut out = Vec::new();
        c.feed(Direction::Egress, &whole(frame, 0), &mut out);
        assert_eq!(out.len(), 1);
        assert!(!format!("{out:?}").contains("s3cret"), "{out:?}");
    }
    // Inline too.
    let mut c = client_conn();
    let mut out = Vec::new();
    c.feed(Direction::Egress, &whole(b"AUTH s3cret\r\n", 10), &mut out);
    assert_eq!(summaries(&out), ["E AUTH <secret> inline"]);
}

#[test]
fn inline_commands() {
    let mut c = client_conn();
    let mut out = Vec::new();
    c.feed(Direction::Egress, &whole(b"PING\r\n", 10), &mut out);
    c.feed(Direction::Egress, &whole(b"set  k\t v\n\r\n", 20), &mut out);
    c.feed(Direction::Egress, &whole(b"GET k", 30), &mut out);
    c.feed(Direction::Egress, &whole(b"ey\r\n", 40), &mut out);
    assert_eq!(
        summaries(&out),
        ["E PING inline", "E SET k v inline", "E GET key inline"]
    );
    assert_eq!(c.take_resync(), (0, 0));
    // Not before a RESP command showed which side sends commands.
    let mut c = conn();
    let mut out = Vec::new();
    c.feed(Direction::Egress, &whole(b"PING\r\n", 10), &mut out);
    assert_eq!(summaries(&out), ["E desync None"]);
}

#[test]
fn roles_from_content() {
    // A subscriber picked up in the middle: messages are pushes, and the
    // direction they come from carries replies.
    let mut c = conn();
    let mut out = Vec::new();
    let msg = b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n";
    c.feed(Direction::Ingress, &whole(msg, 10), &mut out);
    c.feed(
        Direction::Egress,
        &whole(b"*1\r\n$4\r\nPING\r\n", 20),
        &mut out,
    );
    c.feed(Direction::Ingress, &whole(msg, 30), &mut out);
    c.feed(
        Direction::Ingress,
        &whole(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n", 40),
        &mut out,
    );
    assert_eq!(
        summaries(&out),
        [
            "I push message 3 [message,news,hello]",
            "E PING",
            "I push message 3 [message,news,hello]",
            "I array 2 [pong,]",
        ]
    );
    // An array of strings that names no command decides nothing.
    let mut c = conn();
    let mut out = Vec::new();
    c.feed(
        Direction::Ingress,
        &whole(b"*2\r\n$3\r\nfoo\r\n$3\r\nbar\r\n", 10),
        &mut out,
    );
    assert_eq!(c.command_direction(), None);
    c.feed(
        Direction::Egress,
        &whole(b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n", 20),
        &mut out,
    );
    c.feed(Direction::Ingress, &whole(b"$3\r\nbar\r\n", 30), &mut out);
    assert_eq!(summaries(&out), ["E GET foo", "I bulk 3"]);
    // Replies are not believed on the command side, nor commands on the
    // reply side.
    let mut c = client_conn();
    let mut out = Vec::new();
    c.feed(Direction::Egress, &whole(b"+OK\r\n", 10), &mut out);
    assert_eq!(summaries(&out), ["E desync Some(Commands)"]);
}

#[test]
fn close_drops_partial_frames() {
    let mut c = client_conn();
    let mut out = Vec::new();
    c.feed(
        Direction::Egress,
        &whole(b"*2\r\n$3\r\nGET\r\n$1\r\n", 10),
        &mut out,
    );
    c.feed(Direction::Ingress, &whole(b"*2\r\n:1\r\n", 20), &mut out);
    c.close(30, &mut out);
    assert!(out.is_empty());
    assert_eq!(c.take_resync(), (0, 0));
}
