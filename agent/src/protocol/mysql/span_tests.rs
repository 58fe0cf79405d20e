use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::capture::Endpoint;
use crate::capture::Endpoints;
use crate::protocol::mysql::{DbSystem, Limits, MysqlConn, ServerError};
use crate::protocol::test_reads::txt_records;
use crate::protocol::{Chunk, StreamParser};
use crate::span::{DbSpanOptions, SpanOptions};

const CLIENT_PORT: u16 = 40000;
const SERVER_PORT: u16 = 3306;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

/// The traced process is the client (10.0.0.1) unless `server_view`.
fn ctx(server_view: bool, sanitize: bool) -> SpanContext {
    let client = Endpoint::Ip(ip(1), CLIENT_PORT);
    let server = Endpoint::Ip(ip(2), SERVER_PORT);
    let endpoints = if server_view {
        Endpoints {
            local: server,
            peer: client,
        }
    } else {
        Endpoints {
            local: client,
            peer: server,
        }
    };
    SpanContext {
        pid: 7,
        endpoints,
        options: SpanOptions {
            db: DbSpanOptions {
                sanitize_query: sanitize,
            },
            ..SpanOptions::default()
        },
    }
}

/// Runs a recorded conversation through parser and pairing.
fn spans_of(text: &str, server_view: bool, sanitize: bool) -> (Vec<Span>, PairingLoss) {
    let ctx = ctx(server_view, sanitize);
    let mut conn = MysqlConn::new(Limits::default());
    let mut pairing = MysqlPairing::default();
    let mut spans = Vec::new();
    let mut out = PairingOut::new(&ctx, &mut spans);
    let records = txt_records(text, !server_view);
    for (i, (dir, bytes)) in records.iter().enumerate() {
        let chunk = Chunk {
            data: bytes,
            total_len: bytes.len() as u64,
            start_ns: 1000 + i as u64 * 10,
            end_ns: 1000 + i as u64 * 10 + 5,
        };
        let mut msgs = Vec::new();
        StreamParser::feed(&mut conn, *dir, &chunk, &mut msgs);
        for m in msgs {
            pairing.push(m, &mut out);
        }
    }
    let mut msgs = Vec::new();
    StreamParser::close(&mut conn, 100_000, &mut msgs);
    for m in msgs {
        pairing.push(m, &mut out);
    }
    pairing.finish(&mut out.loss);
    let loss = out.loss;
    (crate::span::completed(spans), loss)
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AttrValue> {
    span.attr(key)
}

fn s(v: &str) -> Option<AttrValue> {
    Some(AttrValue::from(v))
}

fn n(v: i64) -> Option<AttrValue> {
    Some(AttrValue::Int(v))
}

const BINARY_EOF: &str = include_str!("fixtures/binary_eof.txt");
const BINARY_DEPRECATE_EOF: &str = include_str!("fixtures/binary_deprecate_eof.txt");
const CLI_SESSION: &str = include_str!("fixtures/cli_session.txt");
const LARGE_RESULT: &str = include_str!("fixtures/large_result.txt");

#[test]
fn binary_session_spans() {
    for text in [BINARY_EOF, BINARY_DEPRECATE_EOF] {
        let (spans, loss) = spans_of(text, false, true);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "PREPARE users",
                "SELECT users",
                "SELECT users",
                "PREPARE users",
                "PING",
                "USE",
                "mariadb",
                "SELECT missing_table",
                "INSERT users",
                "USE",
                "CALL",
                "PREPARE users",
            ]
        );
        assert_eq!(loss, PairingLoss::default());
        assert!(
            spans
                .iter()
                .all(|s| s.kind == SpanKind::Client && s.pid == 7)
        );

        let exec = &spans[1];
        assert_eq!(attr(exec, "db.system.name"), s("mariadb").as_ref());
        assert_eq!(attr(exec, "db.operation.name"), s("SELECT").as_ref());
        assert_eq!(attr(exec, "db.collection.name"), s("users").as_ref());
        assert_eq!(attr(exec, "db.namespace"), s("shop").as_ref());
        assert_eq!(
            attr(exec, "db.query.text"),
            s("SELECT id, name FROM users WHERE age > ?").as_ref()
        );
        assert_eq!(attr(exec, "db.response.returned_rows"), n(2).as_ref());
        assert_eq!(attr(exec, "server.address"), s("10.0.0.2").as_ref());
        assert_eq!(attr(exec, "server.port"), n(3306).as_ref());
        assert_eq!(attr(exec, "network.peer.address"), s("10.0.0.2").as_ref());
        assert_eq!(attr(exec, "network.peer.port"), n(3306).as_ref());
        assert_eq!(attr(exec, "network.transport"), s("tcp").as_ref());
        assert_eq!(exec.status, SpanStatus::Unset);
        assert_eq!(attr(&spans[2], "db.response.returned_rows"), n(1).as_ref());
        assert!(exec.start_unix_ns < exec.end_unix_ns);

        let prepare = &spans[0];
        assert_eq!(attr(prepare, "db.operation.name"), s("PREPARE").as_ref());
        assert_eq!(attr(prepare, "db.response.returned_rows"), None);

        let use_db = &spans[5];
        assert_eq!(attr(use_db, "db.operation.name"), s("USE").as_ref());
        assert_eq!(attr(use_db, "db.namespace"), s("shop").as_ref());
        assert_eq!(attr(use_db, "db.query.text"), None);

        let multi = &spans[6];
        assert_eq!(attr(multi, "db.operation.name"), None);
        assert_eq!(attr(multi, "db.response.returned_rows"), n(1).as_ref());

        let failed = &spans[7];
        assert_eq!(attr(failed, "db.response.status_code"), s("1146").as_ref());
        assert_eq!(attr(failed, "error.type"), s("42S02").as_ref());
        assert_eq!(
            failed.status,
            SpanStatus::Error {
                description: "1146 (42S02)".to_owned()
            },
            "sanitised: the server's message may quote the statement"
        );

        let insert = &spans[8];
        assert_eq!(
            attr(insert, "db.query.text"),
            s("INSERT INTO users (name, email, age) VALUES (?, ?, ?)").as_ref()
        );
        assert_eq!(attr(&spans[10], "db.response.returned_rows"), n(2).as_ref());
        assert_eq!(attr(&spans[11], "error.type"), s("42S22").as_ref());
    }
}

#[test]
fn sanitising_can_be_turned_off() {
    let (spans, _) = spans_of(BINARY_EOF, false, false);
    assert_eq!(
        attr(&spans[8], "db.query.text"),
        s("INSERT INTO users (name, email, age) VALUES ('eve', 'eve@example.com', 29)").as_ref()
    );
}

#[test]
fn server_view_makes_server_spans() {
    let (spans, _) = spans_of(CLI_SESSION, true, true);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "SELECT",
            "USE",
            "SELECT users",
            "INSERT users",
            "UPDATE users",
            "SELECT nope"
        ]
    );
    let span = &spans[2];
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(attr(span, "server.address"), s("10.0.0.2").as_ref());
    assert_eq!(attr(span, "server.port"), n(3306).as_ref());
    assert_eq!(attr(span, "network.peer.address"), s("10.0.0.1").as_ref());
    assert_eq!(attr(span, "network.peer.port"), n(40000).as_ref());
    assert_eq!(
        attr(span, "db.query.text"),
        s("SELECT id, name FROM users WHERE id = ?").as_ref()
    );
    assert_eq!(attr(&spans[0], "db.namespace"), None);
    assert_eq!(attr(span, "db.namespace"), s("shop").as_ref());
    // A server's span starts when the command was read (the end of the
    // read that carried it).
    assert_eq!(span.start_unix_ns % 10, 5);
}

#[test]
fn large_result_span_counts_rows() {
    let (spans, loss) = spans_of(LARGE_RESULT, false, true);
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].name, "SELECT seq_1_to_1000");
    assert_eq!(
        attr(&spans[0], "db.response.returned_rows"),
        n(1000).as_ref()
    );
    assert_eq!(loss, PairingLoss::default());
}

fn command(id: u64, kind: CommandKind, text: Option<&str>) -> Message {
    Message::Command(Command {
        dir: Direction::Egress,
        id,
        kind,
        text: text.map(str::to_owned),
        text_truncated: false,
        system: DbSystem::Mysql,
        namespace: None,
        first_ns: id * 100,
        last_ns: id * 100 + 1,
    })
}

fn response(id: u64, statement_id: Option<u32>) -> Message {
    Message::Response(Response {
        dir: Direction::Ingress,
        command_id: id,
        error: None,
        returned_rows: None,
        affected_rows: None,
        statement_id,
        complete: true,
        first_ns: id * 100 + 50,
        last_ns: id * 100 + 60,
    })
}

fn push_all(pairing: &mut MysqlPairing, msgs: Vec<Message>) -> (Vec<Span>, PairingLoss) {
    let ctx = ctx(false, true);
    let mut spans = Vec::new();
    let mut out = PairingOut::new(&ctx, &mut spans);
    for m in msgs {
        pairing.push(m, &mut out);
    }
    let loss = out.loss;
    (crate::span::completed(spans), loss)
}

#[test]
fn executes_are_named_after_their_statement() {
    let mut pairing = MysqlPairing::default();
    let (spans, loss) = push_all(
        &mut pairing,
        vec![
            command(
                0,
                CommandKind::Prepare,
                Some("DELETE FROM carts WHERE id = ?"),
            ),
            response(0, Some(9)),
            command(1, CommandKind::Execute { statement_id: 9 }, None),
            response(1, None),
            // MariaDB's "the statement just prepared".
            command(
                2,
                CommandKind::Execute {
                    statement_id: LAST_PREPARED,
                },
                None,
            ),
            response(2, None),
            // A statement prepared before the agent attached.
            command(3, CommandKind::Execute { statement_id: 4 }, None),
            response(3, None),
            command(4, CommandKind::StmtClose { statement_id: 9 }, None),
            command(5, CommandKind::Execute { statement_id: 9 }, None),
            response(5, None),
            command(6, CommandKind::StmtReset { statement_id: 4 }, None),
            response(6, None),
        ],
    );
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "PREPARE carts",
            "DELETE carts",
            "DELETE carts",
            "EXECUTE",
            "EXECUTE"
        ]
    );
    assert_eq!(
        attr(&spans[1], "db.query.text"),
        s("DELETE FROM carts WHERE id = ?").as_ref()
    );
    assert_eq!(attr(&spans[3], "db.query.text"), None);
    assert_eq!((spans[1].start_unix_ns, spans[1].end_unix_ns), (100, 160));
    assert_eq!(loss, PairingLoss::default());
}

#[test]
fn statements_are_bounded() {
    let mut pairing = MysqlPairing::default();
    let mut msgs = Vec::new();
    for i in 0..(MAX_STATEMENTS as u32 + 10) {
        let id = u64::from(i) * 2;
        msgs.push(command(id, CommandKind::Prepare, Some("SELECT a FROM t")));
        msgs.push(response(id, Some(i)));
    }
    let base = u64::from(MAX_STATEMENTS as u32 + 10) * 2;
    msgs.push(command(
        base,
        CommandKind::Execute { statement_id: 0 },
        None,
    ));
    msgs.push(response(base, None));
    msgs.push(command(
        base + 1,
        CommandKind::Execute { statement_id: 100 },
        None,
    ));
    msgs.push(response(base + 1, None));
    let (spans, _) = push_all(&mut pairing, msgs);
    assert_eq!(pairing.statements.len(), MAX_STATEMENTS);
    let last_two: Vec<&str> = spans
        .iter()
        .rev()
        .take(2)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(last_two, ["SELECT t", "EXECUTE"]);
}

#[test]
fn losses_are_counted() {
    let mut pairing = MysqlPairing::default();
    let (spans, mut loss) = push_all(
        &mut pairing,
        vec![
            command(0, CommandKind::Query, Some("SELECT 1")),
            command(1, CommandKind::Query, Some("SELECT 2")),
            // The answer to #1: #0 got none.
            response(1, None),
            // An answer to nothing waiting.
            response(7, None),
            command(8, CommandKind::Ping, None),
            command(9, CommandKind::StmtClose { statement_id: 1 }, None),
        ],
    );
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "SELECT");
    assert_eq!(
        loss,
        PairingLoss {
            requests_unanswered: 1,
            responses_unpaired: 1
        }
    );
    pairing.finish(&mut loss);
    assert_eq!(loss.requests_unanswered, 2);
}

#[test]
fn sqlcommenter_parent_and_errors_without_sqlstate() {
    let mut pairing = MysqlPairing::default();
    let mut failed = match response(1, None) {
        Message::Response(r) => r,
        Message::Command(_) => unreachable!(),
    };
    failed.error = Some(ServerError {
        code: 1040,
        sql_state: None,
        message: "Too many connections".to_owned(),
    });
    let (spans, _) = push_all(
        &mut pairing,
        vec![
            command(
                0,
                CommandKind::Query,
                Some(
                    "SELECT * FROM t /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/",
                ),
            ),
            response(0, None),
            command(1, CommandKind::Query, Some("SELECT 1")),
            Message::Response(failed),
        ],
    );
    assert_eq!(spans[0].trace_id[0], 0x4b);
    assert_eq!(
        spans[0].parent_span_id,
        Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
    );
    assert_eq!(
        attr(&spans[0], "db.query.text"),
        s("SELECT * FROM t").as_ref()
    );
    assert_eq!(spans[1].parent_span_id, None);
    assert_eq!(attr(&spans[1], "error.type"), s("1040").as_ref());
    assert_eq!(
        attr(&spans[1], "db.response.status_code"),
        s("1040").as_ref()
    );
}
