//! Protocol stage: one folder per protocol, each with a pure streaming
//! parser (bytes in, messages out; no I/O, no clock, no globals), the
//! pairing that turns its messages into spans, its fixtures and its tests.
//! [`PROTOCOLS`] is the one table the rest of the agent reads: detection
//! order, parser and pairing, and the kernel's pre-filter all come from it.
//!
//! Adding a protocol is one folder here and one line in [`PROTOCOLS`]
//! (docs/DESIGN.md walks through it).

pub mod headers;
pub mod http1;
pub mod http2;
pub mod mysql;
pub mod prefilter;
pub mod redis;
mod session;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
pub(crate) mod test_reads;

use sonde_common::PrefixPattern;

pub use session::{Session, SessionReport};

/// Everything the agent needs to know of one protocol.
pub struct ProtocolSpec {
    /// Its name in metrics (`sonde.parse.errors`) and logs.
    pub name: &'static str,
    /// Tells from a direction's first bytes whether it carries this protocol.
    pub detect: fn(&[u8]) -> Detect,
    /// A parser and pairing for one new connection.
    pub new_session: fn(&SessionOptions) -> Box<dyn Session>,
    /// First bytes that may start one of its messages: on a connection
    /// found to carry no known protocol, the kernel ships only syscalls
    /// whose bytes match one of the table's patterns.
    pub kernel_prefilter: &'static [PrefixPattern],
    /// Sends many small messages in one call (pipelining): a connection
    /// whose first bytes match `kernel_prefilter` has its calls copied
    /// whole, not only their head, so that no message boundary is lost.
    pub pipelines: bool,
}

impl std::fmt::Debug for ProtocolSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The supported protocols, in the order detection tries them: HTTP/2
/// first, as its preface would otherwise look like an HTTP/1.x request
/// line to a lenient reader.
pub static PROTOCOLS: &[ProtocolSpec] = &[
    http2::PROTOCOL,
    http1::PROTOCOL,
    redis::PROTOCOL,
    mysql::PROTOCOL,
];

/// The bound on what a parser buffers per direction while the start of a
/// message (an HTTP/1.x head, a Redis header line, a MySQL client packet,
/// an HTTP/2 header block) is incomplete. Each protocol's module says what
/// happens past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_buffered_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_buffered_bytes: 16384,
        }
    }
}

/// What every new session is made with: the parsers get it instead of
/// reading settings from anywhere else, so they stay pure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOptions {
    pub limits: Limits,
    /// Request headers whose values each request keeps (HTTP/1.x and
    /// HTTP/2 only); empty: none, at no cost.
    pub kept_headers: headers::HeaderNames,
}

/// Bytes a parser skipped while resynchronising and times it lost sync,
/// for the agent's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resync {
    pub bytes: u64,
    pub events: u64,
}

impl Resync {
    /// Returns the counts and resets them.
    pub fn take(&mut self) -> (u64, u64) {
        let r = std::mem::take(self);
        (r.bytes, r.events)
    }
}

/// Whether one direction has lost sync, so that one episode of lost sync
/// is counted once however many bytes it skips.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncLoss {
    lost: bool,
}

impl SyncLoss {
    /// Sync is lost: counts a new episode in `resync`; true when this call
    /// started one.
    pub fn lose(&mut self, resync: &mut Resync) -> bool {
        let new = !self.lost;
        if new {
            resync.events += 1;
        }
        self.lost = true;
        new
    }

    /// A message start was found: the episode is over.
    pub fn regain(&mut self) {
        self.lost = false;
    }
}

/// Where a gap (bytes that moved but were not captured) ended, seen from a
/// length-delimited region being read: an HTTP/1.x body or chunk, a RESP
/// bulk payload, a MySQL packet, an HTTP/2 frame payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapEnd {
    /// Inside the region: the rest of it is still due.
    Inside,
    /// Exactly where the region ended: the next captured byte starts what
    /// follows, so framing holds.
    AtEnd,
    /// This many bytes past the region's end: whatever followed it began
    /// in the gap, its header unseen, so framing is lost for those bytes.
    Past(u64),
}

/// Skips `gap` bytes through a region of which `remaining` bytes are due.
/// This is the one rule by which every parser keeps its framing across a
/// gap: lengths it read say how far the gap reaches, content is never
/// guessed.
pub fn skip_gap(remaining: &mut u64, gap: u64) -> GapEnd {
    if gap < *remaining {
        *remaining -= gap;
        return GapEnd::Inside;
    }
    let past = gap - *remaining;
    *remaining = 0;
    if past == 0 {
        GapEnd::AtEnd
    } else {
        GapEnd::Past(past)
    }
}

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
    /// The parser's lost-sync counters.
    fn resync(&mut self) -> &mut Resync;
    /// Bytes skipped while resynchronising and times sync was lost, since
    /// the last call.
    fn take_resync(&mut self) -> (u64, u64) {
        self.resync().take()
    }
    /// Keeps these request headers from the next request on; a parser of
    /// a protocol without headers keeps none.
    fn keep_headers(&mut self, _names: &headers::HeaderNames) {}
}

/// Chunks as the parsers' tests build them.
#[cfg(test)]
pub(crate) mod test_chunks {
    use super::test_rng::Rng;
    use super::{Chunk, Direction, StreamParser};

    /// A fully captured syscall at `t`.
    pub(crate) fn whole(data: &[u8], t: u64) -> Chunk<'_> {
        gapped(data, data.len(), t)
    }

    /// A syscall at `t` of `total` bytes of which `data` was captured.
    pub(crate) fn gapped(data: &[u8], total: usize, t: u64) -> Chunk<'_> {
        Chunk {
            data,
            total_len: total as u64,
            start_ns: t,
            end_ns: t + 1,
        }
    }

    /// Feeds each of `syscalls` whole, 10 ns apart from 0.
    pub(crate) fn feed_whole<P: StreamParser>(
        conn: &mut P,
        syscalls: &[(Direction, &[u8])],
        out: &mut Vec<P::Message>,
    ) {
        for (i, (dir, data)) in syscalls.iter().enumerate() {
            conn.feed(*dir, &whole(data, 10 * i as u64), out);
        }
    }

    /// Feeds `stream` from time `t` on in random syscalls, some with
    /// uncaptured tails.
    pub(crate) fn feed_randomly<P: StreamParser>(
        conn: &mut P,
        dir: Direction,
        stream: &[u8],
        mut t: u64,
        rng: &mut Rng,
        out: &mut Vec<P::Message>,
    ) {
        let mut at = 0;
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

    /// `stream` repeated, with a few bytes overwritten and maybe cut short.
    pub(crate) fn damaged(stream: &[u8], rng: &mut Rng) -> Vec<u8> {
        let mut stream = stream.repeat(1 + rng.below(3));
        for _ in 0..rng.below(4) {
            let i = rng.below(stream.len());
            stream[i] = rng.next() as u8;
        }
        if rng.below(3) == 0 {
            let i = rng.below(stream.len());
            stream.truncate(i);
        }
        stream
    }

    /// Feeds each input to a new parser both ways, whole and in random
    /// syscalls, then closes it: sync must be lost once and stay lost, and
    /// `check` judges the parser and what it emitted.
    pub(crate) fn feed_garbage<P: StreamParser>(
        inputs: &[Vec<u8>],
        rng: &mut Rng,
        new: impl Fn() -> P,
        mut check: impl FnMut(&P, &[P::Message]),
    ) {
        for input in inputs {
            for dir in [Direction::Egress, Direction::Ingress] {
                for whole_first in [true, false] {
                    let mut conn = new();
                    let mut out = Vec::new();
                    if whole_first {
                        conn.feed(dir, &whole(input, 0), &mut out);
                    } else {
                        feed_randomly(&mut conn, dir, input, 0, rng, &mut out);
                    }
                    conn.close(1, &mut out);
                    let (skipped, lost) = conn.take_resync();
                    assert!(skipped <= input.len() as u64);
                    assert_eq!(lost, 1, "sync is lost once, then stays lost");
                    check(&conn, &out);
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::{GapEnd, skip_gap};

    #[test]
    fn a_gap_ends_inside_at_or_past_a_region() {
        let mut remaining = 10;
        assert_eq!(skip_gap(&mut remaining, 4), GapEnd::Inside);
        assert_eq!(remaining, 6);
        assert_eq!(skip_gap(&mut remaining, 6), GapEnd::AtEnd);
        assert_eq!(remaining, 0);
        let mut remaining = 3;
        assert_eq!(skip_gap(&mut remaining, 10), GapEnd::Past(7));
        assert_eq!(remaining, 0);
    }
}
