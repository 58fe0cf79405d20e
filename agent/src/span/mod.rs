//! Span stage: pairs requests with responses and builds spans with the
//! OpenTelemetry semantic conventions. SERVER spans for requests the process
//! read, CLIENT spans for requests it wrote.

pub mod http;
pub mod ids;
pub mod model;
pub mod route;

use crate::capture::Endpoints;

/// What the span stage knows of the connection a message came from.
#[derive(Clone, Copy, Debug)]
pub struct SpanContext {
    pub pid: u32,
    pub endpoints: Endpoints,
}
