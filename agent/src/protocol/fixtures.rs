//! Golden tests of every protocol's recorded conversations.
//!
//! Each file in a protocol's `fixtures/` folder is a real conversation (see
//! that folder's README.md): `.log` files hold one record per read a
//! relaying proxy made ('>' client to server or '<' server to client, a
//! 4-byte big-endian length, the bytes), `.txt` files one line per read
//! (`C <hex>` or `S <hex>`, `#` lines are comments). Each goes through the
//! pipeline twice, as the client and as the server would have written and
//! read it, one syscall per read; the spans and the loss counters must match
//! the `<name>.spans` file beside it. After a deliberate change, write the
//! files anew with `SONDE_BLESS=1 cargo test -p sonde --lib fixtures` and
//! read their diff.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sonde_common::{
    AF_INET, DIR_EGRESS, DIR_INGRESS, EventHeader, ROLE_CLIENT, ROLE_SERVER, SockAddrs,
};

use super::PROTOCOLS;
use super::test_reads::{Read, from_log, from_txt};
use crate::capture::{Clock, encode_close, encode_data};
use crate::enrich::{HostInfo, ProcessResources, Resource};
use crate::pipeline::{Pipeline, PipelineOptions, SpanSink};
use crate::span::model::{AttrValue, Span, SpanKind, SpanStatus};
use crate::stats::Stats;

/// Reads a fixture in either format.
fn load(path: &Path) -> Vec<Read> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reads = if path.extension().is_some_and(|e| e == "txt") {
        from_txt(&String::from_utf8(raw).expect("a .txt fixture is text"))
    } else {
        from_log(&raw)
    };
    assert!(!reads.is_empty(), "{}: no reads", path.display());
    reads
}

struct Collect(Vec<Span>);

impl SpanSink for Collect {
    fn send(&mut self, _resource: Arc<Resource>, span: Span) {
        self.0.push(span);
    }
}

const CLIENT: ([u8; 4], u16) = ([10, 0, 0, 1], 50000);
const SERVER: ([u8; 4], u16) = ([10, 0, 0, 2], 7000);

/// The spans and loss counters of `reads` seen from the client (`as_client`)
/// or the server, as text.
fn replay(reads: &[Read], as_client: bool) -> String {
    let stats = Arc::new(Stats::default());
    let mut pipeline = Pipeline::new(
        PipelineOptions::new(16, super::Limits::default(), Default::default()),
        Clock::with_offset(0),
        ProcessResources::new(HostInfo {
            host_name: "fixture".into(),
            host_id: None,
        }),
        Collect(Vec::new()),
        stats.clone(),
    );
    let (local, peer) = if as_client {
        (CLIENT, SERVER)
    } else {
        (SERVER, CLIENT)
    };
    let mut addrs = SockAddrs {
        family: AF_INET,
        local_port: local.1,
        peer_port: peer.1,
        ..Default::default()
    };
    addrs.local_addr[..4].copy_from_slice(&local.0);
    addrs.peer_addr[..4].copy_from_slice(&peer.0);
    let mut header = EventHeader {
        tgid: 4_000_000,
        tid: 4_000_000,
        fd: 5,
        generation: 1,
        role: if as_client { ROLE_CLIENT } else { ROLE_SERVER },
        addrs,
        ..Default::default()
    };
    for (i, read) in reads.iter().enumerate() {
        header.direction = if read.from_client == as_client {
            DIR_EGRESS
        } else {
            DIR_INGRESS
        };
        header.start_ns = 1_000_000 * (i as u64 + 1);
        header.end_ns = header.start_ns + 1_000;
        header.total_len = read.bytes.len() as u64;
        pipeline.handle_record(&encode_data(&header, &read.bytes));
    }
    header.end_ns = 1_000_000 * (reads.len() as u64 + 1);
    pipeline.handle_record(&encode_close(&header));

    let mut out = String::new();
    for span in &pipeline.sink_mut().0 {
        render(&mut out, span);
    }
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "lost: resync_bytes={} resyncs={} unanswered={} unpaired={}",
        count(&stats.parser_resync_bytes),
        count(&stats.parser_resyncs),
        count(&stats.requests_unanswered),
        count(&stats.responses_unpaired),
    );
    out
}

/// One span as text: what the conventions say (attributes by name), times
/// in µs since the conversation's first read, no random ids.
fn render(out: &mut String, span: &Span) {
    let kind = match span.kind {
        SpanKind::Client => "CLIENT",
        SpanKind::Server => "SERVER",
    };
    let _ = writeln!(
        out,
        "{kind} {:?} {}..{} us{}",
        span.name,
        span.start_unix_ns / 1_000,
        span.end_unix_ns / 1_000,
        if span.parent_span_id.is_some() {
            " (has parent)"
        } else {
            ""
        },
    );
    if let SpanStatus::Error { description } = &span.status {
        let _ = writeln!(out, "  status: error {description:?}");
    }
    // By name: the order attributes are written in is not what a span says.
    let mut attributes: Vec<_> = span.attributes.iter().collect();
    attributes.sort_by_key(|(key, _)| *key);
    for (key, value) in attributes {
        let _ = match value {
            AttrValue::Str(s) => writeln!(out, "  {key} = {:?}", s.as_str()),
            AttrValue::Int(i) => writeln!(out, "  {key} = {i}"),
            AttrValue::Bool(b) => writeln!(out, "  {key} = {b}"),
        };
    }
}

/// Every fixture of every protocol in the table, by folder.
fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol");
    let mut out = Vec::new();
    for spec in PROTOCOLS {
        let dir = root.join(spec.name).join("fixtures");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log" || e == "txt") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_fixture_gives_its_expected_spans() {
    let bless = std::env::var_os("SONDE_BLESS").is_some();
    let all = fixtures();
    for spec in PROTOCOLS {
        assert!(
            all.iter()
                .any(|p| p.components().any(|c| c.as_os_str() == spec.name)),
            "protocol {} has no fixture",
            spec.name
        );
    }
    let mut wrong = Vec::new();
    for path in &all {
        let reads = load(path);
        let got = format!(
            "# seen by the client\n{}\n# seen by the server\n{}",
            replay(&reads, true),
            replay(&reads, false)
        );
        let expected_path = path.with_extension("spans");
        if bless {
            std::fs::write(&expected_path, &got).expect("write the expected spans");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            wrong.push(format!(
                "{}: spans differ from {}\n--- got ---\n{got}",
                path.display(),
                expected_path.display()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
