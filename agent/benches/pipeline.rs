//! The user-space pipeline fed with recorded events, no kernel: decode,
//! connection table, HTTP/1.x parsing, pairing and span building.
//!
//! `cargo xtask bench pipeline` runs it; the figure to read is the
//! throughput in elements (request/response pairs) per second.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sonde::capture::{Clock, encode_data};
use sonde::enrich::{HostInfo, ProcessResources, Resource};
use sonde::pipeline::{Pipeline, PipelineOptions, SpanSink};
use sonde::span::model::Span;
use sonde::stats::Stats;
use sonde_common::{AF_INET, DIR_EGRESS, DIR_INGRESS, EventHeader, ROLE_SERVER, SockAddrs};

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

const CONNS: u32 = 64;
const PAIRS_PER_CONN: u32 = 16;

/// Records as the kernel would ship them: on each of `CONNS` server
/// connections, `PAIRS_PER_CONN` requests read and responses written.
fn recorded_events() -> Vec<Vec<u8>> {
    let request = b"GET /api/v1/users/12345/orders?limit=10 HTTP/1.1\r\nHost: shop.internal:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
    let response = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: keep-alive\r\n\r\n{\"orders\":[1,2,3],\"n\":3}\r\n";
    let mut records = Vec::new();
    let mut ts = 1_000_000u64;
    for round in 0..PAIRS_PER_CONN {
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
            let _ = round;
        }
    }
    records
}

fn bench_pipeline(c: &mut Criterion) {
    let records = recorded_events();
    let pairs = u64::from(CONNS * PAIRS_PER_CONN);
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(pairs));
    group.bench_function("http1_pairs", |b| {
        let stats = Arc::new(Stats::default());
        let mut pipeline = Pipeline::new(
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
            stats,
        );
        b.iter(|| {
            for r in &records {
                pipeline.handle_record(black_box(r));
            }
        });
        assert!(pipeline.sink_mut().0 > 0, "the bench built no spans");
    });
    group.finish();
}

criterion_group!(benches, bench_pipeline);
criterion_main!(benches);
