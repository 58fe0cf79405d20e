//! HTTP/1.x streaming parser.
//!
//! One [`Http1Conn`] follows both directions of one connection. Each
//! direction has its own state machine (message head, body, or lost sync), so
//! a response that arrives while the request body is still being sent cannot
//! disturb the request stream. What the two directions share is the queue of
//! request methods still waiting for a response: a response to `HEAD` has no
//! body, and a `2xx` answer to `CONNECT` turns the connection into a tunnel.
//!
//! Bytes that moved but were not captured (the gap after a chunk's captured
//! prefix) are skipped by length. When the framing of a message is lost, the
//! parser skips to the next point where a message can be shown to start: the
//! start of a later syscall, or a line start (after CRLF) followed by a valid
//! start line. Skipped bytes and lost-sync events are counted and reported by
//! [`super::StreamParser::take_resync`].

pub mod span;

use std::collections::VecDeque;

use sonde_common::PrefixPattern;

use super::headers::{self, HeaderNames, KeptHeaders};
use super::{Chunk, Direction, GapEnd, Limits, Resync, StreamParser, SyncLoss, skip_gap};

/// HTTP/1.x in the protocol table.
pub const PROTOCOL: super::ProtocolSpec = super::ProtocolSpec {
    name: "http1",
    detect,
    new_session,
    kernel_prefilter: KERNEL_PREFILTER,
    pipelines: false,
};

fn new_session(options: &super::SessionOptions) -> Box<dyn super::Session> {
    super::session::Parsed::<Http1Conn, span::HttpPairing>::boxed(
        Http1Conn::new(options.limits).keeping_headers(options.kept_headers.clone()),
    )
}

/// HTTP/1.x: a request line's method (its first four bytes) or a status line.
const KERNEL_PREFILTER: &[PrefixPattern] = &[
    PrefixPattern::literal(b"GET "),
    PrefixPattern::literal(b"POST"),
    PrefixPattern::literal(b"PUT "),
    PrefixPattern::literal(b"HEAD"),
    PrefixPattern::literal(b"DELE"),
    PrefixPattern::literal(b"PATC"),
    PrefixPattern::literal(b"OPTI"),
    PrefixPattern::literal(b"CONN"),
    PrefixPattern::literal(b"TRAC"),
    PrefixPattern::literal(b"HTTP"),
];

/// Longest method token accepted.
const MAX_METHOD_LEN: usize = 20;
/// Requests whose method is remembered while waiting for their response;
/// older ones are forgotten first.
const MAX_PENDING_METHODS: usize = 256;
/// Longest chunk-size line of a chunked body (size plus extensions).
const MAX_CHUNK_LINE: usize = 1024;
/// Methods recognised by [`detect`] and while resynchronising.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// One parsed message, emitted once it has ended (body included).
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

impl Message {
    pub fn dir(&self) -> Direction {
        match self {
            Message::Request(r) => r.dir,
            Message::Response(r) => r.dir,
        }
    }

    pub fn first_ns(&self) -> u64 {
        match self {
            Message::Request(r) => r.first_ns,
            Message::Response(r) => r.first_ns,
        }
    }

    pub fn last_ns(&self) -> u64 {
        match self {
            Message::Request(r) => r.last_ns,
            Message::Response(r) => r.last_ns,
        }
    }

    /// Counts body bytes that moved in a syscall ending at `end_ns`.
    fn add_body(&mut self, bytes: u64, end_ns: u64) {
        let (body_len, last_ns) = match self {
            Message::Request(r) => (&mut r.body_len, &mut r.last_ns),
            Message::Response(r) => (&mut r.body_len, &mut r.last_ns),
        };
        *body_len = body_len.saturating_add(bytes);
        *last_ns = end_ns;
    }

    fn set_last_ns(&mut self, ns: u64) {
        match self {
            Message::Request(r) => r.last_ns = ns,
            Message::Response(r) => r.last_ns = ns,
        }
    }
}

/// An HTTP/1.x request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The direction the request travelled (Egress: the process is the client).
    pub dir: Direction,
    pub method: String,
    /// The request-target as sent (origin-form `/p?q`, absolute-form, `*`, ...).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub traceparent: Option<String>,
    /// The headers the parser was told to keep (see [`headers`]).
    pub kept_headers: KeptHeaders,
    pub content_length: Option<u64>,
    /// Body bytes that moved on the wire, captured or not (for a chunked
    /// body this includes the chunk framing).
    pub body_len: u64,
    /// The end of the head was not captured; fields after the capture limit
    /// are missing and the message was taken to end with its syscall.
    pub head_truncated: bool,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// An HTTP/1.x response (interim 1xx responses included).
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub dir: Direction,
    pub status: u16,
    pub version_minor: u8,
    pub content_length: Option<u64>,
    /// Body bytes that moved on the wire, captured or not (chunk framing
    /// included).
    pub body_len: u64,
    pub head_truncated: bool,
    pub first_ns: u64,
    pub last_ns: u64,
}

pub use super::Detect;

/// The first line of a message head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, target: String },
    Response { status: u16 },
}

/// A parsed message head: the start line and the header fields the agent
/// uses. Other fields are checked for syntax and dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub start: StartLine,
    pub version_minor: u8,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub traceparent: Option<String>,
    /// The headers the parser was told to keep.
    pub kept_headers: KeptHeaders,
    pub content_length: Option<u64>,
    /// A Transfer-Encoding field was present.
    pub transfer_encoding: bool,
    /// The final transfer coding is `chunked`.
    pub chunked: bool,
}

/// Why bytes cannot be an HTTP/1.x message head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not an HTTP/1.x request line or status line")]
    StartLine,
    #[error("malformed HTTP header field line")]
    HeaderLine,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("request with a Transfer-Encoding that does not end in chunked")]
    TransferEncoding,
}

/// Quick check of a stream's first bytes: could this be HTTP/1.x?
///
/// A response must start with `HTTP/1.x ddd`. A request must start with one
/// of the common methods, a space and a plausible target; other method
/// tokens are accepted only with a complete, valid request line.
pub fn detect(prefix: &[u8]) -> Detect {
    if prefix.is_empty() {
        return Detect::NeedMore;
    }
    match start_line(prefix) {
        Err(_) => Detect::No,
        Ok(Some((StartLine::Request { .. }, _, _))) => Detect::Request,
        Ok(Some((StartLine::Response { .. }, _, _))) => Detect::Response,
        Ok(None) => detect_incomplete(prefix),
    }
}

/// [`detect`] for a start line that is valid so far but not complete.
fn detect_incomplete(prefix: &[u8]) -> Detect {
    if prefix.starts_with(b"HTTP/") {
        // "HTTP/1.x ddd" has been checked by the status-line parser.
        return if prefix.len() >= 12 {
            Detect::Response
        } else {
            Detect::NeedMore
        };
    }
    match prefix.iter().position(|&b| b == b' ') {
        None => {
            let could_be = KNOWN_METHODS
                .iter()
                .any(|m| m.as_bytes().starts_with(prefix))
                || b"HTTP/".starts_with(prefix);
            if could_be {
                Detect::NeedMore
            } else {
                Detect::No
            }
        }
        Some(sp) => {
            let method = prefix.get(..sp).unwrap_or_default();
            if !KNOWN_METHODS.iter().any(|m| m.as_bytes() == method) {
                return Detect::No;
            }
            match prefix.get(sp + 1) {
                None => Detect::NeedMore,
                Some(&b) if b == b'/' || b == b'*' || b.is_ascii_alphanumeric() => Detect::Request,
                Some(_) => Detect::No,
            }
        }
    }
}

/// Parses one message head (start line and header fields up to the empty
/// line) from the start of `buf`, keeping the values of the request
/// headers named in `kept`.
///
/// Returns `Ok(None)` while `buf` is a strict prefix of a valid head, and
/// `Ok(Some((head, consumed)))` once the head is complete; `consumed` counts
/// the head's bytes including the final CRLF.
pub fn parse_head(buf: &[u8], kept: &HeaderNames) -> Result<Option<(Head, usize)>, ParseError> {
    match parse_inner(buf, kept)? {
        Parsed::Complete(head, n) => Ok(Some((head, n))),
        Parsed::Partial(_) => Ok(None),
    }
}

enum Parsed {
    Complete(Head, usize),
    /// Valid so far; the head is present once its start line is complete,
    /// with the header fields of every complete line.
    Partial(Option<Head>),
}

fn parse_inner(buf: &[u8], kept: &HeaderNames) -> Result<Parsed, ParseError> {
    let Some((start, version_minor, mut pos)) = start_line(buf)? else {
        return Ok(Parsed::Partial(None));
    };
    let mut head = Head {
        start,
        version_minor,
        host: None,
        user_agent: None,
        traceparent: None,
        kept_headers: KeptHeaders::new(),
        content_length: None,
        transfer_encoding: false,
        chunked: false,
    };
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        match rest {
            [] | [b'\r'] => return Ok(Parsed::Partial(Some(head))),
            [b'\r', b'\n', ..] => {
                if matches!(head.start, StartLine::Request { .. })
                    && head.transfer_encoding
                    && !head.chunked
                {
                    return Err(ParseError::TransferEncoding);
                }
                return Ok(Parsed::Complete(head, pos + 2));
            }
            [b'\r', ..] => return Err(ParseError::HeaderLine),
            _ => {}
        }
        let Some(field) = header_line(rest)? else {
            return Ok(Parsed::Partial(Some(head)));
        };
        apply_header(&mut head, field.name, field.value, kept)?;
        pos += field.len;
    }
}

/// Checks that `buf` holds `lit` at `at`, as far as `buf` goes.
fn literal(buf: &[u8], at: usize, lit: &[u8]) -> Result<Option<usize>, ParseError> {
    let have = buf.get(at..).unwrap_or_default();
    let n = have.len().min(lit.len());
    if have.get(..n) != lit.get(..n) {
        return Err(ParseError::StartLine);
    }
    Ok((n == lit.len()).then_some(at + lit.len()))
}

/// `HTTP/1.0` or `HTTP/1.1` at `at`: the minor version and the next index.
fn version(buf: &[u8], at: usize) -> Result<Option<(u8, usize)>, ParseError> {
    let Some(i) = literal(buf, at, b"HTTP/1.")? else {
        return Ok(None);
    };
    match buf.get(i) {
        None => Ok(None),
        Some(&d @ (b'0' | b'1')) => Ok(Some((d - b'0', i + 1))),
        Some(_) => Err(ParseError::StartLine),
    }
}

fn start_line(buf: &[u8]) -> Result<Option<(StartLine, u8, usize)>, ParseError> {
    if buf.starts_with(b"HTTP/") {
        status_line(buf)
    } else {
        request_line(buf)
    }
}

fn is_method_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

fn request_line(buf: &[u8]) -> Result<Option<(StartLine, u8, usize)>, ParseError> {
    let mut i = 0;
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(b' ') if i > 0 => break,
            Some(&b) if i < MAX_METHOD_LEN && is_method_byte(b) => i += 1,
            Some(_) => return Err(ParseError::StartLine),
        }
    }
    let method = buf.get(..i).unwrap_or_default();
    let target_start = i + 1;
    let mut j = target_start;
    loop {
        match buf.get(j) {
            None => return Ok(None),
            Some(b' ') if j > target_start => break,
            Some(&b) if b > b' ' && b != 0x7f => j += 1,
            Some(_) => return Err(ParseError::StartLine),
        }
    }
    let target = buf.get(target_start..j).unwrap_or_default();
    let Some((minor, k)) = version(buf, j + 1)? else {
        return Ok(None);
    };
    let Some(end) = literal(buf, k, b"\r\n")? else {
        return Ok(None);
    };
    let start = StartLine::Request {
        method: text(method),
        target: text(target),
    };
    Ok(Some((start, minor, end)))
}

fn status_line(buf: &[u8]) -> Result<Option<(StartLine, u8, usize)>, ParseError> {
    let Some((minor, i)) = version(buf, 0)? else {
        return Ok(None);
    };
    let Some(i) = literal(buf, i, b" ")? else {
        return Ok(None);
    };
    let mut status: u16 = 0;
    for k in 0..3 {
        match buf.get(i + k) {
            None => return Ok(None),
            Some(&d) if d.is_ascii_digit() => status = status * 10 + u16::from(d - b'0'),
            Some(_) => return Err(ParseError::StartLine),
        }
    }
    if !(100..=599).contains(&status) {
        return Err(ParseError::StartLine);
    }
    let mut j = i + 3;
    match buf.get(j) {
        None => return Ok(None),
        Some(b'\r') => {}
        Some(b' ') => {
            j += 1;
            loop {
                match buf.get(j) {
                    None => return Ok(None),
                    Some(b'\r') => break,
                    Some(&b) if b == b'\t' || (b >= b' ' && b != 0x7f) => j += 1,
                    Some(_) => return Err(ParseError::StartLine),
                }
            }
        }
        Some(_) => return Err(ParseError::StartLine),
    }
    let Some(end) = literal(buf, j, b"\r\n")? else {
        return Ok(None);
    };
    Ok(Some((StartLine::Response { status }, minor, end)))
}

/// A token character (RFC 9110 `tchar`).
/// `tchar` of RFC 9110 (a header name byte), by table: this runs for
/// every byte of every header name.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// Whether every byte is one a header value may hold: visible, space, tab
/// or obs-text. No early exit, so that the compiler can vectorize it.
fn is_value_text(bytes: &[u8]) -> bool {
    !bytes.iter().fold(false, |bad, &b| {
        bad | ((b < b' ' && b != b'\t') | (b == 0x7f))
    })
}

/// One header field line: name, trimmed value and the line's length
/// including CRLF.
struct Field<'a> {
    name: &'a [u8],
    value: &'a [u8],
    len: usize,
}

/// The header field line at the start of `rest`. `Ok(None)` if the line is
/// valid so far but not complete.
fn header_line(rest: &[u8]) -> Result<Option<Field<'_>>, ParseError> {
    let Some(colon) = rest.iter().position(|&b| !is_tchar(b)) else {
        return Ok(None);
    };
    if colon == 0 || rest.get(colon) != Some(&b':') {
        return Err(ParseError::HeaderLine);
    }
    let name = rest.get(..colon).unwrap_or_default();
    let value_start = colon + 1;
    let after = rest.get(value_start..).unwrap_or_default();
    // Find the line's end first (memchr is fast), then check what it holds.
    let Some(cr) = memchr::memchr(b'\r', after) else {
        return if is_value_text(after) {
            Ok(None)
        } else {
            Err(ParseError::HeaderLine)
        };
    };
    let raw_value = after.get(..cr).unwrap_or_default();
    if !is_value_text(raw_value) {
        return Err(ParseError::HeaderLine);
    }
    match after.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(Field {
            name,
            value: trim_ows(raw_value),
            len: value_start + cr + 2,
        })),
        Some(_) => Err(ParseError::HeaderLine),
    }
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', tail @ ..] = v {
        v = tail;
    }
    while let [head @ .., b' ' | b'\t'] = v {
        v = head;
    }
    v
}

fn text(bytes: &[u8]) -> String {
    // Header values are nearly always ASCII: the plain check is much
    // cheaper than the lossy conversion's chunk by chunk walk.
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn keep_first(slot: &mut Option<String>, value: &[u8]) {
    if slot.is_none() {
        *slot = Some(text(value));
    }
}

fn apply_header(
    head: &mut Head,
    name: &[u8],
    value: &[u8],
    kept: &HeaderNames,
) -> Result<(), ParseError> {
    // Before the others: a rule may name any header, even `host`.
    if matches!(head.start, StartLine::Request { .. })
        && let Some(index) = kept.index_of(name)
    {
        headers::keep(&mut head.kept_headers, index, value);
    }
    if name.eq_ignore_ascii_case(b"content-length") {
        let n = content_length(value)?;
        match head.content_length {
            Some(old) if old != n => return Err(ParseError::ContentLength),
            _ => head.content_length = Some(n),
        }
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        head.transfer_encoding = true;
        let last = value
            .rsplit(|&b| b == b',')
            .map(trim_ows)
            .find(|t| !t.is_empty());
        if let Some(last) = last {
            head.chunked = last.eq_ignore_ascii_case(b"chunked");
        }
    } else if name.eq_ignore_ascii_case(b"host") {
        keep_first(&mut head.host, value);
    } else if name.eq_ignore_ascii_case(b"user-agent") {
        keep_first(&mut head.user_agent, value);
    } else if name.eq_ignore_ascii_case(b"traceparent") {
        keep_first(&mut head.traceparent, value);
    }
    Ok(())
}

/// A Content-Length value: digits, or a list of identical digit strings.
fn content_length(value: &[u8]) -> Result<u64, ParseError> {
    let mut found: Option<u64> = None;
    for part in value.split(|&b| b == b',') {
        let part = trim_ows(part);
        if part.is_empty() {
            return Err(ParseError::ContentLength);
        }
        let mut n: u64 = 0;
        for &d in part {
            if !d.is_ascii_digit() {
                return Err(ParseError::ContentLength);
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or(ParseError::ContentLength)?;
        }
        match found {
            Some(old) if old != n => return Err(ParseError::ContentLength),
            _ => found = Some(n),
        }
    }
    found.ok_or(ParseError::ContentLength)
}

/// Parses a chunk-size line (without its CRLF): hex size, then optional
/// whitespace and extensions.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in line.get(..digits)? {
        let v = char::from(d).to_digit(16)?;
        n = n.checked_mul(16)?.checked_add(u64::from(v))?;
    }
    let rest = trim_ows(line.get(digits..)?);
    let ext_ok = rest.is_empty()
        || (rest.first() == Some(&b';')
            && rest.iter().all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f)));
    ext_ok.then_some(n)
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Request,
    Response,
}

impl Role {
    fn other(self) -> Role {
        match self {
            Role::Request => Role::Response,
            Role::Response => Role::Request,
        }
    }
}

/// What a pending request means for its response's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqKind {
    Head,
    Connect,
    Other,
}

#[derive(Debug)]
enum Phase {
    /// At a message boundary or inside a head; `Side::buf` holds the bytes
    /// of the head so far.
    Head,
    /// Skipping a body; the message is emitted when it ends.
    Body(Box<Pending>),
    /// Sync lost: looking for the next provable message start.
    Lost,
}

#[derive(Debug)]
struct Pending {
    msg: Message,
    framing: Framing,
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    /// Body bytes still to come.
    Length(u64),
    Chunked(ChunkStep),
    /// The body runs until the connection closes.
    UntilClose,
}

#[derive(Debug, Clone, Copy)]
enum ChunkStep {
    /// Reading a chunk-size line into `Side::buf`.
    Size,
    /// Chunk data bytes still to come.
    Data(u64),
    /// The CRLF after chunk data; true once the CR was seen.
    DataEnd(bool),
    /// Reading trailer lines; bytes of trailer seen so far.
    Trailer(usize),
}

/// What happened in the body of a message, decided while it is borrowed.
enum BodyEvent {
    Continue,
    Done,
    Broken,
}

/// State shared by both directions and the chunk being fed.
struct Ctx<'a> {
    dir: Direction,
    max_head: usize,
    kept: &'a HeaderNames,
    other_role: Option<Role>,
    methods: &'a mut VecDeque<ReqKind>,
    resync: &'a mut Resync,
    opaque: &'a mut bool,
    /// When a message starting in this chunk started.
    first_ns: u64,
    end_ns: u64,
    out: &'a mut Vec<Message>,
}

/// One direction of a connection.
#[derive(Debug)]
struct Side {
    /// What this direction carries, once a head was parsed on it.
    role: Option<Role>,
    phase: Phase,
    /// Bytes of an incomplete head, or of an incomplete chunked-body line.
    buf: Vec<u8>,
    /// When the buffered head started.
    head_first_ns: u64,
    /// Whether sync is lost; cleared by the next head.
    sync: SyncLoss,
}

impl Side {
    fn new() -> Self {
        Side {
            role: None,
            phase: Phase::Head,
            buf: Vec::new(),
            head_first_ns: 0,
            sync: SyncLoss::default(),
        }
    }

    fn expected(&self, cx: &Ctx<'_>) -> Option<Role> {
        self.role.or(cx.other_role.map(Role::other))
    }

    /// Could a message of this direction start at `bytes`?
    fn plausible(&self, bytes: &[u8], cx: &Ctx<'_>) -> bool {
        match detect(bytes) {
            Detect::Request => self.expected(cx) != Some(Role::Response),
            Detect::Response => self.expected(cx) != Some(Role::Request),
            Detect::NeedMore => true,
            Detect::No => false,
        }
    }

    /// `parse_inner` plus the check that the head fits this direction.
    fn parse(&self, buf: &[u8], cx: &Ctx<'_>) -> Result<Parsed, ParseError> {
        let parsed = parse_inner(buf, cx.kept)?;
        let head = match &parsed {
            Parsed::Complete(head, _) | Parsed::Partial(Some(head)) => head,
            Parsed::Partial(None) => return Ok(parsed),
        };
        let role = match head.start {
            StartLine::Request { .. } => Role::Request,
            StartLine::Response { .. } => Role::Response,
        };
        match self.expected(cx) {
            Some(expected) if expected != role => Err(ParseError::StartLine),
            _ => Ok(parsed),
        }
    }

    /// Sync is lost here: count it once per episode.
    fn lose(&mut self, cx: &mut Ctx<'_>) {
        self.sync.lose(cx.resync);
        self.phase = Phase::Lost;
    }

    fn feed(&mut self, data: &[u8], gap: u64, cx: &mut Ctx<'_>) {
        // A syscall boundary is a candidate message start.
        if matches!(self.phase, Phase::Lost) && !data.is_empty() && self.plausible(data, cx) {
            self.phase = Phase::Head;
        }
        let mut pos = 0;
        while pos < data.len() {
            if *cx.opaque {
                return;
            }
            match self.phase {
                Phase::Head => self.step_head(data, &mut pos, cx),
                Phase::Body(_) => self.step_body(data, &mut pos, cx),
                Phase::Lost => self.step_lost(data, &mut pos, cx),
            }
        }
        if gap > 0 && !*cx.opaque {
            self.skip_gap(gap, cx);
        }
    }

    fn step_lost(&mut self, data: &[u8], pos: &mut usize, cx: &mut Ctx<'_>) {
        let rest = data.get(*pos..).unwrap_or_default();
        let mut from = 0;
        while let Some(i) = rest.get(from..).and_then(find_crlf) {
            let candidate = from + i + 2;
            from = candidate;
            let tail = rest.get(candidate..).unwrap_or_default();
            if !tail.is_empty() && self.plausible(tail, cx) {
                cx.resync.bytes += candidate as u64;
                *pos += candidate;
                self.phase = Phase::Head;
                return;
            }
        }
        cx.resync.bytes += rest.len() as u64;
        *pos = data.len();
    }

    fn step_head(&mut self, data: &[u8], pos: &mut usize, cx: &mut Ctx<'_>) {
        let view = data.get(*pos..).unwrap_or_default();
        if self.buf.is_empty() {
            match self.parse(view, cx) {
                Ok(Parsed::Complete(head, n)) => {
                    *pos += n;
                    self.begin(head, cx.first_ns, false, cx);
                }
                Ok(Parsed::Partial(_)) if view.len() < cx.max_head => {
                    self.buf.extend_from_slice(view);
                    self.head_first_ns = cx.first_ns;
                    *pos = data.len();
                }
                Ok(Parsed::Partial(_)) | Err(_) => self.lose(cx),
            }
            return;
        }
        // Continue a head buffered from earlier syscalls. The buffer is kept
        // below `max_head`, so at least one byte is taken.
        let room = cx.max_head.saturating_sub(self.buf.len());
        let take = room.min(view.len());
        let new = view.get(..take).unwrap_or_default();
        self.buf.extend_from_slice(new);
        *pos += take;
        // A head can only end, or a line turn out invalid, at a line end.
        if new.contains(&b'\n') || self.buf.len() >= cx.max_head {
            self.settle_buffer(data, pos, take, cx);
        }
    }

    /// Re-parses the buffered head after `take` bytes of this chunk (the
    /// ones just before `*pos`) were appended to it.
    fn settle_buffer(&mut self, data: &[u8], pos: &mut usize, take: usize, cx: &mut Ctx<'_>) {
        loop {
            match self.parse(&self.buf, cx) {
                Ok(Parsed::Complete(head, n)) => {
                    // The buffer held no complete head before this chunk, so
                    // whatever follows the head came from this chunk.
                    let leftover = self.buf.len().saturating_sub(n);
                    if leftover <= take {
                        *pos -= leftover;
                    } else {
                        *pos -= take;
                        cx.resync.bytes += (leftover - take) as u64;
                    }
                    self.buf.clear();
                    let first = self.head_first_ns;
                    self.begin(head, first, false, cx);
                    return;
                }
                Ok(Parsed::Partial(_)) if self.buf.len() < cx.max_head => return,
                Ok(Parsed::Partial(_)) | Err(_) => {}
            }
            // Not a head (or too long): try a later line start in the buffer.
            self.lose(cx);
            self.phase = Phase::Head;
            if let Some(k) = self.buffered_candidate(cx) {
                cx.resync.bytes += k as u64;
                self.buf.drain(..k);
                continue;
            }
            cx.resync.bytes += self.buf.len() as u64;
            let at_line_start = self.buf.ends_with(b"\r\n");
            self.buf.clear();
            let next = data.get(*pos..).unwrap_or_default();
            if !(at_line_start && !next.is_empty() && self.plausible(next, cx)) {
                self.phase = Phase::Lost;
            }
            return;
        }
    }

    /// A line start inside the buffer (not at 0) where a message could start.
    fn buffered_candidate(&self, cx: &Ctx<'_>) -> Option<usize> {
        let mut from = 0;
        while let Some(i) = self.buf.get(from..).and_then(find_crlf) {
            let candidate = from + i + 2;
            from = candidate;
            let tail = self.buf.get(candidate..).unwrap_or_default();
            if !tail.is_empty() && self.plausible(tail, cx) {
                return Some(candidate);
            }
        }
        None
    }

    /// A head was parsed: emit the message now or follow its body.
    fn begin(&mut self, head: Head, first_ns: u64, truncated: bool, cx: &mut Ctx<'_>) {
        self.sync.regain();
        self.phase = Phase::Head;
        let (msg, framing) = match head.start {
            StartLine::Request { method, target } => {
                self.role = Some(Role::Request);
                let kind = match method.as_str() {
                    "HEAD" => ReqKind::Head,
                    "CONNECT" => ReqKind::Connect,
                    _ => ReqKind::Other,
                };
                if cx.methods.len() >= MAX_PENDING_METHODS {
                    cx.methods.pop_front();
                }
                cx.methods.push_back(kind);
                let framing = if truncated {
                    None
                } else if head.chunked {
                    Some(Framing::Chunked(ChunkStep::Size))
                } else {
                    match head.content_length {
                        Some(n) if n > 0 => Some(Framing::Length(n)),
                        _ => None,
                    }
                };
                let msg = Message::Request(Request {
                    dir: cx.dir,
                    method,
                    target,
                    version_minor: head.version_minor,
                    host: head.host,
                    user_agent: head.user_agent,
                    traceparent: head.traceparent,
                    kept_headers: head.kept_headers,
                    content_length: head.content_length,
                    body_len: 0,
                    head_truncated: truncated,
                    first_ns,
                    last_ns: cx.end_ns,
                });
                (msg, framing)
            }
            StartLine::Response { status } => {
                self.role = Some(Role::Response);
                let interim = (100..200).contains(&status);
                let request = if interim {
                    None
                } else {
                    cx.methods.pop_front()
                };
                let tunnel = status == 101
                    || (request == Some(ReqKind::Connect) && (200..300).contains(&status));
                let no_body =
                    interim || status == 204 || status == 304 || request == Some(ReqKind::Head);
                let framing = if truncated || no_body || tunnel {
                    None
                } else if head.chunked {
                    Some(Framing::Chunked(ChunkStep::Size))
                } else if head.transfer_encoding {
                    Some(Framing::UntilClose)
                } else {
                    match head.content_length {
                        Some(0) => None,
                        Some(n) => Some(Framing::Length(n)),
                        None => Some(Framing::UntilClose),
                    }
                };
                if tunnel {
                    // Whatever follows is another protocol.
                    *cx.opaque = true;
                }
                let msg = Message::Response(Response {
                    dir: cx.dir,
                    status,
                    version_minor: head.version_minor,
                    content_length: head.content_length,
                    body_len: 0,
                    head_truncated: truncated,
                    first_ns,
                    last_ns: cx.end_ns,
                });
                (msg, framing)
            }
        };
        match framing {
            None => cx.out.push(msg),
            Some(framing) => self.phase = Phase::Body(Box::new(Pending { msg, framing })),
        }
    }

    /// The current body ended: emit its message.
    fn finish_body(&mut self, cx: &mut Ctx<'_>) {
        if let Phase::Body(pending) = std::mem::replace(&mut self.phase, Phase::Head) {
            let mut msg = pending.msg;
            msg.set_last_ns(cx.end_ns);
            cx.out.push(msg);
        }
    }

    fn step_body(&mut self, data: &[u8], pos: &mut usize, cx: &mut Ctx<'_>) {
        let Phase::Body(pending) = &mut self.phase else {
            return;
        };
        let rest = data.get(*pos..).unwrap_or_default();
        let event = match &mut pending.framing {
            Framing::Length(remaining) => {
                let take = (*remaining).min(rest.len() as u64);
                *remaining -= take;
                *pos += take as usize;
                pending.msg.add_body(take, cx.end_ns);
                if *remaining == 0 {
                    BodyEvent::Done
                } else {
                    BodyEvent::Continue
                }
            }
            Framing::UntilClose => {
                *pos = data.len();
                pending.msg.add_body(rest.len() as u64, cx.end_ns);
                BodyEvent::Continue
            }
            Framing::Chunked(step) => {
                let (used, event) = chunked_step(step, &mut self.buf, rest, cx.max_head);
                *pos += used;
                pending.msg.add_body(used as u64, cx.end_ns);
                event
            }
        };
        match event {
            BodyEvent::Continue => {}
            BodyEvent::Done => self.finish_body(cx),
            BodyEvent::Broken => {
                // The head was sound; report the message as ending here.
                self.buf.clear();
                self.finish_body(cx);
                self.lose(cx);
            }
        }
    }

    /// Bytes that moved but were not captured.
    fn skip_gap(&mut self, gap: u64, cx: &mut Ctx<'_>) {
        match &mut self.phase {
            Phase::Lost => cx.resync.bytes += gap,
            Phase::Head if self.buf.is_empty() => {
                // A message started in the gap: its start line is lost.
                self.lose(cx);
                cx.resync.bytes += gap;
            }
            Phase::Head => self.truncated_head(gap, cx),
            Phase::Body(pending) => match &mut pending.framing {
                Framing::Length(remaining) => match skip_gap(remaining, gap) {
                    GapEnd::Inside => pending.msg.add_body(gap, cx.end_ns),
                    GapEnd::AtEnd => {
                        pending.msg.add_body(gap, cx.end_ns);
                        self.finish_body(cx);
                    }
                    GapEnd::Past(past) => {
                        pending.msg.add_body(gap - past, cx.end_ns);
                        self.finish_body(cx);
                        self.lose(cx);
                        cx.resync.bytes += past;
                    }
                },
                Framing::UntilClose => pending.msg.add_body(gap, cx.end_ns),
                Framing::Chunked(ChunkStep::Data(remaining)) if *remaining >= gap => {
                    if skip_gap(remaining, gap) == GapEnd::AtEnd {
                        pending.framing = Framing::Chunked(ChunkStep::DataEnd(false));
                    }
                    pending.msg.add_body(gap, cx.end_ns);
                }
                Framing::Chunked(_) => {
                    // Chunk sizes fell in the gap: take the syscall's end as
                    // the message's end and look for a start in the next one.
                    pending.msg.add_body(gap, cx.end_ns);
                    self.buf.clear();
                    self.finish_body(cx);
                    self.lose(cx);
                }
            },
        }
    }

    /// The end of a buffered head fell in a gap. If its start line was seen,
    /// report it as a truncated message ending with this syscall.
    fn truncated_head(&mut self, gap: u64, cx: &mut Ctx<'_>) {
        let head = match self.parse(&self.buf, cx) {
            Ok(Parsed::Complete(head, _) | Parsed::Partial(Some(head))) => Some(head),
            Ok(Parsed::Partial(None)) | Err(_) => None,
        };
        match head {
            Some(head) => {
                self.buf.clear();
                let first = self.head_first_ns;
                self.begin(head, first, true, cx);
            }
            None => {
                cx.resync.bytes += self.buf.len() as u64 + gap;
                self.buf.clear();
                self.lose(cx);
            }
        }
    }

    /// The connection closed: a body running until close ends now.
    fn close(&mut self, end_ns: u64, out: &mut Vec<Message>) {
        if let Phase::Body(pending) = std::mem::replace(&mut self.phase, Phase::Head)
            && let Framing::UntilClose = pending.framing
        {
            let mut msg = pending.msg;
            // The body ended with the last syscall that carried it; the close
            // time only matters if it is earlier.
            let last = msg.last_ns().min(end_ns.max(msg.first_ns()));
            msg.set_last_ns(last);
            out.push(msg);
        }
        self.buf = Vec::new();
        self.sync.regain();
    }
}

/// Advances a chunked body over `rest`: bytes used and what happened.
fn chunked_step(
    step: &mut ChunkStep,
    line: &mut Vec<u8>,
    rest: &[u8],
    max_trailer: usize,
) -> (usize, BodyEvent) {
    let mut used = 0;
    while let Some(tail) = rest.get(used..).filter(|t| !t.is_empty()) {
        match *step {
            ChunkStep::Size | ChunkStep::Trailer(_) => {
                let limit = match *step {
                    ChunkStep::Trailer(seen) => max_trailer.saturating_sub(seen),
                    _ => MAX_CHUNK_LINE,
                };
                let Some(nl) = tail.iter().position(|&b| b == b'\n') else {
                    if line.len() + tail.len() > limit {
                        return (used, BodyEvent::Broken);
                    }
                    line.extend_from_slice(tail);
                    used += tail.len();
                    continue;
                };
                let part = tail.get(..=nl).unwrap_or_default();
                if line.len() + part.len() > limit {
                    return (used, BodyEvent::Broken);
                }
                line.extend_from_slice(part);
                used += part.len();
                let Some(content) = line.strip_suffix(b"\r\n") else {
                    return (used, BodyEvent::Broken);
                };
                match *step {
                    ChunkStep::Size => match chunk_size(content) {
                        Some(0) => *step = ChunkStep::Trailer(0),
                        Some(n) => *step = ChunkStep::Data(n),
                        None => return (used, BodyEvent::Broken),
                    },
                    ChunkStep::Trailer(seen) => {
                        if content.is_empty() {
                            line.clear();
                            return (used, BodyEvent::Done);
                        }
                        if !matches!(header_line(line), Ok(Some(_))) {
                            return (used, BodyEvent::Broken);
                        }
                        *step = ChunkStep::Trailer(seen + line.len());
                    }
                    _ => {}
                }
                line.clear();
            }
            ChunkStep::Data(remaining) => {
                let take = remaining.min(tail.len() as u64);
                used += take as usize;
                *step = if remaining == take {
                    ChunkStep::DataEnd(false)
                } else {
                    ChunkStep::Data(remaining - take)
                };
            }
            ChunkStep::DataEnd(cr_seen) => {
                let expected = if cr_seen { b'\n' } else { b'\r' };
                if tail.first() != Some(&expected) {
                    return (used, BodyEvent::Broken);
                }
                used += 1;
                *step = if cr_seen {
                    ChunkStep::Size
                } else {
                    ChunkStep::DataEnd(true)
                };
            }
        }
    }
    (used, BodyEvent::Continue)
}

/// Parser state of one HTTP/1.x connection, both directions.
#[derive(Debug)]
pub struct Http1Conn {
    limits: Limits,
    kept_headers: HeaderNames,
    egress: Side,
    ingress: Side,
    /// Methods of requests whose final response has not been parsed yet.
    methods: VecDeque<ReqKind>,
    resync: Resync,
    /// The connection switched protocols or became a tunnel: bytes are no
    /// longer HTTP/1.x and are ignored.
    opaque: bool,
}

impl Http1Conn {
    pub fn new(limits: Limits) -> Self {
        Http1Conn {
            limits,
            kept_headers: HeaderNames::default(),
            egress: Side::new(),
            ingress: Side::new(),
            methods: VecDeque::new(),
            resync: Resync::default(),
            opaque: false,
        }
    }

    /// Keeps the values of these request headers on each request.
    pub fn keeping_headers(mut self, names: HeaderNames) -> Self {
        self.kept_headers = names;
        self
    }

    /// Feeds one syscall's bytes; complete messages are pushed to `out`.
    pub fn feed(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<Message>) {
        if self.opaque {
            return;
        }
        let (side, other) = match dir {
            Direction::Egress => (&mut self.egress, &self.ingress),
            Direction::Ingress => (&mut self.ingress, &self.egress),
        };
        let mut cx = Ctx {
            dir,
            max_head: self.limits.max_buffered_bytes,
            kept: &self.kept_headers,
            other_role: other.role,
            methods: &mut self.methods,
            resync: &mut self.resync,
            opaque: &mut self.opaque,
            first_ns: chunk.first_ns(dir),
            end_ns: chunk.last_ns(dir),
            out,
        };
        side.feed(chunk.data, chunk.gap_len(), &mut cx);
    }

    /// The connection closed: finishes a response whose body runs until
    /// close and drops partial state.
    pub fn close(&mut self, end_ns: u64, out: &mut Vec<Message>) {
        self.egress.close(end_ns, out);
        self.ingress.close(end_ns, out);
        self.methods.clear();
        self.opaque = false;
    }

    /// Which direction carries requests, once known.
    pub fn request_direction(&self) -> Option<Direction> {
        match (self.egress.role, self.ingress.role) {
            (Some(Role::Request), _) | (_, Some(Role::Response)) => Some(Direction::Egress),
            (Some(Role::Response), _) | (_, Some(Role::Request)) => Some(Direction::Ingress),
            (None, None) => None,
        }
    }
}

impl StreamParser for Http1Conn {
    type Message = Message;

    fn keep_headers(&mut self, names: &HeaderNames) {
        self.kept_headers = names.clone();
    }

    fn feed(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<Message>) {
        Http1Conn::feed(self, dir, chunk, out);
    }

    fn close(&mut self, end_ns: u64, out: &mut Vec<Message>) {
        Http1Conn::close(self, end_ns, out);
    }

    fn resync(&mut self) -> &mut Resync {
        &mut self.resync
    }
}

#[cfg(test)]
mod tests;
