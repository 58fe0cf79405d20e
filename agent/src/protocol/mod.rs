//! Protocol stage: one module per protocol, each a pure streaming parser
//! (bytes in, messages out; no I/O, no clock, no globals).

pub mod hpack;
pub mod http1;
pub mod http2;
pub mod mysql;
pub mod prefilter;
pub mod redis;

/// What the first bytes of a stream look like to one protocol's detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detect {
    /// The start of a request (the writer is the client).
    Request,
    /// The start of a response or of a server greeting (the writer is the server).
    Response,
    /// Not this protocol.
    No,
    /// Too few bytes to tell.
    NeedMore,
}

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

    /// When this chunk's first byte changed hands: a write hands its bytes
    /// to the kernel from its start, a read has them only when it returns.
    pub fn first_ns(&self, dir: Direction) -> u64 {
        match dir {
            Direction::Egress => self.start_ns,
            Direction::Ingress => self.end_ns,
        }
    }

    /// When this chunk's last byte changed hands, taken on the same side
    /// of the call as [`Chunk::first_ns`]. A write can return after the
    /// peer has already read its bytes (its CPU may be taken away in
    /// between), so timing a response by that return could end a server
    /// span after its client span. The price: a write that blocks on a
    /// full socket buffer is timed from its start.
    pub fn last_ns(&self, dir: Direction) -> u64 {
        self.first_ns(dir)
    }
}

/// A streaming parser for both directions of one connection.
pub trait StreamParser {
    type Message;
    /// Feeds one syscall's bytes; complete messages are pushed to `out`.
    fn feed(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<Self::Message>);
    /// The connection closed at `end_ns`: finish what can be finished.
    fn close(&mut self, end_ns: u64, out: &mut Vec<Self::Message>);
    /// Bytes skipped while resynchronising and times sync was lost, since
    /// the last call.
    fn take_resync(&mut self) -> (u64, u64);
}

/// A small deterministic generator for the parsers' garbage tests.
#[cfg(test)]
pub(crate) mod test_rng {
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }
}
