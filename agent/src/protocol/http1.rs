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
//! [`Http1Conn::take_resync`].

use std::collections::VecDeque;

use super::{Chunk, Direction};

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

/// Bounds on what the parser buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of one message head (start line and header fields) kept
    /// while waiting for its end; a longer head loses sync.
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16384,
        }
    }
}

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
/// line) from the start of `buf`.
///
/// Returns `Ok(None)` while `buf` is a strict prefix of a valid head, and
/// `Ok(Some((head, consumed)))` once the head is complete; `consumed` counts
/// the head's bytes including the final CRLF.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, ParseError> {
    match parse_inner(buf)? {
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

fn parse_inner(buf: &[u8]) -> Result<Parsed, ParseError> {
    let Some((start, version_minor, mut pos)) = start_line(buf)? else {
        return Ok(Parsed::Partial(None));
    };
    let mut head = Head {
        start,
        version_minor,
        host: None,
        user_agent: None,
        traceparent: None,
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
        apply_header(&mut head, field.name, field.value)?;
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

fn apply_header(head: &mut Head, name: &[u8], value: &[u8]) -> Result<(), ParseError> {
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

/// Counters of lost sync.
#[derive(Debug, Default, Clone, Copy)]
struct Resync {
    bytes: u64,
    events: u64,
}

/// State shared by both directions and the chunk being fed.
struct Ctx<'a> {
    dir: Direction,
    max_head: usize,
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
    /// Sync is lost and the loss has been counted; cleared by the next head.
    resyncing: bool,
}

impl Side {
    fn new() -> Self {
        Side {
            role: None,
            phase: Phase::Head,
            buf: Vec::new(),
            head_first_ns: 0,
            resyncing: false,
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
        let parsed = parse_inner(buf)?;
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
        if !self.resyncing {
            cx.resync.events += 1;
            self.resyncing = true;
        }
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
        self.resyncing = false;
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
                Framing::Length(remaining) => {
                    let body = (*remaining).min(gap);
                    *remaining -= body;
                    pending.msg.add_body(body, cx.end_ns);
                    if *remaining == 0 {
                        self.finish_body(cx);
                        if gap > body {
                            // The next message started inside the gap.
                            self.lose(cx);
                            cx.resync.bytes += gap - body;
                        }
                    }
                }
                Framing::UntilClose => pending.msg.add_body(gap, cx.end_ns),
                Framing::Chunked(ChunkStep::Data(remaining)) if *remaining > gap => {
                    *remaining -= gap;
                    pending.msg.add_body(gap, cx.end_ns);
                }
                Framing::Chunked(ChunkStep::Data(remaining)) if *remaining == gap => {
                    pending.framing = Framing::Chunked(ChunkStep::DataEnd(false));
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
            Ok(Parsed::Complete(head, _)) | Ok(Parsed::Partial(Some(head))) => Some(head),
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
        self.resyncing = false;
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
            egress: Side::new(),
            ingress: Side::new(),
            methods: VecDeque::new(),
            resync: Resync::default(),
            opaque: false,
        }
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
            max_head: self.limits.max_head_bytes,
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

    /// Bytes skipped so far while resynchronising, and how many times sync
    /// was lost. Returns and resets both.
    pub fn take_resync(&mut self) -> (u64, u64) {
        let r = std::mem::take(&mut self.resync);
        (r.bytes, r.events)
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

impl super::StreamParser for Http1Conn {
    type Message = Message;

    fn feed(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<Message>) {
        Http1Conn::feed(self, dir, chunk, out)
    }

    fn close(&mut self, end_ns: u64, out: &mut Vec<Message>) {
        Http1Conn::close(self, end_ns, out)
    }

    fn take_resync(&mut self) -> (u64, u64) {
        Http1Conn::take_resync(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compact, comparable description of a message (times left out).
    fn summary(m: &Message) -> String {
        fn dir(d: Direction) -> &'static str {
            match d {
                Direction::Egress => "E",
                Direction::Ingress => "I",
            }
        }
        fn num(n: Option<u64>) -> String {
            n.map_or_else(|| "-".to_owned(), |n| n.to_string())
        }
        match m {
            Message::Request(r) => {
                let mut s = format!(
                    "{} {} {} 1.{} cl={} body={}",
                    dir(r.dir),
                    r.method,
                    r.target,
                    r.version_minor,
                    num(r.content_length),
                    r.body_len
                );
                if let Some(h) = &r.host {
                    s += &format!(" host={h}");
                }
                if let Some(ua) = &r.user_agent {
                    s += &format!(" ua={ua}");
                }
                if let Some(tp) = &r.traceparent {
                    s += &format!(" tp={tp}");
                }
                if r.head_truncated {
                    s += " trunc";
                }
                s
            }
            Message::Response(r) => {
                let mut s = format!(
                    "{} {} 1.{} cl={} body={}",
                    dir(r.dir),
                    r.status,
                    r.version_minor,
                    num(r.content_length),
                    r.body_len
                );
                if r.head_truncated {
                    s += " trunc";
                }
                s
            }
        }
    }

    fn summaries(msgs: &[Message]) -> Vec<String> {
        msgs.iter().map(summary).collect()
    }

    /// A fully captured syscall.
    fn whole(data: &[u8], t: u64) -> Chunk<'_> {
        Chunk {
            data,
            total_len: data.len() as u64,
            start_ns: t,
            end_ns: t + 1,
        }
    }

    /// A syscall of `total` bytes of which `data` was captured.
    fn gapped(data: &[u8], total: usize, t: u64) -> Chunk<'_> {
        Chunk {
            data,
            total_len: total as u64,
            start_ns: t,
            end_ns: t + 1,
        }
    }

    struct Case {
        name: &'static str,
        /// Requests travel Ingress (the process is the server) when true.
        server: bool,
        requests: &'static [&'static [u8]],
        responses: &'static [&'static [u8]],
        /// Summaries: all requests, then all responses.
        expect: &'static [&'static str],
    }

    const CASES: &[Case] = &[
        Case {
            name: "keep-alive GETs",
            server: false,
            requests: &[
                b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
                b"GET /style.css HTTP/1.1\r\nHost: example.com\r\n\r\n",
            ],
            responses: &[
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n<html></html>",
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            ],
            expect: &[
                "E GET /index.html 1.1 cl=- body=0 host=example.com ua=curl/8.5.0",
                "E GET /style.css 1.1 cl=- body=0 host=example.com",
                "I 200 1.1 cl=13 body=13",
                "I 404 1.1 cl=0 body=0",
            ],
        },
        Case {
            name: "POST with Content-Length and traceparent",
            server: false,
            requests: &[
                b"POST /api/items?dry=1 HTTP/1.1\r\nHost: api:8080\r\nContent-Type: application/json\r\nContent-Length: 17\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n{\"name\":\"widget\"}",
            ],
            responses: &[
                b"HTTP/1.1 201 Created\r\nLocation: /api/items/9\r\nContent-Length: 8\r\n\r\n{\"id\":9}",
            ],
            expect: &[
                "E POST /api/items?dry=1 1.1 cl=17 body=17 host=api:8080 tp=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "I 201 1.1 cl=8 body=8",
            ],
        },
        Case {
            name: "HEAD then GET, pipelined",
            server: false,
            requests: &[
                b"HEAD /file HTTP/1.1\r\nHost: h\r\n\r\n",
                b"GET /file HTTP/1.1\r\nHost: h\r\n\r\n",
            ],
            responses: &[
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            ],
            expect: &[
                "E HEAD /file 1.1 cl=- body=0 host=h",
                "E GET /file 1.1 cl=- body=0 host=h",
                "I 200 1.1 cl=5 body=0",
                "I 200 1.1 cl=5 body=5",
            ],
        },
        Case {
            name: "chunked response with extension and trailer",
            server: false,
            requests: &[
                b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n",
                b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n",
            ],
            responses: &[
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Expires\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nExpires: never\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ],
            expect: &[
                "E GET /stream 1.1 cl=- body=0 host=h",
                "E GET /next 1.1 cl=- body=0 host=h",
                "I 200 1.1 cl=- body=49",
                "I 204 1.1 cl=- body=0",
            ],
        },
        Case {
            name: "chunked request body",
            server: false,
            requests: &[
                b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nWiki\r\n0\r\n\r\n",
            ],
            responses: &[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
            expect: &[
                "E POST /upload 1.1 cl=- body=14 host=h",
                "I 200 1.1 cl=2 body=2",
            ],
        },
        Case {
            name: "100-continue",
            server: false,
            requests: &[
                b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
            ],
            responses: &[
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            ],
            expect: &[
                "E POST /upload 1.1 cl=5 body=5 host=h",
                "I 100 1.1 cl=- body=0",
                "I 201 1.1 cl=0 body=0",
            ],
        },
        Case {
            name: "204 and 304 have no body",
            server: false,
            requests: &[
                b"DELETE /items/3 HTTP/1.1\r\nHost: h\r\n\r\n",
                b"GET /logo.png HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"abc\"\r\n\r\n",
                b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n",
            ],
            responses: &[
                b"HTTP/1.1 204 No Content\r\nServer: test\r\n\r\n",
                b"HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\nContent-Length: 1234\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes",
            ],
            expect: &[
                "E DELETE /items/3 1.1 cl=- body=0 host=h",
                "E GET /logo.png 1.1 cl=- body=0 host=h",
                "E GET /after 1.1 cl=- body=0 host=h",
                "I 204 1.1 cl=- body=0",
                "I 304 1.1 cl=1234 body=0",
                "I 200 1.1 cl=3 body=3",
            ],
        },
        Case {
            name: "HTTP/1.0 body until close",
            server: false,
            requests: &[b"GET /old HTTP/1.0\r\n\r\n"],
            responses: &[b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"],
            expect: &["E GET /old 1.0 cl=- body=0", "I 200 1.0 cl=- body=13"],
        },
        Case {
            name: "three pipelined requests",
            server: false,
            requests: &[
                b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
                b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n",
                b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n",
            ],
            responses: &[
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nbb",
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 3\r\n\r\nerr",
            ],
            expect: &[
                "E GET /a 1.1 cl=- body=0 host=h",
                "E GET /b 1.1 cl=- body=0 host=h",
                "E GET /c 1.1 cl=- body=0 host=h",
                "I 200 1.1 cl=1 body=1",
                "I 200 1.1 cl=2 body=2",
                "I 500 1.1 cl=3 body=3",
            ],
        },
        Case {
            name: "server side, lower-case headers",
            server: true,
            requests: &[
                b"PUT /v1/kv/key HTTP/1.1\r\nhost: kv.local\r\nuser-agent: Go-http-client/1.1\r\ncontent-length: 3\r\n\r\nabc",
            ],
            responses: &[b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: keep-alive\r\n\r\ntrue"],
            expect: &[
                "I PUT /v1/kv/key 1.1 cl=3 body=3 host=kv.local ua=Go-http-client/1.1",
                "E 200 1.1 cl=4 body=4",
            ],
        },
        Case {
            name: "OPTIONS * and a status line without reason",
            server: false,
            requests: &[b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"],
            responses: &[b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok"],
            expect: &["E OPTIONS * 1.1 cl=- body=0 host=h", "I 200 1.1 cl=2 body=2"],
        },
        Case {
            name: "other method token, absolute-form target",
            server: false,
            requests: &[
                b"PROPFIND http://dav.example/files/ HTTP/1.1\r\nHost: dav.example\r\nDepth: 1\r\nContent-Length: 0\r\n\r\n",
            ],
            responses: &[b"HTTP/1.1 207 Multi-Status\r\nContent-Length: 0\r\n\r\n"],
            expect: &[
                "E PROPFIND http://dav.example/files/ 1.1 cl=0 body=0 host=dav.example",
                "I 207 1.1 cl=0 body=0",
            ],
        },
        Case {
            name: "a body that looks like a request",
            server: true,
            requests: &[
                b"POST /batch HTTP/1.1\r\nHost: h\r\nContent-Length: 32\r\n\r\nGET /inner HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /outer HTTP/1.1\r\nHost: h\r\n\r\n",
            ],
            responses: &[
                b"HTTP/1.1 200 OK\r\nContent-Length: 26\r\n\r\nHTTP/1.1 404 Not Found\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            ],
            expect: &[
                "I POST /batch 1.1 cl=32 body=32 host=h",
                "I GET /outer 1.1 cl=- body=0 host=h",
                "E 200 1.1 cl=26 body=26",
                "E 200 1.1 cl=0 body=0",
            ],
        },
    ];

    fn request_dir(case: &Case) -> Direction {
        if case.server {
            Direction::Ingress
        } else {
            Direction::Egress
        }
    }

    /// Feeds a case's requests, then its responses, each stream cut at the
    /// given positions, then closes the connection.
    fn run(case: &Case, req_cuts: &[usize], resp_cuts: &[usize]) -> (Vec<Message>, Http1Conn) {
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        let mut t = 1000;
        let dir = request_dir(case);
        for (stream, cuts, d) in [
            (case.requests.concat(), req_cuts, dir),
            (case.responses.concat(), resp_cuts, dir.opposite()),
        ] {
            let mut from = 0;
            for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
                if cut > from {
                    conn.feed(d, &whole(&stream[from..cut], t), &mut out);
                    t += 10;
                    from = cut;
                }
            }
        }
        conn.close(t, &mut out);
        (out, conn)
    }

    #[test]
    fn cases_whole_streams() {
        for case in CASES {
            let (out, mut conn) = run(case, &[], &[]);
            assert_eq!(summaries(&out), case.expect, "{}", case.name);
            assert_eq!(conn.take_resync(), (0, 0), "{}", case.name);
        }
    }

    #[test]
    fn cases_one_message_per_syscall() {
        for case in CASES {
            let cuts = |msgs: &[&[u8]]| -> Vec<usize> {
                msgs.iter()
                    .scan(0, |at, m| {
                        *at += m.len();
                        Some(*at)
                    })
                    .collect()
            };
            let (out, mut conn) = run(case, &cuts(case.requests), &cuts(case.responses));
            assert_eq!(summaries(&out), case.expect, "{}", case.name);
            assert_eq!(conn.take_resync(), (0, 0), "{}", case.name);
        }
    }

    #[test]
    fn cases_split_at_every_byte_position() {
        for case in CASES {
            let req_len = case.requests.concat().len();
            let resp_len = case.responses.concat().len();
            for i in 1..req_len {
                let (out, mut conn) = run(case, &[i], &[]);
                assert_eq!(
                    summaries(&out),
                    case.expect,
                    "{} request cut at {i}",
                    case.name
                );
                assert_eq!(
                    conn.take_resync(),
                    (0, 0),
                    "{} request cut at {i}",
                    case.name
                );
            }
            for i in 1..resp_len {
                let (out, mut conn) = run(case, &[], &[i]);
                assert_eq!(
                    summaries(&out),
                    case.expect,
                    "{} response cut at {i}",
                    case.name
                );
                assert_eq!(
                    conn.take_resync(),
                    (0, 0),
                    "{} response cut at {i}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn cases_byte_by_byte() {
        for case in CASES {
            let req: Vec<usize> = (1..case.requests.concat().len()).collect();
            let resp: Vec<usize> = (1..case.responses.concat().len()).collect();
            let (out, mut conn) = run(case, &req, &resp);
            assert_eq!(summaries(&out), case.expect, "{}", case.name);
            assert_eq!(conn.take_resync(), (0, 0), "{}", case.name);
        }
    }

    #[test]
    fn cases_request_direction() {
        for case in CASES {
            let (_, conn) = run(case, &[], &[]);
            // close() keeps what was learnt about the directions.
            assert_eq!(
                conn.request_direction(),
                Some(request_dir(case)),
                "{}",
                case.name
            );
        }
    }

    /// Every strict prefix of every valid head is "incomplete"; the whole
    /// head, with or without body bytes after it, is consumed exactly.
    #[test]
    fn every_strict_prefix_is_incomplete() {
        for case in CASES {
            for msg in case.requests.iter().chain(case.responses) {
                let head_len = msg
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|i| i + 4)
                    .unwrap_or_else(|| panic!("{}: test message without head end", case.name));
                for p in 0..head_len {
                    assert_eq!(
                        parse_head(&msg[..p]),
                        Ok(None),
                        "{}: prefix of {p} bytes of {:?}",
                        case.name,
                        String::from_utf8_lossy(msg)
                    );
                }
                for p in head_len..=msg.len() {
                    let parsed = parse_head(&msg[..p]);
                    assert!(
                        matches!(parsed, Ok(Some((_, n))) if n == head_len),
                        "{}: {p} bytes: {parsed:?}",
                        case.name
                    );
                }
            }
        }
    }

    #[test]
    fn parse_head_fields() {
        let (head, n) = parse_head(
            b"GET /x?y=1 HTTP/1.1\r\nhOsT: a.example\r\nUSER-AGENT:  ua/1 \r\nTraceParent: tp\r\nHost: second\r\nX-Empty:\r\n\r\nrest",
        )
        .unwrap()
        .unwrap();
        assert_eq!(n, 101);
        assert_eq!(
            head,
            Head {
                start: StartLine::Request {
                    method: "GET".into(),
                    target: "/x?y=1".into()
                },
                version_minor: 1,
                host: Some("a.example".into()),
                user_agent: Some("ua/1".into()),
                traceparent: Some("tp".into()),
                content_length: None,
                transfer_encoding: false,
                chunked: false,
            }
        );
        let (head, _) =
            parse_head(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 7, 7\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(head.start, StartLine::Response { status: 503 });
        assert_eq!(head.version_minor, 0);
        assert_eq!(head.content_length, Some(7));
        // A response may use a coding other than chunked: body until close.
        let (head, _) = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(head.transfer_encoding && !head.chunked);
    }

    #[test]
    fn parse_head_errors() {
        let table: &[(&[u8], ParseError)] = &[
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                ParseError::ContentLength,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
                ParseError::ContentLength,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                ParseError::ContentLength,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
                ParseError::ContentLength,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length:\r\n\r\n",
                ParseError::ContentLength,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                ParseError::ContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                ParseError::TransferEncoding,
            ),
            (
                b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
                ParseError::HeaderLine,
            ),
            (b"GET / HTTP/1.1\r\n: h\r\n\r\n", ParseError::HeaderLine),
            (b"GET / HTTP/1.1\r\n folded\r\n\r\n", ParseError::HeaderLine),
            (b"GET / HTTP/1.1\r\nHost: h\n\r\n", ParseError::HeaderLine),
            (
                b"GET / HTTP/1.1\r\nHost: h\x00\r\n\r\n",
                ParseError::HeaderLine,
            ),
            (b"GET / HTTP/1.1\r\n\rx", ParseError::HeaderLine),
            (b"GET / HTTP/1.1\n\n", ParseError::StartLine),
            (b"GET / HTTP/1.2\r\n\r\n", ParseError::StartLine),
            (b"GET / HTTP/2.0\r\n\r\n", ParseError::StartLine),
            (b"GET  / HTTP/1.1\r\n\r\n", ParseError::StartLine),
            (b"get / HTTP/1.1\r\n\r\n", ParseError::StartLine),
            (b"GET /\r\n", ParseError::StartLine),
            (
                b"AVERYVERYLONGMETHODNAME / HTTP/1.1\r\n",
                ParseError::StartLine,
            ),
            (b"HTTP/1.1 600 Odd\r\n\r\n", ParseError::StartLine),
            (b"HTTP/1.1 20x OK\r\n\r\n", ParseError::StartLine),
            (b"HTTP/1.1 200OK\r\n\r\n", ParseError::StartLine),
            (b"HTTP/1.1  200 OK\r\n\r\n", ParseError::StartLine),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                ParseError::StartLine,
            ),
            (b"*1\r\n$4\r\nPING\r\n", ParseError::StartLine),
        ];
        for (input, want) in table {
            assert_eq!(
                parse_head(input),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    const TLS_CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x5b\x8c\x0e\x2a\x10\x7f\x00\x01\xc0\x2b\xc0\x2f\x00\x9e\xcc\xa9\xcc\xa8\x00\x00\x00\x0e\x00\x0c\x00\x00\x09localhost\x00\x0b\x00\x02\x01\x00";
    const REDIS_PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

    #[test]
    fn detect_table() {
        let table: &[(&[u8], Detect)] = &[
            (b"", Detect::NeedMore),
            (b"G", Detect::NeedMore),
            (b"GE", Detect::NeedMore),
            (b"GET", Detect::NeedMore),
            (b"GET ", Detect::NeedMore),
            (b"GET /", Detect::Request),
            (b"GET / HTTP/1.1\r\n", Detect::Request),
            (
                b"DELETE /items/1 HTTP/1.1\r\nHost: h\r\n\r\n",
                Detect::Request,
            ),
            (b"CONNECT example.com:443 HTTP/1.1\r\n", Detect::Request),
            (b"OPTIONS * HTTP/1.1\r\n", Detect::Request),
            (b"PROPFIND /x HTTP/1.1\r\n", Detect::Request),
            (b"PROPFIND /x", Detect::No),
            (b"H", Detect::NeedMore),
            (b"HTTP/1.", Detect::NeedMore),
            (b"HTTP/1.1 20", Detect::NeedMore),
            (b"HTTP/1.1 200", Detect::Response),
            (b"HTTP/1.1 200 OK\r\n", Detect::Response),
            (b"HTTP/2 200", Detect::No),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Detect::No),
            (b"get / HTTP/1.1\r\n", Detect::No),
            (b"GET\t/", Detect::No),
            (b"GET \x00", Detect::No),
            (b"PING\r\n", Detect::No),
            (b"SET key value\r\n", Detect::No),
            (REDIS_PING, Detect::No),
            (TLS_CLIENT_HELLO, Detect::No),
            (b"\x00\x00\x00\x0a\x00\x00\x00\x00", Detect::No),
            (b"J\x00\x00\x00\x0a5.7.44\x00", Detect::No),
        ];
        for (input, want) in table {
            assert_eq!(detect(input), *want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    /// Deterministic xorshift generator for test inputs.
    use crate::protocol::test_rng::Rng;

    /// Feeds `stream` in random syscalls, some with uncaptured tails.
    fn feed_randomly(
        conn: &mut Http1Conn,
        dir: Direction,
        stream: &[u8],
        rng: &mut Rng,
        out: &mut Vec<Message>,
    ) {
        let mut at = 0;
        let mut t = 0;
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
        let mut inputs: Vec<Vec<u8>> = vec![TLS_CLIENT_HELLO.to_vec(), REDIS_PING.repeat(20)];
        for len in [1, 2, 7, 64, 1024, 4096, 20000] {
            inputs.push(rng.bytes(len));
        }
        for input in &inputs {
            for dir in [Direction::Egress, Direction::Ingress] {
                for whole_first in [true, false] {
                    let mut conn = Http1Conn::new(Limits::default());
                    let mut out = Vec::new();
                    if whole_first {
                        conn.feed(dir, &whole(input, 0), &mut out);
                    } else {
                        feed_randomly(&mut conn, dir, input, &mut rng, &mut out);
                    }
                    conn.close(1, &mut out);
                    assert!(out.is_empty(), "{out:?}");
                    let (skipped, lost) = conn.take_resync();
                    assert!(skipped <= input.len() as u64);
                    assert_eq!(lost, 1, "sync is lost once, then stays lost");
                    assert_eq!(conn.request_direction(), None);
                }
            }
        }
    }

    /// Damaged streams of real messages, cut and gapped at random: the
    /// parser must not panic, and whatever it emits must be well formed.
    #[test]
    fn damaged_streams_do_not_panic() {
        let mut rng = Rng(12345);
        for round in 0..400 {
            let case = &CASES[round % CASES.len()];
            let mut conn = Http1Conn::new(Limits {
                max_head_bytes: 16 + rng.below(200),
            });
            let mut out = Vec::new();
            let dir = request_dir(case);
            for (stream, d) in [
                (case.requests.concat(), dir),
                (case.responses.concat(), dir.opposite()),
            ] {
                let mut stream = stream.repeat(1 + rng.below(3));
                for _ in 0..rng.below(4) {
                    let i = rng.below(stream.len());
                    stream[i] = rng.next() as u8;
                }
                if rng.below(3) == 0 {
                    let i = rng.below(stream.len());
                    stream.truncate(i);
                }
                feed_randomly(&mut conn, d, &stream, &mut rng, &mut out);
            }
            conn.close(u64::MAX, &mut out);
            for m in &out {
                match m {
                    Message::Request(r) => assert!(r.method.bytes().all(is_method_byte)),
                    Message::Response(r) => assert!((100..600).contains(&r.status)),
                }
                assert!(m.first_ns() <= m.last_ns(), "{m:?}");
            }
        }
    }

    #[test]
    fn timing_follows_the_direction() {
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        let at = |data: &'static [u8], start_ns, end_ns| Chunk {
            data,
            total_len: data.len() as u64,
            start_ns,
            end_ns,
        };
        conn.feed(
            Direction::Egress,
            &at(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", 100, 110),
            &mut out,
        );
        conn.feed(
            Direction::Ingress,
            &at(
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
                200,
                210,
            ),
            &mut out,
        );
        conn.feed(Direction::Ingress, &at(b"world", 300, 310), &mut out);
        // A head split over two syscalls starts with the first.
        conn.feed(
            Direction::Egress,
            &at(b"GET /b HTTP/1.1\r\n", 400, 405),
            &mut out,
        );
        conn.feed(
            Direction::Egress,
            &at(b"Host: h\r\n\r\n", 500, 505),
            &mut out,
        );
        // A body until close ends with the last syscall that carried it.
        conn.feed(
            Direction::Ingress,
            &at(b"HTTP/1.1 200 OK\r\n\r\nab", 600, 610),
            &mut out,
        );
        conn.feed(Direction::Ingress, &at(b"cd", 700, 710), &mut out);
        conn.close(900, &mut out);
        let times: Vec<(u64, u64)> = out.iter().map(|m| (m.first_ns(), m.last_ns())).collect();
        assert_eq!(times, [(100, 100), (210, 310), (400, 500), (610, 710)]);
    }

    #[test]
    fn resync_after_garbage_in_the_same_syscall() {
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        let data = b"\x16\x03\x01junk\r\nmore junk\r\nGET /ok HTTP/1.1\r\nHost: h\r\n\r\n";
        conn.feed(Direction::Egress, &whole(data, 0), &mut out);
        assert_eq!(summaries(&out), ["E GET /ok 1.1 cl=- body=0 host=h"]);
        assert_eq!(conn.take_resync(), (20, 1));
        assert_eq!(conn.take_resync(), (0, 0), "take_resync resets");
    }

    #[test]
    fn resync_at_the_next_syscall() {
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        conn.feed(
            Direction::Ingress,
            &whole(b"tail of an unknown body", 0),
            &mut out,
        );
        conn.feed(Direction::Ingress, &whole(b"more of it\r\n", 10), &mut out);
        conn.feed(
            Direction::Ingress,
            &whole(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 20),
            &mut out,
        );
        assert_eq!(summaries(&out), ["I 200 1.1 cl=0 body=0"]);
        assert_eq!(conn.take_resync(), (35, 1));
        assert_eq!(conn.request_direction(), Some(Direction::Egress));
    }

    #[test]
    fn bad_content_length_loses_sync_then_recovers() {
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        let bad = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx";
        conn.feed(Direction::Egress, &whole(bad, 0), &mut out);
        conn.feed(
            Direction::Egress,
            &whole(b"GET /ok HTTP/1.1\r\n\r\n", 10),
            &mut out,
        );
        assert_eq!(summaries(&out), ["E GET /ok 1.1 cl=- body=0"]);
        assert_eq!(conn.take_resync(), (bad.len() as u64, 1));
    }

    #[test]
    fn a_direction_keeps_its_role() {
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        conn.feed(
            Direction::Egress,
            &whole(b"GET / HTTP/1.1\r\n\r\n", 0),
            &mut out,
        );
        // A status line where requests flow, or a request line where
        // responses flow, is not believed.
        conn.feed(
            Direction::Egress,
            &whole(b"HTTP/1.1 200 OK\r\n\r\n", 10),
            &mut out,
        );
        conn.feed(
            Direction::Ingress,
            &whole(b"GET / HTTP/1.1\r\n\r\n", 20),
            &mut out,
        );
        conn.feed(
            Direction::Ingress,
            &whole(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 30),
            &mut out,
        );
        assert_eq!(
            summaries(&out),
            ["E GET / 1.1 cl=- body=0", "I 200 1.1 cl=0 body=0"]
        );
        assert_eq!(conn.take_resync(), (37, 2));
    }

    #[test]
    fn head_longer_than_the_limit_is_dropped() {
        let mut conn = Http1Conn::new(Limits { max_head_bytes: 64 });
        let mut out = Vec::new();
        let long = [b"GET /", &[b'a'; 40][..], b" HTTP/1.1\r\n"].concat();
        conn.feed(Direction::Egress, &whole(&long, 0), &mut out);
        conn.feed(
            Direction::Egress,
            &whole(b"X-Pad: 0123456789012345678901234567\r\n\r\n", 10),
            &mut out,
        );
        assert!(out.is_empty());
        conn.feed(
            Direction::Egress,
            &whole(b"GET /short HTTP/1.1\r\n\r\n", 20),
            &mut out,
        );
        assert_eq!(summaries(&out), ["E GET /short 1.1 cl=- body=0"]);
        let (skipped, lost) = conn.take_resync();
        assert_eq!(lost, 1);
        assert_eq!(skipped, long.len() as u64 + 39);
    }

    #[test]
    fn body_in_a_gap_is_skipped_by_length() {
        let head = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 10240\r\n\r\n";
        let mut first = head.to_vec();
        first.resize(1024, b'x');
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        conn.feed(
            Direction::Egress,
            &gapped(&first, head.len() + 10240, 0),
            &mut out,
        );
        conn.feed(
            Direction::Egress,
            &whole(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n", 10),
            &mut out,
        );
        // The same on the response side, body split over two gapped syscalls.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10240\r\n\r\n";
        let mut first = head.to_vec();
        first.resize(1024, b'y');
        conn.feed(
            Direction::Ingress,
            &gapped(&first, head.len() + 5000, 20),
            &mut out,
        );
        conn.feed(
            Direction::Ingress,
            &gapped(&[b'y'; 1024], 5240, 30),
            &mut out,
        );
        conn.feed(
            Direction::Ingress,
            &whole(b"HTTP/1.1 204 No Content\r\n\r\n", 40),
            &mut out,
        );
        assert_eq!(
            summaries(&out),
            [
                "E POST /upload 1.1 cl=10240 body=10240 host=h",
                "E GET /next 1.1 cl=- body=0 host=h",
                "I 200 1.1 cl=10240 body=10240",
                "I 204 1.1 cl=- body=0",
            ]
        );
        assert_eq!(out[2].last_ns(), 31);
        assert_eq!(conn.take_resync(), (0, 0));
    }

    #[test]
    fn gap_past_the_body_loses_the_next_start() {
        let head = b"POST /a HTTP/1.1\r\nContent-Length: 100\r\n\r\n";
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        // 100 body bytes and a 30-byte request, none of them captured.
        conn.feed(
            Direction::Egress,
            &gapped(head, head.len() + 130, 0),
            &mut out,
        );
        conn.feed(
            Direction::Egress,
            &whole(b"GET /after HTTP/1.1\r\n\r\n", 10),
            &mut out,
        );
        assert_eq!(
            summaries(&out),
            [
                "E POST /a 1.1 cl=100 body=100",
                "E GET /after 1.1 cl=- body=0"
            ]
        );
        assert_eq!(conn.take_resync(), (30, 1));
    }

    #[test]
    fn truncated_heads_are_reported() {
        let request = [
            &b"GET /search?q=x HTTP/1.1\r\nHost: h\r\nCookie: "[..],
            &[b'a'; 2000],
            b"\r\n\r\n",
        ]
        .concat();
        let response = [
            &b"HTTP/1.1 200 OK\r\nSet-Cookie: "[..],
            &[b'b'; 2000],
            b"\r\nContent-Length: 5\r\n\r\nhello",
        ]
        .concat();
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        conn.feed(
            Direction::Egress,
            &gapped(&request[..1024], request.len(), 0),
            &mut out,
        );
        conn.feed(
            Direction::Ingress,
            &gapped(&response[..1024], response.len(), 10),
            &mut out,
        );
        conn.feed(
            Direction::Egress,
            &whole(b"GET /next HTTP/1.1\r\n\r\n", 20),
            &mut out,
        );
        conn.feed(
            Direction::Ingress,
            &whole(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!", 30),
            &mut out,
        );
        assert_eq!(
            summaries(&out),
            [
                "E GET /search?q=x 1.1 cl=- body=0 host=h trunc",
                "I 200 1.1 cl=- body=0 trunc",
                "E GET /next 1.1 cl=- body=0",
                "I 200 1.1 cl=1 body=1",
            ]
        );
        assert_eq!(out[0].last_ns(), 0);
        assert_eq!(conn.take_resync(), (0, 0));
    }

    #[test]
    fn truncated_head_split_over_syscalls() {
        // The head starts in one syscall and its end falls in the gap of the next.
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        conn.feed(Direction::Egress, &whole(b"GET /split HTT", 0), &mut out);
        conn.feed(
            Direction::Egress,
            &gapped(b"P/1.1\r\nHost: h\r\nAcc", 3000, 10),
            &mut out,
        );
        assert_eq!(
            summaries(&out),
            ["E GET /split 1.1 cl=- body=0 host=h trunc"]
        );
        assert_eq!((out[0].first_ns(), out[0].last_ns()), (0, 10));
    }

    #[test]
    fn start_line_in_a_gap_is_not_guessed() {
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        conn.feed(Direction::Egress, &gapped(b"", 500, 0), &mut out);
        conn.feed(
            Direction::Egress,
            &gapped(b"GET /a-very-lo", 3000, 10),
            &mut out,
        );
        conn.feed(
            Direction::Egress,
            &whole(b"GET /b HTTP/1.1\r\n\r\n", 20),
            &mut out,
        );
        assert_eq!(summaries(&out), ["E GET /b 1.1 cl=- body=0"]);
        assert_eq!(conn.take_resync(), (500 + 3000, 1));
    }

    const CHUNKED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

    /// First syscall of a chunked response: head, a 2048-byte chunk's size
    /// line and the first 500 bytes of its data.
    fn chunked_start() -> Vec<u8> {
        [CHUNKED_HEAD, b"800\r\n", &[b'z'; 500]].concat()
    }

    #[test]
    fn chunked_body_across_syscalls_with_a_gap_in_data() {
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        conn.feed(Direction::Ingress, &whole(&chunked_start(), 0), &mut out);
        // 1548 data bytes left: 1024 captured, 524 in the gap.
        conn.feed(
            Direction::Ingress,
            &gapped(&[b'z'; 1024], 1548, 10),
            &mut out,
        );
        assert!(out.is_empty());
        conn.feed(Direction::Ingress, &whole(b"\r\n0\r\n\r\n", 20), &mut out);
        conn.feed(
            Direction::Ingress,
            &whole(b"HTTP/1.1 204 No Content\r\n\r\n", 30),
            &mut out,
        );
        assert_eq!(
            summaries(&out),
            ["I 200 1.1 cl=- body=2060", "I 204 1.1 cl=- body=0"]
        );
        assert_eq!(out[0].last_ns(), 21);
        assert_eq!(conn.take_resync(), (0, 0));
    }

    #[test]
    fn chunked_body_whose_sizes_fall_in_a_gap() {
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        conn.feed(Direction::Ingress, &whole(&chunked_start(), 0), &mut out);
        // The last chunk and terminator are not captured: the message is
        // taken to end with this syscall.
        conn.feed(
            Direction::Ingress,
            &gapped(&[b'z'; 1024], 1548 + 7, 10),
            &mut out,
        );
        assert_eq!(summaries(&out), ["I 200 1.1 cl=- body=2060"]);
        assert_eq!(out[0].last_ns(), 11);
        conn.feed(
            Direction::Ingress,
            &whole(b"HTTP/1.1 204 No Content\r\n\r\n", 20),
            &mut out,
        );
        assert_eq!(summaries(&out)[1], "I 204 1.1 cl=- body=0");
        assert_eq!(conn.take_resync(), (0, 1));
    }

    #[test]
    fn broken_chunk_framing_ends_the_message() {
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        // After "3\r\nabc" the chunk's CRLF is missing: the 6 bytes read
        // count as body, "XY\r\n" is skipped, the next response parses.
        let data = [
            CHUNKED_HEAD,
            b"3\r\nabcXY\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ]
        .concat();
        conn.feed(Direction::Ingress, &whole(&data, 0), &mut out);
        assert_eq!(
            summaries(&out),
            ["I 200 1.1 cl=- body=6", "I 200 1.1 cl=0 body=0"]
        );
        assert_eq!(conn.take_resync(), (4, 1));
    }

    #[test]
    fn early_response_does_not_disturb_the_request_body() {
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        conn.feed(
            Direction::Egress,
            &whole(
                b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n0123456789",
                0,
            ),
            &mut out,
        );
        conn.feed(
            Direction::Ingress,
            &whole(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n",
                10,
            ),
            &mut out,
        );
        conn.feed(Direction::Egress, &whole(b"abcdefghij", 20), &mut out);
        conn.feed(
            Direction::Egress,
            &whole(b"GET /again HTTP/1.1\r\n\r\n", 30),
            &mut out,
        );
        conn.feed(
            Direction::Ingress,
            &whole(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 40),
            &mut out,
        );
        assert_eq!(
            summaries(&out),
            [
                "I 413 1.1 cl=0 body=0",
                "E POST /upload 1.1 cl=20 body=20 host=h",
                "E GET /again 1.1 cl=- body=0",
                "I 200 1.1 cl=0 body=0",
            ]
        );
        assert_eq!(conn.take_resync(), (0, 0));
    }

    #[test]
    fn close_drops_partial_messages() {
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        conn.feed(
            Direction::Egress,
            &whole(b"POST / HTTP/1.1\r\nContent-Length: 20\r\n\r\n0123", 0),
            &mut out,
        );
        conn.feed(
            Direction::Ingress,
            &whole(b"HTTP/1.1 200 OK\r\nContent-Len", 10),
            &mut out,
        );
        conn.close(20, &mut out);
        assert!(out.is_empty());
        conn.feed(
            Direction::Ingress,
            &whole(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n01", 30),
            &mut out,
        );
        conn.close(40, &mut out);
        assert!(
            out.is_empty(),
            "a body with a known length is not cut short by close"
        );
    }

    #[test]
    fn upgrade_and_tunnel_stop_parsing() {
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        conn.feed(
            Direction::Egress,
            &whole(
                b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                0,
            ),
            &mut out,
        );
        conn.feed(
            Direction::Ingress,
            &whole(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
                10,
            ),
            &mut out,
        );
        conn.feed(
            Direction::Egress,
            &whole(b"\x81\x85\x00\x00\x00\x00hello", 20),
            &mut out,
        );
        assert_eq!(
            summaries(&out),
            ["E GET /ws 1.1 cl=- body=0 host=h", "I 101 1.1 cl=- body=0"]
        );
        assert_eq!(conn.take_resync(), (0, 0));

        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        conn.feed(
            Direction::Egress,
            &whole(
                b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                0,
            ),
            &mut out,
        );
        conn.feed(
            Direction::Ingress,
            &whole(b"HTTP/1.1 200 Connection Established\r\n\r\n", 10),
            &mut out,
        );
        conn.feed(Direction::Egress, &whole(TLS_CLIENT_HELLO, 20), &mut out);
        conn.feed(
            Direction::Ingress,
            &whole(b"\x16\x03\x03\x00\x5a\x02", 30),
            &mut out,
        );
        assert_eq!(
            summaries(&out),
            [
                "E CONNECT example.com:443 1.1 cl=- body=0 host=example.com:443",
                "I 200 1.1 cl=- body=0",
            ]
        );
        assert_eq!(conn.take_resync(), (0, 0));
    }

    #[test]
    fn request_direction_from_content() {
        let mut conn = Http1Conn::new(Limits::default());
        let mut out = Vec::new();
        assert_eq!(conn.request_direction(), None);
        conn.feed(
            Direction::Egress,
            &whole(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0),
            &mut out,
        );
        assert_eq!(conn.request_direction(), Some(Direction::Ingress));
    }
}
