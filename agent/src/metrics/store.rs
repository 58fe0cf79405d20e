//! The metric store: every series, keyed by (process resource, metric,
//! attribute set), updated from spans and read as snapshots.
//!
//! Cost per span: one pointer lookup for the resource, one attribute pick
//! and hash, one hash lookup per metric touched, a bucket search. Memory
//! grows only with new series, and each metric is capped at
//! `max_series` attribute sets: the ones beyond are folded into one series
//! per resource marked `otel.metric.overflow = true` (what the OpenTelemetry
//! SDK does) and counted.
//!
//! Resources are told apart by (`service.namespace`, `service.name`,
//! `service.instance.id`), the identity both OTLP and Prometheus use; the
//! enrich stage may hand out a new `Arc` for the same process, which then
//! keeps its series.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use super::attrs::{
    AttrSet, FastBuild, IdentityBuild, Key, OwnedAttrs, OwnedVal, Picked, Text, Val,
};
use super::catalog::{
    CATALOG, DB_CLIENT_KEYS, DB_SERVER_KEYS, Family, HTTP_CLIENT_KEYS, HTTP_SERVER_KEYS,
    Instrument, MetricDesc, MetricId, RPC_CLIENT_KEYS, RPC_SERVER_KEYS,
};
use super::graph::{Edge, Graph, GraphOptions, Half, Other, Side};
use super::hist::{Bounds, Explicit, Exponential, RawUnit};
use crate::capture::Endpoints;
use crate::enrich::Resource;
use crate::enrich::tenant::tenant_of;
use crate::span::model::{AttrValue, Span, SpanKind, SpanStatus};

/// How histograms aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistogramKind {
    Explicit,
    /// Base-2 exponential with at most this many buckets.
    Exponential {
        max_size: usize,
    },
}

/// Store settings (from `metrics:` in the configuration).
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Attribute sets kept per metric before overflow.
    pub max_series: usize,
    pub histogram: HistogramKind,
    /// Explicit boundaries per metric, indexed by [`MetricId`].
    pub bounds: Vec<Arc<Bounds>>,
    pub exemplars: bool,
    /// How long an exemplar from a failed span is kept against newer
    /// successful ones, in ns.
    pub exemplar_hold_ns: u64,
    /// `None`: no service graph.
    pub graph: Option<GraphOptions>,
    /// Series not updated for this long are forgotten (0: never), in ns.
    pub idle_ns: u64,
}

/// One exemplar: a span that fell in a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exemplar {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The measurement, raw.
    pub raw: u64,
    /// Span end, Unix ns.
    pub time_ns: u64,
    pub failed: bool,
}

impl Exemplar {
    /// Whether `new` should replace `old` in a bucket: the newest wins,
    /// except that a failed span's exemplar is kept for `hold_ns` against
    /// successful ones (errors are what users click through to, and what
    /// the sampler keeps).
    pub fn replaces(new: &Exemplar, old: &Exemplar, hold_ns: u64) -> bool {
        new.failed || !old.failed || new.time_ns >= old.time_ns.saturating_add(hold_ns)
    }
}

/// Exemplar slot of a value in an exponential histogram: one per decade
/// of the raw value (its buckets change with the scale).
fn decade(raw: u64) -> usize {
    raw.max(1).ilog10() as usize
}

/// A series' aggregation.
#[derive(Clone, Debug, PartialEq)]
pub enum Agg {
    Explicit(Explicit),
    /// Boxed: it is large and rarely chosen.
    Exponential(Box<Exponential>),
    Count(u64),
}

impl Agg {
    fn count(&self) -> u64 {
        match self {
            Agg::Explicit(h) => h.count,
            Agg::Exponential(h) => h.count,
            Agg::Count(c) => *c,
        }
    }

    fn since(&self, earlier: &Agg) -> Agg {
        match (self, earlier) {
            (Agg::Explicit(a), Agg::Explicit(b)) => Agg::Explicit(a.since(b)),
            (Agg::Exponential(a), Agg::Exponential(b)) => Agg::Exponential(Box::new(a.since(b))),
            (Agg::Count(a), Agg::Count(b)) => Agg::Count(a.saturating_sub(*b)),
            (a, _) => a.clone(),
        }
    }
}

const NONE: u32 = u32::MAX;

/// Which series a measurement goes to.
#[derive(Clone, Copy)]
struct Target<'a, 'b> {
    slot: u32,
    attrs: &'a AttrSet<'b>,
    hash: u64,
    /// The stored form of `attrs`, when another series already has it.
    stored: Option<&'a OwnedAttrs>,
}

struct Series {
    slot: u32,
    attrs: OwnedAttrs,
    /// Next series with the same hash.
    next: u32,
    hash: u64,
    overflow: bool,
    start_ns: u64,
    last_ns: u64,
    agg: Agg,
    /// (bucket, exemplar), only for buckets that got one; most series
    /// fill a few buckets, so this stays small.
    exemplars: Vec<(u16, Exemplar)>,
    /// For an HTTP duration series: its request and response body size
    /// series (same process and attributes), so that a span finds them
    /// without hashing its attributes again. `NONE` until known.
    sizes: [u32; 2],
    /// Delta export: the aggregation as last exported, and when, by the
    /// reading of each end of a service graph edge (a series of one
    /// tenant is read by one route; an edge between two tenants' processes
    /// by each of their routes, each with its own delta; see
    /// [`SeriesFilter::end_of`]).
    exported: [Option<(Box<Agg>, u64)>; 2],
}

struct MetricState {
    desc: &'static MetricDesc,
    bounds: Arc<Bounds>,
    series: Vec<Series>,
    /// hash → first series with it.
    index: HashMap<u64, u32, IdentityBuild>,
    /// Series that are not overflow series.
    distinct: usize,
    /// Measurements folded into overflow series.
    folded: u64,
}

impl MetricState {
    fn find(&self, slot: u32, attrs: &AttrSet<'_>, hash: u64) -> Option<usize> {
        let mut i = *self.index.get(&hash)?;
        while i != NONE {
            let s = &self.series[i as usize];
            if s.slot == slot && attrs.matches(&s.attrs) {
                return Some(i as usize);
            }
            i = s.next;
        }
        None
    }

    /// Adds one raw measurement to the series (`slot`, `attrs`) of `metric`.
    /// Returns the series' index.
    fn observe(
        &mut self,
        options: &StoreOptions,
        now: u64,
        target: &Target<'_, '_>,
        raw: u64,
        exemplar: Option<Exemplar>,
    ) -> usize {
        let i = self.series_index(options, now, target);
        self.add_at(i, options, now, raw, exemplar);
        i
    }

    /// Adds one raw measurement to series `i`.
    fn add_at(
        &mut self,
        i: usize,
        options: &StoreOptions,
        now: u64,
        raw: u64,
        exemplar: Option<Exemplar>,
    ) {
        let exemplars_on = options.exemplars;
        let hold = options.exemplar_hold_ns;
        let state = self;
        let unit = state.desc.raw;
        let bounds = &state.bounds;
        let s = &mut state.series[i];
        s.last_ns = now;
        let bucket = match &mut s.agg {
            Agg::Explicit(h) => h.record(bounds, raw),
            Agg::Exponential(h) => {
                h.record(raw, unit.to_unit(raw));
                decade(raw)
            }
            Agg::Count(c) => {
                *c += raw;
                return;
            }
        };
        if !exemplars_on {
            return;
        }
        let Some(new) = exemplar else {
            return;
        };
        let bucket = bucket as u16;
        match s.exemplars.iter_mut().find(|(b, _)| *b == bucket) {
            Some((_, old)) => {
                if Exemplar::replaces(&new, old, hold) {
                    *old = new;
                }
            }
            None => {
                if s.exemplars.capacity() == s.exemplars.len() {
                    // Grow by two, not by doubling: few buckets fill.
                    s.exemplars.reserve_exact(2);
                }
                s.exemplars.push((bucket, new));
            }
        }
    }

    /// The series for (`slot`, `attrs`) of `metric`, created if new; the
    /// overflow series when the metric is full.
    fn series_index(&mut self, options: &StoreOptions, now: u64, target: &Target<'_, '_>) -> usize {
        let (slot, attrs, hash) = (target.slot, target.attrs, target.hash);
        let max_series = options.max_series;
        let histogram = options.histogram;
        let state = self;
        if let Some(i) = state.find(slot, attrs, hash) {
            return i;
        }
        let mut overflow_attrs = AttrSet::default();
        let (attrs, hash, overflow) = if state.distinct >= max_series {
            state.folded += 1;
            overflow_attrs.push(Key::Overflow, Val::Bool(true));
            let h = overflow_attrs.hash(slot);
            if let Some(i) = state.find(slot, &overflow_attrs, h) {
                return i;
            }
            (&overflow_attrs, h, true)
        } else {
            (attrs, hash, false)
        };
        let agg = match (state.desc.instrument, histogram) {
            (Instrument::Histogram, HistogramKind::Explicit) => {
                Agg::Explicit(Explicit::new(&state.bounds))
            }
            (Instrument::Histogram, HistogramKind::Exponential { max_size }) => {
                Agg::Exponential(Box::new(Exponential::new(max_size)))
            }
            _ => Agg::Count(0),
        };
        let i = state.series.len();
        let next = state.index.insert(hash, i as u32).unwrap_or(NONE);
        state.series.push(Series {
            slot,
            attrs: match target.stored {
                Some(stored) if !overflow => Arc::clone(stored),
                _ => attrs.to_stored(),
            },
            next,
            hash,
            overflow,
            start_ns: now,
            last_ns: now,
            agg,
            exemplars: Vec::new(),
            exported: [None, None],
            sizes: [NONE; 2],
        });
        if !overflow {
            state.distinct += 1;
        }
        i
    }

    fn rebuild_index(&mut self) {
        self.index.clear();
        self.distinct = 0;
        for i in 0..self.series.len() {
            let s = &mut self.series[i];
            if !s.overflow {
                self.distinct += 1;
            }
            s.next = self.index.insert(s.hash, i as u32).unwrap_or(NONE);
        }
    }
}

/// (service.namespace, service.name, service.instance.id)
type SlotKey = (Option<Box<str>>, Box<str>, Option<Box<str>>);

fn slot_key(r: &Resource) -> SlotKey {
    let text = |k: &str| match r.attr(k) {
        Some(AttrValue::Str(s)) => Some(s.as_str().into()),
        Some(AttrValue::Int(i)) => Some(i.to_string().into()),
        _ => None,
    };
    (
        text("service.namespace"),
        r.service_name.as_str().into(),
        text("service.instance.id"),
    )
}

/// Resource slots; slot 0 is the agent's own.
struct Slots {
    list: Vec<Option<Arc<Resource>>>,
    keys: Vec<Option<SlotKey>>,
    free: Vec<u32>,
    by_ptr: HashMap<usize, (Arc<Resource>, u32), FastBuild>,
    /// The entry of `by_ptr` used last: spans come in runs from one process.
    last: Option<(usize, u32)>,
    by_key: HashMap<SlotKey, u32>,
}

/// Resource pointers remembered before the cache starts over.
const MAX_PTRS: usize = 16384;

impl Slots {
    fn new(agent: Arc<Resource>) -> Slots {
        let key = slot_key(&agent);
        let mut by_key = HashMap::new();
        by_key.insert(key.clone(), 0);
        Slots {
            list: vec![Some(agent)],
            keys: vec![Some(key)],
            free: Vec::new(),
            by_ptr: HashMap::default(),
            last: None,
            by_key,
        }
    }

    #[inline]
    fn slot_of(&mut self, r: &Arc<Resource>) -> u32 {
        let ptr = Arc::as_ptr(r) as usize;
        // `by_ptr` holds the resource, so the pointer names it while cached.
        if let Some((last, id)) = self.last
            && last == ptr
        {
            return id;
        }
        if let Some((_, id)) = self.by_ptr.get(&ptr) {
            self.last = Some((ptr, *id));
            return *id;
        }
        self.slot_of_slow(r, ptr)
    }

    fn slot_of_slow(&mut self, r: &Arc<Resource>, ptr: usize) -> u32 {
        let key = slot_key(r);
        let id = match self.by_key.get(&key) {
            Some(id) => *id,
            None => {
                let id = match self.free.pop() {
                    Some(id) => {
                        self.list[id as usize] = Some(Arc::clone(r));
                        self.keys[id as usize] = Some(key.clone());
                        id
                    }
                    None => {
                        self.list.push(Some(Arc::clone(r)));
                        self.keys.push(Some(key.clone()));
                        (self.list.len() - 1) as u32
                    }
                };
                self.by_key.insert(key, id);
                id
            }
        };
        if self.by_ptr.len() >= MAX_PTRS {
            self.by_ptr.clear();
        }
        self.by_ptr.insert(ptr, (Arc::clone(r), id));
        self.last = Some((ptr, id));
        id
    }

    fn resource(&self, id: u32) -> Option<&Arc<Resource>> {
        self.list.get(id as usize).and_then(Option::as_ref)
    }

    /// Forgets the slots no series uses (never the agent's); says whether
    /// it forgot any.
    fn retain(&mut self, used: &[bool]) -> bool {
        let mut forgot = false;
        for id in 1..self.list.len() {
            if self.list[id].is_some() && !used.get(id).copied().unwrap_or(false) {
                self.list[id] = None;
                if let Some(key) = self.keys[id].take() {
                    self.by_key.remove(&key);
                }
                self.free.push(id as u32);
                forgot = true;
            }
        }
        self.by_ptr.clear();
        self.last = None;
        forgot
    }
}

/// Which duration metric a span feeds, with which attributes, and its
/// body size metrics.
struct Class {
    duration: MetricId,
    keys: &'static [Key],
    sizes: Option<(MetricId, MetricId)>,
    family: Family,
}

impl Class {
    /// RPC first (gRPC spans also carry HTTP/2 attributes), then databases,
    /// then HTTP; other spans feed no request metric.
    fn of(kind: SpanKind, picked: &Picked<'_>) -> Option<Class> {
        let server = kind == SpanKind::Server;
        use MetricId::*;
        let c = if picked.has(Key::RpcSystem) {
            if server {
                (RpcServerDuration, RPC_SERVER_KEYS, None, Family::Rpc)
            } else {
                (RpcClientDuration, RPC_CLIENT_KEYS, None, Family::Rpc)
            }
        } else if picked.has(Key::DbSystem) {
            if server {
                (DbServerDuration, DB_SERVER_KEYS, None, Family::Db)
            } else {
                (DbClientDuration, DB_CLIENT_KEYS, None, Family::Db)
            }
        } else if picked.has(Key::Method) {
            if server {
                (
                    HttpServerDuration,
                    HTTP_SERVER_KEYS,
                    Some((HttpServerRequestSize, HttpServerResponseSize)),
                    Family::Http,
                )
            } else {
                (
                    HttpClientDuration,
                    HTTP_CLIENT_KEYS,
                    Some((HttpClientRequestSize, HttpClientResponseSize)),
                    Family::Http,
                )
            }
        } else {
            return None;
        };
        Some(Class {
            duration: c.0,
            keys: c.1,
            sizes: c.2,
            family: c.3,
        })
    }
}

/// Which series one reading takes, by their tenant: what routes metrics
/// to their tenant's route ([`crate::export`]) and serves a tenant's own
/// Prometheus page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SeriesFilter {
    #[default]
    All,
    /// The series of this tenant.
    Tenant(Arc<str>),
    /// The series of no tenant (the agent's own among them) or of a tenant
    /// not in the set: the default route's.
    Except(Arc<std::collections::BTreeSet<String>>),
}

impl SeriesFilter {
    pub fn is_all(&self) -> bool {
        matches!(self, SeriesFilter::All)
    }

    /// Whether a series of `tenant` is taken.
    pub fn keeps(&self, tenant: Option<&str>) -> bool {
        match self {
            SeriesFilter::All => true,
            SeriesFilter::Tenant(t) => tenant == Some(&**t),
            SeriesFilter::Except(routed) => tenant.is_none_or(|t| !routed.contains(t)),
        }
    }

    /// Whether the series with attributes `attrs` is taken: by its tenant,
    /// or, for a service graph edge, by the tenant of either end (each
    /// tenant sees who calls it and whom it calls).
    pub fn keeps_series(&self, attrs: &[(Key, OwnedVal)]) -> bool {
        self.end_of(attrs).is_some()
    }

    /// Which end of the series this filter takes it by, if it does: 0 for
    /// a series of one tenant and an edge's client end, 1 for an edge's
    /// server end alone. Two routes never take an edge by the same end
    /// (an end's tenant has one route), so each may keep its own delta.
    pub fn end_of(&self, attrs: &[(Key, OwnedVal)]) -> Option<usize> {
        if self.is_all() {
            return Some(0);
        }
        let of = |key: Key| {
            attrs
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.as_str())
        };
        if attrs.iter().any(|(k, _)| *k == Key::Client) {
            if self.keeps(of(Key::ClientTenant)) {
                Some(0)
            } else {
                self.keeps(of(Key::ServerTenant)).then_some(1)
            }
        } else {
            self.keeps(of(Key::Tenant)).then_some(0)
        }
    }
}

/// How a snapshot reports counts: the setting `metrics.otlp.temporality` names.
pub use crate::config::Temporality;

/// A copy of the store's data at one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub time_ns: u64,
    pub temporality: Temporality,
    pub resources: Vec<ResourceSnap>,
}

#[derive(Clone, Debug)]
pub struct ResourceSnap {
    pub resource: Arc<Resource>,
    pub metrics: Vec<MetricSnap>,
}

#[derive(Clone, Debug)]
pub struct MetricSnap {
    pub name: Cow<'static, str>,
    pub unit: &'static str,
    pub description: &'static str,
    pub instrument: Instrument,
    pub raw: RawUnit,
    pub points: Vec<Point>,
}

#[derive(Clone, Debug)]
pub struct Point {
    pub attrs: OwnedAttrs,
    pub start_ns: u64,
    pub value: PointValue,
    pub exemplars: Vec<Exemplar>,
}

#[derive(Clone, Debug)]
pub enum PointValue {
    Explicit {
        bounds: Arc<Bounds>,
        hist: Explicit,
    },
    Exponential(Exponential),
    /// A monotonic sum, in the metric's unit.
    Sum(f64),
    Gauge(f64),
}

/// The store. Not thread-safe on its own: [`super::Metrics`] wraps it in a mutex.
pub struct Store {
    /// Readings under way ([`super::Collection`]); idle series are not
    /// evicted while one is.
    pub readers: usize,
    options: StoreOptions,
    slots: Slots,
    metrics: Vec<MetricState>,
    graph: Option<Graph>,
    edges: Vec<Edge>,
    /// Where each known service-graph edge keeps its series (indexes into
    /// the four graph metrics, in [`Store::record_edge`]'s order).
    edge_series: HashMap<EdgeKey, [u32; 4], FastBuild>,
    /// The edge recorded last, with its series: a server's spans mostly
    /// come over the same edge, found this way without hashing its key.
    last_edge: Option<(EdgeKey, [u32; 4])>,
    tenants: TenantNumbers,
    now: u64,
}

/// Tenant ids by number. Service-graph halves and edge keys carry a
/// tenant's number, copied, compared and hashed as an integer; the text is
/// read only to label an edge's new series. Numbers are never reused, so
/// the table is bounded: a tenant past [`MAX_TENANTS`] gets none, and its
/// edges no tenant labels (said once in the log).
#[derive(Default)]
struct TenantNumbers {
    names: Vec<Text>,
    numbers: HashMap<Box<str>, u32, FastBuild>,
    /// The number given last: spans come in runs of one tenant.
    last: Option<u32>,
    refused: u64,
}

/// Tenants numbered before [`TenantNumbers`] refuses more.
const MAX_TENANTS: usize = 65_536;

impl TenantNumbers {
    fn number_of(&mut self, tenant: &str) -> Option<u32> {
        if let Some(n) = self.last
            && self.name(n) == Some(tenant)
        {
            return Some(n);
        }
        let n = match self.numbers.get(tenant) {
            Some(n) => *n,
            None if self.names.len() < MAX_TENANTS => {
                let n = self.names.len() as u32;
                self.names.push(Text::new(tenant));
                self.numbers.insert(tenant.into(), n);
                n
            }
            None => {
                if self.refused == 0 {
                    tracing::warn!(
                        "more than {MAX_TENANTS} tenants seen: the service graph edges of \
                         further tenants carry no tenant labels"
                    );
                }
                self.refused += 1;
                return None;
            }
        };
        self.last = Some(n);
        Some(n)
    }

    fn name(&self, n: u32) -> Option<&str> {
        self.names.get(n as usize).map(Text::as_str)
    }
}

/// Edges remembered before [`Store::edge_series`] starts over.
const MAX_EDGES: usize = 4096;

/// One side of a service-graph edge.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Party {
    /// A traced process.
    Slot(u32),
    /// A side the agent did not see.
    Other(Other),
}

impl std::hash::Hash for Party {
    /// One word for the common sides (a process, an IPv4 address); the
    /// derived hash would feed the hasher many small pieces.
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        use std::net::{IpAddr, SocketAddr};
        match self {
            Party::Slot(slot) => h.write_u64(u64::from(*slot)),
            Party::Other(Other::Ip(IpAddr::V4(a))) => {
                h.write_u64((1 << 60) | u64::from(u32::from(*a)));
            }
            Party::Other(Other::Addr(SocketAddr::V4(a))) => {
                h.write_u64(
                    (2 << 60) | (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port()),
                );
            }
            Party::Other(o) => {
                h.write_u64(3 << 60);
                o.hash(h);
            }
        }
    }
}

/// (client, server, connection type: an index into [`CONNECTION_TYPES`],
/// the tenant numbers of the client's and the server's spans)
type EdgeKey = (Party, Party, u8, [Option<u32>; 2]);

/// `connection_type` values: none for an edge seen from both sides.
const CONNECTION_TYPES: [&str; 3] = ["", "virtual_node", "database"];

impl Store {
    pub fn new(options: StoreOptions, agent: Arc<Resource>) -> Store {
        let metrics = CATALOG
            .iter()
            .map(|desc| MetricState {
                desc,
                bounds: options
                    .bounds
                    .get(desc.id as usize)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Bounds::new(&[], desc.raw))),
                series: Vec::new(),
                index: HashMap::default(),
                distinct: 0,
                folded: 0,
            })
            .collect();
        Store {
            readers: 0,
            graph: options.graph.map(Graph::new),
            options,
            slots: Slots::new(agent),
            metrics,
            edges: Vec::new(),
            edge_series: HashMap::default(),
            last_edge: None,
            tenants: TenantNumbers::default(),
            now: 0,
        }
    }

    /// The agent's own resource.
    pub fn agent_resource(&self) -> Arc<Resource> {
        self.slots.resource(0).cloned().unwrap_or_else(|| {
            Arc::new(Resource {
                service_name: "sonde".into(),
                attributes: Vec::new(),
                ..Default::default()
            })
        })
    }

    /// Aggregates one span of the process described by `resource`, on a
    /// connection with `endpoints` (as the span's process sees them).
    pub fn record(&mut self, resource: &Arc<Resource>, span: &Span, endpoints: &Endpoints) {
        self.record_sampled(resource, span, endpoints, true);
    }

    /// [`Store::record`] for a span the sampler may have dropped: it is
    /// counted all the same, but only an `exported` span may become an
    /// exemplar (one the trace backend never received leads nowhere).
    pub fn record_sampled(
        &mut self,
        resource: &Arc<Resource>,
        span: &Span,
        endpoints: &Endpoints,
        exported: bool,
    ) {
        self.now = self.now.max(span.end_unix_ns);
        let slot = self.slots.slot_of(resource);
        let duration = span.duration_ns();
        let failed = matches!(span.status, SpanStatus::Error { .. });
        let exemplar = exported.then_some(Exemplar {
            trace_id: span.trace_id,
            span_id: span.span_id,
            raw: duration,
            time_ns: span.end_unix_ns,
            failed,
        });
        let picked = Picked::of(span);
        let class = Class::of(span.kind, &picked);
        let tenant = tenant_of(resource, span);
        if let Some(class) = &class {
            let mut attrs = AttrSet::from_picked(&picked, class.keys);
            if let Some(t) = tenant {
                attrs.push(Key::Tenant, Val::Str(t));
            }
            let hash = attrs.hash(slot);
            let target = Target {
                slot,
                attrs: &attrs,
                hash,
                stored: None,
            };
            let i = self.observe(class.duration, &target, duration, exemplar);
            if let Some((request, response)) = class.sizes {
                for (k, metric, key) in [
                    (0, request, Key::RequestBodySize),
                    (1, response, Key::ResponseBodySize),
                ] {
                    let Some(AttrValue::Int(n)) = picked.get(key) else {
                        continue;
                    };
                    let raw = u64::try_from(*n).unwrap_or(0);
                    let ex = exemplar.map(|e| Exemplar { raw, ..e });
                    let (options, now) = (&self.options, self.now);
                    let Ok([duration_state, size_state]) = self
                        .metrics
                        .get_disjoint_mut([class.duration as usize, metric as usize])
                    else {
                        continue;
                    };
                    let s = &mut duration_state.series[i];
                    let linked = s.sizes[k];
                    let j = if linked != NONE && (linked as usize) < size_state.series.len() {
                        linked as usize
                    } else {
                        // A new size series shares the duration series'
                        // attributes instead of copying them (unless
                        // that one is an overflow series).
                        let stored = (!s.overflow).then(|| Arc::clone(&s.attrs));
                        let target = Target {
                            stored: stored.as_ref(),
                            ..target
                        };
                        let j = size_state.series_index(options, now, &target);
                        // Overflow series hold many attribute sets: they
                        // are looked up each time (and counted).
                        if !s.overflow && !size_state.series[j].overflow {
                            s.sizes[k] = j as u32;
                        }
                        j
                    };
                    size_state.add_at(j, options, now, raw, ex);
                }
            }
        }
        if let Some(graph) = &mut self.graph {
            let side = match span.kind {
                SpanKind::Client => Side::Client,
                SpanKind::Server => Side::Server,
            };
            let half = Half {
                slot,
                duration_ns: duration,
                failed,
                db: class.as_ref().is_some_and(|c| c.family == Family::Db),
                trace_id: span.trace_id,
                span_id: span.span_id,
                end_ns: span.end_unix_ns,
                exported,
                tenant: tenant.and_then(|t| self.tenants.number_of(t)),
            };
            let mut edges = std::mem::take(&mut self.edges);
            graph.offer(side, half, endpoints, || server_name(&picked), &mut edges);
            for edge in edges.drain(..) {
                self.record_edge(edge);
            }
            self.edges = edges;
        }
    }

    /// Ends the wait of service-graph halves older than the wait at `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        self.now = self.now.max(now_ns);
        let Some(graph) = &mut self.graph else {
            return;
        };
        let mut edges = std::mem::take(&mut self.edges);
        graph.expire(now_ns, &mut edges);
        for edge in edges.drain(..) {
            self.record_edge(edge);
        }
        self.edges = edges;
    }

    /// Every waiting service-graph half becomes an edge (at shutdown).
    pub fn drain_graph(&mut self) {
        let Some(graph) = &mut self.graph else {
            return;
        };
        let mut edges = std::mem::take(&mut self.edges);
        graph.drain(&mut edges);
        for edge in edges.drain(..) {
            self.record_edge(edge);
        }
        self.edges = edges;
    }

    fn record_edge(&mut self, edge: Edge) {
        let (client, server, other) = match edge {
            Edge::Paired { client, server } => (Some(client), Some(server), None),
            Edge::ClientOnly { client, server } => (Some(client), None, Some(server)),
            Edge::ServerOnly { server, client } => (None, Some(server), Some(client)),
        };
        let connection_type: u8 = match (&client, &server) {
            (Some(c), None) if c.db => 2,
            (Some(_), None) | (None, Some(_)) => 1,
            _ => 0,
        };
        let party = |half: Option<&Half>, other: &mut Option<Other>| match half {
            Some(h) => Party::Slot(h.slot),
            None => Party::Other(other.take().unwrap_or(Other::Unknown("unknown"))),
        };
        let mut other = other;
        let key = (
            party(client.as_ref(), &mut other),
            party(server.as_ref(), &mut other),
            connection_type,
            [client.and_then(|h| h.tenant), server.and_then(|h| h.tenant)],
        );
        let failed =
            client.as_ref().is_some_and(|h| h.failed) || server.as_ref().is_some_and(|h| h.failed);
        // The series of a known edge are found by its key alone; the
        // attribute set is only built for an edge (or one of its metrics)
        // not seen before.
        let last = self.last_edge.as_ref().filter(|(k, _)| *k == key);
        let memo_hit = last.is_some();
        let mut idx = match last {
            Some((_, idx)) => *idx,
            None => self.edge_series.get(&key).copied().unwrap_or([NONE; 4]),
        };
        let before = idx;
        let metrics = [
            MetricId::GraphRequests,
            MetricId::GraphFailed,
            MetricId::GraphClientSeconds,
            MetricId::GraphServerSeconds,
        ];
        for (k, metric) in metrics.into_iter().enumerate() {
            let half = match k {
                0 => None,
                1 if failed => None,
                1 => continue,
                2 => match &client {
                    Some(h) => Some(h),
                    None => continue,
                },
                _ => match &server {
                    Some(h) => Some(h),
                    None => continue,
                },
            };
            let (raw, ex) = match half {
                Some(h) => (
                    h.duration_ns,
                    h.exported.then_some(Exemplar {
                        trace_id: h.trace_id,
                        span_id: h.span_id,
                        raw: h.duration_ns,
                        time_ns: h.end_ns,
                        failed: h.failed,
                    }),
                ),
                None => (1, None),
            };
            let state = &mut self.metrics[metric as usize];
            let i = idx[k] as usize;
            if idx[k] != NONE && i < state.series.len() {
                state.add_at(i, &self.options, self.now, raw, ex);
            } else {
                idx[k] = self.edge_series_slow(&key, metric, raw, ex);
            }
        }
        if idx != before {
            if self.edge_series.len() >= MAX_EDGES {
                self.edge_series.clear();
            }
            self.edge_series.insert(key.clone(), idx);
        }
        match &mut self.last_edge {
            Some((_, last)) if memo_hit => *last = idx,
            _ => self.last_edge = Some((key, idx)),
        }
    }

    /// Records one measurement of an edge whose series for `metric` is not
    /// known yet: builds its attribute set and finds or creates the series.
    fn edge_series_slow(
        &mut self,
        key: &EdgeKey,
        metric: MetricId,
        raw: u64,
        ex: Option<Exemplar>,
    ) -> u32 {
        let name = |p: &Party| match p {
            Party::Slot(slot) => self
                .slots
                .resource(*slot)
                .map(|r| r.service_name.clone())
                .unwrap_or_else(|| "unknown".into()),
            Party::Other(o) => o.to_string(),
        };
        let (client_name, server_name) = (name(&key.0), name(&key.1));
        let mut attrs = AttrSet::default();
        attrs.push(Key::Client, Val::Str(&client_name));
        attrs.push(Key::Server, Val::Str(&server_name));
        if key.2 != 0 {
            let text = CONNECTION_TYPES[usize::from(key.2)];
            attrs.push(Key::ConnectionType, Val::Str(text));
        }
        for (k, tenant) in [Key::ClientTenant, Key::ServerTenant]
            .into_iter()
            .zip(key.3)
        {
            if let Some(t) = tenant.and_then(|n| self.tenants.name(n)) {
                attrs.push(k, Val::Str(t));
            }
        }
        let target = Target {
            slot: 0,
            attrs: &attrs,
            hash: attrs.hash(0),
            stored: None,
        };
        let state = &mut self.metrics[metric as usize];
        state.observe(&self.options, self.now, &target, raw, ex) as u32
    }

    /// Adds one raw measurement to the series (`slot`, `attrs`) of
    /// `metric`; returns the series' index.
    fn observe(
        &mut self,
        metric: MetricId,
        target: &Target<'_, '_>,
        raw: u64,
        exemplar: Option<Exemplar>,
    ) -> usize {
        self.metrics[metric as usize].observe(&self.options, self.now, target, raw, exemplar)
    }

    /// Forgets series idle for longer than the configured time, and the
    /// resources left without series.
    pub fn evict_idle(&mut self, now_ns: u64) {
        let idle = self.options.idle_ns;
        if idle == 0 {
            return;
        }
        let cutoff = now_ns.saturating_sub(idle);
        let mut used = vec![false; self.slots.list.len()];
        used[0] = true;
        let mut changed = false;
        for state in &mut self.metrics {
            let before = state.series.len();
            state.series.retain(|s| s.last_ns >= cutoff);
            if state.series.len() != before {
                state.rebuild_index();
                changed = true;
            }
            for s in &state.series {
                if let Some(u) = used.get_mut(s.slot as usize) {
                    *u = true;
                }
            }
        }
        // Series moved, or slots may be given to other processes: what
        // the edge cache and the size links point at is no longer sure.
        if self.slots.retain(&used) || changed {
            self.edge_series.clear();
            self.last_edge = None;
            for s in self.metrics.iter_mut().flat_map(|m| m.series.iter_mut()) {
                s.sizes = [NONE; 2];
            }
        }
    }

    /// A copy of every series. With [`Temporality::Delta`] each point holds
    /// what changed since the previous delta snapshot, and series with no
    /// change are left out. Both kinds may be taken from the same store
    /// (Prometheus reads cumulative totals while OTLP sends deltas). The
    /// agent's own resource is always listed, first.
    pub fn snapshot(&mut self, now_ns: u64, temporality: Temporality) -> Snapshot {
        let mut parts = vec![ResourceSnap {
            resource: self.agent_resource(),
            metrics: Vec::new(),
        }];
        for metric in 0..self.metrics.len() {
            let mut from = 0;
            loop {
                let (resources, next) =
                    self.collect_part(metric, from, usize::MAX, now_ns, temporality);
                parts.extend(resources);
                match next {
                    Some(n) => from = n,
                    None => break,
                }
            }
        }
        Snapshot {
            time_ns: now_ns,
            temporality,
            resources: merge_resources(parts),
        }
    }

    /// Metrics in the catalog (the indexes [`Store::collect_part`] takes).
    pub fn metric_count(&self) -> usize {
        self.metrics.len()
    }

    /// Copies at most `max` series of metric `metric`, from series `from`
    /// on, grouped by resource. Returns them and where to go on (`None`:
    /// this metric is done). Series are only ever added at the end between
    /// calls, unless [`Store::evict_idle`] runs, so a reader may go through
    /// a metric in several calls, releasing the lock in between.
    pub fn collect_part(
        &mut self,
        metric: usize,
        from: usize,
        max: usize,
        now_ns: u64,
        temporality: Temporality,
    ) -> (Vec<ResourceSnap>, Option<usize>) {
        self.collect_part_of(&SeriesFilter::All, metric, from, max, now_ns, temporality)
    }

    /// [`Store::collect_part`] for the series `filter` keeps: `max` counts
    /// the series looked at. A delta reading moves on only the series it
    /// takes, so each route may read its own.
    pub fn collect_part_of(
        &mut self,
        filter: &SeriesFilter,
        metric: usize,
        from: usize,
        max: usize,
        now_ns: u64,
        temporality: Temporality,
    ) -> (Vec<ResourceSnap>, Option<usize>) {
        let Some(state) = self.metrics.get_mut(metric) else {
            return (Vec::new(), None);
        };
        let desc = state.desc;
        let end = from.saturating_add(max.max(1)).min(state.series.len());
        // (slot, points), in the order slots first appear.
        let mut per_slot: Vec<(u32, Vec<Point>)> = Vec::new();
        for s in state.series.get_mut(from..end).unwrap_or_default() {
            let Some(reader) = filter.end_of(&s.attrs) else {
                continue;
            };
            let (agg, start) = match temporality {
                Temporality::Cumulative => (s.agg.clone(), s.start_ns),
                Temporality::Delta => {
                    let exported = &mut s.exported[reader];
                    let (delta, start) = match exported {
                        Some((before, at)) => (s.agg.since(before), *at),
                        None => (s.agg.clone(), s.start_ns),
                    };
                    *exported = Some((Box::new(s.agg.clone()), now_ns));
                    if delta.count() == 0 {
                        continue;
                    }
                    (delta, start)
                }
            };
            let exemplars: Vec<Exemplar> = s
                .exemplars
                .iter()
                .map(|(_, e)| *e)
                .filter(|e| temporality == Temporality::Cumulative || e.time_ns >= start)
                .collect();
            let value = match agg {
                Agg::Explicit(hist) => PointValue::Explicit {
                    bounds: Arc::clone(&state.bounds),
                    hist,
                },
                Agg::Exponential(h) => PointValue::Exponential(*h),
                Agg::Count(c) => PointValue::Sum(desc.raw.to_unit(c)),
            };
            let point = Point {
                attrs: s.attrs.clone(),
                start_ns: start,
                value,
                exemplars,
            };
            match per_slot.iter_mut().find(|(slot, _)| *slot == s.slot) {
                Some((_, points)) => points.push(point),
                None => per_slot.push((s.slot, vec![point])),
            }
        }
        let next = (end < state.series.len()).then_some(end);
        let resources = per_slot
            .into_iter()
            .filter_map(|(slot, points)| {
                Some(ResourceSnap {
                    resource: Arc::clone(self.slots.resource(slot)?),
                    metrics: vec![MetricSnap {
                        name: Cow::Borrowed(desc.name),
                        unit: desc.unit,
                        description: desc.description,
                        instrument: desc.instrument,
                        raw: desc.raw,
                        points,
                    }],
                })
            })
            .collect();
        (resources, next)
    }

    /// The resources that have series now (the agent's first).
    pub fn resources(&self) -> Vec<Arc<Resource>> {
        self.resources_of(&SeriesFilter::All)
    }

    /// The resources that have series `filter` keeps (the agent's first:
    /// its health metrics are of no tenant, so it is there whenever the
    /// filter keeps those).
    pub fn resources_of(&self, filter: &SeriesFilter) -> Vec<Arc<Resource>> {
        let mut used = vec![false; self.slots.list.len()];
        used[0] = filter.keeps(None);
        for state in &self.metrics {
            for s in &state.series {
                if let Some(u) = used.get_mut(s.slot as usize)
                    && !*u
                    && filter.keeps_series(&s.attrs)
                {
                    *u = true;
                }
            }
        }
        used.iter()
            .enumerate()
            .filter(|(_, u)| **u)
            .filter_map(|(slot, _)| self.slots.resource(slot as u32).cloned())
            .collect()
    }

    /// (metric name, series held, measurements folded into overflow).
    pub fn series_counts(&self) -> Vec<(&'static str, usize, u64)> {
        self.metrics
            .iter()
            .map(|m| (m.desc.name, m.series.len(), m.folded))
            .collect()
    }

    /// Service graph counters: (halves pushed out early, client-only
    /// edges, server-only edges, halves waiting).
    pub fn graph_counts(&self) -> Option<(u64, u64, u64, usize)> {
        self.graph
            .as_ref()
            .map(|g| (g.dropped, g.unpaired_client, g.unpaired_server, g.waiting()))
    }
}

/// Joins the parts of one resource (the same `Arc`) into one entry, keeping
/// the order in which resources first appear.
pub fn merge_resources(parts: Vec<ResourceSnap>) -> Vec<ResourceSnap> {
    let mut out: Vec<ResourceSnap> = Vec::new();
    for part in parts {
        match out
            .iter_mut()
            .find(|r| Arc::ptr_eq(&r.resource, &part.resource))
        {
            Some(r) => r.metrics.extend(part.metrics),
            None => out.push(part),
        }
    }
    out
}

/// How a client span names its server: `server.address:server.port`
/// (the address alone without a port).
fn server_name(picked: &Picked<'_>) -> Option<Box<str>> {
    let addr = match picked.get(Key::ServerAddress)? {
        AttrValue::Str(s) if !s.is_empty() => s,
        _ => return None,
    };
    let name = match picked.get(Key::ServerPort) {
        Some(AttrValue::Int(p)) if addr.contains(':') => format!("[{addr}]:{p}"),
        Some(AttrValue::Int(p)) => format!("{addr}:{p}"),
        _ => addr.to_string(),
    };
    Some(name.into())
}

/// The value of one attribute of a point, for tests and the console table.
pub fn point_attr<'a>(p: &'a Point, key: &str) -> Option<&'a OwnedVal> {
    p.attrs
        .iter()
        .find(|(k, _)| k.name() == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests;
