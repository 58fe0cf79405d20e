//! Protocol stage: one module per protocol, each a pure streaming parser
//! (bytes in, messages out; no I/O, no clock, no globals).

pub mod http1;

/// Which way bytes moved, seen from the traced process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Written by the process (write, send, sendfile, ...).
    Egress,
    /// Read by the process (read, recv, ...).
    Ingress,
}

impl Direction {
    pub fn opposite(self) -> Direction {
        match self {
            Direction::Egress => Direction::Ingress,
            Direction::Ingress => Direction::Egress,
        }
    }
}

/// The bytes of one syscall on one stream.
///
/// `data` is the captured prefix; the `total_len - data.len()` bytes after it
/// moved on the stream but were not copied (a gap). A parser skips a gap by
/// length and never guesses its content.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub data: &'a [u8],
    pub total_len: u64,
    /// Kernel time (ns, already converted to Unix time) the syscall started.
    pub start_ns: u64,
    /// Kernel time (ns, Unix time) the syscall returned.
    pub end_ns: u64,
}

impl Chunk<'_> {
    /// Bytes of this syscall that were not captured.
    pub fn gap_len(&self) -> u64 {
        self.total_len.saturating_sub(self.data.len() as u64)
    }
}
