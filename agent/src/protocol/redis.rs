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
//! bytes and lost-sync events are reported by [`RedisConn::take_resync`].
//!
//! Pub/sub messages, RESP3 push frames and MONITOR output are reported as
//! [`Message::Push`], never as replies: the parser sees the commands that put
//! the connection in those modes (`SUBSCRIBE`, `MONITOR`, `HELLO 3`, `RESET`)
//! before the bytes they cause.

use super::{Chunk, Detect, Direction, StreamParser};

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

/// Bounds on what the parser buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of one incomplete header line (or inline command) kept
    /// while waiting for its end, per direction. Numeric headers never need
    /// more than 32 bytes and texts are cut at [`MAX_TEXT_BYTES`], so this
    /// matters only when it is smaller than those.
    pub max_buffered_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_buffered_bytes: 16384,
        }
    }
}

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
        (!a.is_empty() && a.iter().all(|b| b.is_ascii_graphic()))
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

/// Counters of lost sync.
#[derive(Debug, Default, Clone, Copy)]
struct Resync {
    bytes: u64,
    events: u64,
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
    /// Sync is lost and the loss was reported; cleared by the next frame.
    resyncing: bool,
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
            resyncing: false,
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
        if !self.resyncing {
            self.resyncing = true;
            cx.resync.events += 1;
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
                self.scalar(t, text, text_len, 0, false, cx)
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
            Phase::Payload { len, left } => {
                if gap < left {
                    self.phase = Phase::Payload {
                        len,
                        left: left - gap,
                    };
                    return;
                }
                self.complete(cx);
                let rest = gap - left;
                if rest == 0 {
                    return;
                }
                // What follows the payload started in the gap.
                if self.phase != Phase::Idle {
                    self.emit(true, cx);
                }
                self.lose(cx);
                cx.resync.bytes += rest;
            }
        }
    }

    /// The end of a line fell in a gap: report the frame as far as it is
    /// known if that says enough.
    fn truncated_line(&mut self, cx: &mut Ctx<'_>) {
        if self.frame.inline {
            // The name is known once a space follows it.
            let line = std::mem::take(&mut self.line);
            if line.iter().any(|b| b.is_ascii_whitespace()) {
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
            .split(|b| b.is_ascii_whitespace())
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
            self.resyncing = false;
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
        self.resyncing = false;
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

    /// Bytes skipped so far while resynchronising, and how many times sync
    /// was lost. Returns and resets both.
    pub fn take_resync(&mut self) -> (u64, u64) {
        let r = std::mem::take(&mut self.resync);
        (r.bytes, r.events)
    }

    /// Which direction carries commands, once known.
    pub fn command_direction(&self) -> Option<Direction> {
        self.commands
    }
}

impl StreamParser for RedisConn {
    type Message = Message;

    fn feed(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<Message>) {
        RedisConn::feed(self, dir, chunk, out)
    }

    fn close(&mut self, end_ns: u64, out: &mut Vec<Message>) {
        RedisConn::close(self, end_ns, out)
    }

    fn take_resync(&mut self) -> (u64, u64) {
        RedisConn::take_resync(self)
    }
}

/// Fixture logs and helpers shared by the parser and span tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// The recorded conversations in `fixtures/redis` (see its README).
    pub(crate) const LOGS: &[(&str, &[u8])] = &[
        (
            "resp2_basic",
            include_bytes!("fixtures/redis/resp2_basic.log"),
        ),
        (
            "resp3_types",
            include_bytes!("fixtures/redis/resp3_types.log"),
        ),
        (
            "multi_select",
            include_bytes!("fixtures/redis/multi_select.log"),
        ),
        (
            "pipeline16",
            include_bytes!("fixtures/redis/pipeline16.log"),
        ),
        (
            "client_reply",
            include_bytes!("fixtures/redis/client_reply.log"),
        ),
        (
            "pubsub_resp2",
            include_bytes!("fixtures/redis/pubsub_resp2.log"),
        ),
        (
            "pubsub_resp3",
            include_bytes!("fixtures/redis/pubsub_resp3.log"),
        ),
        ("monitor", include_bytes!("fixtures/redis/monitor.log")),
        ("auth", include_bytes!("fixtures/redis/auth.log")),
        (
            "auth_user_resp3",
            include_bytes!("fixtures/redis/auth_user_resp3.log"),
        ),
        (
            "hello_auth",
            include_bytes!("fixtures/redis/hello_auth.log"),
        ),
    ];

    /// The reads of a recorded conversation. `client` says whether the traced
    /// process is the client (commands Egress) or the server (commands Ingress).
    pub(crate) fn records(name: &str, client: bool) -> Vec<(Direction, Vec<u8>)> {
        let (_, mut log) = LOGS
            .iter()
            .find(|(n, _)| *n == name)
            .copied()
            .unwrap_or(("", b""));
        let mut out = Vec::new();
        while let [mark, a, b, c, d, rest @ ..] = log {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            let (bytes, next) = rest.split_at(len.min(rest.len()));
            let to_server = *mark == b'>';
            let dir = if to_server == client {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            out.push((dir, bytes.to_vec()));
            log = next;
        }
        assert!(!out.is_empty(), "no fixture {name}");
        out
    }

    /// A fully captured syscall.
    pub(crate) fn whole(data: &[u8], t: u64) -> Chunk<'_> {
        Chunk {
            data,
            total_len: data.len() as u64,
            start_ns: t,
            end_ns: t + 1,
        }
    }

    /// A syscall of `total` bytes of which `data` was captured.
    pub(crate) fn gapped(data: &[u8], total: usize, t: u64) -> Chunk<'_> {
        Chunk {
            data,
            total_len: total as u64,
            start_ns: t,
            end_ns: t + 1,
        }
    }

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
mod tests {
    use super::fixtures::*;
    use super::*;

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
            (
                b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$1\r\nv\r\n",
                Detect::Request,
            ),
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

    /// Deterministic xorshift generator for test inputs.
    use crate::protocol::test_rng::Rng;

    /// Feeds `stream` in random syscalls, some with uncaptured tails.
    fn feed_randomly(
        conn: &mut RedisConn,
        dir: Direction,
        stream: &[u8],
        rng: &mut Rng,
        out: &mut Vec<Message>,
    ) {
        let mut at = 0;
        let mut t = rng.next() % 1000;
        while at < stream.len() {
            let total = 1 + rng.below(300.min(stream.len() - at));
            let captured = if rng.below(4) == 0 {
                rng.below(total + 1)
            } else {
                total
            };
            conn.feed(dir, &gapped(&stream[at..at + captured], total, t), out);
            at += total;
            t += 10;
        }
    }

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
        for input in &inputs {
            for dir in [Direction::Egress, Direction::Ingress] {
                for whole_first in [true, false] {
                    let mut c = conn();
                    let mut out = Vec::new();
                    if whole_first {
                        c.feed(dir, &whole(input, 0), &mut out);
                    } else {
                        feed_randomly(&mut c, dir, input, &mut rng, &mut out);
                    }
                    c.close(1, &mut out);
                    assert!(
                        out.iter().all(|m| matches!(m, Message::Desync(_))),
                        "{out:?}"
                    );
                    let (skipped, lost) = c.take_resync();
                    assert!(skipped <= input.len() as u64);
                    assert_eq!(lost, 1, "sync is lost once, then stays lost");
                    assert_eq!(out.len(), 1);
                }
            }
        }
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
                let mut stream = bytes.repeat(1 + rng.below(3));
                for _ in 0..rng.below(4) {
                    let i = rng.below(stream.len());
                    stream[i] = rng.next() as u8;
                }
                if rng.below(3) == 0 {
                    let i = rng.below(stream.len());
                    stream.truncate(i);
                }
                feed_randomly(&mut c, dir, &stream, &mut rng, &mut out);
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
}
