//! Redis streaming parser: RESP2 and RESP3, both directions of a connection.
//!
//! One [`RedisConn`] follows a connection. Which direction carries commands is
//! decided by content: the first complete frame that is an array of bulk
//! strings naming a known command makes its direction the command side, and
//! the first frame that cannot be a command (`+OK`, `:1`, a map, ...) makes
//! its direction the reply side.
//!
//! Frames are parsed as a stream of tokens: header lines (a type byte, text,
//! CRLF) and length-prefixed payloads. Only header lines are buffered, and
//! only up to [`Limits::max_buffered_bytes`] (and far less for numeric
//! headers); payloads are skipped by length, keeping at most
//! [`MAX_ARG_BYTES`] bytes of the first [`MAX_KEPT_ARGS`] arguments of a
//! command (secrets excepted, see [`Arg::Secret`]) and of the first elements
//! of a reply. Bytes that moved but were not captured (a chunk's gap) are
//! skipped by length too: a 100 KB value with 1 KB captured costs nothing.
//!
//! When framing is lost (a header in a gap, invalid bytes), the side emits a
//! [`Message::Desync`] so pairing can stop trusting its order, and skips to the
//! next point where a frame can be shown to start: a later syscall that
//! starts like a frame, or `\r\n*<digits>\r\n$` inside the bytes. Skipped
//! bytes and lost-sync events are reported by [`super::StreamParser::take_resync`].
//!
//! Pub/sub messages, RESP3 push frames and MONITOR output are reported as
//! [`Message::Push`], never as replies: the parser sees the commands that put
//! the connection in those modes (`SUBSCRIBE`, `MONITOR`, `HELLO 3`, `RESET`)
//! before the bytes they cause.

pub mod span;

use sonde_common::PrefixPattern;

use super::{Chunk, Detect, Direction, GapEnd, Limits, Resync, StreamParser, SyncLoss, skip_gap};

/// Redis (RESP2 and RESP3) in the protocol table.
pub const PROTOCOL: super::ProtocolSpec = super::ProtocolSpec {
    name: "redis",
    detect,
    new_session,
    kernel_prefilter: KERNEL_PREFILTER,
    pipelines: true,
};

fn new_session(options: &super::SessionOptions) -> Box<dyn super::Session> {
    super::session::Parsed::<RedisConn, span::RedisPairing>::boxed(RedisConn::new(options.limits))
}

/// Redis: a command array, `*` and its first count digit.
const KERNEL_PREFILTER: &[PrefixPattern] = &[PrefixPattern::literal(b"*").range(1, b'0', b'9')];

/// Arguments of a command (after its name) kept, at most.
pub const MAX_KEPT_ARGS: usize = 5;
/// Bytes kept of a command's name and of each kept argument or element.
pub const MAX_ARG_BYTES: usize = 64;
/// Bytes kept of a simple-string or error reply.
pub const MAX_TEXT_BYTES: usize = 128;
/// Elements kept at the head of an array reply or a push.
pub const MAX_HEAD_ELEMS: usize = 3;
/// Top-level elements of an array recorded while it is parsed (the command
/// name and its kept arguments).
const MAX_ELEMS: usize = 1 + MAX_KEPT_ARGS;
/// Deepest nesting of aggregates accepted; deeper loses sync.
const MAX_DEPTH: usize = 32;
/// Longest header line with a number (`$`, `*`, `:`, ...), type byte excluded.
const MAX_HEADER_LINE: usize = 32;
/// Bytes of an inline command line kept.
const MAX_INLINE_BYTES: usize = 1024;
/// Largest bulk length believed (Redis allows 512 MB by default).
const MAX_BULK_LEN: u64 = 1 << 40;
/// Largest aggregate count believed.
const MAX_COUNT: u64 = 1 << 32;

/// What one direction of a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Commands,
    Replies,
}

/// One parsed message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Command(Command),
    Reply(Reply),
    /// Not an answer to a command: a RESP3 push frame, a RESP2 pub/sub
    /// message or subscription confirmation, or a MONITOR line.
    Push(Push),
    /// Sync was lost on one direction: messages may be missing there.
    Desync(Desync),
}

impl Message {
    pub fn dir(&self) -> Direction {
        match self {
            Message::Command(c) => c.dir,
            Message::Reply(r) => r.dir,
            Message::Push(p) => p.dir,
            Message::Desync(d) => d.dir,
        }
    }

    pub fn first_ns(&self) -> u64 {
        match self {
            Message::Command(c) => c.first_ns,
            Message::Reply(r) => r.first_ns,
            Message::Push(p) => p.first_ns,
            Message::Desync(d) => d.ns,
        }
    }

    pub fn last_ns(&self) -> u64 {
        match self {
            Message::Command(c) => c.last_ns,
            Message::Reply(r) => r.last_ns,
            Message::Push(p) => p.last_ns,
            Message::Desync(d) => d.ns,
        }
    }
}

/// A command: an array of bulk strings, or an inline command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The direction it travelled (Egress: the process is the client).
    pub dir: Direction,
    /// The command name in upper case (at most [`MAX_ARG_BYTES`] bytes of it).
    pub name: String,
    /// The first arguments after the name, at most [`MAX_KEPT_ARGS`].
    pub args: Vec<Arg>,
    /// Arguments after the name, kept or not.
    pub arg_count: u64,
    /// Sent as an inline command (a plain text line).
    pub inline: bool,
    /// The end of the command was not captured; arguments past the capture
    /// limit are missing and it was taken to end with its syscall.
    pub truncated: bool,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// One kept argument of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// The first bytes of the argument (at most [`MAX_ARG_BYTES`], fewer if
    /// the rest was not captured) and its full length.
    Kept { bytes: Vec<u8>, len: u64 },
    /// Not kept because it may be a secret: every argument of `AUTH`, the
    /// arguments of `HELLO` after the protocol version, values of
    /// `CONFIG SET`, rules of `ACL SETUSER`, anything after `MIGRATE ... AUTH`.
    Secret,
}

impl Arg {
    /// The whole argument, if it was kept whole.
    pub fn whole(&self) -> Option<&[u8]> {
        match self {
            Arg::Kept { bytes, len } if bytes.len() as u64 == *len => Some(bytes),
            _ => None,
        }
    }
}

impl Command {
    /// Argument `i` (0 = the first after the name), if kept whole.
    pub fn arg(&self, i: usize) -> Option<&[u8]> {
        self.args.get(i).and_then(Arg::whole)
    }

    /// Argument `i` in upper case, if kept whole and plain ASCII.
    pub fn arg_upper(&self, i: usize) -> Option<String> {
        let a = self.arg(i)?;
        (!a.is_empty() && a.iter().all(u8::is_ascii_graphic))
            .then(|| String::from_utf8_lossy(a).to_ascii_uppercase())
    }

    /// The subcommand of a container command (`CLIENT SETNAME` -> `SETNAME`).
    pub fn subcommand(&self) -> Option<String> {
        if !CONTAINERS.contains(&self.name.as_str()) {
            return None;
        }
        self.arg_upper(0)
            .filter(|s| s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    }

    /// Index in [`Command::args`] of the first key argument, for commands
    /// known to take keys.
    pub fn first_key(&self) -> Option<usize> {
        let name = self.name.as_str();
        let at = if let Some(sub) = self.subcommand() {
            match (name, sub.as_str()) {
                ("MEMORY", "USAGE")
                | ("OBJECT", "ENCODING" | "FREQ" | "IDLETIME" | "REFCOUNT")
                | ("XINFO", "CONSUMERS" | "GROUPS" | "STREAM")
                | ("XGROUP", "CREATE" | "CREATECONSUMER" | "DELCONSUMER" | "DESTROY" | "SETID") => {
                    Some(1)
                }
                _ => None,
            }
        } else if KEY_FIRST.binary_search(&name).is_ok() {
            Some(0)
        } else {
            match name {
                "BITOP" | "PFDEBUG" => Some(1),
                "MIGRATE" => Some(2),
                // numkeys, then the keys.
                "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => {
                    self.numkeys_at(1)
                }
                "LMPOP" | "SINTERCARD" | "ZDIFF" | "ZINTER" | "ZINTERCARD" | "ZMPOP" | "ZUNION" => {
                    self.numkeys_at(0)
                }
                "BLMPOP" | "BZMPOP" => self.numkeys_at(1),
                _ => None,
            }
        };
        at.filter(|&i| (i as u64) < self.arg_count)
    }

    /// The key after a `numkeys` argument at `i`, when numkeys is positive.
    fn numkeys_at(&self, i: usize) -> Option<usize> {
        let n = std::str::from_utf8(self.arg(i)?)
            .ok()?
            .parse::<u64>()
            .ok()?;
        (n > 0).then_some(i + 1)
    }
}

/// A reply to a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub dir: Direction,
    pub kind: ReplyKind,
    /// The end of the reply was not captured (it was taken to end with its
    /// syscall).
    pub truncated: bool,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// What a reply was.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyKind {
    /// `+OK`
    Ok,
    /// Another simple string (`+PONG`, `+QUEUED`, ...), its first
    /// [`MAX_TEXT_BYTES`] bytes.
    Simple(String),
    /// `-PREFIX message` or a RESP3 blob error. `prefix` is the first word
    /// (`ERR`, `WRONGTYPE`, `MOVED`, ...).
    Error {
        prefix: String,
        message: String,
    },
    Integer(i64),
    Double,
    Boolean(bool),
    BigNumber,
    /// A bulk or verbatim string of `len` bytes.
    Bulk {
        len: u64,
    },
    /// A null bulk string or array (`$-1`, `*-1`) or RESP3 null (`_`).
    Null,
    /// An array of `len` elements; the first [`MAX_HEAD_ELEMS`] in `head`.
    Array {
        len: u64,
        head: Vec<Elem>,
    },
    /// A map of `len` key/value pairs.
    Map {
        len: u64,
    },
    Set {
        len: u64,
    },
}

/// The start of one element of an array or push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elem {
    /// A bulk, verbatim or simple string: its first [`MAX_ARG_BYTES`] bytes
    /// and its length.
    Str {
        bytes: Vec<u8>,
        len: u64,
    },
    Int(i64),
    Null,
    /// Not kept: it may be a secret (see [`Arg::Secret`]).
    Secret,
    /// Any other type.
    Other,
}

impl Elem {
    fn as_str(&self) -> Option<&[u8]> {
        match self {
            Elem::Str { bytes, len } if bytes.len() as u64 == *len => Some(bytes),
            _ => None,
        }
    }
}

/// Something the server sent that answers no command.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub dir: Direction,
    /// The first element in lower case (`message`, `pmessage`, `subscribe`,
    /// `invalidate`, ...), or `monitor` for a MONITOR line.
    pub kind: String,
    /// Elements of the frame.
    pub len: u64,
    /// The first [`MAX_HEAD_ELEMS`] elements (for a MONITOR line: the line).
    pub head: Vec<Elem>,
    pub first_ns: u64,
    pub last_ns: u64,
}

impl Push {
    /// For a subscription confirmation (`subscribe`, `unsubscribe`, ...):
    /// the kind, which names the command it confirms in lower case.
    pub fn confirms(&self) -> Option<&str> {
        CONFIRM_KINDS
            .iter()
            .find(|k| **k == self.kind)
            .copied()
            .filter(|_| self.len == 3 && matches!(self.head.get(2), Some(Elem::Int(_))))
    }
}

/// Sync was lost on one direction at `ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desync {
    pub dir: Direction,
    /// What the direction carried, if known.
    pub role: Option<Role>,
    pub ns: u64,
}

/// Commands whose first argument is a subcommand.
pub const CONTAINERS: [&str; 16] = [
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DEBUG", "FUNCTION", "LATENCY", "MEMORY",
    "MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];

/// First elements of subscription confirmations.
const CONFIRM_KINDS: [&str; 6] = [
    "subscribe",
    "psubscribe",
    "ssubscribe",
    "unsubscribe",
    "punsubscribe",
    "sunsubscribe",
];

/// Commands whose first argument is a key (sorted; from `COMMAND` of Redis
/// 7.0, plus the hash-field expiry and vector-set commands of later ones).
const KEY_FIRST: &[&str] = &[
    "APPEND",
    "BITCOUNT",
    "BITFIELD",
    "BITFIELD_RO",
    "BITPOS",
    "BLMOVE",
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BZPOPMAX",
    "BZPOPMIN",
    "COPY",
    "DECR",
    "DECRBY",
    "DEL",
    "DUMP",
    "EXISTS",
    "EXPIRE",
    "EXPIREAT",
    "EXPIRETIME",
    "GEOADD",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEORADIUS",
    "GEORADIUSBYMEMBER",
    "GEORADIUSBYMEMBER_RO",
    "GEORADIUS_RO",
    "GEOSEARCH",
    "GEOSEARCHSTORE",
    "GET",
    "GETBIT",
    "GETDEL",
    "GETEX",
    "GETRANGE",
    "GETSET",
    "HDEL",
    "HEXISTS",
    "HEXPIRE",
    "HEXPIREAT",
    "HEXPIRETIME",
    "HGET",
    "HGETALL",
    "HGETDEL",
    "HGETEX",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HMSET",
    "HPERSIST",
    "HPEXPIRE",
    "HPEXPIREAT",
    "HPEXPIRETIME",
    "HPTTL",
    "HRANDFIELD",
    "HSCAN",
    "HSET",
    "HSETEX",
    "HSETNX",
    "HSTRLEN",
    "HTTL",
    "HVALS",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "LCS",
    "LINDEX",
    "LINSERT",
    "LLEN",
    "LMOVE",
    "LPOP",
    "LPOS",
    "LPUSH",
    "LPUSHX",
    "LRANGE",
    "LREM",
    "LSET",
    "LTRIM",
    "MGET",
    "MOVE",
    "MSET",
    "MSETNX",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PEXPIRETIME",
    "PFADD",
    "PFCOUNT",
    "PFMERGE",
    "PSETEX",
    "PTTL",
    "RENAME",
    "RENAMENX",
    "RESTORE",
    "RESTORE-ASKING",
    "RPOP",
    "RPOPLPUSH",
    "RPUSH",
    "RPUSHX",
    "SADD",
    "SCARD",
    "SDIFF",
    "SDIFFSTORE",
    "SET",
    "SETBIT",
    "SETEX",
    "SETNX",
    "SETRANGE",
    "SINTER",
    "SINTERSTORE",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "SMOVE",
    "SORT",
    "SORT_RO",
    "SPOP",
    "SPUBLISH",
    "SRANDMEMBER",
    "SREM",
    "SSCAN",
    "SSUBSCRIBE",
    "STRLEN",
    "SUBSTR",
    "SUNION",
    "SUNIONSTORE",
    "SUNSUBSCRIBE",
    "TOUCH",
    "TTL",
    "TYPE",
    "UNLINK",
    "VADD",
    "VCARD",
    "VDIM",
    "VEMB",
    "VGETATTR",
    "VINFO",
    "VLINKS",
    "VRANDMEMBER",
    "VREM",
    "VSETATTR",
    "VSIM",
    "WATCH",
    "XACK",
    "XADD",
    "XAUTOCLAIM",
    "XCLAIM",
    "XDEL",
    "XLEN",
    "XPENDING",
    "XRANGE",
    "XREVRANGE",
    "XSETID",
    "XTRIM",
    "ZADD",
    "ZCARD",
    "ZCOUNT",
    "ZDIFFSTORE",
    "ZINCRBY",
    "ZINTERSTORE",
    "ZLEXCOUNT",
    "ZMSCORE",
    "ZPOPMAX",
    "ZPOPMIN",
    "ZRANDMEMBER",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANGESTORE",
    "ZRANK",
    "ZREM",
    "ZREMRANGEBYLEX",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCAN",
    "ZSCORE",
    "ZUNIONSTORE",
];

/// Known commands whose first argument is not a key (sorted).
const OTHER_COMMANDS: &[&str] = &[
    "ACL",
    "ASKING",
    "AUTH",
    "BGREWRITEAOF",
    "BGSAVE",
    "BITOP",
    "BLMPOP",
    "BZMPOP",
    "CLIENT",
    "CLUSTER",
    "COMMAND",
    "CONFIG",
    "DBSIZE",
    "DEBUG",
    "DISCARD",
    "ECHO",
    "EVAL",
    "EVALSHA",
    "EVALSHA_RO",
    "EVAL_RO",
    "EXEC",
    "FAILOVER",
    "FCALL",
    "FCALL_RO",
    "FLUSHALL",
    "FLUSHDB",
    "FUNCTION",
    "HELLO",
    "INFO",
    "KEYS",
    "LASTSAVE",
    "LATENCY",
    "LMPOP",
    "LOLWUT",
    "MEMORY",
    "MIGRATE",
    "MODULE",
    "MONITOR",
    "MULTI",
    "OBJECT",
    "PFDEBUG",
    "PFSELFTEST",
    "PING",
    "PSUBSCRIBE",
    "PSYNC",
    "PUBLISH",
    "PUBSUB",
    "PUNSUBSCRIBE",
    "QUIT",
    "RANDOMKEY",
    "READONLY",
    "READWRITE",
    "REPLCONF",
    "REPLICAOF",
    "RESET",
    "ROLE",
    "SAVE",
    "SCAN",
    "SCRIPT",
    "SELECT",
    "SHUTDOWN",
    "SINTERCARD",
    "SLAVEOF",
    "SLOWLOG",
    "SUBSCRIBE",
    "SWAPDB",
    "SYNC",
    "TIME",
    "UNSUBSCRIBE",
    "UNWATCH",
    "WAIT",
    "WAITAOF",
    "XGROUP",
    "XINFO",
    "XREAD",
    "XREADGROUP",
    "ZDIFF",
    "ZINTER",
    "ZINTERCARD",
    "ZMPOP",
    "ZUNION",
];

/// Is `name` (upper case) a Redis command? Module commands (`JSON.GET`,
/// `FT.SEARCH`) count as known.
pub fn is_known_command(name: &str) -> bool {
    KEY_FIRST.binary_search(&name).is_ok()
        || OTHER_COMMANDS.binary_search(&name).is_ok()
        || name
            .split_once('.')
            .is_some_and(|(m, c)| is_word(m.as_bytes()) && is_word(c.as_bytes()))
}

fn is_word(s: &[u8]) -> bool {
    s.first().is_some_and(u8::is_ascii_alphabetic)
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Could these first bytes start a Redis conversation?
///
/// `Request` for `*<count>\r\n$<len>\r\n<letter>`: an array of bulk strings
/// whose first element starts with a letter (count and length of 1 to 9
/// digits, not starting with 0). `NeedMore` for a strict prefix of that.
pub fn detect(prefix: &[u8]) -> Detect {
    let mut i = 0;
    for part in [b'*', b'$'] {
        match prefix.get(i) {
            None => return Detect::NeedMore,
            Some(&b) if b == part => i += 1,
            Some(_) => return Detect::No,
        }
        let start = i;
        loop {
            match prefix.get(i) {
                None => return Detect::NeedMore,
                Some(b'1'..=b'9') => {}
                Some(b'0') if i > start => {}
                Some(b'\r') if i > start => break,
                Some(_) => return Detect::No,
            }
            i += 1;
            if i - start > 9 {
                return Detect::No;
            }
        }
        match prefix.get(i + 1) {
            None => return Detect::NeedMore,
            Some(b'\n') => i += 2,
            Some(_) => return Detect::No,
        }
    }
    match prefix.get(i) {
        None => Detect::NeedMore,
        Some(b) if b.is_ascii_alphabetic() => Detect::Request,
        Some(_) => Detect::No,
    }
}

/// A RESP type byte.
fn is_type_byte(b: u8) -> bool {
    b"+-:$*_,#!=(%~>|".contains(&b)
}

/// Could `data` start a reply frame? Checks the type byte and as much of the
/// first line as there is.
fn reply_start(data: &[u8]) -> bool {
    let Some((&t, rest)) = data.split_first() else {
        return false;
    };
    if !is_type_byte(t) {
        return false;
    }
    let end = rest.iter().position(|&b| b == b'\r').unwrap_or(rest.len());
    let text = rest.get(..end).unwrap_or_default();
    if let Some(&after) = rest.get(end + 1)
        && after != b'\n'
    {
        return false;
    }
    if end == rest.len() && text.len() > MAX_HEADER_LINE && !matches!(t, b'+' | b'-' | b'(') {
        return false;
    }
    let complete = end < rest.len();
    match t {
        b'+' | b'-' => text.iter().all(|&b| b >= b' ' || b == b'\t'),
        b'_' => text.is_empty(),
        b'#' => matches!(text, [] | [b't' | b'f']),
        b',' => text
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b)),
        _ => {
            let digits = text
                .strip_prefix(b"-")
                .or_else(|| text.strip_prefix(b"?"))
                .unwrap_or(text);
            digits.iter().all(u8::is_ascii_digit) && !(complete && text.is_empty())
        }
    }
}

/// Does `tail` start `*<digits>\r\n$` (an array of bulk strings)?
fn array_start(tail: &[u8]) -> bool {
    let Some(rest) = tail.strip_prefix(b"*") else {
        return false;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    (1..=10).contains(&digits) && rest.get(digits..).is_some_and(|r| r.starts_with(b"\r\n$"))
}

/// Length or count in a header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Len {
    Null,
    Streamed,
    N(u64),
}

fn parse_len(text: &[u8], max: u64) -> Option<Len> {
    match text {
        b"-1" => Some(Len::Null),
        b"?" => Some(Len::Streamed),
        _ => parse_u64(text).filter(|&n| n <= max).map(Len::N),
    }
}

fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in text {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

fn parse_i64(text: &[u8]) -> Option<i64> {
    let (neg, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, text),
    };
    let n = parse_u64(digits)?;
    if neg {
        0i64.checked_sub_unsigned(n)
    } else {
        i64::try_from(n).ok()
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Bytes of `b` kept, at most `cap`.
fn prefix(b: &[u8], cap: usize) -> Vec<u8> {
    b.get(..cap.min(b.len())).unwrap_or_default().to_vec()
}

/// Should argument `i` (0 = first after the name) of command `name` be
/// kept, given the arguments before it? Secrets are never kept.
fn keep_arg(name: &[u8], before: &[Elem], i: usize) -> bool {
    let is = |e: Option<&Elem>, word: &str| {
        e.and_then(Elem::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case(word.as_bytes()))
    };
    if name.eq_ignore_ascii_case(b"AUTH") {
        false
    } else if name.eq_ignore_ascii_case(b"HELLO") {
        i == 0
    } else if name.eq_ignore_ascii_case(b"MIGRATE") {
        !before
            .iter()
            .any(|e| is(Some(e), "AUTH") || is(Some(e), "AUTH2"))
    } else if name.eq_ignore_ascii_case(b"CONFIG") {
        // CONFIG SET name value [name value ...]: keep the names.
        !is(before.first(), "SET") || i == 0 || i % 2 == 1
    } else if name.eq_ignore_ascii_case(b"ACL") {
        // ACL SETUSER name rule...: rules may hold passwords.
        !is(before.first(), "SETUSER") || i <= 1
    } else {
        true
    }
}

/// Connection modes that change what replies mean, learnt from commands.
#[derive(Debug, Default, Clone, Copy)]
struct Modes {
    /// RESP2 subscriber: `message` arrays are pushes.
    pubsub: bool,
    /// MONITOR output follows.
    monitor: bool,
    /// RESP3 was negotiated: pub/sub messages come as push frames.
    resp3: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between frames.
    Idle,
    /// Reading a header line (or an inline command line).
    Line,
    /// Inside a length-prefixed payload of `len` bytes; `left` counts what
    /// is still to come, the final CRLF included.
    Payload { len: u64, left: u64 },
    /// Sync lost: looking for the next provable frame start.
    Lost,
}

/// How many elements an open aggregate still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    Count(u64),
    /// RESP3 streamed aggregate, ended by `.`; or a streamed string, ended
    /// by `;0`.
    Streamed,
}

#[derive(Debug, Clone, Copy)]
struct Level {
    left: Left,
    /// An attribute: its elements annotate the value after it.
    attr: bool,
    /// A streamed string (`$?`), made of `;` parts.
    string: bool,
}

/// Where the payload being read is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Capture {
    #[default]
    None,
    /// The top-level value itself (a bulk string or blob error).
    Top,
    /// Top-level element `i` of an array.
    Elem(usize),
}

/// What is learnt of the top-level value of a frame.
#[derive(Debug)]
struct Top {
    /// Its type byte.
    t: u8,
    /// Bulk or text length, or aggregate count; `None` for null.
    len: Option<u64>,
    /// Simple string, error line, or the kept start of a bulk payload.
    text: Vec<u8>,
    int: i64,
    flag: bool,
    /// The first top-level elements of an aggregate.
    elems: Vec<Elem>,
    /// Top-level elements begun.
    count: u64,
    /// Every top-level element so far is a bulk string.
    all_bulk: bool,
}

impl Top {
    fn new(t: u8) -> Self {
        Top {
            t,
            len: Some(0),
            text: Vec::new(),
            int: 0,
            flag: false,
            elems: Vec::new(),
            count: 0,
            all_bulk: true,
        }
    }
}

/// The frame being parsed on one side.
#[derive(Debug, Default)]
struct Frame {
    /// Open aggregates, innermost last.
    stack: Vec<Level>,
    top: Option<Top>,
    first_ns: u64,
    capture: Capture,
    /// The frame is an inline command line.
    inline: bool,
}

/// State shared by both directions and the chunk being fed.
struct Ctx<'a> {
    dir: Direction,
    limits: Limits,
    commands: &'a mut Option<Direction>,
    modes: &'a mut Modes,
    resync: &'a mut Resync,
    /// When a frame starting in this chunk started.
    first_ns: u64,
    end_ns: u64,
    out: &'a mut Vec<Message>,
}

impl Ctx<'_> {
    fn role(&self) -> Option<Role> {
        self.commands.map(|d| {
            if d == self.dir {
                Role::Commands
            } else {
                Role::Replies
            }
        })
    }
}

/// One direction of a connection.
#[derive(Debug)]
struct Side {
    phase: Phase,
    frame: Frame,
    /// Type byte of the line being read.
    line_type: Option<u8>,
    /// Kept bytes of the line after its type byte.
    line: Vec<u8>,
    /// Bytes of the line after its type byte, kept or not.
    line_len: usize,
    /// The last byte of the line so far was CR.
    line_cr: bool,
    /// Whether sync is lost; cleared by the next frame.
    sync: SyncLoss,
}

impl Side {
    fn new() -> Self {
        Side {
            phase: Phase::Idle,
            frame: Frame::default(),
            line_type: None,
            line: Vec::new(),
            line_len: 0,
            line_cr: false,
            sync: SyncLoss::default(),
        }
    }

    fn feed(&mut self, data: &[u8], gap: u64, cx: &mut Ctx<'_>) {
        // A syscall boundary is a candidate frame start.
        if self.phase == Phase::Lost && !data.is_empty() && plausible_start(data, cx.role()) {
            self.phase = Phase::Idle;
        }
        let mut pos = 0;
        while pos < data.len() {
            match self.phase {
                Phase::Idle => self.start_frame(data.get(pos).copied().unwrap_or(0), cx),
                Phase::Line => self.step_line(data, &mut pos, cx),
                Phase::Payload { .. } => self.step_payload(data, &mut pos, cx),
                Phase::Lost => self.step_lost(data, &mut pos, cx),
            }
        }
        if gap > 0 {
            self.skip_gap(gap, cx);
        }
    }

    /// Sync is lost here: drop the frame, report the loss once per episode.
    fn lose(&mut self, cx: &mut Ctx<'_>) {
        if self.sync.lose(cx.resync) {
            cx.out.push(Message::Desync(Desync {
                dir: cx.dir,
                role: cx.role(),
                ns: cx.end_ns,
            }));
        }
        self.phase = Phase::Lost;
        self.frame = Frame::default();
        self.clear_line();
    }

    fn clear_line(&mut self) {
        self.line_type = None;
        self.line.clear();
        self.line_len = 0;
        self.line_cr = false;
    }

    /// At a frame boundary with `b` next: start a frame if `b` can start one.
    fn start_frame(&mut self, b: u8, cx: &mut Ctx<'_>) {
        let role = cx.role();
        // Inline commands only where commands were already seen in RESP.
        let inline =
            (b.is_ascii_alphabetic() || b == b'\r' || b == b'\n') && role == Some(Role::Commands);
        let ok = inline
            || match role {
                Some(Role::Commands) => b == b'*',
                _ => is_type_byte(b),
            };
        if !ok {
            self.lose(cx);
            return;
        }
        self.frame = Frame {
            first_ns: cx.first_ns,
            inline,
            ..Frame::default()
        };
        self.clear_line();
        self.phase = Phase::Line;
    }

    /// Is the line being read free text (kept in part, any length)?
    fn text_line(&self) -> bool {
        self.frame.inline || matches!(self.line_type, Some(b'+' | b'-' | b'('))
    }

    fn step_line(&mut self, data: &[u8], pos: &mut usize, cx: &mut Ctx<'_>) {
        if self.line_type.is_none() && !self.frame.inline {
            let t = data.get(*pos).copied().unwrap_or(0);
            if !self.type_allowed(t, cx) {
                self.lose(cx);
                return;
            }
            self.line_type = Some(t);
            *pos += 1;
        }
        let rest = data.get(*pos..).unwrap_or_default();
        let (part, done) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (rest.get(..i).unwrap_or_default(), true),
            None => (rest, false),
        };
        *pos += part.len() + usize::from(done);
        let cap = if self.frame.inline {
            MAX_INLINE_BYTES
        } else if self.text_line() {
            MAX_TEXT_BYTES
        } else {
            MAX_HEADER_LINE
        }
        .min(cx.limits.max_buffered_bytes);
        let room = cap.saturating_sub(self.line.len());
        self.line
            .extend_from_slice(part.get(..room.min(part.len())).unwrap_or_default());
        self.line_len = self.line_len.saturating_add(part.len());
        if let Some(&last) = part.last() {
            self.line_cr = last == b'\r';
        }
        if !self.text_line() && self.line_len > cap {
            // No valid header is this long.
            self.lose(cx);
            return;
        }
        if done {
            self.end_line(cx);
        }
    }

    /// May a value of type `t` start here?
    fn type_allowed(&self, t: u8, cx: &Ctx<'_>) -> bool {
        let inner = self.frame.stack.last();
        if inner.is_some_and(|l| l.string) {
            // A streamed string holds only its parts.
            return t == b';';
        }
        if cx.role() == Some(Role::Commands) {
            return if inner.is_none() {
                t == b'*'
            } else {
                t == b'$'
            };
        }
        match t {
            b'.' => inner.is_some_and(|l| l.left == Left::Streamed),
            _ => is_type_byte(t),
        }
    }

    /// A line ended (its LF was just read).
    fn end_line(&mut self, cx: &mut Ctx<'_>) {
        let content_len = self.line_len.saturating_sub(usize::from(self.line_cr));
        if self.line.len() > content_len {
            self.line.truncate(content_len);
        }
        let whole = self.line.len() == content_len;
        let line = std::mem::take(&mut self.line);
        let t = self.line_type;
        let cr = self.line_cr;
        self.clear_line();
        if self.frame.inline {
            self.inline_command(&line, whole, cx);
        } else if !cr || line.contains(&b'\r') {
            // RESP lines end in CRLF and hold no other CR.
            self.lose(cx);
        } else if let Some(t) = t {
            self.header(t, &line, content_len as u64, cx);
        } else {
            self.lose(cx);
        }
        self.line = line;
        self.line.clear();
    }

    /// One header line of type `t` with its (kept) text.
    fn header(&mut self, t: u8, text: &[u8], text_len: u64, cx: &mut Ctx<'_>) {
        let commands = cx.role() == Some(Role::Commands);
        match t {
            b'$' | b'=' | b'!' => match parse_len(text, MAX_BULK_LEN) {
                Some(Len::N(n)) => {
                    if commands && self.frame.stack.len() != 1 {
                        return self.lose(cx);
                    }
                    let capture = self.begin_value(t, cx);
                    if let Some(top) = self.frame.top.as_mut()
                        && capture == Capture::Top
                    {
                        top.len = Some(n);
                    }
                    if let Capture::Elem(i) = capture
                        && let Some(e) = self.top_elem(i)
                    {
                        *e = Elem::Str {
                            bytes: Vec::new(),
                            len: n,
                        };
                    }
                    self.frame.capture = capture;
                    self.phase = Phase::Payload {
                        len: n,
                        left: n + 2,
                    };
                }
                Some(Len::Null) if t == b'$' && !commands => self.null(t, cx),
                Some(Len::Streamed) if t == b'$' && !commands => {
                    self.begin_value(t, cx);
                    self.open(Left::Streamed, false, true, cx);
                }
                _ => self.lose(cx),
            },
            b';' => match parse_len(text, MAX_BULK_LEN) {
                Some(Len::N(0)) => {
                    self.frame.stack.pop();
                    self.complete(cx);
                }
                Some(Len::N(n)) => {
                    if self.frame.stack.len() == 1
                        && let Some(top) = self.frame.top.as_mut()
                    {
                        top.len = Some(top.len.unwrap_or(0).saturating_add(n));
                    }
                    self.frame.capture = Capture::None;
                    self.phase = Phase::Payload {
                        len: n,
                        left: n + 2,
                    };
                }
                _ => self.lose(cx),
            },
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                let pairs = matches!(t, b'%' | b'|');
                match parse_len(text, MAX_COUNT) {
                    Some(Len::Null) if t == b'*' => self.null(t, cx),
                    Some(Len::N(n)) if t == b'|' => {
                        if n > 0 {
                            self.open(Left::Count(2 * n), true, false, cx);
                        } else {
                            self.phase = Phase::Line;
                        }
                    }
                    Some(Len::N(n)) => {
                        if commands && t != b'*' {
                            return self.lose(cx);
                        }
                        if self.begin_value(t, cx) == Capture::Top
                            && let Some(top) = self.frame.top.as_mut()
                        {
                            top.len = Some(n);
                        }
                        if n == 0 {
                            self.complete(cx);
                        } else {
                            let count = if pairs { 2 * n } else { n };
                            self.open(Left::Count(count), false, false, cx);
                        }
                    }
                    Some(Len::Streamed) if t != b'|' && !commands => {
                        if self.begin_value(t, cx) == Capture::Top
                            && let Some(top) = self.frame.top.as_mut()
                        {
                            top.len = None;
                        }
                        self.open(Left::Streamed, false, false, cx);
                    }
                    _ => self.lose(cx),
                }
            }
            b'.' => {
                let streamed = self
                    .frame
                    .stack
                    .last()
                    .is_some_and(|l| l.left == Left::Streamed && !l.string);
                if !streamed || !text.is_empty() {
                    return self.lose(cx);
                }
                self.frame.stack.pop();
                if self.frame.stack.is_empty()
                    && let Some(top) = self.frame.top.as_mut()
                {
                    let n = if top.t == b'%' {
                        top.count / 2
                    } else {
                        top.count
                    };
                    top.len = Some(n);
                }
                self.complete(cx);
            }
            b'+' | b'-' => {
                if text.iter().any(|&b| b < b' ' && b != b'\t') {
                    return self.lose(cx);
                }
                self.scalar(t, text, text_len, 0, false, cx);
            }
            b':' => match parse_i64(text) {
                Some(v) => self.scalar(t, text, text_len, v, false, cx),
                None => self.lose(cx),
            },
            b'_' if text.is_empty() => self.null(t, cx),
            b'#' => match text {
                b"t" => self.scalar(t, text, text_len, 0, true, cx),
                b"f" => self.scalar(t, text, text_len, 0, false, cx),
                _ => self.lose(cx),
            },
            b',' if !text.is_empty()
                && text
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b)) =>
            {
                self.scalar(t, text, text_len, 0, false, cx);
            }
            b'(' if parse_big(text) => self.scalar(t, text, text_len, 0, false, cx),
            _ => self.lose(cx),
        }
    }

    /// Element `i` of the top-level array, if recorded.
    fn top_elem(&mut self, i: usize) -> Option<&mut Elem> {
        self.frame.top.as_mut().and_then(|t| t.elems.get_mut(i))
    }

    /// A value of type `t` starts (not an attribute): records it in the
    /// top-level summary and says where its payload is kept.
    fn begin_value(&mut self, t: u8, cx: &Ctx<'_>) -> Capture {
        let depth = self.frame.stack.len();
        if depth == 0 {
            self.frame.top = Some(Top::new(t));
            return Capture::Top;
        }
        let top_level_elem = depth == 1
            && self
                .frame
                .stack
                .first()
                .is_some_and(|l| !l.attr && !l.string);
        let Some(top) = self.frame.top.as_mut() else {
            return Capture::None;
        };
        if !top_level_elem {
            return Capture::None;
        }
        let i = top.count;
        top.count += 1;
        if t != b'$' {
            top.all_bulk = false;
        }
        let Ok(i) = usize::try_from(i) else {
            return Capture::None;
        };
        if i >= MAX_ELEMS {
            return Capture::None;
        }
        let secret =
            i > 0
                && cx.role() != Some(Role::Replies)
                && top.t == b'*'
                && !top.elems.first().and_then(Elem::as_str).is_none_or(|name| {
                    keep_arg(name, top.elems.get(1..).unwrap_or_default(), i - 1)
                });
        if secret {
            top.elems.push(Elem::Secret);
            return Capture::None;
        }
        top.elems.push(Elem::Other);
        Capture::Elem(i)
    }

    /// A null value of type `t`.
    fn null(&mut self, t: u8, cx: &mut Ctx<'_>) {
        match self.begin_value(t, cx) {
            Capture::Top => {
                if let Some(top) = self.frame.top.as_mut() {
                    top.len = None;
                }
            }
            Capture::Elem(i) => {
                if let Some(e) = self.top_elem(i) {
                    *e = Elem::Null;
                }
            }
            Capture::None => {}
        }
        self.complete(cx);
    }

    /// A one-line value.
    fn scalar(
        &mut self,
        t: u8,
        text: &[u8],
        text_len: u64,
        int: i64,
        flag: bool,
        cx: &mut Ctx<'_>,
    ) {
        match self.begin_value(t, cx) {
            Capture::Top => {
                if let Some(top) = self.frame.top.as_mut() {
                    top.text = prefix(text, MAX_TEXT_BYTES);
                    top.len = Some(text_len);
                    top.int = int;
                    top.flag = flag;
                }
            }
            Capture::Elem(i) => {
                let elem = match t {
                    b'+' | b'-' => Elem::Str {
                        bytes: prefix(text, MAX_ARG_BYTES),
                        len: text_len,
                    },
                    b':' => Elem::Int(int),
                    _ => Elem::Other,
                };
                if let Some(e) = self.top_elem(i)
                    && *e != Elem::Secret
                {
                    *e = elem;
                }
            }
            Capture::None => {}
        }
        self.complete(cx);
    }

    /// Opens an aggregate (or attribute, or streamed string).
    fn open(&mut self, left: Left, attr: bool, string: bool, cx: &mut Ctx<'_>) {
        if self.frame.stack.len() >= MAX_DEPTH {
            return self.lose(cx);
        }
        self.frame.stack.push(Level { left, attr, string });
        self.phase = Phase::Line;
    }

    /// A value ended: count it in its aggregate, closing those it fills;
    /// emits the frame when the top-level value is done.
    fn complete(&mut self, cx: &mut Ctx<'_>) {
        self.frame.capture = Capture::None;
        loop {
            let Some(level) = self.frame.stack.last_mut() else {
                if self.frame.top.is_some() {
                    self.emit(false, cx);
                    self.phase = Phase::Idle;
                } else {
                    // An attribute at the top ended: its value follows.
                    self.phase = Phase::Line;
                }
                return;
            };
            match &mut level.left {
                Left::Streamed => break,
                Left::Count(n) => {
                    *n = n.saturating_sub(1);
                    if *n > 0 {
                        break;
                    }
                }
            }
            let done = self.frame.stack.pop();
            if done.is_some_and(|l| l.attr) {
                break;
            }
        }
        self.phase = Phase::Line;
    }

    fn step_payload(&mut self, data: &[u8], pos: &mut usize, cx: &mut Ctx<'_>) {
        let Phase::Payload { len, left } = self.phase else {
            return;
        };
        let rest = data.get(*pos..).unwrap_or_default();
        let take = left.min(rest.len() as u64) as usize;
        let bytes = rest.get(..take).unwrap_or_default();
        let offset = len + 2 - left;
        // Payload bytes, then (some of) the final CRLF.
        let payload = (len.saturating_sub(offset)).min(take as u64) as usize;
        self.keep(bytes.get(..payload).unwrap_or_default());
        for (k, &b) in bytes.iter().enumerate().skip(payload) {
            let at = offset + k as u64 - len;
            if b != if at == 0 { b'\r' } else { b'\n' } {
                *pos += k;
                return self.lose(cx);
            }
        }
        *pos += take;
        let left = left - take as u64;
        self.phase = Phase::Payload { len, left };
        if left == 0 {
            self.complete(cx);
        }
    }

    /// Keeps payload bytes where the capture says.
    fn keep(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match self.frame.capture {
            Capture::None => {}
            Capture::Top => {
                if let Some(top) = self.frame.top.as_mut() {
                    let room = MAX_TEXT_BYTES.saturating_sub(top.text.len());
                    top.text.extend_from_slice(&prefix(bytes, room));
                }
            }
            Capture::Elem(i) => {
                if let Some(Elem::Str { bytes: kept, .. }) = self.top_elem(i) {
                    let room = MAX_ARG_BYTES.saturating_sub(kept.len());
                    kept.extend_from_slice(&prefix(bytes, room));
                }
            }
        }
    }

    fn step_lost(&mut self, data: &[u8], pos: &mut usize, cx: &mut Ctx<'_>) {
        let rest = data.get(*pos..).unwrap_or_default();
        let mut from = 0;
        while let Some(i) = rest
            .get(from..)
            .and_then(|r| r.windows(3).position(|w| w == b"\r\n*"))
        {
            let candidate = from + i + 2;
            if array_start(rest.get(candidate..).unwrap_or_default()) {
                cx.resync.bytes += candidate as u64;
                *pos += candidate;
                self.phase = Phase::Idle;
                return;
            }
            from = candidate;
        }
        cx.resync.bytes += rest.len() as u64;
        *pos = data.len();
    }

    /// Bytes that moved but were not captured.
    fn skip_gap(&mut self, gap: u64, cx: &mut Ctx<'_>) {
        match self.phase {
            Phase::Lost => cx.resync.bytes += gap,
            Phase::Idle => {
                // A frame started in the gap: its header is lost.
                self.lose(cx);
                cx.resync.bytes += gap;
            }
            Phase::Line => {
                self.truncated_line(cx);
                self.lose(cx);
                cx.resync.bytes += gap;
            }
            Phase::Payload { len, mut left } => match skip_gap(&mut left, gap) {
                GapEnd::Inside => self.phase = Phase::Payload { len, left },
                GapEnd::AtEnd => self.complete(cx),
                GapEnd::Past(past) => {
                    self.complete(cx);
                    // What follows the payload started in the gap.
                    if self.phase != Phase::Idle {
                        self.emit(true, cx);
                    }
                    self.lose(cx);
                    cx.resync.bytes += past;
                }
            },
        }
    }

    /// The end of a line fell in a gap: report the frame as far as it is
    /// known if that says enough.
    fn truncated_line(&mut self, cx: &mut Ctx<'_>) {
        if self.frame.inline {
            // The name is known once a space follows it.
            let line = std::mem::take(&mut self.line);
            if line.iter().any(u8::is_ascii_whitespace) {
                self.inline_command(&line, false, cx);
            }
            return;
        }
        if self.frame.stack.is_empty()
            && self.frame.top.is_none()
            && let Some(t @ (b'+' | b'-')) = self.line_type
            && !self.line.contains(&b'\r')
        {
            let mut top = Top::new(t);
            top.text = prefix(&self.line, MAX_TEXT_BYTES);
            top.len = Some(self.line_len as u64);
            self.frame.top = Some(top);
        }
        self.emit(true, cx);
    }

    /// An inline command line (without its line end).
    fn inline_command(&mut self, line: &[u8], whole: bool, cx: &mut Ctx<'_>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return self.lose(cx);
        }
        let mut words = line
            .split(u8::is_ascii_whitespace)
            .filter(|w| !w.is_empty());
        let Some(name) = words.next() else {
            // Empty lines are ignored by the server.
            self.phase = Phase::Idle;
            return;
        };
        let mut top = Top::new(b'*');
        top.elems.push(Elem::Str {
            bytes: prefix(name, MAX_ARG_BYTES),
            len: name.len() as u64,
        });
        let mut count = 1u64;
        for word in words {
            let i = count as usize;
            if i < MAX_ELEMS {
                let keep = keep_arg(name, top.elems.get(1..).unwrap_or_default(), i - 1);
                top.elems.push(if keep {
                    Elem::Str {
                        bytes: prefix(word, MAX_ARG_BYTES),
                        len: word.len() as u64,
                    }
                } else {
                    Elem::Secret
                });
            }
            count += 1;
        }
        top.len = Some(count);
        top.count = count;
        self.frame.top = Some(top);
        self.emit(!whole, cx);
        self.phase = Phase::Idle;
    }

    /// The top-level value is done (or, with `truncated`, is as done as it
    /// will get): turn it into a message.
    fn emit(&mut self, truncated: bool, cx: &mut Ctx<'_>) {
        let frame = std::mem::take(&mut self.frame);
        let Some(top) = frame.top else {
            return;
        };
        if !truncated {
            self.sync.regain();
        }
        let name = command_name(&top, frame.inline);
        let role = match cx.role() {
            Some(role) => role,
            None => {
                let decided = match &name {
                    Some(name) if is_known_command(name) => Role::Commands,
                    // A subscriber seen from the middle: its direction carries replies.
                    _ if !frame.inline && message_shape(&top) => {
                        cx.modes.pubsub = true;
                        Role::Replies
                    }
                    // A command we do not know: wait for a frame that tells.
                    Some(_) => return,
                    None if frame.inline => return,
                    None => Role::Replies,
                };
                *cx.commands = Some(match decided {
                    Role::Commands => cx.dir,
                    Role::Replies => cx.dir.opposite(),
                });
                decided
            }
        };
        let (first_ns, last_ns) = (frame.first_ns, cx.end_ns.max(frame.first_ns));
        match role {
            Role::Commands => {
                // Empty arrays are ignored by the server.
                let Some(name) = name else {
                    return;
                };
                let arg_count = top.len.unwrap_or(0).saturating_sub(1);
                let cmd = Command {
                    dir: cx.dir,
                    name,
                    args: command_args(top),
                    arg_count,
                    inline: frame.inline,
                    truncated,
                    first_ns,
                    last_ns,
                };
                cx.modes.command(&cmd);
                cx.out.push(Message::Command(cmd));
            }
            Role::Replies => {
                let msg = reply_from(top, cx.modes, cx.dir, truncated, first_ns, last_ns);
                cx.out.push(msg);
            }
        }
    }

    fn close(&mut self) {
        self.phase = Phase::Idle;
        self.frame = Frame::default();
        self.clear_line();
        self.line = Vec::new();
        self.sync.regain();
    }
}

/// A big number: an optional sign and digits.
fn parse_big(text: &[u8]) -> bool {
    let digits = text
        .strip_prefix(b"-")
        .or_else(|| text.strip_prefix(b"+"))
        .unwrap_or(text);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// Could a frame start at `data` on a side with this role?
fn plausible_start(data: &[u8], role: Option<Role>) -> bool {
    match role {
        Some(Role::Commands) => detect(data) != Detect::No,
        Some(Role::Replies) => reply_start(data),
        None => detect(data) != Detect::No || reply_start(data),
    }
}

/// The command name in upper case, if the top-level value is an array of
/// bulk strings.
fn command_name(top: &Top, inline: bool) -> Option<String> {
    if top.t != b'*' || !(inline || top.all_bulk) || top.len.unwrap_or(0) == 0 {
        return None;
    }
    let Some(Elem::Str { bytes, .. }) = top.elems.first() else {
        return None;
    };
    if bytes.is_empty() {
        return None;
    }
    let mut name = match std::str::from_utf8(bytes) {
        Ok(name) => name.to_owned(),
        Err(_) => lossy(bytes),
    };
    name.make_ascii_uppercase();
    Some(name)
}

/// The kept arguments of a command (see [`command_name`]), moved out of
/// its top-level value.
fn command_args(top: Top) -> Vec<Arg> {
    top.elems
        .into_iter()
        .skip(1)
        .map(|e| match e {
            Elem::Str { bytes, len } => Arg::Kept { bytes, len },
            _ => Arg::Secret,
        })
        .collect()
}

/// A RESP2 pub/sub message: `message`/`smessage` with channel and payload,
/// or `pmessage` with pattern, channel and payload, all bulk strings.
fn message_shape(top: &Top) -> bool {
    let kind = top.elems.first().and_then(Elem::as_str);
    top.t == b'*'
        && top.all_bulk
        && match top.len {
            Some(3) => kind == Some(b"message") || kind == Some(b"smessage"),
            Some(4) => kind == Some(b"pmessage"),
            _ => false,
        }
}

impl Modes {
    /// A command was sent: note the modes it enters or leaves.
    fn command(&mut self, cmd: &Command) {
        match cmd.name.as_str() {
            "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" if cmd.arg_count > 0 => self.pubsub = true,
            "MONITOR" => self.monitor = true,
            "RESET" => *self = Modes::default(),
            "HELLO" => match cmd.arg(0) {
                Some(b"3") => self.resp3 = true,
                Some(b"2") => self.resp3 = false,
                _ => {}
            },
            _ => {}
        }
    }
}

/// Is this simple string a MONITOR line (`1700000000.123456 [0 ...`)?
fn monitor_line(text: &[u8]) -> bool {
    let secs = text.iter().take_while(|b| b.is_ascii_digit()).count();
    let Some(rest) = text.get(secs..).and_then(|r| r.strip_prefix(b".")) else {
        return false;
    };
    let frac = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    secs > 0 && frac > 0 && rest.get(frac..).is_some_and(|r| r.starts_with(b" ["))
}

/// Turns a top-level value from the reply side into a reply or a push.
fn reply_from(
    top: Top,
    modes: &mut Modes,
    dir: Direction,
    truncated: bool,
    first_ns: u64,
    last_ns: u64,
) -> Message {
    let head = |elems: &[Elem]| {
        elems
            .iter()
            .take(MAX_HEAD_ELEMS)
            .cloned()
            .collect::<Vec<_>>()
    };
    let kind_of = |elems: &[Elem]| {
        elems
            .first()
            .and_then(Elem::as_str)
            .map(|s| lossy(s).to_ascii_lowercase())
            .unwrap_or_default()
    };
    let push = |kind: String, len: u64, head: Vec<Elem>| {
        Message::Push(Push {
            dir,
            kind,
            len,
            head,
            first_ns,
            last_ns,
        })
    };
    if top.t == b'>' {
        modes.resp3 = true;
    }
    if top.t == b'>' || (top.t == b'*' && top.len.is_some()) {
        let kind = kind_of(&top.elems);
        let confirmation = top.len == Some(3)
            && CONFIRM_KINDS.contains(&kind.as_str())
            && matches!(top.elems.get(2), Some(Elem::Int(_)));
        if confirmation {
            if kind.ends_with("unsubscribe") {
                if top.elems.get(2) == Some(&Elem::Int(0)) {
                    modes.pubsub = false;
                }
            } else if !modes.resp3 {
                modes.pubsub = true;
            }
        }
        let message = modes.pubsub && !modes.resp3 && message_shape(&top);
        if top.t == b'>' || confirmation || message {
            return push(kind, top.len.unwrap_or(top.count), head(&top.elems));
        }
    }
    if top.t == b'+' && modes.monitor && monitor_line(&top.text) {
        let line = Elem::Str {
            bytes: prefix(&top.text, MAX_ARG_BYTES),
            len: top.len.unwrap_or(0),
        };
        return push("monitor".to_owned(), 1, vec![line]);
    }
    let kind = match top.t {
        b'+' if top.text == b"OK" => ReplyKind::Ok,
        b'+' => ReplyKind::Simple(lossy(&top.text)),
        b'-' | b'!' => {
            let text = lossy(&top.text);
            let (prefix, message) = match text.split_once(' ') {
                Some((p, m)) => (p.to_owned(), m.to_owned()),
                None => (text.clone(), String::new()),
            };
            let prefix = if prefix.is_empty() {
                "ERR".to_owned()
            } else {
                prefix.chars().take(32).collect()
            };
            ReplyKind::Error { prefix, message }
        }
        b':' => ReplyKind::Integer(top.int),
        b',' => ReplyKind::Double,
        b'#' => ReplyKind::Boolean(top.flag),
        b'(' => ReplyKind::BigNumber,
        b'_' => ReplyKind::Null,
        b'$' | b'=' => match top.len {
            Some(len) => ReplyKind::Bulk { len },
            None => ReplyKind::Null,
        },
        b'%' => ReplyKind::Map {
            len: top.len.unwrap_or(top.count / 2),
        },
        b'~' => ReplyKind::Set {
            len: top.len.unwrap_or(top.count),
        },
        _ => match top.len {
            Some(len) => ReplyKind::Array {
                len,
                head: head(&top.elems),
            },
            None => ReplyKind::Null,
        },
    };
    Message::Reply(Reply {
        dir,
        kind,
        truncated,
        first_ns,
        last_ns,
    })
}

/// Parser state of one Redis connection, both directions.
#[derive(Debug)]
pub struct RedisConn {
    limits: Limits,
    egress: Side,
    ingress: Side,
    /// Which direction carries commands, once known.
    commands: Option<Direction>,
    modes: Modes,
    resync: Resync,
}

impl RedisConn {
    pub fn new(limits: Limits) -> Self {
        RedisConn {
            limits,
            egress: Side::new(),
            ingress: Side::new(),
            commands: None,
            modes: Modes::default(),
            resync: Resync::default(),
        }
    }

    /// Feeds one syscall's bytes; complete messages are pushed to `out`.
    pub fn feed(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<Message>) {
        let side = match dir {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        };
        let mut cx = Ctx {
            dir,
            limits: self.limits,
            commands: &mut self.commands,
            modes: &mut self.modes,
            resync: &mut self.resync,
            first_ns: chunk.first_ns(dir),
            end_ns: chunk.last_ns(dir),
            out,
        };
        side.feed(chunk.data, chunk.gap_len(), &mut cx);
    }

    /// The connection closed: partial frames are dropped.
    pub fn close(&mut self, _end_ns: u64, _out: &mut Vec<Message>) {
        self.egress.close();
        self.ingress.close();
        self.modes = Modes::default();
    }

    /// Which direction carries commands, once known.
    pub fn command_direction(&self) -> Option<Direction> {
        self.commands
    }
}

impl StreamParser for RedisConn {
    type Message = Message;

    fn feed(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<Message>) {
        RedisConn::feed(self, dir, chunk, out);
    }

    fn close(&mut self, end_ns: u64, out: &mut Vec<Message>) {
        RedisConn::close(self, end_ns, out);
    }

    fn resync(&mut self) -> &mut Resync {
        &mut self.resync
    }
}

/// Fixture logs and helpers shared by the parser and span tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::protocol::test_reads;

    /// The recorded conversations in `fixtures/redis` (see its README).
    pub(crate) const LOGS: &[(&str, &[u8])] = &[
        ("resp2_basic", include_bytes!("fixtures/resp2_basic.log")),
        ("resp3_types", include_bytes!("fixtures/resp3_types.log")),
        ("multi_select", include_bytes!("fixtures/multi_select.log")),
        ("pipeline16", include_bytes!("fixtures/pipeline16.log")),
        ("client_reply", include_bytes!("fixtures/client_reply.log")),
        ("pubsub_resp2", include_bytes!("fixtures/pubsub_resp2.log")),
        ("pubsub_resp3", include_bytes!("fixtures/pubsub_resp3.log")),
        ("monitor", include_bytes!("fixtures/monitor.log")),
        ("auth", include_bytes!("fixtures/auth.log")),
        (
            "auth_user_resp3",
            include_bytes!("fixtures/auth_user_resp3.log"),
        ),
        ("hello_auth", include_bytes!("fixtures/hello_auth.log")),
    ];

    /// The reads of a recorded conversation. `client` says whether the traced
    /// process is the client (commands Egress) or the server (commands Ingress).
    pub(crate) fn records(name: &str, client: bool) -> Vec<(Direction, Vec<u8>)> {
        let (_, log) = LOGS
            .iter()
            .find(|(n, _)| *n == name)
            .copied()
            .unwrap_or(("", b""));
        let out = test_reads::directed(test_reads::from_log(log), client);
        assert!(!out.is_empty(), "no fixture {name}");
        out
    }

    pub(crate) use crate::protocol::test_chunks::{gapped, whole};

    /// Feeds records as syscalls 10 ns apart.
    pub(crate) fn replay(conn: &mut RedisConn, records: &[(Direction, Vec<u8>)]) -> Vec<Message> {
        let mut out = Vec::new();
        for (i, (dir, bytes)) in records.iter().enumerate() {
            conn.feed(*dir, &whole(bytes, 10 * i as u64), &mut out);
        }
        out
    }

    /// A RESP array of bulk strings.
    pub(crate) fn resp(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

#[cfg(test)]
mod tests;
