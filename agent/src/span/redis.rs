//! Redis spans: commands paired with their replies in order, then turned into
//! spans with the OpenTelemetry database conventions.
//!
//! Redis answers commands in the order it received them, pipelined or not,
//! so pairing is first in, first out, with these exceptions:
//!
//! - Pushes (pub/sub messages, RESP3 push frames, MONITOR lines) answer
//!   nothing. Subscription confirmations answer the `SUBSCRIBE`-family
//!   command that asked for them: one per channel, and the command's span
//!   ends with the last one.
//! - `CLIENT REPLY OFF/SKIP` make the server send no reply to some commands;
//!   their spans end with the command itself.
//! - When the parser loses sync on the command side, commands may be
//!   missing: a barrier in the queue makes replies that began before the next
//!   command was sent count as unpaired, instead of shifting every pair.
//!   When it loses sync on the reply side, replies may be missing: every
//!   waiting command is dropped and counted.
//!
//! `SELECT n` is followed per connection (when its `+OK` arrives, or when the
//! `EXEC` of a transaction that queued it succeeds) for `db.namespace`.

use std::collections::VecDeque;

use super::model::{AttrValue, Span, SpanKind, SpanStatus};
use super::{Pairing, PairingLoss, SpanContext, db_endpoint_attrs, ids};
use crate::protocol::Direction;
use crate::protocol::redis::{Arg, Command, Message, Reply, ReplyKind, Role};

/// Commands waiting for replies, per connection; beyond this the oldest is
/// dropped and counted, and its reply is skipped when it comes.
const MAX_WAITING: usize = 512;
/// Arguments written in `db.query.text`; more are shown as `...`.
const MAX_RENDERED_ARGS: usize = 16;

/// Pairs one connection's commands with their replies.
#[derive(Debug, Default)]
pub struct RedisPairing {
    queue: VecDeque<Waiting>,
    /// Replies still to come for commands dropped from a full queue.
    skip: u64,
    /// The selected database.
    db: i64,
    /// A `SELECT` queued in the open transaction: applies if `EXEC` succeeds.
    tx_select: Option<i64>,
    reply_mode: ReplyMode,
}

/// `CLIENT REPLY` state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ReplyMode {
    #[default]
    On,
    Off,
    /// The next command gets no reply.
    SkipNext,
}

#[derive(Debug)]
enum Waiting {
    Command(Box<Pending>),
    /// Commands may be missing here (the parser lost sync).
    Barrier,
}

#[derive(Debug)]
struct Pending {
    cmd: Command,
    /// For `SUBSCRIBE` and friends: the confirmation kind that answers it.
    confirm: Option<&'static str>,
    /// Answers still expected (confirmations are one per channel).
    left: u64,
    /// When the last confirmation so far ended.
    end_ns: u64,
}

/// Something from the server that may answer a waiting command.
enum Answer<'a> {
    Reply(&'a Reply),
    Confirm {
        kind: &'a str,
        first_ns: u64,
        last_ns: u64,
    },
}

impl Answer<'_> {
    fn first_ns(&self) -> u64 {
        match self {
            Answer::Reply(r) => r.first_ns,
            Answer::Confirm { first_ns, .. } => *first_ns,
        }
    }

    fn last_ns(&self) -> u64 {
        match self {
            Answer::Reply(r) => r.last_ns,
            Answer::Confirm { last_ns, .. } => *last_ns,
        }
    }
}

/// The confirmation kind that answers a subscription command, and how many
/// confirmations it gets (one per channel; one when it names none).
fn confirmation(cmd: &Command) -> Option<(&'static str, u64)> {
    let kind = match cmd.name.as_str() {
        "SUBSCRIBE" => "subscribe",
        "PSUBSCRIBE" => "psubscribe",
        "SSUBSCRIBE" => "ssubscribe",
        "UNSUBSCRIBE" => "unsubscribe",
        "PUNSUBSCRIBE" => "punsubscribe",
        "SUNSUBSCRIBE" => "sunsubscribe",
        _ => return None,
    };
    Some((kind, cmd.arg_count.max(1)))
}

/// The database a `SELECT` names.
fn selected_db(cmd: &Command) -> Option<i64> {
    std::str::from_utf8(cmd.arg(0)?).ok()?.parse().ok()
}

impl RedisPairing {
    /// Does this command get no reply (`CLIENT REPLY OFF/SKIP`)? Updates
    /// the reply mode.
    fn suppressed(&mut self, cmd: &Command) -> bool {
        if cmd.name == "RESET" {
            self.reply_mode = ReplyMode::On;
            return false;
        }
        if cmd.name == "CLIENT" && cmd.subcommand().as_deref() == Some("REPLY") {
            match cmd.arg_upper(1).as_deref() {
                Some("ON") => {
                    self.reply_mode = ReplyMode::On;
                    return false;
                }
                Some("OFF") => {
                    self.reply_mode = ReplyMode::Off;
                    return true;
                }
                Some("SKIP") => {
                    if self.reply_mode != ReplyMode::Off {
                        self.reply_mode = ReplyMode::SkipNext;
                    }
                    return true;
                }
                // Anything else is an error, which is replied.
                _ => {}
            }
        }
        match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::SkipNext => {
                self.reply_mode = ReplyMode::On;
                true
            }
        }
    }

    fn command(
        &mut self,
        cmd: Command,
        ctx: &SpanContext,
        out: &mut Vec<Span>,
        loss: &mut PairingLoss,
    ) {
        if self.suppressed(&cmd) {
            let end = cmd.last_ns;
            out.push(build_span(&cmd, None, end, self.db, ctx));
            return;
        }
        let (confirm, left) = match confirmation(&cmd) {
            Some((kind, n)) => (Some(kind), n),
            None => (None, 1),
        };
        while self.queue.len() >= MAX_WAITING {
            if let Some(Waiting::Command(p)) = self.queue.pop_front() {
                loss.requests_unanswered += 1;
                self.skip = self.skip.saturating_add(p.left);
            }
        }
        let end_ns = cmd.last_ns;
        self.queue.push_back(Waiting::Command(Box::new(Pending {
            cmd,
            confirm,
            left,
            end_ns,
        })));
    }

    fn answer(
        &mut self,
        ans: Answer<'_>,
        ctx: &SpanContext,
        out: &mut Vec<Span>,
        loss: &mut PairingLoss,
    ) {
        let reply = match ans {
            Answer::Reply(r) => Some(r),
            Answer::Confirm { .. } => None,
        };
        let unpaired = |loss: &mut PairingLoss| {
            if reply.is_some() {
                loss.responses_unpaired += 1;
            }
        };
        if self.skip > 0 {
            self.skip -= 1;
            return;
        }
        loop {
            match self.queue.front_mut() {
                None => return unpaired(loss),
                Some(Waiting::Barrier) => {
                    // Past a barrier, an answer belongs to the next command
                    // only if it began after that command was sent.
                    let next = matches!(self.queue.get(1),
                        Some(Waiting::Command(p)) if ans.first_ns() >= p.cmd.first_ns);
                    if !next {
                        return unpaired(loss);
                    }
                    self.queue.pop_front();
                }
                Some(Waiting::Command(p)) => {
                    // An answer that ended before the command was sent is not its answer.
                    if ans.last_ns() < p.cmd.first_ns {
                        return unpaired(loss);
                    }
                    if let Answer::Confirm { kind, last_ns, .. } = ans
                        && p.confirm == Some(kind)
                    {
                        p.left = p.left.saturating_sub(1);
                        p.end_ns = last_ns;
                        if p.left == 0
                            && let Some(Waiting::Command(p)) = self.queue.pop_front()
                        {
                            out.push(build_span(&p.cmd, None, p.end_ns, self.db, ctx));
                        }
                        return;
                    }
                    // A confirmation nothing waits for is no reply.
                    let Some(reply) = reply else {
                        return;
                    };
                    if let Some(Waiting::Command(p)) = self.queue.pop_front() {
                        out.push(build_span(&p.cmd, Some(reply), reply.last_ns, self.db, ctx));
                        self.apply(&p.cmd, reply);
                    }
                    return;
                }
            }
        }
    }

    /// What a paired command changes on the connection.
    fn apply(&mut self, cmd: &Command, reply: &Reply) {
        match (cmd.name.as_str(), &reply.kind) {
            ("SELECT", ReplyKind::Ok) => {
                if let Some(db) = selected_db(cmd) {
                    self.db = db;
                }
            }
            ("SELECT", ReplyKind::Simple(s)) if s == "QUEUED" => self.tx_select = selected_db(cmd),
            ("EXEC", ReplyKind::Array { .. }) => {
                if let Some(db) = self.tx_select.take() {
                    self.db = db;
                }
            }
            ("EXEC" | "DISCARD", _) => self.tx_select = None,
            ("RESET", _) => {
                self.db = 0;
                self.tx_select = None;
            }
            _ => {}
        }
    }

    /// Drops every waiting command (their replies can no longer be told apart).
    fn flush(&mut self, loss: &mut PairingLoss) {
        for w in self.queue.drain(..) {
            if let Waiting::Command(_) = w {
                loss.requests_unanswered += 1;
            }
        }
        self.skip = 0;
    }
}

impl Pairing for RedisPairing {
    type Message = Message;

    fn push(
        &mut self,
        msg: Message,
        ctx: &SpanContext,
        out: &mut Vec<Span>,
        loss: &mut PairingLoss,
    ) {
        match msg {
            Message::Command(cmd) => self.command(cmd, ctx, out, loss),
            Message::Reply(reply) => self.answer(Answer::Reply(&reply), ctx, out, loss),
            Message::Push(push) => {
                if let Some(kind) = push.confirms() {
                    let ans = Answer::Confirm {
                        kind,
                        first_ns: push.first_ns,
                        last_ns: push.last_ns,
                    };
                    self.answer(ans, ctx, out, loss);
                }
            }
            Message::Desync(d) => match d.role {
                Some(Role::Commands) => {
                    if !matches!(self.queue.back(), Some(Waiting::Barrier)) {
                        if self.queue.len() >= MAX_WAITING
                            && let Some(Waiting::Command(p)) = self.queue.pop_front()
                        {
                            loss.requests_unanswered += 1;
                            self.skip = self.skip.saturating_add(p.left);
                        }
                        self.queue.push_back(Waiting::Barrier);
                    }
                }
                Some(Role::Replies) | None => self.flush(loss),
            },
        }
    }

    fn finish(&mut self, loss: &mut PairingLoss) {
        self.flush(loss);
    }
}

/// `db.operation.name`: the command, with the subcommand of container
/// commands (`CONFIG GET`).
pub fn operation_name(cmd: &Command) -> String {
    match cmd.subcommand() {
        Some(sub) => format!("{} {}", cmd.name, sub),
        None => cmd.name.clone(),
    }
}

/// Appends one argument as text to `out`: bare when plain, quoted with
/// escapes otherwise; `...` marks bytes not kept.
fn render_arg(arg: &Arg, out: &mut String) {
    let Arg::Kept { bytes, len } = arg else {
        out.push('?');
        return;
    };
    let plain = !bytes.is_empty()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_graphic() && !b"\"'\\".contains(&b));
    if plain {
        out.push_str(&String::from_utf8_lossy(bytes));
    } else {
        out.push('"');
        for &b in bytes {
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                b'\r' => out.push_str("\\r"),
                b'\t' => out.push_str("\\t"),
                b' '..=b'~' => out.push(char::from(b)),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.push_str("\\x");
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 15)]));
                }
            }
        }
        out.push('"');
    }
    if (bytes.len() as u64) < *len {
        out.push_str("...");
    }
}

/// `db.query.text`: the command as sent, or with `sanitize` its values
/// replaced by `?` (the first key of a keyed command is kept). The
/// arguments of `AUTH` and `HELLO` are never shown. Written into one
/// string: this runs for every command.
pub fn query_text(cmd: &Command, operation: &str, sanitize: bool) -> String {
    let mut text = String::with_capacity(operation.len() + 16);
    text.push_str(operation);
    let first = usize::from(cmd.subcommand().is_some());
    match cmd.name.as_str() {
        "AUTH" => {
            if cmd.arg_count > 0 {
                text.push_str(" ?");
            }
            return text;
        }
        "HELLO" => {
            let version = cmd
                .arg(0)
                .filter(|v| !sanitize && !v.is_empty() && v.iter().all(u8::is_ascii_digit));
            let mut hidden = cmd.arg_count;
            if let Some(v) = version {
                text.push(' ');
                text.push_str(&String::from_utf8_lossy(v));
                hidden -= 1;
            }
            if hidden > 0 {
                text.push_str(" ?");
            }
            return text;
        }
        _ => {}
    }
    let key = if sanitize { cmd.first_key() } else { None };
    let mut i = first;
    while (i as u64) < cmd.arg_count {
        text.push(' ');
        if i - first >= MAX_RENDERED_ARGS {
            text.push_str("...");
            break;
        }
        match cmd.args.get(i) {
            Some(arg) if !sanitize || key == Some(i) => render_arg(arg, &mut text),
            _ if sanitize => text.push('?'),
            _ => {
                text.push_str("...");
                break;
            }
        }
        i += 1;
    }
    text
}

/// `db.namespace`: the database index; the 16 a default server has
/// without allocating.
fn namespace_value(db: i64) -> AttrValue {
    const FIXED: [&str; 16] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
    ];
    match usize::try_from(db).ok().and_then(|i| FIXED.get(i)) {
        Some(text) => AttrValue::fixed(text),
        None => db.to_string().as_str().into(),
    }
}

/// Builds the span of one command, answered by `reply` (`None`: no reply is
/// sent, or the answers were subscription confirmations) and ending at `end_ns`.
pub fn build_span(
    cmd: &Command,
    reply: Option<&Reply>,
    end_ns: u64,
    db: i64,
    ctx: &SpanContext,
) -> Span {
    let kind = match cmd.dir {
        Direction::Egress => SpanKind::Client,
        Direction::Ingress => SpanKind::Server,
    };
    let operation = operation_name(cmd);
    let mut attrs: Vec<(&'static str, AttrValue)> = Vec::with_capacity(12);
    attrs.push(("db.system.name", AttrValue::fixed("redis")));
    attrs.push(("db.operation.name", operation.as_str().into()));
    attrs.push(("db.namespace", namespace_value(db)));
    attrs.push((
        "db.query.text",
        query_text(cmd, &operation, ctx.options.db.sanitize_query).into(),
    ));
    db_endpoint_attrs(&mut attrs, kind, &ctx.endpoints);
    let status = match reply.map(|r| &r.kind) {
        Some(ReplyKind::Error { prefix, message }) => {
            attrs.push(("db.response.status_code", prefix.clone().into()));
            attrs.push(("error.type", prefix.clone().into()));
            // Servers quote the command back in error messages ("unknown
            // command 'X', with args beginning with: ..."), arguments and
            // passwords included: with sanitising on, only the prefix.
            SpanStatus::Error {
                description: if message.is_empty() || ctx.options.db.sanitize_query {
                    prefix.clone()
                } else {
                    message.clone()
                },
            }
        }
        _ => SpanStatus::Unset,
    };
    Span {
        trace_id: ids::new_trace_id(),
        span_id: ids::new_span_id(),
        parent_span_id: None,
        name: operation,
        kind,
        start_unix_ns: cmd.first_ns,
        end_unix_ns: end_ns.max(cmd.first_ns),
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
    use crate::protocol::Chunk;
    use crate::protocol::redis::fixtures::{records, replay, resp, whole};
    use crate::protocol::redis::{Limits, RedisConn};
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
        let mut loss = PairingLoss::default();
        for m in msgs {
            pairing.push(m, ctx, &mut spans, &mut loss);
        }
        pairing.finish(&mut loss);
        (spans, loss)
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
                    b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
                        .to_vec()
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
        let ping = resp(&[b"PING"]);
        conn.feed(Direction::Egress, &whole(&ping, 0), &mut msgs);
        conn.feed(Direction::Ingress, &whole(b"+PONG\r\n", 10), &mut msgs);
        // A command the parser cannot read, then its reply.
        conn.feed(
            Direction::Egress,
            &whole(b"*2\r\n$3\r\nGET\r\n#x\r\n", 20),
            &mut msgs,
        );
        conn.feed(Direction::Ingress, &whole(b"$1\r\nv\r\n", 30), &mut msgs);
        conn.feed(
            Direction::Egress,
            &whole(&resp(&[b"INCR", b"n"]), 40),
            &mut msgs,
        );
        conn.feed(Direction::Ingress, &whole(b":7\r\n", 50), &mut msgs);
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
        conn.feed(Direction::Egress, &whole(&two, 0), &mut msgs);
        // The reply stream breaks: which reply answers which is unknown.
        conn.feed(
            Direction::Ingress,
            &whole(b"$1\r\na\r\n\x00\x01", 10),
            &mut msgs,
        );
        conn.feed(Direction::Ingress, &whole(b"junk", 20), &mut msgs);
        conn.feed(
            Direction::Egress,
            &whole(&resp(&[b"GET", b"c"]), 30),
            &mut msgs,
        );
        conn.feed(Direction::Ingress, &whole(b"$1\r\nc\r\n", 40), &mut msgs);
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
        let mut loss = PairingLoss::default();
        let reply = |first_ns, last_ns| {
            Message::Reply(Reply {
                dir: Direction::Ingress,
                kind: ReplyKind::Ok,
                truncated: false,
                first_ns,
                last_ns,
            })
        };
        pairing.push(reply(1, 2), &ctx, &mut spans, &mut loss);
        let mut conn = RedisConn::new(Limits::default());
        let mut msgs = Vec::new();
        conn.feed(Direction::Egress, &whole(&resp(&[b"PING"]), 100), &mut msgs);
        for m in msgs {
            pairing.push(m, &ctx, &mut spans, &mut loss);
        }
        // A reply that ended before the command was sent is not its reply.
        pairing.push(reply(50, 60), &ctx, &mut spans, &mut loss);
        assert!(spans.is_empty());
        pairing.push(reply(120, 130), &ctx, &mut spans, &mut loss);
        assert_eq!(spans.len(), 1);
        assert_eq!(loss.responses_unpaired, 2);
        // Unanswered commands are counted when the connection ends.
        let mut msgs = Vec::new();
        conn.feed(Direction::Egress, &whole(&resp(&[b"PING"]), 200), &mut msgs);
        conn.feed(Direction::Egress, &whole(&resp(&[b"PING"]), 300), &mut msgs);
        for m in msgs {
            pairing.push(m, &ctx, &mut spans, &mut loss);
        }
        pairing.finish(&mut loss);
        assert_eq!(loss.requests_unanswered, 2);
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
}
