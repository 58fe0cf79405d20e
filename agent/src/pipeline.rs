//! Wires the stages together for one stream of kernel records:
//! capture (decode) -> conn -> protocol -> span -> enrich -> sink.
//!
//! The pipeline does no I/O of its own besides what `enrich` reads from
//! /proc; records come in as bytes and spans leave through a [`SpanSink`],
//! so it runs the same under the agent and in benches. With a metrics stage
//! set ([`Pipeline::set_metrics`]) every span is aggregated before it
//! reaches the sink, that is before the sample stage
//! ([`Pipeline::set_sampler`]) decides what is exported.

use std::sync::Arc;

use crate::capture::{self, Clock, ConnId, Event, Role};
use crate::config::SampleConfig;
use crate::conn::{Conn, ConnTable, Displaced};
use crate::enrich::tenant::{Tenants, tenant_of};
use crate::enrich::{CgroupOrder, ProcessResources, Resource};
use crate::export::{ExportHandle, ExportItem};
use crate::metrics::Metrics;
use crate::protocol::headers::header_names;
use crate::protocol::{
    Chunk, Detect, Direction, Limits, PROTOCOLS, ProtocolSpec, Session, SessionOptions,
};
use crate::sample::Sampler;
use crate::span::model::Span;
use crate::span::{PairingOut, SpanContext, SpanOptions};
use crate::stats::Stats;

/// Where finished spans go.
pub trait SpanSink {
    fn send(&mut self, resource: Arc<Resource>, span: Span);
}

/// The agent's sink: the export queue. Spans are held until `flush`, so
/// the export task is woken once per batch of records, not once per span.
pub struct ExportSink {
    handle: ExportHandle,
    held: Vec<ExportItem>,
}

impl ExportSink {
    pub fn new(handle: ExportHandle) -> Self {
        ExportSink {
            handle,
            held: Vec::new(),
        }
    }

    /// Hands every held span to the export queue.
    pub fn flush(&mut self) {
        for item in self.held.drain(..) {
            self.handle.try_send(item);
        }
    }

    /// The export stage, to change its tenant routes (a config reload).
    pub fn handle_mut(&mut self) -> &mut ExportHandle {
        self.flush();
        &mut self.handle
    }

    pub fn into_handle(mut self) -> ExportHandle {
        self.flush();
        self.handle
    }
}

impl SpanSink for ExportSink {
    fn send(&mut self, resource: Arc<Resource>, span: Span) {
        self.held.push(ExportItem { resource, span });
    }
}

/// Chunks with data we look at before deciding a connection carries no
/// protocol we know.
const DETECT_CHUNKS: usize = 4;

/// What we know of a connection's protocol.
enum Protocol {
    /// Not decided yet; keeps the chunks seen so far.
    Unknown(Box<Detecting>),
    /// Decided: the protocol's entry in the table and the session.
    Known(&'static ProtocolSpec, Box<dyn Session>),
    /// No supported protocol: the kernel was told to ship only message starts.
    Muted,
    /// Its process is excluded by the `select` rules: the kernel was told
    /// to ship nothing more.
    Excluded,
}

/// What the pipeline asks of the kernel, taken by the capture loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelOrder {
    /// Ship only message starts of this connection: it carries no
    /// protocol the agent parses.
    Mute(u64, u64),
    /// Ship nothing more of this connection: its process is excluded.
    Silence(u64, u64),
    /// Mute, or trace again, the connections a cgroup opens.
    Cgroup(CgroupOrder),
}

impl KernelOrder {
    fn mute((sock, generation): (u64, u64)) -> Self {
        KernelOrder::Mute(sock, generation)
    }

    fn silence((sock, generation): (u64, u64)) -> Self {
        KernelOrder::Silence(sock, generation)
    }
}

/// The kernel's key (the socket) and generation of a connection, for those
/// the kernel's socket programs track (bytes a TLS library hands over are
/// not theirs).
fn kernel_key(id: &ConnId) -> Option<(u64, u64)> {
    (id.source == capture::Source::Syscall && id.sock != 0).then_some((id.sock, id.generation))
}

/// The first chunks of a connection whose protocol is not known yet. Some
/// programs read a message in pieces (MySQL clients read the 4-byte packet
/// header, then the payload), so detection looks at each direction's bytes
/// together, and the chunks are replayed into the parser once it is chosen.
#[derive(Default)]
struct Detecting {
    chunks: Vec<OwnedChunk>,
}

struct OwnedChunk {
    dir: Direction,
    data: Vec<u8>,
    total_len: u64,
    start_ns: u64,
    end_ns: u64,
}

impl OwnedChunk {
    fn as_chunk(&self) -> Chunk<'_> {
        Chunk {
            data: &self.data,
            total_len: self.total_len,
            start_ns: self.start_ns,
            end_ns: self.end_ns,
        }
    }
}

impl Detecting {
    /// The bytes `dir` carried so far, as one stream up to its first gap.
    fn prefix(&self, dir: Direction) -> Vec<u8> {
        let mut out = Vec::new();
        for c in self.chunks.iter().filter(|c| c.dir == dir) {
            out.extend_from_slice(&c.data);
            if c.total_len > c.data.len() as u64 {
                break;
            }
        }
        out
    }
}

impl Protocol {
    fn unknown() -> Protocol {
        Protocol::Unknown(Box::default())
    }

    /// The protocol these first bytes start, if one of `protocols` is sure.
    fn detect(
        data: &[u8],
        session: &SessionOptions,
        protocols: &[&'static ProtocolSpec],
    ) -> Result<Protocol, Detect> {
        let mut verdict = Detect::No;
        for &spec in protocols {
            match (spec.detect)(data) {
                Detect::Request | Detect::Response => {
                    return Ok(Protocol::Known(spec, (spec.new_session)(session)));
                }
                Detect::NeedMore => verdict = Detect::NeedMore,
                Detect::No => {}
            }
        }
        Err(verdict)
    }
}

/// Settings of the pipeline.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    pub max_connections: usize,
    pub limits: Limits,
    pub spans: SpanOptions,
    /// The protocols parsed, in detection order (`protocols` in the config).
    pub protocols: Vec<&'static ProtocolSpec>,
}

impl PipelineOptions {
    /// Every protocol, with these limits.
    pub fn new(max_connections: usize, limits: Limits, spans: SpanOptions) -> Self {
        PipelineOptions {
            max_connections,
            limits,
            spans,
            protocols: PROTOCOLS.iter().collect(),
        }
    }
}

pub struct Pipeline<S: SpanSink> {
    conns: ConnTable<Protocol>,
    clock: Clock,
    options: PipelineOptions,
    /// What each new session gets: the limits, and the headers the
    /// tenant rules of `resources` name (read once, in `new`: rules
    /// replaced later must replace these too).
    session: SessionOptions,
    resources: ProcessResources,
    sink: S,
    stats: Arc<Stats>,
    /// What to tell the kernel, taken by the capture loop.
    kernel_orders: Vec<KernelOrder>,
    /// Spans built and not yet handed on ([`Pipeline::flush_spans`]).
    spans: Vec<Span>,
    metrics: Option<Arc<Metrics>>,
    sampler: Option<Sampler>,
}

impl<S: SpanSink> Pipeline<S> {
    pub fn new(
        options: PipelineOptions,
        clock: Clock,
        resources: ProcessResources,
        sink: S,
        stats: Arc<Stats>,
    ) -> Self {
        let session = SessionOptions {
            limits: options.limits,
            kept_headers: header_names(resources.tenants().headers()),
        };
        Pipeline {
            conns: ConnTable::new(options.max_connections),
            clock,
            options,
            session,
            resources,
            sink,
            stats,
            kernel_orders: Vec::new(),
            spans: Vec::new(),
            metrics: None,
            sampler: None,
        }
    }

    /// Exports only the spans `sampler` keeps from now on (metrics still
    /// see every span).
    pub fn set_sampler(&mut self, sampler: Sampler) {
        self.sampler = Some(sampler);
    }

    /// Samples by `config` from now on (a config reload).
    pub fn set_sample_config(&mut self, config: SampleConfig) {
        match &mut self.sampler {
            Some(sampler) => sampler.set_config(config),
            None => self.sampler = Some(Sampler::new(config)),
        }
    }

    /// Parses only `protocols` from now on (a config reload). Connections
    /// not yet recognised are judged by the new list; those of a protocol
    /// turned off drop their session (a request waiting for its answer
    /// makes no span) and are muted in the kernel like a connection of an
    /// unknown protocol.
    pub fn set_protocols(&mut self, protocols: Vec<&'static ProtocolSpec>) {
        for conn in self.conns.iter_mut() {
            let Protocol::Known(spec, _) = &conn.state else {
                continue;
            };
            if protocols.iter().any(|p| p.name == spec.name) {
                continue;
            }
            conn.state = Protocol::Muted;
            self.kernel_orders
                .extend(kernel_key(&conn.id).map(KernelOrder::mute));
        }
        self.options.protocols = protocols;
    }

    /// The settings in force.
    pub fn options(&self) -> &PipelineOptions {
        &self.options
    }

    /// Builds spans with `spans` from now on (a config reload).
    pub fn set_span_options(&mut self, spans: SpanOptions) {
        self.options.spans = spans;
    }

    /// Gives sessions started from now on `limits` (a config reload);
    /// running sessions keep theirs.
    pub fn set_limits(&mut self, limits: Limits) {
        self.options.limits = limits;
        self.session.limits = limits;
    }

    /// Judges tenants by `tenants` from now on (a config reload): each
    /// process's resource is rebuilt on its next span, and every
    /// connection, open or new, keeps the headers the new rules read from
    /// its next request on. Header numbers carry over, so the requests
    /// read before are judged by the header they carried.
    pub fn set_tenants(&mut self, tenants: Tenants) {
        let tenants = tenants.after(self.resources.tenants());
        self.session.kept_headers = header_names(tenants.headers());
        for conn in self.conns.iter_mut() {
            if let Protocol::Known(_, session) = &mut conn.state {
                session.keep_headers(&self.session.kept_headers);
            }
        }
        self.resources.set_tenants(tenants);
    }

    /// The process cache, to change its rules (a config reload).
    pub fn resources_mut(&mut self) -> &mut ProcessResources {
        &mut self.resources
    }

    /// Aggregates every span into `metrics` from now on.
    pub fn set_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
    }

    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Re-reads the monotonic-to-Unix offset (it moves when the wall clock is set).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    pub fn into_sink(self) -> S {
        self.sink
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// What to tell the kernel since the last call: connections that carry
    /// no supported protocol, and the connections and cgroups of excluded
    /// processes.
    pub fn take_kernel_orders(&mut self) -> std::vec::Drain<'_, KernelOrder> {
        self.mute_excluded();
        self.kernel_orders
            .extend(self.resources.take_cgroup_orders().map(KernelOrder::Cgroup));
        self.kernel_orders.drain(..)
    }

    /// Silences the open connections of processes found excluded since the
    /// last call (the pod they are in became known, or changed).
    fn mute_excluded(&mut self) {
        let pids: Vec<u32> = self.resources.take_newly_excluded().collect();
        if pids.is_empty() {
            return;
        }
        for conn in self.conns.iter_mut() {
            if !pids.contains(&conn.id.tgid) || matches!(conn.state, Protocol::Excluded) {
                continue;
            }
            conn.state = Protocol::Excluded;
            self.kernel_orders
                .extend(kernel_key(&conn.id).map(KernelOrder::silence));
        }
    }

    /// Judges the muted cgroups again when the metadata changed (called by
    /// the capture loop's periodic chores).
    pub fn recheck_excluded(&mut self) {
        self.resources.recheck_silenced();
    }

    /// Handles one ring-buffer record and hands on the spans it completed.
    pub fn handle_record(&mut self, record: &[u8]) {
        self.read_record(record);
        self.flush_spans();
    }

    /// Handles one ring-buffer record; the spans it completes may wait for
    /// [`Pipeline::flush_spans`] (the capture loop calls it once per batch
    /// of records).
    pub fn read_record(&mut self, record: &[u8]) {
        Stats::add(&self.stats.events_read, 1);
        match capture::decode(record) {
            Err(_) => Stats::add(&self.stats.events_malformed, 1),
            Ok(Event::Process {
                tgid,
                name,
                cgroup_id,
            }) => self.resources.name_hint(tgid, name, cgroup_id),
            // Re-checked on next use; a process that is gone keeps what was read.
            Ok(Event::Exec { pid, .. } | Event::Exit { pid }) => self.resources.forget(pid),
            Ok(Event::Close { conn, ts_ns }) => {
                if let Some(c) = self.conns.remove(conn) {
                    let end = self.clock.to_unix_ns(ts_ns);
                    self.finish(c, end);
                }
            }
            Ok(Event::Data {
                conn,
                role,
                endpoints,
                direction,
                start_ns,
                end_ns,
                total_len,
                payload,
            }) => {
                Stats::add(&self.stats.bytes_captured, payload.len() as u64);
                Stats::add(
                    &self.stats.bytes_not_captured,
                    total_len.saturating_sub(payload.len() as u64),
                );
                let chunk = Chunk {
                    data: payload,
                    total_len,
                    start_ns: self.clock.to_unix_ns(start_ns),
                    end_ns: self.clock.to_unix_ns(end_ns),
                };
                self.handle_data(conn, role, endpoints, direction, &chunk, end_ns);
            }
        }
    }

    fn handle_data(
        &mut self,
        id: ConnId,
        role: Role,
        endpoints: capture::Endpoints,
        dir: Direction,
        chunk: &Chunk<'_>,
        mono_ns: u64,
    ) {
        let (conn, displaced) = self
            .conns
            .lookup(id, role, endpoints, mono_ns, Protocol::unknown);
        if conn.egress.offset == 0 && conn.ingress.offset == 0 {
            // Read the process's metadata while it surely still runs: a
            // short-lived client may be gone by the time its span is done.
            // A new connection is also when a reused pid shows: re-check it.
            self.resources.forget(id.tgid);
            let (_, traced) = self.resources.lookup(id.tgid);
            if !traced {
                conn.state = Protocol::Excluded;
                self.kernel_orders
                    .extend(kernel_key(&id).map(KernelOrder::silence));
            }
        }
        conn.stream_mut(dir)
            .advance(chunk.total_len, chunk.data.len());
        // What the kernel sent before it learnt the process is excluded.
        if matches!(conn.state, Protocol::Excluded) {
            Stats::add(&self.stats.events_excluded, 1);
            self.finish_displaced(displaced, chunk.start_ns);
            return;
        }

        // Decide the protocol from the first bytes; a muted connection the
        // kernel still shipped bytes for starts over, as it may be a message start.
        if matches!(conn.state, Protocol::Muted) {
            conn.state = Protocol::unknown();
        }
        'parse: {
            let mut replay = Vec::new();
            if let Protocol::Unknown(detecting) = &mut conn.state {
                if chunk.data.is_empty() {
                    break 'parse;
                }
                detecting.chunks.push(OwnedChunk {
                    dir,
                    data: chunk.data.to_vec(),
                    total_len: chunk.total_len,
                    start_ns: chunk.start_ns,
                    end_ns: chunk.end_ns,
                });
                match Protocol::detect(
                    &detecting.prefix(dir),
                    &self.session,
                    &self.options.protocols,
                ) {
                    Ok(protocol) => {
                        replay = std::mem::take(&mut detecting.chunks);
                        conn.state = protocol;
                    }
                    Err(Detect::NeedMore) if detecting.chunks.len() < DETECT_CHUNKS => break 'parse,
                    Err(_) => {
                        conn.state = Protocol::Muted;
                        self.kernel_orders
                            .extend(kernel_key(&id).map(KernelOrder::mute));
                        break 'parse;
                    }
                }
            }

            let Protocol::Known(spec, session) = &mut conn.state else {
                break 'parse;
            };
            let ctx = SpanContext {
                pid: id.tgid,
                endpoints: conn.endpoints,
                options: self.options.spans,
            };
            let mut resyncs = 0;
            if replay.is_empty() {
                resyncs += run_session(
                    session.as_mut(),
                    Some((dir, chunk)),
                    chunk.end_ns,
                    &ctx,
                    &self.stats,
                    &mut self.spans,
                );
            }
            // The chunks kept while detecting, this one last among them.
            for kept in &replay {
                resyncs += run_session(
                    session.as_mut(),
                    Some((kept.dir, &kept.as_chunk())),
                    kept.end_ns,
                    &ctx,
                    &self.stats,
                    &mut self.spans,
                );
            }
            let name = spec.name;
            self.count_parse_errors(name, resyncs);
            // This connection's spans go before those of a connection it displaced.
            self.emit();
        }
        self.finish_displaced(displaced, chunk.start_ns);
    }

    fn finish_displaced(&mut self, displaced: Displaced<Protocol>, end_unix_ns: u64) {
        match displaced {
            Displaced::Nothing => {}
            Displaced::Replaced(old) => self.finish(old, end_unix_ns),
            Displaced::Evicted(old) => {
                Stats::add(&self.stats.conns_evicted, 1);
                self.finish(old, end_unix_ns);
            }
        }
    }

    /// A connection ended (closed, replaced or evicted): finish its messages.
    fn finish(&mut self, mut conn: Conn<Protocol>, end_unix_ns: u64) {
        let Protocol::Known(spec, session) = &mut conn.state else {
            return;
        };
        let ctx = SpanContext {
            pid: conn.id.tgid,
            endpoints: conn.endpoints,
            options: self.options.spans,
        };
        let resyncs = run_session(
            session.as_mut(),
            None,
            end_unix_ns,
            &ctx,
            &self.stats,
            &mut self.spans,
        );
        self.count_parse_errors(spec.name, resyncs);
        self.emit();
    }

    fn count_parse_errors(&self, protocol: &'static str, resyncs: u64) {
        if resyncs > 0
            && let Some(m) = &self.metrics
        {
            m.count_parse_errors(protocol, resyncs);
        }
    }

    /// Finishes connections idle since before `before_mono_ns`.
    pub fn expire_idle(&mut self, before_mono_ns: u64, now_unix_ns: u64) {
        for conn in self.conns.drain_idle(before_mono_ns) {
            self.finish(conn, now_unix_ns);
        }
        self.flush_spans();
        if let Some(m) = &self.metrics {
            m.set_connections(self.conns.len() as u64);
        }
    }

    /// Finishes every connection (at shutdown).
    pub fn finish_all(&mut self, now_unix_ns: u64) {
        for conn in self.conns.drain() {
            self.finish(conn, now_unix_ns);
        }
        self.flush_spans();
    }

    /// Hands the spans built so far on once enough wait.
    fn emit(&mut self) {
        if self.spans.len() >= SPAN_BATCH {
            self.flush_spans();
        }
    }

    /// Hands every span built so far to the metrics stage (when set), the
    /// sampler and the sink. One lock of the metrics store for all of them:
    /// a lock per span cost about a third of what aggregating it does.
    pub fn flush_spans(&mut self) {
        if self.spans.is_empty() {
            return;
        }
        let mut recorder = self.metrics.as_ref().map(|m| m.recorder());
        for mut span in self.spans.drain(..) {
            Stats::add(&self.stats.spans_built, 1);
            let (resource, traced) = self.resources.lookup(span.pid);
            if !traced {
                Stats::add(&self.stats.spans_excluded, 1);
                continue;
            }
            // Only a request that carried a header the rules name can
            // differ from its process.
            if !span.tenant_headers.is_empty() {
                let kept = &mut span.tenant_headers;
                span.tenant = self.resources.tenants().of_request(&resource.tenant, kept);
            }
            let exported = self
                .sampler
                .as_mut()
                .is_none_or(|sampler| sampler.decide(&span, tenant_of(&resource, &span)).kept());
            // Only a span that is exported is built whole; metrics read
            // what every span has.
            if exported {
                span.complete();
            }
            if let Some(store) = recorder.as_mut() {
                store.record_sampled(&resource, &span, &span.endpoints, exported);
            }
            if !exported {
                Stats::add(&self.stats.spans_sampled_out, 1);
                continue;
            }
            self.sink.send(resource, span);
        }
    }
}

/// Runs one step of a connection's session and counts what it lost;
/// returns the times its parser lost sync.
fn run_session(
    session: &mut dyn Session,
    input: Option<(Direction, &Chunk<'_>)>,
    end_ns: u64,
    ctx: &SpanContext,
    stats: &Stats,
    spans: &mut Vec<Span>,
) -> u64 {
    let mut out = PairingOut::new(ctx, spans);
    let report = session.run(input, end_ns, &mut out);
    Stats::add(&stats.parser_resync_bytes, report.resync_bytes);
    Stats::add(&stats.parser_resyncs, report.resyncs);
    Stats::add(&stats.requests_unanswered, out.loss.requests_unanswered);
    Stats::add(&stats.responses_unpaired, out.loss.responses_unpaired);
    report.resyncs
}

/// Spans that wait for [`Pipeline::flush_spans`] before it runs by itself.
const SPAN_BATCH: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{encode_close, encode_data};
    use crate::enrich::HostInfo;
    use crate::span::model::AttrValue;
    use sonde_common::{AF_INET, DIR_EGRESS, DIR_INGRESS, EventHeader, SockAddrs};

    struct Collect(Vec<Span>);
    impl SpanSink for Collect {
        fn send(&mut self, _resource: Arc<Resource>, span: Span) {
            self.0.push(span);
        }
    }

    fn pipeline() -> Pipeline<Collect> {
        Pipeline::new(
            PipelineOptions::new(
                16,
                Limits {
                    max_buffered_bytes: 4096,
                },
                SpanOptions::default(),
            ),
            Clock::with_offset(0),
            ProcessResources::new(HostInfo {
                host_name: "test".into(),
                host_id: None,
            }),
            Collect(Vec::new()),
            Arc::new(Stats::default()),
        )
    }

    fn record(direction: u32, ts: u64, bytes: &[u8]) -> Vec<u8> {
        record_on(5, [0; 4], direction, ts, bytes)
    }

    /// The socket the test records of fd `fd` name.
    fn sock_of(fd: u32) -> u64 {
        0xffff_8880_0000_0000 + u64::from(fd) * 0x100
    }

    /// A record of fd `fd`, a server connection from `peer`.
    fn record_on(fd: u32, peer: [u8; 4], direction: u32, ts: u64, bytes: &[u8]) -> Vec<u8> {
        let mut addrs = SockAddrs {
            family: AF_INET,
            local_port: 8080,
            peer_port: 50000,
            ..Default::default()
        };
        addrs.local_addr[..4].copy_from_slice(&[10, 0, 0, 9]);
        addrs.peer_addr[..4].copy_from_slice(&peer);
        let header = EventHeader {
            direction,
            start_ns: ts,
            end_ns: ts + 10,
            tgid: 4_000_000,
            tid: 4_000_000,
            fd,
            sock: sock_of(fd),
            generation: 1,
            total_len: bytes.len() as u64,
            addrs,
            ..Default::default()
        };
        encode_data(&header, bytes)
    }

    /// A pipeline over a fake /proc where process 4,000,000 runs in
    /// `unit` (a systemd service), with `select` rules `yaml`.
    fn pipeline_selecting(tag: &str, unit: &str, yaml: &str) -> Pipeline<Collect> {
        let proc =
            std::env::temp_dir().join(format!("sonde-pipeline-{tag}-{}", std::process::id()));
        let dir = proc.join("4000000");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup"), format!("0::/system.slice/{unit}\n")).unwrap();
        let selection = serde_saphyr::from_str(yaml).unwrap();
        let resources = ProcessResources::with_proc_root(
            HostInfo {
                host_name: "test".into(),
                host_id: None,
            },
            &proc,
            16,
        )
        .with_selection(selection);
        let mut p = pipeline();
        p.resources = resources;
        p
    }

    fn process_record(cgroup_id: u64) -> Vec<u8> {
        let header = EventHeader {
            tgid: 4_000_000,
            ..Default::default()
        };
        crate::capture::encode_process(&header, b"worker", cgroup_id)
    }

    /// An excluded process's request makes no span: its connection and its
    /// cgroup are silenced in the kernel, and its records are counted.
    /// The same traffic from a process the rules keep makes its span.
    #[test]
    fn excluded_processes_are_silenced() {
        let rules = "exclude: [{systemd_unit: 'batch-*'}]";
        let mut p = pipeline_selecting("excluded", "batch-report.service", rules);
        p.handle_record(&process_record(77));
        p.handle_record(&record(DIR_INGRESS, 100, b"GET /x HTTP/1.1\r\n\r\n"));
        p.handle_record(&record(DIR_EGRESS, 200, b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert_eq!(p.sink_mut().0.len(), 0, "no span");
        assert_eq!(
            p.stats
                .events_excluded
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        let orders: Vec<_> = p.take_kernel_orders().collect();
        assert_eq!(
            orders,
            [
                KernelOrder::Silence(sock_of(5), 1),
                KernelOrder::Cgroup(CgroupOrder::Silence(77)),
            ]
        );

        let mut kept = pipeline_selecting("kept", "web.service", rules);
        kept.handle_record(&process_record(78));
        kept.handle_record(&record(DIR_INGRESS, 100, b"GET /x HTTP/1.1\r\n\r\n"));
        kept.handle_record(&record(DIR_EGRESS, 200, b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert_eq!(kept.sink_mut().0.len(), 1);
        assert_eq!(kept.take_kernel_orders().count(), 0);
    }

    /// A protocol turned off is not detected: its connection is muted
    /// like one of no known protocol.
    #[test]
    fn protocols_turned_off_are_muted() {
        let mut p = pipeline();
        let mut config = crate::config::ProtocolsConfig::default();
        config.set("http1", false);
        p.options.protocols = config.enabled();
        p.handle_record(&record(DIR_INGRESS, 100, b"GET /x HTTP/1.1\r\n\r\n"));
        p.handle_record(&record(DIR_EGRESS, 200, b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert_eq!(p.sink_mut().0.len(), 0);
        // Each record is judged anew (a muted connection the kernel still
        // ships bytes of may start a message); each is muted again.
        let orders: Vec<_> = p.take_kernel_orders().collect();
        let muted = KernelOrder::Mute(sock_of(5), 1);
        assert_eq!(orders, [muted, muted]);
    }

    /// What a sink saw of each span: the tenant a header gave it, and the
    /// tenant it goes by.
    struct Tenanted(Vec<(Option<String>, Option<String>)>);
    impl SpanSink for Tenanted {
        fn send(&mut self, resource: Arc<Resource>, span: Span) {
            let own = span.tenant.as_deref().map(str::to_owned);
            let by = crate::enrich::tenant::tenant_of(&resource, &span).map(str::to_owned);
            self.0.push((own, by));
        }
    }

    /// A pipeline judging tenants by `tenants`, and a server process named
    /// `gateway` (gone from /proc: its name comes from the kernel).
    fn gateway(tenants: crate::enrich::tenant::Tenants) -> Pipeline<Tenanted> {
        use crate::capture::encode_process;
        let resources = ProcessResources::new(HostInfo {
            host_name: "test".into(),
            host_id: None,
        })
        .with_tenants(tenants);
        let mut p = Pipeline::new(
            PipelineOptions::new(16, Limits::default(), SpanOptions::default()),
            Clock::with_offset(0),
            resources,
            Tenanted(Vec::new()),
            Arc::new(Stats::default()),
        );
        let process = EventHeader {
            tgid: 4_000_000,
            ..Default::default()
        };
        p.handle_record(&encode_process(&process, b"gateway", 0));
        p
    }

    /// A server process named `gateway` under tenant rules `yaml` reads
    /// HTTP/1.1 requests on one connection and a gRPC-style HTTP/2 request
    /// on another: what tenants its spans get.
    fn gateway_tenants(yaml: &str) -> Vec<(Option<String>, Option<String>)> {
        use crate::enrich::tenant::Tenants;
        use crate::protocol::http2::{FrameHeader, PREFACE, flag, kind};

        let config = serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        let mut p = gateway(Tenants::new(config));

        let requests: [&[u8]; 4] = [
            b"GET /a HTTP/1.1\r\nX-Tenant-Id: acme\r\n\r\n",
            b"GET /b HTTP/1.1\r\nx-tenant-id: globex\r\nx-tenant-id: acme\r\n\r\n",
            b"GET /c HTTP/1.1\r\nHost: gw\r\n\r\n",
            b"GET /d HTTP/1.1\r\nx-tenant-id: edge\r\n\r\n",
        ];
        let mut ts = 100;
        for request in requests {
            p.handle_record(&record(DIR_INGRESS, ts, request));
            p.handle_record(&record(
                DIR_EGRESS,
                ts + 50,
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ));
            ts += 100;
        }

        let frame = |frame_type: u8, flags: u8, payload: &[u8]| {
            let header = FrameHeader {
                length: payload.len() as u32,
                kind: frame_type,
                flags,
                stream_id: if frame_type == kind::SETTINGS { 0 } else { 1 },
                reserved: false,
            };
            [&header.to_bytes()[..], payload].concat()
        };
        // POST, http, /, then `x-tenant-id: initech` as a literal.
        let mut fields = vec![0x83, 0x86, 0x84, 0x00, 11];
        fields.extend_from_slice(b"x-tenant-id");
        fields.push(7);
        fields.extend_from_slice(b"initech");
        let done = flag::END_HEADERS | flag::END_STREAM;
        let request = [
            &PREFACE[..],
            &frame(kind::SETTINGS, 0, &[]),
            &frame(kind::HEADERS, done, &fields),
        ]
        .concat();
        let response = [
            frame(kind::SETTINGS, 0, &[]),
            frame(kind::HEADERS, done, &[0x88]),
        ]
        .concat();
        let peer = [10, 0, 0, 2];
        p.handle_record(&record_on(6, peer, DIR_INGRESS, ts, &request));
        p.handle_record(&record_on(6, peer, DIR_EGRESS, ts + 50, &response));
        std::mem::take(&mut p.sink_mut().0)
    }

    fn tenants(pairs: &[(Option<&str>, Option<&str>)]) -> Vec<(Option<String>, Option<String>)> {
        pairs
            .iter()
            .map(|(own, by)| (own.map(str::to_owned), by.map(str::to_owned)))
            .collect()
    }

    /// Config reloads change the header rules while a keep-alive
    /// connection stays open: its next requests keep the headers the new
    /// rules read, and a request read before a reload is judged by the
    /// header it carried.
    #[test]
    fn header_rules_change_on_open_connections() {
        use crate::enrich::tenant::Tenants;

        let rules = |yaml: &str| Tenants::new(serde_saphyr::from_str(yaml).expect(yaml));
        let mut p = gateway(rules("rules: [{header: x-a}]"));
        let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
        // One request at `ts` and its answer 50 ns later.
        let exchange = |p: &mut Pipeline<Tenanted>, ts: u64, request: &[u8]| {
            p.handle_record(&record(DIR_INGRESS, ts, request));
            p.handle_record(&record(DIR_EGRESS, ts + 50, answer));
        };

        // Read under the first rules, answered under the second.
        p.handle_record(&record(
            DIR_INGRESS,
            100,
            b"GET /1 HTTP/1.1\r\nx-b: b1\r\nx-a: a1\r\n\r\n",
        ));
        p.set_tenants(rules("rules: [{header: x-b, tenant: bee}, {header: x-a}]"));
        p.handle_record(&record(DIR_EGRESS, 150, answer));
        // Read under the second: x-b is kept now, and its rule comes first.
        exchange(
            &mut p,
            200,
            b"GET /2 HTTP/1.1\r\nx-a: a2\r\nx-b: b2\r\n\r\n",
        );
        exchange(&mut p, 300, b"GET /3 HTTP/1.1\r\nx-a: a3\r\n\r\n");
        // Under the third, no rule reads x-a or x-b.
        p.set_tenants(rules("rules: [{header: x-c}]"));
        exchange(
            &mut p,
            400,
            b"GET /4 HTTP/1.1\r\nx-a: a4\r\nx-b: b4\r\nx-c: c4\r\n\r\n",
        );
        exchange(
            &mut p,
            500,
            b"GET /5 HTTP/1.1\r\nx-a: a5\r\nx-b: b5\r\n\r\n",
        );
        let own: Vec<Option<String>> = p.sink_mut().0.iter().map(|(own, _)| own.clone()).collect();
        let want = [Some("a1"), Some("bee"), Some("a3"), Some("c4"), None];
        assert_eq!(own, want.map(|t| t.map(str::to_owned)));
    }

    /// A gateway's requests split by the header each carried; one without
    /// it (or naming the process's own tenant) goes by the process's.
    #[test]
    fn a_header_rule_gives_each_request_its_tenant() {
        let got = gateway_tenants(
            "rules:\n  - header: X-Tenant-ID\n  - executable: gateway\n    tenant: edge\n",
        );
        assert_eq!(
            got,
            tenants(&[
                (Some("acme"), Some("acme")),
                (Some("globex"), Some("globex")),
                (None, Some("edge")),
                (None, Some("edge")),
                (Some("initech"), Some("initech")),
            ])
        );
        // No process rule matching and no default: no tenant without the header.
        let got = gateway_tenants("rules: [{header: x-tenant-id}]");
        assert_eq!(got[2], (None, None));
        assert_eq!(got[0], (Some("acme".into()), Some("acme".into())));
    }

    /// Rules keep their written order: a process rule before the header
    /// rule wins for every request of its processes.
    #[test]
    fn a_process_rule_written_first_wins_over_the_header() {
        let got = gateway_tenants(
            "rules:\n  - executable: gateway\n    tenant: edge\n  - header: x-tenant-id\n",
        );
        assert_eq!(got, tenants(&[(None, Some("edge")); 5]));
        // Without tenant rules nothing is kept or judged.
        let got = gateway_tenants("{}");
        assert_eq!(got, tenants(&[(None, None); 5]));
    }

    /// A request read in pieces too small to recognise alone is still
    /// recognised, and none of its bytes are lost to detection.
    #[test]
    fn detection_sees_a_message_read_in_pieces() {
        let mut p = pipeline();
        p.handle_record(&record(DIR_INGRESS, 100, b"GE"));
        p.handle_record(&record(
            DIR_INGRESS,
            200,
            b"T /orders/17 HTTP/1.1\r\nHost: shop\r\n\r\n",
        ));
        p.handle_record(&record(
            DIR_EGRESS,
            300,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ));
        let spans = &p.sink_mut().0;
        assert_eq!(spans.len(), 1, "{spans:?}");
        assert_eq!(spans[0].name, "GET /orders/{id}");
        assert_eq!(
            spans[0].start_unix_ns, 110,
            "starts when the first piece was read"
        );
        assert!(p.take_kernel_orders().next().is_none(), "not muted");
    }

    /// Bytes of no known protocol mute the connection in the kernel, and a
    /// later message start brings it back.
    #[test]
    fn unknown_bytes_mute_then_a_message_start_revives() {
        let mut p = pipeline();
        p.handle_record(&record(
            DIR_INGRESS,
            100,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ));
        let mutes: Vec<_> = p.take_kernel_orders().collect();
        assert!(
            matches!(mutes[..], [KernelOrder::Mute(s, 1)] if s == sock_of(5)),
            "{mutes:?}"
        );
        p.handle_record(&record(DIR_INGRESS, 200, b"GET /x HTTP/1.1\r\n\r\n"));
        p.handle_record(&record(DIR_EGRESS, 300, b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert_eq!(p.sink_mut().0.len(), 1);
        // Closing ends the connection: nothing is left over.
        let mut close = EventHeader {
            sock: sock_of(5),
            generation: 1,
            end_ns: 400,
            ..Default::default()
        };
        close.direction = 0;
        p.handle_record(&encode_close(&close));
        assert_eq!(p.connections(), 0);
    }

    /// Turning a protocol off drops its connections' sessions and mutes
    /// them, leaves the others alone, and new connections of it are not
    /// recognised; turned on again, new connections are.
    #[test]
    fn protocols_turned_off_and_on() {
        let mut p = pipeline();
        let request = b"GET /x HTTP/1.1\r\n\r\n";
        let response = b"HTTP/1.1 204 No Content\r\n\r\n";
        let exchange = |p: &mut Pipeline<Collect>, fd: u32, ts: u64| {
            p.handle_record(&record_on(fd, [10, 0, 0, 1], DIR_INGRESS, ts, request));
            p.handle_record(&record_on(fd, [10, 0, 0, 1], DIR_EGRESS, ts + 50, response));
        };
        exchange(&mut p, 5, 100);
        p.handle_record(&record_on(
            6,
            [10, 0, 0, 2],
            DIR_INGRESS,
            150,
            b"*1\r\n$4\r\nPING\r\n",
        ));
        assert_eq!(p.sink_mut().0.len(), 1);
        // A request on fd 5 waits for its answer across the switch.
        p.handle_record(&record_on(5, [10, 0, 0, 1], DIR_INGRESS, 200, request));
        assert!(p.take_kernel_orders().next().is_none());

        let without_http1: Vec<_> = PROTOCOLS.iter().filter(|p| p.name != "http1").collect();
        p.set_protocols(without_http1);
        assert_eq!(
            p.take_kernel_orders().collect::<Vec<_>>(),
            [KernelOrder::Mute(sock_of(5), 1)],
            "the HTTP connection only"
        );
        p.handle_record(&record_on(5, [10, 0, 0, 1], DIR_EGRESS, 250, response));
        exchange(&mut p, 5, 300);
        exchange(&mut p, 7, 400);
        assert_eq!(p.sink_mut().0.len(), 1, "no HTTP span after the switch");
        // Redis is still parsed on its connection.
        p.handle_record(&record_on(6, [10, 0, 0, 2], DIR_EGRESS, 450, b"+PONG\r\n"));
        assert_eq!(p.sink_mut().0.len(), 2);
        assert!(
            matches!(
                p.sink_mut().0[1].attr("db.system.name"),
                Some(AttrValue::Str(name)) if name.as_str() == "redis"
            ),
            "{:?}",
            p.sink_mut().0[1]
        );

        p.set_protocols(PROTOCOLS.iter().collect());
        assert_eq!(p.options().protocols.len(), PROTOCOLS.len());
        exchange(&mut p, 8, 500);
        assert_eq!(p.sink_mut().0.len(), 3, "a new HTTP connection is traced");
    }

    /// Spans read in one batch wait for `flush_spans`, and each reaches
    /// the metrics stage with its own connection's endpoints.
    #[test]
    fn a_batch_of_spans_keeps_each_connections_endpoints() {
        use crate::metrics::store::{PointValue, point_attr};
        use crate::metrics::{Metrics, Temporality, store_options};
        let mut p = pipeline();
        let metrics = Metrics::new(
            store_options(&crate::config::MetricsConfig::default()),
            Arc::new(Resource {
                service_name: "sonde".into(),
                attributes: Vec::new(),
                ..Default::default()
            }),
            Arc::new(Stats::default()),
        );
        p.set_metrics(metrics.clone());
        let request = b"GET /x HTTP/1.1\r\n\r\n";
        let response = b"HTTP/1.1 204 No Content\r\n\r\n";
        let mut ts = 100;
        for (fd, peer) in [(5, [10, 0, 0, 1]), (6, [10, 0, 0, 2]), (6, [10, 0, 0, 2])] {
            p.read_record(&record_on(fd, peer, DIR_INGRESS, ts, request));
            p.read_record(&record_on(fd, peer, DIR_EGRESS, ts + 50, response));
            ts += 100;
        }
        assert!(p.sink_mut().0.is_empty(), "spans wait for the flush");
        p.flush_spans();
        assert_eq!(p.sink_mut().0.len(), 3);
        let snap = metrics
            .recorder()
            .snapshot(u64::MAX / 2, Temporality::Cumulative);
        let mut by_client: Vec<(String, u64)> = snap
            .resources
            .iter()
            .flat_map(|r| &r.metrics)
            .filter(|m| m.name == "traces_service_graph_request_total")
            .flat_map(|m| &m.points)
            .map(|pt| {
                let client = point_attr(pt, "client")
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                let n = match &pt.value {
                    PointValue::Sum(n) => *n as u64,
                    other => panic!("not a sum: {other:?}"),
                };
                (client.to_string(), n)
            })
            .collect();
        by_client.sort();
        assert_eq!(
            by_client,
            [("10.0.0.1".to_string(), 1), ("10.0.0.2".to_string(), 2)]
        );
    }
}
