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

use crate::protocol::Direction;
use crate::protocol::mysql::{Command, CommandKind, Message, Response};
use crate::span::model::{AttrValue, Rest, Span, SpanKind, SpanStatus};
use crate::span::{
    Pairing, PairingLoss, PairingOut, SpanContext, db_peer_attrs, db_server_attrs, ids, new_span,
    sql,
};

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

    fn push(&mut self, msg: Message, out: &mut PairingOut<'_>) {
        match msg {
            Message::Command(cmd) => match cmd.kind {
                CommandKind::StmtClose { statement_id } => {
                    self.statements.pop(&statement_id);
                }
                _ if cmd.kind.expects_response() => {
                    if self.waiting.len() >= MAX_WAITING {
                        self.waiting.pop_front();
                        out.loss.requests_unanswered += 1;
                    }
                    self.waiting.push_back(cmd);
                }
                _ => {}
            },
            Message::Response(resp) => {
                // Commands older than the one answered got no answer.
                while self.waiting.front().is_some_and(|c| c.id < resp.command_id) {
                    self.waiting.pop_front();
                    out.loss.requests_unanswered += 1;
                }
                match self.waiting.front() {
                    Some(c) if c.id == resp.command_id => {
                        if let Some(cmd) = self.waiting.pop_front() {
                            self.answered(&cmd, &resp, out.ctx, out.spans);
                        }
                    }
                    _ => out.loss.responses_unpaired += 1,
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
    if let Some(rows) = resp.returned_rows {
        attrs.push((
            "db.response.returned_rows",
            i64::try_from(rows).unwrap_or(i64::MAX).into(),
        ));
    }
    db_server_attrs(&mut attrs, kind, &ctx.endpoints);
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

    // The statement's text and trace context, and the peer, only for an
    // exported span.
    let rest = Rest::later(move |span| {
        if let Some(st) = &statement {
            span.attributes
                .push(("db.query.text", st.text.as_str().into()));
            if let Some((trace, parent)) = st.parent {
                span.trace_id = trace;
                span.parent_span_id = Some(parent);
            }
        }
        db_peer_attrs(span);
    });
    Span {
        attributes: attrs,
        status,
        rest,
        ..new_span(ctx, name, kind, cmd.first_ns, resp.last_ns)
    }
}

#[cfg(test)]
#[path = "span_tests.rs"]
mod tests;
