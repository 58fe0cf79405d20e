//! The metric exporters on the agent's tokio runtime: the periodic OTLP
//! export, the Prometheus endpoint and the console table.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::otlp::metrics::{
    MetricRoute, export_loop, resolve_metrics_target, resolve_tenant_metrics_targets,
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
    stop: watch::Sender<bool>,
    /// One OTLP export loop per route.
    otlp: Vec<JoinHandle<()>>,
    others: Vec<JoinHandle<()>>,
    /// Where the Prometheus endpoint listens, when it does.
    pub prometheus: Option<SocketAddr>,
}

impl MetricTasks {
    /// Stops the tasks; the OTLP tasks send one last export first, all at
    /// once, within `budget`.
    pub async fn shutdown(self, budget: Duration) {
        let _ = self.stop.send(true);
        for t in &self.others {
            t.abort();
        }
        let deadline = tokio::time::Instant::now() + budget;
        for mut t in self.otlp {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                tracing::warn!("the last metric export did not finish in time");
            }
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
    let env = process_env();
    let (stop, stop_rx) = watch::channel(false);
    let mut others = Vec::new();

    let mut otlp = Vec::new();
    let tenants = resolve_tenant_metrics_targets(&config.export, &config.metrics, &env)?;
    let default = resolve_metrics_target(&config.export, &config.metrics, &env)?;
    // A tenant with a metric route of its own is left out of the default one.
    let default_filter = if tenants.is_empty() {
        SeriesFilter::All
    } else {
        SeriesFilter::Except(Arc::new(tenants.iter().map(|(t, _)| t.clone()).collect()))
    };
    let routes = default
        .map(|target| (DEFAULT_ROUTE.to_owned(), target, default_filter))
        .into_iter()
        .chain(tenants.into_iter().map(|(tenant, target)| {
            let filter = SeriesFilter::Tenant(Arc::from(tenant.as_str()));
            (tenant, target, filter)
        }));
    for (route, target, filter) in routes {
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
        otlp.push(tokio::spawn(export_loop(
            Arc::clone(&metrics),
            client,
            target,
            MetricRoute { filter, counters },
            warning,
            stop_rx.clone(),
        )));
    }

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
        stop,
        otlp,
        others,
        prometheus: prometheus_addr,
    })
}
