use super::*;
use crate::protocol::test_chunks::{gapped, whole};
use crate::protocol::test_reads::txt_records;
use crate::protocol::test_rng::Rng;

const CLI_SESSION: &str = include_str!("fixtures/cli_session.txt");
const CLI_INFILE: &str = include_str!("fixtures/cli_infile.txt");
const BINARY_EOF: &str = include_str!("fixtures/binary_eof.txt");
const BINARY_DEPRECATE_EOF: &str = include_str!("fixtures/binary_deprecate_eof.txt");
const LARGE_RESULT: &str = include_str!("fixtures/large_result.txt");
const AUTH_SWITCH: &str = include_str!("fixtures/auth_switch.txt");
const AUTH_FAILED: &str = include_str!("fixtures/auth_failed.txt");
const SSL_REQUEST: &str = include_str!("fixtures/ssl_request.txt");
const COMPRESSED: &str = include_str!("fixtures/compressed.txt");

const ALL_FIXTURES: &[(&str, &str)] = &[
    ("cli_session", CLI_SESSION),
    ("cli_infile", CLI_INFILE),
    ("binary_eof", BINARY_EOF),
    ("binary_deprecate_eof", BINARY_DEPRECATE_EOF),
    ("large_result", LARGE_RESULT),
    ("auth_switch", AUTH_SWITCH),
    ("auth_failed", AUTH_FAILED),
    ("ssl_request", SSL_REQUEST),
    ("compressed", COMPRESSED),
];

/// A compact description of a message, without times.
fn summary(m: &Message) -> String {
    let d = |d: Direction| match d {
        Direction::Egress => "E",
        Direction::Ingress => "I",
    };
    match m {
        Message::Command(c) => {
            let mut s = format!("{} #{} {:?}", d(c.dir), c.id, c.kind);
            if let Some(t) = &c.text {
                s += &format!(" {t:?}");
            }
            if c.text_truncated {
                s += " trunc";
            }
            s += &format!(" {}", c.system.as_str());
            if let Some(ns) = &c.namespace {
                s += &format!(" db={ns}");
            }
            s
        }
        Message::Response(r) => {
            let mut s = format!("{} re#{}", d(r.dir), r.command_id);
            match &r.error {
                Some(e) => {
                    s += &format!(
                        " ERR {} {} {:?}",
                        e.code,
                        e.sql_state.as_deref().unwrap_or("-"),
                        e.message
                    );
                }
                None => s += " OK",
            }
            if let Some(n) = r.returned_rows {
                s += &format!(" rows={n}");
            }
            if let Some(n) = r.affected_rows {
                s += &format!(" affected={n}");
            }
            if let Some(id) = r.statement_id {
                s += &format!(" stmt={id}");
            }
            if !r.complete {
                s += " incomplete";
            }
            s
        }
    }
}

fn summaries(msgs: &[Message]) -> Vec<String> {
    msgs.iter().map(summary).collect()
}

/// Feeds each recorded recv() as one whole syscall.
fn run(records: &[(Direction, Vec<u8>)]) -> (Vec<Message>, (u64, u64)) {
    let mut conn = MysqlConn::new(Limits::default());
    let mut out = Vec::new();
    for (i, (dir, bytes)) in records.iter().enumerate() {
        conn.feed(*dir, &whole(bytes, i as u64 * 10), &mut out);
    }
    let resync = conn.take_resync();
    (out, resync)
}

fn expect_fixture(text: &str, want: &[&str]) {
    let (out, resync) = run(&txt_records(text, true));
    assert_eq!(summaries(&out), want);
    assert_eq!(resync, (0, 0));
}

#[test]
fn cli_session() {
    expect_fixture(
        CLI_SESSION,
        &[
            "E #0 Query \"SELECT DATABASE()\" mariadb",
            "I re#0 OK rows=1",
            "E #1 InitDb \"shop\" mariadb",
            "I re#1 OK affected=0",
            "E #2 Query \"SELECT id, name FROM users WHERE id = 1\" mariadb db=shop",
            "I re#2 OK rows=1",
            "E #3 Query \"INSERT INTO users (name, email, age) VALUES ('dan', 'd@example.com', 50)\" mariadb db=shop",
            "I re#3 OK affected=1",
            "E #4 Query \"UPDATE users SET age = 51 WHERE name = 'dan'\" mariadb db=shop",
            "I re#4 OK affected=1",
            "E #5 Query \"SELECT * FROM nope\" mariadb db=shop",
            "I re#5 ERR 1146 42S02 \"Table 'shop.nope' doesn't exist\"",
        ],
    );
}

#[test]
fn load_data_local_infile() {
    expect_fixture(
        CLI_INFILE,
        &[
            "E #0 Query \"LOAD DATA LOCAL INFILE '/tmp/sonde-mysql/users.csv' INTO TABLE users FIELDS TERMINATED BY ',' (name, email, age)\" mariadb db=shop",
            "I re#0 OK affected=2",
            "E #1 Query \"DELETE FROM users WHERE name = 'dan'\" mariadb db=shop",
            "I re#1 OK affected=3",
        ],
    );
}

/// The binary-protocol session, with or without intermediate EOF packets.
fn binary_expectation(stmt_a: u32, stmt_b: u32) -> Vec<String> {
    [
        "E #0 Prepare \"SELECT id, name FROM users WHERE age > ?\" mariadb db=shop".to_owned(),
        format!("I re#0 OK stmt={stmt_a}"),
        format!("E #1 Execute {{ statement_id: {stmt_a} }} mariadb db=shop"),
        "I re#1 OK rows=2".to_owned(),
        format!("E #2 Execute {{ statement_id: {stmt_a} }} mariadb db=shop"),
        "I re#2 OK rows=1".to_owned(),
        format!("E #3 StmtClose {{ statement_id: {stmt_a} }} mariadb db=shop"),
        "E #4 Prepare \"INSERT INTO users (name, email, age) VALUES (?, ?, ?)\" mariadb db=shop"
            .to_owned(),
        format!("I re#4 OK stmt={stmt_b}"),
        format!("E #5 StmtReset {{ statement_id: {stmt_b} }} mariadb db=shop"),
        "I re#5 OK affected=0".to_owned(),
        format!("E #6 StmtClose {{ statement_id: {stmt_b} }} mariadb db=shop"),
        "E #7 Ping mariadb db=shop".to_owned(),
        "I re#7 OK affected=0".to_owned(),
        "E #8 InitDb \"shop\" mariadb db=shop".to_owned(),
        "I re#8 OK affected=0".to_owned(),
        "E #9 Query \"SELECT COUNT(*) FROM users; UPDATE users SET age = age + 1 WHERE id = 2\" mariadb db=shop".to_owned(),
        "I re#9 OK rows=1 affected=1".to_owned(),
        "E #10 Query \"SELECT * FROM missing_table\" mariadb db=shop".to_owned(),
        "I re#10 ERR 1146 42S02 \"Table 'shop.missing_table' doesn't exist\"".to_owned(),
        "E #11 Query \"INSERT INTO users (name, email, age) VALUES ('eve', 'eve@example.com', 29)\" mariadb db=shop".to_owned(),
        "I re#11 OK affected=1".to_owned(),
        "E #12 Query \"USE mysql\" mariadb db=shop".to_owned(),
        "I re#12 ERR 1044 42000 \"Access denied for user 'app'@'%' to database 'mysql'\"".to_owned(),
        "E #13 Query \"CALL shop.two_results()\" mariadb db=shop".to_owned(),
        "I re#13 OK rows=2 affected=0".to_owned(),
        "E #14 Prepare \"SELECT nope FROM users\" mariadb db=shop".to_owned(),
        "I re#14 ERR 1054 42S22 \"Unknown column 'nope' in 'SELECT'\"".to_owned(),
    ]
    .to_vec()
}

#[test]
fn binary_protocol_with_eof_packets() {
    let (out, resync) = run(&txt_records(BINARY_EOF, true));
    assert_eq!(summaries(&out), binary_expectation(1, 2));
    assert_eq!(resync, (0, 0));
}

#[test]
fn binary_protocol_without_eof_packets() {
    let (out, resync) = run(&txt_records(BINARY_DEPRECATE_EOF, true));
    assert_eq!(summaries(&out), binary_expectation(4, 5));
    assert_eq!(resync, (0, 0));
}

/// Attached mid-connection: the handshake is not seen, so whether EOF
/// packets are sent is learned from the packets themselves.
#[test]
fn binary_protocol_without_the_handshake() {
    for (text, stmts) in [(BINARY_EOF, (1, 2)), (BINARY_DEPRECATE_EOF, (4, 5))] {
        let records = txt_records(text, true);
        // Skip greeting, handshake response and OK.
        let (out, resync) = run(&records[3..]);
        // The namespace is known from the COM_INIT_DB (#8) on.
        let want: Vec<String> = binary_expectation(stmts.0, stmts.1)
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i <= 14 {
                    s.replace(" mariadb db=shop", " mysql")
                } else {
                    s.replace(" mariadb", " mysql")
                }
            })
            .collect();
        assert_eq!(summaries(&out), want);
        assert_eq!(resync, (0, 0));
    }
}

#[test]
fn auth_switch_then_ping() {
    expect_fixture(
        AUTH_SWITCH,
        &["E #0 Ping mariadb db=shop", "I re#0 OK affected=0"],
    );
}

#[test]
fn credentials_are_not_kept() {
    for text in [CLI_SESSION, BINARY_EOF, AUTH_SWITCH] {
        let records = txt_records(text, true);
        let mut conn = MysqlConn::new(Limits::default());
        let mut out = Vec::new();
        // Greeting, handshake response, auth exchange, fed a byte at a
        // time so that every packet is assembled in the framer's buffer.
        for (dir, bytes) in records
            .iter()
            .take_while(|(d, b)| !(*d == Direction::Egress && b.get(3) == Some(&0)))
        {
            for (i, b) in bytes.iter().enumerate() {
                conn.feed(*dir, &whole(std::slice::from_ref(b), i as u64), &mut out);
            }
        }
        assert!(out.is_empty());
        assert!(conn.egress.framer.buf.is_empty() && conn.ingress.framer.buf.is_empty());
        let state = format!("{conn:?}");
        assert!(!state.contains("app"), "{state}");
    }
}

#[test]
fn ignored_connections() {
    for text in [AUTH_FAILED, SSL_REQUEST, COMPRESSED] {
        let (out, resync) = run(&txt_records(text, true));
        assert!(out.is_empty(), "{:?}", summaries(&out));
        assert_eq!(resync, (0, 0));
    }
}

#[test]
fn server_view_has_ingress_commands() {
    let (out, resync) = run(&txt_records(AUTH_SWITCH, false));
    assert_eq!(
        summaries(&out),
        ["I #0 Ping mariadb db=shop", "E re#0 OK affected=0"]
    );
    assert_eq!(resync, (0, 0));
}

#[test]
fn large_result_fully_captured() {
    let (out, resync) = run(&txt_records(LARGE_RESULT, true));
    assert_eq!(
        summaries(&out),
        [
            "E #0 Query \"SELECT seq, REPEAT('x', 40) AS pad FROM seq_1_to_1000\" mariadb db=shop",
            "I re#0 OK rows=1000",
            "E #1 Ping mariadb db=shop",
            "I re#1 OK affected=0",
        ]
    );
    assert_eq!(resync, (0, 0));
}

/// The server's reads of the large result set, joined into one stream.
fn large_result_stream() -> (Vec<(Direction, Vec<u8>)>, Vec<u8>) {
    let records = txt_records(LARGE_RESULT, true);
    // greeting, response, OK, query | result (3 reads) | ping, OK, quit
    let head = records[..4].to_vec();
    let result: Vec<u8> = records[4..7].iter().flat_map(|(_, b)| b.clone()).collect();
    assert_eq!(result.len(), 16384 + 16384 + 16232);
    (head, result)
}

#[test]
fn large_result_beyond_the_capture_then_next_command() {
    let (head, result) = large_result_stream();
    let records = txt_records(LARGE_RESULT, true);
    let mut conn = MysqlConn::new(Limits::default());
    let mut out = Vec::new();
    for (i, (dir, bytes)) in head.iter().enumerate() {
        conn.feed(*dir, &whole(bytes, i as u64), &mut out);
    }
    // Reads of 4096 bytes, 1024 of each captured.
    for (i, read) in result.chunks(4096).enumerate() {
        let captured = &read[..read.len().min(1024)];
        conn.feed(
            Direction::Ingress,
            &gapped(captured, read.len(), 100 + i as u64 * 10),
            &mut out,
        );
    }
    let last_read_end = 100 + (result.len().div_ceil(4096) as u64 - 1) * 10 + 1;
    assert_eq!(out.len(), 1, "the answer is still open");
    for (i, (dir, bytes)) in records[7..].iter().enumerate() {
        conn.feed(*dir, &whole(bytes, 1000 + i as u64 * 10), &mut out);
    }
    assert_eq!(
        summaries(&out),
        [
            "E #0 Query \"SELECT seq, REPEAT('x', 40) AS pad FROM seq_1_to_1000\" mariadb db=shop",
            "I re#0 OK incomplete",
            "E #1 Ping mariadb db=shop",
            "I re#1 OK affected=0",
        ]
    );
    assert_eq!(out[1].last_ns(), last_read_end);
    let (skipped, events) = conn.take_resync();
    assert_eq!(events, 1);
    assert!(skipped > 30_000, "{skipped}");
}

#[test]
fn large_result_ends_in_a_captured_read() {
    let (head, result) = large_result_stream();
    let mut conn = MysqlConn::new(Limits::default());
    let mut out = Vec::new();
    for (i, (dir, bytes)) in head.iter().enumerate() {
        conn.feed(*dir, &whole(bytes, i as u64), &mut out);
    }
    // Big reads with small captures, then a last read of 300 bytes
    // that was captured whole.
    let split = result.len() - 300;
    for (i, read) in result[..split].chunks(16384).enumerate() {
        conn.feed(
            Direction::Ingress,
            &gapped(&read[..1024], read.len(), 100 + i as u64 * 10),
            &mut out,
        );
    }
    conn.feed(Direction::Ingress, &whole(&result[split..], 500), &mut out);
    assert_eq!(
        summaries(&out),
        [
            "E #0 Query \"SELECT seq, REPEAT('x', 40) AS pad FROM seq_1_to_1000\" mariadb db=shop",
            "I re#0 OK",
        ]
    );
    assert_eq!(out[1].last_ns(), 501);
    assert_eq!(conn.take_resync().1, 1);
    // And the connection carries on in step.
    conn.feed(
        Direction::Egress,
        &whole(b"\x01\x00\x00\x00\x0e", 600),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &whole(b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00", 610),
        &mut out,
    );
    assert_eq!(
        summaries(&out)[2..],
        ["E #1 Ping mariadb db=shop", "I re#1 OK affected=0"]
    );
    assert_eq!(conn.take_resync(), (0, 0));
}

/// Packets of a result set with one text column, rows of `row_len` bytes.
fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut p = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
    p.extend_from_slice(payload);
    p
}

const COLUMN_DEF: &[u8] =
    b"\x03def\x00\x00\x00\x01a\x00\x0c\x21\x00\xff\xff\xff\x00\xfc\x00\x00\x00\x00";

#[test]
fn a_row_larger_than_the_capture_is_skipped_by_length() {
    let mut conn = MysqlConn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(
        Direction::Egress,
        &whole(&packet(0, b"\x03SELECT blob FROM t"), 0),
        &mut out,
    );
    // column count, definition, a 70000-byte row; only 1024 bytes captured.
    let mut row = vec![0xfd, 0x6d, 0x11, 0x01]; // lenenc 69997
    row.resize(70000, b'z');
    let stream = [packet(1, b"\x01"), packet(2, COLUMN_DEF), packet(3, &row)].concat();
    conn.feed(
        Direction::Ingress,
        &gapped(&stream[..1024], stream.len(), 10),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &whole(&packet(4, b"\xfe\x00\x00\x02\x00\x00\x00"), 20),
        &mut out,
    );
    assert_eq!(
        summaries(&out),
        [
            "E #0 Query \"SELECT blob FROM t\" mysql",
            "I re#0 OK rows=1"
        ]
    );
    assert_eq!(conn.take_resync(), (0, 0));
}

#[test]
fn continued_packets_make_one_payload() {
    let mut conn = MysqlConn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(
        Direction::Egress,
        &whole(&packet(0, b"\x03SELECT big FROM t"), 0),
        &mut out,
    );
    let start = [packet(1, b"\x01"), packet(2, COLUMN_DEF)].concat();
    conn.feed(Direction::Ingress, &whole(&start, 10), &mut out);
    // A row of 0xffffff + 10 bytes: a full packet (mostly not captured)
    // and a 10-byte continuation. The continuation starts with 0xfe,
    // which must not be taken for an end packet.
    let mut first = vec![0xff, 0xff, 0xff, 3, 0xfe];
    first.resize(1024, b'q');
    conn.feed(
        Direction::Ingress,
        &gapped(&first, 4 + MAX_PACKET, 20),
        &mut out,
    );
    let rest = [
        packet(4, b"\xfe\x00\x00\x02\x00\x00\x00\x00\x00\x00"),
        packet(5, b"\xfe\x00\x00\x02\x00\x00\x00"),
    ]
    .concat();
    conn.feed(Direction::Ingress, &whole(&rest, 30), &mut out);
    assert_eq!(
        summaries(&out),
        ["E #0 Query \"SELECT big FROM t\" mysql", "I re#0 OK rows=1"]
    );
    assert_eq!(conn.take_resync(), (0, 0));
}

#[test]
fn long_statement_is_truncated_and_skipped_by_length() {
    let mut conn = MysqlConn::new(Limits {
        max_buffered_bytes: 100,
    });
    let mut out = Vec::new();
    let mut sql = b"\x03INSERT INTO t VALUES ".to_vec();
    while sql.len() < 5000 {
        sql.extend_from_slice(b"(1, 'abc'), ");
    }
    sql.extend_from_slice(b"(2, 'z')");
    let p = packet(0, &sql);
    // 2000 bytes captured of the write, then the rest in a second write.
    conn.feed(Direction::Egress, &gapped(&p[..1000], 2000, 0), &mut out);
    conn.feed(Direction::Egress, &whole(&p[2000..], 10), &mut out);
    conn.feed(
        Direction::Ingress,
        &whole(&packet(1, b"\x00\x2a\x00\x02\x00\x00\x00"), 20),
        &mut out,
    );
    let s = summaries(&out);
    assert_eq!(s.len(), 2);
    assert!(s[0].starts_with("E #0 Query \"INSERT INTO t VALUES (1, 'abc')"));
    assert!(s[0].ends_with(" trunc mysql"), "{}", s[0]);
    assert_eq!(s[1], "I re#0 OK affected=42");
    if let Message::Command(c) = &out[0] {
        assert_eq!(c.text.as_ref().map(std::string::String::len), Some(99));
    }
    assert_eq!(conn.take_resync(), (0, 0));
}

#[test]
fn gap_over_a_command_header_resyncs_at_the_next_command() {
    let mut conn = MysqlConn::new(Limits::default());
    let mut out = Vec::new();
    let ping = packet(0, b"\x0e");
    let query = packet(0, b"\x03SELECT 1");
    // A ping followed by 9 uncaptured bytes: another packet started there.
    conn.feed(
        Direction::Egress,
        &gapped(&ping, ping.len() + 9, 0),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &whole(&packet(1, b"\x00\x00\x00\x02\x00\x00\x00"), 10),
        &mut out,
    );
    conn.feed(Direction::Egress, &whole(&query, 20), &mut out);
    let answer = [
        packet(1, b"\x01"),
        packet(2, COLUMN_DEF),
        packet(3, b"\x011"),
        packet(4, b"\xfe\x00\x00\x02\x00\x00\x00"),
    ]
    .concat();
    conn.feed(Direction::Ingress, &whole(&answer, 30), &mut out);
    assert_eq!(
        summaries(&out),
        [
            "E #0 Ping mysql",
            "I re#0 OK affected=0",
            "E #1 Query \"SELECT 1\" mysql",
            "I re#1 OK rows=1",
        ]
    );
    assert_eq!(conn.take_resync(), (9, 1));
}

#[test]
fn answer_without_a_command_is_skipped() {
    let mut conn = MysqlConn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(Direction::Egress, &whole(&packet(0, b"\x0e"), 0), &mut out);
    let ok = packet(1, b"\x00\x00\x00\x02\x00\x00\x00");
    conn.feed(Direction::Ingress, &whole(&ok, 10), &mut out);
    // A second OK nobody asked for.
    conn.feed(Direction::Ingress, &whole(&ok, 20), &mut out);
    conn.feed(Direction::Egress, &whole(&packet(0, b"\x0e"), 30), &mut out);
    conn.feed(Direction::Ingress, &whole(&ok, 40), &mut out);
    assert_eq!(
        summaries(&out),
        [
            "E #0 Ping mysql",
            "I re#0 OK affected=0",
            "E #1 Ping mysql",
            "I re#1 OK affected=0",
        ]
    );
    assert_eq!(conn.take_resync(), (11, 1));
}

#[test]
fn session_tracking_and_use_change_the_namespace() {
    let mut conn = MysqlConn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(
        Direction::Egress,
        &whole(&packet(0, b"\x03use `my``db`;"), 0),
        &mut out,
    );
    conn.feed(
        Direction::Ingress,
        &whole(&packet(1, b"\x00\x00\x00\x02\x00\x00\x00"), 10),
        &mut out,
    );
    conn.feed(
        Direction::Egress,
        &whole(&packet(0, b"\x03SET @a = 1"), 20),
        &mut out,
    );
    // OK with SERVER_SESSION_STATE_CHANGED and a schema entry "inv".
    conn.feed(
        Direction::Ingress,
        &whole(
            &packet(1, b"\x00\x00\x00\x02\x40\x00\x00\x00\x06\x01\x04\x03inv"),
            30,
        ),
        &mut out,
    );
    conn.feed(Direction::Egress, &whole(&packet(0, b"\x0e"), 40), &mut out);
    let s = summaries(&out);
    assert_eq!(s[0], "E #0 Query \"use `my``db`;\" mysql");
    assert_eq!(s[2], "E #1 Query \"SET @a = 1\" mysql db=my`db");
    assert_eq!(s[4], "E #2 Ping mysql db=inv");
}

#[test]
fn use_statement_table() {
    for (sql, want) in [
        ("USE shop", Some("shop")),
        ("  use shop ; ", Some("shop")),
        ("use `a b`", Some("a b")),
        ("use `x``y`", Some("x`y")),
        ("USE", None),
        ("USEshop", None),
        ("use shop; select 1", None),
        ("user_table", None),
        ("use ``", None),
    ] {
        assert_eq!(use_statement(sql).as_deref(), want, "{sql:?}");
    }
}

#[test]
fn query_attributes_are_stepped_over() {
    assert_eq!(
        query_text(b"\x00\x01SELECT 1", false),
        Some(&b"SELECT 1"[..])
    );
    assert_eq!(query_text(b"SELECT 1", true), None);
    assert_eq!(
        query_text(b"\x00\x01SELECT 1", true),
        Some(&b"SELECT 1"[..])
    );
    // One LONGLONG attribute "a" = 5, one NULL VARCHAR attribute "b".
    let body =
        b"\x02\x01\x02\x01\x08\x00\x01a\x0f\x00\x01b\x05\x00\x00\x00\x00\x00\x00\x00SELECT 2";
    assert_eq!(query_text(body, true), Some(&b"SELECT 2"[..]));
    assert_eq!(query_text(b"SELECT 1", false), Some(&b"SELECT 1"[..]));
}

#[test]
fn detect_table() {
    let greeting = &txt_records(CLI_SESSION, true)[0].1;
    let query = packet(0, b"\x03SELECT * FROM users");
    let cases: &[(&[u8], Detect)] = &[
        (greeting, Detect::Response),
        (&greeting[..30], Detect::NeedMore),
        (&query, Detect::Request),
        (
            &packet(0, b"\x16 insert into t values (?)"),
            Detect::Request,
        ),
        (&packet(0, b"\x03/* app */ SELECT 1"), Detect::Request),
        (&packet(0, b"\x03\x00\x01SELECT 1"), Detect::Request),
        (
            &packet(0, b"\x03(SELECT 1) UNION (SELECT 2)"),
            Detect::Request,
        ),
        (&packet(0, b"\x03SELEKT 1"), Detect::No),
        (&packet(0, b"\x03\x01\x02\x03"), Detect::No),
        (&packet(0, b"\x03SELECT \x01\x02"), Detect::No),
        (&packet(0, b"\x0e"), Detect::Request),
        (&packet(0, b"\x0e\x00"), Detect::No),
        (&packet(0, b"\x02shop"), Detect::Request),
        (&packet(0, b"\x02sh op"), Detect::No),
        (
            &packet(0, b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00"),
            Detect::Request,
        ),
        (
            &packet(0, b"\x17\x01\x00\x00\x00\x00\x02\x00\x00\x00"),
            Detect::No,
        ),
        (&packet(1, b"\x0e"), Detect::No),
        (&packet(0, b"\x19\x01\x00\x00\x00"), Detect::No),
        (&packet(0, b""), Detect::No),
        (b"", Detect::NeedMore),
        (b"\x05\x00", Detect::NeedMore),
        (b"\x00\x00\x00", Detect::No),
        (b"\x13\x00\x00\x00", Detect::NeedMore),
        (b"\x13\x00\x00\x00\x03SEL", Detect::NeedMore),
        (b"\x13\x00\x00\x00\x03SELX", Detect::No),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Detect::No),
        (b"HTTP/1.1 200 OK\r\n\r\n", Detect::No),
        (b"*1\r\n$4\r\nPING\r\n", Detect::No),
        (b"+OK\r\n", Detect::No),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", Detect::No),
        (b"\x16\x03\x01\x00\x03\x01\x00\x00", Detect::No),
        (b"\x17\x03\x03\x00\x0a\x01\x02\x03\x04\x05", Detect::No),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Detect::No),
        (b"SSH-2.0-OpenSSH_9.6\r\n", Detect::No),
    ];
    for (i, (bytes, want)) in cases.iter().enumerate() {
        assert_eq!(detect(bytes), *want, "case {i}: {bytes:?}");
    }
    // Every strict prefix of a detectable start says NeedMore.
    for start in [greeting.as_slice(), &query[..]] {
        let verdict = detect(start);
        for n in 0..start.len() {
            let d = detect(&start[..n]);
            assert!(d == Detect::NeedMore || d == verdict, "prefix {n}: {d:?}");
        }
    }
}

#[test]
fn detect_random_bytes_is_no() {
    let mut rng = Rng(0x1234_5678);
    let mut yes = 0;
    for _ in 0..20000 {
        let bytes = rng.bytes(64);
        if matches!(detect(&bytes), Detect::Request | Detect::Response) {
            yes += 1;
        }
    }
    assert_eq!(yes, 0);
}

/// Splits the conversation into turns: consecutive records of one direction.
fn turns(records: &[(Direction, Vec<u8>)]) -> Vec<(Direction, Vec<u8>)> {
    let mut out: Vec<(Direction, Vec<u8>)> = Vec::new();
    for (dir, bytes) in records {
        match out.last_mut() {
            Some((d, b)) if d == dir => b.extend_from_slice(bytes),
            _ => out.push((*dir, bytes.clone())),
        }
    }
    out
}

const SMALL_FIXTURES: &[&str] = &[
    CLI_SESSION,
    CLI_INFILE,
    BINARY_EOF,
    BINARY_DEPRECATE_EOF,
    AUTH_SWITCH,
];

#[test]
fn strict_prefixes_are_incomplete() {
    for text in SMALL_FIXTURES {
        let turns = turns(&txt_records(text, true));
        let mut conn = MysqlConn::new(Limits::default());
        let mut out = Vec::new();
        for (t, (dir, bytes)) in turns.iter().enumerate() {
            let mut full = conn.clone();
            let mut whole_out = Vec::new();
            full.feed(*dir, &whole(bytes, t as u64 * 10), &mut whole_out);
            for n in 0..bytes.len() {
                let mut c = conn.clone();
                let mut part = Vec::new();
                c.feed(*dir, &whole(&bytes[..n], t as u64 * 10), &mut part);
                assert!(
                    part.len() < whole_out.len() || whole_out.is_empty() && part.is_empty(),
                    "turn {t}, prefix {n}: {:?}",
                    summaries(&part)
                );
                assert_eq!(summaries(&part), summaries(&whole_out[..part.len()]));
                assert_eq!(c.take_resync(), (0, 0), "turn {t}, prefix {n}");
            }
            conn = full;
            out.extend(whole_out);
        }
    }
}

#[test]
fn every_split_gives_the_same_messages() {
    for text in SMALL_FIXTURES {
        let records = turns(&txt_records(text, true));
        let (reference, _) = run(&records);
        assert!(!reference.is_empty());
        for (t, (_, bytes)) in records.iter().enumerate() {
            for cut in 1..bytes.len() {
                let mut split = records.clone();
                let (dir, b) = split.remove(t);
                split.insert(t, (dir, b[cut..].to_vec()));
                split.insert(t, (dir, b[..cut].to_vec()));
                let (out, resync) = run(&split);
                assert_eq!(summaries(&out), summaries(&reference), "turn {t} cut {cut}");
                assert_eq!(resync, (0, 0));
            }
        }
        // And one byte per syscall.
        let bytewise: Vec<(Direction, Vec<u8>)> = records
            .iter()
            .flat_map(|(d, b)| b.iter().map(|&x| (*d, vec![x])))
            .collect();
        let (out, _) = run(&bytewise);
        assert_eq!(summaries(&out), summaries(&reference));
    }
}

#[test]
fn message_times() {
    let records = txt_records(AUTH_SWITCH, true);
    let (out, _) = run(&records);
    // The ping is record 5 (time 50, written: handed over at its start,
    // 50), its OK record 6 (read: known at its end, 61).
    assert_eq!((out[0].first_ns(), out[0].last_ns()), (50, 50));
    assert_eq!((out[1].first_ns(), out[1].last_ns()), (61, 61));
}

#[test]
fn close_reports_an_open_answer() {
    let mut conn = MysqlConn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(
        Direction::Egress,
        &whole(&packet(0, b"\x03SELECT a FROM t"), 0),
        &mut out,
    );
    let start = [
        packet(1, b"\x01"),
        packet(2, COLUMN_DEF),
        packet(3, b"\x01x"),
    ]
    .concat();
    conn.feed(Direction::Ingress, &whole(&start, 10), &mut out);
    conn.close(100, &mut out);
    assert_eq!(
        summaries(&out),
        [
            "E #0 Query \"SELECT a FROM t\" mysql",
            "I re#0 OK incomplete"
        ]
    );
    assert_eq!(out[1].last_ns(), 11);
    // A fresh start after close.
    conn.feed(
        Direction::Egress,
        &whole(&packet(0, b"\x0e"), 200),
        &mut out,
    );
    assert_eq!(summaries(&out)[2], "E #0 Ping mysql");
}

#[test]
fn prepare_without_handshake_and_trailing_eof() {
    // Prepare answer with only parameters, EOF style, handshake unseen:
    // the answer ends after the last definition and the EOF that follows
    // is recognised by its sequence id.
    let mut conn = MysqlConn::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(
        Direction::Egress,
        &whole(&packet(0, b"\x16INSERT INTO t VALUES (?)"), 0),
        &mut out,
    );
    let answer = [
        packet(1, b"\x00\x07\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00"),
        packet(2, COLUMN_DEF),
    ]
    .concat();
    conn.feed(Direction::Ingress, &whole(&answer, 10), &mut out);
    conn.feed(
        Direction::Ingress,
        &whole(&packet(3, b"\xfe\x00\x00\x02\x00"), 20),
        &mut out,
    );
    conn.feed(Direction::Egress, &whole(&packet(0, b"\x0e"), 30), &mut out);
    conn.feed(
        Direction::Ingress,
        &whole(&packet(1, b"\x00\x00\x00\x02\x00\x00\x00"), 40),
        &mut out,
    );
    assert_eq!(
        summaries(&out),
        [
            "E #0 Prepare \"INSERT INTO t VALUES (?)\" mysql",
            "I re#0 OK stmt=7",
            "E #1 Ping mysql",
            "I re#1 OK affected=0",
        ]
    );
    assert_eq!(conn.take_resync(), (0, 0));
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0xdead_beef_u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let mut all: Vec<(Direction, Vec<u8>)> = Vec::new();
    for (_, text) in ALL_FIXTURES {
        all.extend(txt_records(text, true));
    }
    for round in 0..300 {
        let mut conn = MysqlConn::new(Limits {
            max_buffered_bytes: 64 + (round % 5) * 200,
        });
        let mut out = Vec::new();
        for k in 0..40 {
            let (dir, mut bytes) = if round % 2 == 0 {
                let (d, b) = &all[next() as usize % all.len()];
                (*d, b.clone())
            } else {
                let len = next() as usize % 64;
                let d = if next() % 2 == 0 {
                    Direction::Egress
                } else {
                    Direction::Ingress
                };
                (d, (0..len).map(|_| next() as u8).collect())
            };
            // Flip some bytes.
            for _ in 0..(next() % 4) {
                if !bytes.is_empty() {
                    let i = next() as usize % bytes.len();
                    bytes[i] = next() as u8;
                }
            }
            let cut = if bytes.is_empty() {
                0
            } else {
                next() as usize % (bytes.len() + 1)
            };
            let extra = if next() % 3 == 0 {
                next() as usize % 3000
            } else {
                0
            };
            let chunk = gapped(&bytes[..cut], bytes.len() + extra, k * 10);
            conn.feed(dir, &chunk, &mut out);
        }
        conn.close(10_000, &mut out);
        for m in &out {
            assert!(m.first_ns() <= m.last_ns());
        }
        let _ = conn.take_resync();
    }
}
