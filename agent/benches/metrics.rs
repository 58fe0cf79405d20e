//! What the metrics stage costs, measured without criterion so that the
//! figures hold on a busy machine:
//!
//! - time per span: the pipeline fed with recorded HTTP/1.x records, with
//!   and without the metrics stage, and the store alone. Each figure is the
//!   fastest of many rounds (the round least disturbed by other work).
//! - memory: the resident set size of this process before and after
//!   building 10,000 distinct series (and rendering them for Prometheus
//!   and OTLP), read from `/proc/self/status`.
//!
//! `cargo bench -p sonde --bench metrics` prints both.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sonde::capture::{Clock, Endpoint, Endpoints, encode_data};
use sonde::config::MetricsConfig;
use sonde::enrich::{HostInfo, ProcessResources, Resource};
use sonde::metrics::prometheus::{Format, Renderer};
use sonde::metrics::{Metrics, Store, Temporality, otlp, store_options, unix_now_ns};
use sonde::pipeline::{Pipeline, PipelineOptions, SpanSink};
use sonde::span::model::{AttrValue, Span, SpanKind, SpanStatus};
use sonde::stats::Stats;
use sonde_common::{AF_INET, DIR_EGRESS, DIR_INGRESS, EventHeader, ROLE_SERVER, SockAddrs};

/// The agent's allocator, so the figures match the agent.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct CountingSink(u64);

impl SpanSink for CountingSink {
    fn send(&mut self, _resource: Arc<Resource>, span: Span) {
        black_box(&span);
        self.0 += 1;
    }
}

const CONNS: u32 = 64;
const PAIRS_PER_CONN: u32 = 16;

/// The records of the criterion pipeline bench: `CONNS` server connections
/// with `PAIRS_PER_CONN` request/response pairs each.
fn recorded_events() -> Vec<Vec<u8>> {
    let request = b"GET /api/v1/users/12345/orders?limit=10 HTTP/1.1\r\nHost: shop.internal:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
    let response = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: keep-alive\r\n\r\n{\"orders\":[1,2,3],\"n\":3}\r\n";
    let mut records = Vec::new();
    let mut ts = 1_000_000u64;
    for _ in 0..PAIRS_PER_CONN {
        for conn in 0..CONNS {
            let header = |direction, len: usize, ts: u64| EventHeader {
                direction,
                start_ns: ts,
                end_ns: ts + 1_000,
                tgid: 1000 + conn % 4,
                tid: 1000 + conn % 4,
                fd: 10 + conn,
                role: ROLE_SERVER,
                generation: 1,
                total_len: len as u64,
                syscall: 1,
                addrs: SockAddrs {
                    family: AF_INET,
                    local_port: 8080,
                    peer_port: 40000 + conn as u16,
                    _pad: 0,
                    local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    peer_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                },
                ..Default::default()
            };
            ts += 10_000;
            records.push(encode_data(
                &header(DIR_INGRESS, request.len(), ts),
                request,
            ));
            ts += 50_000;
            records.push(encode_data(
                &header(DIR_EGRESS, response.len(), ts),
                response,
            ));
        }
    }
    records
}

fn pipeline(metrics: Option<Arc<Metrics>>) -> Pipeline<CountingSink> {
    let mut p = Pipeline::new(
        PipelineOptions {
            max_connections: 4096,
            max_head_bytes: 16384,
            spans: Default::default(),
        },
        Clock::with_offset(0),
        ProcessResources::new(HostInfo {
            host_name: "bench".into(),
            host_id: None,
        }),
        CountingSink(0),
        Arc::new(Stats::default()),
    );
    if let Some(m) = metrics {
        p.set_metrics(m);
    }
    p
}

fn agent() -> Arc<Resource> {
    Arc::new(Resource {
        service_name: "sonde".into(),
        attributes: vec![("service.name".into(), "sonde".into())],
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
    }
}

fn time_per_span() {
    let records = recorded_events();
    let pairs = f64::from(CONNS * PAIRS_PER_CONN);
    let rounds = 300;

    let mut without = pipeline(None);
    let t_without = fastest(rounds, || {
        for r in &records {
            without.handle_record(black_box(r));
        }
    });
    let metrics = Metrics::new(
        store_options(&MetricsConfig::default()),
        agent(),
        Arc::new(Stats::default()),
    );
    let mut with = pipeline(Some(metrics));
    let t_with = fastest(rounds, || {
        for r in &records {
            with.handle_record(black_box(r));
        }
    });
    let ns = |d: Duration| d.as_nanos() as f64 / pairs;
    println!(
        "pipeline, per span: without metrics {:.0} ns, with metrics {:.0} ns, added {:.0} ns",
        ns(t_without),
        ns(t_with),
        ns(t_with) - ns(t_without)
    );

    let spans: Vec<Span> = (0..1024u64)
        .map(|i| span(&format!("/api/r{}", i % 8), 1_000_000_000 + i * 1000, i % 9))
        .collect();
    let shop = Arc::new(Resource {
        service_name: "shop".into(),
        attributes: vec![("service.name".into(), "shop".into())],
    });
    let endpoints = Endpoints {
        local: Endpoint::Ip([10, 1, 2, 4].into(), 8080),
        peer: Endpoint::Ip([10, 1, 2, 3].into(), 40000),
    };
    for (name, graph) in [
        ("store alone, service graph on", true),
        ("store alone, service graph off", false),
    ] {
        let mut config = MetricsConfig::default();
        config.service_graph.enabled = graph;
        let mut store = Store::new(store_options(&config), agent());
        let t = fastest(rounds, || {
            for s in &spans {
                store.record(&shop, black_box(s), &endpoints);
            }
        });
        println!(
            "{name}, per span: {:.0} ns",
            t.as_nanos() as f64 / spans.len() as f64
        );
    }
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
    let mut config = MetricsConfig::default();
    config.max_series_per_metric = 100_000;
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
    let snap = metrics.snapshot(Temporality::Cumulative);
    let mut page_bytes = 0;
    let mut renderer = Renderer::new(&snap, Format::OpenMetrics);
    let mut buf = String::with_capacity(80 * 1024);
    loop {
        buf.clear();
        let more = renderer.fill(&mut buf, 64 * 1024);
        page_bytes += buf.len();
        black_box(&buf);
        if !more {
            break;
        }
    }
    let mut requests = 0;
    let mut request_bytes = 0;
    for req in otlp::Requests::new(&snap, otlp::MAX_POINTS_PER_REQUEST) {
        requests += 1;
        request_bytes += prost::Message::encoded_len(&req);
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
        "  RSS {:.1} MiB at start, {:.1} MiB with the series built, {:.1} MiB after a snapshot \
         and both renderings; peak {:.1} MiB",
        before as f64 / 1024.0,
        built as f64 / 1024.0,
        after as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    drop(snap);
}

fn main() {
    // Memory first, while the process is fresh; `cargo bench` passes
    // `--bench`, nothing else to parse.
    memory(1000, false);
    memory(1000, true);
    time_per_span();
}
