//! The export stage: everything leaves the agent here, and nothing else
//! in the agent talks to the outside.
//!
//! - [`otlp`]: one OTLP transport (gRPC or HTTP/protobuf, one retry
//!   policy) for every signal, with the trace and metric data models;
//! - [`prometheus`]: the scrape endpoint and its two text formats;
//! - [`console`]: one line per span, and the table of the busiest
//!   operations;
//! - [`metrics`]: the tasks that export, serve and print metrics.
//!
//! Spans are pushed: the pipeline hands each finished span, with the
//! resource of its process, to [`ExportHandle::try_send`], which never
//! blocks: a bounded queue sits in front of one worker task, and when the
//! queue is full the span is dropped and counted
//! (`spans_dropped_queue_full`). The worker prints spans on the console and
//! batches them for OTLP. Metrics are pulled from the store by their tasks.
//!
//! Where spans go is decided once, at [`start`], from the configuration and
//! the standard `OTEL_EXPORTER_OTLP_*` environment variables
//! ([`resolve_destinations`], a pure function of both): OTLP when an
//! endpoint is set, by the rules of [`otlp`] with
//! `export.otlp.traces_endpoint` as the signal's own key; the console when
//! `export.console` is true, or unset while OTLP is off. Both can be on.
//!
//! Counters: `spans_exported` and `spans_export_failed` count what OTLP
//! delivered or lost; when the console is the only destination they count
//! lines written and lines that could not be written.

pub mod console;
pub mod metrics;
pub mod otlp;
pub mod prometheus;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ExportConfig;
use crate::enrich::Resource;
use crate::span::model::Span;
use crate::stats::Stats;

pub use console::format_span;
pub use otlp::{Env, OtlpTarget, Protocol, Signal, redact_userinfo, resolve_target};

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

/// The destinations spans go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destinations {
    pub console: bool,
    pub otlp: Option<OtlpTarget>,
}

/// Decides where spans go from the configuration and the environment
/// (`env`: variable name → value). See the module documentation.
pub fn resolve_destinations(config: &ExportConfig, env: &Env) -> Result<Destinations, ExportError> {
    let otlp = resolve_target(
        Signal::Traces,
        &config.otlp,
        ("export.otlp.traces_endpoint", &config.otlp.traces_endpoint),
        env,
    )?;
    let console = match config.console {
        Some(on) => on,
        None => otlp.is_none(),
    };
    if !console && otlp.is_none() {
        return Err(ExportError::NoDestination);
    }
    Ok(Destinations { console, otlp })
}

/// Starts the export stage: resolves the destinations from `config` and the
/// process environment and spawns the worker task. Must be called inside a
/// tokio runtime (multi-threaded in the agent).
pub fn start(config: &ExportConfig, stats: Arc<Stats>) -> Result<ExportHandle, ExportError> {
    let destinations = resolve_destinations(config, &otlp::process_env())?;
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
        Some(target) => Some(otlp::traces::TraceSink::new(target)?),
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
        warn: WarnLimiter::new("span export failed", Duration::from_secs(10)),
    };
    let task = runtime.spawn(worker.run(stop_rx));
    Ok(ExportHandle {
        sender: ExportSender { tx, stats },
        stop: stop_tx,
        task,
    })
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
#[derive(Debug)]
pub(crate) struct WarnLimiter {
    what: &'static str,
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// `what` starts each warning (`span export failed`).
    pub(crate) fn new(what: &'static str, interval: Duration) -> Self {
        WarnLimiter {
            what,
            interval,
            last: None,
            suppressed: 0,
        }
    }

    pub(crate) fn warn(&mut self, message: &str) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            similar_since_last = self.suppressed,
            "{}: {message}",
            self.what
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
    otlp: Option<otlp::traces::TraceSink>,
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

/// What the exporters' tests build spans with.
#[cfg(test)]
pub(crate) mod testing {
    use crate::span::model::{AttrValue, Span, SpanKind, SpanStatus};

    /// A server span, trace and span ids filled with `id`.
    pub(crate) fn span(
        name: &str,
        id: u8,
        (start_unix_ns, end_unix_ns): (u64, u64),
        attributes: Vec<(&'static str, AttrValue)>,
    ) -> Span {
        Span {
            trace_id: [id; 16],
            span_id: [id; 8],
            parent_span_id: None,
            name: name.into(),
            kind: SpanKind::Server,
            start_unix_ns,
            end_unix_ns,
            attributes,
            status: SpanStatus::Unset,
            pid: 1,
            endpoints: crate::capture::Endpoints::UNKNOWN,
            tenant: None,
            tenant_headers: Vec::new(),
        }
    }
}
