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

use crate::protocol::Direction;
use crate::protocol::redis::{Arg, Command, Message, Reply, ReplyKind, Role};
use crate::span::model::{AttrValue, Rest, Span, SpanKind, SpanStatus};
use crate::span::{
    Pairing, PairingLoss, PairingOut, SpanContext, db_peer_attrs, db_server_attrs, new_span,
};

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

    fn command(&mut self, cmd: Command, out: &mut PairingOut<'_>) {
        if self.suppressed(&cmd) {
            let end = cmd.last_ns;
            out.spans.push(build_span(cmd, None, end, self.db, out.ctx));
            return;
        }
        let (confirm, left) = match confirmation(&cmd) {
            Some((kind, n)) => (Some(kind), n),
            None => (None, 1),
        };
        while self.queue.len() >= MAX_WAITING {
            if let Some(Waiting::Command(p)) = self.queue.pop_front() {
                out.loss.requests_unanswered += 1;
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

    fn answer(&mut self, ans: Answer<'_>, out: &mut PairingOut<'_>) {
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
                None => return unpaired(&mut out.loss),
                Some(Waiting::Barrier) => {
                    // Past a barrier, an answer belongs to the next command
                    // only if it began after that command was sent.
                    let next = matches!(self.queue.get(1),
                        Some(Waiting::Command(p)) if ans.first_ns() >= p.cmd.first_ns);
                    if !next {
                        return unpaired(&mut out.loss);
                    }
                    self.queue.pop_front();
                }
                Some(Waiting::Command(p)) => {
                    // An answer that ended before the command was sent is not its answer.
                    if ans.last_ns() < p.cmd.first_ns {
                        return unpaired(&mut out.loss);
                    }
                    if let Answer::Confirm { kind, last_ns, .. } = ans
                        && p.confirm == Some(kind)
                    {
                        p.left = p.left.saturating_sub(1);
                        p.end_ns = last_ns;
                        if p.left == 0
                            && let Some(Waiting::Command(p)) = self.queue.pop_front()
                        {
                            let Pending { cmd, end_ns, .. } = *p;
                            out.spans
                                .push(build_span(cmd, None, end_ns, self.db, out.ctx));
                        }
                        return;
                    }
                    // A confirmation nothing waits for is no reply.
                    let Some(reply) = reply else {
                        return;
                    };
                    if let Some(Waiting::Command(p)) = self.queue.pop_front() {
                        // The span names the database the command ran in,
                        // not the one a SELECT switches to.
                        let db = self.db;
                        self.apply(&p.cmd, reply);
                        let span = build_span(p.cmd, Some(reply), reply.last_ns, db, out.ctx);
                        out.spans.push(span);
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

    fn push(&mut self, msg: Message, out: &mut PairingOut<'_>) {
        match msg {
            Message::Command(cmd) => self.command(cmd, out),
            Message::Reply(reply) => self.answer(Answer::Reply(&reply), out),
            Message::Push(push) => {
                if let Some(kind) = push.confirms() {
                    let ans = Answer::Confirm {
                        kind,
                        first_ns: push.first_ns,
                        last_ns: push.last_ns,
                    };
                    self.answer(ans, out);
                }
            }
            Message::Desync(d) => match d.role {
                Some(Role::Commands) => {
                    if !matches!(self.queue.back(), Some(Waiting::Barrier)) {
                        if self.queue.len() >= MAX_WAITING
                            && let Some(Waiting::Command(p)) = self.queue.pop_front()
                        {
                            out.loss.requests_unanswered += 1;
                            self.skip = self.skip.saturating_add(p.left);
                        }
                        self.queue.push_back(Waiting::Barrier);
                    }
                }
                Some(Role::Replies) | None => self.flush(&mut out.loss),
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
    cmd: Command,
    reply: Option<&Reply>,
    end_ns: u64,
    db: i64,
    ctx: &SpanContext,
) -> Span {
    let kind = match cmd.dir {
        Direction::Egress => SpanKind::Client,
        Direction::Ingress => SpanKind::Server,
    };
    let operation = operation_name(&cmd);
    let mut attrs: Vec<(&'static str, AttrValue)> = Vec::with_capacity(12);
    attrs.push(("db.system.name", AttrValue::fixed("redis")));
    attrs.push(("db.operation.name", operation.as_str().into()));
    attrs.push(("db.namespace", namespace_value(db)));
    db_server_attrs(&mut attrs, kind, &ctx.endpoints);
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
    // The query text and the peer only for an exported span.
    let (first_ns, sanitize) = (cmd.first_ns, ctx.options.db.sanitize_query);
    let rest = Rest::later(move |span| {
        let text = query_text(&cmd, &span.name, sanitize);
        span.attributes.push(("db.query.text", text.into()));
        db_peer_attrs(span);
    });
    Span {
        attributes: attrs,
        status,
        rest,
        ..new_span(ctx, operation, kind, first_ns, end_ns)
    }
}

#[cfg(test)]
#[path = "span_tests.rs"]
mod tests;
