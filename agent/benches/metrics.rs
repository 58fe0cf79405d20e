//! What the metrics stage and pod metadata cost, measured without
//! criterion so that the figures hold on a busy machine:
//!
//! - time per span: the pipeline fed with recorded HTTP/1.x records, with
//!   and without the metrics stage, and the store alone. Each figure is the
//!   fastest of many rounds (the round least disturbed by other work).
//! - memory: the resident set size of this process before and after
//!   building 10,000 distinct series (and rendering them for Prometheus
//!   and OTLP), read from `/proc/self/status`.
//! - what Kubernetes metadata adds per span: the same records from
//!   processes in pods, labelled from their cgroups only and with the
//!   metadata of 10,000 pods, in turns, the same way.
//! - what the pod store keeps of 10,000 pods, and the RSS it takes, by
//!   the way the pods come (list pages, watch events).
//!
//! `cargo bench -p sonde --bench metrics` prints all of them; with a word
//! after `--` (`memory`, `allocations`, `time`, `kubernetes`) only the
//! parts whose name contains it.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod pods;
mod records;

use records::{
    CONNS, HTTP_REQUEST, HTTP_RESPONSE, MYSQL_OK, MYSQL_QUERY, PAIRS_PER_CONN, REDIS_COMMAND,
    REDIS_REPLY, recorded, recorded_events,
};
use sonde::capture::{Clock, Endpoint, Endpoints};
use sonde::config::MetricsConfig;
use sonde::enrich::{HostInfo, ProcessResources, Resource};
use sonde::export::otlp::metrics as otlp;
use sonde::export::prometheus::{Format, Renderer};
use sonde::metrics::{Metrics, Store, Temporality, store_options, unix_now_ns};
use sonde::pipeline::{Pipeline, PipelineOptions, SpanSink};
use sonde::span::model::{AttrValue, Span, SpanKind, SpanStatus};
use sonde::stats::Stats;

/// The agent's allocator, so the figures match the agent, counting
/// allocations.
#[global_allocator]
static ALLOCATOR: Counting = Counting(mimalloc::MiMalloc);

struct Counting(mimalloc::MiMalloc);

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Counting is on only while [`allocations_per_span`] runs, so that it
/// does not slow the timed rounds.
static COUNTING: AtomicBool = AtomicBool::new(false);

fn count_one() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Bytes allocated and not freed while [`LIVE_COUNTING`] is on (the pod
/// store's memory cases, each in a process of its own).
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_COUNTING: AtomicBool = AtomicBool::new(false);

fn count_bytes(delta: i64) {
    if LIVE_COUNTING.load(Ordering::Relaxed) {
        LIVE_BYTES.fetch_add(delta, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        count_bytes(layout.size() as i64);
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count_bytes(-(layout.size() as i64));
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        count_bytes(new_size as i64 - layout.size() as i64);
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

/// Heap allocations (and reallocations) per span through the pipeline
/// without metrics, per protocol, once the connections are known.
fn allocations_per_span() {
    for (name, request, response) in [
        ("HTTP/1.1", HTTP_REQUEST, HTTP_RESPONSE),
        ("Redis", REDIS_COMMAND, REDIS_REPLY),
        ("MySQL", MYSQL_QUERY, MYSQL_OK),
    ] {
        let records = recorded(request, response, [127, 0, 0, 1], [127, 0, 0, 1]);
        let mut p = pipeline(None);
        let run = |p: &mut Pipeline<CountingSink>| {
            for r in &records {
                p.read_record(r);
            }
            p.flush_spans();
        };
        run(&mut p);
        let (before, spans) = (ALLOCATIONS.load(Ordering::Relaxed), p.sink_mut().0);
        COUNTING.store(true, Ordering::Relaxed);
        run(&mut p);
        COUNTING.store(false, Ordering::Relaxed);
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        let spans = p.sink_mut().0 - spans;
        println!(
            "allocations per {name} span: {:.1}",
            allocations as f64 / spans.max(1) as f64
        );
    }
}

struct CountingSink(u64);

impl SpanSink for CountingSink {
    fn send(&mut self, _resource: Arc<Resource>, span: Span) {
        black_box(&span);
        self.0 += 1;
    }
}

fn pipeline(metrics: Option<Arc<Metrics>>) -> Pipeline<CountingSink> {
    let mut p = pipeline_over(ProcessResources::new(HostInfo {
        host_name: "bench".into(),
        host_id: None,
    }));
    if let Some(m) = metrics {
        p.set_metrics(m);
    }
    p
}

fn pipeline_over(resources: ProcessResources) -> Pipeline<CountingSink> {
    Pipeline::new(
        PipelineOptions::new(4096, Default::default(), Default::default()),
        Clock::with_offset(0),
        resources,
        CountingSink(0),
        Arc::new(Stats::default()),
    )
}

fn agent() -> Arc<Resource> {
    Arc::new(Resource {
        service_name: "sonde".into(),
        attributes: vec![("service.name".into(), "sonde".into())],
        ..Default::default()
    })
}

/// The fastest of `rounds` runs of `f`.
fn fastest(rounds: usize, mut f: impl FnMut()) -> Duration {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn span(route: &str, end_ns: u64, ms: u64) -> Span {
    Span {
        trace_id: [end_ns as u8; 16],
        span_id: [end_ns as u8; 8],
        parent_span_id: None,
        name: format!("GET {route}"),
        kind: SpanKind::Server,
        start_unix_ns: end_ns - ms * 1_000_000,
        end_unix_ns: end_ns,
        attributes: vec![
            ("http.request.method", AttrValue::from("GET")),
            ("http.response.status_code", AttrValue::Int(200)),
            ("url.path", route.into()),
            ("url.scheme", "http".into()),
            ("http.route", route.into()),
            ("network.protocol.name", "http".into()),
            ("network.protocol.version", "1.1".into()),
            ("network.transport", "tcp".into()),
            ("network.peer.address", "10.1.2.3".into()),
            ("network.peer.port", AttrValue::Int(40000)),
            ("server.address", "shop.internal".into()),
            ("server.port", AttrValue::Int(8080)),
            ("client.address", "10.1.2.3".into()),
            ("client.port", AttrValue::Int(40000)),
            ("user_agent.original", "curl/8.5.0".into()),
            ("http.response.body.size", AttrValue::Int(1234)),
        ],
        status: SpanStatus::Unset,
        pid: 1,
        endpoints: sonde::capture::Endpoints::UNKNOWN,
        tenant: None,
        tenant_headers: Default::default(),
        rest: Default::default(),
    }
}

fn time_per_span() {
    let records = recorded_events();
    let pairs = f64::from(CONNS * PAIRS_PER_CONN);
    let rounds = 300;

    // The three pipelines take turns, round after round, so that whatever
    // else runs on the machine slows them alike; each figure is the
    // fastest of its rounds.
    let metrics = |graph: bool| {
        let mut config = MetricsConfig::default();
        config.service_graph.enabled = graph;
        Metrics::new(store_options(&config), agent(), Arc::new(Stats::default()))
    };
    // Clients on another host: 10.1.2.3 calling 10.1.2.4.
    let remote = recorded(HTTP_REQUEST, HTTP_RESPONSE, [10, 1, 2, 4], [10, 1, 2, 3]);
    let mut pipelines = [
        ("without metrics", pipeline(None), &records),
        (
            "with metrics, no service graph",
            pipeline(Some(metrics(false))),
            &records,
        ),
        (
            "with metrics and the service graph (loopback clients never seen: the worst case)",
            pipeline(Some(metrics(true))),
            &records,
        ),
        ("without metrics, remote clients", pipeline(None), &remote),
        (
            "with metrics and the service graph, remote clients",
            pipeline(Some(metrics(true))),
            &remote,
        ),
    ];
    // Warm up: fill the tables (and the service graph's waiting table).
    for _ in 0..10 {
        for (_, p, records) in &mut pipelines {
            for r in *records {
                p.handle_record(r);
            }
        }
    }
    let mut best = [Duration::MAX; 5];
    for _ in 0..rounds {
        for (i, (_, p, records)) in pipelines.iter_mut().enumerate() {
            let t = Instant::now();
            for r in *records {
                p.read_record(black_box(r));
            }
            p.flush_spans();
            best[i] = best[i].min(t.elapsed());
        }
    }
    let ns = |d: Duration| d.as_nanos() as f64 / pairs;
    for (i, (name, _, _)) in pipelines.iter().enumerate() {
        let base = if i < 3 { best[0] } else { best[3] };
        println!(
            "pipeline {name}: {:.0} ns per span, added {:.0} ns",
            ns(best[i]),
            ns(best[i]) - ns(base)
        );
    }

    let spans: Vec<Span> = (0..1024u64)
        .map(|i| span(&format!("/api/r{}", i % 8), 1_000_000_000 + i * 1000, i % 9))
        .collect();
    let shop = Arc::new(Resource {
        service_name: "shop".into(),
        attributes: vec![("service.name".into(), "shop".into())],
        ..Default::default()
    });
    // 64 connections, as in the pipeline: clients on another host (their
    // spans are counted at once) or on loopback (they wait for the client
    // side, which never comes here: the worst case).
    let remote: Vec<Endpoints> = (0..64u16)
        .map(|c| Endpoints {
            local: Endpoint::Ip([10, 1, 2, 4].into(), 8080),
            peer: Endpoint::Ip([10, 1, 2, 3].into(), 40000 + c),
        })
        .collect();
    let loopback: Vec<Endpoints> = (0..64u16)
        .map(|c| Endpoints {
            local: Endpoint::Ip([127, 0, 0, 1].into(), 8080),
            peer: Endpoint::Ip([127, 0, 0, 1].into(), 40000 + c),
        })
        .collect();
    for (name, graph, endpoints) in [
        ("store alone, service graph off", false, &remote),
        (
            "store alone, service graph on, remote clients",
            true,
            &remote,
        ),
        (
            "store alone, service graph on, loopback clients never seen",
            true,
            &loopback,
        ),
    ] {
        let mut config = MetricsConfig::default();
        config.service_graph.enabled = graph;
        let mut store = Store::new(store_options(&config), agent());
        // Fill the waiting table first: then every span that waits pushes
        // out the oldest one, which becomes an edge of its own.
        for _ in 0..20 {
            for (i, s) in spans.iter().enumerate() {
                store.record(&shop, s, &endpoints[i % 64]);
            }
        }
        let t = fastest(rounds, || {
            for (i, s) in spans.iter().enumerate() {
                store.record(&shop, black_box(s), &endpoints[i % 64]);
            }
        });
        println!(
            "{name}, per span: {:.0} ns",
            t.as_nanos() as f64 / spans.len() as f64
        );
    }
}

/// What Kubernetes metadata adds per span: the HTTP/1.x records from
/// processes in pods (a fake `/proc`, kubelet-shaped cgroups), through
/// pipelines without and with the metadata of 10,000 pods, taking turns
/// as in [`time_per_span`]. Before each round of the publishing cases a
/// new snapshot is published, untimed (the watcher does that on its own
/// thread, at most every 100 ms): one per 1,024 spans is ten times what a
/// node at 100,000 spans/s sees, so these bound the rebuild path's share
/// from above.
fn kubernetes_per_span() {
    let records = recorded_events();
    let pairs = f64::from(CONNS * PAIRS_PER_CONN);
    let rounds = 300;
    let proc = pods::FakeProc::new();
    let snapshot = pods::snapshot();
    // Each case has metadata of its own, so that one's publishes do not
    // touch another's.
    let steady = pods::Publisher::new(&snapshot);
    pods::check_labelled(&mut proc.resources(Some(steady.metadata())));
    const NAMES: [&str; 4] = [
        "processes in pods, cgroup labels only",
        "with the metadata of 10,000 pods",
        "with the metadata, a new snapshot each 1,024 spans (another pod changed)",
        "with the metadata, a new snapshot each 1,024 spans (the processes' own pods changed)",
    ];
    // (metadata, publisher before each round, whether the processes' own
    // pods change) of each case
    let cases = || {
        let (another, own) = (
            pods::Publisher::new(&snapshot),
            pods::Publisher::new(&snapshot),
        );
        [
            (None, None, false),
            (Some(steady.metadata()), None, false),
            (Some(another.metadata()), Some(another), false),
            (Some(own.metadata()), Some(own), true),
        ]
    };
    let mut pipelines = cases().map(|(metadata, publisher, own)| {
        (pipeline_over(proc.resources(metadata)), publisher, own)
    });
    for _ in 0..10 {
        for (p, _, _) in &mut pipelines {
            for r in &records {
                p.handle_record(r);
            }
        }
    }
    let mut best = [Duration::MAX; 4];
    for _ in 0..rounds {
        for (i, (p, publisher, own)) in pipelines.iter_mut().enumerate() {
            if let Some(publisher) = publisher {
                publisher.publish(*own);
            }
            let t = Instant::now();
            for r in &records {
                p.read_record(black_box(r));
            }
            p.flush_spans();
            best[i] = best[i].min(t.elapsed());
        }
    }
    let ns = |d: Duration| d.as_nanos() as f64 / pairs;
    for (i, name) in NAMES.iter().enumerate() {
        println!(
            "kubernetes: pipeline {name}: {:.0} ns per span, added {:.0} ns",
            ns(best[i]),
            ns(best[i]) - ns(best[0])
        );
    }

    // The process cache alone, one lookup per span as the pipeline makes
    // them: what the metadata adds there is smaller than what the
    // pipeline's figures can resolve.
    let gets: Vec<u32> = (0..CONNS * PAIRS_PER_CONN)
        .map(|i| pods::PIDS[(i % CONNS) as usize % pods::PIDS.len()])
        .collect();
    let mut caches =
        cases().map(|(metadata, publisher, own)| (proc.resources(metadata), publisher, own));
    for (cache, _, _) in &mut caches {
        for &pid in &gets {
            cache.get(pid);
        }
    }
    let mut best = [Duration::MAX; 4];
    for _ in 0..rounds * 10 {
        for (i, (cache, publisher, own)) in caches.iter_mut().enumerate() {
            if let Some(publisher) = publisher {
                publisher.publish(*own);
            }
            let t = Instant::now();
            for &pid in &gets {
                black_box(cache.get(black_box(pid)));
            }
            best[i] = best[i].min(t.elapsed());
        }
    }
    for (i, name) in NAMES.iter().enumerate() {
        println!(
            "kubernetes: process cache alone, {name}: {:.1} ns per span, added {:.1} ns",
            ns(best[i]),
            ns(best[i]) - ns(best[0])
        );
    }
}

/// A pod as the API server serves it in a list: three containers, seven
/// labels, five annotations, `managedFields` (fixtures/k8s/README.md).
const POD_JSON: &str = include_str!("fixtures/k8s/pod.json");

/// [`POD_JSON`] cut around the values that differ from pod to pod, so
/// that pods are written out without building JSON trees (which would
/// load the allocator more than what is measured).
struct PodTemplate(Vec<(String, Option<usize>)>);

/// The values [`PodTemplate`] fills in, by their place in this list.
const POD_FIELDS: [&str; 9] = [
    "@NAME@",
    "@NAMESPACE@",
    "@UID@",
    "@APP@",
    "@HASH@",
    "@OWNER@",
    "@C0@",
    "@C1@",
    "@C2@",
];

impl PodTemplate {
    fn new() -> PodTemplate {
        let mut pod: serde_json::Value =
            serde_json::from_str(POD_JSON).expect("fixtures/k8s/pod.json");
        let meta = &mut pod["metadata"];
        meta["name"] = "@NAME@".into();
        meta["namespace"] = "@NAMESPACE@".into();
        meta["uid"] = "@UID@".into();
        meta["labels"]["app.kubernetes.io/name"] = "@APP@".into();
        meta["labels"]["pod-template-hash"] = "@HASH@".into();
        meta["ownerReferences"][0]["name"] = "@OWNER@".into();
        let statuses = pod["status"]["containerStatuses"]
            .as_array_mut()
            .expect("container statuses");
        for (c, status) in statuses.iter_mut().enumerate() {
            status["containerID"] = format!("containerd://@C{c}@").into();
        }
        let mut text = serde_json::to_string(&pod).expect("json");
        let mut parts = Vec::new();
        loop {
            let next = POD_FIELDS
                .iter()
                .enumerate()
                .filter_map(|(f, m)| text.find(m).map(|at| (at, f, m.len())))
                .min();
            let Some((at, field, len)) = next else {
                parts.push((text, None));
                return PodTemplate(parts);
            };
            parts.push((text[..at].to_owned(), Some(field)));
            text = text[at + len..].to_owned();
        }
    }

    /// Pod `i` of a node, ten pods to a Deployment, appended to `out`.
    fn write(&self, i: usize, out: &mut String) {
        use std::fmt::Write as _;
        for (text, field) in &self.0 {
            out.push_str(text);
            let _ = match field {
                Some(0) => write!(out, "svc-{}-5d4f8c7b9-{i:05x}", i / 10),
                Some(1) => write!(out, "team-{}", (i / 10) % 50),
                Some(2) => write!(out, "{i:08x}-0000-4000-8000-{:012x}", i * 7),
                Some(3) => write!(out, "svc-{}", i / 10),
                Some(4) => write!(out, "5d4f8c7b9"),
                Some(5) => write!(out, "svc-{}-5d4f8c7b9", i / 10),
                Some(c) => write!(out, "{:064x}", i * 3 + c - 6),
                None => Ok(()),
            };
        }
    }
}

/// The watcher's pod store alone: 10,000 pods taken as kube's watcher
/// hands them over, a list's pages of `page` pods deserialized at once
/// (1: one watch event at a time), each stripped to what labels use and
/// kept, a snapshot published after every 500, as the watcher does at
/// most every 100 ms. Prints the heap the store keeps (bytes allocated and
/// not freed, counted) beside what the process's RSS grew by.
fn pods_memory(page: usize) {
    use sonde::enrich::k8s::WatchedPod as Pod;
    use sonde::enrich::k8s::{Keep, Metadata, PodMeta, Snapshot, pod_meta, pod_owners};
    const PODS: usize = 10_000;
    let template = PodTemplate::new();
    let keep = Keep {
        labels: vec!["team".into()],
        annotations: Vec::new(),
        rule_labels: Vec::new(),
        rule_annotations: Vec::new(),
    };
    let strip =
        |pod: &Pod| pod_meta(pod, &keep, pod_owners(pod, None)).expect("a pod with a uid and name");
    let metadata = Metadata::default();
    let mut pods: std::collections::HashMap<Arc<str>, Arc<PodMeta>> = Default::default();
    let (rss_before, _) = rss_kib();
    LIVE_COUNTING.store(true, Ordering::Relaxed);
    let live_before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut wire_bytes = 0;
    let mut body = String::new();
    for start in (0..PODS).step_by(page) {
        // The body as it comes off the wire, then the objects kube makes
        // of it: a list page, or a watch event.
        body.clear();
        let taken: Vec<Pod> = if page == 1 {
            body.push_str(r#"{"type":"ADDED","object":"#);
            template.write(start, &mut body);
            body.push('}');
            match serde_json::from_str::<kube::core::WatchEvent<Pod>>(&body).expect("an event") {
                kube::core::WatchEvent::Added(pod) => vec![pod],
                _ => unreachable!("an ADDED event"),
            }
        } else {
            body.push_str(
                r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":["#,
            );
            for i in start..(start + page).min(PODS) {
                if i > start {
                    body.push(',');
                }
                template.write(i, &mut body);
            }
            body.push_str("]}");
            serde_json::from_str::<kube::core::ObjectList<Pod>>(&body)
                .expect("a pod list")
                .items
        };
        wire_bytes += body.len();
        for pod in &taken {
            let meta = strip(pod);
            pods.insert(Arc::clone(&meta.uid), Arc::new(meta));
        }
        drop(taken);
        if pods.len().is_multiple_of(500) || pods.len() == PODS {
            metadata.publish(Snapshot {
                version: 0,
                pods: pods.clone(),
                namespaces: Default::default(),
            });
        }
    }
    drop(body);
    let live = LIVE_BYTES.load(Ordering::Relaxed) - live_before;
    LIVE_COUNTING.store(false, Ordering::Relaxed);
    let (rss_after, peak) = rss_kib();
    sonde::memory::release(true);
    let (rss_released, _) = rss_kib();
    let taken = if page == 1 {
        "one watch event at a time".to_owned()
    } else {
        format!("in list pages of {page}")
    };
    println!(
        "pod store, {PODS} pods of {} bytes of JSON, taken {taken}: {:.1} MiB kept ({} bytes per pod); \
         RSS grew {:.1} MiB ({:.1} MiB once this thread's free pages are handed back), {:.1} MiB at its peak",
        wire_bytes / PODS,
        live as f64 / 1048576.0,
        live / PODS as i64,
        (rss_after as f64 - rss_before as f64) / 1024.0,
        (rss_released as f64 - rss_before as f64) / 1024.0,
        (peak as f64 - rss_before as f64) / 1024.0,
    );
    black_box(&pods);
}

fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Builds `SERVICES` x `routes` distinct attribute sets on the HTTP server
/// duration metric (and, with `sizes`, as many response size series),
/// then takes a snapshot and renders it the way the endpoints do: the
/// OpenMetrics page in 64 KiB pieces, OTLP one request at a time.
fn memory(routes: usize, sizes: bool) {
    const SERVICES: usize = 10;
    let (before, _) = rss_kib();
    let config = MetricsConfig {
        max_series_per_metric: 100_000,
        ..Default::default()
    };
    let metrics = Metrics::new(store_options(&config), agent(), Arc::new(Stats::default()));
    let resources: Vec<Arc<Resource>> = (0..SERVICES)
        .map(|i| {
            Arc::new(Resource {
                service_name: format!("service-{i}"),
                attributes: vec![
                    ("service.name".into(), format!("service-{i}").into()),
                    ("service.instance.id".into(), format!("instance-{i}").into()),
                    ("host.name".into(), "bench".into()),
                ],
                ..Default::default()
            })
        })
        .collect();
    let endpoints = Endpoints {
        local: Endpoint::Ip([10, 1, 2, 4].into(), 8080),
        peer: Endpoint::Ip([10, 1, 2, 3].into(), 40000),
    };
    let now = unix_now_ns();
    {
        let mut store = metrics.recorder();
        for round in 0..5u64 {
            for (i, r) in resources.iter().enumerate() {
                for route in 0..routes {
                    let mut s = span(
                        &format!("/api/v1/resource-{route}/items"),
                        now + round * 1000 + (i * routes + route) as u64,
                        (route % 13) as u64,
                    );
                    if !sizes {
                        s.attributes.pop();
                    }
                    store.record(r, &s, &endpoints);
                }
            }
        }
    }
    let (built, _) = rss_kib();
    let series: usize = metrics
        .recorder()
        .series_counts()
        .iter()
        .map(|(_, n, _)| n)
        .sum();
    // A scrape, as the endpoint serves it: a part at a time.
    let mut page_bytes = 0;
    {
        let mut collection = metrics.collect(Temporality::Cumulative);
        let mut renderer = Renderer::new(Format::OpenMetrics);
        let mut buf = String::new();
        while let Some(part) = collection.next_part(sonde::export::prometheus::SERIES_PER_PART) {
            buf.clear();
            renderer.part(&part, &mut buf);
            page_bytes += buf.len();
            black_box(&buf);
        }
        buf.clear();
        renderer.finish(&collection.resources(), &mut buf);
        page_bytes += buf.len();
    }
    let (scraped, _) = rss_kib();
    // An OTLP export, as the exporter sends it: requests of up to 500
    // points gathered from parts of 100 series.
    let mut requests = 0;
    let mut request_bytes = 0;
    {
        for snap in otlp::Batches::new(&metrics, Temporality::Cumulative) {
            for req in otlp::Requests::new(&snap, otlp::MAX_POINTS_PER_REQUEST) {
                requests += 1;
                let bytes = prost::Message::encode_to_vec(&req);
                request_bytes += bytes.len();
                black_box(bytes);
            }
        }
    }
    let (after, peak) = rss_kib();
    println!(
        "memory, {} distinct attribute sets ({SERVICES} services x {routes} routes{}): {series} series; \
         OpenMetrics page {:.1} MiB; {requests} OTLP requests, {:.1} MiB",
        SERVICES * routes,
        if sizes { ", with response sizes" } else { "" },
        page_bytes as f64 / 1048576.0,
        request_bytes as f64 / 1048576.0,
    );
    println!(
        "  RSS {:.1} MiB at start, {:.1} MiB with the series built, {:.1} MiB after a scrape, \
         {:.1} MiB after an OTLP export; peak {:.1} MiB",
        before as f64 / 1024.0,
        built as f64 / 1024.0,
        scraped as f64 / 1024.0,
        after as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}

/// Feeds the recorded records `rounds` times to a pipeline with or
/// without the metrics stage, and says how many spans that made.
fn pipeline_rounds(with_metrics: bool, rounds: usize) {
    pipeline_rounds_with(with_metrics.then(MetricsConfig::default), rounds);
}

fn pipeline_rounds_with(config: Option<MetricsConfig>, rounds: usize) {
    let records = recorded_events();
    let metrics =
        config.map(|c| Metrics::new(store_options(&c), agent(), Arc::new(Stats::default())));
    let mut p = pipeline(metrics);
    for _ in 0..rounds {
        for r in &records {
            p.read_record(black_box(r));
        }
        p.flush_spans();
    }
    println!("spans: {}", p.sink_mut().0);
}

/// Feeds the recorded records `rounds` times to a pipeline whose processes
/// run in pods, with or without their pods' metadata.
fn pods_rounds(k8s: bool, rounds: usize) {
    let records = recorded_events();
    let proc = pods::FakeProc::new();
    let publisher = pods::Publisher::new(&pods::snapshot());
    let mut p = pipeline_over(proc.resources(k8s.then(|| publisher.metadata())));
    for _ in 0..rounds {
        for r in &records {
            p.read_record(black_box(r));
        }
        p.flush_spans();
    }
    println!("spans: {}", p.sink_mut().0);
}

/// Requests that carry `x-tenant-id`.
fn tenant_records() -> Vec<Vec<u8>> {
    records::recorded(
        records::TENANT_REQUEST,
        records::HTTP_RESPONSE,
        [127, 0, 0, 1],
        [127, 0, 0, 1],
    )
}

/// A pipeline with the metrics stage, without or with tenant rules (a
/// header rule first, then process rules and a default).
fn tenant_pipeline(rules: bool) -> Pipeline<CountingSink> {
    let mut resources = ProcessResources::new(HostInfo {
        host_name: "bench".into(),
        host_id: None,
    });
    if rules {
        let config = sonde::config::parse(records::TENANT_RULES).expect("the bench's tenant rules");
        resources = resources.with_tenants(sonde::enrich::tenant::Tenants::new(config.tenants));
    }
    let mut p = pipeline_over(resources);
    p.set_metrics(Metrics::new(
        store_options(&MetricsConfig::default()),
        agent(),
        Arc::new(Stats::default()),
    ));
    p
}

/// [`tenant_records`] `rounds` times through [`tenant_pipeline`]: what
/// tenant resolution adds, for a count of instructions.
fn tenant_rounds(rules: bool, rounds: usize) {
    let records = tenant_records();
    let mut p = tenant_pipeline(rules);
    for _ in 0..rounds {
        for r in &records {
            p.read_record(black_box(r));
        }
        p.flush_spans();
    }
    println!("spans: {}", p.sink_mut().0);
}

/// Tenant resolution per span, from 1,000 rounds of each pipeline of
/// [`tenant_pipeline`], taking turns (which goes first alternates).
///
/// This machine's rounds fall in two modes, about 1.9 µs and 3.6 µs per
/// span, as the host's other load comes and goes: a figure must compare
/// rounds of one mode. The difference of the two pipelines' 10th
/// percentiles does, and does not rest on one round as the fastest rounds'
/// difference does (printed too).
fn tenants_per_span() {
    let records = tenant_records();
    let pairs = f64::from(CONNS * PAIRS_PER_CONN);
    let mut pipelines = [tenant_pipeline(false), tenant_pipeline(true)];
    let mut times: [Vec<f64>; 2] = Default::default();
    for round in 0..1010 {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let p = &mut pipelines[i];
            let t = Instant::now();
            for r in &records {
                p.read_record(black_box(r));
            }
            p.flush_spans();
            // The first rounds warm up.
            if round >= 10 {
                times[i].push(t.elapsed().as_nanos() as f64 / pairs);
            }
        }
    }
    for t in &mut times {
        t.sort_by(f64::total_cmp);
    }
    let at = |i: usize, percent: usize| times[i][times[i].len() * percent / 100];
    println!(
        "tenants: pipeline with metrics, requests with x-tenant-id: added {:.0} ns per span \
         (10th percentiles: {:.0} ns without tenant rules, {:.0} ns with them; fastest rounds: \
         {:.0} and {:.0} ns, added {:.0}; medians {:.0} and {:.0} ns)",
        at(1, 10) - at(0, 10),
        at(0, 10),
        at(1, 10),
        at(0, 0),
        at(1, 0),
        at(1, 0) - at(0, 0),
        at(0, 50),
        at(1, 50),
    );
}

/// Selects one case in a child process.
const CASE: &str = "SONDE_METRICS_BENCH_CASE";

fn main() {
    // Each memory case runs in a fresh process of its own, so that one
    // does not start from the other's high-water mark; `cargo bench`
    // passes `--bench`, nothing else to parse.
    match std::env::var(CASE).as_deref() {
        Ok("plain") => return memory(1000, false),
        Ok("sizes") => return memory(1000, true),
        Ok("pods-list") => return pods_memory(500),
        Ok("pods-list-50") => return pods_memory(50),
        Ok("pods-watch") => return pods_memory(1),
        // For `perf stat -e task-clock`: CPU time of a fixed amount of
        // work, which other processes on the machine do not inflate.
        Ok("pipeline-without") => return pipeline_rounds(false, 2000),
        Ok("pipeline-with") => return pipeline_rounds(true, 2000),
        // The same for pod metadata: processes in pods, without and with
        // the metadata of 10,000 pods, for a count of instructions
        // (`valgrind --tool=cachegrind` where `perf` has no counters: the
        // difference of two round counts leaves out the setup).
        Ok(case @ ("pipeline-pods" | "pipeline-pods-k8s")) => {
            let rounds = std::env::var("SONDE_METRICS_BENCH_ROUNDS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(2000);
            return pods_rounds(case == "pipeline-pods-k8s", rounds);
        }
        // The same for tenant rules.
        Ok(case @ ("pipeline-tenant-header" | "pipeline-tenant-rules")) => {
            let rounds = std::env::var("SONDE_METRICS_BENCH_ROUNDS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(2000);
            return tenant_rounds(case == "pipeline-tenant-rules", rounds);
        }
        Ok("store-loopback") => {
            let spans: Vec<Span> = (0..1024u64)
                .map(|i| span(&format!("/api/r{}", i % 8), 1_000_000_000 + i * 1000, i % 9))
                .collect();
            let shop = Arc::new(Resource {
                service_name: "shop".into(),
                attributes: vec![("service.name".into(), "shop".into())],
                ..Default::default()
            });
            let loopback: Vec<Endpoints> = (0..64u16)
                .map(|c| Endpoints {
                    local: Endpoint::Ip([127, 0, 0, 1].into(), 8080),
                    peer: Endpoint::Ip([127, 0, 0, 1].into(), 40000 + c),
                })
                .collect();
            let mut store = Store::new(store_options(&MetricsConfig::default()), agent());
            for _ in 0..3000 {
                for (i, s) in spans.iter().enumerate() {
                    store.record(&shop, black_box(s), &loopback[i % 64]);
                }
            }
            return;
        }
        Ok("pipeline-with-no-graph") => {
            let mut config = MetricsConfig::default();
            config.service_graph.enabled = false;
            return pipeline_rounds_with(Some(config), 2000);
        }
        Ok("rounds") => {
            let stats = Arc::new(Stats::default());
            let records = recorded_events();
            let mut p = Pipeline::new(
                PipelineOptions::new(4096, Default::default(), Default::default()),
                Clock::with_offset(0),
                ProcessResources::new(HostInfo {
                    host_name: "bench".into(),
                    host_id: None,
                }),
                CountingSink(0),
                stats.clone(),
            );
            for r in &records {
                p.handle_record(r);
            }
            println!("{}", stats.summary());
            return;
        }
        _ => {}
    }
    // `cargo bench` passes `--bench`; any other word selects parts.
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |part: &str| words.is_empty() || words.iter().any(|w| part.contains(w.as_str()));
    if wanted("memory") || wanted("kubernetes") {
        let cases: &[&str] = match (wanted("memory"), wanted("kubernetes")) {
            (true, true) => &["plain", "sizes", "pods-list", "pods-list-50", "pods-watch"],
            (true, false) => &["plain", "sizes"],
            _ => &["pods-list", "pods-list-50", "pods-watch"],
        };
        for case in cases {
            let out = std::env::current_exe()
                .and_then(|exe| std::process::Command::new(exe).env(CASE, case).output());
            match out {
                Ok(o) => print!("{}", String::from_utf8_lossy(&o.stdout)),
                Err(e) => println!("memory case {case}: cannot run: {e}"),
            }
        }
    }
    if wanted("allocations") {
        allocations_per_span();
    }
    if wanted("time") {
        time_per_span();
    }
    if wanted("kubernetes") {
        kubernetes_per_span();
    }
    if wanted("tenants") {
        tenants_per_span();
    }
}
