//! The OTLP transport: one client per signal, set up the same way for
//! every signal, by gRPC (a tonic channel: one HTTP/2 connection,
//! multiplexed, connected lazily) or HTTP/protobuf (a reqwest client with
//! its connection pool).
//!
//! A request is encoded once; the client sends the bytes and retries what
//! the OTLP specification calls retryable (gRPC `UNAVAILABLE`,
//! `DEADLINE_EXCEEDED` and the like; HTTP 429, 502, 503, 504 and requests
//! that got no answer) with exponential backoff and jitter, within the
//! request timeout. A request never takes longer than [`OtlpClient::limit`].

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::{OtlpTarget, Protocol, Signal};
use crate::export::ExportError;

/// An OTLP export request of one signal.
pub trait Payload: Message {
    /// The collector's reply.
    type Reply: Message + Default;
    const SIGNAL: Signal;
    /// What the signal counts, for messages (`spans`, `data points`).
    const ITEMS: &'static str;
    /// How many items the collector refused and why (OTLP partial success).
    fn rejected(reply: &Self::Reply) -> Option<(i64, String)>;
}

/// `Payload` for a signal's request: its reply, signal, what it counts
/// and the reply's field of rejected items.
macro_rules! payload {
    ($request:ty, $reply:ty, $signal:expr, $items:literal, $rejected:ident) => {
        impl Payload for $request {
            type Reply = $reply;
            const SIGNAL: Signal = $signal;
            const ITEMS: &'static str = $items;
            fn rejected(reply: &Self::Reply) -> Option<(i64, String)> {
                let p = reply.partial_success.as_ref()?;
                Some((p.$rejected, p.error_message.clone()))
            }
        }
    };
}

payload!(
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
    Signal::Traces,
    "spans",
    rejected_spans
);
payload!(
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
    Signal::Metrics,
    "data points",
    rejected_data_points
);

/// Why a request was not delivered. The messages never hold header values
/// or the user name and password of an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("gRPC status {code:?}{detail}")]
    Grpc {
        code: tonic::Code,
        /// The transport's own error when the status was made locally; a
        /// collector's message is left out, as it may echo credentials.
        detail: String,
        /// The wait a collector asked for.
        retry_after: Option<Duration>,
    },
    #[error("HTTP status {status}")]
    HttpStatus {
        status: http::StatusCode,
        retry_after: Option<Duration>,
    },
    #[error("HTTP request failed: {0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the collector rejected {count} {items}: {message}")]
    Rejected {
        count: u64,
        items: &'static str,
        message: String,
    },
}

impl SendError {
    /// `None` when the request must not be sent again; otherwise the wait
    /// the collector asked for, if any.
    fn retry(&self) -> Option<Option<Duration>> {
        use tonic::Code;
        match self {
            SendError::Grpc {
                code, retry_after, ..
            } => match code {
                Code::Unavailable
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::OutOfRange
                | Code::DataLoss => Some(*retry_after),
                _ => None,
            },
            SendError::HttpStatus {
                status,
                retry_after,
            } => matches!(status.as_u16(), 429 | 502 | 503 | 504).then_some(*retry_after),
            SendError::Http(_) => Some(None),
            SendError::Timeout(_) | SendError::Rejected { .. } => None,
        }
    }
}

/// How failed requests are retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub max_jitter: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1600),
            max_jitter: Duration::from_millis(100),
        }
    }
}

/// The longest wait a collector may ask for between two attempts.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// Most bytes of a reply read over HTTP (a reply is a few bytes).
const MAX_REPLY: usize = 64 * 1024;

enum Transport {
    Grpc {
        channel: tonic::transport::Channel,
        metadata: tonic::metadata::MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: http::HeaderMap,
    },
}

/// Sends the requests of one signal to one collector.
pub struct OtlpClient {
    signal: Signal,
    transport: Transport,
    timeout: Duration,
    retry: RetryPolicy,
}

impl OtlpClient {
    /// Sets up the transport for `target`; connects lazily. Needs a tokio
    /// runtime context.
    pub fn new(target: &OtlpTarget) -> Result<OtlpClient, ExportError> {
        let timeout = target.timeout;
        let connect_timeout = timeout.min(Duration::from_secs(5));
        let bad_name = |k: &str| ExportError::Build(format!("bad header name {k:?}"));
        let bad_value = |k: &str| ExportError::Build(format!("bad value for header {k:?}"));
        let transport = match target.protocol {
            Protocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(target.endpoint.clone())
                    .map_err(|e| {
                        ExportError::Build(format!(
                            "endpoint {:?}: {e}",
                            super::redact_userinfo(&target.endpoint)
                        ))
                    })?
                    .timeout(timeout)
                    .connect_timeout(connect_timeout)
                    .tcp_nodelay(true);
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &target.headers {
                    let key = tonic::metadata::AsciiMetadataKey::from_bytes(k.as_bytes())
                        .map_err(|_| bad_name(k))?;
                    metadata.insert(key, v.parse().map_err(|_| bad_value(k))?);
                }
                Transport::Grpc {
                    channel: endpoint.connect_lazy(),
                    metadata,
                }
            }
            Protocol::HttpProtobuf => {
                let client = reqwest::Client::builder()
                    .timeout(timeout)
                    .connect_timeout(connect_timeout)
                    .build()
                    .map_err(|e| ExportError::Build(format!("HTTP client: {e}")))?;
                let mut headers = http::HeaderMap::new();
                for (k, v) in &target.headers {
                    let name =
                        http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad_name(k))?;
                    let mut value = http::HeaderValue::from_str(v).map_err(|_| bad_value(k))?;
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
                Transport::Http {
                    client,
                    url: target.endpoint.clone(),
                    headers,
                }
            }
        };
        Ok(OtlpClient {
            signal: target.signal,
            transport,
            timeout,
            retry: RetryPolicy::default(),
        })
    }

    /// The longest one [`export`](Self::export) takes, retries included:
    /// retries start only within the timeout, and the last one may take a
    /// timeout of its own.
    pub fn limit(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(1)
    }

    /// Sends `request`, retrying as the policy says. A reply that reports
    /// rejected items is an error ([`SendError::Rejected`]): what was
    /// rejected is lost, and sending it again would not help.
    pub async fn export<P: Payload>(&self, request: &P) -> Result<(), SendError> {
        debug_assert_eq!(P::SIGNAL, self.signal);
        let body = Bytes::from(request.encode_to_vec());
        let limit = self.limit();
        let reply = tokio::time::timeout(limit, self.send(body))
            .await
            .unwrap_or(Err(SendError::Timeout(limit)))?;
        // A reply that does not decode still came with a success status.
        let Ok(reply) = P::Reply::decode(reply) else {
            return Ok(());
        };
        match P::rejected(&reply) {
            Some((count, message)) if count > 0 => Err(SendError::Rejected {
                count: count as u64,
                items: P::ITEMS,
                message,
            }),
            _ => Ok(()),
        }
    }

    /// Sends `body` until it is delivered, a failure is final, the retries
    /// are used up, or the next attempt would start after the timeout.
    async fn send(&self, body: Bytes) -> Result<Bytes, SendError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut delay = self.retry.initial_delay;
        let mut cap = self.retry.max_delay;
        let mut attempt = 0;
        loop {
            let err = match self.send_once(body.clone()).await {
                Ok(reply) => return Ok(reply),
                Err(e) => e,
            };
            let Some(asked) = err.retry() else {
                return Err(err);
            };
            if attempt >= self.retry.max_retries {
                return Err(err);
            }
            attempt += 1;
            if let Some(asked) = asked {
                let asked = asked.min(MAX_RETRY_AFTER);
                // A collector's wait may exceed the usual cap; the deadline
                // still bounds it.
                cap = cap.max(asked);
                delay = delay.max(asked);
            }
            let jitter = self.retry.max_jitter.mul_f64(rand::random::<f64>());
            let wait = (delay + jitter).min(cap);
            if tokio::time::Instant::now() + wait >= deadline {
                return Err(err);
            }
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(cap);
        }
    }

    async fn send_once(&self, body: Bytes) -> Result<Bytes, SendError> {
        match &self.transport {
            Transport::Grpc { channel, metadata } => {
                let local = |e: &dyn std::fmt::Display| SendError::Grpc {
                    code: tonic::Code::Unavailable,
                    detail: format!(": {e}"),
                    retry_after: None,
                };
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                grpc.ready().await.map_err(|e| local(&e))?;
                let mut request = tonic::Request::new(body);
                *request.metadata_mut() = metadata.clone();
                let path = http::uri::PathAndQuery::from_static(self.signal.grpc_path());
                let reply = grpc
                    .unary(request, path, RawCodec)
                    .await
                    .map_err(grpc_error)?;
                Ok(reply.into_inner())
            }
            Transport::Http {
                client,
                url,
                headers,
            } => {
                // The headers go last, so that they win over ours.
                let mut reply = client
                    .post(url.as_str())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .headers(headers.clone())
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| SendError::Http(with_sources(&e.without_url())))?;
                let status = reply.status();
                if !status.is_success() {
                    let retry_after = reply
                        .headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    return Err(SendError::HttpStatus {
                        status,
                        retry_after,
                    });
                }
                let mut out = Vec::new();
                while let Ok(Some(chunk)) = reply.chunk().await {
                    if out.len() + chunk.len() > MAX_REPLY {
                        break;
                    }
                    out.extend_from_slice(&chunk);
                }
                Ok(Bytes::from(out))
            }
        }
    }
}

/// `e` and its sources, `: ` between them.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A status as a [`SendError`]: the transport's own error chain for a
/// status made locally, nothing of the collector's message.
fn grpc_error(status: tonic::Status) -> SendError {
    let detail = match std::error::Error::source(&status) {
        Some(e) => format!(": {}", with_sources(e)),
        None => String::new(),
    };
    let retry_after = status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    SendError::Grpc {
        code: status.code(),
        detail,
        retry_after,
    }
}

/// Sends bytes already encoded, and hands the reply back as bytes, so one
/// client serves every signal and a retry does not encode again.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_retried() {
        let grpc = |code| SendError::Grpc {
            code,
            detail: String::new(),
            retry_after: None,
        };
        assert!(grpc(tonic::Code::Unavailable).retry().is_some());
        assert!(grpc(tonic::Code::DeadlineExceeded).retry().is_some());
        assert!(grpc(tonic::Code::Unauthenticated).retry().is_none());
        assert!(grpc(tonic::Code::InvalidArgument).retry().is_none());
        let http = |status: u16, retry_after| SendError::HttpStatus {
            status: http::StatusCode::from_u16(status).unwrap(),
            retry_after,
        };
        assert_eq!(
            http(503, Some(Duration::from_secs(2))).retry(),
            Some(Some(Duration::from_secs(2)))
        );
        assert_eq!(http(429, None).retry(), Some(None));
        assert!(http(400, None).retry().is_none());
        assert!(http(401, None).retry().is_none());
        assert!(SendError::Http("refused".into()).retry().is_some());
        assert!(SendError::Timeout(Duration::from_secs(1)).retry().is_none());
    }
}
