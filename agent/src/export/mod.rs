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
//! blocks. Each route has its own bounded queue in front of its own worker
//! task: the default route (`export.otlp` and the console) and one per
//! tenant of `export.tenants`. A span takes its tenant's route
//! ([`tenant_of`]), else the default one. When a route's queue is full the
//! span is dropped and counted (`spans_dropped_queue_full`, in total and
//! for the route), so a tenant whose collector is dead or slow fills and
//! drops only its own queue. A worker prints spans on the console (every
//! route's, when it is on) and batches them for OTLP. Metrics are pulled
//! from the store by their tasks.
//!
//! Where spans go is decided at [`start`], from the configuration and
//! the standard `OTEL_EXPORTER_OTLP_*` environment variables
//! ([`resolve_destinations`], a pure function of both): OTLP when an
//! endpoint is set, by the rules of [`otlp`] with
//! `export.otlp.traces_endpoint` as the signal's own key; the console when
//! `export.console` is true, or unset while OTLP is off. Both can be on.
//! Tenant routes are OTLP only, from the file alone
//! ([`otlp::resolve_route_target`]), and change with a config reload
//! ([`ExportHandle::set_tenant_routes`]): a new or changed route gets a new
//! queue and worker, and a route that goes away sends what it holds and
//! stops.
//!
//! Counters: `spans_exported` and `spans_export_failed` count what OTLP
//! delivered or lost; when the console is the default route's only
//! destination they count lines written and lines that could not be
//! written. Each route counts the same in [`Stats::routes`].

pub mod console;
pub mod metrics;
pub mod otlp;
pub mod prometheus;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{DEFAULT_ROUTE, ExportConfig};
use crate::enrich::Resource;
use crate::enrich::tenant::tenant_of;
use crate::span::model::Span;
use crate::stats::{RouteStats, Stats};

pub use console::format_span;
pub use otlp::{
    Env, OtlpTarget, Protocol, Signal, redact_userinfo, resolve_route_target, resolve_target,
};

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
    /// The default route's: the console, and OTLP by `export.otlp`.
    pub console: bool,
    pub otlp: Option<OtlpTarget>,
    /// The tenants whose spans take a route of their own, by tenant id.
    pub tenants: Vec<TenantTraces>,
}

/// One tenant's span route (`export.tenants.<id>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantTraces {
    pub tenant: String,
    pub otlp: OtlpTarget,
    pub batching: Batching,
}

/// A route's queue and batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Spans waiting; beyond, new spans are dropped.
    pub queue_size: usize,
    /// Spans per flush.
    pub batch_size: usize,
    /// Longest a span waits for its batch to fill.
    pub batch_timeout: Duration,
}

impl Batching {
    fn of(queue_size: u32, batch_size: u32, batch_timeout_ms: u64) -> Batching {
        Batching {
            queue_size: usize::try_from(queue_size).unwrap_or(usize::MAX).max(1),
            batch_size: usize::try_from(batch_size)
                .unwrap_or(usize::MAX)
                .clamp(1, 1 << 20),
            batch_timeout: Duration::from_millis(batch_timeout_ms),
        }
    }

    /// The default route's: `export.queue_size` and `export.otlp`'s.
    fn default_route(config: &ExportConfig) -> Batching {
        Batching::of(
            config.queue_size,
            config.otlp.batch_size,
            config.otlp.batch_timeout_ms,
        )
    }
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
    let mut tenants = Vec::new();
    for (tenant, route) in &config.tenants {
        // A route for metrics only leaves the tenant's spans on the default route.
        let Some(target) = resolve_route_target(Signal::Traces, tenant, route, &config.otlp)?
        else {
            continue;
        };
        tenants.push(TenantTraces {
            tenant: tenant.clone(),
            otlp: target,
            batching: Batching::of(
                route.queue_size.unwrap_or(config.queue_size),
                route.batch_size.unwrap_or(config.otlp.batch_size),
                route
                    .batch_timeout_ms
                    .unwrap_or(config.otlp.batch_timeout_ms),
            ),
        });
    }
    Ok(Destinations {
        console,
        otlp,
        tenants,
    })
}

/// Starts the export stage: resolves the destinations from `config` and the
/// process environment and spawns one worker task per route. Must be
/// called inside a tokio runtime (multi-threaded in the agent).
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
    // Every client first: a route that cannot be set up starts nothing.
    let default_otlp = match &destinations.otlp {
        Some(target) => Some(otlp::traces::TraceSink::new(target)?),
        None => None,
    };
    let mut tenant_otlp = Vec::with_capacity(destinations.tenants.len());
    for t in &destinations.tenants {
        tenant_otlp.push(otlp::traces::TraceSink::new(&t.otlp)?);
    }

    let console = console.map(|c| Arc::new(Mutex::new(c)));
    let mut workers = Vec::new();
    let spawner = Spawner {
        runtime: runtime.clone(),
        console,
        stats,
    };
    let default = spawner.spawn(
        DEFAULT_ROUTE,
        destinations.otlp.as_ref(),
        default_otlp,
        Batching::default_route(config),
        &mut workers,
    );
    let mut tenants = HashMap::with_capacity(destinations.tenants.len());
    for (t, sink) in destinations.tenants.into_iter().zip(tenant_otlp) {
        let queue = spawner.spawn(
            &t.tenant,
            Some(&t.otlp),
            Some(sink),
            t.batching,
            &mut workers,
        );
        tenants.insert(
            Box::<str>::from(t.tenant.as_str()),
            TenantRoute { traces: t, queue },
        );
    }
    Ok(ExportHandle {
        sender: ExportSender {
            routes: Arc::new(arc_swap::ArcSwap::from_pointee(Routes { default, tenants })),
        },
        workers,
        spawner,
    })
}

/// What starts a route's worker.
struct Spawner {
    runtime: tokio::runtime::Handle,
    /// Shared by every route's worker.
    console: Option<Arc<Mutex<console::ConsoleSink>>>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawner")
            .field("console", &self.console.is_some())
            .finish_non_exhaustive()
    }
}

impl Spawner {
    /// Starts the worker of `route`, sending to `sink` (and the console,
    /// when on); returns its queue.
    fn spawn(
        &self,
        route: &str,
        target: Option<&OtlpTarget>,
        sink: Option<otlp::traces::TraceSink>,
        batching: Batching,
        workers: &mut Vec<RouteWorker>,
    ) -> RouteQueue {
        let stats = &self.stats;
        if let Some(target) = target {
            tracing::info!(
                route,
                endpoint = %redact_userinfo(&target.endpoint),
                protocol = ?target.protocol,
                headers = target.headers.len(),
                "exporting spans over OTLP"
            );
        }
        let counters = RouteCounters {
            stats: Arc::clone(stats),
            route: stats.routes.get(route),
        };
        let (tx, rx) = mpsc::channel(batching.queue_size);
        let (stop, stop_rx) = oneshot::channel();
        let warning = if route == DEFAULT_ROUTE {
            Cow::Borrowed("span export failed")
        } else {
            Cow::Owned(format!("span export of tenant {route} failed"))
        };
        let worker = Worker {
            rx,
            console: self.console.clone(),
            otlp: sink,
            counters: counters.clone(),
            batch_size: batching.batch_size,
            batch_timeout: batching.batch_timeout,
            warn: WarnLimiter::new(warning, Duration::from_secs(10)),
        };
        workers.push(RouteWorker {
            stop,
            task: self.runtime.spawn(worker.run(stop_rx)),
        });
        RouteQueue { tx, counters }
    }
}

/// A route's counters: its own, and the totals in [`Stats`].
#[derive(Clone, Debug)]
pub(crate) struct RouteCounters {
    stats: Arc<Stats>,
    route: Arc<RouteStats>,
}

impl RouteCounters {
    pub(crate) fn dropped_queue_full(&self, n: u64) {
        Stats::add(&self.stats.spans_dropped_queue_full, n);
        Stats::add(&self.route.spans_dropped_queue_full, n);
    }

    pub(crate) fn exported(&self, n: u64) {
        Stats::add(&self.stats.spans_exported, n);
        Stats::add(&self.route.spans_exported, n);
    }

    pub(crate) fn failed(&self, n: u64) {
        Stats::add(&self.stats.spans_export_failed, n);
        Stats::add(&self.route.spans_export_failed, n);
    }
}

/// One route's queue.
#[derive(Clone, Debug)]
struct RouteQueue {
    tx: mpsc::Sender<ExportItem>,
    counters: RouteCounters,
}

/// A tenant's route: where it sends, and its queue.
#[derive(Clone, Debug)]
struct TenantRoute {
    traces: TenantTraces,
    queue: RouteQueue,
}

/// Every route's queue.
#[derive(Debug)]
struct Routes {
    default: RouteQueue,
    /// By tenant id; empty when no tenant has a route.
    tenants: HashMap<Box<str>, TenantRoute>,
}

impl Routes {
    /// The queue of `item`'s route: its tenant's, else the default one.
    fn of(&self, item: &ExportItem) -> &RouteQueue {
        if self.tenants.is_empty() {
            return &self.default;
        }
        tenant_of(&item.resource, &item.span)
            .and_then(|t| self.tenants.get(t))
            .map_or(&self.default, |r| &r.queue)
    }
}

/// The way into the export queues; cheap to clone, usable from any thread.
/// The routes are swapped whole when the tenant routes change.
#[derive(Clone, Debug)]
pub struct ExportSender {
    routes: Arc<arc_swap::ArcSwap<Routes>>,
}

impl ExportSender {
    /// Queues `item` on its route without blocking. When that queue is full
    /// (or the stage has shut down) the span is dropped and counted in
    /// `spans_dropped_queue_full`; returns whether it was queued.
    pub fn try_send(&self, item: ExportItem) -> bool {
        let routes = self.routes.load();
        let queue = routes.of(&item);
        match queue.tx.try_send(item) {
            Ok(()) => true,
            Err(_) => {
                queue.counters.dropped_queue_full(1);
                false
            }
        }
    }

    /// The route `item` takes: [`DEFAULT_ROUTE`] or a tenant id.
    #[cfg(test)]
    fn route_of(&self, item: &ExportItem) -> String {
        let routes = self.routes.load();
        let queue = routes.of(item);
        routes
            .tenants
            .iter()
            .find(|(_, r)| std::ptr::eq(&r.queue, queue))
            .map_or(DEFAULT_ROUTE, |(tenant, _)| tenant)
            .to_owned()
    }
}

/// One route's worker.
#[derive(Debug)]
struct RouteWorker {
    stop: oneshot::Sender<Instant>,
    task: JoinHandle<()>,
}

/// The running export stage. Dropping it without [`shutdown`](Self::shutdown)
/// still lets the workers send what is queued, in the background, for a
/// few seconds.
#[derive(Debug)]
pub struct ExportHandle {
    sender: ExportSender,
    /// Every worker started, the retired ones until they are done.
    workers: Vec<RouteWorker>,
    spawner: Spawner,
}

/// How long a worker whose handle was dropped keeps trying to send.
const DROPPED_HANDLE_GRACE: Duration = Duration::from_secs(5);

impl ExportHandle {
    /// See [`ExportSender::try_send`].
    pub fn try_send(&self, item: ExportItem) -> bool {
        self.sender.try_send(item)
    }

    /// Another way into the same queues, for other threads.
    pub fn sender(&self) -> ExportSender {
        self.sender.clone()
    }

    /// Takes the tenant routes of `config` (a config reload): a route that
    /// is new or whose target or batching changed gets a new queue and
    /// worker; one that is gone or changed stops taking spans, sends what
    /// it holds and ends. Unchanged routes keep their queue. The default
    /// route is not touched. A route that cannot be set up changes
    /// nothing. Returns the tenants whose route changed.
    pub fn set_tenant_routes(&mut self, config: &ExportConfig) -> Result<Vec<String>, ExportError> {
        let wanted = resolve_destinations(config, &otlp::process_env())?.tenants;
        let current = self.sender.routes.load_full();
        let _entered = self.spawner.runtime.enter();
        let mut new_sinks = Vec::new();
        for t in &wanted {
            if current
                .tenants
                .get(t.tenant.as_str())
                .is_none_or(|r| r.traces != *t)
            {
                new_sinks.push(otlp::traces::TraceSink::new(&t.otlp)?);
            }
        }
        let mut changed: Vec<String> = current
            .tenants
            .keys()
            .filter(|k| !wanted.iter().any(|t| t.tenant == ***k))
            .map(ToString::to_string)
            .collect();
        let mut new_sinks = new_sinks.into_iter();
        let mut tenants = HashMap::with_capacity(wanted.len());
        for t in wanted {
            let queue = match current.tenants.get(t.tenant.as_str()) {
                Some(r) if r.traces == t => r.queue.clone(),
                _ => {
                    changed.push(t.tenant.clone());
                    let sink = new_sinks.next();
                    self.spawner.spawn(
                        &t.tenant,
                        Some(&t.otlp),
                        sink,
                        t.batching,
                        &mut self.workers,
                    )
                }
            };
            tenants.insert(
                Box::<str>::from(t.tenant.as_str()),
                TenantRoute { traces: t, queue },
            );
        }
        self.sender.routes.store(Arc::new(Routes {
            default: current.default.clone(),
            tenants,
        }));
        // The old routes go when the last span being queued lets go of
        // them; their workers then see their queue closed.
        drop(current);
        self.workers.retain(|w| !w.task.is_finished());
        changed.sort();
        Ok(changed)
    }

    /// Stops taking spans, sends everything already queued on every route,
    /// and returns when that is done or when `timeout` has passed,
    /// whichever comes first. Spans that could not be sent in time are
    /// counted in `spans_export_failed`.
    pub async fn shutdown(self, timeout: Duration) {
        let ExportHandle {
            sender, workers, ..
        } = self;
        drop(sender);
        let deadline = Instant::now() + timeout;
        // The workers give up a little earlier, to count what they leave.
        let give_up = Instant::now() + timeout.mul_f64(0.9);
        let mut tasks = Vec::with_capacity(workers.len());
        for w in workers {
            let _ = w.stop.send(give_up);
            tasks.push(w.task);
        }
        // They run at once; waiting for each in turn ends by the deadline.
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

/// Logs at most one warning per interval; counts the others.
#[derive(Debug)]
pub(crate) struct WarnLimiter {
    what: Cow<'static, str>,
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// `what` starts each warning (`span export failed`).
    pub(crate) fn new(what: impl Into<Cow<'static, str>>, interval: Duration) -> Self {
        WarnLimiter {
            what: what.into(),
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
    /// Shared by every route's worker.
    console: Option<Arc<Mutex<console::ConsoleSink>>>,
    otlp: Option<otlp::traces::TraceSink>,
    counters: RouteCounters,
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
        if let Some(console) = &self.console {
            let result = console
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .write(received);
            if self.otlp.is_none() {
                let n = received.len() as u64;
                match result {
                    Ok(()) => self.counters.exported(n),
                    Err(e) => {
                        self.counters.failed(n);
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
        let task = otlp.flush(batch, self.counters.clone(), Arc::clone(&counted));
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
            self.counters.failed(lost);
            tracing::warn!(
                lost,
                "{}: shut down before everything was sent",
                self.warn.what
            );
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
            tenant_headers: Default::default(),
            rest: Default::default(),
        }
    }
}
