//! The user-space pipeline fed with recorded events, no kernel: decode,
//! connection table, protocol parsing (HTTP/1.x, HTTP/2 with gRPC, Redis,
//! MySQL), pairing and span building.
//!
//! `cargo xtask bench pipeline` runs it; the figure to read is the
//! throughput in elements (request/response pairs, gRPC calls) per second.
//!
//! `grpc_unary` replays a real grpcio conversation (fixtures/grpc: one
//! h2c connection, 256 unary calls, 8 in flight) as a server-side trace:
//! the connection opens, carries every call and closes once per iteration.
//!
//! `http1_pairs`, `http1_pairs_with_red_metrics` and
//! `http1_pairs_with_metrics` run the same records without the metrics
//! stage, with RED histograms and exemplars, and with the service graph
//! too; every pair makes one span, so the difference of their times per
//! element is what the stage adds per span. `metrics/record` times the
//! store alone. `cargo bench -p sonde --bench metrics` measures the same
//! in a way that holds on a busy machine, and the stage's memory.
//!
//! `http1_pairs_in_pods`, `http1_pairs_in_pods_k8s` and
//! `http1_pairs_in_pods_k8s_publishing` run the same records from
//! processes in pods (a fake `/proc`): labelled from their cgroups only,
//! with Kubernetes metadata of 10,000 pods, and with a new metadata
//! snapshot published before each pass (1,024 spans). Their difference is
//! what pod metadata adds per span (`bench metrics -- kubernetes` too).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
mod pods;
mod records;

use records::{
    CONNS, HTTP_RESPONSE, MYSQL_OK, MYSQL_QUERY, PAIRS_PER_CONN, REDIS_COMMAND, REDIS_REPLY,
    TENANT_REQUEST, TENANT_RULES, recorded, recorded_events, server_header,
};
use sonde::capture::{Clock, encode_close, encode_data};
use sonde::capture::{Endpoint, Endpoints};
use sonde::config::{MetricsConfig, SampleConfig};
use sonde::enrich::tenant::Tenants;
use sonde::enrich::{HostInfo, ProcessResources, Resource};
use sonde::metrics::{Metrics, Store, store_options};
use sonde::pipeline::{Pipeline, PipelineOptions, SpanSink};
use sonde::span::model::{AttrValue, Span, SpanKind, SpanStatus};
use sonde::stats::Stats;
use sonde_common::{DIR_EGRESS, DIR_INGRESS};

/// The agent's allocator (see main.rs), so the figure matches the agent.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Counts spans instead of exporting them.
struct CountingSink(u64);

impl SpanSink for CountingSink {
    fn send(&mut self, _resource: Arc<Resource>, span: Span) {
        black_box(&span);
        self.0 += 1;
    }
}

/// Keeps spans, to check what a bench's records make.
struct CollectingSink(Vec<Span>);

impl SpanSink for CollectingSink {
    fn send(&mut self, _resource: Arc<Resource>, span: Span) {
        self.0.push(span);
    }
}

fn pipeline(stats: Arc<Stats>) -> Pipeline<CountingSink> {
    pipeline_with(stats, CountingSink(0))
}

fn pipeline_with<S: SpanSink>(stats: Arc<Stats>, sink: S) -> Pipeline<S> {
    let resources = ProcessResources::new(HostInfo {
        host_name: "bench".into(),
        host_id: None,
    });
    pipeline_over(resources, stats, sink)
}

fn pipeline_over<S: SpanSink>(
    resources: ProcessResources,
    stats: Arc<Stats>,
    sink: S,
) -> Pipeline<S> {
    Pipeline::new(
        PipelineOptions::new(4096, Default::default(), Default::default()),
        Clock::with_offset(0),
        resources,
        sink,
        stats,
    )
}

/// Feeds every record of `records` to `pipeline` and hands its spans on.
fn replay<S: SpanSink>(pipeline: &mut Pipeline<S>, records: &[Vec<u8>]) {
    for r in records {
        pipeline.read_record(black_box(r));
    }
    pipeline.flush_spans();
}

/// Gives `pipeline` a metrics stage of `config`, under the agent's own
/// resource.
fn with_metrics<S: SpanSink>(
    pipeline: &mut Pipeline<S>,
    config: &MetricsConfig,
    stats: Arc<Stats>,
) -> Arc<Metrics> {
    let agent = Arc::new(Resource {
        service_name: "sonde".into(),
        attributes: Vec::new(),
        ..Default::default()
    });
    let metrics = Metrics::new(store_options(config), agent, stats);
    pipeline.set_metrics(metrics.clone());
    metrics
}

/// What fixtures/grpc/capture.py recorded: 256 calls of
/// /demo.Greeter/SayHello from a grpcio client to a grpcio server on one
/// connection, as a sequence of reads made by a relaying proxy.
const GRPC_CAPTURE: &[u8] = include_bytes!("fixtures/grpc/unary.log");
/// Calls in [`GRPC_CAPTURE`].
const GRPC_CALLS: u64 = 256;

/// The reads of a capture in the format of fixtures/grpc (and of the Redis
/// protocol fixtures): a direction byte, `>` client to server or `<`
/// server to client, a 4-byte big-endian length, the bytes.
fn capture_reads(log: &[u8]) -> Vec<(bool, &[u8])> {
    let mut reads = Vec::new();
    let mut rest = log;
    while let [mark, a, b, c, d, tail @ ..] = rest {
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        assert!(
            matches!(mark, b'>' | b'<') && tail.len() >= len,
            "malformed capture record"
        );
        reads.push((*mark == b'>', &tail[..len]));
        rest = &tail[len..];
    }
    assert!(rest.is_empty(), "capture ends inside a record header");
    reads
}

/// The grpcio server's side of [`GRPC_CAPTURE`] as the kernel would ship
/// it: the client's bytes read, the server's written, one syscall per read
/// the proxy made, then the close.
fn recorded_grpc() -> Vec<Vec<u8>> {
    let ends = (([127, 0, 0, 1], 50051), ([127, 0, 0, 1], 41000));
    let header = |direction, len: usize, ts: u64| server_header(2000, 9, ends, direction, len, ts);
    let mut records = Vec::new();
    let mut ts = 1_000_000u64;
    for (from_client, bytes) in capture_reads(GRPC_CAPTURE) {
        ts += 20_000;
        let direction = if from_client { DIR_INGRESS } else { DIR_EGRESS };
        records.push(encode_data(&header(direction, bytes.len(), ts), bytes));
    }
    records.push(encode_close(&header(0, 0, ts + 20_000)));
    records
}

/// Runs the gRPC records once and checks they make one server span per
/// call, each with `rpc.grpc.status_code` 0, and that nothing was lost.
fn check_grpc_records(records: &[Vec<u8>]) {
    let stats = Arc::new(Stats::default());
    let mut pipeline = pipeline_with(stats.clone(), CollectingSink(Vec::new()));
    for r in records {
        pipeline.handle_record(r);
    }
    assert_eq!(pipeline.connections(), 0, "the close record ended nothing");
    let spans = pipeline.into_sink().0;
    assert_eq!(
        spans.len() as u64,
        GRPC_CALLS,
        "grpc_unary: one span per call expected"
    );
    let attr = |s: &Span, key: &str| {
        s.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    };
    for s in &spans {
        assert_eq!(s.kind, SpanKind::Server, "{s:?}");
        assert_eq!(s.name, "demo.Greeter/SayHello", "{s:?}");
        assert_eq!(
            attr(s, "rpc.system"),
            Some(AttrValue::from("grpc")),
            "{s:?}"
        );
        assert_eq!(
            attr(s, "rpc.grpc.status_code"),
            Some(AttrValue::Int(0)),
            "{s:?}"
        );
    }
    for (name, counter) in [
        ("parser resyncs", &stats.parser_resyncs),
        ("requests unanswered", &stats.requests_unanswered),
        ("responses unpaired", &stats.responses_unpaired),
    ] {
        assert_eq!(
            counter.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "grpc_unary: {name}"
        );
    }
}

fn bench_pipeline(c: &mut Criterion) {
    let records = recorded_events();
    let pairs = u64::from(CONNS * PAIRS_PER_CONN);
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(pairs));
    group.bench_function("http1_pairs", |b| {
        let mut pipeline = pipeline(Arc::new(Stats::default()));
        b.iter(|| {
            replay(&mut pipeline, &records);
        });
        assert!(pipeline.sink_mut().0 > 0, "the bench built no spans");
    });
    // What the agent does by default: metrics from every span, and the
    // sampler keeping few (one operation here, so at most its share per
    // second of span time). Beside it, the same with every span exported,
    // which builds each span whole.
    for (name, sampled) in [
        ("http1_pairs_metrics_all_exported", false),
        ("http1_pairs_metrics_sampled", true),
    ] {
        group.bench_function(name, |b| {
            let stats = Arc::new(Stats::default());
            let mut pipeline = pipeline(stats.clone());
            with_metrics(&mut pipeline, &MetricsConfig::default(), stats);
            if sampled {
                pipeline.set_sample_config(SampleConfig::default());
            }
            b.iter(|| {
                replay(&mut pipeline, &records);
            });
            assert!(
                pipeline.sink_mut().0 > 0,
                "{name}: the bench built no spans"
            );
        });
    }
    // Processes in pods, without and with their pods' metadata.
    {
        let proc = pods::FakeProc::new();
        let mut publisher = pods::Publisher::new(&pods::snapshot());
        let metadata = publisher.metadata();
        pods::check_labelled(&mut proc.resources(Some(metadata.clone())));
        for (name, metadata) in [
            ("http1_pairs_in_pods", None),
            ("http1_pairs_in_pods_k8s", Some(metadata.clone())),
        ] {
            group.bench_function(name, |b| {
                let resources = proc.resources(metadata.clone());
                let mut pipeline = pipeline_over(resources, Arc::default(), CountingSink(0));
                b.iter(|| {
                    replay(&mut pipeline, &records);
                });
                assert!(
                    pipeline.sink_mut().0 > 0,
                    "{name}: the bench built no spans"
                );
            });
        }
        // The watcher publishes at most every 100 ms; one publish per
        // pass is one per 1,024 spans, what 10,000 spans/s would see. The
        // publish itself (the watcher's work, on its own thread) is not
        // timed.
        group.bench_function("http1_pairs_in_pods_k8s_publishing", |b| {
            let resources = proc.resources(Some(metadata.clone()));
            let mut pipeline = pipeline_over(resources, Arc::default(), CountingSink(0));
            b.iter_custom(|iters| {
                let mut timed = std::time::Duration::ZERO;
                for _ in 0..iters {
                    publisher.publish(false);
                    let start = std::time::Instant::now();
                    replay(&mut pipeline, &records);
                    timed += start.elapsed();
                }
                timed
            });
            assert!(pipeline.sink_mut().0 > 0, "the bench built no spans");
        });
    }
    for (name, request, response) in [
        ("redis_commands", REDIS_COMMAND, REDIS_REPLY),
        ("mysql_queries", MYSQL_QUERY, MYSQL_OK),
    ] {
        let records = recorded(request, response, [127, 0, 0, 1], [127, 0, 0, 1]);
        group.bench_function(name, |b| {
            let mut pipeline = pipeline(Arc::new(Stats::default()));
            b.iter(|| {
                replay(&mut pipeline, &records);
            });
            assert!(
                pipeline.sink_mut().0 > 0,
                "{name}: the bench built no spans"
            );
        });
    }
    // gRPC: a whole connection per iteration, so the preface and the HPACK
    // tables start over each time as they would on a new channel.
    {
        let records = recorded_grpc();
        check_grpc_records(&records);
        group.throughput(Throughput::Elements(GRPC_CALLS));
        group.bench_function("grpc_unary", |b| {
            let mut pipeline = pipeline(Arc::new(Stats::default()));
            b.iter(|| {
                replay(&mut pipeline, &records);
            });
            let spans = pipeline.sink_mut().0;
            assert!(
                spans > 0 && spans.is_multiple_of(GRPC_CALLS),
                "grpc_unary: {spans} spans, not a whole number of connections' worth"
            );
        });
        group.throughput(Throughput::Elements(pairs));
    }
    // With the metrics stage: RED histograms and exemplars alone, then
    // with the service graph too. These records are on loopback with no
    // client side, so every span waits for a client span that never comes
    // and is then counted alone: the graph's most expensive case.
    for (name, graph) in [
        ("http1_pairs_with_red_metrics", false),
        ("http1_pairs_with_metrics", true),
    ] {
        group.bench_function(name, |b| {
            let stats = Arc::new(Stats::default());
            let mut pipeline = pipeline(stats.clone());
            let mut config = MetricsConfig::default();
            config.service_graph.enabled = graph;
            let metrics = with_metrics(&mut pipeline, &config, stats);
            b.iter(|| {
                replay(&mut pipeline, &records);
            });
            assert!(pipeline.sink_mut().0 > 0, "the bench built no spans");
            let counts = metrics.recorder().series_counts();
            assert!(
                counts.iter().any(|(_, n, _)| *n > 0),
                "the bench made no series"
            );
        });
    }
    // Tenants: requests that carry `x-tenant-id`, with the metrics stage
    // (series and edges get the tenant label), without tenant rules and
    // with a header rule first, then process rules and a default. Their
    // difference is what tenant resolution adds per span.
    {
        let records = recorded(
            TENANT_REQUEST,
            HTTP_RESPONSE,
            [127, 0, 0, 1],
            [127, 0, 0, 1],
        );
        let rules = sonde::config::parse(TENANT_RULES)
            .expect("the bench's tenant rules")
            .tenants;
        for (name, tenants) in [
            ("http1_pairs_tenant_header_no_rules", None),
            ("http1_pairs_tenant_header_rules", Some(rules)),
        ] {
            group.bench_function(name, |b| {
                let stats = Arc::new(Stats::default());
                let mut resources = ProcessResources::new(HostInfo {
                    host_name: "bench".into(),
                    host_id: None,
                });
                if let Some(t) = &tenants {
                    resources = resources.with_tenants(Tenants::new(t.clone()));
                }
                let mut pipeline =
                    pipeline_over(resources, stats.clone(), CollectingSink(Vec::new()));
                with_metrics(&mut pipeline, &MetricsConfig::default(), stats);
                b.iter(|| {
                    replay(&mut pipeline, &records);
                    let spans = &mut pipeline.sink_mut().0;
                    let last = spans.pop().expect("the bench built spans");
                    let want = tenants.as_ref().map(|_| "acme");
                    assert_eq!(last.tenant.as_deref(), want, "{name}: the span's tenant");
                    spans.clear();
                });
            });
        }
    }
    group.finish();
}

/// A server span like the ones the pipeline bench builds.
fn server_span(i: u64) -> Span {
    Span {
        trace_id: [i as u8; 16],
        span_id: [i as u8; 8],
        parent_span_id: None,
        name: "GET /api/v1/users/{id}/orders".into(),
        kind: SpanKind::Server,
        start_unix_ns: 1_000_000 + i * 100_000,
        end_unix_ns: 1_000_000 + i * 100_000 + 50_000 + (i % 7) * 1_000_000,
        attributes: vec![
            ("http.request.method", AttrValue::from("GET")),
            ("http.response.status_code", AttrValue::Int(200)),
            ("url.path", "/api/v1/users/12345/orders".into()),
            ("url.scheme", "http".into()),
            ("http.route", "/api/v1/users/{id}/orders".into()),
            ("network.protocol.name", "http".into()),
            ("network.protocol.version", "1.1".into()),
            ("network.transport", "tcp".into()),
            ("network.peer.address", "127.0.0.1".into()),
            ("network.peer.port", AttrValue::Int(40000)),
            ("server.address", "shop.internal".into()),
            ("server.port", AttrValue::Int(8080)),
            ("client.address", "127.0.0.1".into()),
            ("client.port", AttrValue::Int(40000)),
            ("user_agent.original", "curl/8.5.0".into()),
            ("http.response.body.size", AttrValue::Int(27)),
        ],
        status: SpanStatus::Unset,
        pid: 1000,
        endpoints: sonde::capture::Endpoints::UNKNOWN,
        tenant: None,
        tenant_headers: Default::default(),
        rest: Default::default(),
    }
}

fn bench_metrics(c: &mut Criterion) {
    let spans: Vec<Span> = (0..1024).map(server_span).collect();
    let resource = Arc::new(Resource {
        service_name: "shop".into(),
        attributes: vec![("service.name".into(), "shop".into())],
        ..Default::default()
    });
    let agent = Arc::new(Resource {
        service_name: "sonde".into(),
        attributes: Vec::new(),
        ..Default::default()
    });
    let endpoints = Endpoints {
        local: Endpoint::Ip([127, 0, 0, 1].into(), 8080),
        peer: Endpoint::Ip([127, 0, 0, 1].into(), 40000),
    };
    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Elements(spans.len() as u64));
    for (name, graph) in [("record", true), ("record_no_graph", false)] {
        group.bench_function(name, |b| {
            let mut config = MetricsConfig::default();
            config.service_graph.enabled = graph;
            let mut store = Store::new(store_options(&config), agent.clone());
            b.iter(|| {
                for s in &spans {
                    store.record(&resource, black_box(s), &endpoints);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pipeline, bench_metrics);
criterion_main!(benches);
