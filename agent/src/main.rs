//! The `sonde` command: `sonde run` traces the host, `sonde check` says
//! whether it can.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sonde::capture::Clock;
use sonde::capture::attach::Processes;
use sonde::capture::probes::Probes;
use sonde::config::{self, Config, KubernetesConfig, Selection, TenantConfig};
use sonde::enrich::containers::ContainerStores;
use sonde::enrich::k8s::watch::{self, WatchConfig};
use sonde::enrich::k8s::{Keep, Metadata};
use sonde::enrich::tenant::Tenants;
use sonde::enrich::{CgroupOrder, ClusterInfo, HostInfo, Kubernetes, ProcessResources};
use sonde::export;
use sonde::metrics::{Metrics, agent_resource};
use sonde::pipeline::{ExportSink, KernelOrder, Pipeline, PipelineOptions};
use sonde::protocol::{self, Limits};
use sonde::reload::{self, ConfigFile, Reloader, WatchedKeys};
use sonde::sample::Sampler;
use sonde::span::HttpSpanOptions;
use sonde::span::{DbSpanOptions, SpanOptions};
use sonde::stats::Stats;
use tracing::{info, warn};

/// The pipeline allocates small strings per message and per span at a high
/// rate; mimalloc handles that pattern with far less time in the allocator
/// than the system one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sonde",
    version,
    about = "Zero-instrumentation eBPF tracing agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trace this host: HTTP/1.x, HTTP/2, gRPC, Redis and MySQL calls become
    /// OpenTelemetry spans and RED metrics, exported over OTLP, on a
    /// Prometheus endpoint or to the console.
    Run {
        /// YAML configuration file (see docs/CONFIGURATION.md).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Serve Prometheus/OpenMetrics metrics at http://ADDR/metrics
        /// (for example 127.0.0.1:9464; a port alone means loopback).
        /// Wins over metrics.prometheus.listen.
        #[arg(long, value_name = "ADDR")]
        prometheus: Option<String>,
    },
    /// Check whether this kernel and these privileges can run the agent.
    Check,
    /// Attach an empty program to every hook `run` attaches, until SIGINT
    /// or SIGTERM: what the hooks alone cost, the floor the agent's own
    /// overhead is measured against (`cargo xtask bench overhead`).
    #[command(hide = true)]
    Floor {
        /// The capture path whose hooks to take: auto, socket or syscall.
        #[arg(long, default_value = "auto")]
        path: String,
    },
}

/// Connections with no traffic for this long are finished and forgotten.
const IDLE_CONN: Duration = Duration::from_secs(300);
/// Shutdown budget for flushing spans.
const FLUSH_BUDGET: Duration = Duration::from_secs(4);

fn main() -> std::process::ExitCode {
    sonde::memory::configure();
    let cli = Cli::parse();
    match cli.command {
        Command::Check => {
            let ok = sonde::check::print(&sonde::check::run_checks());
            if ok {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Command::Floor { path } => match floor(&path) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sonde: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Run { config, prometheus } => match run(config, prometheus) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sonde: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

fn run(config_path: Option<PathBuf>, prometheus: Option<String>) -> anyhow::Result<()> {
    let config_file = config_path.as_deref().map(ConfigFile::new);
    let config = match &config_path {
        Some(path) => config::load(path)?,
        None => Config::default(),
    };
    init_logging(&config.log.level);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sonde-export")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stats = Arc::new(Stats::default());
    let exporter = runtime
        .block_on(async { export::start(&config.export, stats.clone()) })
        .context("starting the exporter")?;
    if prometheus.is_some() && !config.metrics.enabled {
        anyhow::bail!("--prometheus needs metrics, but metrics.enabled is false in the config");
    }
    let metrics = Metrics::from_config(&config.metrics, agent_resource(), stats.clone());
    let mut metric_tasks = match &metrics {
        Some(m) => Some(
            runtime
                .block_on(export::metrics::start(
                    m.clone(),
                    &config,
                    prometheus.as_deref(),
                ))
                .context("starting the metric exporters")?,
        ),
        None => None,
    };

    let ready = Arc::new(AtomicBool::new(false));
    if let Some(listen) = &config.health.listen {
        let addr =
            config::parse_listen(listen).map_err(|e| anyhow::anyhow!("health.listen: {e}"))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("health.listen: cannot listen on {addr}"))?;
        runtime.spawn(sonde::health::serve(listener, ready.clone()));
    }
    let (resources, watched) =
        process_resources(&config.kubernetes, &config.select, &config.tenants)?;
    let resources = resources.with_container_stores(ContainerStores::new(
        &config.containers.docker_root,
        &config.containers.podman_root,
    ));

    // Before anything is attached, and surely before "ready" is logged: a
    // SIGTERM sent as soon as the agent says it is ready must stop it
    // cleanly, not kill it.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        register_stop(signal, stop.clone())?;
    }
    // Installed before "ready" too: SIGHUP's default action ends the process.
    register_reload()?;
    let protocols = config.protocols.enabled();
    // A slot for every protocol's patterns: a reload may turn one on.
    let mut probes = Probes::start(&config.capture, &protocol::prefilter::slots(&protocols))?;
    // After attaching, so that no process starts unseen in between.
    let mut processes = Processes::new(std::process::id(), "/proc");
    processes.scan();
    // Loading parsed the kernel's BTF and the programs' objects: about
    // 20 MiB that are garbage now.
    sonde::memory::release(true);
    ready.store(true, Ordering::Release);
    info!(
        capture_bytes = config.capture.bytes,
        "sonde ready: capture on {}",
        probes.path.describe()
    );

    let mut pipeline = Pipeline::new(
        PipelineOptions {
            max_connections: config.capture.max_connections as usize,
            limits: Limits {
                max_buffered_bytes: config.capture.max_buffered_bytes as usize,
            },
            spans: SpanOptions {
                http: HttpSpanOptions {
                    capture_query: config.http.capture_query,
                },
                db: DbSpanOptions {
                    sanitize_query: config.db.sanitize_query,
                },
            },
            protocols,
        },
        Clock::now(),
        resources,
        ExportSink::new(exporter),
        stats.clone(),
    );
    if let Some(m) = &metrics {
        pipeline.set_metrics(m.clone());
    }
    pipeline.set_sampler(Sampler::new(config.sample.clone()));
    let mut reloader = Reloader::new(config_file, config, watched);
    read_loop(
        &mut probes,
        &mut processes,
        &mut pipeline,
        &stats,
        &stop,
        &mut Reloading {
            reloader: &mut reloader,
            runtime: &runtime,
            metric_tasks: &mut metric_tasks,
        },
    );

    info!("stopping: flushing spans");
    pipeline.finish_all(Clock::now().to_unix_ns(monotonic_ns()));
    drop(probes);
    let exporter = pipeline.into_sink().into_handle();
    runtime.block_on(async {
        let metrics_done = async {
            if let Some(tasks) = metric_tasks {
                tasks.shutdown(FLUSH_BUDGET).await;
            }
        };
        tokio::join!(exporter.shutdown(FLUSH_BUDGET), metrics_done);
    });
    info!(summary = %stats.summary(), "sonde stopped");
    Ok(())
}

/// The enrich stage's process cache, with pod metadata from the API server
/// when the agent runs in Kubernetes (or is told to), and then what the
/// metadata watcher keeps for the rules.
fn process_resources(
    config: &KubernetesConfig,
    selection: &Selection,
    tenants: &TenantConfig,
) -> anyhow::Result<(ProcessResources, Option<WatchedKeys>)> {
    sonde::metrics::attrs::set_tenant_attribute(&tenants.attribute);
    let tenants = Tenants::new(tenants.clone());
    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let mut host = HostInfo::detect();
    if !config.wanted(in_pod) {
        if selection.needs_pods() {
            warn!(
                "select: rules name namespaces, pods or containers, but kubernetes metadata is \
                 off (kubernetes.enabled): they match no process"
            );
        }
        let resources = ProcessResources::new(host)
            .with_selection(selection.clone())
            .with_tenants(tenants);
        return Ok((resources, None));
    }
    let node_name = config
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| host.host_name.clone());
    // In a pod of its own network namespace the kernel's host name is the
    // pod's: the node is the host.
    if in_pod {
        host.host_name.clone_from(&node_name);
    }
    let metadata = Arc::new(Metadata::default());
    let watched = WatchedKeys::of(selection, &tenants);
    watch::spawn(
        WatchConfig {
            node_name: node_name.clone(),
            keep: Keep {
                labels: config.pod_labels.clone(),
                annotations: config.pod_annotations.clone(),
                rule_labels: watched.labels.iter().cloned().collect(),
                rule_annotations: watched.annotations.iter().cloned().collect(),
            },
            deleted_pod_retention: Duration::from_secs(config.deleted_pod_retention_secs),
        },
        Arc::clone(&metadata),
    )
    .context("starting the kubernetes metadata watcher")?;
    info!(node = %node_name, "kubernetes metadata: watching the pods of this node");
    let resources = ProcessResources::new(host)
        .with_selection(selection.clone())
        .with_tenants(tenants)
        .with_kubernetes(Kubernetes {
            metadata,
            cluster: ClusterInfo {
                cluster_name: config.cluster_name.clone().filter(|n| !n.is_empty()),
                node_name: Some(node_name),
            },
        });
    Ok((resources, Some(watched)))
}

fn floor(path: &str) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        register_stop(signal, stop.clone())?;
    }
    let path = sonde::config::from_name(path)
        .ok_or_else(|| anyhow::anyhow!("--path {path}: expected auto, socket or syscall"))?;
    let probes = sonde::capture::probes::EmptyProbes::start(path)?;
    eprintln!(
        "sonde ready: an empty program on each of the {} hooks of the {} path",
        probes.hooks,
        probes.path.describe()
    );
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Sets `stop` when `signal` arrives. The handler only stores to an atomic.
fn register_stop(signal: libc::c_int, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    let _ = STOP.set(stop);
    extern "C" fn on_signal(_: libc::c_int) {
        if let Some(stop) = STOP.get() {
            stop.store(true, Ordering::SeqCst);
        }
    }
    // SAFETY: the handler is async-signal-safe (one atomic store).
    let previous = unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    if previous == libc::SIG_ERR {
        anyhow::bail!("cannot install the handler for signal {signal}");
    }
    Ok(())
}

/// Set by SIGHUP: read the config file again.
static RELOAD_ASKED: AtomicBool = AtomicBool::new(false);

/// Sets [`RELOAD_ASKED`] when SIGHUP arrives. The handler only stores to
/// an atomic; the capture loop does the reload.
fn register_reload() -> anyhow::Result<()> {
    extern "C" fn on_hangup(_: libc::c_int) {
        RELOAD_ASKED.store(true, Ordering::SeqCst);
    }
    // SAFETY: the handler is async-signal-safe (one atomic store).
    let previous =
        unsafe { libc::signal(libc::SIGHUP, on_hangup as *const () as libc::sighandler_t) };
    if previous == libc::SIG_ERR {
        anyhow::bail!("cannot install the handler for SIGHUP");
    }
    Ok(())
}

/// What a config reload changes: the pipeline's stages through the
/// reloader, and the export stage's tenant routes.
struct Reloading<'a> {
    reloader: &'a mut Reloader,
    runtime: &'a tokio::runtime::Runtime,
    metric_tasks: &'a mut Option<export::metrics::MetricTasks>,
}

/// Reads the config file again and makes its live changes; the kernel's
/// message-start patterns are rewritten when protocols changed, and the
/// export stage takes new tenant routes.
fn reload_config(r: &mut Reloading<'_>, pipeline: &mut Pipeline<ExportSink>, probes: &mut Probes) {
    let outcome = r.reloader.reload(pipeline);
    reload::log(&outcome, r.reloader.path());
    let reload::Outcome::Applied {
        diff,
        kernel_prefixes,
    } = &outcome
    else {
        return;
    };
    if let Some(prefixes) = kernel_prefixes
        && let Err(e) = probes.set_prefixes(prefixes)
    {
        warn!("config reload: the kernel's message-start filter was not updated: {e}");
    }
    if diff
        .live
        .iter()
        .any(|c| matches!(c, reload::LiveChange::Routes(_)))
    {
        let config = r.reloader.running();
        match pipeline
            .sink_mut()
            .handle_mut()
            .set_tenant_routes(&config.export)
        {
            Ok(changed) => info!("config reload: span routes of tenants {changed:?} changed"),
            Err(e) => warn!("config reload: span routes not changed: {e}"),
        }
        if let Some(tasks) = r.metric_tasks.as_mut() {
            let _in_runtime = r.runtime.enter();
            match tasks.set_tenant_routes(config) {
                Ok(changed) => info!("config reload: metric routes of tenants {changed:?} changed"),
                Err(e) => warn!("config reload: metric routes not changed: {e}"),
            }
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Reads records until `stop` is set, with the periodic chores in between.
fn read_loop(
    probes: &mut Probes,
    processes: &mut Processes,
    pipeline: &mut Pipeline<ExportSink>,
    stats: &Stats,
    stop: &AtomicBool,
    reloading: &mut Reloading<'_>,
) {
    let fd = probes.events_fd();
    let mut last_chores = Instant::now();
    let mut chores: u64 = 0;
    let mut last_summary = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        // Read each time: a reload may change them.
        let poll_ms = reloading.reloader.running().capture.poll_interval_ms as libc::c_int;
        let stats_interval_secs = reloading.reloader.running().log.stats_interval_secs;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, poll_ms) };
        while let Some(record) = probes.events.next() {
            processes.observe(&record);
            pipeline.read_record(&record);
        }
        pipeline.flush_spans();
        pipeline.sink_mut().flush();
        // Between batches of records: every span read so far was built
        // under the old config, every later one is under the new.
        let file_due = last_chores.elapsed() >= Duration::from_secs(1);
        if RELOAD_ASKED.swap(false, Ordering::SeqCst) {
            if reloading.reloader.path().is_some() {
                info!("SIGHUP: reading the config file again");
                reload_config(reloading, pipeline, probes);
            } else {
                warn!("SIGHUP: no config file to read again (sonde run --config PATH)");
            }
        } else if file_due && reloading.reloader.file_changed() {
            info!("the config file changed: reading it again");
            reload_config(reloading, pipeline, probes);
        }
        for order in pipeline.take_kernel_orders() {
            match order {
                KernelOrder::Mute(key, generation) => probes.mute(key, generation),
                KernelOrder::Silence(key, generation) => probes.silence(key, generation),
                KernelOrder::Cgroup(CgroupOrder::Silence(id)) => probes.silence_cgroup(id, true),
                KernelOrder::Cgroup(CgroupOrder::Trace(id)) => probes.silence_cgroup(id, false),
            }
        }
        if last_chores.elapsed() >= Duration::from_secs(1) {
            last_chores = Instant::now();
            use sonde_common::lost;
            for (reason, counter) in [
                (lost::RINGBUF_FULL, &stats.events_lost_ringbuf_full),
                (lost::SLOT_TAKEN, &stats.events_lost_slot_taken),
                (lost::NOT_A_SYSCALL, &stats.events_unseen_not_a_syscall),
                (lost::CALL_CUT, &stats.calls_cut),
            ] {
                counter.store(probes.lost_records(reason), Ordering::Relaxed);
            }
            let clock = Clock::now();
            pipeline.set_clock(clock);
            let now = monotonic_ns();
            pipeline.expire_idle(
                now.saturating_sub(IDLE_CONN.as_nanos() as u64),
                clock.to_unix_ns(now),
            );
            pipeline.recheck_excluded();
            // Every 10 s: more often, pages freed and touched again
            // cost the kernel a page fault and a zeroed page each time.
            chores += 1;
            if chores.is_multiple_of(10) {
                sonde::memory::release(false);
            }
        }
        if stats_interval_secs > 0 && last_summary.elapsed().as_secs() >= stats_interval_secs {
            last_summary = Instant::now();
            info!(
                connections = pipeline.connections(),
                "counters: {}",
                stats.summary()
            );
        }
    }
    if stats.events_lost_ringbuf_full.load(Ordering::Relaxed) > 0 {
        warn!("the ring buffer was full at times; raise capture.ring_buffer_bytes");
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
