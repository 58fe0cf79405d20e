//! sonde: a zero-instrumentation tracing agent.
//!
//! The stages follow the data: `capture` decodes kernel records, `conn`
//! keeps one stream per connection and direction, `protocol` parses bytes
//! into messages, `span` pairs them into spans, `enrich` labels them with
//! process metadata, `metrics` aggregates every span into RED histograms and
//! the service graph, and `export` ships them. Each stage depends only on
//! the ones before it.

pub mod capture;
pub mod check;
pub mod config;
pub mod conn;
pub mod enrich;
pub mod export;
pub mod health;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod protocol;
pub mod reload;
pub mod sample;
pub mod span;
pub mod stats;
