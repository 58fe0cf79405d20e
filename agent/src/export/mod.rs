//! The export stage: spans leave the agent here.
//!
//! The pipeline hands each finished span, with the resource of its process,
//! to [`ExportHandle::try_send`], which never blocks: a bounded queue sits in
//! front of one worker task, and when the queue is full the span is dropped
//! and counted (`spans_dropped_queue_full`). The worker prints spans on the
//! console (one line each, see [`console`]) and batches them for OTLP (see
//! [`otlp`]), by gRPC or HTTP/protobuf.
//!
//! Where spans go is decided once, at [`start`], from the configuration and
//! the standard `OTEL_EXPORTER_OTLP_*` environment variables
//! ([`resolve_destinations`], a pure function of both):
//!
//! - OTLP is on when an endpoint is set. Configuration keys come first, then
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (a full URL, used as it is), then
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL: `/v1/traces` is appended for
//!   HTTP, gRPC uses it as it is).
//! - The protocol is `export.otlp.protocol`, else
//!   `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`,
//!   else `grpc`.
//! - Headers are `OTEL_EXPORTER_OTLP_TRACES_HEADERS` (or, when unset,
//!   `OTEL_EXPORTER_OTLP_HEADERS`), then `export.otlp.headers` on top: a key
//!   in the configuration wins over the same key in the environment.
//! - The console is on when `export.console` is true, or unset while OTLP is
//!   off. Both can be on.
//!
//! Counters: `spans_exported` and `spans_export_failed` count what OTLP
//! delivered or lost; when the console is the only destination they count
//! lines written and lines that could not be written.

pub mod console;
pub mod metrics_otlp;
pub mod otlp;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ExportConfig;
use crate::enrich::{Resource, parse_key_value_list};
use crate::span::model::Span;
use crate::stats::Stats;

pub use console::format_span;

/// One span on its way out, with the resource of the process it came from.
#[derive(Clone, Debug)]
pub struct ExportItem {
    pub resource: Arc<Resource>,
    pub span: Span,
}

/// Why the export stage could not start. Each message names the setting
/// (configuration key or environment variable) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "{setting} is {value:?}: sonde speaks OTLP as `grpc` or `http/protobuf`; set one of those"
    )]
    Protocol { setting: String, value: String },
    #[error("{setting}: {reason}")]
    Endpoint { setting: String, reason: String },
    #[error("{setting}: {reason}")]
    Headers { setting: String, reason: String },
    #[error(
        "spans would go nowhere: export.console is false and no OTLP endpoint is set; \
         set export.otlp.endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) or turn export.console on"
    )]
    NoDestination,
    #[error("the export stage must be started from inside a tokio runtime (a bug in sonde)")]
    NoRuntime,
    #[error("cannot set up the OTLP exporter: {0}")]
    Build(String),
}

/// The OTLP wire protocol: the setting `export.otlp.protocol` names.
pub use crate::config::OtlpProtocol as Protocol;

/// Where and how OTLP spans are sent, once resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpTarget {
    pub protocol: Protocol,
    /// For gRPC the collector's URL, for HTTP the full traces URL.
    pub endpoint: String,
    /// Request headers (gRPC metadata), lower-case names, sorted by name.
    pub headers: Vec<(String, String)>,
}

/// The destinations spans go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destinations {
    pub console: bool,
    pub otlp: Option<OtlpTarget>,
}

const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub(crate) const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
pub(crate) const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";

/// Decides where spans go from the configuration and the environment
/// (`env`: variable name → value; an empty value counts as unset, as the
/// OpenTelemetry specification says). See the module documentation for the
/// rules.
pub fn resolve_destinations(
    config: &ExportConfig,
    env: &HashMap<String, String>,
) -> Result<Destinations, ExportError> {
    let var = |name: &str| {
        env.get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(|v| (name.to_owned(), v.to_owned()))
    };
    let key = |name: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| (name.to_owned(), v.to_owned()))
    };
    let otlp = &config.otlp;

    let protocol = match otlp.protocol {
        Some(p) => p,
        None => protocol_from_env(var(TRACES_PROTOCOL).or_else(|| var(PROTOCOL)))?,
    };

    // (setting, value, whether the value is a base URL)
    let endpoint = key("export.otlp.traces_endpoint", &otlp.traces_endpoint)
        .map(|(s, v)| (s, v, false))
        .or_else(|| key("export.otlp.endpoint", &otlp.endpoint).map(|(s, v)| (s, v, true)))
        .or_else(|| var(TRACES_ENDPOINT).map(|(s, v)| (s, v, false)))
        .or_else(|| var(ENDPOINT).map(|(s, v)| (s, v, true)));

    let otlp_target = match endpoint {
        None => None,
        Some((setting, value, is_base)) => {
            let endpoint = if is_base && protocol == Protocol::HttpProtobuf {
                format!("{}/v1/traces", value.trim_end_matches('/'))
            } else {
                value
            };
            check_endpoint(&setting, &endpoint)?;
            let headers = resolve_headers(otlp, env, protocol, TRACES_HEADERS)?;
            Some(OtlpTarget {
                protocol,
                endpoint,
                headers,
            })
        }
    };

    let console = match config.console {
        Some(on) => on,
        None => otlp_target.is_none(),
    };
    if !console && otlp_target.is_none() {
        return Err(ExportError::NoDestination);
    }
    Ok(Destinations {
        console,
        otlp: otlp_target,
    })
}

/// The protocol an environment variable (setting, value) names; `grpc` when unset.
pub(crate) fn protocol_from_env(
    setting: Option<(String, String)>,
) -> Result<Protocol, ExportError> {
    match setting {
        None => Ok(Protocol::Grpc),
        Some((setting, value)) => {
            crate::config::from_name(&value).ok_or(ExportError::Protocol { setting, value })
        }
    }
}

/// Checks that `endpoint` is an `http://` URL with a host; errors name `setting`.
pub(crate) fn check_endpoint(setting: &str, endpoint: &str) -> Result<(), ExportError> {
    let err = |reason: String| ExportError::Endpoint {
        setting: setting.to_owned(),
        reason,
    };
    let url = reqwest::Url::parse(endpoint).map_err(|e| {
        err(format!(
            "{endpoint:?} is not a URL ({e}); write it as http://HOST:PORT"
        ))
    })?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(err(format!(
                "{endpoint:?} uses https, but this build of sonde has no TLS support; \
                 send to an http:// endpoint (for example a collector on the node)"
            )));
        }
        _ => {
            return Err(err(format!(
                "{endpoint:?} does not start with http://; write it as http://HOST:PORT"
            )));
        }
    }
    if url.host().is_none() {
        return Err(err(format!(
            "{endpoint:?} has no host; write it as http://HOST:PORT"
        )));
    }
    Ok(())
}

/// Request headers: the signal's own variable (`signal_headers`, for
/// example `OTEL_EXPORTER_OTLP_TRACES_HEADERS`) or else
/// `OTEL_EXPORTER_OTLP_HEADERS`, then `export.otlp.headers` on top.
pub(crate) fn resolve_headers(
    otlp: &crate::config::OtlpConfig,
    env: &HashMap<String, String>,
    protocol: Protocol,
    signal_headers: &str,
) -> Result<Vec<(String, String)>, ExportError> {
    let mut headers: std::collections::BTreeMap<String, String> = Default::default();
    let from_env = [signal_headers, HEADERS]
        .into_iter()
        .find_map(|name| Some((name, env.get(name).filter(|v| !v.trim().is_empty())?)));
    if let Some((name, text)) = from_env {
        let list = parse_key_value_list(text).map_err(|e| ExportError::Headers {
            setting: name.to_owned(),
            reason: e.to_string(),
        })?;
        for (k, v) in list {
            check_header(name, &k, &v, protocol)?;
            headers.insert(k.to_ascii_lowercase(), v);
        }
    }
    for (k, v) in &otlp.headers {
        let k = k.trim();
        let v = v.trim();
        check_header("export.otlp.headers", k, v, protocol)?;
        headers.insert(k.to_ascii_lowercase(), v.to_owned());
    }
    Ok(headers.into_iter().collect())
}

fn check_header(
    setting: &str,
    name: &str,
    value: &str,
    protocol: Protocol,
) -> Result<(), ExportError> {
    let err = |reason: String| ExportError::Headers {
        setting: setting.to_owned(),
        reason,
    };
    let lower = name.to_ascii_lowercase();
    let name_ok = match protocol {
        Protocol::Grpc => tonic::metadata::AsciiMetadataKey::from_bytes(lower.as_bytes()).is_ok(),
        Protocol::HttpProtobuf => reqwest::header::HeaderName::from_bytes(lower.as_bytes()).is_ok(),
    };
    if !name_ok {
        return Err(err(format!(
            "{name:?} is not a valid header name (letters, digits and -_. only)"
        )));
    }
    // The value is never printed: it is often a credential.
    if reqwest::header::HeaderValue::from_str(value).is_err() || !value.is_ascii() {
        return Err(err(format!(
            "the value of header {name:?} holds characters a header cannot carry \
             (control characters or non-ASCII); percent-encode them"
        )));
    }
    Ok(())
}

/// Starts the export stage: resolves the destinations from `config` and the
/// process environment and spawns the worker task. Must be called inside a
/// tokio runtime (multi-threaded in the agent).
pub fn start(config: &ExportConfig, stats: Arc<Stats>) -> Result<ExportHandle, ExportError> {
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let destinations = resolve_destinations(config, &env)?;
    let console = destinations.console.then(console::ConsoleSink::stdout);
    start_with(config, destinations, console, stats)
}

/// [`start`] with the destinations already resolved and the console writer
/// given (tests write the console into a buffer).
fn start_with(
    config: &ExportConfig,
    destinations: Destinations,
    console: Option<console::ConsoleSink>,
    stats: Arc<Stats>,
) -> Result<ExportHandle, ExportError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
    let _entered = runtime.enter();
    let otlp = match &destinations.otlp {
        Some(target) => Some(otlp::OtlpSink::new(
            target,
            Duration::from_millis(config.otlp.timeout_ms.max(1)),
        )?),
        None => None,
    };
    if let Some(target) = &destinations.otlp {
        tracing::info!(
            endpoint = %redact_userinfo(&target.endpoint),
            protocol = ?target.protocol,
            headers = target.headers.len(),
            "exporting spans over OTLP"
        );
    }

    let queue_size = usize::try_from(config.queue_size)
        .unwrap_or(usize::MAX)
        .max(1);
    let (tx, rx) = mpsc::channel(queue_size);
    let (stop_tx, stop_rx) = oneshot::channel();
    let worker = Worker {
        rx,
        console,
        otlp,
        stats: Arc::clone(&stats),
        batch_size: usize::try_from(config.otlp.batch_size)
            .unwrap_or(usize::MAX)
            .clamp(1, 1 << 20),
        batch_timeout: Duration::from_millis(config.otlp.batch_timeout_ms),
        warn: WarnLimiter::default(),
    };
    let task = runtime.spawn(worker.run(stop_rx));
    Ok(ExportHandle {
        sender: ExportSender { tx, stats },
        stop: stop_tx,
        task,
    })
}

/// The endpoint without a user name or password, for logs.
pub(crate) fn redact_userinfo(endpoint: &str) -> String {
    match reqwest::Url::parse(endpoint) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        _ => endpoint.to_owned(),
    }
}

/// The way into the export queue; cheap to clone, usable from any thread.
#[derive(Clone, Debug)]
pub struct ExportSender {
    tx: mpsc::Sender<ExportItem>,
    stats: Arc<Stats>,
}

impl ExportSender {
    /// Queues `item` without blocking. When the queue is full (or the stage
    /// has shut down) the span is dropped and counted in
    /// `spans_dropped_queue_full`; returns whether it was queued.
    pub fn try_send(&self, item: ExportItem) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(_) => {
                Stats::add(&self.stats.spans_dropped_queue_full, 1);
                false
            }
        }
    }
}

/// The running export stage. Dropping it without [`shutdown`](Self::shutdown)
/// still lets the worker send what is queued, in the background, for a
/// few seconds.
#[derive(Debug)]
pub struct ExportHandle {
    sender: ExportSender,
    stop: oneshot::Sender<Instant>,
    task: JoinHandle<()>,
}

/// How long a worker whose handle was dropped keeps trying to send.
const DROPPED_HANDLE_GRACE: Duration = Duration::from_secs(5);

impl ExportHandle {
    /// See [`ExportSender::try_send`].
    pub fn try_send(&self, item: ExportItem) -> bool {
        self.sender.try_send(item)
    }

    /// Another way into the same queue, for other threads.
    pub fn sender(&self) -> ExportSender {
        self.sender.clone()
    }

    /// Stops taking spans, sends everything already queued, and returns when
    /// that is done or when `timeout` has passed, whichever comes first.
    /// Spans that could not be sent in time are counted in
    /// `spans_export_failed`.
    pub async fn shutdown(self, timeout: Duration) {
        let ExportHandle { sender, stop, task } = self;
        drop(sender);
        let deadline = Instant::now() + timeout;
        // The worker gives up a little earlier, to count what it leaves.
        let _ = stop.send(Instant::now() + timeout.mul_f64(0.9));
        let mut task = task;
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Logs at most one warning per interval; counts the others.
#[derive(Debug, Default)]
struct WarnLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

const WARN_INTERVAL: Duration = Duration::from_secs(10);

impl WarnLimiter {
    fn warn(&mut self, message: &str) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < WARN_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            similar_since_last = self.suppressed,
            "span export failed: {message}"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// One OTLP flush running in the background.
struct Flight {
    task: JoinHandle<Vec<String>>,
    /// Spans in this flush.
    total: u64,
    /// Spans of this flush already counted as exported or failed.
    counted: Arc<AtomicU64>,
}

/// Waits for the flush in flight, if any (forever otherwise), and returns
/// its error messages.
async fn land(flight: &mut Option<Flight>) -> Vec<String> {
    match flight {
        Some(f) => (&mut f.task).await.unwrap_or_default(),
        None => std::future::pending().await,
    }
}

struct Worker {
    rx: mpsc::Receiver<ExportItem>,
    console: Option<console::ConsoleSink>,
    otlp: Option<otlp::OtlpSink>,
    stats: Arc<Stats>,
    batch_size: usize,
    batch_timeout: Duration,
    warn: WarnLimiter,
}

impl Worker {
    async fn run(mut self, mut stop: oneshot::Receiver<Instant>) {
        let mut received = Vec::with_capacity(self.batch_size);
        let mut pending: Vec<ExportItem> = Vec::new();
        let mut batch_deadline: Option<Instant> = None;
        let mut flight: Option<Flight> = None;
        let mut queue_done = false;
        let mut give_up_at: Option<Instant> = None;

        loop {
            let batch_ready = !pending.is_empty()
                && (pending.len() >= self.batch_size
                    || queue_done
                    || batch_deadline.is_some_and(|d| Instant::now() >= d));
            if batch_ready && flight.is_none() {
                let batch = std::mem::take(&mut pending);
                batch_deadline = None;
                flight = self.start_flush(batch);
                continue;
            }
            if queue_done && pending.is_empty() && flight.is_none() {
                break;
            }
            let room = self.batch_size.saturating_sub(pending.len());
            let flying = flight.is_some();
            tokio::select! {
                at = &mut stop, if give_up_at.is_none() => {
                    give_up_at = Some(at.unwrap_or_else(|_| Instant::now() + DROPPED_HANDLE_GRACE));
                    self.rx.close();
                }
                n = self.rx.recv_many(&mut received, room), if !queue_done && room > 0 => {
                    if n == 0 {
                        queue_done = true;
                    } else {
                        self.take(&mut received, &mut pending, &mut batch_deadline);
                    }
                }
                errors = land(&mut flight), if flying => {
                    flight = None;
                    crate::memory::release(false);
                    for message in errors {
                        self.warn.warn(&message);
                    }
                }
                _ = tokio::time::sleep_until(batch_deadline.unwrap_or_else(Instant::now)),
                    if batch_deadline.is_some() && !flying => {}
                _ = tokio::time::sleep_until(give_up_at.unwrap_or_else(Instant::now)),
                    if give_up_at.is_some() => {
                    self.give_up(flight.take(), pending.len());
                    return;
                }
            }
        }
    }

    /// Hands freshly received spans to the console and to the OTLP batch.
    fn take(
        &mut self,
        received: &mut Vec<ExportItem>,
        pending: &mut Vec<ExportItem>,
        batch_deadline: &mut Option<Instant>,
    ) {
        if let Some(console) = &mut self.console {
            let result = console.write(received);
            if self.otlp.is_none() {
                let n = received.len() as u64;
                match result {
                    Ok(()) => Stats::add(&self.stats.spans_exported, n),
                    Err(e) => {
                        Stats::add(&self.stats.spans_export_failed, n);
                        self.warn.warn(&format!("cannot write to stdout: {e}"));
                    }
                }
            } else if let Err(e) = result {
                self.warn.warn(&format!("cannot write to stdout: {e}"));
            }
        }
        if self.otlp.is_some() {
            if pending.is_empty() {
                *batch_deadline = Some(Instant::now() + self.batch_timeout);
            }
            pending.append(received);
        } else {
            received.clear();
        }
    }

    fn start_flush(&mut self, batch: Vec<ExportItem>) -> Option<Flight> {
        let otlp = self.otlp.as_mut()?;
        let total = batch.len() as u64;
        let counted = Arc::new(AtomicU64::new(0));
        let task = otlp.flush(batch, Arc::clone(&self.stats), Arc::clone(&counted));
        Some(Flight {
            task,
            total,
            counted,
        })
    }

    /// Time is up: abandon what is left and count it as lost.
    fn give_up(&mut self, flight: Option<Flight>, pending: usize) {
        let mut lost = pending as u64;
        if let Some(flight) = flight {
            flight.task.abort();
            lost += flight
                .total
                .saturating_sub(flight.counted.load(Ordering::Relaxed));
        }
        while self.rx.try_recv().is_ok() {
            lost += 1;
        }
        if lost > 0 {
            Stats::add(&self.stats.spans_export_failed, lost);
            tracing::warn!(lost, "span export shut down before everything was sent");
        }
    }
}

#[cfg(test)]
mod tests;
