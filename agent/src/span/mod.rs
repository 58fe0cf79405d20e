//! Span stage: pairs requests with responses and builds spans.

pub mod model;
pub mod route;
