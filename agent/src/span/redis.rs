//! Redis spans (being written).

use super::model::Span;
use super::{Pairing, PairingLoss, SpanContext};
use crate::protocol::redis::Message;

/// Pairs one connection's commands with their replies.
#[derive(Debug, Default)]
pub struct RedisPairing {}

impl Pairing for RedisPairing {
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
