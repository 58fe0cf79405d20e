//! HTTP/2 and gRPC spans (being written).

use super::model::Span;
use super::{Pairing, PairingLoss, SpanContext};
use crate::protocol::http2::Message;

/// Pairs one connection's requests with their responses by stream id.
#[derive(Debug, Default)]
pub struct Http2Pairing {}

impl Pairing for Http2Pairing {
    type Message = Message;

    fn push(
        &mut self,
        _msg: Message,
        _ctx: &SpanContext,
        _out: &mut Vec<Span>,
        _loss: &mut PairingLoss,
    ) {
    }
    fn finish(&mut self, _loss: &mut PairingLoss) {}
}
