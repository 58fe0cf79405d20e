//! An OTLP trace and metrics receiver that lives inside the test process.
//!
//! It listens on two loopback ports at once: OTLP/gRPC `TraceService` and
//! `MetricsService` (tonic), and a small hand-written HTTP/1.1 server that
//! accepts protobuf bodies on `POST /v1/traces` and `POST /v1/metrics`.
//! Every span that arrives is flattened into a [`ReceivedSpan`] and every
//! metric data point into a [`ReceivedPoint`], so tests can poll with
//! [`Receiver::wait_for`] and [`Receiver::wait_points`].

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::received_metrics::{self, ReceivedPoint};

/// An attribute value, decoded from OTLP's `AnyValue`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(String, Value)>),
    Empty,
}

impl Value {
    pub(crate) fn from_any(v: Option<&AnyValue>) -> Value {
        let Some(inner) = v.and_then(|v| v.value.as_ref()) else {
            return Value::Empty;
        };
        match inner {
            any_value::Value::StringValue(s) => Value::Str(s.clone()),
            any_value::Value::BoolValue(b) => Value::Bool(*b),
            any_value::Value::IntValue(i) => Value::Int(*i),
            any_value::Value::DoubleValue(d) => Value::Double(*d),
            any_value::Value::BytesValue(b) => Value::Bytes(b.clone()),
            any_value::Value::ArrayValue(a) => {
                Value::Array(a.values.iter().map(|v| Value::from_any(Some(v))).collect())
            }
            any_value::Value::KvlistValue(kv) => Value::Map(
                kv.values
                    .iter()
                    .map(|kv| (kv.key.clone(), Value::from_any(kv.value.as_ref())))
                    .collect(),
            ),
            any_value::Value::StringValueStrindex(i) => Value::Str(format!("<strindex {i}>")),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Double(d) => write!(f, "{d}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Bytes(b) => write!(f, "bytes[{}]", b.len()),
            Value::Array(a) => {
                f.write_str("[")?;
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Map(m) => {
                f.write_str("{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{k}={v}")?;
                }
                f.write_str("}")
            }
            Value::Empty => f.write_str("<empty>"),
        }
    }
}

/// Span kind as sent in OTLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
    Unknown(i32),
}

impl Kind {
    fn from_i32(k: i32) -> Kind {
        match k {
            0 => Kind::Unspecified,
            1 => Kind::Internal,
            2 => Kind::Server,
            3 => Kind::Client,
            4 => Kind::Producer,
            5 => Kind::Consumer,
            other => Kind::Unknown(other),
        }
    }
}

/// Span status code as sent in OTLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Unset,
    Ok,
    Error,
    Unknown(i32),
}

impl Status {
    fn from_i32(c: i32) -> Status {
        match c {
            0 => Status::Unset,
            1 => Status::Ok,
            2 => Status::Error,
            other => Status::Unknown(other),
        }
    }
}

/// Which receiver endpoint a span came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Grpc,
    Http,
}

/// One span with its resource, flattened out of an export request.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub via: Via,
    pub resource: HashMap<String, Value>,
    pub scope: String,
    pub name: String,
    pub kind: Kind,
    pub attributes: HashMap<String, Value>,
    pub status: Status,
    pub status_message: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Lower-case hex.
    pub trace_id: String,
    /// Lower-case hex.
    pub span_id: String,
    /// Lower-case hex; empty for a root span.
    pub parent_span_id: String,
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn attr_map(kvs: &[KeyValue]) -> HashMap<String, Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), Value::from_any(kv.value.as_ref())))
        .collect()
}

/// Flattens one export request into spans.
pub fn flatten(req: &ExportTraceServiceRequest, via: Via) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attr_map(&r.attributes))
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            let scope = ss
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for sp in &ss.spans {
                let (status, status_message) = match &sp.status {
                    Some(st) => (Status::from_i32(st.code), st.message.clone()),
                    None => (Status::Unset, String::new()),
                };
                out.push(ReceivedSpan {
                    via,
                    resource: resource.clone(),
                    scope: scope.clone(),
                    name: sp.name.clone(),
                    kind: Kind::from_i32(sp.kind),
                    attributes: attr_map(&sp.attributes),
                    status,
                    status_message,
                    start_ns: sp.start_time_unix_nano,
                    end_ns: sp.end_time_unix_nano,
                    trace_id: hex(&sp.trace_id),
                    span_id: hex(&sp.span_id),
                    parent_span_id: hex(&sp.parent_span_id),
                });
            }
        }
    }
    out
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(Value::as_str)
    }

    pub fn attr_int(&self, key: &str) -> Option<i64> {
        self.attr(key).and_then(Value::as_int)
    }

    pub fn res_str(&self, key: &str) -> Option<&str> {
        self.resource.get(key).and_then(Value::as_str)
    }

    pub fn res_int(&self, key: &str) -> Option<i64> {
        self.resource.get(key).and_then(Value::as_int)
    }

    /// `process.pid` from the resource.
    pub fn pid(&self) -> Option<u32> {
        self.res_int("process.pid")
            .and_then(|p| u32::try_from(p).ok())
    }

    /// `service.name` from the resource.
    pub fn service(&self) -> Option<&str> {
        self.res_str("service.name")
    }

    /// End minus start in nanoseconds (negative if the span is malformed).
    pub fn duration_ns(&self) -> i128 {
        i128::from(self.end_ns) - i128::from(self.start_ns)
    }

    /// One line with the fields tests look at most.
    pub fn compact(&self) -> String {
        let kind = match self.kind {
            Kind::Server => "SERVER".to_string(),
            Kind::Client => "CLIENT".to_string(),
            other => format!("{other:?}"),
        };
        let opt_s = |k: &str| self.attr_str(k).unwrap_or("-").to_string();
        let opt_i = |k: &str| {
            self.attr_int(k)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into())
        };
        let mut line = format!(
            "{kind} {:?} svc={} pid={} path={} status={} err={} span_status={:?} peer={}:{} client={}:{} server={}:{} dur={}us",
            self.name,
            self.service().unwrap_or("-"),
            self.pid()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            opt_s("url.path"),
            opt_i("http.response.status_code"),
            opt_s("error.type"),
            self.status,
            opt_s("network.peer.address"),
            opt_i("network.peer.port"),
            opt_s("client.address"),
            opt_i("client.port"),
            opt_s("server.address"),
            opt_i("server.port"),
            self.duration_ns() / 1000,
        );
        if self.via == Via::Http {
            line.push_str(" via=http");
        }
        line
    }

    /// Every attribute and resource attribute, sorted, for detailed dumps.
    pub fn full(&self) -> String {
        let mut attrs: Vec<_> = self.attributes.iter().collect();
        attrs.sort_by(|a, b| a.0.cmp(b.0));
        let mut res: Vec<_> = self.resource.iter().collect();
        res.sort_by(|a, b| a.0.cmp(b.0));
        let mut s = format!(
            "{:?} {:?} status={:?} {:?} start={} end={} trace={} span={} parent={}\n  attrs:",
            self.kind,
            self.name,
            self.status,
            self.status_message,
            self.start_ns,
            self.end_ns,
            self.trace_id,
            self.span_id,
            self.parent_span_id,
        );
        for (k, v) in attrs {
            let _ = write!(s, " {k}={v}");
        }
        s.push_str("\n  resource:");
        for (k, v) in res {
            let _ = write!(s, " {k}={v}");
        }
        s
    }
}

/// Formats spans one per line, at most `limit` of them.
pub fn dump(spans: &[&ReceivedSpan], limit: usize) -> String {
    let mut s = String::new();
    for sp in spans.iter().take(limit) {
        s.push_str("    ");
        s.push_str(&sp.compact());
        s.push('\n');
    }
    if spans.len() > limit {
        let _ = writeln!(s, "    ... and {} more", spans.len() - limit);
    }
    s
}

#[derive(Default)]
struct Store {
    spans: Vec<ReceivedSpan>,
    /// Export requests received (both transports).
    requests: usize,
    points: Vec<ReceivedPoint>,
    /// Metric export requests received (both transports).
    metric_requests: usize,
    /// Anything the receiver could not handle.
    errors: Vec<String>,
    /// The headers (gRPC metadata) of every export request, in order.
    headers: Vec<RequestHeaders>,
}

/// The headers of one export request: what it posted to (`/v1/traces`,
/// `/v1/metrics`, or the gRPC method's path) and its headers, names in
/// lower case.
#[derive(Clone, Debug)]
pub struct RequestHeaders {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl RequestHeaders {
    /// The value of header `name` (any case), if sent once; all values
    /// joined by `,` if sent more than once.
    pub fn get(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

fn grpc_headers(path: &str, metadata: &tonic::metadata::MetadataMap) -> RequestHeaders {
    let headers = metadata
        .clone()
        .into_headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    RequestHeaders {
        path: path.to_owned(),
        headers,
    }
}

type Shared = Arc<Mutex<Store>>;

fn lock(store: &Shared) -> std::sync::MutexGuard<'_, Store> {
    store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct GrpcService {
    store: Shared,
}

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = flatten(request.get_ref(), Via::Grpc);
        let headers = grpc_headers(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request.metadata(),
        );
        let mut store = lock(&self.store);
        store.headers.push(headers);
        store.requests += 1;
        store.spans.extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

struct GrpcMetrics {
    store: Shared,
}

#[tonic::async_trait]
impl MetricsService for GrpcMetrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let points = received_metrics::flatten(request.get_ref(), Via::Grpc);
        let headers = grpc_headers(
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            request.metadata(),
        );
        let mut store = lock(&self.store);
        store.headers.push(headers);
        store.metric_requests += 1;
        store.points.extend(points);
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// The receiver: both endpoints run on a runtime owned by this value and stop
/// when it is dropped.
pub struct Receiver {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    store: Shared,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Binds both endpoints on 127.0.0.1 with kernel-chosen ports.
    pub fn start() -> anyhow::Result<Receiver> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("otlp-receiver")
            .enable_all()
            .build()?;
        let store: Shared = Arc::default();
        let (grpc_listener, http_listener) = runtime.block_on(async {
            let g = TcpListener::bind("127.0.0.1:0").await?;
            let h = TcpListener::bind("127.0.0.1:0").await?;
            anyhow::Ok((g, h))
        })?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;

        let svc = TraceServiceServer::new(GrpcService {
            store: store.clone(),
        });
        let metrics_svc = MetricsServiceServer::new(GrpcMetrics {
            store: store.clone(),
        });
        let grpc_store = store.clone();
        runtime.spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .add_service(metrics_svc)
                .serve_with_incoming(incoming)
                .await
            {
                lock(&grpc_store)
                    .errors
                    .push(format!("grpc server stopped: {e}"));
            }
        });

        let http_store = store.clone();
        runtime.spawn(async move {
            loop {
                match http_listener.accept().await {
                    Ok((stream, _)) => {
                        let store = http_store.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve_http(stream, store.clone()).await {
                                lock(&store).errors.push(format!("http receiver: {e}"));
                            }
                        });
                    }
                    Err(e) => {
                        lock(&http_store).errors.push(format!("http accept: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });

        Ok(Receiver {
            grpc_addr,
            http_addr,
            store,
            runtime: Some(runtime),
        })
    }

    /// `http://127.0.0.1:PORT` of the gRPC endpoint.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://127.0.0.1:PORT` of the HTTP endpoint (the exporter appends `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_addr.port()
    }

    pub fn http_port(&self) -> u16 {
        self.http_addr.port()
    }

    /// The headers of every export request received so far.
    pub fn request_headers(&self) -> Vec<RequestHeaders> {
        lock(&self.store).headers.clone()
    }

    /// A copy of every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.store).spans.clone()
    }

    /// Number of export requests received so far.
    pub fn requests(&self) -> usize {
        lock(&self.store).requests
    }

    /// Problems the receiver ran into (bad bodies, unknown paths, ...).
    pub fn errors(&self) -> Vec<String> {
        lock(&self.store).errors.clone()
    }

    /// Forgets every span received so far.
    pub fn clear(&self) {
        lock(&self.store).spans.clear();
    }

    /// A copy of every metric data point received so far.
    pub fn points(&self) -> Vec<ReceivedPoint> {
        lock(&self.store).points.clone()
    }

    /// Number of metric export requests received so far.
    pub fn metric_requests(&self) -> usize {
        lock(&self.store).metric_requests
    }

    /// Forgets every metric data point received so far.
    pub fn clear_points(&self) {
        lock(&self.store).points.clear();
    }

    /// Polls every 50 ms until `pred` holds over the received data points
    /// or `timeout` passes. Returns whether it held.
    pub fn wait_points(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[ReceivedPoint]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let store = lock(&self.store);
                if pred(&store.points) {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The received data points, one line each (at most `limit`), for
    /// failure messages.
    pub fn points_report(&self, relevant: impl Fn(&ReceivedPoint) -> bool, limit: usize) -> String {
        let store = lock(&self.store);
        let latest = received_metrics::latest(&store.points);
        let mut s = format!(
            "\n  receiver: {} metric export requests, {} points ({} series)\n",
            store.metric_requests,
            store.points.len(),
            latest.len()
        );
        for p in latest.iter().filter(|p| relevant(p)).take(limit) {
            s.push_str("    ");
            s.push_str(&p.compact());
            s.push('\n');
        }
        s
    }

    /// Polls every 50 ms until `pred` holds over the received spans or
    /// `timeout` passes. Returns whether it held.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let store = lock(&self.store);
                if pred(&store.spans) {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until at least `n` spans match `filter`, then returns all that match.
    pub fn wait_count(
        &self,
        n: usize,
        timeout: Duration,
        filter: impl Fn(&ReceivedSpan) -> bool,
    ) -> Vec<ReceivedSpan> {
        self.wait_for(timeout, |spans| {
            spans.iter().filter(|s| filter(s)).count() >= n
        });
        self.spans().into_iter().filter(|s| filter(s)).collect()
    }

    /// A summary of everything received, for assertion messages: the spans
    /// that `relevant` picks (all of them), then up to 60 others.
    pub fn report(&self, relevant: impl Fn(&ReceivedSpan) -> bool) -> String {
        let store = lock(&self.store);
        let (mine, others): (Vec<&ReceivedSpan>, Vec<&ReceivedSpan>) =
            store.spans.iter().partition(|s| relevant(s));
        let mut s = format!(
            "\n  receiver: {} export requests, {} spans ({} relevant)\n",
            store.requests,
            store.spans.len(),
            mine.len()
        );
        if !store.errors.is_empty() {
            let _ = writeln!(s, "  receiver errors: {:?}", store.errors);
        }
        s.push_str("  relevant spans:\n");
        s.push_str(&dump(&mine, 400));
        if !others.is_empty() {
            s.push_str("  other spans:\n");
            s.push_str(&dump(&others, 60));
        }
        s
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Serves OTLP/HTTP on one connection, keeping it alive between requests.
async fn serve_http(stream: TcpStream, store: Shared) -> anyhow::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let mut request_line = String::new();
        if rd.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let request_line = request_line.trim_end().to_string();
        if request_line.is_empty() {
            continue;
        }
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        let mut close = request_line.ends_with("HTTP/1.0");
        let mut content_type = String::new();
        let mut content_encoding = String::new();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if rd.read_line(&mut line).await? == 0 {
                anyhow::bail!("connection closed inside the request head");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                anyhow::bail!("bad header line {line:?}");
            };
            let value = value.trim();
            headers.push((name.trim().to_ascii_lowercase(), value.to_owned()));
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = Some(value.parse()?),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                "content-type" => content_type = value.to_string(),
                "content-encoding" => content_encoding = value.to_ascii_lowercase(),
                _ => {}
            }
        }

        let body = if chunked {
            read_chunked(&mut rd).await?
        } else {
            let mut body = vec![0u8; content_length.unwrap_or(0)];
            rd.read_exact(&mut body).await?;
            body
        };

        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        lock(&store).headers.push(RequestHeaders {
            path: path.to_owned(),
            headers,
        });
        let (status, reply) = if method != "POST" || (path != "/v1/traces" && path != "/v1/metrics")
        {
            lock(&store).errors.push(format!(
                "http receiver: unexpected request {request_line:?}"
            ));
            ("404 Not Found", Vec::new())
        } else if !content_encoding.is_empty() && content_encoding != "identity" {
            lock(&store).errors.push(format!(
                "http receiver: unsupported content-encoding {content_encoding:?}"
            ));
            ("415 Unsupported Media Type", Vec::new())
        } else if content_type.contains("json") {
            lock(&store)
                .errors
                .push("http receiver: JSON bodies are not supported".into());
            ("415 Unsupported Media Type", Vec::new())
        } else if path == "/v1/metrics" {
            match ExportMetricsServiceRequest::decode(body.as_slice()) {
                Ok(req) => {
                    let points = received_metrics::flatten(&req, Via::Http);
                    let mut st = lock(&store);
                    st.metric_requests += 1;
                    st.points.extend(points);
                    drop(st);
                    let resp = ExportMetricsServiceResponse {
                        partial_success: None,
                    };
                    ("200 OK", resp.encode_to_vec())
                }
                Err(e) => {
                    lock(&store)
                        .errors
                        .push(format!("http receiver: bad metrics protobuf body: {e}"));
                    ("400 Bad Request", Vec::new())
                }
            }
        } else {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(req) => {
                    let spans = flatten(&req, Via::Http);
                    let mut st = lock(&store);
                    st.requests += 1;
                    st.spans.extend(spans);
                    drop(st);
                    let resp = ExportTraceServiceResponse {
                        partial_success: None,
                    };
                    ("200 OK", resp.encode_to_vec())
                }
                Err(e) => {
                    lock(&store)
                        .errors
                        .push(format!("http receiver: bad protobuf body: {e}"));
                    ("400 Bad Request", Vec::new())
                }
            }
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n{}\r\n",
            reply.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(&reply).await?;
        wr.flush().await?;
        if close {
            return Ok(());
        }
    }
}

async fn read_chunked<R: AsyncBufReadExt + Unpin>(rd: &mut R) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        rd.read_line(&mut size_line).await?;
        let size_text = size_line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16)?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut line = String::new();
                if rd.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        rd.read_exact(&mut body[start..]).await?;
        let mut crlf = [0u8; 2];
        rd.read_exact(&mut crlf).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{
        ResourceSpans, ScopeSpans, Span, Status as PStatus,
    };
    use std::io::{Read, Write};

    fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn sample_request(name: &str) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv(
                            "service.name",
                            any_value::Value::StringValue("self-test".into()),
                        ),
                        kv("process.pid", any_value::Value::IntValue(4242)),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        name: name.into(),
                        kind: 2,
                        start_time_unix_nano: 1_000,
                        end_time_unix_nano: 3_500,
                        attributes: vec![
                            kv("url.path", any_value::Value::StringValue("/x".into())),
                            kv("http.response.status_code", any_value::Value::IntValue(503)),
                        ],
                        status: Some(PStatus {
                            code: 2,
                            message: String::new(),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn check(span: &ReceivedSpan, name: &str, via: Via) {
        assert_eq!(span.name, name);
        assert_eq!(span.via, via);
        assert_eq!(span.kind, Kind::Server);
        assert_eq!(span.status, Status::Error);
        assert_eq!(span.service(), Some("self-test"));
        assert_eq!(span.pid(), Some(4242));
        assert_eq!(span.attr_str("url.path"), Some("/x"));
        assert_eq!(span.attr_int("http.response.status_code"), Some(503));
        assert_eq!(span.duration_ns(), 2_500);
        assert_eq!(span.trace_id, "01".repeat(16));
        assert_eq!(span.span_id, "02".repeat(8));
        assert_eq!(span.parent_span_id, "");
    }

    #[test]
    fn grpc_roundtrip() {
        let rx = Receiver::start().unwrap();
        let endpoint = rx.grpc_endpoint();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
            client.export(sample_request("grpc span")).await.unwrap();
        });
        assert!(rx.wait_for(Duration::from_secs(5), |s| !s.is_empty()));
        let spans = rx.spans();
        assert_eq!(spans.len(), 1, "{}", rx.report(|_| true));
        check(&spans[0], "grpc span", Via::Grpc);
        assert_eq!(rx.requests(), 1);
    }

    #[test]
    fn http_roundtrip() {
        let rx = Receiver::start().unwrap();
        let body = sample_request("http span").encode_to_vec();
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", rx.http_port())).unwrap();
        // Two requests on one keep-alive connection: one with a length, one chunked.
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(&body).unwrap();
        let chunked_head = "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        conn.write_all(chunked_head.as_bytes()).unwrap();
        let (a, b) = body.split_at(body.len() / 2);
        for part in [a, b] {
            conn.write_all(format!("{:x}\r\n", part.len()).as_bytes())
                .unwrap();
            conn.write_all(part).unwrap();
            conn.write_all(b"\r\n").unwrap();
        }
        conn.write_all(b"0\r\n\r\n").unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 2, "{reply}");
        assert!(rx.wait_for(Duration::from_secs(5), |s| s.len() == 2));
        for span in rx.spans() {
            check(&span, "http span", Via::Http);
        }
        assert!(rx.errors().is_empty(), "{:?}", rx.errors());
    }
}
