//! The metrics stage: RED histograms and the service graph, from every span
//! before any sampling.
//!
//! - [`store`]: series keyed by (process resource, metric, attribute set),
//!   with a cap per metric and an overflow series beyond it; exemplars.
//! - [`graph`]: pairs CLIENT and SERVER spans of one connection into
//!   service graph edges.
//! - [`hist`]: explicit and exponential histograms.
//! - [`catalog`]: every metric, its unit, attributes and Prometheus name.
//! - [`selfstats`]: the agent's own health.
//!
//! The pipeline thread records spans through [`Metrics::recorder`] (one
//! lock per batch of spans); the exporters (in [`crate::export`]) read the
//! store from the runtime's tasks with [`Metrics::collect`] and
//! [`Metrics::snapshot`]. Nothing here talks to the outside.

pub mod attrs;
pub mod catalog;
pub mod graph;
pub mod hist;
pub mod selfstats;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{Histogram, MetricsConfig};
use crate::enrich::Resource;
use crate::stats::Stats;

pub use selfstats::agent_resource;
pub use store::{SeriesFilter, Snapshot, Store, StoreOptions, Temporality};

use catalog::CATALOG;
use graph::GraphOptions;
use hist::Bounds;
use store::HistogramKind;

/// How long a failed span's exemplar is kept against newer successful ones.
const EXEMPLAR_HOLD_NS: u64 = 10_000_000_000;

/// The store settings a configuration asks for.
pub fn store_options(c: &MetricsConfig) -> StoreOptions {
    let bounds = CATALOG
        .iter()
        .map(|d| {
            let values = c
                .buckets
                .get(d.name)
                .map(Vec::as_slice)
                .unwrap_or(if d.size {
                    &c.size_buckets
                } else {
                    &c.duration_buckets
                });
            Arc::new(Bounds::new(values, d.raw))
        })
        .collect();
    StoreOptions {
        max_series: c.max_series_per_metric.max(1) as usize,
        histogram: match c.histogram {
            Histogram::Exponential => HistogramKind::Exponential {
                max_size: c.exponential_max_size.max(2) as usize,
            },
            Histogram::Explicit => HistogramKind::Explicit,
        },
        bounds,
        exemplars: c.exemplars,
        exemplar_hold_ns: EXEMPLAR_HOLD_NS,
        graph: c.service_graph.enabled.then_some(GraphOptions {
            wait_ns: c.service_graph.wait_ms.saturating_mul(1_000_000),
            max_pending: c.service_graph.max_pending.max(1) as usize,
        }),
        idle_ns: c.idle_series_secs.saturating_mul(1_000_000_000),
    }
}

/// Wall-clock time, Unix ns.
pub fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The metrics stage, shared by the pipeline thread (which records) and
/// the exporters (which read).
pub struct Metrics {
    store: Mutex<Store>,
    stats: Arc<Stats>,
    connections: AtomicU64,
    parse_errors: Mutex<Vec<(&'static str, u64)>>,
    export_failures: AtomicU64,
    started_ns: u64,
    delta: Mutex<selfstats::DeltaState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// A stage with `options`; `agent` is the agent's own resource (its
    /// health metrics and the service graph are reported under it).
    pub fn new(options: StoreOptions, agent: Arc<Resource>, stats: Arc<Stats>) -> Arc<Metrics> {
        Arc::new(Metrics {
            store: Mutex::new(Store::new(options, agent)),
            stats,
            connections: AtomicU64::new(0),
            parse_errors: Mutex::new(Vec::new()),
            export_failures: AtomicU64::new(0),
            started_ns: unix_now_ns(),
            delta: Mutex::new(selfstats::DeltaState::default()),
        })
    }

    /// The stage a configuration asks for; `None` when `metrics.enabled` is off.
    pub fn from_config(
        c: &MetricsConfig,
        agent: Arc<Resource>,
        stats: Arc<Stats>,
    ) -> Option<Arc<Metrics>> {
        c.enabled
            .then(|| Metrics::new(store_options(c), agent, stats))
    }

    /// The agent's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The store, locked, to record spans into. Hold it for a batch of
    /// spans, not longer: exporters wait for it.
    pub fn recorder(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Connections the pipeline tracks now.
    pub fn set_connections(&self, n: u64) {
        self.connections.store(n, Ordering::Relaxed);
    }

    /// A parser of `protocol` lost sync `n` times.
    pub fn count_parse_errors(&self, protocol: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        let mut list = lock(&self.parse_errors);
        match list.iter_mut().find(|(p, _)| *p == protocol) {
            Some((_, c)) => *c += n,
            None => list.push((protocol, n)),
        }
    }

    /// An OTLP metric export request failed.
    pub fn count_export_failure(&self) {
        self.export_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Turns every waiting service-graph half into an edge (at shutdown,
    /// before the last export).
    pub fn finish(&self) {
        lock(&self.store).drain_graph();
    }

    /// Starts reading every series: service-graph halves that waited too
    /// long become edges first, and idle series are forgotten (unless
    /// another reading is under way, which must see series stay where they
    /// are). The store is then read a part at a time with
    /// [`Collection::next_part`], so that the pipeline is never held up for
    /// long and a copy of everything never sits in memory at once.
    pub fn collect(&self, temporality: Temporality) -> Collection<'_> {
        self.collect_of(temporality, SeriesFilter::All)
    }

    /// [`Metrics::collect`] of the series `filter` keeps; the agent's
    /// health metrics are of no tenant.
    pub fn collect_of(&self, temporality: Temporality, filter: SeriesFilter) -> Collection<'_> {
        let now = unix_now_ns();
        {
            let mut store = lock(&self.store);
            store.expire(now);
            if store.readers == 0 {
                store.evict_idle(now);
            }
            store.readers += 1;
        }
        Collection {
            metrics: self,
            temporality,
            now,
            metric: 0,
            from: 0,
            own_done: !filter.keeps(None),
            filter,
        }
    }

    /// Every series and the agent's health, as of now, in one snapshot
    /// (see [`Metrics::collect`]).
    pub fn snapshot(&self, temporality: Temporality) -> Snapshot {
        let mut c = self.collect(temporality);
        let mut parts = vec![store::ResourceSnap {
            resource: lock(&self.store).agent_resource(),
            metrics: Vec::new(),
        }];
        while let Some(part) = c.next_part(usize::MAX) {
            parts.extend(part.resources);
        }
        Snapshot {
            time_ns: c.now,
            temporality,
            resources: store::merge_resources(parts),
        }
    }

    /// The agent's health metrics now.
    fn own_metrics(&self, temporality: Temporality, now: u64) -> Vec<store::MetricSnap> {
        let (series, graph) = {
            let store = lock(&self.store);
            (store.series_counts(), store.graph_counts())
        };
        let inputs = selfstats::Inputs {
            stats: self.stats.snapshot(),
            connections: self.connections.load(Ordering::Relaxed),
            parse_errors: lock(&self.parse_errors).clone(),
            series,
            metric_export_failures: self.export_failures.load(Ordering::Relaxed),
            routes: self.stats.routes.snapshot(),
            graph: graph.map(|(dropped, client, server, _)| (dropped, client, server)),
            process: selfstats::ProcessUsage::read(),
        };
        let mut delta = lock(&self.delta);
        selfstats::build(&inputs, temporality, self.started_ns, now, &mut delta)
    }
}

/// One reading of the store, part by part (see [`Metrics::collect`]).
pub struct Collection<'m> {
    metrics: &'m Metrics,
    temporality: Temporality,
    /// The time every point of this reading carries.
    pub now: u64,
    metric: usize,
    from: usize,
    own_done: bool,
    filter: SeriesFilter,
}

impl Collection<'_> {
    /// The next part: at most `max` series of one metric, grouped by
    /// resource; the agent's health metrics come last. `None` at the end.
    pub fn next_part(&mut self, max: usize) -> Option<Snapshot> {
        loop {
            let mut store = lock(&self.metrics.store);
            if self.metric < store.metric_count() {
                let (resources, next) = store.collect_part_of(
                    &self.filter,
                    self.metric,
                    self.from,
                    max,
                    self.now,
                    self.temporality,
                );
                match next {
                    Some(n) => self.from = n,
                    None => {
                        self.metric += 1;
                        self.from = 0;
                    }
                }
                if resources.is_empty() {
                    continue;
                }
                return Some(Snapshot {
                    time_ns: self.now,
                    temporality: self.temporality,
                    resources,
                });
            }
            if self.own_done {
                return None;
            }
            self.own_done = true;
            let agent = store.agent_resource();
            drop(store);
            let metrics = self.metrics.own_metrics(self.temporality, self.now);
            return Some(Snapshot {
                time_ns: self.now,
                temporality: self.temporality,
                resources: vec![store::ResourceSnap {
                    resource: agent,
                    metrics,
                }],
            });
        }
    }

    /// The processes that have series this reading takes now (the agent first).
    pub fn resources(&self) -> Vec<Arc<Resource>> {
        lock(&self.metrics.store).resources_of(&self.filter)
    }
}

impl Drop for Collection<'_> {
    fn drop(&mut self) {
        let mut store = lock(&self.metrics.store);
        store.readers = store.readers.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MetricsConfig;
    use crate::enrich::tenant::ProcessTenant;
    use crate::span::model::AttrValue;

    fn resource(service: &str, tenant: Option<&str>) -> Arc<Resource> {
        Arc::new(Resource {
            service_name: service.into(),
            attributes: vec![("service.name".into(), service.into())],
            tenant: ProcessTenant {
                rank: 0,
                tenant: tenant.map(Arc::from),
                ..ProcessTenant::default()
            },
        })
    }

    /// Records one server span of `r`, ending now.
    fn record(metrics: &Metrics, r: &Arc<Resource>) {
        let end = unix_now_ns();
        let span = crate::export::testing::span(
            "GET /",
            1,
            (end - 1_000_000, end),
            vec![
                ("http.request.method", "GET".into()),
                ("http.response.status_code", AttrValue::Int(200)),
            ],
        );
        metrics
            .recorder()
            .record(r, &span, &crate::capture::Endpoints::UNKNOWN);
    }

    /// (services with series, whether the agent's own series are in: its
    /// health and the service graph) of a reading.
    fn read(metrics: &Metrics, t: Temporality, filter: SeriesFilter) -> (Vec<String>, bool) {
        let mut c = metrics.collect_of(t, filter);
        let mut services = Vec::new();
        let mut own = false;
        while let Some(part) = c.next_part(100) {
            for r in part.resources {
                if r.resource.service_name == "sonde" {
                    own = true;
                } else if !services.contains(&r.resource.service_name) {
                    services.push(r.resource.service_name.clone());
                }
            }
        }
        (services, own)
    }

    #[test]
    fn readings_by_tenant() {
        let metrics = Metrics::new(
            store_options(&MetricsConfig::default()),
            resource("sonde", None),
            Arc::new(Stats::default()),
        );
        let acme = resource("shop-acme", Some("acme"));
        let globex = resource("shop-globex", Some("globex"));
        let nobody = resource("shop-none", None);
        for r in [&acme, &globex, &nobody] {
            record(&metrics, r);
        }
        let acme_only = || SeriesFilter::Tenant(Arc::from("acme"));
        let rest = || SeriesFilter::Except(Arc::new(["acme".to_string()].into()));
        let cumulative = Temporality::Cumulative;
        // acme's reading has the service graph edges of its process (on the
        // agent's resource), not the agent's health.
        assert_eq!(
            read(&metrics, cumulative, acme_only()),
            (vec!["shop-acme".to_string()], true)
        );
        assert_eq!(
            read(&metrics, cumulative, rest()),
            (
                vec!["shop-globex".to_string(), "shop-none".to_string()],
                true
            )
        );
        assert_eq!(read(&metrics, cumulative, SeriesFilter::All).0.len(), 3);
        let names = |filter| {
            metrics
                .collect_of(cumulative, filter)
                .resources()
                .iter()
                .map(|r| r.service_name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(acme_only()), ["sonde", "shop-acme"]);
        assert_eq!(names(rest()), ["sonde", "shop-globex", "shop-none"]);

        // A delta reading of one route leaves the others' deltas alone.
        let delta = Temporality::Delta;
        assert_eq!(read(&metrics, delta, acme_only()).0, ["shop-acme"]);
        assert!(read(&metrics, delta, acme_only()).0.is_empty());
        assert_eq!(
            read(&metrics, delta, rest()).0,
            ["shop-globex", "shop-none"]
        );
        record(&metrics, &acme);
        assert_eq!(read(&metrics, delta, acme_only()).0, ["shop-acme"]);
        assert!(read(&metrics, delta, rest()).0.is_empty());
    }

    #[test]
    fn options_follow_the_config() {
        let mut c = MetricsConfig::default();
        c.buckets
            .insert("http.server.request.body.size".into(), vec![1.0, 2.0]);
        c.histogram = Histogram::Exponential;
        c.service_graph.enabled = false;
        let o = store_options(&c);
        let b = |id: catalog::MetricId| o.bounds[id as usize].values().to_vec();
        assert_eq!(b(catalog::MetricId::HttpServerDuration), c.duration_buckets);
        assert_eq!(b(catalog::MetricId::HttpServerRequestSize), vec![1.0, 2.0]);
        assert_eq!(b(catalog::MetricId::HttpClientResponseSize), c.size_buckets);
        assert_eq!(o.histogram, HistogramKind::Exponential { max_size: 160 });
        assert!(o.graph.is_none());
        assert_eq!(o.max_series, 2000);
    }
}
