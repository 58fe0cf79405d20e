//! The per-node configuration (`sonde run --config PATH`).
//!
//! Every section is optional and every key has a default; an unknown key or a
//! bad value is an error that names the key and its line.

use serde::Deserialize;

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub capture: CaptureConfig,
    pub http: HttpConfig,
    pub export: ExportConfig,
    pub log: LogConfig,
}

/// Kernel-side capture and the connection table.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Bytes copied from each syscall's buffer, 1..=16384.
    pub bytes: u32,
    /// Size of the kernel ring buffer in bytes: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Connections tracked at once, in the kernel and in user space (LRU).
    pub max_connections: u32,
    /// Bytes buffered per stream while a message head is incomplete.
    pub max_buffered_bytes: u32,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            bytes: sonde_common::DEFAULT_CAPTURE,
            ring_buffer_bytes: 16 << 20,
            max_connections: 65536,
            max_buffered_bytes: 16384,
        }
    }
}

/// HTTP span options.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Record `url.query` (off by default: query strings often carry secrets).
    pub capture_query: bool,
}

/// Where spans go.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// Print one line per span on stdout. `None` means: on unless OTLP is configured.
    pub console: Option<bool>,
    pub otlp: OtlpConfig,
    /// Spans waiting for export; when full, new spans are dropped and counted.
    pub queue_size: u32,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            console: None,
            otlp: OtlpConfig::default(),
            queue_size: 8192,
        }
    }
}

/// OTLP exporter. Each key falls back to the standard `OTEL_EXPORTER_OTLP_*`
/// environment variable when unset.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// Base endpoint, e.g. `http://127.0.0.1:4317` (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub endpoint: Option<String>,
    /// Full traces endpoint (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    pub traces_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (`OTEL_EXPORTER_OTLP_PROTOCOL`), default `grpc`.
    pub protocol: Option<String>,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`, `k=v,k2=v2`).
    pub headers: std::collections::BTreeMap<String, String>,
    /// Spans per export request.
    pub batch_size: u32,
    /// Longest a span waits before its batch is sent, in milliseconds.
    pub batch_timeout_ms: u64,
    /// Per-request timeout, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: None,
            traces_endpoint: None,
            protocol: None,
            headers: Default::default(),
            batch_size: 512,
            batch_timeout_ms: 1000,
            timeout_ms: 10000,
        }
    }
}

/// Logging.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace` (or a tracing filter); `RUST_LOG` wins.
    pub level: String,
    /// Seconds between the one-line counter summaries (0 turns them off).
    pub stats_interval_secs: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            stats_interval_secs: 60,
        }
    }
}
