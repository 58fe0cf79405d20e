//! The metric exporters on the agent's tokio runtime: the periodic OTLP
//! export, the Prometheus endpoint and the console table.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::otlp::metrics::{
    MetricRoute, MetricsTarget, export_loop, resolve_metrics_target, resolve_tenant_metrics_targets,
};
use super::otlp::{OtlpClient, process_env, redact_userinfo};
use super::{ExportError, console, prometheus, resolve_destinations};
use crate::config::{Config, DEFAULT_ROUTE, parse_listen};
use crate::metrics::{Metrics, SeriesFilter};

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

/// The running metric tasks.
pub struct MetricTasks {
    metrics: Arc<Metrics>,
    /// The default route's OTLP export loop, when metrics go over OTLP.
    default: Option<ExportLoop>,
    /// One per tenant with a metric route of its own.
    tenants: Vec<ExportLoop>,
    /// Loops of routes that went away, sending their last export.
    retired: Vec<JoinHandle<()>>,
    others: Vec<JoinHandle<()>>,
    /// Where the Prometheus endpoint listens, when it does.
    pub prometheus: Option<SocketAddr>,
}

/// One route's OTLP export loop.
struct ExportLoop {
    route: String,
    target: MetricsTarget,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ExportLoop {
    /// Starts the loop of `route`, reading the series `filter` keeps.
    fn start(
        metrics: &Arc<Metrics>,
        route: String,
        target: MetricsTarget,
        filter: SeriesFilter,
    ) -> Result<ExportLoop, ExportError> {
        let client = OtlpClient::new(&target.otlp)?;
        tracing::info!(
            route,
            endpoint = %redact_userinfo(&target.otlp.endpoint),
            protocol = ?target.otlp.protocol,
            interval_ms = target.interval.as_millis() as u64,
            temporality = ?target.temporality,
            "exporting metrics over OTLP"
        );
        let warning = if route == DEFAULT_ROUTE {
            "metric export failed".to_owned()
        } else {
            format!("metric export of tenant {route} failed")
        };
        let counters = metrics.stats().routes.get(&route);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(export_loop(
            Arc::clone(metrics),
            client,
            target.clone(),
            MetricRoute { filter, counters },
            warning,
            stop_rx,
        ));
        Ok(ExportLoop {
            route,
            target,
            stop,
            task,
        })
    }

    /// Stops the loop after one last export.
    fn retire(self) -> JoinHandle<()> {
        let _ = self.stop.send(true);
        self.task
    }
}

/// What the default route takes: every series, or those of no tenant with
/// a route of its own.
fn default_filter(tenants: &[ExportLoop]) -> SeriesFilter {
    if tenants.is_empty() {
        SeriesFilter::All
    } else {
        SeriesFilter::Except(Arc::new(tenants.iter().map(|l| l.route.clone()).collect()))
    }
}

impl MetricTasks {
    /// Stops the tasks; the OTLP tasks send one last export first, all at
    /// once, within `budget`.
    pub async fn shutdown(self, budget: Duration) {
        for t in &self.others {
            t.abort();
        }
        let mut loops = self.retired;
        loops.extend(
            self.default
                .into_iter()
                .chain(self.tenants)
                .map(ExportLoop::retire),
        );
        let deadline = tokio::time::Instant::now() + budget;
        for mut t in loops {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                tracing::warn!("the last metric export did not finish in time");
            }
        }
    }

    /// Takes the tenant metric routes of `config` (a config reload): a new
    /// or changed route gets a new loop, one gone or changed sends its last
    /// export and stops, and when the set of routed tenants changed the
    /// default route's loop starts again with the series now left to it.
    /// Must run inside the agent's runtime. Returns the tenants whose
    /// metric route changed.
    pub fn set_tenant_routes(&mut self, config: &Config) -> Result<Vec<String>, ExportError> {
        let wanted =
            resolve_tenant_metrics_targets(&config.export, &config.metrics, &process_env())?;
        // Clients first: a route that cannot be set up changes nothing.
        for (tenant, target) in &wanted {
            if !self
                .tenants
                .iter()
                .any(|l| l.route == *tenant && l.target == *target)
            {
                OtlpClient::new(&target.otlp)?;
            }
        }
        let before: Vec<String> = self.tenants.iter().map(|l| l.route.clone()).collect();
        let mut changed = Vec::new();
        let mut kept = Vec::new();
        for l in std::mem::take(&mut self.tenants) {
            if wanted
                .iter()
                .any(|(t, target)| *t == l.route && *target == l.target)
            {
                kept.push(l);
            } else {
                changed.push(l.route.clone());
                self.retired.push(l.retire());
            }
        }
        for (tenant, target) in wanted {
            if kept.iter().any(|l| l.route == tenant) {
                continue;
            }
            changed.push(tenant.clone());
            let filter = SeriesFilter::Tenant(Arc::from(tenant.as_str()));
            kept.push(ExportLoop::start(&self.metrics, tenant, target, filter)?);
        }
        self.tenants = kept;
        let after: Vec<String> = self.tenants.iter().map(|l| l.route.clone()).collect();
        if before.iter().collect::<std::collections::BTreeSet<_>>()
            != after.iter().collect::<std::collections::BTreeSet<_>>()
            && let Some(default) = self.default.take()
        {
            let target = default.target.clone();
            self.retired.push(default.retire());
            let filter = default_filter(&self.tenants);
            self.default = Some(ExportLoop::start(
                &self.metrics,
                DEFAULT_ROUTE.to_owned(),
                target,
                filter,
            )?);
        }
        self.retired.retain(|t| !t.is_finished());
        changed.sort();
        changed.dedup();
        Ok(changed)
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
    let env = process_env();
    let mut others = Vec::new();

    let mut tenants = Vec::new();
    for (tenant, target) in resolve_tenant_metrics_targets(&config.export, &config.metrics, &env)? {
        let filter = SeriesFilter::Tenant(Arc::from(tenant.as_str()));
        tenants.push(ExportLoop::start(&metrics, tenant, target, filter)?);
    }
    // A tenant with a metric route of its own is left out of the default one.
    let default = match resolve_metrics_target(&config.export, &config.metrics, &env)? {
        Some(target) => Some(ExportLoop::start(
            &metrics,
            DEFAULT_ROUTE.to_owned(),
            target,
            default_filter(&tenants),
        )?),
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
        let listener = prometheus::server::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let bound = listener.local_addr().unwrap_or(addr);
        tracing::info!(
            address = %bound,
            "serving Prometheus metrics at /metrics (a tenant's own at /metrics/TENANT)"
        );
        prometheus_addr = Some(bound);
        others.push(tokio::spawn(prometheus::server::serve(
            listener,
            Arc::clone(&metrics),
        )));
    }

    let console = resolve_destinations(&config.export, &env)
        .map(|d| d.console)
        .unwrap_or(false);
    let every = config.metrics.console_interval_secs;
    if console && every > 0 {
        others.push(tokio::spawn(console::table::print_loop(
            Arc::clone(&metrics),
            Duration::from_secs(every),
        )));
    }

    Ok(MetricTasks {
        metrics,
        default,
        tenants,
        retired: Vec::new(),
        others,
        prometheus: prometheus_addr,
    })
}
