//! MySQL / MariaDB client-server protocol: a streaming parser.
//!
//! One [`MysqlConn`] follows both directions of one connection. The wire
//! format is a sequence of packets, each a 3-byte little-endian payload
//! length and a sequence id; a payload of exactly `0xffffff` bytes goes on
//! in the next packet. Packets are framed per direction; payload bytes past
//! a chunk's captured prefix are skipped by length, so a large row or query
//! that was only partly copied keeps the stream in step.
//!
//! What a packet means depends on where the conversation is, so the parser
//! keeps the connection's phase:
//!
//! * the handshake: the server greeting (which tells MySQL from MariaDB and
//!   the server's capabilities), the client's handshake response (its
//!   capabilities and the default database; user names and credentials are
//!   skipped and never kept), then the authentication exchange, however many
//!   packets the auth plugins trade, until the server's OK or ERR;
//! * the command phase: the client sends one command at sequence id 0, the
//!   server answers with OK, ERR, a result set (column count, column
//!   definitions, rows, end marker; possibly several results in a row) or a
//!   prepared-statement answer. Each command is reported as a
//!   [`Command`], each complete answer as a [`Response`] carrying the id of
//!   the command it answers.
//!
//! A connection that switches to TLS (SSL request) or to the compressed
//! protocol, or starts a replication stream, is not parsed further: no
//! messages, no errors.
//!
//! When the agent attaches to a connection that is already open, parsing
//! starts at the first command; capabilities are then unknown, and result
//! sets with and without the intermediate EOF packet
//! (`CLIENT_DEPRECATE_EOF`) are told apart by packet shape.
//!
//! Losing sync: when a gap hides a packet header (a result set much larger
//! than the capture, spread over many reads) the framing of that direction
//! is lost. The answer being read is kept open; it ends either at a chunk
//! that is fully captured and ends with a result set's final packet (checked
//! against the packet before it), or, at the latest, when the client sends
//! its next command: the protocol is half-duplex, so the answer ended with
//! the last bytes the server sent before it, and the server's next bytes
//! start a new packet. Its row count is then unknown. Skipped bytes and
//! lost-sync events are reported by [`super::StreamParser::take_resync`].

pub mod span;

use std::collections::VecDeque;

use sonde_common::PrefixPattern;

use super::{Chunk, Detect, Direction, GapEnd, Limits, Resync, StreamParser, skip_gap};

/// MySQL and MariaDB in the protocol table.
pub const PROTOCOL: super::ProtocolSpec = super::ProtocolSpec {
    name: "mysql",
    detect,
    new_session,
    kernel_prefilter: KERNEL_PREFILTER,
    pipelines: false,
};

fn new_session(options: &super::SessionOptions) -> Box<dyn super::Session> {
    super::session::Parsed::<MysqlConn, span::MysqlPairing>::boxed(MysqlConn::new(options.limits))
}

/// A MySQL command packet: the 3-byte length, sequence id 0, then `command`.
const fn command_prefix(command: u8) -> PrefixPattern {
    PrefixPattern::ANY.byte(3, 0).byte(4, command)
}

/// MySQL: the commands a revived connection's spans start with.
const KERNEL_PREFILTER: &[PrefixPattern] = &[
    command_prefix(0x03), // COM_QUERY
    command_prefix(0x02), // COM_INIT_DB
    command_prefix(0x0e), // COM_PING
    command_prefix(0x16), // COM_STMT_PREPARE
    command_prefix(0x17), // COM_STMT_EXECUTE
];

/// Largest payload of one physical packet; a payload this long continues
/// in the next packet.
const MAX_PACKET: usize = 0xff_ffff;
/// Payload bytes kept of each server packet (OK, ERR, greeting, column
/// count, prepare answer all fit; rows and column definitions need only
/// their first bytes).
const RESPONSE_KEEP: usize = 1024;
/// Least payload kept of any packet, whatever the configured limit.
const MIN_KEEP: usize = 64;
/// Commands remembered while waiting for their answers; beyond this the
/// oldest is forgotten (and reported unanswered by the pairing).
const MAX_PENDING: usize = 64;
/// Longest error message kept, in bytes.
const MAX_ERROR_MESSAGE: usize = 512;
/// Longest result-set end packet (EOF, OK or ERR) looked for at the end of
/// a chunk while resynchronising inside rows.
const MAX_END_PACKET: usize = 600;
/// Most columns in a result set (MySQL allows 4096).
const MAX_COLUMNS: u64 = 0xffff;
/// Longest server version string in a greeting.
const MAX_VERSION_LEN: usize = 96;

// Client/server capability flags.
const CLIENT_CONNECT_WITH_DB: u32 = 1 << 3;
const CLIENT_COMPRESS: u32 = 1 << 5;
const CLIENT_PROTOCOL_41: u32 = 1 << 9;
const CLIENT_SSL: u32 = 1 << 11;
const CLIENT_SECURE_CONNECTION: u32 = 1 << 15;
const CLIENT_PLUGIN_AUTH_LENENC_DATA: u32 = 1 << 21;
const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;
const CLIENT_ZSTD_COMPRESSION: u32 = 1 << 26;
const CLIENT_QUERY_ATTRIBUTES: u32 = 1 << 27;

// Server status flags.
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;
const SERVER_SESSION_STATE_CHANGED: u16 = 0x4000;
/// Session-state entry type: the default schema changed.
const SESSION_TRACK_SCHEMA: u8 = 1;

// Command bytes.
const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_STATISTICS: u8 = 0x09;
const COM_PROCESS_INFO: u8 = 0x0a;
const COM_PING: u8 = 0x0e;
const COM_CHANGE_USER: u8 = 0x11;
const COM_BINLOG_DUMP: u8 = 0x12;
const COM_TABLE_DUMP: u8 = 0x13;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_BINLOG_DUMP_GTID: u8 = 0x1e;
/// MariaDB's bulk execution of a prepared statement.
const COM_STMT_BULK_EXECUTE: u8 = 0xfa;
/// Commands answered by a single OK, ERR or EOF packet and given no span:
/// create/drop db, refresh, shutdown, process kill, debug, register
/// replica, set option, reset connection.
const SIMPLE_COMMANDS: &[u8] = &[0x05, 0x06, 0x07, 0x08, 0x0c, 0x0d, 0x15, 0x1b, 0x1f];

/// First words accepted as the start of a statement by [`detect`].
const SQL_KEYWORDS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "REPLACE",
    "SET",
    "SHOW",
    "USE",
    "BEGIN",
    "START",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "CREATE",
    "DROP",
    "ALTER",
    "RENAME",
    "TRUNCATE",
    "CALL",
    "EXPLAIN",
    "DESCRIBE",
    "DESC",
    "WITH",
    "LOCK",
    "UNLOCK",
    "GRANT",
    "REVOKE",
    "ANALYZE",
    "OPTIMIZE",
    "CHECK",
    "CHECKSUM",
    "REPAIR",
    "LOAD",
    "DO",
    "HANDLER",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "XA",
    "KILL",
    "FLUSH",
    "RESET",
    "PURGE",
    "VALUES",
    "TABLE",
    "HELP",
    "SIGNAL",
    "RESIGNAL",
    "GET",
    "INSTALL",
    "UNINSTALL",
    "BINLOG",
    "CACHE",
    "CHANGE",
];

/// Which server the connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DbSystem {
    /// MySQL, or a server whose greeting was not seen.
    #[default]
    Mysql,
    Mariadb,
}

impl DbSystem {
    /// The `db.system.name` value.
    pub fn as_str(self) -> &'static str {
        match self {
            DbSystem::Mysql => "mysql",
            DbSystem::Mariadb => "mariadb",
        }
    }
}

/// What a command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// COM_QUERY: a text-protocol statement.
    Query,
    /// COM_STMT_PREPARE.
    Prepare,
    /// COM_STMT_EXECUTE (or MariaDB's COM_STMT_BULK_EXECUTE). MariaDB
    /// clients may use `u32::MAX` for "the statement just prepared".
    Execute { statement_id: u32 },
    /// COM_STMT_FETCH: more rows from a cursor.
    Fetch { statement_id: u32 },
    /// COM_STMT_RESET.
    StmtReset { statement_id: u32 },
    /// COM_STMT_CLOSE: has no answer.
    StmtClose { statement_id: u32 },
    /// COM_INIT_DB: change the default database.
    InitDb,
    /// COM_PING.
    Ping,
    /// COM_FIELD_LIST (deprecated).
    FieldList,
    /// COM_STATISTICS.
    Statistics,
    /// Any other command with an answer, by command byte.
    Other(u8),
}

impl CommandKind {
    /// Does the server answer this command?
    pub fn expects_response(&self) -> bool {
        !matches!(self, CommandKind::StmtClose { .. })
    }
}

/// A command the client sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The direction it travelled (Egress: the process is the client).
    pub dir: Direction,
    /// Numbers the connection's commands from 0; [`Response::command_id`]
    /// refers to it.
    pub id: u64,
    pub kind: CommandKind,
    /// The statement of a query or prepare, the database of an init-db.
    pub text: Option<String>,
    /// `text` is only the start of the statement (capture or buffer limit).
    pub text_truncated: bool,
    pub system: DbSystem,
    /// The connection's default database when the command was sent, if known.
    pub namespace: Option<String>,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// An error the server returned (ERR packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The server error number (1146 for "table doesn't exist", ...).
    pub code: u16,
    /// The five-character SQLSTATE, when the server sent one.
    pub sql_state: Option<String>,
    pub message: String,
}

/// The server's whole answer to one command (every result of a
/// multi-result answer included).
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub dir: Direction,
    /// The [`Command::id`] this answers.
    pub command_id: u64,
    /// Set when the answer was (or ended with) an ERR packet.
    pub error: Option<ServerError>,
    /// Rows of all result sets, when the answer had result sets and every
    /// row was counted.
    pub returned_rows: Option<u64>,
    /// Sum of the affected-row counts of the answer's OK packets.
    pub affected_rows: Option<u64>,
    /// The statement id a successful prepare returned.
    pub statement_id: Option<u32>,
    /// The end of the answer was seen. When false, sync was lost inside it
    /// and it was taken to end with the last bytes the server sent before
    /// the next command (or the close).
    pub complete: bool,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// One parsed command or response.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Command(Command),
    Response(Response),
}

impl Message {
    pub fn dir(&self) -> Direction {
        match self {
            Message::Command(c) => c.dir,
            Message::Response(r) => r.dir,
        }
    }

    pub fn first_ns(&self) -> u64 {
        match self {
            Message::Command(c) => c.first_ns,
            Message::Response(r) => r.first_ns,
        }
    }

    pub fn last_ns(&self) -> u64 {
        match self {
            Message::Command(c) => c.last_ns,
            Message::Response(r) => r.last_ns,
        }
    }
}

// ---------------------------------------------------------------------------
// Byte helpers. All return `None` rather than read past the end.

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*d.get(at)?, *d.get(at + 1)?]))
}

fn u24_at(d: &[u8], at: usize) -> Option<usize> {
    Some(
        usize::from(*d.get(at)?)
            | usize::from(*d.get(at + 1)?) << 8
            | usize::from(*d.get(at + 2)?) << 16,
    )
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([
        *d.get(at)?,
        *d.get(at + 1)?,
        *d.get(at + 2)?,
        *d.get(at + 3)?,
    ]))
}

/// A length-encoded integer at the start of `d`: value and bytes used.
/// `None` for the NULL marker (0xfb), the invalid 0xff, or short input.
fn lenenc(d: &[u8]) -> Option<(u64, usize)> {
    let first = *d.first()?;
    let width = match first {
        0..=0xfa => return Some((u64::from(first), 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let mut v = 0u64;
    for i in 0..width {
        v |= u64::from(*d.get(1 + i)?) << (8 * i);
    }
    Some((v, 1 + width))
}

/// A length-encoded string at the start of `d`: its bytes and bytes used.
fn lenenc_str(d: &[u8]) -> Option<(&[u8], usize)> {
    let (len, used) = lenenc(d)?;
    let len = usize::try_from(len).ok()?;
    let s = d.get(used..used.checked_add(len)?)?;
    Some((s, used + len))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A NUL-terminated string at `d[at..]`: its bytes and the index after the NUL.
fn nul_str(d: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = d.get(at..)?;
    let n = rest.iter().position(|&b| b == 0)?;
    Some((rest.get(..n)?, at + n + 1))
}

// ---------------------------------------------------------------------------
// Detection.

/// Could these first bytes start a MySQL conversation?
///
/// `Response` for a server greeting (HandshakeV10 at sequence id 0 with a
/// printable, NUL-terminated version), `Request` for a plausible command at
/// sequence id 0: COM_QUERY or COM_STMT_PREPARE with text starting with a
/// known SQL keyword, COM_PING, COM_INIT_DB with a printable name, or
/// COM_STMT_EXECUTE with a valid fixed part. `NeedMore` while the bytes are
/// a strict prefix of one of those.
pub fn detect(prefix: &[u8]) -> Detect {
    let (Some(len), Some(&seq)) = (u24_at(prefix, 0), prefix.get(3)) else {
        if prefix.len() == 3 && u24_at(prefix, 0) == Some(0) {
            return Detect::No;
        }
        return Detect::NeedMore;
    };
    if seq != 0 {
        return Detect::No;
    }
    detect_packet(len, prefix.get(4..).unwrap_or_default())
}

/// [`detect`] for a packet at sequence id 0 of payload length `len`, of
/// which `body` was seen (it may run on past the packet).
fn detect_packet(len: usize, body: &[u8]) -> Detect {
    if len == 0 {
        return Detect::No;
    }
    let body = body.get(..len.min(body.len())).unwrap_or_default();
    let Some(&first) = body.first() else {
        return Detect::NeedMore;
    };
    let rest = body.get(1..).unwrap_or_default();
    match first {
        0x0a => detect_greeting(len, rest),
        COM_QUERY | COM_STMT_PREPARE => detect_sql(len - 1, rest),
        COM_PING if len == 1 => Detect::Request,
        COM_INIT_DB if (2..=257).contains(&len) => {
            if rest.is_empty() {
                Detect::NeedMore
            } else if rest.iter().all(|&b| b > b' ' && b != 0x7f) {
                Detect::Request
            } else {
                Detect::No
            }
        }
        COM_STMT_EXECUTE if len >= 10 => {
            // statement id (4), flags (1), iteration count (4) = 1
            let (Some(&flags), Some(iterations)) = (rest.get(4), rest.get(5..9)) else {
                return Detect::NeedMore;
            };
            if flags <= 0x0f && iterations == [1, 0, 0, 0] {
                Detect::Request
            } else {
                Detect::No
            }
        }
        _ => Detect::No,
    }
}

fn detect_greeting(len: usize, rest: &[u8]) -> Detect {
    if !(20..=1024).contains(&len) {
        return Detect::No;
    }
    for (i, &b) in rest.iter().enumerate() {
        if b == 0 {
            // A version such as "8.0.36" or "5.5.5-10.11.6-MariaDB".
            return if i > 0 && i + 2 + 13 <= len {
                Detect::Response
            } else {
                Detect::No
            };
        }
        let ok = if i == 0 {
            b.is_ascii_digit()
        } else {
            (0x20..0x7f).contains(&b)
        };
        if !ok || i >= MAX_VERSION_LEN {
            return Detect::No;
        }
    }
    Detect::NeedMore
}

/// Statement text of length `len` of which `text` was seen: its first word
/// must be a known SQL keyword and what follows printable.
fn detect_sql(len: usize, text: &[u8]) -> Detect {
    let mut text = text;
    let mut len = len;
    // A MySQL 8 client with query attributes sends "no attributes" first.
    if let [0, 1, tail @ ..] = text {
        text = tail;
        len = len.saturating_sub(2);
    }
    let mut i = 0;
    // Leading spaces, parentheses and /* comments */.
    loop {
        match text.get(i) {
            None => {
                return if i < len {
                    Detect::NeedMore
                } else {
                    Detect::No
                };
            }
            Some(b' ' | b'\t' | b'\r' | b'\n' | b'(') if i < 64 => i += 1,
            Some(b'/') => match text.get(i + 1) {
                None => return Detect::NeedMore,
                Some(b'*') => {
                    let Some(end) = text
                        .get(i + 2..)
                        .and_then(|t| t.windows(2).position(|w| w == b"*/"))
                    else {
                        return if text.len() < 256 && text.iter().all(|&b| printable(b)) {
                            Detect::NeedMore
                        } else {
                            Detect::No
                        };
                    };
                    i += 2 + end + 2;
                }
                Some(_) => return Detect::No,
            },
            Some(_) => break,
        }
    }
    let start = i;
    while text.get(i).is_some_and(u8::is_ascii_alphabetic) {
        i += 1;
    }
    let word = text.get(start..i).unwrap_or_default();
    if i == text.len() && i < len {
        // The word may go on.
        let could = !word.is_empty()
            && word.len() <= 10
            && SQL_KEYWORDS.iter().any(|k| {
                k.as_bytes()
                    .get(..word.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(word))
            });
        return if could || word.is_empty() && start == text.len() {
            Detect::NeedMore
        } else {
            Detect::No
        };
    }
    let known = SQL_KEYWORDS
        .iter()
        .any(|k| k.as_bytes().eq_ignore_ascii_case(word));
    let tail_ok = text
        .get(i..)
        .unwrap_or_default()
        .iter()
        .take(64)
        .all(|&b| printable(b));
    if known && tail_ok {
        Detect::Request
    } else {
        Detect::No
    }
}

/// Text bytes a statement may contain (UTF-8 allowed).
fn printable(b: u8) -> bool {
    b >= 0x20 && b != 0x7f || matches!(b, b'\t' | b'\n' | b'\r')
}

// ---------------------------------------------------------------------------
// Framing.

/// One complete logical packet (continuation packets joined).
#[derive(Debug)]
struct Packet<'a> {
    /// Sequence id of its first physical packet.
    seq: u8,
    /// Sequence id of its last physical packet.
    last_seq: u8,
    /// Payload length on the wire.
    len: u64,
    /// The payload bytes that were captured and kept: a prefix of it.
    data: &'a [u8],
    /// When its first byte moved.
    first_ns: u64,
}

impl Packet<'_> {
    fn first(&self) -> Option<u8> {
        self.data.first().copied()
    }

    /// The whole payload is in `data`.
    fn whole(&self) -> bool {
        self.data.len() as u64 == self.len
    }

    /// An EOF packet: 0xfe with at most the 4.1 EOF's five bytes.
    fn is_eof(&self) -> bool {
        self.first() == Some(0xfe) && self.len <= 5
    }

    /// The last packet of a result set: EOF, or OK with an 0xfe header.
    fn is_end(&self) -> bool {
        self.first() == Some(0xfe) && self.len < MAX_PACKET as u64
    }
}

/// Assembles packets of one direction across chunks.
#[derive(Debug, Clone, Default)]
struct Framer {
    header: [u8; 4],
    header_len: usize,
    /// A header was read and its payload is being read.
    in_payload: bool,
    /// Payload bytes of the current physical packet still to come.
    remaining: usize,
    /// The current physical packet is `MAX_PACKET` long: another continues it.
    continues: bool,
    /// A logical packet has started.
    open: bool,
    seq: u8,
    last_seq: u8,
    len: u64,
    buf: Vec<u8>,
    first_ns: u64,
}

/// What a gap did to the packet being read.
enum GapEffect {
    /// The gap ended inside the packet.
    Inside,
    /// The packet ended exactly where the gap ended.
    Completed,
    /// The gap went on past the packet's end (or began where a header was
    /// due): framing is lost. `completed` tells whether a packet ended inside
    /// the gap; `skipped` counts the gap bytes after it.
    Lost { completed: bool, skipped: u64 },
}

impl Framer {
    fn at_boundary(&self) -> bool {
        !self.open && self.header_len == 0
    }

    fn reset(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        *self = Framer {
            buf,
            ..Framer::default()
        };
    }

    /// Reads bytes of `data` from `*pos`. Returns true when a logical packet
    /// is complete (read it with [`Framer::packet`]).
    fn advance(&mut self, data: &[u8], pos: &mut usize, keep: usize, first_ns: u64) -> bool {
        loop {
            if !self.in_payload {
                while self.header_len < 4 {
                    let (Some(&b), Some(slot)) =
                        (data.get(*pos), self.header.get_mut(self.header_len))
                    else {
                        return false;
                    };
                    *slot = b;
                    self.header_len += 1;
                    *pos += 1;
                }
                self.header_len = 0;
                let len = u24_at(&self.header, 0).unwrap_or(0);
                let seq = self.header[3];
                if !self.open {
                    self.open = true;
                    self.seq = seq;
                    self.len = 0;
                    self.buf.clear();
                    self.first_ns = first_ns;
                }
                self.last_seq = seq;
                self.len += len as u64;
                self.remaining = len;
                self.continues = len == MAX_PACKET;
                self.in_payload = true;
            }
            let avail = data.len().saturating_sub(*pos);
            let take = self.remaining.min(avail);
            let room = keep.saturating_sub(self.buf.len()).min(take);
            if let Some(bytes) = data.get(*pos..*pos + room) {
                self.buf.extend_from_slice(bytes);
            }
            *pos += take;
            self.remaining -= take;
            if self.remaining > 0 {
                return false;
            }
            self.in_payload = false;
            if !self.continues {
                return true;
            }
        }
    }

    /// Skips `gap` bytes that moved but were not captured.
    fn skip_gap(&mut self, gap: u64) -> GapEffect {
        if !self.in_payload {
            return GapEffect::Lost {
                completed: false,
                skipped: gap,
            };
        }
        let mut remaining = self.remaining as u64;
        let end = skip_gap(&mut remaining, gap);
        self.remaining = remaining as usize;
        let extra = match end {
            GapEnd::Inside => return GapEffect::Inside,
            GapEnd::AtEnd => 0,
            GapEnd::Past(past) => past,
        };
        self.in_payload = false;
        match (self.continues, extra) {
            // The continuation's header is the next captured byte.
            (true, 0) => GapEffect::Inside,
            (true, _) => GapEffect::Lost {
                completed: false,
                skipped: extra,
            },
            (false, 0) => GapEffect::Completed,
            (false, _) => GapEffect::Lost {
                completed: true,
                skipped: extra,
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Connection state.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing recognised yet.
    Start,
    /// The greeting was seen; the client's handshake response is next.
    Greeted,
    /// Authentication (after the handshake response or COM_CHANGE_USER),
    /// until the server's OK or ERR.
    Auth,
    Commands,
    /// TLS, compression or replication: nothing more is parsed.
    Opaque,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncState {
    Synced,
    /// Framing lost; bytes are skipped until a provable packet start.
    Lost,
    /// Lost, but the next chunk is known to start with a packet.
    AtNextChunk,
}

#[derive(Debug, Clone)]
struct Side {
    framer: Framer,
    sync: SyncState,
    /// End time of this direction's latest chunk.
    last_end_ns: u64,
}

impl Side {
    fn new() -> Self {
        Side {
            framer: Framer::default(),
            sync: SyncState::Synced,
            last_end_ns: 0,
        }
    }
}

/// The shape of the answer a command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// OK, ERR or EOF.
    Simple,
    /// OK, ERR, LOCAL INFILE request or result sets, possibly several.
    ResultSet,
    /// Prepare OK with parameter and column definitions, or ERR.
    Prepare,
    /// Rows then an end packet (COM_STMT_FETCH).
    Rows,
    /// Column definitions then an end packet (COM_FIELD_LIST).
    FieldList,
    /// A bare string packet (COM_STATISTICS).
    Statistics,
}

/// A command waiting for its answer.
#[derive(Debug, Clone)]
struct Pending {
    id: u64,
    expect: Expect,
    /// Sequence id of the command's last packet.
    seq: u8,
    /// The default database after a successful answer (COM_INIT_DB, `USE`).
    schema: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The first packet of the answer, or of its next result.
    First,
    Columns {
        left: u64,
    },
    /// The packet after the column definitions: EOF, a row or the end.
    ColumnsEnd,
    Rows,
    PrepareParams {
        left: u64,
        columns: u64,
    },
    /// After the parameter definitions: an EOF or the first column definition.
    PrepareParamsEnd {
        columns: u64,
    },
    PrepareColumns {
        left: u64,
    },
    /// The EOF after the prepare answer's column definitions.
    PrepareColumnsEnd,
    FieldList,
    /// The client is sending a file (LOAD DATA LOCAL); OK or ERR follows.
    Infile,
}

/// An answer being read.
#[derive(Debug, Clone)]
struct Reply {
    id: u64,
    expect: Expect,
    first_ns: u64,
    next_seq: u8,
    step: Step,
    rows: u64,
    rows_exact: bool,
    result_sets: u32,
    affected: Option<u64>,
    statement_id: Option<u32>,
    error: Option<ServerError>,
    schema: Option<String>,
}

/// What a packet did to the answer.
enum Flow {
    Continue,
    Done,
    Lost,
}

/// An OK packet's fields.
struct OkPacket {
    affected: u64,
    status: u16,
    schema: Option<String>,
}

/// Both directions of one MySQL connection.
#[derive(Debug, Clone)]
pub struct MysqlConn {
    limits: Limits,
    phase: Phase,
    /// The direction commands travel, once known.
    request_dir: Option<Direction>,
    egress: Side,
    ingress: Side,
    server_caps: Option<u32>,
    /// Result sets carry no intermediate EOF: from the handshake, or
    /// learned from a result set's shape.
    deprecate_eof: Option<bool>,
    query_attributes: bool,
    system: DbSystem,
    database: Option<String>,
    /// The database COM_CHANGE_USER asked for, set once it succeeds.
    change_user_db: Option<String>,
    pending: VecDeque<Pending>,
    reply: Option<Reply>,
    /// Sequence id of an EOF that may still follow a finished prepare answer
    /// (when it is unknown whether EOF packets are sent).
    trailing_eof: Option<u8>,
    /// The client is uploading a file for LOAD DATA LOCAL INFILE.
    infile: bool,
    next_id: u64,
    resync: Resync,
}

impl MysqlConn {
    pub fn new(limits: Limits) -> Self {
        MysqlConn {
            limits,
            phase: Phase::Start,
            request_dir: None,
            egress: Side::new(),
            ingress: Side::new(),
            server_caps: None,
            deprecate_eof: None,
            query_attributes: false,
            system: DbSystem::Mysql,
            database: None,
            change_user_db: None,
            pending: VecDeque::new(),
            reply: None,
            trailing_eof: None,
            infile: false,
            next_id: 0,
            resync: Resync::default(),
        }
    }

    fn side(&mut self, dir: Direction) -> &mut Side {
        match dir {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        }
    }

    fn is_server_side(&self, dir: Direction) -> bool {
        self.request_dir.is_some_and(|r| r != dir)
    }

    /// Payload bytes kept per packet of `dir`.
    fn keep(&self, dir: Direction) -> usize {
        let max = self.limits.max_buffered_bytes.max(MIN_KEEP);
        if self.is_server_side(dir) {
            max.min(RESPONSE_KEEP)
        } else {
            max
        }
    }

    /// Feeds one syscall's bytes; complete messages are pushed to `out`.
    pub fn feed(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<Message>) {
        if self.phase == Phase::Opaque {
            return;
        }
        let first_ns = chunk.first_ns(dir);
        let end_ns = chunk.last_ns(dir);
        let data = chunk.data;
        let gap = chunk.gap_len();
        self.side(dir).last_end_ns = end_ns;

        let mut pos = self.resume(dir, data, gap);
        while pos < data.len() {
            if self.phase == Phase::Opaque {
                return;
            }
            if self.side(dir).sync != SyncState::Synced {
                self.resync.bytes += (data.len() - pos) as u64;
                break;
            }
            let keep = self.keep(dir);
            // A whole packet inside this chunk is read in place.
            if self.side(dir).framer.at_boundary()
                && let Some(rest) = data.get(pos..)
                && let Some(len) = u24_at(rest, 0)
                && len < MAX_PACKET
                && let Some(&seq) = rest.get(3)
                && let Some(payload) = rest.get(4..4 + len)
            {
                pos += 4 + len;
                let packet = Packet {
                    seq,
                    last_seq: seq,
                    len: len as u64,
                    data: payload.get(..keep.min(len)).unwrap_or_default(),
                    first_ns,
                };
                self.on_packet(dir, &packet, end_ns, out);
                continue;
            }
            if self
                .side(dir)
                .framer
                .advance(data, &mut pos, keep, first_ns)
            {
                self.deliver_framed(dir, end_ns, out);
            }
        }
        if gap > 0 && self.phase != Phase::Opaque {
            if self.side(dir).sync != SyncState::Synced {
                self.resync.bytes += gap;
                return;
            }
            match self.side(dir).framer.skip_gap(gap) {
                GapEffect::Inside => {}
                GapEffect::Completed => self.deliver_framed(dir, end_ns, out),
                GapEffect::Lost { completed, skipped } => {
                    if completed {
                        self.deliver_framed(dir, end_ns, out);
                    }
                    self.lose(dir, skipped);
                }
            }
        }
    }

    /// Hands the packet the framer of `dir` completed to the state machine.
    fn deliver_framed(&mut self, dir: Direction, end_ns: u64, out: &mut Vec<Message>) {
        let side = self.side(dir);
        let buf = std::mem::take(&mut side.framer.buf);
        let packet = Packet {
            seq: side.framer.seq,
            last_seq: side.framer.last_seq,
            len: side.framer.len,
            data: &buf,
            first_ns: side.framer.first_ns,
        };
        side.framer.open = false;
        self.on_packet(dir, &packet, end_ns, out);
        let framer = &mut self.side(dir).framer;
        if framer.buf.is_empty() {
            framer.buf = buf;
            framer.buf.clear();
        }
    }

    /// Framing of `dir` is lost; `skipped` bytes are already known lost.
    fn lose(&mut self, dir: Direction, skipped: u64) {
        let side = self.side(dir);
        let was_in_sync = side.sync == SyncState::Synced;
        side.sync = SyncState::Lost;
        side.framer.reset();
        if was_in_sync {
            self.resync.events += 1;
        }
        self.resync.bytes += skipped;
        if self.is_server_side(dir)
            && let Some(reply) = &mut self.reply
        {
            reply.rows_exact = false;
        }
    }

    /// At the start of a chunk of a direction whose framing was lost: where
    /// parsing can pick up again (0, or `data.len()` when it cannot yet).
    fn resume(&mut self, dir: Direction, data: &[u8], gap: u64) -> usize {
        match self.side(dir).sync {
            SyncState::Synced => return 0,
            SyncState::AtNextChunk => {
                self.side(dir).sync = SyncState::Synced;
                return 0;
            }
            SyncState::Lost => {}
        }
        if data.is_empty() {
            return 0;
        }
        let start_ok = match detect(data) {
            Detect::Request => self.phase == Phase::Start || !self.is_server_side(dir),
            Detect::Response => self.phase == Phase::Start,
            Detect::No | Detect::NeedMore => false,
        };
        if start_ok {
            self.side(dir).sync = SyncState::Synced;
            return 0;
        }
        // Inside the rows of a result set: a fully captured chunk that ends
        // with the result set's last packet.
        if gap == 0
            && self.is_server_side(dir)
            && let Some(reply) = &mut self.reply
            && reply.step == Step::Rows
            && let Some((at, seq)) = rows_resume_point(data)
        {
            reply.next_seq = seq;
            self.resync.bytes += at as u64;
            self.side(dir).sync = SyncState::Synced;
            return at;
        }
        0
    }

    fn on_packet(&mut self, dir: Direction, p: &Packet<'_>, end_ns: u64, out: &mut Vec<Message>) {
        match self.phase {
            Phase::Opaque => {}
            Phase::Start => self.on_start(dir, p, end_ns, out),
            _ if self.is_server_side(dir) => self.on_server(dir, p, end_ns, out),
            _ => self.on_client(dir, p, end_ns, out),
        }
    }

    fn on_start(&mut self, dir: Direction, p: &Packet<'_>, end_ns: u64, out: &mut Vec<Message>) {
        let verdict = if p.seq == 0 {
            detect_packet(usize::try_from(p.len).unwrap_or(usize::MAX), p.data)
        } else {
            Detect::No
        };
        match verdict {
            Detect::Response => {
                self.request_dir = Some(dir.opposite());
                self.greeting(p.data);
                self.phase = Phase::Greeted;
            }
            Detect::Request => {
                self.request_dir = Some(dir);
                self.phase = Phase::Commands;
                self.command(dir, p, end_ns, out);
            }
            Detect::No | Detect::NeedMore => {
                let lost = p.len.saturating_add(4);
                self.lose(dir, lost);
            }
        }
    }

    fn greeting(&mut self, d: &[u8]) {
        let Some((version, mut at)) = nul_str(d, 1) else {
            return;
        };
        if version
            .windows(7)
            .any(|w| w.eq_ignore_ascii_case(b"mariadb"))
        {
            self.system = DbSystem::Mariadb;
        }
        // connection id (4), auth data (8), filler (1)
        at += 13;
        let low = u16_at(d, at);
        // character set (1), status (2)
        let high = u16_at(d, at + 5);
        self.server_caps = low.map(|l| u32::from(l) | u32::from(high.unwrap_or(0)) << 16);
    }

    fn on_client(&mut self, dir: Direction, p: &Packet<'_>, end_ns: u64, out: &mut Vec<Message>) {
        match self.phase {
            Phase::Greeted | Phase::Auth if p.seq != 0 => {
                if self.phase == Phase::Greeted && p.seq == 1 {
                    self.handshake_response(p.data);
                }
                // Anything else is authentication data: never looked at.
            }
            Phase::Greeted | Phase::Auth => {
                // A command: the end of the handshake was not seen.
                self.phase = Phase::Commands;
                self.command(dir, p, end_ns, out);
            }
            Phase::Commands => self.command(dir, p, end_ns, out),
            Phase::Start | Phase::Opaque => {}
        }
    }

    /// The client's handshake response: capabilities and database. The user
    /// name and auth data are stepped over, not kept.
    fn handshake_response(&mut self, d: &[u8]) {
        self.phase = Phase::Auth;
        let Some(caps) = u32_at(d, 0).or_else(|| u16_at(d, 0).map(u32::from)) else {
            return;
        };
        if caps & CLIENT_SSL != 0 {
            // An SSL request: TLS follows.
            self.phase = Phase::Opaque;
            return;
        }
        let effective = caps & self.server_caps.unwrap_or(u32::MAX);
        if effective & (CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION) != 0 {
            self.phase = Phase::Opaque;
            return;
        }
        self.deprecate_eof = Some(effective & CLIENT_DEPRECATE_EOF != 0);
        self.query_attributes = effective & CLIENT_QUERY_ATTRIBUTES != 0;
        if caps & CLIENT_PROTOCOL_41 == 0 || caps & CLIENT_CONNECT_WITH_DB == 0 {
            return;
        }
        // caps (4), max packet (4), charset (1), filler (23), user NUL.
        let Some((_, at)) = nul_str(d, 32) else {
            return;
        };
        let rest = d.get(at..).unwrap_or_default();
        let after_auth = if caps & CLIENT_PLUGIN_AUTH_LENENC_DATA != 0 {
            lenenc_str(rest).map(|(_, n)| at + n)
        } else if caps & CLIENT_SECURE_CONNECTION != 0 {
            rest.first().map(|&n| at + 1 + usize::from(n))
        } else {
            nul_str(d, at).map(|(_, n)| n)
        };
        if let Some((db, _)) = after_auth.and_then(|at| nul_str(d, at))
            && !db.is_empty()
        {
            self.database = Some(lossy(db));
        }
    }

    fn on_server(&mut self, dir: Direction, p: &Packet<'_>, end_ns: u64, out: &mut Vec<Message>) {
        match self.phase {
            Phase::Auth => match p.first() {
                Some(0x00) => {
                    self.phase = Phase::Commands;
                    if let Some(db) = self.change_user_db.take() {
                        self.database = Some(db);
                    }
                }
                Some(0xff) => {
                    self.phase = Phase::Commands;
                    self.change_user_db = None;
                }
                // Auth switch (0xfe), more data (0x01): the exchange goes on.
                _ => {}
            },
            Phase::Commands => self.response_packet(dir, p, end_ns, out),
            Phase::Start | Phase::Greeted | Phase::Opaque => {}
        }
    }

    /// A packet from the client in the command phase.
    fn command(&mut self, dir: Direction, p: &Packet<'_>, end_ns: u64, out: &mut Vec<Message>) {
        if self.infile {
            if p.seq != 0 {
                // File contents (never looked at); an empty packet ends them.
                if p.len == 0 {
                    self.infile = false;
                }
                return;
            }
            self.infile = false;
        }
        let Some(code) = p.first().filter(|_| p.seq == 0) else {
            self.lose(dir, 0);
            return;
        };
        let body = p.data.get(1..).unwrap_or_default();
        let truncated = !p.whole();
        let statement = || u32_at(body, 0);
        let (kind, text, expect, schema) = match code {
            COM_QUIT | COM_STMT_SEND_LONG_DATA => return,
            COM_INIT_DB => {
                let name = lossy(body);
                let schema = (!truncated).then(|| name.clone());
                (CommandKind::InitDb, Some(name), Expect::Simple, schema)
            }
            COM_QUERY => {
                let sql = query_text(body, self.query_attributes).map(lossy);
                let schema = sql.as_deref().and_then(use_statement);
                (CommandKind::Query, sql, Expect::ResultSet, schema)
            }
            COM_STMT_PREPARE => (
                CommandKind::Prepare,
                Some(lossy(body)),
                Expect::Prepare,
                None,
            ),
            COM_STMT_EXECUTE | COM_STMT_BULK_EXECUTE => match statement() {
                Some(statement_id) => (
                    CommandKind::Execute { statement_id },
                    None,
                    Expect::ResultSet,
                    None,
                ),
                None => {
                    self.lose(dir, 0);
                    return;
                }
            },
            COM_STMT_FETCH | COM_STMT_RESET | COM_STMT_CLOSE => {
                let Some(statement_id) = statement() else {
                    self.lose(dir, 0);
                    return;
                };
                match code {
                    COM_STMT_FETCH => (
                        CommandKind::Fetch { statement_id },
                        None,
                        Expect::Rows,
                        None,
                    ),
                    COM_STMT_RESET => (
                        CommandKind::StmtReset { statement_id },
                        None,
                        Expect::Simple,
                        None,
                    ),
                    _ => (
                        CommandKind::StmtClose { statement_id },
                        None,
                        Expect::Simple,
                        None,
                    ),
                }
            }
            COM_PING => (CommandKind::Ping, None, Expect::Simple, None),
            COM_FIELD_LIST => (CommandKind::FieldList, None, Expect::FieldList, None),
            COM_STATISTICS => (CommandKind::Statistics, None, Expect::Statistics, None),
            COM_PROCESS_INFO => (CommandKind::Other(code), None, Expect::ResultSet, None),
            COM_CHANGE_USER => {
                self.new_command(out);
                self.change_user(body);
                return;
            }
            COM_BINLOG_DUMP | COM_BINLOG_DUMP_GTID | COM_TABLE_DUMP => {
                self.phase = Phase::Opaque;
                return;
            }
            c if SIMPLE_COMMANDS.contains(&c) => {
                (CommandKind::Other(c), None, Expect::Simple, None)
            }
            _ => {
                self.lose(dir, 0);
                return;
            }
        };
        self.new_command(out);
        let id = self.next_id;
        self.next_id += 1;
        if kind.expects_response() {
            if self.pending.len() >= MAX_PENDING {
                self.pending.pop_front();
            }
            self.pending.push_back(Pending {
                id,
                expect,
                seq: p.last_seq,
                schema,
            });
        }
        let text_truncated = truncated && text.is_some();
        out.push(Message::Command(Command {
            dir,
            id,
            kind,
            text,
            text_truncated,
            system: self.system,
            namespace: self.database.clone(),
            first_ns: p.first_ns,
            last_ns: end_ns,
        }));
    }

    /// A new command started. If the server direction lost its framing, the
    /// answer it was reading ended before this command (the protocol is
    /// half-duplex): report it with what is known, and expect the server's
    /// next chunk to start a packet.
    fn new_command(&mut self, out: &mut Vec<Message>) {
        let Some(server) = self.request_dir.map(Direction::opposite) else {
            return;
        };
        if self.side(server).sync != SyncState::Lost {
            return;
        }
        let last = self.side(server).last_end_ns;
        if let Some(reply) = self.reply.take() {
            self.finish(server, reply, last, false, out);
        }
        self.pending.clear();
        self.trailing_eof = None;
        self.side(server).sync = SyncState::AtNextChunk;
    }

    /// COM_CHANGE_USER: authentication starts over; the new default
    /// database applies once it succeeds. User and auth data are skipped.
    fn change_user(&mut self, body: &[u8]) {
        self.phase = Phase::Auth;
        self.pending.clear();
        self.reply = None;
        let Some((_, at)) = nul_str(body, 0) else {
            return;
        };
        // With CLIENT_SECURE_CONNECTION (every 4.1+ client) the auth data
        // has a one-byte length.
        let Some(&n) = body.get(at) else {
            return;
        };
        if let Some((db, _)) = nul_str(body, at + 1 + usize::from(n))
            && !db.is_empty()
        {
            self.change_user_db = Some(lossy(db));
        }
    }

    /// A packet from the server in the command phase.
    fn response_packet(
        &mut self,
        dir: Direction,
        p: &Packet<'_>,
        end_ns: u64,
        out: &mut Vec<Message>,
    ) {
        let mut reply = match self.reply.take() {
            Some(reply) => reply,
            None => {
                if let Some(seq) = self.trailing_eof.take()
                    && p.seq == seq
                    && p.is_eof()
                {
                    self.deprecate_eof = Some(false);
                    return;
                }
                let Some(cmd) = self.pending.pop_front() else {
                    // An answer to a command that was not seen.
                    self.lose(dir, p.len.saturating_add(4));
                    return;
                };
                Reply {
                    id: cmd.id,
                    expect: cmd.expect,
                    first_ns: p.first_ns,
                    next_seq: cmd.seq.wrapping_add(1),
                    step: Step::First,
                    rows: 0,
                    rows_exact: true,
                    result_sets: 0,
                    affected: None,
                    statement_id: None,
                    error: None,
                    schema: cmd.schema,
                }
            }
        };
        // After a file upload the client's packets took sequence ids.
        if p.seq != reply.next_seq && reply.step != Step::Infile {
            self.reply = Some(reply);
            self.lose(dir, 0);
            return;
        }
        reply.next_seq = p.last_seq.wrapping_add(1);
        // MariaDB progress reports (ERR 0xffff) come before the real answer.
        if p.data.starts_with(&[0xff, 0xff, 0xff]) {
            self.reply = Some(reply);
            return;
        }
        match self.step(&mut reply, p) {
            Flow::Continue => self.reply = Some(reply),
            Flow::Done => self.finish(dir, reply, end_ns, true, out),
            Flow::Lost => {
                self.reply = Some(reply);
                self.lose(dir, 0);
            }
        }
    }

    fn step(&mut self, r: &mut Reply, p: &Packet<'_>) -> Flow {
        match r.step {
            Step::First => match r.expect {
                Expect::Simple => {
                    match p.first() {
                        Some(0x00) => {
                            self.ok(r, p);
                        }
                        Some(0xff) => r.error = Some(parse_err(p.data)),
                        _ => {}
                    }
                    Flow::Done
                }
                Expect::Statistics => Flow::Done,
                Expect::ResultSet => self.result_start(r, p),
                Expect::Prepare => match p.first() {
                    Some(0x00) => {
                        let (Some(id), Some(columns), Some(params)) =
                            (u32_at(p.data, 1), u16_at(p.data, 5), u16_at(p.data, 7))
                        else {
                            return Flow::Lost;
                        };
                        r.statement_id = Some(id);
                        let (columns, params) = (u64::from(columns), u64::from(params));
                        if params > 0 {
                            r.step = Step::PrepareParams {
                                left: params,
                                columns,
                            };
                            Flow::Continue
                        } else if columns > 0 {
                            r.step = Step::PrepareColumns { left: columns };
                            Flow::Continue
                        } else {
                            Flow::Done
                        }
                    }
                    Some(0xff) => {
                        r.error = Some(parse_err(p.data));
                        Flow::Done
                    }
                    _ => Flow::Lost,
                },
                Expect::Rows => {
                    r.step = Step::Rows;
                    r.result_sets += 1;
                    self.row_or_end(r, p)
                }
                Expect::FieldList => {
                    r.step = Step::FieldList;
                    self.step(r, p)
                }
            },
            Step::Columns { left } => {
                r.step = if left > 1 {
                    Step::Columns { left: left - 1 }
                } else {
                    Step::ColumnsEnd
                };
                Flow::Continue
            }
            Step::ColumnsEnd => {
                if self.deprecate_eof != Some(true) && p.is_eof() {
                    self.deprecate_eof = Some(false);
                    let status = u16_at(p.data, 3).unwrap_or(0);
                    if status & SERVER_STATUS_CURSOR_EXISTS != 0 {
                        // Rows come later, through COM_STMT_FETCH.
                        return Flow::Done;
                    }
                    r.step = Step::Rows;
                    return Flow::Continue;
                }
                if self.deprecate_eof.is_none() {
                    self.deprecate_eof = Some(true);
                }
                r.step = Step::Rows;
                self.row_or_end(r, p)
            }
            Step::Rows => self.row_or_end(r, p),
            Step::PrepareParams { left, columns } => {
                if left > 1 {
                    r.step = Step::PrepareParams {
                        left: left - 1,
                        columns,
                    };
                    return Flow::Continue;
                }
                match (self.deprecate_eof, columns) {
                    (Some(true), 0) => Flow::Done,
                    (Some(true), _) => {
                        r.step = Step::PrepareColumns { left: columns };
                        Flow::Continue
                    }
                    (None, 0) => {
                        self.trailing_eof = Some(r.next_seq);
                        Flow::Done
                    }
                    _ => {
                        r.step = Step::PrepareParamsEnd { columns };
                        Flow::Continue
                    }
                }
            }
            Step::PrepareParamsEnd { columns } => {
                if p.is_eof() {
                    self.deprecate_eof = Some(false);
                    if columns == 0 {
                        return Flow::Done;
                    }
                    r.step = Step::PrepareColumns { left: columns };
                    return Flow::Continue;
                }
                if columns == 0 || self.deprecate_eof == Some(false) {
                    return Flow::Lost;
                }
                // No EOF: this is the first column definition.
                self.deprecate_eof = Some(true);
                r.step = Step::PrepareColumns { left: columns };
                self.step(r, p)
            }
            Step::PrepareColumns { left } => {
                if left > 1 {
                    r.step = Step::PrepareColumns { left: left - 1 };
                    return Flow::Continue;
                }
                match self.deprecate_eof {
                    Some(true) => Flow::Done,
                    Some(false) => {
                        r.step = Step::PrepareColumnsEnd;
                        Flow::Continue
                    }
                    None => {
                        self.trailing_eof = Some(r.next_seq);
                        Flow::Done
                    }
                }
            }
            Step::PrepareColumnsEnd => {
                if p.is_eof() {
                    Flow::Done
                } else {
                    Flow::Lost
                }
            }
            Step::FieldList => match p.first() {
                Some(0xff) => {
                    r.error = Some(parse_err(p.data));
                    Flow::Done
                }
                _ if p.is_end() => Flow::Done,
                _ => Flow::Continue,
            },
            Step::Infile => match p.first() {
                Some(0x00) => self.after_ok(r, p),
                Some(0xff) => {
                    r.error = Some(parse_err(p.data));
                    Flow::Done
                }
                _ => Flow::Lost,
            },
        }
    }

    /// The first packet of a (next) result of a query or execute.
    fn result_start(&mut self, r: &mut Reply, p: &Packet<'_>) -> Flow {
        match p.first() {
            None => Flow::Lost,
            Some(0x00) => self.after_ok(r, p),
            Some(0xff) => {
                r.error = Some(parse_err(p.data));
                Flow::Done
            }
            Some(0xfb) => {
                // LOCAL INFILE request: the client sends the file next.
                self.infile = true;
                r.step = Step::Infile;
                Flow::Continue
            }
            Some(_) => {
                let Some((columns, used)) = lenenc(p.data) else {
                    return Flow::Lost;
                };
                if columns == 0 || columns > MAX_COLUMNS {
                    return Flow::Lost;
                }
                r.result_sets += 1;
                // MariaDB with cached metadata: a 0 after the count means
                // the column definitions are not sent again.
                let metadata = !(p.whole() && p.data.get(used..) == Some(&[0][..]));
                r.step = if metadata {
                    Step::Columns { left: columns }
                } else {
                    Step::ColumnsEnd
                };
                Flow::Continue
            }
        }
    }

    /// An OK packet as (part of) an answer: more results may follow.
    fn after_ok(&mut self, r: &mut Reply, p: &Packet<'_>) -> Flow {
        let status = self.ok(r, p);
        if status & SERVER_MORE_RESULTS_EXISTS != 0 {
            r.step = Step::First;
            Flow::Continue
        } else {
            Flow::Done
        }
    }

    /// Records an OK packet's affected rows and schema change; returns its
    /// status flags.
    fn ok(&mut self, r: &mut Reply, p: &Packet<'_>) -> u16 {
        let Some(ok) = parse_ok(p.data, p.whole()) else {
            return 0;
        };
        r.affected = Some(r.affected.unwrap_or(0).saturating_add(ok.affected));
        if ok.schema.is_some() {
            self.database = ok.schema;
        }
        ok.status
    }

    /// A packet where rows are expected: a row, or the result set's end.
    fn row_or_end(&mut self, r: &mut Reply, p: &Packet<'_>) -> Flow {
        match p.first() {
            Some(0xff) => {
                r.error = Some(parse_err(p.data));
                Flow::Done
            }
            _ if p.is_end() => {
                let status = end_status(p);
                if status & SERVER_MORE_RESULTS_EXISTS != 0 && r.expect == Expect::ResultSet {
                    r.step = Step::First;
                    Flow::Continue
                } else {
                    Flow::Done
                }
            }
            _ => {
                r.rows += 1;
                Flow::Continue
            }
        }
    }

    fn finish(
        &mut self,
        dir: Direction,
        reply: Reply,
        last_ns: u64,
        complete: bool,
        out: &mut Vec<Message>,
    ) {
        if complete
            && reply.error.is_none()
            && let Some(schema) = reply.schema
        {
            self.database = Some(schema);
        }
        let returned_rows =
            (reply.result_sets > 0 && reply.rows_exact && complete).then_some(reply.rows);
        out.push(Message::Response(Response {
            dir,
            command_id: reply.id,
            error: reply.error,
            returned_rows,
            affected_rows: reply.affected,
            statement_id: reply.statement_id,
            complete,
            first_ns: reply.first_ns,
            last_ns: last_ns.max(reply.first_ns),
        }));
    }

    /// The connection closed at `end_ns`: an answer still being read is
    /// reported as incomplete; everything else is dropped.
    pub fn close(&mut self, end_ns: u64, out: &mut Vec<Message>) {
        if let (Some(reply), Some(server)) =
            (self.reply.take(), self.request_dir.map(Direction::opposite))
        {
            let last = self.side(server).last_end_ns.min(end_ns);
            self.finish(server, reply, last, false, out);
        }
        let resync = self.resync;
        *self = MysqlConn::new(self.limits);
        self.resync = resync;
    }

    /// The database system, as far as the greeting told.
    pub fn system(&self) -> DbSystem {
        self.system
    }

    /// The connection's default database, when known.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }
}

impl StreamParser for MysqlConn {
    type Message = Message;

    fn feed(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<Message>) {
        MysqlConn::feed(self, dir, chunk, out);
    }

    fn close(&mut self, end_ns: u64, out: &mut Vec<Message>) {
        MysqlConn::close(self, end_ns, out);
    }

    fn resync(&mut self) -> &mut Resync {
        &mut self.resync
    }
}

// ---------------------------------------------------------------------------
// Packet contents.

/// An OK packet (0x00 or 0xfe header). Session-state changes are read
/// only from a whole packet.
fn parse_ok(d: &[u8], whole: bool) -> Option<OkPacket> {
    let mut at = 1;
    let (affected, n) = lenenc(d.get(at..)?)?;
    at += n;
    let (_, n) = lenenc(d.get(at..)?)?;
    at += n;
    let status = u16_at(d, at)?;
    at += 4;
    let mut schema = None;
    if whole && status & SERVER_SESSION_STATE_CHANGED != 0 {
        // info, then the session-state changes, both length-encoded.
        if let Some((_, n)) = d.get(at..).and_then(lenenc_str)
            && let Some((mut state, _)) = d.get(at + n..).and_then(lenenc_str)
        {
            while let [kind, rest @ ..] = state {
                let Some((entry, n)) = lenenc_str(rest) else {
                    break;
                };
                if *kind == SESSION_TRACK_SCHEMA
                    && let Some((name, _)) = lenenc_str(entry)
                    && !name.is_empty()
                {
                    schema = Some(lossy(name));
                }
                state = rest.get(n..).unwrap_or_default();
            }
        }
    }
    Some(OkPacket {
        affected,
        status,
        schema,
    })
}

/// The status flags of a result set's last packet: an EOF (0xfe, warnings,
/// status) or an OK with an 0xfe header.
fn end_status(p: &Packet<'_>) -> u16 {
    if p.len <= 5 {
        u16_at(p.data, 3).unwrap_or(0)
    } else {
        parse_ok(p.data, false).map_or(0, |ok| ok.status)
    }
}

/// An ERR packet: 0xff, error code, then `#` and the SQLSTATE (protocol
/// 4.1), then the message.
fn parse_err(d: &[u8]) -> ServerError {
    let code = u16_at(d, 1).unwrap_or(0);
    let rest = d.get(3..).unwrap_or_default();
    let (sql_state, message) = match rest {
        [b'#', tail @ ..] if tail.len() >= 5 => {
            let (state, msg) = tail.split_at(5);
            (Some(lossy(state)), msg)
        }
        _ => (None, rest),
    };
    let message = message.get(..MAX_ERROR_MESSAGE).unwrap_or(message);
    ServerError {
        code,
        sql_state,
        message: lossy(message),
    }
}

/// The statement of a COM_QUERY body. With query attributes (MySQL 8) the
/// text follows the attribute count, set count and the attributes.
fn query_text(body: &[u8], attributes: bool) -> Option<&[u8]> {
    if !attributes && !body.starts_with(&[0, 1]) {
        return Some(body);
    }
    let (count, mut at) = lenenc(body)?;
    let (_, n) = lenenc(body.get(at..)?)?;
    at += n;
    if count == 0 {
        return body.get(at..);
    }
    let count = usize::try_from(count).ok().filter(|&c| c <= 4096)?;
    let bitmap = body.get(at..at + count.div_ceil(8))?;
    at += bitmap.len();
    if *body.get(at)? != 1 {
        return None;
    }
    at += 1;
    let mut types = Vec::with_capacity(count.min(body.len() / 2));
    for _ in 0..count {
        types.push(*body.get(at)?);
        at += 2;
        let (_, n) = lenenc_str(body.get(at..)?)?;
        at += n;
    }
    for (i, &t) in types.iter().enumerate() {
        let is_null = bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
        if !is_null {
            at += binary_value_len(t, body.get(at..)?)?;
        }
    }
    body.get(at..)
}

/// Length of one binary-protocol value of column type `t` at the start of `d`.
fn binary_value_len(t: u8, d: &[u8]) -> Option<usize> {
    Some(match t {
        0x06 => 0,                                                 // NULL
        0x01 => 1,                                                 // TINY
        0x02 | 0x0d => 2,                                          // SHORT, YEAR
        0x03 | 0x04 | 0x09 => 4,                                   // LONG, FLOAT, INT24
        0x05 | 0x08 => 8,                                          // DOUBLE, LONGLONG
        0x07 | 0x0a | 0x0b | 0x0c => 1 + usize::from(*d.first()?), // dates and times
        _ => lenenc_str(d)?.1,
    })
}

/// The database a `USE name` statement switches to.
fn use_statement(sql: &str) -> Option<String> {
    let s = sql.trim_start();
    let head = s.get(..3)?;
    if !head.eq_ignore_ascii_case("use") {
        return None;
    }
    let rest = s.get(3..)?;
    if !rest.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let rest = rest.trim_start();
    let (name, tail) = if let Some(quoted) = rest.strip_prefix('`') {
        let mut name = String::new();
        let mut chars = quoted.char_indices();
        loop {
            let (i, c) = chars.next()?;
            if c == '`' {
                if quoted.get(i + 1..)?.starts_with('`') {
                    name.push('`');
                    chars.next();
                } else {
                    break (name, quoted.get(i + 1..)?);
                }
            } else {
                name.push(c);
            }
        }
    } else {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(rest.len());
        (rest.get(..end)?.to_owned(), rest.get(end..)?)
    };
    let tail = tail.trim();
    let tail = tail.strip_prefix(';').unwrap_or(tail).trim();
    (!name.is_empty() && tail.is_empty()).then_some(name)
}

/// Inside a result set's rows, framing lost: looks for a fully captured
/// chunk that ends with the result set's last packet (EOF, OK with 0xfe or
/// ERR), confirmed by the packet just before it (consecutive sequence id,
/// length reaching exactly to it) unless it is alone in the chunk. Returns
/// where parsing resumes and the sequence id expected there.
fn rows_resume_point(data: &[u8]) -> Option<(usize, u8)> {
    let n = data.len();
    // Candidates whose packet before is searched for; bounds the work on
    // hostile input.
    let mut tries = 0;
    for len in 5..=MAX_END_PACKET {
        let Some(at) = n.checked_sub(4 + len) else {
            break;
        };
        if u24_at(data, at) != Some(len) {
            continue;
        }
        let seq = *data.get(at + 3)?;
        let payload = data.get(at + 4..)?;
        let plausible = match payload.first() {
            Some(0xfe) if len == 5 => true,
            Some(0xfe) => parse_ok(payload, true).is_some() && len <= 64,
            Some(0xff) => payload.get(3) == Some(&b'#'),
            _ => false,
        };
        if !plausible {
            continue;
        }
        if at == 0 {
            return Some((0, seq));
        }
        tries += 1;
        if tries > 4 {
            return None;
        }
        // The packet before it.
        let prev_seq = seq.wrapping_sub(1);
        for start in (0..at.saturating_sub(3)).rev() {
            if data.get(start + 3) == Some(&prev_seq) && u24_at(data, start) == Some(at - start - 4)
            {
                return Some((start, prev_seq));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
