//! MySQL spans (being written).

use super::model::Span;
use super::{Pairing, PairingLoss, SpanContext};
use crate::protocol::mysql::Message;

/// Pairs one connection's commands with their responses.
#[derive(Debug, Default)]
pub struct MysqlPairing {}

impl Pairing for MysqlPairing {
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
