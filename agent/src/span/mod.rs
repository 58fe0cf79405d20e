//! Span stage: pairs requests with responses and builds spans with the
//! OpenTelemetry semantic conventions. SERVER spans for requests the process
//! read, CLIENT spans for requests it wrote.

pub mod http;
pub mod http2;
pub mod ids;
pub mod model;
pub mod mysql;
pub mod redis;
pub mod route;
pub mod sql;

use crate::capture::Endpoints;

/// What the span stage knows of the connection a message came from.
#[derive(Clone, Copy, Debug)]
pub struct SpanContext {
    pub pid: u32,
    pub endpoints: Endpoints,
    pub options: SpanOptions,
}

/// Span options from the config.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpanOptions {
    pub http: http::HttpSpanOptions,
    pub db: DbSpanOptions,
}

/// Database span options from the config.
#[derive(Clone, Copy, Debug)]
pub struct DbSpanOptions {
    /// Replace literals in `db.query.text` with `?` (on unless configured off).
    pub sanitize_query: bool,
}

impl Default for DbSpanOptions {
    fn default() -> Self {
        DbSpanOptions {
            sanitize_query: true,
        }
    }
}

/// What pairing lost, for the agent's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PairingLoss {
    pub requests_unanswered: u64,
    pub responses_unpaired: u64,
}

/// Turns one connection's parsed messages into spans.
pub trait Pairing: Default {
    type Message;
    /// Takes one message; pushes a span for every request it completes.
    fn push(
        &mut self,
        msg: Self::Message,
        ctx: &SpanContext,
        out: &mut Vec<Span>,
        loss: &mut PairingLoss,
    );
    /// The connection ended: whatever still waits is lost, and counted.
    fn finish(&mut self, loss: &mut PairingLoss);
}

use model::Span;
