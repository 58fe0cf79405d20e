//! HTTP/2 over cleartext TCP (h2c, prior knowledge) with HPACK, one
//! [`Http2Conn`] per connection.
//!
//! Each direction has its own frame reader and its own HPACK [`Decoder`].
//! Frames are read header by header; payloads are kept only as far as the
//! parser needs them (header block fragments, SETTINGS, the error code of
//! RST_STREAM), everything else is skipped by length, captured or not. So a
//! large DATA frame whose bytes were not copied by the kernel costs nothing
//! and loses nothing.
//!
//! Streams are followed by id. A stream is reported once, as one
//! [`StreamDone`], when both sides have ended it (END_STREAM) or either side
//! reset it (RST_STREAM); a streaming call is therefore one message however
//! many DATA frames it carried.
//!
//! What the parser cannot know it leaves out rather than guess:
//! - a gap that covers a frame header loses the framing of that direction;
//!   the parser then waits for a later syscall whose first bytes are
//!   plausible frames ([`super::StreamParser::take_resync`] counts the skipped bytes);
//! - a header block that was not captured leaves that direction's HPACK
//!   table unknown, so later references into it decode as unknown fields
//!   (and the stream says so) while literal and static fields still decode;
//! - on a connection that was open before the agent, the same holds from
//!   the first frame seen; `:method` and `:status` are usually static-table
//!   references and so still known.

pub mod hpack;
pub mod span;

use std::collections::{BTreeMap, VecDeque};

use sonde_common::PrefixPattern;

use super::headers::{self, HeaderNames, KeptHeaders};
use super::{Chunk, Detect, Direction, GapEnd, Limits, Resync, StreamParser, skip_gap};
use hpack::{Decoder, Field};

/// HTTP/2 and gRPC over it in the protocol table.
pub const PROTOCOL: super::ProtocolSpec = super::ProtocolSpec {
    name: "http2",
    detect,
    new_session,
    kernel_prefilter: KERNEL_PREFILTER,
    pipelines: false,
};

fn new_session(options: &super::SessionOptions) -> Box<dyn super::Session> {
    super::session::Parsed::<Http2Conn, span::Http2Pairing>::boxed(
        Http2Conn::new(options.limits).keeping_headers(options.kept_headers.clone()),
    )
}

/// HTTP/2: the client connection preface.
const KERNEL_PREFILTER: &[PrefixPattern] = &[PrefixPattern::literal(b"PRI ")];

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE until a peer raises it.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// Streams followed per connection; opening one more forgets the oldest,
/// counted as lost.
pub const MAX_STREAMS: usize = 1024;
/// Bytes of header values kept per stream and direction; fields past it are
/// left out (and the stream marked as having unknown fields).
pub const MAX_STREAM_HEADER_BYTES: usize = 4096;
/// SETTINGS payload bytes read (20 settings); the rest is skipped.
const MAX_SETTINGS_BYTES: usize = 120;
/// SETTINGS frames remembered while waiting for their ACK.
const MAX_PENDING_SETTINGS: usize = 16;
/// Longest grpc-message kept, in bytes (after percent-decoding).
const MAX_GRPC_MESSAGE: usize = 1024;

/// Frame types (RFC 9113 section 6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS identifiers the parser reads.
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
const SETTINGS_ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
const SETTINGS_NO_RFC7540_PRIORITIES: u16 = 0x9;

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
    /// The reserved bit before the stream id (ignored on receipt, but set
    /// by no real peer, so a sign of garbage when detecting).
    pub reserved: bool,
}

/// A frame header that breaks a rule every HTTP/2 peer keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("HTTP/2 frame of this type must be on a stream, not stream 0")]
    NeedsStream,
    #[error("HTTP/2 frame of this type must be on stream 0")]
    NeedsStreamZero,
    #[error("HTTP/2 frame length invalid for its type")]
    Length,
}

impl FrameHeader {
    /// Reads a frame header from the first 9 bytes of `b`.
    pub fn parse(b: &[u8]) -> Option<FrameHeader> {
        let b: &[u8; FRAME_HEADER_LEN] = b.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
        let id = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        Some(FrameHeader {
            length: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream_id: id & 0x7fff_ffff,
            reserved: id & 0x8000_0000 != 0,
        })
    }

    /// The 9 bytes of this header.
    pub fn to_bytes(&self) -> [u8; FRAME_HEADER_LEN] {
        let l = self.length.to_be_bytes();
        let id = (self.stream_id & 0x7fff_ffff) | if self.reserved { 0x8000_0000 } else { 0 };
        let s = id.to_be_bytes();
        [
            l[1], l[2], l[3], self.kind, self.flags, s[0], s[1], s[2], s[3],
        ]
    }

    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Checks the stream and length rules of RFC 9113 for the known frame
    /// types (unknown types pass: peers must ignore them).
    pub fn check(&self) -> Result<(), FrameError> {
        let on_stream = self.stream_id != 0;
        let needs_stream = || {
            if on_stream {
                Ok(())
            } else {
                Err(FrameError::NeedsStream)
            }
        };
        let needs_zero = || {
            if on_stream {
                Err(FrameError::NeedsStreamZero)
            } else {
                Ok(())
            }
        };
        let length = |ok: bool| if ok { Ok(()) } else { Err(FrameError::Length) };
        let padded = u32::from(self.has(flag::PADDED));
        match self.kind {
            kind::DATA => {
                needs_stream()?;
                length(self.length >= padded)
            }
            kind::HEADERS => {
                needs_stream()?;
                let prio = if self.has(flag::PRIORITY) { 5 } else { 0 };
                length(self.length >= padded + prio)
            }
            kind::PRIORITY => {
                needs_stream()?;
                length(self.length == 5)
            }
            kind::RST_STREAM => {
                needs_stream()?;
                length(self.length == 4)
            }
            kind::SETTINGS => {
                needs_zero()?;
                if self.has(flag::ACK) {
                    length(self.length == 0)
                } else {
                    length(self.length.is_multiple_of(6))
                }
            }
            kind::PUSH_PROMISE => {
                needs_stream()?;
                length(self.length >= padded + 4)
            }
            kind::PING => {
                needs_zero()?;
                length(self.length == 8)
            }
            kind::GOAWAY => {
                needs_zero()?;
                length(self.length >= 8)
            }
            kind::WINDOW_UPDATE => length(self.length == 4),
            kind::CONTINUATION => needs_stream(),
            _ => Ok(()),
        }
    }
}

/// Flags defined for each known frame type.
fn defined_flags(kind: u8) -> u8 {
    match kind {
        kind::DATA => flag::END_STREAM | flag::PADDED,
        kind::HEADERS => flag::END_STREAM | flag::END_HEADERS | flag::PADDED | flag::PRIORITY,
        kind::SETTINGS | kind::PING => flag::ACK,
        kind::PUSH_PROMISE => flag::END_HEADERS | flag::PADDED,
        kind::CONTINUATION => flag::END_HEADERS,
        _ => 0,
    }
}

/// What a strict look at a run of frames found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Not frames a peer would send.
    No,
    /// Consistent so far, but not one whole frame header yet.
    NeedMore,
    /// Every whole frame header (and the payload bytes at hand) is
    /// plausible. `request`: the first header block looks like a request
    /// (`Some(true)`) or a response (`Some(false)`).
    Frames { request: Option<bool> },
}

/// Checks that `data` starts a run of frames an HTTP/2 peer would send:
/// known types, lengths up to `max_len`, defined flags only, reserved bit
/// clear, the stream and length rules of each type, HEADERS on odd
/// (client-opened) streams unless a push was promised, CONTINUATION only where a header block goes on,
/// and plausible SETTINGS, WINDOW_UPDATE and padding values where captured.
fn shape(data: &[u8], max_len: u32) -> Shape {
    let mut pos = 0usize;
    let mut open_block: Option<u32> = None;
    let mut request = None;
    let mut promised = false;
    loop {
        let rest = data.get(pos..).unwrap_or_default();
        let Some(h) = FrameHeader::parse(rest) else {
            return match (partial_header_ok(rest, max_len, open_block.is_some()), pos) {
                (false, _) => Shape::No,
                (true, 0) => Shape::NeedMore,
                (true, _) => Shape::Frames { request },
            };
        };
        if h.kind > kind::CONTINUATION
            || h.length > max_len
            || h.reserved
            || h.flags & !defined_flags(h.kind) != 0
            || h.check().is_err()
        {
            return Shape::No;
        }
        match open_block {
            Some(id) if h.kind != kind::CONTINUATION || h.stream_id != id => return Shape::No,
            None if h.kind == kind::CONTINUATION => return Shape::No,
            _ => {}
        }
        let start = pos + FRAME_HEADER_LEN;
        let end = start.saturating_add(h.length as usize);
        let payload = data.get(start..end.min(data.len())).unwrap_or_default();
        if !payload_ok(&h, payload) {
            return Shape::No;
        }
        if h.kind == kind::PUSH_PROMISE {
            promised = true;
        }
        if h.kind == kind::HEADERS {
            // Even streams are pushed, so only after a PUSH_PROMISE.
            if h.stream_id.is_multiple_of(2) && !promised {
                return Shape::No;
            }
            if request.is_none() {
                request = fragment_of(&h, payload)
                    .and_then(|f| f.first().copied())
                    .and_then(looks_like_request);
            }
        }
        open_block = match h.kind {
            kind::HEADERS | kind::PUSH_PROMISE | kind::CONTINUATION
                if !h.has(flag::END_HEADERS) =>
            {
                Some(h.stream_id)
            }
            _ => None,
        };
        if end >= data.len() {
            return Shape::Frames { request };
        }
        pos = end;
    }
}

/// Fewer than 9 bytes: could they begin a frame header that [`shape`]
/// would accept (a CONTINUATION exactly when one is expected)?
fn partial_header_ok(b: &[u8], max_len: u32, continuation: bool) -> bool {
    let at = |i: usize| b.get(i).copied();
    // The smallest length these bytes can still become.
    let least = u32::from_be_bytes([
        0,
        at(0).unwrap_or(0),
        at(1).unwrap_or(0),
        at(2).unwrap_or(0),
    ]);
    if least > max_len {
        return false;
    }
    if let Some(k) = at(3) {
        let kind_ok = if continuation {
            k == kind::CONTINUATION
        } else {
            k < kind::CONTINUATION
        };
        if !kind_ok || at(4).is_some_and(|f| f & !defined_flags(k) != 0) {
            return false;
        }
    }
    at(5).is_none_or(|x| x & 0x80 == 0)
}

/// Checks the captured part of a frame's payload.
fn payload_ok(h: &FrameHeader, p: &[u8]) -> bool {
    match h.kind {
        kind::DATA if h.has(flag::PADDED) => p.first().is_none_or(|&pad| u32::from(pad) < h.length),
        kind::HEADERS | kind::PUSH_PROMISE if h.has(flag::PADDED) => {
            let fixed = match h.kind {
                kind::PUSH_PROMISE => 5,
                _ if h.has(flag::PRIORITY) => 6,
                _ => 1,
            };
            p.first()
                .is_none_or(|&pad| u32::from(pad) + fixed <= h.length)
        }
        kind::SETTINGS => p.chunks_exact(6).all(|s| {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                SETTINGS_ENABLE_PUSH
                | SETTINGS_ENABLE_CONNECT_PROTOCOL
                | SETTINGS_NO_RFC7540_PRIORITIES => v <= 1,
                SETTINGS_INITIAL_WINDOW_SIZE => v <= 0x7fff_ffff,
                SETTINGS_MAX_FRAME_SIZE => (16_384..=16_777_215).contains(&v),
                _ => true,
            }
        }),
        kind::WINDOW_UPDATE => match p.get(..4) {
            Some(b) => {
                let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                v != 0 && v & 0x8000_0000 == 0
            }
            None => true,
        },
        kind::GOAWAY => p.first().is_none_or(|b| b & 0x80 == 0),
        _ => true,
    }
}

/// Does a header block starting with this byte look like a request
/// (`:method`, `:scheme`, `:path` or `:authority` first) or a response
/// (`:status` first)? Only static-table forms are recognised.
fn looks_like_request(first: u8) -> Option<bool> {
    match first {
        0x82..=0x87 => Some(true),
        0x88..=0x8e => Some(false),
        // Literals with a static pseudo-header name (with, without or never
        // indexed).
        0x41..=0x47 | 0x01..=0x07 | 0x11..=0x17 => Some(true),
        0x48..=0x4e | 0x08..=0x0e | 0x18..=0x1e => Some(false),
        _ => None,
    }
}

/// The header block fragment inside a whole HEADERS or PUSH_PROMISE payload
/// (or a CONTINUATION), without padding and priority fields.
fn fragment_of<'a>(h: &FrameHeader, p: &'a [u8]) -> Option<&'a [u8]> {
    let mut start = 0usize;
    let mut end = p.len();
    if h.kind != kind::CONTINUATION && h.has(flag::PADDED) {
        let pad = usize::from(*p.first()?);
        start = 1;
        end = end.checked_sub(pad)?;
    }
    if h.kind == kind::HEADERS && h.has(flag::PRIORITY) {
        start += 5;
    }
    if h.kind == kind::PUSH_PROMISE {
        start += 4;
    }
    p.get(start..end)
}

/// Could these first bytes start an HTTP/2 connection?
///
/// The client preface is a request (a strict prefix of it: need more).
/// Without it, for connections open before the agent started, the bytes
/// must be a strict-looking run of frames ([`shape`]): a request if the
/// first header block starts with a request pseudo-header, else a response.
pub fn detect(prefix: &[u8]) -> Detect {
    let n = prefix.len().min(PREFACE.len());
    if prefix.get(..n) == PREFACE.get(..n) {
        return if n == PREFACE.len() {
            Detect::Request
        } else {
            Detect::NeedMore
        };
    }
    match shape(prefix, DEFAULT_MAX_FRAME_SIZE) {
        Shape::No => Detect::No,
        Shape::NeedMore => Detect::NeedMore,
        Shape::Frames {
            request: Some(true),
        } => Detect::Request,
        Shape::Frames { .. } => Detect::Response,
    }
}

/// The request header fields a span needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub content_type: Option<String>,
    pub te: Option<String>,
    pub traceparent: Option<String>,
    pub user_agent: Option<String>,
    pub content_length: Option<u64>,
    /// The headers the parser was told to keep (gRPC metadata included).
    pub kept_headers: KeptHeaders,
}

/// A stream reset (RST_STREAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    /// The error code; `None` when the frame's payload was not captured.
    pub code: Option<u32>,
    /// The direction the RST_STREAM frame travelled.
    pub dir: Direction,
}

/// One finished stream: a request and its response.
///
/// A `None` field was absent, or could not be known when the matching
/// `*_fields_unknown` flag is set (a header block was not captured, or
/// referred to HPACK table entries from before the agent was watching).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamDone {
    pub stream_id: u32,
    /// The direction the request travelled (Egress: the process is the client).
    pub request_dir: Direction,
    pub request: RequestHead,
    /// The final `:status` (interim 1xx responses are skipped).
    pub status: Option<u16>,
    pub response_content_type: Option<String>,
    /// `grpc-status`, from the trailers or a trailers-only response.
    pub grpc_status: Option<u32>,
    /// `grpc-message`, percent-decoded.
    pub grpc_message: Option<String>,
    pub reset: Option<Reset>,
    /// The client ended its side (END_STREAM).
    pub request_ended: bool,
    /// The server ended its side (END_STREAM); false if the stream was reset
    /// first or the connection ended first.
    pub response_ended: bool,
    /// DATA payload bytes (padding excluded), when the side ended and every
    /// frame of it was seen.
    pub request_body_size: Option<u64>,
    pub response_body_size: Option<u64>,
    pub request_fields_unknown: bool,
    pub response_fields_unknown: bool,
    /// When the request's first HEADERS frame moved (Egress: the write
    /// started; Ingress: the read returned).
    pub first_ns: u64,
    /// When the last frame of the stream (either side) moved.
    pub last_ns: u64,
}

/// What the parser emits.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A stream ended on both sides, or was reset, or the connection ended
    /// while its response was under way.
    Stream(Box<StreamDone>),
    /// Streams dropped without a span: a request whose response never
    /// started, or a response to a request the parser never saw (opened
    /// before the agent was watching, or forgotten because of
    /// [`MAX_STREAMS`]).
    Lost {
        requests_unanswered: u64,
        responses_unpaired: u64,
    },
}

impl Message {
    /// Start and end time of a stream message.
    pub fn times(&self) -> Option<(u64, u64)> {
        match self {
            Message::Stream(s) => Some((s.first_ns, s.last_ns)),
            Message::Lost { .. } => None,
        }
    }
}

fn idx(dir: Direction) -> usize {
    match dir {
        Direction::Egress => 0,
        Direction::Ingress => 1,
    }
}

/// Where a direction's frame reader is.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No byte seen in this direction yet.
    Start,
    /// Inside the client preface; bytes matched so far.
    Preface(usize),
    /// Reading a frame header; `first_ns` is when its first byte moved.
    Header {
        buf: [u8; FRAME_HEADER_LEN],
        have: usize,
        first_ns: u64,
    },
    /// Reading a frame payload.
    Payload {
        frame: FrameHeader,
        remaining: u32,
        /// Leading payload bytes the parser keeps.
        want: usize,
        /// Some of the wanted bytes were not captured.
        lost: bool,
        first_ns: u64,
    },
    /// Framing lost: waiting for a syscall that starts with plausible frames.
    Lost,
}

/// A SETTINGS_HEADER_TABLE_SIZE waiting for its ACK.
#[derive(Debug, Clone, Copy)]
enum TableSetting {
    Unchanged,
    Set(u32),
    /// The SETTINGS payload was not captured.
    Unknown,
}

/// A header block being put together from HEADERS or PUSH_PROMISE and
/// CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream_id: u32,
    promise: bool,
    end_stream: bool,
    buf: Vec<u8>,
    /// A fragment was not captured, or the block outgrew the bound.
    lost: bool,
    first_ns: u64,
}

/// One direction of the connection: its frames, and the HPACK decoder for
/// the header blocks that travel it.
#[derive(Debug)]
struct Half {
    phase: Phase,
    /// Kept payload bytes of the frame being read.
    payload: Vec<u8>,
    hpack: Decoder,
    block: Option<Block>,
    /// SETTINGS_HEADER_TABLE_SIZE in force for this direction's decoder
    /// (sent the other way and acknowledged this way), if known.
    table_acked: Option<u32>,
    table_pending: VecDeque<TableSetting>,
    /// Largest SETTINGS_MAX_FRAME_SIZE this direction's reader announced.
    max_frame_size: u32,
    /// Header blocks decoded (or lost) in this direction.
    blocks: u64,
}

impl Half {
    fn new() -> Half {
        Half {
            phase: Phase::Start,
            payload: Vec::new(),
            hpack: Decoder::mid_connection(),
            block: None,
            table_acked: None,
            table_pending: VecDeque::new(),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            blocks: 0,
        }
    }

    /// Tells the decoder how large a table the peer may choose.
    fn update_table_limit(&mut self) {
        let pending_max = self.table_pending.iter().try_fold(0u32, |m, s| match s {
            TableSetting::Unchanged => Some(m),
            TableSetting::Set(v) => Some(m.max(*v)),
            TableSetting::Unknown => None,
        });
        let limit = match (self.table_acked, pending_max) {
            (Some(a), Some(p)) => Some(a.max(p) as usize),
            _ => None,
        };
        self.hpack.set_size_limit(limit);
    }
}

/// Header fields of one stream side, as far as they are wanted.
#[derive(Debug, Clone, Default)]
struct Fields {
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    scheme: Option<String>,
    content_type: Option<String>,
    te: Option<String>,
    traceparent: Option<String>,
    user_agent: Option<String>,
    content_length: Option<u64>,
    status: Option<u16>,
    grpc_status: Option<u32>,
    grpc_message: Option<String>,
    /// Values of the headers the parser was told to keep, apart from the
    /// budget: each is bounded ([`headers::MAX_KEPT_VALUE`]).
    kept: KeptHeaders,
    /// Bytes of values kept.
    bytes: usize,
    /// A wanted field was left out for [`MAX_STREAM_HEADER_BYTES`].
    over: bool,
}

impl Fields {
    /// Keeps `value` in `slot` if the slot is empty and the budget allows.
    fn keep(slot: &mut Option<String>, value: &[u8], bytes: &mut usize, over: &mut bool) {
        if slot.is_some() {
            return;
        }
        if *bytes + value.len() > MAX_STREAM_HEADER_BYTES {
            *over = true;
            return;
        }
        *bytes += value.len();
        *slot = Some(String::from_utf8_lossy(value).into_owned());
    }

    /// Takes one decoded field of a block, keeping it if `kept` names it.
    fn take(&mut self, f: Field<'_>, kept: &HeaderNames) {
        let (Some(name), Some(value)) = (f.name, f.value) else {
            return;
        };
        if let Some(index) = kept.index_of(name) {
            headers::keep(&mut self.kept, index, value);
        }
        // An empty pseudo-header makes a malformed message: not kept.
        if value.is_empty() && name.starts_with(b":") {
            return;
        }
        let (bytes, over) = (&mut self.bytes, &mut self.over);
        match name {
            b":method" => Self::keep(&mut self.method, value, bytes, over),
            b":path" => Self::keep(&mut self.path, value, bytes, over),
            b":authority" => Self::keep(&mut self.authority, value, bytes, over),
            b":scheme" => Self::keep(&mut self.scheme, value, bytes, over),
            b"content-type" => Self::keep(&mut self.content_type, value, bytes, over),
            b"te" => Self::keep(&mut self.te, value, bytes, over),
            b"traceparent" => Self::keep(&mut self.traceparent, value, bytes, over),
            b"user-agent" => Self::keep(&mut self.user_agent, value, bytes, over),
            b"content-length" if self.content_length.is_none() => {
                self.content_length = number(value);
            }
            b":status" if self.status.is_none() => {
                self.status = number(value)
                    .filter(|s| (100..=599).contains(s))
                    .map(|s| s as u16);
            }
            b"grpc-status" => self.grpc_status = number(value).and_then(|v| u32::try_from(v).ok()),
            b"grpc-message" => {
                let text = percent_decode(value);
                if *bytes + text.len() > MAX_STREAM_HEADER_BYTES {
                    *over = true;
                } else {
                    *bytes += text.len();
                    self.grpc_message = Some(text);
                }
            }
            _ => {}
        }
    }

    /// Merges the fields of a later block of the same side: request fields
    /// and the final status come from the first block that has them; gRPC
    /// status and message from the last.
    fn merge(&mut self, later: Fields) {
        let budget = MAX_STREAM_HEADER_BYTES.saturating_sub(self.bytes);
        if later.bytes > budget {
            self.over = true;
            return;
        }
        self.bytes += later.bytes;
        self.over |= later.over;
        let fill = |a: &mut Option<String>, b: Option<String>| {
            if a.is_none() {
                *a = b;
            }
        };
        fill(&mut self.method, later.method);
        fill(&mut self.path, later.path);
        fill(&mut self.authority, later.authority);
        fill(&mut self.scheme, later.scheme);
        fill(&mut self.content_type, later.content_type);
        fill(&mut self.te, later.te);
        fill(&mut self.traceparent, later.traceparent);
        fill(&mut self.user_agent, later.user_agent);
        self.content_length = self.content_length.or(later.content_length);
        for (index, value) in later.kept {
            if headers::value_of(&self.kept, usize::from(index)).is_none() {
                self.kept.push((index, value));
            }
        }
        if self.status.is_none() {
            self.status = later.status;
        }
        if later.grpc_status.is_some() {
            self.grpc_status = later.grpc_status;
        }
        if later.grpc_message.is_some() {
            self.grpc_message = later.grpc_message;
        }
    }
}

/// A decimal number of up to 19 digits.
fn number(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Decodes the percent-encoding of grpc-message (invalid escapes are kept
/// as they are), cut to [`MAX_GRPC_MESSAGE`] bytes.
fn percent_decode(v: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(v.len().min(MAX_GRPC_MESSAGE));
    let mut i = 0;
    while let Some(&b) = v.get(i) {
        if out.len() >= MAX_GRPC_MESSAGE {
            break;
        }
        let escaped = match (b, v.get(i + 1).copied(), v.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) => hex(h).zip(hex(l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match escaped {
            Some(x) => {
                out.push(x);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    let mut s = String::from_utf8_lossy(&out).into_owned();
    while s.len() > MAX_GRPC_MESSAGE {
        s.pop();
    }
    s
}

/// One side of a stream.
#[derive(Debug, Clone, Default)]
struct Side {
    /// Header blocks seen (request or response headers, trailers).
    blocks: u32,
    first_ns: u64,
    last_ns: u64,
    ended: bool,
    /// Framing of this direction was lost while the side was open: its end
    /// may have gone by unseen.
    maybe_lost: bool,
    /// Some header field of this side is unknown.
    unknown: bool,
    body: u64,
    /// `body` is not exact (padding length not captured).
    body_inexact: bool,
    fields: Fields,
}

#[derive(Debug, Clone)]
struct Stream {
    sides: [Side; 2],
    /// The direction of the block that opened the stream here, and whether
    /// that block had a `:status` (then it was a response).
    opened_by: Direction,
    opened_with_status: bool,
    reset: Option<Reset>,
    reset_ns: u64,
}

/// Both directions of one HTTP/2 connection.
#[derive(Debug)]
pub struct Http2Conn {
    limits: Limits,
    kept_headers: HeaderNames,
    halves: [Half; 2],
    streams: BTreeMap<u32, Stream>,
    /// Highest stream id a stream was opened for; frames for lower ids not
    /// followed belong to streams closed or opened before the agent.
    max_stream_id: u32,
    /// The direction requests travel, once known.
    client_dir: Option<Direction>,
    resync: Resync,
}

impl Http2Conn {
    pub fn new(limits: Limits) -> Self {
        Http2Conn {
            limits,
            kept_headers: HeaderNames::default(),
            halves: [Half::new(), Half::new()],
            streams: BTreeMap::new(),
            max_stream_id: 0,
            client_dir: None,
            resync: Resync::default(),
        }
    }

    /// Keeps the values of these request headers on each request.
    pub fn keeping_headers(mut self, names: HeaderNames) -> Self {
        self.kept_headers = names;
        self
    }

    /// Which direction carries requests, once known.
    pub fn request_direction(&self) -> Option<Direction> {
        self.client_dir
    }

    /// Does the HPACK decoder of `dir` know its whole dynamic table?
    pub fn hpack_synchronised(&self, dir: Direction) -> bool {
        self.halves[idx(dir)].hpack.is_synchronised()
    }

    /// Streams being followed.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    fn feed_chunk(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<Message>) {
        let d = idx(dir);
        let first_ns = chunk.first_ns(dir);
        let end_ns = chunk.last_ns(dir);
        let mut data = chunk.data;
        let mut gap = chunk.gap_len();
        if data.is_empty() && gap == 0 {
            return;
        }
        // Decisions made only where a syscall starts.
        match self.halves[d].phase {
            Phase::Start => {
                let n = data.len().min(PREFACE.len());
                let max = self.halves[d].max_frame_size;
                if n > 0 && data.get(..n) == PREFACE.get(..n) {
                    self.halves[d].phase = Phase::Preface(0);
                    self.on_preface(dir);
                } else if !data.is_empty()
                    && matches!(shape(data, max), Shape::Frames { .. } | Shape::NeedMore)
                {
                    // (A first syscall shorter than a frame header is taken
                    // on trust: its frame is checked once complete.)
                    self.halves[d].phase = Phase::Header {
                        buf: [0; FRAME_HEADER_LEN],
                        have: 0,
                        first_ns,
                    };
                } else {
                    // Joined in the middle of a frame.
                    self.halves[d].phase = Phase::Lost;
                    self.resync.events += 1;
                    self.resync.bytes += chunk.total_len;
                    return;
                }
            }
            Phase::Lost => {
                if self.plausible(d, data) {
                    self.halves[d].phase = Phase::Header {
                        buf: [0; FRAME_HEADER_LEN],
                        have: 0,
                        first_ns,
                    };
                } else {
                    self.resync.bytes += chunk.total_len;
                    return;
                }
            }
            _ => {}
        }
        while !data.is_empty() {
            let used = self.step(dir, data, first_ns, end_ns, out);
            data = data.get(used..).unwrap_or_default();
            if matches!(self.halves[d].phase, Phase::Lost) {
                self.resync.bytes += data.len() as u64 + gap;
                return;
            }
        }
        while gap > 0 {
            let used = self.step_gap(dir, gap, end_ns, out);
            gap -= used;
            if matches!(self.halves[d].phase, Phase::Lost) {
                self.resync.bytes += gap;
                return;
            }
        }
    }

    /// Do these first bytes of a syscall look like frame boundaries?
    fn plausible(&self, d: usize, data: &[u8]) -> bool {
        let max = self.halves[d].max_frame_size.max(DEFAULT_MAX_FRAME_SIZE);
        matches!(shape(data, max), Shape::Frames { .. })
    }

    /// The client preface opened this direction: the connection is new, so
    /// both HPACK tables start empty.
    fn on_preface(&mut self, dir: Direction) {
        self.client_dir = Some(dir);
        if self.halves.iter().all(|h| h.blocks == 0) {
            for h in &mut self.halves {
                h.hpack = Decoder::new();
                h.table_acked = Some(hpack::DEFAULT_TABLE_SIZE as u32);
                h.update_table_limit();
            }
        }
    }

    /// Consumes captured bytes; returns how many were used.
    fn step(
        &mut self,
        dir: Direction,
        data: &[u8],
        chunk_first_ns: u64,
        end_ns: u64,
        out: &mut Vec<Message>,
    ) -> usize {
        let d = idx(dir);
        match self.halves[d].phase {
            Phase::Preface(matched) => {
                let want = PREFACE.get(matched..).unwrap_or_default();
                let n = want.len().min(data.len());
                if data.get(..n) != want.get(..n) {
                    self.lose_sync(dir, out);
                    return 0;
                }
                self.halves[d].phase = if matched + n == PREFACE.len() {
                    Phase::Header {
                        buf: [0; FRAME_HEADER_LEN],
                        have: 0,
                        first_ns: chunk_first_ns,
                    }
                } else {
                    Phase::Preface(matched + n)
                };
                n
            }
            Phase::Header {
                mut buf,
                have,
                first_ns,
            } => {
                let first_ns = if have == 0 { chunk_first_ns } else { first_ns };
                let n = (FRAME_HEADER_LEN - have).min(data.len());
                if let (Some(dst), Some(src)) = (buf.get_mut(have..have + n), data.get(..n)) {
                    dst.copy_from_slice(src);
                }
                let have = have + n;
                self.halves[d].phase = Phase::Header {
                    buf,
                    have,
                    first_ns,
                };
                if have == FRAME_HEADER_LEN
                    && let Some(frame) = FrameHeader::parse(&buf)
                {
                    self.start_frame(dir, frame, first_ns, end_ns, out);
                }
                n
            }
            Phase::Payload {
                frame,
                remaining,
                want,
                ..
            } => {
                let n = (remaining as usize).min(data.len());
                let done = (frame.length - remaining) as usize;
                if done < want {
                    let keep = (want - done).min(n);
                    self.halves[d]
                        .payload
                        .extend_from_slice(data.get(..keep).unwrap_or_default());
                }
                self.payload_moved(dir, n as u32, false, end_ns, out);
                n
            }
            Phase::Start | Phase::Lost => data.len(),
        }
    }

    /// Skips bytes that moved but were not captured; returns how many.
    fn step_gap(&mut self, dir: Direction, gap: u64, end_ns: u64, out: &mut Vec<Message>) -> u64 {
        let d = idx(dir);
        match self.halves[d].phase {
            Phase::Preface(matched) => {
                // The preface has a fixed length: its rest is skipped.
                let n = ((PREFACE.len() - matched) as u64).min(gap);
                let matched = matched + n as usize;
                self.halves[d].phase = if matched == PREFACE.len() {
                    Phase::Header {
                        buf: [0; FRAME_HEADER_LEN],
                        have: 0,
                        first_ns: end_ns,
                    }
                } else {
                    Phase::Preface(matched)
                };
                n
            }
            Phase::Header { .. } => {
                // A frame header was not captured: framing is lost.
                self.lose_sync(dir, out);
                0
            }
            Phase::Payload {
                frame,
                remaining,
                want,
                ..
            } => {
                let mut left = u64::from(remaining);
                let n = match skip_gap(&mut left, gap) {
                    GapEnd::Inside | GapEnd::AtEnd => gap,
                    // The rest of the gap covers the next frame's header,
                    // which the next step finds lost.
                    GapEnd::Past(past) => gap - past,
                };
                let done = (frame.length - remaining) as usize;
                self.payload_moved(dir, n as u32, done < want, end_ns, out);
                n
            }
            Phase::Start | Phase::Lost => gap,
        }
    }

    /// `n` bytes of the payload being read moved (`lost`: wanted ones among
    /// them were not captured); the frame is finished with its last byte.
    fn payload_moved(
        &mut self,
        dir: Direction,
        n: u32,
        lost: bool,
        end_ns: u64,
        out: &mut Vec<Message>,
    ) {
        let Phase::Payload {
            remaining,
            lost: was_lost,
            ..
        } = &mut self.halves[idx(dir)].phase
        else {
            return;
        };
        *remaining -= n;
        *was_lost |= lost;
        if *remaining == 0 {
            self.finish_frame(dir, end_ns, out);
        }
    }

    /// A frame header is complete: check it and start reading the payload.
    fn start_frame(
        &mut self,
        dir: Direction,
        frame: FrameHeader,
        first_ns: u64,
        end_ns: u64,
        out: &mut Vec<Message>,
    ) {
        let d = idx(dir);
        let half = &self.halves[d];
        let in_sequence = match &half.block {
            Some(b) => frame.kind == kind::CONTINUATION && frame.stream_id == b.stream_id,
            None => frame.kind != kind::CONTINUATION,
        };
        if frame.check().is_err() || !in_sequence {
            self.lose_sync(dir, out);
            return;
        }
        let length = frame.length as usize;
        let block_room = self
            .limits
            .max_buffered_bytes
            .saturating_sub(half.block.as_ref().map_or(0, |b| b.buf.len()));
        let want = match frame.kind {
            // Padding length and priority fields come before the fragment.
            kind::HEADERS | kind::PUSH_PROMISE | kind::CONTINUATION => length.min(block_room + 6),
            kind::DATA if frame.has(flag::PADDED) => 1,
            kind::RST_STREAM => 4,
            kind::SETTINGS => length.min(MAX_SETTINGS_BYTES),
            _ => 0,
        };
        let half = &mut self.halves[d];
        half.payload.clear();
        half.phase = Phase::Payload {
            frame,
            remaining: frame.length,
            want,
            lost: false,
            first_ns,
        };
        if frame.length == 0 {
            self.finish_frame(dir, end_ns, out);
        }
    }

    /// The payload of the current frame has been read: act on the frame.
    fn finish_frame(&mut self, dir: Direction, end_ns: u64, out: &mut Vec<Message>) {
        let d = idx(dir);
        let half = &mut self.halves[d];
        let Phase::Payload {
            frame,
            want,
            lost,
            first_ns,
            ..
        } = half.phase
        else {
            return;
        };
        half.phase = Phase::Header {
            buf: [0; FRAME_HEADER_LEN],
            have: 0,
            first_ns: end_ns,
        };
        let payload = std::mem::take(&mut half.payload);
        // Everything wanted is there only if it was all captured and the
        // frame was not larger than what is kept.
        let whole = !lost && want == frame.length as usize;
        match frame.kind {
            kind::DATA => self.on_data(dir, &frame, &payload, lost, end_ns, out),
            kind::HEADERS | kind::PUSH_PROMISE | kind::CONTINUATION => {
                // A CONTINUATION goes on the block being read, if any.
                let block = if frame.kind == kind::CONTINUATION {
                    self.halves[d].block.take()
                } else {
                    Some(Block {
                        stream_id: frame.stream_id,
                        promise: frame.kind == kind::PUSH_PROMISE,
                        end_stream: frame.kind == kind::HEADERS && frame.has(flag::END_STREAM),
                        buf: Vec::new(),
                        lost: false,
                        first_ns,
                    })
                };
                if let Some(block) = block {
                    let fragment = fragment_of(&frame, &payload).filter(|_| whole);
                    let end_headers = frame.has(flag::END_HEADERS);
                    self.add_fragment(dir, block, fragment, end_headers, end_ns, out);
                }
            }
            kind::RST_STREAM => {
                let code = payload
                    .get(..4)
                    .filter(|_| !lost)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                self.on_reset(dir, frame.stream_id, code, end_ns, out);
            }
            kind::SETTINGS => self.on_settings(dir, &frame, &payload, lost),
            _ => {}
        }
        let half = &mut self.halves[d];
        if half.payload.is_empty() {
            half.payload = payload;
            half.payload.clear();
        }
    }

    /// Adds a fragment (`None`: not captured) to a header block, and
    /// decodes the block once it is complete.
    fn add_fragment(
        &mut self,
        dir: Direction,
        mut block: Block,
        fragment: Option<&[u8]>,
        end_headers: bool,
        end_ns: u64,
        out: &mut Vec<Message>,
    ) {
        match fragment {
            Some(f)
                if !block.lost && block.buf.len() + f.len() <= self.limits.max_buffered_bytes =>
            {
                block.buf.extend_from_slice(f);
            }
            _ => {
                block.lost = true;
                block.buf = Vec::new();
            }
        }
        if end_headers {
            self.end_block(dir, block, end_ns, out);
        } else {
            self.halves[idx(dir)].block = Some(block);
        }
    }

    /// A header block is complete: decode it (keeping HPACK in step) and
    /// apply it to its stream.
    fn end_block(&mut self, dir: Direction, block: Block, end_ns: u64, out: &mut Vec<Message>) {
        let d = idx(dir);
        // Responses keep none: only a request's headers are wanted.
        let kept: &HeaderNames = match self.client_dir {
            Some(c) if c != dir => HeaderNames::none(),
            _ => &self.kept_headers,
        };
        let half = &mut self.halves[d];
        half.blocks += 1;
        let mut fields = Fields::default();
        let unknown = if block.lost {
            half.hpack.desync();
            self.resync.events += 1;
            true
        } else {
            match half.hpack.decode(&block.buf, |f| fields.take(f, kept)) {
                Ok(summary) => {
                    if summary.mismatch {
                        self.resync.events += 1;
                    }
                    summary.unknown > 0
                }
                Err(_) => {
                    self.resync.events += 1;
                    true
                }
            }
        };
        if block.promise {
            // A pushed request: decoded only to keep the table in step.
            return;
        }
        if self.client_dir.is_none() {
            if fields.method.is_some() {
                self.client_dir = Some(dir);
            } else if fields.status.is_some() {
                self.client_dir = Some(dir.opposite());
            }
        }
        let id = block.stream_id;
        // Even ids are streams the server pushed: no span.
        if id.is_multiple_of(2) {
            return;
        }
        if !self.streams.contains_key(&id) {
            if id <= self.max_stream_id {
                return;
            }
            self.max_stream_id = id;
            if self.streams.len() >= MAX_STREAMS
                && let Some((_, old)) = self.streams.pop_first()
            {
                out.push(self.lost_message(&old));
            }
            let mut sides = [Side::default(), Side::default()];
            if let Some(c) = self.client_dir
                && c != dir
            {
                // Opened by its response: the request went by before the
                // agent was watching, its end with it.
                sides[idx(c)].maybe_lost = true;
            }
            self.streams.insert(
                id,
                Stream {
                    sides,
                    opened_by: dir,
                    opened_with_status: fields.status.is_some(),
                    reset: None,
                    reset_ns: 0,
                },
            );
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = &mut stream.sides[d];
        if side.blocks == 0 {
            side.first_ns = block.first_ns;
        }
        side.blocks += 1;
        side.last_ns = end_ns;
        // A 1xx response's :status is not the final one.
        if fields.status.is_some_and(|s| s < 200) {
            fields.status = None;
        }
        side.fields.merge(fields);
        side.unknown |= unknown || side.fields.over;
        if block.end_stream {
            side.ended = true;
        }
        self.check_done(id, out);
    }

    fn on_data(
        &mut self,
        dir: Direction,
        frame: &FrameHeader,
        payload: &[u8],
        lost: bool,
        end_ns: u64,
        out: &mut Vec<Message>,
    ) {
        let Some(stream) = self.streams.get_mut(&frame.stream_id) else {
            return;
        };
        let side = &mut stream.sides[idx(dir)];
        let mut body = u64::from(frame.length);
        if frame.has(flag::PADDED) {
            match payload.first() {
                Some(&pad) if !lost => body = body.saturating_sub(1 + u64::from(pad)),
                _ => side.body_inexact = true,
            }
        }
        side.body = side.body.saturating_add(body);
        side.last_ns = end_ns;
        if frame.has(flag::END_STREAM) {
            side.ended = true;
            self.check_done(frame.stream_id, out);
        }
    }

    fn on_reset(
        &mut self,
        dir: Direction,
        id: u32,
        code: Option<u32>,
        end_ns: u64,
        out: &mut Vec<Message>,
    ) {
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.reset = Some(Reset { code, dir });
            stream.reset_ns = end_ns;
            self.check_done(id, out);
        }
    }

    fn on_settings(&mut self, dir: Direction, frame: &FrameHeader, payload: &[u8], lost: bool) {
        if frame.has(flag::ACK) {
            // Acknowledges SETTINGS sent the other way, which concern the
            // decoder of this direction.
            let half = &mut self.halves[idx(dir)];
            match half.table_pending.pop_front() {
                Some(TableSetting::Set(v)) => half.table_acked = Some(v),
                Some(TableSetting::Unknown) => half.table_acked = None,
                Some(TableSetting::Unchanged) | None => {}
            }
            half.update_table_limit();
            return;
        }
        // Settings of this direction's writer: they bound what it receives,
        // i.e. the other direction.
        let other = &mut self.halves[idx(dir.opposite())];
        let mut table = if lost || payload.len() < frame.length as usize {
            TableSetting::Unknown
        } else {
            TableSetting::Unchanged
        };
        for s in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                SETTINGS_HEADER_TABLE_SIZE if !matches!(table, TableSetting::Unknown) => {
                    table = TableSetting::Set(v);
                }
                SETTINGS_MAX_FRAME_SIZE if (16_384..=16_777_215).contains(&v) => {
                    other.max_frame_size = other.max_frame_size.max(v);
                }
                _ => {}
            }
        }
        if other.table_pending.len() >= MAX_PENDING_SETTINGS {
            other.table_pending.pop_front();
        }
        other.table_pending.push_back(table);
        other.update_table_limit();
    }

    /// Framing of `dir` is lost.
    fn lose_sync(&mut self, dir: Direction, out: &mut Vec<Message>) {
        let d = idx(dir);
        self.resync.events += 1;
        let half = &mut self.halves[d];
        if let Phase::Header { have, .. } = half.phase {
            // Read, but part of a frame that cannot be framed.
            self.resync.bytes += have as u64;
        }
        half.phase = Phase::Lost;
        half.payload.clear();
        // Header blocks may go by unseen.
        half.hpack.desync();
        let open_block = half.block.take();
        if let Some(b) = open_block
            && let Some(s) = self.streams.get_mut(&b.stream_id)
            && !b.promise
        {
            s.sides[d].unknown = true;
        }
        // So may the ends of open streams, and their trailers.
        let mut ids = Vec::new();
        for (id, s) in &mut self.streams {
            let side = &mut s.sides[d];
            if !side.ended {
                side.maybe_lost = true;
                side.unknown = true;
                ids.push(*id);
            }
        }
        for id in ids {
            self.check_done(id, out);
        }
    }

    /// The direction requests of `stream` travel, if it can be told.
    fn client_of(&self, stream: &Stream) -> Option<Direction> {
        if let Some(c) = self.client_dir {
            return Some(c);
        }
        for dir in [Direction::Egress, Direction::Ingress] {
            let f = &stream.sides[idx(dir)].fields;
            if f.method.is_some() {
                return Some(dir);
            }
            if f.status.is_some() {
                return Some(dir.opposite());
            }
        }
        // The side that opened the stream without a :status.
        (!stream.opened_with_status).then_some(stream.opened_by)
    }

    /// Emits the stream if it is finished.
    fn check_done(&mut self, id: u32, out: &mut Vec<Message>) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        let done = stream.reset.is_some()
            || match self.client_dir {
                Some(c) => {
                    let client = &stream.sides[idx(c)];
                    let server = &stream.sides[idx(c.opposite())];
                    server.ended && (client.ended || client.maybe_lost)
                }
                None => stream.sides.iter().all(|s| s.ended),
            };
        if done && let Some(stream) = self.streams.remove(&id) {
            out.push(self.done_message(id, &stream));
        }
    }

    /// The message for a finished (or abandoned) stream.
    fn done_message(&self, id: u32, stream: &Stream) -> Message {
        let Some(c) = self.client_of(stream) else {
            return self.lost_message(stream);
        };
        let req = &stream.sides[idx(c)];
        let resp = &stream.sides[idx(c.opposite())];
        if req.blocks == 0 {
            return self.lost_message(stream);
        }
        let body = |s: &Side| (s.ended && !s.maybe_lost && !s.body_inexact).then_some(s.body);
        let f = &req.fields;
        Message::Stream(Box::new(StreamDone {
            stream_id: id,
            request_dir: c,
            request: RequestHead {
                method: f.method.clone(),
                path: f.path.clone(),
                authority: f.authority.clone(),
                scheme: f.scheme.clone(),
                content_type: f.content_type.clone(),
                te: f.te.clone(),
                traceparent: f.traceparent.clone(),
                user_agent: f.user_agent.clone(),
                content_length: f.content_length,
                kept_headers: f.kept.clone(),
            },
            status: resp.fields.status,
            response_content_type: resp.fields.content_type.clone(),
            grpc_status: resp.fields.grpc_status,
            grpc_message: resp.fields.grpc_message.clone(),
            reset: stream.reset,
            request_ended: req.ended,
            response_ended: resp.ended,
            request_body_size: body(req),
            response_body_size: body(resp),
            request_fields_unknown: req.unknown,
            response_fields_unknown: resp.unknown,
            first_ns: req.first_ns,
            last_ns: req
                .last_ns
                .max(resp.last_ns)
                .max(stream.reset_ns)
                .max(req.first_ns),
        }))
    }

    /// The loss a stream dropped without a span counts as.
    fn lost_message(&self, stream: &Stream) -> Message {
        let request_seen = self
            .client_of(stream)
            .is_some_and(|c| stream.sides[idx(c)].blocks > 0);
        Message::Lost {
            requests_unanswered: u64::from(request_seen),
            responses_unpaired: u64::from(!request_seen),
        }
    }
}

impl StreamParser for Http2Conn {
    type Message = Message;

    fn keep_headers(&mut self, names: &HeaderNames) {
        self.kept_headers = names.clone();
    }

    fn feed(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<Message>) {
        self.feed_chunk(dir, chunk, out);
    }

    /// The connection ended: streams whose response started are reported
    /// as they are (not ended); the others are counted as lost.
    fn close(&mut self, _end_ns: u64, out: &mut Vec<Message>) {
        let streams = std::mem::take(&mut self.streams);
        let (mut unanswered, mut unpaired) = (0, 0);
        for (id, stream) in &streams {
            let started = self.client_of(stream).is_some_and(|c| {
                stream.sides[idx(c)].blocks > 0 && stream.sides[idx(c.opposite())].blocks > 0
            });
            let msg = if started {
                self.done_message(*id, stream)
            } else {
                self.lost_message(stream)
            };
            match msg {
                Message::Lost {
                    requests_unanswered,
                    responses_unpaired,
                } => {
                    unanswered += requests_unanswered;
                    unpaired += responses_unpaired;
                }
                m => out.push(m),
            }
        }
        if unanswered + unpaired > 0 {
            out.push(Message::Lost {
                requests_unanswered: unanswered,
                responses_unpaired: unpaired,
            });
        }
        for h in &mut self.halves {
            h.block = None;
            h.payload = Vec::new();
        }
    }

    /// Sync is lost on framing and on HPACK state alike.
    fn resync(&mut self) -> &mut Resync {
        &mut self.resync
    }
}

#[cfg(test)]
mod tests;
