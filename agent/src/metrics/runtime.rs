//! The metric tasks on the agent's tokio runtime: the periodic OTLP export,
//! the Prometheus endpoint and the console table.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Metrics, Temporality, console, otlp, prometheus};
use crate::config::{Config, parse_listen};
use crate::enrich::{HostInfo, ProcFacts, Resource, build_resource};
use crate::export::metrics_otlp::{MetricsExporter, MetricsTarget, resolve_metrics_target};
use crate::export::{ExportError, redact_userinfo, resolve_destinations};

/// Why the metric tasks could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("metrics over OTLP: {0}")]
    Export(#[from] ExportError),
    #[error("{setting}: {message}")]
    Listen { setting: String, message: String },
    #[error(
        "cannot serve Prometheus metrics on {addr}: {source} (pick another address with \
         --prometheus or metrics.prometheus.listen, or stop what holds that port)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The agent's own resource (`service.name` is its executable name).
pub fn agent_resource() -> Arc<Resource> {
    let pid = std::process::id();
    let facts = ProcFacts::read(std::path::Path::new("/proc"), pid);
    Arc::new(build_resource(&HostInfo::detect(), pid, &facts))
}

/// The running metric tasks.
pub struct MetricTasks {
    stop: watch::Sender<bool>,
    otlp: Option<JoinHandle<()>>,
    others: Vec<JoinHandle<()>>,
    /// Where the Prometheus endpoint listens, when it does.
    pub prometheus: Option<SocketAddr>,
}

impl MetricTasks {
    /// Stops the tasks; the OTLP task sends one last export first, within `budget`.
    pub async fn shutdown(self, budget: Duration) {
        let _ = self.stop.send(true);
        for t in &self.others {
            t.abort();
        }
        if let Some(mut t) = self.otlp
            && tokio::time::timeout(budget, &mut t).await.is_err()
        {
            t.abort();
            tracing::warn!("the last metric export did not finish in time");
        }
    }
}

/// Starts what `config` asks for: OTLP export when an endpoint is known,
/// the Prometheus endpoint when `prometheus` (the `--prometheus` flag) or
/// `metrics.prometheus.listen` is set, the console table when spans go to
/// the console. Must run inside the agent's runtime.
pub async fn start(
    metrics: Arc<Metrics>,
    config: &Config,
    prometheus_flag: Option<&str>,
) -> Result<MetricTasks, StartError> {
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let (stop, stop_rx) = watch::channel(false);
    let mut others = Vec::new();

    let otlp = match resolve_metrics_target(&config.export, &config.metrics, &env)? {
        Some(target) => {
            let exporter = MetricsExporter::new(&target)?;
            tracing::info!(
                endpoint = %redact_userinfo(&target.endpoint),
                protocol = ?target.protocol,
                interval_ms = target.interval.as_millis() as u64,
                temporality = ?target.temporality,
                "exporting metrics over OTLP"
            );
            Some(tokio::spawn(export_loop(
                Arc::clone(&metrics),
                exporter,
                target,
                stop_rx.clone(),
            )))
        }
        None => None,
    };

    let listen = match prometheus_flag {
        Some(text) => Some(("--prometheus", text.to_string())),
        None => config
            .metrics
            .prometheus
            .listen
            .clone()
            .map(|t| ("metrics.prometheus.listen", t)),
    };
    let mut prometheus_addr = None;
    if let Some((setting, text)) = listen {
        let addr = parse_listen(&text).map_err(|message| StartError::Listen {
            setting: setting.to_string(),
            message,
        })?;
        let listener = prometheus::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let bound = listener.local_addr().unwrap_or(addr);
        tracing::info!(address = %bound, "serving Prometheus metrics at /metrics");
        prometheus_addr = Some(bound);
        others.push(tokio::spawn(prometheus::serve(
            listener,
            Arc::clone(&metrics),
        )));
    }

    let console = resolve_destinations(&config.export, &env)
        .map(|d| d.console)
        .unwrap_or(false);
    let every = config.metrics.console_interval_secs;
    if console && every > 0 {
        others.push(tokio::spawn(console_loop(
            Arc::clone(&metrics),
            Duration::from_secs(every),
        )));
    }

    Ok(MetricTasks {
        stop,
        otlp,
        others,
        prometheus: prometheus_addr,
    })
}

/// Logs at most one warning per minute.
struct Warnings {
    last: Option<tokio::time::Instant>,
    quiet: u64,
}

impl Warnings {
    fn warn(&mut self, message: &str) {
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
        {
            self.quiet += 1;
            return;
        }
        tracing::warn!(
            similar_since_last = self.quiet,
            "metric export failed: {message}"
        );
        self.last = Some(now);
        self.quiet = 0;
    }
}

/// One export: the store read a part at a time, parts gathered into
/// requests of up to [`otlp::MAX_POINTS_PER_REQUEST`] points, each sent
/// before the next is built.
async fn export_once(
    metrics: &Metrics,
    exporter: &mut MetricsExporter,
    temporality: Temporality,
    warnings: &mut Warnings,
) {
    let max = otlp::MAX_POINTS_PER_REQUEST;
    let mut collection = metrics.collect(temporality);
    let mut gathered: Vec<super::store::ResourceSnap> = Vec::new();
    let mut points = 0;
    loop {
        let part = collection.next_part(otlp::SERIES_PER_PART);
        let done = part.is_none();
        if let Some(part) = part {
            points += part
                .resources
                .iter()
                .flat_map(|r| &r.metrics)
                .map(|m| m.points.len())
                .sum::<usize>();
            gathered.extend(part.resources);
        }
        if (done || points >= max) && !gathered.is_empty() {
            let snap = super::Snapshot {
                time_ns: collection.now,
                temporality,
                resources: super::store::merge_resources(std::mem::take(&mut gathered)),
            };
            points = 0;
            for request in otlp::Requests::new(&snap, max) {
                if let Err(e) = exporter.export(request).await {
                    metrics.count_export_failure();
                    warnings.warn(&e);
                }
            }
        }
        if done {
            break;
        }
    }
    crate::memory::release(false);
}

async fn export_loop(
    metrics: Arc<Metrics>,
    mut exporter: MetricsExporter,
    target: MetricsTarget,
    mut stop: watch::Receiver<bool>,
) {
    let mut warnings = Warnings {
        last: None,
        quiet: 0,
    };
    let start = tokio::time::Instant::now() + target.interval;
    let mut ticker = tokio::time::interval_at(start, target.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                export_once(&metrics, &mut exporter, target.temporality, &mut warnings).await;
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    // The last export: what waited in the service graph goes too.
    metrics.finish();
    export_once(&metrics, &mut exporter, target.temporality, &mut warnings).await;
}

async fn console_loop(metrics: Arc<Metrics>, every: Duration) {
    let mut table = console::Table::default();
    let started = super::unix_now_ns();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticker.tick().await;
        let snap = metrics.snapshot(Temporality::Cumulative);
        let (rows, active, seconds) = table.rows(&snap, started, console::TOP);
        let text = console::format(&rows, active, seconds);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}
