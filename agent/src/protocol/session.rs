//! One connection's protocol session: its parser and its pairing, driven
//! the same way for every protocol.

use super::headers::HeaderNames;
use super::{Chunk, Direction, StreamParser};
use crate::span::{Pairing, PairingOut};

/// One chunk the connection carried, or `None` for its close.
pub type Input<'a> = Option<(Direction, &'a Chunk<'a>)>;

/// A connection's parser and pairing, behind one interface so the pipeline
/// needs no per-protocol code.
pub trait Session {
    /// Parses one chunk, or with `None` the close at `end_ns`, and pushes
    /// the spans the messages it yields complete; pairing losses go to `out`.
    fn run(&mut self, input: Input<'_>, end_ns: u64, out: &mut PairingOut<'_>) -> SessionReport;
    /// Keeps these request headers from the next request on (a config
    /// reload changed the tenant rules).
    fn keep_headers(&mut self, names: &HeaderNames);
}

/// What a session's parser lost while running, for the agent's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionReport {
    /// Bytes the parser skipped while resynchronising.
    pub resync_bytes: u64,
    /// Times the parser lost sync.
    pub resyncs: u64,
}

/// The session of any parser with the pairing of its messages.
pub struct Parsed<P: StreamParser, Q> {
    parser: P,
    pairing: Q,
    /// The messages of one chunk, kept between chunks so that their
    /// buffer is allocated once per connection, not once per chunk.
    messages: Vec<P::Message>,
}

impl<P, Q> Parsed<P, Q>
where
    P: StreamParser + 'static,
    Q: Pairing<Message = P::Message> + 'static,
{
    /// A boxed session around `parser`, for [`super::ProtocolSpec::new_session`].
    pub fn boxed(parser: P) -> Box<dyn Session> {
        Box::new(Parsed {
            parser,
            pairing: Q::default(),
            messages: Vec::new(),
        })
    }
}

impl<P, Q> Session for Parsed<P, Q>
where
    P: StreamParser,
    Q: Pairing<Message = P::Message>,
{
    fn run(&mut self, input: Input<'_>, end_ns: u64, out: &mut PairingOut<'_>) -> SessionReport {
        match input {
            Some((dir, chunk)) => self.parser.feed(dir, chunk, &mut self.messages),
            None => self.parser.close(end_ns, &mut self.messages),
        }
        let (resync_bytes, resyncs) = self.parser.take_resync();
        for msg in self.messages.drain(..) {
            self.pairing.push(msg, out);
        }
        if input.is_none() {
            self.pairing.finish(&mut out.loss);
        }
        SessionReport {
            resync_bytes,
            resyncs,
        }
    }

    fn keep_headers(&mut self, names: &HeaderNames) {
        self.parser.keep_headers(names);
    }
}
