//! MySQL / MariaDB spans: each command the server answers is paired with
//! its answer (the parser numbers commands, answers carry the number) and
//! turned into a span with the database semantic conventions.
//!
//! Spans are made for COM_QUERY, COM_STMT_PREPARE, COM_STMT_EXECUTE,
//! COM_INIT_DB and COM_PING. Prepared statements are remembered per
//! connection (their text analysed once) so an execute can be named after
//! the statement it runs.

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use lru::LruCache;

use super::model::{AttrValue, Span, SpanKind, SpanStatus};
use super::{Pairing, PairingLoss, SpanContext, db_endpoint_attrs, ids, sql};
use crate::protocol::Direction;
use crate::protocol::mysql::{Command, CommandKind, Message, Response};

/// Commands waiting for their answer, per connection; more than this means
/// pairing is lost, and the oldest is dropped and counted.
const MAX_WAITING: usize = 256;
/// Prepared statements remembered per connection; the least recently used
/// is forgotten first.
const MAX_STATEMENTS: usize = 256;
/// The statement id MariaDB clients use for "the statement just prepared".
const LAST_PREPARED: u32 = u32::MAX;

/// What a statement's text tells a span, worked out once.
#[derive(Debug, Clone)]
struct Statement {
    /// `db.query.text`: sanitised unless configured otherwise.
    text: String,
    operation: Option<String>,
    collection: Option<String>,
    /// Trace context from a sqlcommenter comment.
    parent: Option<([u8; 16], [u8; 8])>,
}

impl Statement {
    fn new(raw: &str, sanitize: bool) -> Self {
        let described = sql::describe(raw, sanitize);
        Statement {
            text: described.text,
            operation: described.analysis.operation,
            collection: described.analysis.collection,
            parent: sql::traceparent(raw).and_then(ids::parse_traceparent),
        }
    }
}

/// Pairs one connection's commands with their answers.
#[derive(Debug)]
pub struct MysqlPairing {
    waiting: VecDeque<Command>,
    statements: LruCache<u32, Statement>,
    last_prepared: Option<u32>,
}

impl Default for MysqlPairing {
    fn default() -> Self {
        MysqlPairing {
            waiting: VecDeque::new(),
            statements: LruCache::new(NonZeroUsize::MIN.saturating_add(MAX_STATEMENTS - 1)),
            last_prepared: None,
        }
    }
}

impl Pairing for MysqlPairing {
    type Message = Message;

    fn push(
        &mut self,
        msg: Message,
        ctx: &SpanContext,
        out: &mut Vec<Span>,
        loss: &mut PairingLoss,
    ) {
        match msg {
            Message::Command(cmd) => match cmd.kind {
                CommandKind::StmtClose { statement_id } => {
                    self.statements.pop(&statement_id);
                }
                _ if cmd.kind.expects_response() => {
                    if self.waiting.len() >= MAX_WAITING {
                        self.waiting.pop_front();
                        loss.requests_unanswered += 1;
                    }
                    self.waiting.push_back(cmd);
                }
                _ => {}
            },
            Message::Response(resp) => {
                // Commands older than the one answered got no answer.
                while self.waiting.front().is_some_and(|c| c.id < resp.command_id) {
                    self.waiting.pop_front();
                    loss.requests_unanswered += 1;
                }
                match self.waiting.front() {
                    Some(c) if c.id == resp.command_id => {
                        if let Some(cmd) = self.waiting.pop_front() {
                            self.answered(&cmd, &resp, ctx, out);
                        }
                    }
                    _ => loss.responses_unpaired += 1,
                }
            }
        }
    }

    fn finish(&mut self, loss: &mut PairingLoss) {
        loss.requests_unanswered += self.waiting.len() as u64;
        self.waiting.clear();
        self.statements.clear();
        self.last_prepared = None;
    }
}

impl MysqlPairing {
    fn answered(&mut self, cmd: &Command, resp: &Response, ctx: &SpanContext, out: &mut Vec<Span>) {
        let sanitize = ctx.options.db.sanitize_query;
        let statement =
            |text: &Option<String>| text.as_deref().map(|t| Statement::new(t, sanitize));
        let (operation, statement) = match cmd.kind {
            CommandKind::Query => {
                let mut st = statement(&cmd.text);
                (st.as_mut().and_then(|s| s.operation.take()), st)
            }
            CommandKind::Prepare => {
                let st = statement(&cmd.text);
                if let (Some(id), Some(st)) = (resp.statement_id, &st) {
                    self.statements.put(id, st.clone());
                    self.last_prepared = Some(id);
                }
                (Some("PREPARE".to_owned()), st)
            }
            CommandKind::Execute { statement_id } => {
                let id = if statement_id == LAST_PREPARED {
                    self.last_prepared
                } else {
                    Some(statement_id)
                };
                let mut st = id.and_then(|id| self.statements.get(&id).cloned());
                let op = match &mut st {
                    Some(s) => s.operation.take(),
                    None => Some("EXECUTE".to_owned()),
                };
                (op, st)
            }
            CommandKind::InitDb => (Some("USE".to_owned()), None),
            CommandKind::Ping => (Some("PING".to_owned()), None),
            _ => return,
        };
        out.push(build_span(cmd, resp, operation, statement, ctx));
    }
}

/// Builds the span of one command and its answer (the statement's
/// strings move into the span; the operation is already out of it).
fn build_span(
    cmd: &Command,
    resp: &Response,
    operation: Option<String>,
    mut statement: Option<Statement>,
    ctx: &SpanContext,
) -> Span {
    let kind = match cmd.dir {
        Direction::Egress => SpanKind::Client,
        Direction::Ingress => SpanKind::Server,
    };
    let system = cmd.system.as_str();
    let collection = statement.as_mut().and_then(|s| s.collection.take());
    let namespace = match cmd.kind {
        CommandKind::InitDb => &cmd.text,
        _ => &cmd.namespace,
    };
    let mut attrs: Vec<(&'static str, AttrValue)> = Vec::with_capacity(14);
    attrs.push(("db.system.name", AttrValue::fixed(system)));
    if let Some(op) = &operation {
        attrs.push(("db.operation.name", op.as_str().into()));
    }
    let name = match (operation, &collection) {
        (Some(op), Some(coll)) => format!("{op} {coll}"),
        (Some(op), None) => op,
        (None, _) => system.to_owned(),
    };
    if let Some(coll) = collection {
        attrs.push(("db.collection.name", coll.into()));
    }
    if let Some(ns) = namespace {
        attrs.push(("db.namespace", ns.as_str().into()));
    }
    let parent = statement.as_ref().and_then(|s| s.parent);
    if let Some(st) = statement {
        attrs.push(("db.query.text", st.text.into()));
    }
    if let Some(rows) = resp.returned_rows {
        attrs.push((
            "db.response.returned_rows",
            i64::try_from(rows).unwrap_or(i64::MAX).into(),
        ));
    }
    db_endpoint_attrs(&mut attrs, kind, &ctx.endpoints);
    let status = match &resp.error {
        Some(err) => {
            attrs.push(("db.response.status_code", err.code.to_string().into()));
            let error_type = err
                .sql_state
                .clone()
                .unwrap_or_else(|| err.code.to_string());
            attrs.push(("error.type", error_type.clone().into()));
            // Servers quote the statement back in error messages ("... near
            // 'SELEC 'secret'' at line 1"): with sanitising on, only the code.
            SpanStatus::Error {
                description: if ctx.options.db.sanitize_query {
                    format!("{} ({error_type})", err.code)
                } else {
                    err.message.clone()
                },
            }
        }
        None => SpanStatus::Unset,
    };

    let (trace_id, parent_span_id) = match parent {
        Some((trace, span)) => (trace, Some(span)),
        None => (ids::new_trace_id(), None),
    };
    Span {
        trace_id,
        span_id: ids::new_span_id(),
        parent_span_id,
        name,
        kind,
        start_unix_ns: cmd.first_ns,
        end_unix_ns: resp.last_ns.max(cmd.first_ns),
        attributes: attrs,
        status,
        pid: ctx.pid,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::capture::Endpoint;
    use crate::capture::Endpoints;
    use crate::protocol::mysql::{DbSystem, Limits, MysqlConn, ServerError};
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

    fn fixture(text: &str, server_view: bool) -> Vec<(Direction, Vec<u8>)> {
        let (client, server) = if server_view {
            (Direction::Ingress, Direction::Egress)
        } else {
            (Direction::Egress, Direction::Ingress)
        };
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (tag, hex) = l.split_once(' ').expect("tagged line");
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                    .collect();
                (if tag == "C" { client } else { server }, bytes)
            })
            .collect()
    }

    /// Runs a recorded conversation through parser and pairing.
    fn spans_of(text: &str, server_view: bool, sanitize: bool) -> (Vec<Span>, PairingLoss) {
        let ctx = ctx(server_view, sanitize);
        let mut conn = MysqlConn::new(Limits::default());
        let mut pairing = MysqlPairing::default();
        let mut spans = Vec::new();
        let mut loss = PairingLoss::default();
        let records = fixture(text, server_view);
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
                pairing.push(m, &ctx, &mut spans, &mut loss);
            }
        }
        let mut msgs = Vec::new();
        StreamParser::close(&mut conn, 100_000, &mut msgs);
        for m in msgs {
            pairing.push(m, &ctx, &mut spans, &mut loss);
        }
        pairing.finish(&mut loss);
        (spans, loss)
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

    const BINARY_EOF: &str = include_str!("../protocol/fixtures/mysql/binary_eof.txt");
    const BINARY_DEPRECATE_EOF: &str =
        include_str!("../protocol/fixtures/mysql/binary_deprecate_eof.txt");
    const CLI_SESSION: &str = include_str!("../protocol/fixtures/mysql/cli_session.txt");
    const LARGE_RESULT: &str = include_str!("../protocol/fixtures/mysql/large_result.txt");

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
            s("INSERT INTO users (name, email, age) VALUES ('eve', 'eve@example.com', 29)")
                .as_ref()
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
        let mut loss = PairingLoss::default();
        for m in msgs {
            pairing.push(m, &ctx, &mut spans, &mut loss);
        }
        (spans, loss)
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
}
