//! `cargo xtask bench pipeline|overhead|routes|kubernetes`.
//!
//! `pipeline` runs the criterion benches of the user-space pipeline.
//! `kubernetes` builds the agent and runs tests/benches/kubernetes_memory.rs
//! as root: the agent's memory with 10,000 pods from the local API server,
//! beside a control agent with its Kubernetes metadata off.
//! `overhead` measures what the agent costs real servers, in rounds that
//! alternate between no agent and the agent attached, and prints the
//! results side by side: nginx on loopback loaded by wrk (throughput and
//! p99 latency), then redis-server on loopback loaded by redis-benchmark
//! (SET and GET operations per second), then a Python grpcio server on
//! loopback loaded twice: by h2load (unary calls per second and mean
//! latency; the server is the bottleneck and a core stays free, as on a
//! node serving clients elsewhere) and by a Python grpcio client (calls
//! per second and p99 latency; client and server fill both cores).
//! `--only nginx|redis|grpc` runs one part.
//! `routes` measures the agent's CPU per request with one export route and
//! with a route for each of 10 tenants, nginx under wrk again.
//!
//! The gRPC server and load generator are xtask/python/grpc_server.py and
//! xtask/python/grpc_load.py; like the integration tests they use generic
//! handlers on raw bytes, so there are no generated stubs and no protoc.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{agent_binary, become_root, cargo, deps, on_path, show, step};

const USAGE: &str = "usage: cargo xtask bench pipeline | overhead [--rounds N] [--secs S] [--requests N] [--only nginx|redis|grpc] [--path auto|socket|syscall] | routes [--rounds N] [--secs S] | kubernetes [--pods N] [--rounds N] [--no-control]";

/// How long the agent may take to load and attach its programs.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.split_first() {
        Some((what, rest)) if what == "pipeline" => {
            if !rest.is_empty() {
                bail!("{USAGE}");
            }
            step(
                cargo().args(["bench", "-p", "sonde", "--bench", "pipeline"]),
                "pipeline benches",
            )
        }
        Some((what, rest)) if what == "overhead" => overhead(parse_overhead_args(rest)?),
        Some((what, rest)) if what == "routes" => routes(parse_overhead_args(rest)?),
        Some((what, rest)) if what == "kubernetes" => {
            // The bench parses its own flags; the agent it starts is the
            // release build.
            become_root()?;
            crate::build(false)?;
            step(
                cargo()
                    .args([
                        "bench",
                        "-p",
                        "sonde-tests",
                        "--bench",
                        "kubernetes_memory",
                        "--",
                    ])
                    .args(rest),
                "kubernetes memory bench",
            )
        }
        _ => bail!("{USAGE}"),
    }
}

/// The servers `bench overhead` can load.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Part {
    Nginx,
    Redis,
    Grpc,
}

#[derive(Debug, PartialEq)]
struct OverheadArgs {
    rounds: u32,
    /// Seconds of load per nginx or gRPC round.
    secs: u32,
    /// redis-benchmark requests per command (SET, GET) per redis round.
    requests: u32,
    /// One part only; both when `None`.
    only: Option<Part>,
    /// The agent's `capture.path`, and the hooks the floor takes.
    path: String,
}

impl OverheadArgs {
    fn runs(&self, part: Part) -> bool {
        self.only.is_none_or(|p| p == part)
    }
}

fn parse_overhead_args(args: &[String]) -> anyhow::Result<OverheadArgs> {
    let mut parsed = OverheadArgs {
        rounds: 3,
        secs: 10,
        requests: 200_000,
        only: None,
        path: "auto".into(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--path" {
            parsed.path = match it.next().map(String::as_str) {
                Some(p @ ("auto" | "socket" | "syscall")) => p.into(),
                _ => bail!("--path takes auto, socket or syscall\n{USAGE}"),
            };
            continue;
        }
        if flag == "--only" {
            parsed.only = match it.next().map(String::as_str) {
                Some("nginx") => Some(Part::Nginx),
                Some("redis") => Some(Part::Redis),
                Some("grpc") => Some(Part::Grpc),
                Some(other) => bail!("--only takes nginx, redis or grpc, got `{other}`\n{USAGE}"),
                None => bail!("--only needs nginx, redis or grpc\n{USAGE}"),
            };
            continue;
        }
        let slot = match flag.as_str() {
            "--rounds" => &mut parsed.rounds,
            "--secs" => &mut parsed.secs,
            "--requests" => &mut parsed.requests,
            _ => bail!("unknown argument `{flag}`\n{USAGE}"),
        };
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a number\n{USAGE}"))?;
        *slot = value
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{flag} needs a positive number, got `{value}`"))?;
    }
    Ok(parsed)
}

/// One wrk run, or one run of the gRPC load (calls counted as requests).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Load {
    requests_per_sec: f64,
    /// p99 latency (the mean for h2load, which reports no percentiles).
    latency_ms: f64,
}

fn overhead(args: OverheadArgs) -> anyhow::Result<()> {
    become_root()?;
    let have_nginx = on_path("nginx") || Path::new("/usr/sbin/nginx").exists();
    let need_install = (args.runs(Part::Nginx) && (!have_nginx || !on_path("wrk")))
        || (args.runs(Part::Redis)
            && !(Path::new(REDIS_SERVER).exists() && on_path("redis-benchmark")))
        || (args.runs(Part::Grpc) && !(python_has_grpc() && on_path("h2load")));
    if need_install {
        deps::install()?;
    }
    crate::build(false)?;

    let dir = std::env::temp_dir().join(format!("sonde-overhead-{}", std::process::id()));
    let _cleanup = RemoveDir(dir.clone());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The agent exports over OTLP/HTTP to a sink in this process, as it
    // would to a collector on the node; the console stays off.
    let sink = OtlpSink::start()?;
    let agent_config = dir.join("sonde.yaml");
    std::fs::write(
        &agent_config,
        format!(
            "capture:\n  path: {}\nexport:\n  console: false\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    protocol: http/protobuf\n",
            args.path, sink.port
        ),
    )
    .context("writing the agent's config")?;

    if args.runs(Part::Nginx) {
        let (rows, costs) = overhead_nginx(&args, &dir, &agent_config)?;
        print_table(
            &format!(
                "nginx on loopback, wrk -t1 -c16 -d{}s, static file",
                args.secs
            ),
            "req/s",
            &rows,
        );
        print_agent_costs(&rows, &costs);
    }
    if args.runs(Part::Redis) {
        let all = overhead_redis(&args, &dir, &agent_config)?;
        print_redis_tables(&all, args.requests);
    }
    if args.runs(Part::Grpc) {
        let (rows, floors) = overhead_grpc_h2load(&args, &dir, &agent_config)?;
        print_table_of(
            &format!(
                "grpcio server on loopback (Python, unary SayHello) under h2load -c{H2LOAD_CLIENTS} -m{H2LOAD_STREAMS}, {}s",
                args.secs
            ),
            "calls/s",
            "mean",
            &rows,
        );
        let floor = median(
            (rows.iter().zip(&floors))
                .map(|((without, _), floor)| floor.requests_per_sec / without.requests_per_sec)
                .collect(),
        );
        println!("empty programs on the agent's hooks (the floor): median ratio {floor:.3}");
        let rows = overhead_grpc(&args, &agent_config)?;
        print_table(
            &format!(
                "grpcio server on loopback (Python, unary SayHello), {GRPC_PROCS} client processes \
                 x {GRPC_THREADS} threads, one channel each, {}s",
                args.secs
            ),
            "calls/s",
            &rows,
        );
    }
    let (requests, bytes) = sink.totals();
    println!(
        "the agent exported {requests} OTLP requests ({} KiB) in all",
        bytes / 1024
    );
    Ok(())
}

/// Tenants the routes bench spreads its requests over.
const ROUTE_TENANTS: usize = 10;

/// `bench routes`: the agent's CPU per request with every tenant on the
/// default route, and with a route of its own for each of 10 tenants (its
/// own OTLP sink, queue, worker and metric loop). nginx under wrk, each
/// request carrying one of 10 `x-tenant-id` values (a header rule gives the
/// tenant, so spans and series split ten ways in both), metrics exported
/// every second; the two configs take turns, a fresh agent each run.
fn routes(args: OverheadArgs) -> anyhow::Result<()> {
    become_root()?;
    let have_nginx = on_path("nginx") || Path::new("/usr/sbin/nginx").exists();
    if !have_nginx || !on_path("wrk") {
        deps::install()?;
    }
    crate::build(false)?;
    let dir = std::env::temp_dir().join(format!("sonde-routes-{}", std::process::id()));
    let _cleanup = RemoveDir(dir.clone());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Sink 0 is the default route's; sink i the route of tenant t{i-1}.
    let sinks = (0..=ROUTE_TENANTS)
        .map(|_| OtlpSink::start())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let one_route = format!(
        "tenants:\n  rules:\n    - header: x-tenant-id\nmetrics:\n  otlp:\n    interval_ms: 1000\n\
         export:\n  console: false\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    protocol: http/protobuf\n",
        sinks[0].port
    );
    let mut ten_routes = format!("{one_route}  tenants:\n");
    for (i, sink) in sinks.iter().skip(1).enumerate() {
        ten_routes.push_str(&format!(
            "    t{i}:\n      endpoint: http://127.0.0.1:{}\n      protocol: http/protobuf\n      \
             headers:\n        X-Scope-OrgID: '${{tenant}}'\n",
            sink.port
        ));
    }
    let configs = [
        ("1 route", dir.join("one.yaml")),
        ("10 routes", dir.join("ten.yaml")),
    ];
    std::fs::write(&configs[0].1, one_route).context("writing the agent's config")?;
    std::fs::write(&configs[1].1, ten_routes).context("writing the agent's config")?;
    let script = dir.join("tenants.lua");
    std::fs::write(
        &script,
        format!(
            "local n = 0\nrequest = function()\n  n = n + 1\n  return wrk.format(\"GET\", nil, \
             {{[\"x-tenant-id\"] = \"t\" .. (n % {ROUTE_TENANTS})}})\nend\n"
        ),
    )
    .context("writing the wrk script")?;

    let port = free_port()?;
    let nginx = start_nginx(&dir, port)?;
    let url = format!("http://127.0.0.1:{port}/index.html");
    wrk_with(&url, 1, Some(&script))?;
    // Per config: (µs of agent CPU per request, requests/s) of each round.
    let mut runs: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    let mut routed_requests = 0;
    for round in 1..=args.rounds {
        for (i, (name, config)) in configs.iter().enumerate() {
            println!("xtask: routes round {round}/{}: {name}", args.rounds);
            let before: Vec<u64> = sinks.iter().map(|s| s.totals().0).collect();
            let agent = start_agent(config)?;
            let cpu_before = agent.cpu_seconds();
            let load = wrk_with(&url, args.secs, Some(&script));
            let cpu = agent.cpu_seconds() - cpu_before;
            agent.stop();
            let load = load?;
            let served = load.requests_per_sec * f64::from(args.secs);
            runs[i].push((cpu * 1e6 / served.max(1.0), load.requests_per_sec));
            let got: Vec<u64> = sinks
                .iter()
                .zip(&before)
                .map(|(s, b)| s.totals().0 - b)
                .collect();
            if i == 1 {
                // Every tenant's own sink got its exports.
                if let Some(t) = got.iter().skip(1).position(|n| *n == 0) {
                    bail!("with 10 routes, tenant t{t}'s sink got nothing: {got:?}");
                }
                routed_requests += got.iter().skip(1).sum::<u64>();
            } else if got.iter().skip(1).any(|n| *n > 0) {
                bail!("with 1 route, a tenant sink got exports: {got:?}");
            }
        }
    }
    drop(nginx);
    println!(
        "\nnginx on loopback, wrk -t1 -c16 -d{}s, 10 tenants by x-tenant-id: agent CPU per request",
        args.secs
    );
    println!(
        "| round | 1 route (µs/req, req/s) | 10 routes (µs/req, req/s) | 10 routes / 1 route |"
    );
    println!("| --- | --- | --- | --- |");
    let mut ratios = Vec::new();
    for (round, (one, ten)) in runs[0].iter().zip(&runs[1]).enumerate() {
        let ratio = ten.0 / one.0;
        ratios.push(ratio);
        println!(
            "| {} | {:.2}, {:.0} | {:.2}, {:.0} | {ratio:.3} |",
            round + 1,
            one.0,
            one.1,
            ten.0,
            ten.1
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median 10 routes / 1 route: {:.3}; the tenants' own sinks got {routed_requests} OTLP requests",
        ratios[ratios.len() / 2]
    );
    Ok(())
}

/// nginx under wrk: one (without, with) pair per round.
fn overhead_nginx(
    args: &OverheadArgs,
    dir: &Path,
    agent_config: &Path,
) -> anyhow::Result<NginxRounds> {
    let port = free_port()?;
    // nginx runs in a cgroup named like a systemd service, which one
    // round's agent excludes (the others trace it as usual).
    let unit = BenchUnit::create(agent_config, dir)?;
    let nginx = start_nginx(dir, port)?;
    unit.adopt(nginx.0.id())?;
    let url = format!("http://127.0.0.1:{port}/index.html");
    // One short warm-up so the first measured round is not the coldest.
    wrk(&url, 1)?;
    let mut rows = Vec::new();
    let mut costs = Vec::new();
    let _stats = BpfStats::enable();
    let per_request = |ns: u64, requests_per_sec: f64| {
        let served = requests_per_sec * f64::from(args.secs);
        if served > 0.0 {
            ns as f64 / served
        } else {
            0.0
        }
    };
    for round in 1..=args.rounds {
        println!(
            "xtask: nginx round {round}/{}: without the agent",
            args.rounds
        );
        let without = wrk(&url, args.secs)?;
        println!(
            "xtask: nginx round {round}/{}: empty programs on the agent's hooks",
            args.rounds
        );
        let floor = start_floor(&args.path)?;
        let floor_ns = floor.kernel_ns();
        let empty = wrk(&url, args.secs);
        let floor_ns = floor.kernel_ns() - floor_ns;
        floor.stop();
        let empty = empty?;
        println!("xtask: nginx round {round}/{}: with the agent", args.rounds);
        let agent = start_agent(agent_config)?;
        let (cpu_before, ns_before) = (agent.cpu_seconds(), agent.kernel_ns());
        let with = wrk(&url, args.secs);
        let cpu = agent.cpu_seconds() - cpu_before;
        let agent_ns = agent.kernel_ns() - ns_before;
        let rss_kib = agent.rss_kib();
        println!(
            "xtask: nginx round {round}/{}: agent paused, probes attached",
            args.rounds
        );
        agent.pause("STOP");
        let paused = wrk(&url, args.secs);
        agent.pause("CONT");
        agent.stop();
        println!(
            "xtask: nginx round {round}/{}: with the agent, nginx and wrk excluded",
            args.rounds
        );
        let agent = start_agent(&unit.agent_config)?;
        let cpu_before = agent.cpu_seconds();
        let excluded = wrk_in(&url, args.secs, None, Some(&unit.dir));
        let excluded_cpu = agent.cpu_seconds() - cpu_before;
        agent.stop();
        let excluded = excluded?;
        let with = with?;
        let served = with.requests_per_sec * f64::from(args.secs);
        let excluded_served = excluded.requests_per_sec * f64::from(args.secs);
        costs.push(AgentCost {
            cores: cpu / f64::from(args.secs),
            excluded_requests_per_sec: excluded.requests_per_sec,
            excluded_us_per_request: excluded_cpu * 1e6 / excluded_served.max(1.0),
            us_per_request: if served > 0.0 {
                cpu * 1e6 / served
            } else {
                0.0
            },
            paused_requests_per_sec: paused?.requests_per_sec,
            floor_requests_per_sec: empty.requests_per_sec,
            kernel_ns_per_request: per_request(agent_ns, with.requests_per_sec),
            floor_ns_per_request: per_request(floor_ns, empty.requests_per_sec),
            rss_kib,
        });
        rows.push((without, with));
    }
    // Half the mean saturated rate: how users see the overhead.
    let saturated = rows.iter().map(|r| r.0.requests_per_sec).sum::<f64>() / rows.len() as f64;
    let fixed = fixed_rate_rounds(args, port, agent_config, saturated / 2.0)?;
    drop(nginx);
    print_fixed_rate(&fixed);
    Ok((rows, costs))
}

/// One fixed-rate round: the load without probes and with the agent, and
/// the agent's CPU per request in the second.
struct FixedRound {
    rate: f64,
    without: Load,
    with: Load,
    agent_us_per_request: f64,
}

/// nginx at a fixed `rate` of requests per second, without probes and
/// with the agent, `args.rounds` times.
fn fixed_rate_rounds(
    args: &OverheadArgs,
    port: u16,
    agent_config: &Path,
    rate: f64,
) -> anyhow::Result<Vec<FixedRound>> {
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        println!(
            "xtask: nginx at {rate:.0} req/s, round {round}/{}: without, then with the agent",
            args.rounds
        );
        let without = fixed_rate(port, rate, args.secs)?;
        let agent = start_agent(agent_config)?;
        let cpu_before = agent.cpu_seconds();
        let with = fixed_rate(port, rate, args.secs);
        let cpu = agent.cpu_seconds() - cpu_before;
        agent.stop();
        let with = with?;
        let served = with.requests_per_sec * f64::from(args.secs);
        rounds.push(FixedRound {
            rate,
            without,
            with,
            agent_us_per_request: if served > 0.0 {
                cpu * 1e6 / served
            } else {
                0.0
            },
        });
    }
    Ok(rounds)
}

fn print_fixed_rate(rounds: &[FixedRound]) {
    let Some(first) = rounds.first() else {
        return;
    };
    println!();
    println!(
        "nginx at a fixed {:.0} req/s (half the saturated rate), {FIXED_CONNS} keep-alive connections",
        first.rate
    );
    println!(
        "{:>5}  {:>12}  {:>12}  {:>12}  {:>12}  {:>10}",
        "round", "req/s without", "req/s with", "p99 without", "p99 with", "agent us/req"
    );
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "{:>5}  {:>12.0}  {:>12.0}  {:>10.3}ms  {:>10.3}ms  {:>10.2}",
            i + 1,
            r.without.requests_per_sec,
            r.with.requests_per_sec,
            r.without.latency_ms,
            r.with.latency_ms,
            r.agent_us_per_request
        );
    }
    let p99 = |f: fn(&FixedRound) -> f64| median(rounds.iter().map(f).collect());
    let (without, with) = (p99(|r| r.without.latency_ms), p99(|r| r.with.latency_ms));
    println!(
        "median p99 {without:.3} ms without, {with:.3} ms with the agent (x{:.2}); the agent's CPU: {:.2} us per request",
        with / without,
        p99(|r| r.agent_us_per_request)
    );
}

/// Connections of the fixed-rate load, each its own thread.
const FIXED_CONNS: usize = 16;

/// GET /index.html from nginx on `port` at `rate` requests per second in
/// all, spread evenly over [`FIXED_CONNS`] keep-alive connections, for
/// `secs` seconds. Each request is timed from when it was due, not from
/// when it was sent, so that a late request counts its wait.
fn fixed_rate(port: u16, rate: f64, secs: u32) -> anyhow::Result<Load> {
    let interval = Duration::from_secs_f64(FIXED_CONNS as f64 / rate.max(1.0));
    let start = Instant::now();
    let end = start + Duration::from_secs(u64::from(secs));
    let request = format!("GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let threads: Vec<_> = (0..FIXED_CONNS)
        .map(|i| {
            let request = request.clone();
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let connect = || -> anyhow::Result<(TcpStream, BufReader<TcpStream>)> {
                    let stream = TcpStream::connect(("127.0.0.1", port))
                        .context("connecting to nginx for the fixed-rate load")?;
                    stream.set_nodelay(true)?;
                    Ok((stream.try_clone()?, BufReader::new(stream)))
                };
                let mut conn = connect()?;
                let mut latencies = Vec::new();
                let mut due = start + interval.mul_f64(i as f64 / FIXED_CONNS as f64);
                while due < end {
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    // nginx closes a keep-alive connection after so many
                    // requests (`keepalive_requests`): open another, as a
                    // client would, and ask again.
                    if exchange(&mut conn, &request).is_err() {
                        conn = connect()?;
                        exchange(&mut conn, &request)?;
                    }
                    latencies.push(due.elapsed());
                    due += interval;
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        let latencies = t
            .join()
            .map_err(|_| anyhow::anyhow!("a fixed-rate load thread panicked"))??;
        all.extend(latencies);
    }
    all.sort();
    let p99 = all
        .get(all.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    Ok(Load {
        requests_per_sec: all.len() as f64 / f64::from(secs),
        latency_ms: p99.as_secs_f64() * 1e3,
    })
}

/// Sends `request` on `conn` and reads its response whole.
fn exchange(
    (writer, reader): &mut (TcpStream, BufReader<TcpStream>),
    request: &str,
) -> anyhow::Result<()> {
    writer.write_all(request.as_bytes())?;
    let framing = read_head(reader)?.context("nginx closed the connection")?;
    read_body(reader, &framing)?;
    Ok(())
}

/// The agent's share of the nginx overhead, averaged over the rounds.
fn print_agent_costs(rows: &[(Load, Load)], costs: &[AgentCost]) {
    if costs.is_empty() {
        return;
    }
    let n = costs.len() as f64;
    let mean = |f: fn(&AgentCost) -> f64| costs.iter().map(f).sum::<f64>() / n;
    let without = rows.iter().map(|r| r.0.requests_per_sec).sum::<f64>() / rows.len() as f64;
    let paused = mean(|c| c.paused_requests_per_sec);
    println!(
        "agent process: {:.2} cores, {:.2} us of CPU per request; \
         probes alone (agent paused): {paused:.0} req/s, {:.1}% of the throughput",
        mean(|c| c.cores),
        mean(|c| c.us_per_request),
        100.0 * paused / without
    );
    // Each round's ratios to its own run without probes.
    let ratios = |pick: &dyn Fn(&(Load, Load), &AgentCost) -> f64| {
        let r: Vec<f64> = (rows.iter().zip(costs))
            .map(|(row, cost)| pick(row, cost) / row.0.requests_per_sec)
            .collect();
        median(r)
    };
    let floor = ratios(&|_, c| c.floor_requests_per_sec);
    let agent = ratios(&|row, _| row.1.requests_per_sec);
    println!(
        "empty programs on the agent's hooks (the floor): {:.0} req/s, median ratio {floor:.3}; \
         the agent's median ratio {agent:.3} is {:.3} of the floor's",
        mean(|c| c.floor_requests_per_sec),
        agent / floor
    );
    let (kernel, floor_kernel) = (
        mean(|c| c.kernel_ns_per_request),
        mean(|c| c.floor_ns_per_request),
    );
    println!(
        "kernel programs per request: the agent's {kernel:.0} ns, the empty ones {floor_kernel:.0} ns \
         (x{:.1})",
        kernel / floor_kernel
    );
    let excluded = ratios(&|_, c| c.excluded_requests_per_sec);
    println!(
        "nginx and wrk excluded from tracing (select.exclude): median ratio {excluded:.3}, \
         the agent's CPU {:.3} us per request",
        mean(|c| c.excluded_us_per_request)
    );
    let rss = costs.iter().map(|c| c.rss_kib).max().unwrap_or(0);
    println!(
        "agent resident memory after its load: at most {:.1} MiB",
        rss as f64 / 1024.0
    );
}

/// The median of `values` (NaN for none).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Rounds of throughput and p99 latency, `unit` naming the throughput
/// (`req/s`, `calls/s`).
fn print_table(title: &str, unit: &str, rows: &[(Load, Load)]) {
    print_table_of(title, unit, "p99", rows);
}

/// [`print_table`] with the latency column named `latency` (h2load
/// reports the mean, not percentiles).
fn print_table_of(title: &str, unit: &str, latency: &str, rows: &[(Load, Load)]) {
    let (lat_without, lat_with) = (format!("{latency} without"), format!("{latency} with"));
    // Wide enough for the column titles (`calls/s without`).
    let w = 14.max(unit.len() + 8);
    println!();
    println!("{title}");
    println!(
        "{:>5}  {:>w$}  {:>w$}  {:>7}  {:>12}  {:>12}  {:>7}",
        "round",
        format!("{unit} without"),
        format!("{unit} with"),
        "ratio",
        lat_without,
        lat_with,
        "ratio"
    );
    for (i, (without, with)) in rows.iter().enumerate() {
        println!(
            "{:>5}  {:>w$.0}  {:>w$.0}  {:>7.3}  {:>10.3}ms  {:>10.3}ms  {:>7.3}",
            i + 1,
            without.requests_per_sec,
            with.requests_per_sec,
            with.requests_per_sec / without.requests_per_sec,
            without.latency_ms,
            with.latency_ms,
            with.latency_ms / without.latency_ms,
        );
    }
    let n = rows.len() as f64;
    let mean = |f: fn(&Load) -> f64, pick_with: bool| {
        rows.iter()
            .map(|(a, b)| f(if pick_with { b } else { a }))
            .sum::<f64>()
            / n
    };
    let rps = |l: &Load| l.requests_per_sec;
    let p99 = |l: &Load| l.latency_ms;
    let (rps_without, rps_with) = (mean(rps, false), mean(rps, true));
    let (p99_without, p99_with) = (mean(p99, false), mean(p99, true));
    println!(
        "{:>5}  {:>w$.0}  {:>w$.0}  {:>7.3}  {:>10.3}ms  {:>10.3}ms  {:>7.3}",
        "mean",
        rps_without,
        rps_with,
        rps_with / rps_without,
        p99_without,
        p99_with,
        p99_with / p99_without,
    );
    let median = median(
        rows.iter()
            .map(|(a, b)| b.requests_per_sec / a.requests_per_sec)
            .collect(),
    );
    println!(
        "with the agent: {:.1}% of the throughput (median of the rounds' ratios {:.3}), {latency} latency x{:.2}",
        100.0 * rps_with / rps_without,
        median,
        p99_with / p99_without
    );
}

/// Where Debian's redis-server package puts the server.
const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// One redis-benchmark run: operations per second of each command.
#[derive(Clone, Copy, Debug, PartialEq)]
struct RedisLoad {
    set_per_sec: f64,
    get_per_sec: f64,
}

/// One redis round: the same load without probes, with the empty
/// programs on the agent's hooks (the floor), and with the agent.
struct RedisRound {
    without: RedisLoad,
    floor: RedisLoad,
    with: RedisLoad,
}

/// How many commands redis-benchmark pipelines per connection: one at a
/// time, and sixteen in one write (`-P 16`).
const REDIS_PIPELINES: [u32; 2] = [1, 16];

/// redis-server under redis-benchmark, for each of [`REDIS_PIPELINES`]:
/// that many rounds.
fn overhead_redis(
    args: &OverheadArgs,
    dir: &Path,
    agent_config: &Path,
) -> anyhow::Result<Vec<(u32, Vec<RedisRound>)>> {
    let port = free_port()?;
    let redis = start_redis(dir, port)?;
    let mut all = Vec::new();
    for pipeline in REDIS_PIPELINES {
        // One short warm-up so the first measured round is not the coldest.
        redis_benchmark(port, (args.requests / 10).max(1000), pipeline)?;
        let mut rounds = Vec::new();
        for round in 1..=args.rounds {
            let say = |what: &str| {
                println!(
                    "xtask: redis -P {pipeline} round {round}/{}: {what}",
                    args.rounds
                );
            };
            say("without the agent");
            let without = redis_benchmark(port, args.requests, pipeline)?;
            say("empty programs on the agent's hooks");
            let floor = start_floor(&args.path)?;
            let empty = redis_benchmark(port, args.requests, pipeline);
            floor.stop();
            say("with the agent");
            let agent = start_agent(agent_config)?;
            let with = redis_benchmark(port, args.requests, pipeline);
            agent.stop();
            rounds.push(RedisRound {
                without,
                floor: empty?,
                with: with?,
            });
        }
        all.push((pipeline, rounds));
    }
    drop(redis);
    Ok(all)
}

fn print_redis_tables(all: &[(u32, Vec<RedisRound>)], requests: u32) {
    for (pipeline, rounds) in all {
        println!();
        println!(
            "redis-server on loopback, redis-benchmark -c 16 -P {pipeline} -t set,get -n {requests}: \
             operations/s, and the ratio to the run without probes"
        );
        println!(
            "{:>5}  {:>10}  {:>10}  {:>6}  {:>10}  {:>6}  {:>10}  {:>10}  {:>6}  {:>10}  {:>6}",
            "round",
            "SET none",
            "SET floor",
            "ratio",
            "SET agent",
            "ratio",
            "GET none",
            "GET floor",
            "ratio",
            "GET agent",
            "ratio"
        );
        for (i, r) in rounds.iter().enumerate() {
            let (s, g) = (|l: &RedisLoad| l.set_per_sec, |l: &RedisLoad| l.get_per_sec);
            println!(
                "{:>5}  {:>10.0}  {:>10.0}  {:>6.3}  {:>10.0}  {:>6.3}  {:>10.0}  {:>10.0}  {:>6.3}  {:>10.0}  {:>6.3}",
                i + 1,
                s(&r.without),
                s(&r.floor),
                s(&r.floor) / s(&r.without),
                s(&r.with),
                s(&r.with) / s(&r.without),
                g(&r.without),
                g(&r.floor),
                g(&r.floor) / g(&r.without),
                g(&r.with),
                g(&r.with) / g(&r.without),
            );
        }
        let ratios = |pick: fn(&RedisRound) -> (f64, f64)| {
            let (set, get): (Vec<f64>, Vec<f64>) = rounds.iter().map(pick).unzip();
            (median(set), median(get))
        };
        let floor = ratios(|r| {
            (
                r.floor.set_per_sec / r.without.set_per_sec,
                r.floor.get_per_sec / r.without.get_per_sec,
            )
        });
        let agent = ratios(|r| {
            (
                r.with.set_per_sec / r.without.set_per_sec,
                r.with.get_per_sec / r.without.get_per_sec,
            )
        });
        println!(
            "median ratios: the floor SET {:.3} GET {:.3}; the agent SET {:.3} GET {:.3}",
            floor.0, floor.1, agent.0, agent.1
        );
    }
}

/// Client processes and threads per process of the gRPC load: 16 calls in
/// flight, as wrk and redis-benchmark keep 16 connections busy.
const GRPC_PROCS: u32 = 2;
const GRPC_THREADS: u32 = 8;

/// The grpcio server under the Python load: one (without, with) pair per
/// round.
fn overhead_grpc(args: &OverheadArgs, agent_config: &Path) -> anyhow::Result<Vec<(Load, Load)>> {
    let (server, port) = start_grpc_server()?;
    // One short warm-up so the first measured round is not the coldest.
    grpc_load(port, 1)?;
    let mut rows = Vec::new();
    for round in 1..=args.rounds {
        println!(
            "xtask: grpc round {round}/{}: without the agent",
            args.rounds
        );
        let without = grpc_load(port, args.secs)?;
        println!("xtask: grpc round {round}/{}: with the agent", args.rounds);
        let agent = start_agent(agent_config)?;
        let with = grpc_load(port, args.secs);
        agent.stop();
        rows.push((without, with?));
    }
    drop(server);
    Ok(rows)
}

/// The grpcio server under h2load (HTTP/2 from C: the server, one Python
/// process, is what limits the rate, and the load takes little CPU, as
/// clients on other hosts would): one (without, with) pair per round.
/// (without, with) per round, and the load with the empty programs on the
/// agent's hooks in each.
type FloorRounds = (Vec<(Load, Load)>, Vec<Load>);

/// The grpcio server under h2load.
fn overhead_grpc_h2load(
    args: &OverheadArgs,
    dir: &Path,
    agent_config: &Path,
) -> anyhow::Result<FloorRounds> {
    let (server, port) = start_grpc_server()?;
    // A SayHello request: the gRPC frame (uncompressed, length) around a
    // protobuf message whose field 1 is the string "world".
    let body = dir.join("grpc-request.bin");
    std::fs::write(&body, b"\x00\x00\x00\x00\x07\x0a\x05world")
        .context("writing the gRPC request body")?;
    h2load(port, &body, 1)?;
    let mut rows = Vec::new();
    let mut floors = Vec::new();
    for round in 1..=args.rounds {
        println!(
            "xtask: grpc/h2load round {round}/{}: without the agent",
            args.rounds
        );
        let without = h2load(port, &body, args.secs)?;
        println!(
            "xtask: grpc/h2load round {round}/{}: empty programs on the agent's hooks",
            args.rounds
        );
        let floor = start_floor(&args.path)?;
        let empty = h2load(port, &body, args.secs);
        floor.stop();
        floors.push(empty?);
        println!(
            "xtask: grpc/h2load round {round}/{}: with the agent",
            args.rounds
        );
        let agent = start_agent(agent_config)?;
        let with = h2load(port, &body, args.secs);
        agent.stop();
        rows.push((without, with?));
    }
    drop(server);
    Ok((rows, floors))
}

/// h2load clients and streams: enough concurrent calls to keep the server
/// busy.
const H2LOAD_CLIENTS: u32 = 4;
const H2LOAD_STREAMS: u32 = 16;

/// h2load posting `body` as unary SayHello calls for `secs` seconds.
fn h2load(port: u16, body: &Path, secs: u32) -> anyhow::Result<Load> {
    let mut cmd = Command::new("h2load");
    cmd.args(["-D", &secs.to_string()])
        .args(["-c", &H2LOAD_CLIENTS.to_string()])
        .args(["-m", &H2LOAD_STREAMS.to_string()])
        .args(["-t", "1"])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!("http://127.0.0.1:{port}/demo.Greeter/SayHello"));
    let start = format!("cannot start `{}`", show(&cmd));
    let text = run_load(&mut cmd, "h2load", start)?;
    parse_h2load(&text).with_context(|| format!("cannot read h2load's report:\n{text}"))
}

/// Runs one load generator to its end and returns what it printed;
/// `cannot_start` is the error when it does not start.
fn run_load(cmd: &mut Command, what: &str, cannot_start: String) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().context(cannot_start)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// Requests per second and mean request time from h2load's report
/// (`finished in 5.00s, 3051.40 req/s, ...` and `time for request:  min
/// max mean sd ...`); `None` when any request failed.
fn parse_h2load(text: &str) -> Option<Load> {
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))?
        .split(", ")
        .find_map(|f| f.strip_suffix(" req/s"))?
        .parse()
        .ok()?;
    let failed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))?
        .split(", ")
        .find_map(|f| f.strip_suffix(" failed"))?
        .parse()
        .ok()?;
    let mean = text
        .lines()
        .find_map(|l| l.strip_prefix("time for request:"))?
        .split_whitespace()
        .nth(2)?;
    let latency_ms = if let Some(us) = mean.strip_suffix("us") {
        us.parse::<f64>().ok()? / 1000.0
    } else if let Some(ms) = mean.strip_suffix("ms") {
        ms.parse().ok()?
    } else {
        mean.strip_suffix('s')?.parse::<f64>().ok()? * 1000.0
    };
    (failed == 0).then_some(Load {
        requests_per_sec: rate,
        latency_ms,
    })
}

/// The Python scripts of the gRPC load.
fn python_script(name: &str) -> PathBuf {
    crate::root().join("xtask").join("python").join(name)
}

fn python_has_grpc() -> bool {
    crate::output(Command::new(deps::python()).args(["-c", "import grpc"])).is_some()
}

/// A Python command with the proxy variables removed (grpc honours them).
fn python_command(script: &str) -> Command {
    let mut cmd = Command::new(deps::python());
    cmd.arg("-u").arg(python_script(script));
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "grpc_proxy",
        "no_grpc_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// grpc_server.py on 127.0.0.1, port chosen by the kernel, read from its
/// `listening PORT` line.
fn start_grpc_server() -> anyhow::Result<(Guard, u16)> {
    let mut cmd = python_command("grpc_server.py");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    println!("xtask: starting the grpcio server: {}", show(&cmd));
    let mut child = cmd.spawn().context(
        "cannot start python3 (install it and grpcio with `cargo xtask test`, \
         or `python3 -m pip install grpcio`)",
    )?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let guard = Guard(child, "grpc server");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(port) = line
                .strip_prefix("listening ")
                .and_then(|p| p.trim().parse::<u16>().ok())
            {
                let _ = tx.send(port);
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(20))
        .context("the grpcio server did not print `listening PORT` within 20 s")?;
    Ok((guard, port))
}

/// grpc_load.py against `port` for `secs` seconds.
fn grpc_load(port: u16, secs: u32) -> anyhow::Result<Load> {
    let mut cmd = python_command("grpc_load.py");
    cmd.arg(port.to_string())
        .args(["--secs", &secs.to_string()])
        .args(["--procs", &GRPC_PROCS.to_string()])
        .args(["--threads", &GRPC_THREADS.to_string()]);
    let start = format!("cannot start `{}`", show(&cmd));
    let text = run_load(&mut cmd, "the gRPC load", start)?;
    let (load, errors) = parse_grpc_load(&text)
        .with_context(|| format!("cannot read the gRPC load's report:\n{text}"))?;
    if errors > 0 {
        println!("xtask: {errors} gRPC calls failed in this run (left out of the figures)");
    }
    Ok(load)
}

/// Calls per second, p99 latency and failed calls from grpc_load.py's
/// `calls=N errors=E secs=S calls_per_sec=R p50_ms=X p99_ms=Y` line.
fn parse_grpc_load(text: &str) -> Option<(Load, u64)> {
    let line = text.lines().rev().find(|l| l.starts_with("calls="))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let calls: u64 = field("calls")?.parse().ok()?;
    let load = Load {
        requests_per_sec: field("calls_per_sec")?.parse().ok()?,
        latency_ms: field("p99_ms")?.parse().ok()?,
    };
    (calls > 0).then_some((load, field("errors")?.parse().ok()?))
}

/// A loopback port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// A child process that is killed when dropped.
struct Guard(Child, &'static str);

impl Drop for Guard {
    fn drop(&mut self) {
        signal(&self.0, "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("xtask: {} did not stop on SIGTERM; killing it", self.1);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends a signal by name with kill(1), which every Debian system has.
fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .stderr(Stdio::null())
        .status();
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_nginx(dir: &Path, port: u16) -> anyhow::Result<Guard> {
    let html = dir.join("html");
    std::fs::create_dir_all(&html).with_context(|| format!("creating {}", html.display()))?;
    // A small page, about the size of nginx's own welcome page.
    let page = format!(
        "<!DOCTYPE html>\n<html><head><title>sonde overhead bench</title></head>\n<body>\n{}</body></html>\n",
        "<p>static content served by nginx for the overhead bench.</p>\n".repeat(8)
    );
    std::fs::write(html.join("index.html"), page)?;
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {d}/html;
    }}
}}
"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let nginx = if on_path("nginx") {
        PathBuf::from("nginx")
    } else {
        PathBuf::from("/usr/sbin/nginx")
    };
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null());
    println!("xtask: starting nginx on 127.0.0.1:{port}: {}", show(&cmd));
    let child = cmd.spawn().context(
        "cannot start nginx (install it with `cargo xtask test` or apt-get install nginx-light)",
    )?;
    let mut guard = Guard(child, "nginx");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = guard.0.try_wait() {
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            bail!("nginx exited at start ({status}):\n{log}");
        }
        if Instant::now() > deadline {
            bail!("nginx did not listen on 127.0.0.1:{port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(guard)
}

/// The systemd-service-like cgroup of the nginx bench's excluded round,
/// and the agent config that excludes it. Removed on drop.
struct BenchUnit {
    dir: PathBuf,
    agent_config: PathBuf,
}

const BENCH_UNIT: &str = "sonde-overhead-bench.service";

impl BenchUnit {
    /// The cgroup, and `agent_config` with a rule excluding it, in `dir`.
    fn create(agent_config: &Path, dir: &Path) -> anyhow::Result<BenchUnit> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .context("reading /proc/self/mountinfo")?;
        let root = mountinfo
            .lines()
            .find_map(|l| {
                let (before, after) = l.split_once(" - ")?;
                let mount = before.split_whitespace().nth(4)?;
                (after.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
            })
            .context("no cgroup2 hierarchy is mounted: the excluded round needs one")?;
        let cgroup = root.join(BENCH_UNIT);
        std::fs::create_dir_all(&cgroup)
            .with_context(|| format!("creating the cgroup {}", cgroup.display()))?;
        let config = std::fs::read_to_string(agent_config).context("reading the agent's config")?;
        let excluding = dir.join("sonde-excluding.yaml");
        std::fs::write(
            &excluding,
            format!("{config}select:\n  exclude:\n    - systemd_unit: {BENCH_UNIT}\n"),
        )
        .context("writing the excluding agent config")?;
        Ok(BenchUnit {
            dir: cgroup,
            agent_config: excluding,
        })
    }

    /// Moves process `pid` and its children (nginx's worker: waited for,
    /// as the master may still be forking it) into the cgroup.
    fn adopt(&self, pid: u32) -> anyhow::Result<()> {
        let children_of = || {
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut children = children_of();
        while children.trim().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            children = children_of();
        }
        let pids =
            std::iter::once(pid.to_string()).chain(children.split_whitespace().map(String::from));
        for p in pids {
            std::fs::write(self.dir.join("cgroup.procs"), &p)
                .with_context(|| format!("moving process {p} into {}", self.dir.display()))?;
        }
        Ok(())
    }
}

impl Drop for BenchUnit {
    fn drop(&mut self) {
        // Its processes are gone by now or about to be: try for a while.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// redis-server on 127.0.0.1:`port`, no persistence, its files in `dir`.
fn start_redis(dir: &Path, port: u16) -> anyhow::Result<Guard> {
    let mut cmd = Command::new(REDIS_SERVER);
    cmd.args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--logfile", "", "--loglevel", "warning"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    println!(
        "xtask: starting redis-server on 127.0.0.1:{port}: {}",
        show(&cmd)
    );
    let child = cmd.spawn().context(
        "cannot start redis-server (install it with `cargo xtask test` or apt-get install redis-server)",
    )?;
    let mut guard = Guard(child, "redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = guard.0.try_wait() {
            bail!("redis-server exited at start ({status})");
        }
        if Instant::now() > deadline {
            bail!("redis-server did not listen on 127.0.0.1:{port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(guard)
}

/// The agent, running until [`Agent::stop`].
struct Agent(Guard);

impl Agent {
    fn stop(self) {
        drop(self.0);
    }

    /// CPU seconds the agent has used so far (user and system).
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.0.0.id())).unwrap_or_default();
        cpu_seconds_of_stat(&stat)
    }

    /// The agent's resident memory now, in KiB (`VmRSS`), or 0.
    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.0.id())).unwrap_or_default();
        rss_kib_of_status(&status)
    }

    /// Stops (`STOP`) or resumes (`CONT`) the agent; its probes stay attached.
    fn pause(&self, name: &str) {
        signal(&self.0.0, name);
    }

    /// Nanoseconds its kernel programs have run so far (all of them, on
    /// every hook), while `kernel.bpf_stats_enabled` is 1.
    fn kernel_ns(&self) -> u64 {
        bpf_run_ns(self.0.0.id())
    }
}

/// The `run_time_ns` of every BPF program process `pid` holds an fd of, as
/// `/proc/PID/fdinfo` shows it.
fn bpf_run_ns(pid: u32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.map_while(Result::ok)
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf-prog")
        })
        .filter_map(|fd| {
            std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .ok()
        })
        .map(|info| run_ns_of_fdinfo(&info))
        .sum()
}

/// The `run_time_ns` line of a BPF program's fdinfo (0 without one).
fn run_ns_of_fdinfo(info: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix("run_time_ns:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `kernel.bpf_stats_enabled` set to 1 while it lives, and put back after:
/// the kernel times BPF programs only while it is on.
struct BpfStats(Option<String>);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> BpfStats {
        let before = std::fs::read_to_string(BPF_STATS).ok();
        if std::fs::write(BPF_STATS, "1").is_err() {
            println!("xtask: cannot enable {BPF_STATS}: kernel time per request will read 0");
        }
        BpfStats(before)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            let _ = std::fs::write(BPF_STATS, before.trim());
        }
    }
}

/// utime + stime of a `/proc/PID/stat` line, in seconds (USER_HZ is 100 on
/// Linux). The fields are counted after the `)` that ends the command name.
fn cpu_seconds_of_stat(stat: &str) -> f64 {
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => 0.0,
    }
}

/// `VmRSS` of a `/proc/PID/status` text, in KiB (0 when absent).
fn rss_kib_of_status(status: &str) -> u64 {
    (status.lines())
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// (without, with) per round, and what the agent cost in each.
type NginxRounds = (Vec<(Load, Load)>, Vec<AgentCost>);

/// What the agent cost in one nginx round beside the throughput.
#[derive(Clone, Copy, Debug, Default)]
struct AgentCost {
    /// Cores the agent process used while wrk ran.
    cores: f64,
    /// Requests/s with the agent running and nginx and wrk excluded from
    /// tracing (`select.exclude`), and the agent's CPU per request then.
    excluded_requests_per_sec: f64,
    excluded_us_per_request: f64,
    /// Agent CPU per request served, in microseconds.
    us_per_request: f64,
    /// Requests/s with the probes attached but the agent stopped: what the
    /// kernel side alone costs (records past a full ring are dropped, so
    /// this slightly flatters it).
    paused_requests_per_sec: f64,
    /// Requests/s with an empty program on each of the agent's hooks
    /// (`sonde floor`): what the hooks cost before any program body runs.
    floor_requests_per_sec: f64,
    /// Time in the agent's kernel programs per request served.
    kernel_ns_per_request: f64,
    /// The same for the empty programs.
    floor_ns_per_request: f64,
    /// The agent's resident memory at the end of its load, in KiB.
    rss_kib: u64,
}

/// Starts `sonde run` and waits for its `sonde ready` line on stderr.
fn start_agent(config: &Path) -> anyhow::Result<Agent> {
    start_sonde(&["run".as_ref(), "--config".as_ref(), config.as_os_str()])
}

/// Starts `sonde floor`: an empty program on each hook the agent uses on
/// capture path `path`.
fn start_floor(path: &str) -> anyhow::Result<Agent> {
    start_sonde(&["floor".as_ref(), "--path".as_ref(), path.as_ref()])
}

/// Starts sonde with `args` and waits for its `sonde ready` line on stderr.
fn start_sonde(args: &[&std::ffi::OsStr]) -> anyhow::Result<Agent> {
    let binary = agent_binary();
    let mut cmd = Command::new(&binary);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let guard = Guard(child, "sonde");
    let (ready_tx, ready_rx) = mpsc::channel();
    // Reads stderr to the end so the agent never blocks on a full pipe;
    // keeps the last lines for an error message.
    std::thread::spawn(move || {
        let mut tail: Vec<String> = Vec::new();
        let mut ready = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !ready {
                if line.contains("sonde ready") {
                    ready = true;
                    let _ = ready_tx.send(Ok(()));
                } else {
                    tail.push(line);
                    if tail.len() > 20 {
                        tail.remove(0);
                    }
                }
            }
        }
        if !ready {
            let _ = ready_tx.send(Err(tail.join("\n")));
        }
    });
    match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(())) => Ok(Agent(guard)),
        Ok(Err(tail)) => bail!("the agent exited before it was ready; its last lines:\n{tail}"),
        Err(_) => bail!(
            "the agent did not print `sonde ready` within {} s",
            READY_TIMEOUT.as_secs()
        ),
    }
}

/// A minimal OTLP/HTTP receiver: answers every request with an empty 200
/// (a valid, empty `ExportTraceServiceResponse`) and counts what it got.
struct OtlpSink {
    port: u16,
    counts: Arc<(AtomicU64, AtomicU64)>,
}

impl OtlpSink {
    fn start() -> anyhow::Result<OtlpSink> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("binding the OTLP sink on loopback")?;
        let port = listener.local_addr()?.port();
        let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let shared = counts.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let counts = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve_otlp(stream, &counts);
                });
            }
        });
        Ok(OtlpSink { port, counts })
    }

    /// (requests, body bytes) received so far.
    fn totals(&self) -> (u64, u64) {
        (
            self.counts.0.load(Ordering::Relaxed),
            self.counts.1.load(Ordering::Relaxed),
        )
    }
}

/// Serves one keep-alive connection until the client closes it.
fn serve_otlp(stream: TcpStream, counts: &(AtomicU64, AtomicU64)) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(framing) = read_head(&mut reader)? {
        let body = read_body(&mut reader, &framing)?;
        counts.0.fetch_add(1, Ordering::Relaxed);
        counts.1.fetch_add(body, Ordering::Relaxed);
        writer.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )?;
    }
    Ok(())
}

/// How the body of an HTTP/1.1 message is framed, from its head.
#[derive(Debug, Default, PartialEq)]
struct Framing {
    length: usize,
    chunked: bool,
}

/// Reads the head (start line and headers) of the next HTTP/1.1 message
/// from `reader`; `None` when the stream ends first.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<Framing>> {
    let mut framing = Framing::default();
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let header = line.trim_end();
        if header.is_empty() {
            return Ok(Some(framing));
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                framing.length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                framing.chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
}

/// Reads (and drops) the body `framing` describes; returns its length.
fn read_body(reader: &mut impl BufRead, framing: &Framing) -> std::io::Result<u64> {
    if framing.chunked {
        read_chunked(reader)
    } else {
        std::io::copy(
            &mut reader.take(framing.length as u64),
            &mut std::io::sink(),
        )
    }
}

/// Reads a chunked body, returning its length.
fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<u64> {
    let mut total = 0;
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size_text = line.trim().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(total);
                }
            }
        }
        total += std::io::copy(&mut reader.take(size), &mut std::io::sink())?;
        line.clear();
        reader.read_line(&mut line)?;
    }
}

fn wrk(url: &str, secs: u32) -> anyhow::Result<Load> {
    wrk_in(url, secs, None, None)
}

/// [`wrk`], with a Lua `script` that makes the requests when given.
fn wrk_with(url: &str, secs: u32, script: Option<&Path>) -> anyhow::Result<Load> {
    wrk_in(url, secs, script, None)
}

/// [`wrk_with`], run in the cgroup `cgroup` when given.
fn wrk_in(
    url: &str,
    secs: u32,
    script: Option<&Path>,
    cgroup: Option<&Path>,
) -> anyhow::Result<Load> {
    let mut cmd = match cgroup {
        Some(dir) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && exec wrk \"$@\"",
                    dir.display()
                ))
                .arg("wrk");
            sh
        }
        None => Command::new("wrk"),
    };
    cmd.args(["-t1", "-c16", &format!("-d{secs}s"), "--latency"]);
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    cmd.arg(url);
    let text = run_load(
        &mut cmd,
        "wrk",
        "cannot start wrk (install it with `cargo xtask test` or apt-get install wrk)".into(),
    )?;
    parse_wrk(&text).with_context(|| format!("cannot read wrk's report:\n{text}"))
}

/// Runs `redis-benchmark -t set,get` with 16 connections, no pipelining.
fn redis_benchmark(port: u16, requests: u32, pipeline: u32) -> anyhow::Result<RedisLoad> {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-q", "-t", "set,get", "-c", "16", "--csv"])
        .args(["-P", &pipeline.to_string()])
        .args(["-n", &requests.to_string()]);
    let text = run_load(
        &mut cmd,
        "redis-benchmark",
        "cannot start redis-benchmark (install it with `cargo xtask test` or apt-get install redis-tools)"
            .into(),
    )?;
    parse_redis_csv(&text).with_context(|| format!("cannot read redis-benchmark's report:\n{text}"))
}

/// SET and GET requests per second from `redis-benchmark --csv`: lines of
/// quoted fields, the test name then its rate (newer versions add a header
/// line and latency columns).
fn parse_redis_csv(text: &str) -> Option<RedisLoad> {
    let mut set_per_sec = None;
    let mut get_per_sec = None;
    for line in text.lines() {
        let mut fields = line.split(',').map(|f| f.trim().trim_matches('"'));
        let (Some(test), Some(rate)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(rate) = rate.parse::<f64>() else {
            continue;
        };
        match test {
            "SET" => set_per_sec = Some(rate),
            "GET" => get_per_sec = Some(rate),
            _ => {}
        }
    }
    Some(RedisLoad {
        set_per_sec: set_per_sec?,
        get_per_sec: get_per_sec?,
    })
}

/// Requests/sec and the 99th percentile latency from `wrk --latency` output.
fn parse_wrk(text: &str) -> Option<Load> {
    let mut requests_per_sec = None;
    let mut p99_ms = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("99%") {
            p99_ms = duration_ms(v.trim());
        }
    }
    Some(Load {
        requests_per_sec: requests_per_sec?,
        latency_ms: p99_ms?,
    })
}

/// wrk's durations: `850.00us`, `1.23ms`, `2.00s`, `1.50m`.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_time_from_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_jited:\t1\n\
                    run_time_ns:\t123456\nrun_cnt:\t789\nrecursion_misses:\t0\n";
        assert_eq!(run_ns_of_fdinfo(info), 123_456);
        assert_eq!(run_ns_of_fdinfo("pos:\t0\n"), 0);
    }

    #[test]
    fn heads_give_their_framing() {
        let mut nginx = &b"HTTP/1.1 200 OK\r\nServer: nginx\r\ncontent-length: 612\r\nConnection: keep-alive\r\n\r\n"[..];
        let framing = read_head(&mut nginx).unwrap().unwrap();
        assert_eq!(framing.length, 612);
        let mut chunked = &b"POST /v1/traces HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..];
        assert!(read_head(&mut chunked).unwrap().unwrap().chunked);
        let mut cut = &b"HTTP/1.1 204 No Content\r\nServer: nginx\r\n"[..];
        assert_eq!(read_head(&mut cut).unwrap(), None);
    }

    #[test]
    fn rss_from_proc_status() {
        let status = "Name:\tsonde\nVmPeak:\t  90000 kB\nVmRSS:\t   43210 kB\nThreads:\t4\n";
        assert_eq!(rss_kib_of_status(status), 43210);
        assert_eq!(rss_kib_of_status("Name:\tgone\n"), 0);
    }

    #[test]
    fn cpu_seconds_from_proc_stat() {
        // A command name with spaces and a `)` must not shift the fields.
        let stat = "4242 (so de) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(cpu_seconds_of_stat(stat), 3.25);
        assert_eq!(cpu_seconds_of_stat("garbage"), 0.0);
    }

    const WRK_OUTPUT: &str = "\
Running 10s test @ http://127.0.0.1:8080/index.html
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   301.22us  120.50us   5.12ms   91.20%
    Req/Sec    48.12k     2.01k   51.00k    70.00%
  Latency Distribution
     50%  280.00us
     75%  320.00us
     90%  390.00us
     99%    1.02ms
  478912 requests in 10.00s, 380.12MB read
Requests/sec:  47890.12
Transfer/sec:     38.01MB
";

    #[test]
    fn wrk_report_is_parsed() {
        let load = parse_wrk(WRK_OUTPUT).unwrap();
        assert_eq!(load.requests_per_sec, 47890.12);
        assert!((load.latency_ms - 1.02).abs() < 1e-9);
        assert_eq!(parse_wrk("Requests/sec: 10\n"), None);
    }

    #[test]
    fn wrk_durations() {
        let cases = [
            ("850.00us", Some(0.85)),
            ("1.5ms", Some(1.5)),
            ("2.00s", Some(2000.0)),
            ("1.00m", Some(60_000.0)),
            ("3.0xs", None),
            ("ms", None),
        ];
        for (text, want) in cases {
            let got = duration_ms(text);
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{text}: {g}"),
                _ => assert_eq!(got, want, "{text}"),
            }
        }
    }

    #[test]
    fn overhead_flags() {
        let args = |v: &[&str]| {
            v.iter()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            parse_overhead_args(&args(&[])).unwrap(),
            OverheadArgs {
                rounds: 3,
                secs: 10,
                requests: 200_000,
                only: None,
                path: "auto".into(),
            }
        );
        assert_eq!(
            parse_overhead_args(&args(&[
                "--secs",
                "2",
                "--rounds",
                "5",
                "--requests",
                "5000",
                "--only",
                "redis",
                "--path",
                "syscall"
            ]))
            .unwrap(),
            OverheadArgs {
                rounds: 5,
                secs: 2,
                requests: 5000,
                only: Some(Part::Redis),
                path: "syscall".into(),
            }
        );
        assert!(parse_overhead_args(&args(&["--path", "kprobe"])).is_err());
        let nginx_only = parse_overhead_args(&args(&["--only", "nginx"])).unwrap();
        assert!(nginx_only.runs(Part::Nginx) && !nginx_only.runs(Part::Redis));
        let grpc_only = parse_overhead_args(&args(&["--only", "grpc"])).unwrap();
        assert!(
            grpc_only.runs(Part::Grpc)
                && !grpc_only.runs(Part::Nginx)
                && !grpc_only.runs(Part::Redis)
        );
        assert!(parse_overhead_args(&args(&[])).unwrap().runs(Part::Grpc));
        assert!(parse_overhead_args(&args(&["--rounds"])).is_err());
        assert!(parse_overhead_args(&args(&["--rounds", "0"])).is_err());
        assert!(parse_overhead_args(&args(&["--fast"])).is_err());
        assert!(parse_overhead_args(&args(&["--only"])).is_err());
        assert!(parse_overhead_args(&args(&["--only", "mysql"])).is_err());
    }

    #[test]
    fn grpc_load_report_is_parsed() {
        let out =
            "calls=8684 errors=2 secs=3.006 calls_per_sec=2889.2 p50_ms=5.347 p99_ms=11.230\n";
        let (load, errors) = parse_grpc_load(out).unwrap();
        assert_eq!(load.requests_per_sec, 2889.2);
        assert!((load.latency_ms - 11.23).abs() < 1e-9);
        assert_eq!(errors, 2);
        assert_eq!(
            parse_grpc_load("calls=0 errors=0 secs=3.0 calls_per_sec=0.0 p50_ms=0 p99_ms=0\n"),
            None
        );
        assert_eq!(parse_grpc_load("calls=10 errors=0\n"), None);
        assert_eq!(parse_grpc_load(""), None);
    }

    #[test]
    fn redis_csv_is_parsed() {
        // redis-benchmark 7 prints a header and latency columns.
        let v7 = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"
\"SET\",\"98425.20\",\"0.090\",\"0.032\",\"0.087\",\"0.135\",\"0.191\",\"0.807\"
\"GET\",\"101214.57\",\"0.085\",\"0.024\",\"0.079\",\"0.127\",\"0.183\",\"0.663\"
";
        assert_eq!(
            parse_redis_csv(v7),
            Some(RedisLoad {
                set_per_sec: 98425.20,
                get_per_sec: 101214.57
            })
        );
        // Older versions: name and rate only.
        assert_eq!(
            parse_redis_csv("\"SET\",\"1000.00\"\n\"GET\",\"2000.00\"\n"),
            Some(RedisLoad {
                set_per_sec: 1000.0,
                get_per_sec: 2000.0
            })
        );
        assert_eq!(parse_redis_csv("\"SET\",\"1000.00\"\n"), None);
        assert_eq!(parse_redis_csv(""), None);
    }

    #[test]
    fn h2load_report() {
        let text = "finished in 1.00s, 3284.00 req/s, 235.27KB/s
requests: 3284 total, 3348 started, 3284 done, 3284 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 3284 2xx, 0 3xx, 0 4xx, 0 5xx
                     min         max         mean         sd        +/- sd
time for request:     3.49ms     61.04ms     19.11ms      9.09ms    73.96%
time for connect:       79us       172us       134us        40us    75.00%
";
        let load = parse_h2load(text).unwrap();
        assert!((load.requests_per_sec - 3284.0).abs() < 1e-9);
        assert!((load.latency_ms - 19.11).abs() < 1e-9);
        let us = text.replace("19.11ms", "870us");
        assert!((parse_h2load(&us).unwrap().latency_ms - 0.87).abs() < 1e-9);
        assert_eq!(parse_h2load(&text.replace(" 0 failed", " 3 failed")), None);
        assert_eq!(parse_h2load("h2load: connection refused\n"), None);
    }
}
