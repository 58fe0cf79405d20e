//! MySQL client-server protocol streaming parser (being written).

use super::{Chunk, Detect, Direction, StreamParser};

/// Bounds on what the parser buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_buffered_bytes: usize,
}

/// One parsed command or response.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {}

/// Both directions of one MySQL connection.
#[derive(Debug)]
pub struct MysqlConn {}

impl MysqlConn {
    pub fn new(_limits: Limits) -> Self {
        MysqlConn {}
    }
}

impl StreamParser for MysqlConn {
    type Message = Message;

    fn feed(&mut self, _dir: Direction, _chunk: &Chunk<'_>, _out: &mut Vec<Message>) {}
    fn close(&mut self, _end_ns: u64, _out: &mut Vec<Message>) {}
    fn take_resync(&mut self) -> (u64, u64) {
        (0, 0)
    }
}

/// Could these first bytes start a MySQL conversation?
pub fn detect(_prefix: &[u8]) -> Detect {
    Detect::No
}
