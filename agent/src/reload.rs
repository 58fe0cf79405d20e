//! Live configuration: the agent reads its config file again on SIGHUP and
//! when the file changes, and takes what changed without a restart where
//! the running parts allow it.
//!
//! A new file is checked whole by [`config::load`] first (errors name the
//! key and its line): a file with an error changes nothing. Then [`diff`]
//! compares it with the config in force, section by section. Each change
//! either applies live ([`LiveChange`], made by [`Reloader::reload`]
//! through a setter on the stage it concerns) or needs a restart
//! ([`Restart`]: the running value is kept and the log says so).
//!
//! What needs a restart is what was fixed when the agent started: the
//! kernel's settings (`CONFIG` and map sizes), the exporters and their
//! queues, the metric store, the Kubernetes watcher, the endpoints, the
//! log filter.

use std::collections::BTreeSet;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use sonde_common::PrefixPattern;
use tracing::{info, warn};

use crate::config::{
    self, CaptureConfig, Config, ConfigError, ContainersConfig, DbConfig, ExportConfig,
    HealthConfig, HttpConfig, KubernetesConfig, LogConfig, MetricsConfig, ProtocolsConfig,
    SampleConfig, Selection, TenantConfig, TenantRoute,
};
use crate::enrich::tenant::Tenants;
use crate::pipeline::{Pipeline, SpanSink};
use crate::protocol::{Limits, prefilter};

/// A change the running agent takes without a restart: the new value.
#[derive(Clone, Debug, PartialEq)]
pub enum LiveChange {
    Sample(SampleConfig),
    Select(Selection),
    Protocols(ProtocolsConfig),
    Tenants(TenantConfig),
    /// `export.tenants`: made by the export stage, not the pipeline.
    Routes(std::collections::BTreeMap<String, TenantRoute>),
    Http(HttpConfig),
    Db(DbConfig),
    MaxBufferedBytes(u32),
    PollIntervalMs(u32),
    StatsIntervalSecs(u64),
}

impl LiveChange {
    /// The section or key it changes.
    pub fn key(&self) -> &'static str {
        match self {
            LiveChange::Sample(_) => "sample",
            LiveChange::Select(_) => "select",
            LiveChange::Protocols(_) => "protocols",
            LiveChange::Tenants(_) => "tenants",
            LiveChange::Routes(_) => "export.tenants",
            LiveChange::Http(_) => "http",
            LiveChange::Db(_) => "db",
            LiveChange::MaxBufferedBytes(_) => "capture.max_buffered_bytes",
            LiveChange::PollIntervalMs(_) => "capture.poll_interval_ms",
            LiveChange::StatsIntervalSecs(_) => "log.stats_interval_secs",
        }
    }

    /// Writes the new value into `config`.
    fn write(&self, config: &mut Config) {
        match self {
            LiveChange::Sample(v) => config.sample = v.clone(),
            LiveChange::Select(v) => config.select = v.clone(),
            LiveChange::Protocols(v) => config.protocols = v.clone(),
            LiveChange::Tenants(v) => config.tenants = v.clone(),
            LiveChange::Routes(v) => config.export.tenants = v.clone(),
            LiveChange::Http(v) => config.http = v.clone(),
            LiveChange::Db(v) => config.db = v.clone(),
            LiveChange::MaxBufferedBytes(v) => config.capture.max_buffered_bytes = *v,
            LiveChange::PollIntervalMs(v) => config.capture.poll_interval_ms = *v,
            LiveChange::StatsIntervalSecs(v) => config.log.stats_interval_secs = *v,
        }
    }
}

/// A change that needs a restart: the key, and the value kept meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restart {
    pub key: String,
    pub kept: String,
    /// Why, when it is not plain that the value is fixed at start.
    pub reason: Option<String>,
}

impl Restart {
    fn kept(key: &str, value: &impl fmt::Debug) -> Restart {
        Restart {
            key: key.to_owned(),
            kept: format!("{value:?}"),
            reason: None,
        }
    }

    /// A change somewhere in `section` (in a key not listed one by one).
    fn section(section: &str) -> Restart {
        Restart {
            key: section.to_owned(),
            kept: "the running settings".to_owned(),
            reason: None,
        }
    }
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} needs a restart; kept {}", self.key, self.kept)?;
        if let Some(reason) = &self.reason {
            write!(f, " ({reason})")?;
        }
        Ok(())
    }
}

/// What a new config changes, compared with the one in force.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diff {
    pub live: Vec<LiveChange>,
    pub restart: Vec<Restart>,
    /// Said in the log, changing nothing.
    pub warnings: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.restart.is_empty()
    }
}

/// The pod label and annotation keys the Kubernetes metadata watcher was
/// started to keep for the `select` and `tenants` rules. It keeps no
/// other: a rule that reads another needs a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchedKeys {
    pub labels: BTreeSet<String>,
    pub annotations: BTreeSet<String>,
}

impl WatchedKeys {
    /// What the watcher keeps for these rules.
    pub fn of(selection: &Selection, tenants: &Tenants) -> WatchedKeys {
        WatchedKeys {
            labels: selection
                .label_keys()
                .into_iter()
                .chain(tenants.label_keys().map(str::to_owned))
                .collect(),
            annotations: tenants.annotation_keys().map(str::to_owned).collect(),
        }
    }

    /// The first key of `wanted` not kept, described.
    fn missing(&self, wanted: &WatchedKeys) -> Option<String> {
        let label = wanted.labels.difference(&self.labels).next();
        let annotation = wanted.annotations.difference(&self.annotations).next();
        label
            .map(|k| format!("pod label {k}"))
            .or_else(|| annotation.map(|k| format!("pod annotation {k}")))
    }
}

/// Compares the config in force with a new one, section by section.
/// `watched` is what the Kubernetes metadata watcher keeps, when it runs.
pub fn diff(running: &Config, new: &Config, watched: Option<&WatchedKeys>) -> Diff {
    let mut out = Diff::default();
    capture_changes(&running.capture, &new.capture, &mut out);
    if running.http != new.http {
        out.live.push(LiveChange::Http(new.http.clone()));
    }
    if running.db != new.db {
        out.live.push(LiveChange::Db(new.db.clone()));
    }
    export_changes(&running.export, &new.export, &mut out);
    metrics_changes(&running.metrics, &new.metrics, &mut out.restart);
    if running.sample != new.sample {
        out.live.push(LiveChange::Sample(new.sample.clone()));
    }
    log_changes(&running.log, &new.log, &mut out);
    kubernetes_changes(&running.kubernetes, &new.kubernetes, &mut out.restart);
    containers_changes(&running.containers, &new.containers, &mut out.restart);
    health_changes(&running.health, &new.health, &mut out.restart);
    if running.protocols != new.protocols {
        out.live.push(LiveChange::Protocols(new.protocols.clone()));
    }
    let new_tenants = Tenants::new(new.tenants.clone());
    // Rules that read what the watcher does not keep would see it absent.
    if running.select != new.select {
        let wanted = WatchedKeys::of(&new.select, &Tenants::default());
        match watched.and_then(|w| w.missing(&wanted)) {
            Some(key) => out.restart.push(Restart {
                key: "select".to_owned(),
                kept: "the running rules".to_owned(),
                reason: Some(format!(
                    "a rule reads {key}, which the Kubernetes metadata watcher was not started \
                     to keep"
                )),
            }),
            None => {
                if watched.is_none() && new.select.needs_pods() {
                    out.warnings.push(
                        "select: rules name namespaces, pods or containers, but kubernetes \
                         metadata is off (kubernetes.enabled): they match no process"
                            .to_owned(),
                    );
                }
                out.live.push(LiveChange::Select(new.select.clone()));
            }
        }
    }
    if running.tenants != new.tenants {
        let wanted = WatchedKeys::of(&Selection::all(), &new_tenants);
        match watched.and_then(|w| w.missing(&wanted)) {
            Some(key) => out.restart.push(Restart {
                key: "tenants".to_owned(),
                kept: "the running rules".to_owned(),
                reason: Some(format!(
                    "a rule reads {key}, which the Kubernetes metadata watcher was not started \
                     to keep"
                )),
            }),
            None => out.live.push(LiveChange::Tenants(new.tenants.clone())),
        }
    }
    out
}

/// Notes a restart for `key` if its value changed.
fn field<T: PartialEq + fmt::Debug>(out: &mut Vec<Restart>, key: &str, old: &T, new: &T) {
    if old != new {
        out.push(Restart::kept(key, old));
    }
}

/// The section as a whole when it changed in no key looked at one by one:
/// a key added to it later needs a restart until it is said otherwise.
fn rest_of_section<T: PartialEq>(
    out: &mut Vec<Restart>,
    before: usize,
    section: &str,
    old: &T,
    new: &T,
) {
    if out.len() == before && old != new {
        out.push(Restart::section(section));
    }
}

/// The kernel's settings are fixed at load (`CONFIG` and the map sizes);
/// what user space alone reads applies live.
fn capture_changes(old: &CaptureConfig, new: &CaptureConfig, out: &mut Diff) {
    if old.max_buffered_bytes != new.max_buffered_bytes {
        out.live
            .push(LiveChange::MaxBufferedBytes(new.max_buffered_bytes));
    }
    if old.poll_interval_ms != new.poll_interval_ms {
        out.live
            .push(LiveChange::PollIntervalMs(new.poll_interval_ms));
    }
    let restart = &mut out.restart;
    let before = restart.len();
    field(restart, "capture.bytes", &old.bytes, &new.bytes);
    field(
        restart,
        "capture.ring_buffer_bytes",
        &old.ring_buffer_bytes,
        &new.ring_buffer_bytes,
    );
    field(
        restart,
        "capture.max_connections",
        &old.max_connections,
        &new.max_connections,
    );
    field(
        restart,
        "capture.wakeup_bytes",
        &old.wakeup_bytes,
        &new.wakeup_bytes,
    );
    field(restart, "capture.path", &old.path, &new.path);
    let live_taken = CaptureConfig {
        max_buffered_bytes: old.max_buffered_bytes,
        poll_interval_ms: old.poll_interval_ms,
        ..new.clone()
    };
    rest_of_section(restart, before, "capture", old, &live_taken);
}

/// The tenant routes (`export.tenants`) change live (the export stage
/// starts and stops their queues, workers and metric loops); the rest of
/// `export` (the default route) is started once.
fn export_changes(old: &ExportConfig, new: &ExportConfig, out: &mut Diff) {
    if old.tenants != new.tenants {
        out.live.push(LiveChange::Routes(new.tenants.clone()));
    }
    let rest = ExportConfig {
        tenants: old.tenants.clone(),
        ..new.clone()
    };
    if *old != rest {
        out.restart.push(Restart {
            key: "export".to_owned(),
            kept: "the running default route".to_owned(),
            reason: None,
        });
    }
}

/// The metric store and its exporters are built once.
fn metrics_changes(old: &MetricsConfig, new: &MetricsConfig, out: &mut Vec<Restart>) {
    let before = out.len();
    field(out, "metrics.enabled", &old.enabled, &new.enabled);
    field(
        out,
        "metrics.max_series_per_metric",
        &old.max_series_per_metric,
        &new.max_series_per_metric,
    );
    field(
        out,
        "metrics.idle_series_secs",
        &old.idle_series_secs,
        &new.idle_series_secs,
    );
    field(out, "metrics.histogram", &old.histogram, &new.histogram);
    field(
        out,
        "metrics.exponential_max_size",
        &old.exponential_max_size,
        &new.exponential_max_size,
    );
    field(
        out,
        "metrics.duration_buckets",
        &old.duration_buckets,
        &new.duration_buckets,
    );
    field(
        out,
        "metrics.size_buckets",
        &old.size_buckets,
        &new.size_buckets,
    );
    field(out, "metrics.buckets", &old.buckets, &new.buckets);
    field(out, "metrics.exemplars", &old.exemplars, &new.exemplars);
    field(
        out,
        "metrics.service_graph",
        &old.service_graph,
        &new.service_graph,
    );
    field(out, "metrics.otlp", &old.otlp, &new.otlp);
    field(
        out,
        "metrics.prometheus.listen",
        &old.prometheus.listen,
        &new.prometheus.listen,
    );
    field(
        out,
        "metrics.console_interval_secs",
        &old.console_interval_secs,
        &new.console_interval_secs,
    );
    rest_of_section(out, before, "metrics", old, new);
}

/// The log filter is installed once; the summaries' interval is read by
/// the capture loop each time.
fn log_changes(old: &LogConfig, new: &LogConfig, out: &mut Diff) {
    if old.stats_interval_secs != new.stats_interval_secs {
        out.live
            .push(LiveChange::StatsIntervalSecs(new.stats_interval_secs));
    }
    let before = out.restart.len();
    field(&mut out.restart, "log.level", &old.level, &new.level);
    let live_taken = LogConfig {
        stats_interval_secs: old.stats_interval_secs,
        ..new.clone()
    };
    rest_of_section(&mut out.restart, before, "log", old, &live_taken);
}

/// The watcher is started once, with its node and what it keeps.
fn kubernetes_changes(old: &KubernetesConfig, new: &KubernetesConfig, out: &mut Vec<Restart>) {
    let before = out.len();
    field(out, "kubernetes.enabled", &old.enabled, &new.enabled);
    field(
        out,
        "kubernetes.cluster_name",
        &old.cluster_name,
        &new.cluster_name,
    );
    field(out, "kubernetes.node_name", &old.node_name, &new.node_name);
    field(
        out,
        "kubernetes.deleted_pod_retention_secs",
        &old.deleted_pod_retention_secs,
        &new.deleted_pod_retention_secs,
    );
    field(
        out,
        "kubernetes.pod_labels",
        &old.pod_labels,
        &new.pod_labels,
    );
    field(
        out,
        "kubernetes.pod_annotations",
        &old.pod_annotations,
        &new.pod_annotations,
    );
    rest_of_section(out, before, "kubernetes", old, new);
}

fn containers_changes(old: &ContainersConfig, new: &ContainersConfig, out: &mut Vec<Restart>) {
    let before = out.len();
    field(
        out,
        "containers.docker_root",
        &old.docker_root,
        &new.docker_root,
    );
    field(
        out,
        "containers.podman_root",
        &old.podman_root,
        &new.podman_root,
    );
    rest_of_section(out, before, "containers", old, new);
}

fn health_changes(old: &HealthConfig, new: &HealthConfig, out: &mut Vec<Restart>) {
    let before = out.len();
    field(out, "health.listen", &old.listen, &new.listen);
    rest_of_section(out, before, "health", old, new);
}

// ---------------------------------------------------------------------------
// Noticing a change of the file
// ---------------------------------------------------------------------------

/// What tells that the config file changed without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    /// The path with every symlink resolved: a ConfigMap update points the
    /// mounted directory's `..data` link at a new directory.
    target: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&target).ok()?;
    let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    Some(Stamp {
        target,
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
        ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
    })
}

fn content_hash(path: &Path) -> Option<u64> {
    let text = std::fs::read(path).ok()?;
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    Some(hasher.finish())
}

/// The config file, looked at about once a second by the capture loop.
///
/// Polled rather than watched with inotify: a ConfigMap update swaps a
/// symlink in the mounted directory (`..data`) and never writes the file,
/// so a watch on the file misses it and one on the directory must follow
/// the links itself; editors rename over the file, which ends a watch on
/// it. A stat of the resolved path once a second sees all of these, costs
/// next to nothing, and needs no file descriptor kept open. The content is
/// read only when the metadata moved, and a file whose content is what was
/// last read (a `touch`, a swap to the same data) is no change.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    stamp: Option<Stamp>,
    hash: Option<u64>,
}

impl ConfigFile {
    /// The file at `path`, taken as read as it is now: made just before
    /// the agent reads it at start, so that a change after is seen.
    pub fn new(path: &Path) -> ConfigFile {
        ConfigFile {
            path: path.to_path_buf(),
            stamp: stamp(path),
            hash: content_hash(path),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file changed since it was last looked at or read.
    pub fn changed(&mut self) -> bool {
        let now = stamp(&self.path);
        if now == self.stamp {
            return false;
        }
        self.stamp = now;
        let hash = content_hash(&self.path);
        if hash == self.hash {
            return false;
        }
        self.hash = hash;
        true
    }

    /// Takes the file as it is now as read (after a reload it did not ask
    /// for), so that the next look does not read it again.
    fn mark_read(&mut self) {
        self.stamp = stamp(&self.path);
        self.hash = content_hash(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Reloading
// ---------------------------------------------------------------------------

/// What a reload did.
#[derive(Debug)]
pub enum Outcome {
    /// The file is the config in force.
    Unchanged,
    /// The file is refused; nothing changed.
    Rejected(ConfigError),
    /// The live changes are made; `kernel_prefixes`, when protocols
    /// changed, are the kernel's new message-start patterns for the
    /// capture loop to write (`Probes::set_prefixes`).
    Applied {
        diff: Diff,
        kernel_prefixes: Option<Vec<PrefixPattern>>,
    },
}

/// The config in force and where it comes from.
#[derive(Debug)]
pub struct Reloader {
    file: Option<ConfigFile>,
    running: Config,
    watched: Option<WatchedKeys>,
}

impl Reloader {
    /// `running` was read from `file` (none: no file, nothing to reload);
    /// `watched` is what the Kubernetes metadata watcher keeps, when it runs.
    pub fn new(
        file: Option<ConfigFile>,
        running: Config,
        watched: Option<WatchedKeys>,
    ) -> Reloader {
        Reloader {
            file,
            running,
            watched,
        }
    }

    /// The config file, if there is one.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(ConfigFile::path)
    }

    /// The config in force: the file last read, with the changes that
    /// need a restart left at their running values.
    pub fn running(&self) -> &Config {
        &self.running
    }

    /// Whether the file changed since it was last read.
    pub fn file_changed(&mut self) -> bool {
        self.file.as_mut().is_some_and(ConfigFile::changed)
    }

    /// Reads the file again, checks it whole and makes its live changes in
    /// `pipeline`; a file with an error changes nothing.
    pub fn reload<S: SpanSink>(&mut self, pipeline: &mut Pipeline<S>) -> Outcome {
        let Some(file) = &mut self.file else {
            return Outcome::Unchanged;
        };
        file.mark_read();
        let new = match config::load(file.path()) {
            Ok(new) => new,
            Err(e) => return Outcome::Rejected(e),
        };
        let diff = diff(&self.running, &new, self.watched.as_ref());
        if diff.is_empty() {
            return Outcome::Unchanged;
        }
        let kernel_prefixes = apply(&diff.live, pipeline);
        for change in &diff.live {
            change.write(&mut self.running);
        }
        Outcome::Applied {
            diff,
            kernel_prefixes,
        }
    }
}

/// Makes `changes` in the pipeline's stages, each through its setter.
/// Returns the kernel's message-start patterns when protocols changed.
fn apply<S: SpanSink>(
    changes: &[LiveChange],
    pipeline: &mut Pipeline<S>,
) -> Option<Vec<PrefixPattern>> {
    let mut kernel_prefixes = None;
    for change in changes {
        match change {
            LiveChange::Sample(sample) => pipeline.set_sample_config(sample.clone()),
            LiveChange::Select(selection) => {
                pipeline.resources_mut().set_selection(selection.clone());
            }
            LiveChange::Protocols(protocols) => {
                let on = protocols.enabled();
                kernel_prefixes = Some(prefilter::slots(&on));
                pipeline.set_protocols(on);
            }
            LiveChange::Tenants(tenants) => {
                crate::metrics::attrs::set_tenant_attribute(&tenants.attribute);
                pipeline.set_tenants(Tenants::new(tenants.clone()));
            }
            LiveChange::Http(http) => {
                let mut spans = pipeline.options().spans;
                spans.http.capture_query = http.capture_query;
                pipeline.set_span_options(spans);
            }
            LiveChange::Db(db) => {
                let mut spans = pipeline.options().spans;
                spans.db.sanitize_query = db.sanitize_query;
                pipeline.set_span_options(spans);
            }
            LiveChange::MaxBufferedBytes(bytes) => pipeline.set_limits(Limits {
                max_buffered_bytes: *bytes as usize,
            }),
            // Read by the capture loop from the running config; routes are
            // the export stage's (see `Outcome::Applied`).
            LiveChange::PollIntervalMs(_)
            | LiveChange::StatsIntervalSecs(_)
            | LiveChange::Routes(_) => {}
        }
    }
    kernel_prefixes
}

/// Says in the log what a reload did.
pub fn log(outcome: &Outcome, path: Option<&Path>) {
    let path = path.map_or_else(String::new, |p| format!(" {}", p.display()));
    match outcome {
        Outcome::Unchanged => info!("config{path} reloaded: nothing changed"),
        Outcome::Rejected(e) => warn!("config reload refused, the running config is kept: {e}"),
        Outcome::Applied { diff, .. } => {
            let live: Vec<&str> = diff.live.iter().map(LiveChange::key).collect();
            if live.is_empty() {
                info!("config{path} reloaded: nothing applied live");
            } else {
                info!("config{path} reloaded: applied {}", live.join(", "));
            }
            for restart in &diff.restart {
                warn!("config reload: {restart}");
            }
            for warning in &diff.warnings {
                warn!("config reload: {warning}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::capture::Clock;
    use crate::config::parse;
    use crate::enrich::{HostInfo, ProcessResources, Resource};
    use crate::pipeline::PipelineOptions;
    use crate::span::SpanOptions;
    use crate::span::model::Span;
    use crate::stats::Stats;

    fn config(text: &str) -> Config {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn keys(diff: &Diff) -> (Vec<&str>, Vec<String>) {
        (
            diff.live.iter().map(LiveChange::key).collect(),
            diff.restart.iter().map(ToString::to_string).collect(),
        )
    }

    #[test]
    fn same_config_is_no_change() {
        let text = "capture:\n  bytes: 512\nselect:\n  exclude:\n    - systemd_unit: ssh*\n";
        assert!(diff(&config(text), &config(text), None).is_empty());
        assert!(diff(&Config::default(), &config(""), None).is_empty());
    }

    /// Each section goes live or to a restart, with its keys named and
    /// the running value said.
    /// Tenant routes change live; the default route needs a restart.
    #[test]
    fn tenant_routes_are_live() {
        let old = config("export:\n  tenants:\n    acme:\n      endpoint: http://127.0.0.1:4318\n");
        let routes =
            config("export:\n  tenants:\n    globex:\n      endpoint: http://127.0.0.1:4319\n");
        assert_eq!(
            keys(&diff(&old, &routes, None)),
            (vec!["export.tenants"], vec![])
        );
        let default = config(
            "export:\n  otlp:\n    endpoint: http://127.0.0.1:4317\n  tenants:\n    acme:\n      endpoint: http://127.0.0.1:4318\n",
        );
        assert_eq!(
            keys(&diff(&old, &default, None)),
            (
                vec![],
                vec!["export needs a restart; kept the running default route".to_owned()]
            )
        );
        let d = diff(&old, &routes, None);
        let mut running = old.clone();
        for change in &d.live {
            change.write(&mut running);
        }
        assert_eq!(running.export, routes.export);
    }

    #[test]
    fn sections_live_or_restart() {
        let old = config("capture:\n  ring_buffer_bytes: 16777216\n");
        let new = config(
            "\
capture:
  bytes: 512
  max_buffered_bytes: 4096
  poll_interval_ms: 20
http:
  capture_query: true
db:
  sanitize_query: false
export:
  queue_size: 100
  tenants:
    acme:
      endpoint: http://127.0.0.1:4318
metrics:
  max_series_per_metric: 10
  service_graph:
    wait_ms: 10
  prometheus:
    listen: 9464
sample:
  slow_ms: 5
log:
  level: debug
  stats_interval_secs: 7
kubernetes:
  cluster_name: prod
containers:
  docker_root: /srv/docker
health:
  listen: 127.0.0.1:9465
select:
  exclude:
    - systemd_unit: ssh*
protocols:
  redis: false
tenants:
  rules:
    - env: TENANT_ID
",
        );
        let d = diff(&old, &new, None);
        let (live, restart) = keys(&d);
        assert_eq!(
            live,
            [
                "capture.max_buffered_bytes",
                "capture.poll_interval_ms",
                "http",
                "db",
                "export.tenants",
                "sample",
                "log.stats_interval_secs",
                "protocols",
                "select",
                "tenants",
            ]
        );
        assert_eq!(
            restart,
            [
                "capture.bytes needs a restart; kept 4096",
                "capture.ring_buffer_bytes needs a restart; kept 16777216",
                "export needs a restart; kept the running default route",
                "metrics.max_series_per_metric needs a restart; kept 2000",
                "metrics.service_graph needs a restart; kept ServiceGraphConfig { enabled: true, wait_ms: 2000, max_pending: 4096 }",
                "metrics.prometheus.listen needs a restart; kept None",
                "log.level needs a restart; kept \"info\"",
                "kubernetes.cluster_name needs a restart; kept None",
                "containers.docker_root needs a restart; kept \"/var/lib/docker\"",
                "health.listen needs a restart; kept None",
            ]
        );
        assert!(d.warnings.is_empty());
        assert!(
            d.live
                .contains(&LiveChange::Protocols(new.protocols.clone()))
        );
    }

    /// Rules that read a pod label or annotation the metadata watcher
    /// does not keep need a restart; rules over what it keeps go live.
    #[test]
    fn rules_over_unwatched_keys_need_a_restart() {
        let old = config(
            "select:\n  exclude:\n    - labels: team=a\ntenants:\n  rules:\n    - pod_annotation: org\n",
        );
        let watched = WatchedKeys::of(&old.select, &Tenants::new(old.tenants.clone()));
        let kept_keys = config(
            "select:\n  include:\n    - labels: team in (b, c)\ntenants:\n  rules:\n    - pod_annotation: org\n      tenant: x\n",
        );
        let d = diff(&old, &kept_keys, Some(&watched));
        assert_eq!(keys(&d).0, ["select", "tenants"]);
        assert!(d.restart.is_empty());

        let new_keys = config(
            "select:\n  exclude:\n    - labels: tier=batch\ntenants:\n  rules:\n    - pod_label: owner\n",
        );
        let d = diff(&old, &new_keys, Some(&watched));
        assert!(d.live.is_empty(), "{d:?}");
        assert_eq!(
            keys(&d).1,
            [
                "select needs a restart; kept the running rules (a rule reads pod label tier, \
                 which the Kubernetes metadata watcher was not started to keep)",
                "tenants needs a restart; kept the running rules (a rule reads pod label owner, \
                 which the Kubernetes metadata watcher was not started to keep)",
            ]
        );
        // Without Kubernetes metadata a pod rule matches nothing: said,
        // and applied.
        // One set of label keys is kept for both sections.
        let team = config("tenants:\n  rules:\n    - pod_label: team\n");
        assert_eq!(
            keys(&diff(&old, &team, Some(&watched))).0,
            ["select", "tenants"]
        );
        let d = diff(&old, &new_keys, None);
        assert_eq!(keys(&d).0, ["select", "tenants"]);
        assert_eq!(d.warnings.len(), 1);
        assert!(d.warnings[0].contains("kubernetes metadata is off"));
    }

    struct Collect(Vec<Span>);
    impl SpanSink for Collect {
        fn send(&mut self, _resource: Arc<Resource>, span: Span) {
            self.0.push(span);
        }
    }

    fn pipeline(config: &Config) -> Pipeline<Collect> {
        let mut options = PipelineOptions::new(
            16,
            Limits {
                max_buffered_bytes: config.capture.max_buffered_bytes as usize,
            },
            SpanOptions::default(),
        );
        options.protocols = config.protocols.enabled();
        Pipeline::new(
            options,
            Clock::with_offset(0),
            ProcessResources::new(HostInfo {
                host_name: "test".into(),
                host_id: None,
            }),
            Collect(Vec::new()),
            Arc::new(Stats::default()),
        )
    }

    /// A throwaway config file.
    struct File(PathBuf);

    impl File {
        fn new(tag: &str, text: &str) -> File {
            let dir =
                std::env::temp_dir().join(format!("sonde-reload-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let file = File(dir);
            std::fs::write(file.path(), text).unwrap();
            file
        }

        fn path(&self) -> PathBuf {
            self.0.join("sonde.yaml")
        }

        /// Replaces the file as a program writing a new one and renaming
        /// it over the old does.
        fn replace(&self, text: &str) {
            let next = self.0.join("sonde.yaml.new");
            std::fs::write(&next, text).unwrap();
            std::fs::rename(&next, self.path()).unwrap();
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A file with an error is refused with its key and line, and
    /// nothing changes: not the running config, not the pipeline.
    #[test]
    fn a_broken_file_changes_nothing() {
        let text = "protocols:\n  redis: false\n";
        let file = File::new("broken", text);
        let mut reloader = Reloader::new(Some(ConfigFile::new(&file.path())), config(text), None);
        let mut p = pipeline(reloader.running());
        let protocols_before = p.options().protocols.len();

        file.replace(
            "protocols:\n  http1: false\nsample:\n  slow_ms: 5\ncapture:\n  bytes: 20000\n",
        );
        let outcome = reloader.reload(&mut p);
        let Outcome::Rejected(err) = &outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(err.key(), Some("capture.bytes"));
        assert_eq!(err.line(), Some(6));
        assert!(
            err.to_string().contains("sonde.yaml line 6: capture.bytes"),
            "{err}"
        );
        assert_eq!(reloader.running(), &config(text));
        assert_eq!(p.options().protocols.len(), protocols_before);
        assert!(
            !reloader.file_changed(),
            "a refused file is not read again until it changes"
        );

        file.replace("protocols:\n  http1: false\n  redis: false\nbogus: 1\n");
        let Outcome::Rejected(err) = reloader.reload(&mut p) else {
            panic!("an unknown key is refused");
        };
        assert_eq!((err.key(), err.line()), (Some("bogus"), Some(4)));
        assert_eq!(reloader.running(), &config(text));
    }

    /// A good file's live changes reach the pipeline and the running
    /// config; what needs a restart keeps its running value.
    #[test]
    fn a_good_file_applies_live_and_keeps_the_rest() {
        let text = "capture:\n  bytes: 1024\n";
        let file = File::new("good", text);
        let mut reloader = Reloader::new(Some(ConfigFile::new(&file.path())), config(text), None);
        let mut p = pipeline(reloader.running());
        assert!(matches!(reloader.reload(&mut p), Outcome::Unchanged));

        let new = "capture:\n  bytes: 64\n  max_buffered_bytes: 512\nprotocols:\n  http1: false\nhttp:\n  capture_query: true\nlog:\n  stats_interval_secs: 3\n";
        file.replace(new);
        let Outcome::Applied {
            diff,
            kernel_prefixes,
        } = reloader.reload(&mut p)
        else {
            panic!("applied");
        };
        assert_eq!(keys(&diff).1, ["capture.bytes needs a restart; kept 1024"]);
        let names: Vec<&str> = p.options().protocols.iter().map(|p| p.name).collect();
        assert!(
            !names.contains(&"http1") && names.contains(&"redis"),
            "{names:?}"
        );
        assert_eq!(
            kernel_prefixes,
            Some(prefilter::slots(&config(new).protocols.enabled()))
        );
        assert!(p.options().spans.http.capture_query);
        assert_eq!(p.options().limits.max_buffered_bytes, 512);
        let running = reloader.running();
        assert_eq!(running.capture.bytes, 1024, "kept until a restart");
        assert_eq!(running.capture.max_buffered_bytes, 512);
        assert_eq!(running.log.stats_interval_secs, 3);
        assert!(!running.protocols.is_on("http1"));

        // Read again: the change that needs a restart is said again, and
        // nothing else is applied.
        let Outcome::Applied {
            diff,
            kernel_prefixes,
        } = reloader.reload(&mut p)
        else {
            panic!("the restart is still pending");
        };
        assert!(diff.live.is_empty());
        assert_eq!(diff.restart.len(), 1);
        assert_eq!(kernel_prefixes, None);
    }

    /// The file is seen to change when rewritten in place, renamed over,
    /// or swapped through a symlink as a ConfigMap volume does; not when
    /// only touched.
    #[test]
    fn file_changes_are_noticed() {
        let file = File::new("watch", "log:\n  level: info\n");
        let mut watched = ConfigFile::new(&file.path());
        assert!(!watched.changed());

        std::fs::write(file.path(), "log:\n  level: warn\n").unwrap();
        assert!(watched.changed(), "rewritten in place");
        assert!(!watched.changed(), "once");
        file.replace("log:\n  level: debug\n");
        assert!(watched.changed(), "renamed over");
        let same = std::fs::read(file.path()).unwrap();
        std::fs::write(file.path(), same).unwrap();
        assert!(!watched.changed(), "touched: same content");

        // sonde.yaml -> ..data/sonde.yaml, ..data -> ..v1: the kubelet's layout.
        let dir = &file.0;
        let mount = dir.join("mount");
        std::fs::create_dir_all(mount.join("..v1")).unwrap();
        std::fs::write(mount.join("..v1/sonde.yaml"), "log:\n  level: info\n").unwrap();
        std::os::unix::fs::symlink("..v1", mount.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/sonde.yaml", mount.join("sonde.yaml")).unwrap();
        let mut mounted = ConfigFile::new(&mount.join("sonde.yaml"));
        assert!(!mounted.changed());
        std::fs::create_dir_all(mount.join("..v2")).unwrap();
        std::fs::write(mount.join("..v2/sonde.yaml"), "log:\n  level: warn\n").unwrap();
        std::os::unix::fs::symlink("..v2", mount.join("..data_tmp")).unwrap();
        std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
        assert!(mounted.changed(), "the ..data link swapped");
        assert!(!mounted.changed());

        // Gone, then back: a change each time (the reload reports the
        // missing file and keeps the running config).
        std::fs::remove_file(file.path()).unwrap();
        assert!(watched.changed());
        std::fs::write(file.path(), "log:\n  level: info\n").unwrap();
        assert!(watched.changed());
    }
}
