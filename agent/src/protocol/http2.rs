//! HTTP/2 frame parser with HPACK, one per connection (being written).

use super::{Chunk, Detect, Direction, StreamParser};

/// Bounds on what the parser buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_buffered_bytes: usize,
}

/// One parsed request or response (one stream's headers and end).
#[derive(Debug, Clone, PartialEq)]
pub enum Message {}

/// Both directions of one HTTP/2 connection.
#[derive(Debug)]
pub struct Http2Conn {}

impl Http2Conn {
    pub fn new(_limits: Limits) -> Self {
        Http2Conn {}
    }
}

impl StreamParser for Http2Conn {
    type Message = Message;

    fn feed(&mut self, _dir: Direction, _chunk: &Chunk<'_>, _out: &mut Vec<Message>) {}
    fn close(&mut self, _end_ns: u64, _out: &mut Vec<Message>) {}
    fn take_resync(&mut self) -> (u64, u64) {
        (0, 0)
    }
}

/// Could these first bytes start an HTTP/2 connection (client preface or frame shape)?
pub fn detect(_prefix: &[u8]) -> Detect {
    Detect::No
}
