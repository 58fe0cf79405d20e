//! The metrics stage end to end: real nginx and curl, redis-server and
//! redis-cli, MariaDB and its client, a grpcio server and client, the real
//! agent, RED metrics received over OTLP (gRPC and HTTP) and scraped by a
//! real Prometheus server. Needs root (skips otherwise), a release build of
//! the agent (`cargo build --release -p sonde`) and, for the scrape test,
//! Debian's `prometheus` package; the gRPC test skips without grpcio.
//!
//! The tests share the kernel, so a static mutex runs them one at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sonde_tests::clients::{curl, run_python};
use sonde_tests::grpc::{
    GrpcServer, PY_GRPC_CLIENT, SERVICE, calls, grpc_client_args, grpcio_available,
};
use sonde_tests::mariadb::{DATABASE, MariaDb, cli};
use sonde_tests::prometheus::Prometheus;
use sonde_tests::received_metrics::latest;
use sonde_tests::redis::{RedisServer, redis_cli_major, redis_cli_session};
use sonde_tests::servers::{INDEX_HTML, Nginx};
use sonde_tests::{
    Agent, Kind, PointData, ReceivedPoint, ReceivedSpan, Receiver, Value, free_port, require_root,
};
use std::process::{Command, Stdio};

static SERIAL: Mutex<()> = Mutex::new(());

/// How long to wait for spans and metrics.
const WAIT: Duration = Duration::from_secs(30);

/// Export metrics often, so the tests do not wait a minute.
const FAST_EXPORT: &str = "metrics:\n  otlp:\n    interval_ms: 500\n";

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn must<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// A receiver plus the agent exporting into it.
struct Ctx {
    rx: Receiver,
    agent: Option<Agent>,
}

impl Ctx {
    fn start(protocol: &str, extra_yaml: &str, args: &[&str]) -> Ctx {
        let rx = must(Receiver::start());
        let endpoint = if protocol == "grpc" {
            rx.grpc_endpoint()
        } else {
            rx.http_endpoint()
        };
        let agent = must(Agent::start_with_args(
            &endpoint, protocol, extra_yaml, args,
        ));
        Ctx {
            rx,
            agent: Some(agent),
        }
    }

    fn agent_pid(&self) -> u32 {
        self.agent.as_ref().map(Agent::pid).unwrap_or(0)
    }

    /// The newest point of every series of `metric` that `pick` selects.
    fn series(&self, metric: &str, pick: impl Fn(&ReceivedPoint) -> bool) -> Vec<ReceivedPoint> {
        latest(&self.rx.points())
            .into_iter()
            .filter(|p| p.name == metric && pick(p))
            .collect()
    }

    /// Waits until the histogram counts of `metric` over the series `pick`
    /// selects add up to `n` (newest point of each series).
    fn wait_count(&self, metric: &str, n: u64, pick: &dyn Fn(&ReceivedPoint) -> bool) -> bool {
        self.rx.wait_points(WAIT, |points| {
            let total: u64 = latest(points)
                .iter()
                .filter(|p| p.name == metric && pick(p))
                .filter_map(ReceivedPoint::count)
                .sum();
            total >= n
        })
    }

    fn report(&self, pick: impl Fn(&ReceivedPoint) -> bool) -> String {
        self.rx.points_report(pick, 200)
    }

    fn stop(mut self) {
        if let Some(agent) = self.agent.take() {
            must(agent.stop());
        }
    }
}

fn pid_in(pids: &[u32]) -> impl Fn(&ReceivedPoint) -> bool + '_ {
    move |p| p.pid().is_some_and(|pid| pids.contains(&pid))
}

/// (route or server, status) → count, from histogram points.
fn counts_by(points: &[ReceivedPoint], label: &str) -> BTreeMap<(String, i64), u64> {
    let mut m = BTreeMap::new();
    for p in points {
        let key = (
            p.attr_str(label).unwrap_or("<none>").to_string(),
            p.attr_int("http.response.status_code").unwrap_or(-1),
        );
        *m.entry(key).or_insert(0) += p.count().unwrap_or(0);
    }
    m
}

fn want(pairs: &[(&str, i64, u64)]) -> BTreeMap<(String, i64), u64> {
    pairs
        .iter()
        .map(|(r, s, n)| ((r.to_string(), *s), *n))
        .collect()
}

/// Runs one curl fetching `urls` over one keep-alive connection, as
/// service `name` (`OTEL_SERVICE_NAME`), so that the service graph edges
/// of this test are told apart from those of anything else on the host.
/// Returns curl's pid and the status codes.
///
/// The agent reads a process's metadata (here the service name) from /proc
/// when the first record of its connection arrives; an unpaced curl can
/// finish its requests and exit within a few ms, before a busy machine
/// schedules the agent (one clean-clone CI run saw that). `--rate` keeps
/// curl alive for a while, as a real client would be.
fn curl_as(name: &str, urls: &[String]) -> (u32, Vec<u16>) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "--noproxy", "*", "--max-time", "30"])
        .args(["--rate", "200/s"])
        .args(["-w", "%{http_code}\\n"])
        .env("OTEL_SERVICE_NAME", name);
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    for u in urls {
        cmd.args(["-o", "/dev/null"]).arg(u);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl runs");
    let pid = child.id();
    let out = child.wait_with_output().expect("curl finishes");
    let codes = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    (pid, codes)
}

/// A service name no other test on the host uses.
fn unique_name(what: &str) -> String {
    format!("sonde-test-{what}-{}", std::process::id())
}

/// The requests every OTLP test makes: one curl, one keep-alive connection.
fn urls(nginx: &Nginx) -> Vec<String> {
    let mut urls = vec![nginx.url("/index.html"); 20];
    urls.extend(vec![nginx.url("/missing"); 5]);
    urls.extend(vec![nginx.url("/fail"); 3]);
    urls
}

const EXPECTED: [(&str, i64, u64); 3] = [
    ("/index.html", 200, 20),
    ("/missing", 404, 5),
    ("/fail", 500, 3),
];

/// Sum of span durations in seconds, per (route, status).
fn duration_sums(spans: &[ReceivedSpan]) -> BTreeMap<(String, i64), f64> {
    let mut m = BTreeMap::new();
    for s in spans {
        let key = (
            s.attr_str("http.route").unwrap_or("<none>").to_string(),
            s.attr_int("http.response.status_code").unwrap_or(-1),
        );
        *m.entry(key).or_insert(0.0) += s.duration_ns() as f64 / 1e9;
    }
    m
}

/// RED metrics over OTLP/gRPC, checked against the requests made and the
/// spans the same agent exported: counts, statuses, routes, sums, buckets,
/// exemplars, body sizes, the service graph and the agent's own health.
#[test]
fn otlp_red_metrics_match_the_requests_and_spans() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let nginx = must(Nginx::start(None));
    let ctx = Ctx::start("grpc", FAST_EXPORT, &[]);
    let client_name = unique_name("client");
    let (curl_pid, codes) = curl_as(&client_name, &urls(&nginx));
    let total: u64 = EXPECTED.iter().map(|e| e.2).sum();
    assert_eq!(codes.len() as u64, total, "curl answers: {codes:?}");

    let from_nginx = pid_in(nginx.pids());
    let from_curl = |p: &ReceivedPoint| p.pid() == Some(curl_pid);
    let nginx_span = |s: &ReceivedSpan| {
        s.pid().is_some_and(|p| nginx.pids().contains(&p)) && s.kind == Kind::Server
    };
    let curl_span = |s: &ReceivedSpan| s.pid() == Some(curl_pid);
    let got = (
        ctx.rx.wait_count(total as usize, WAIT, nginx_span).len(),
        ctx.rx.wait_count(total as usize, WAIT, curl_span).len(),
    );
    assert_eq!(
        got,
        (total as usize, total as usize),
        "(nginx, curl) spans received; the sums are checked against them{}",
        ctx.rx.report(|s| nginx_span(s) || curl_span(s))
    );
    let ok = ctx.wait_count("http.server.request.duration", total, &from_nginx)
        && ctx.wait_count("http.client.request.duration", total, &from_curl);
    assert!(
        ok,
        "metrics did not add up to {total} requests:{}",
        ctx.report(|_| true)
    );
    // One more export, so that nothing is still on its way.
    std::thread::sleep(Duration::from_secs(1));

    let server = ctx.series("http.server.request.duration", &from_nginx);
    let client = ctx.series("http.client.request.duration", from_curl);
    let report = ctx.report(|p| from_nginx(p) || from_curl(p) || p.name.starts_with("traces_"));
    assert_eq!(
        counts_by(&server, "http.route"),
        want(&EXPECTED),
        "{report}"
    );
    assert_eq!(
        counts_by(&client, "server.address").values().sum::<u64>(),
        total,
        "{report}"
    );
    let client_statuses: BTreeMap<i64, u64> = client
        .iter()
        .map(|p| {
            (
                p.attr_int("http.response.status_code").unwrap_or(-1),
                p.count().unwrap_or(0),
            )
        })
        .fold(BTreeMap::new(), |mut m, (s, n)| {
            *m.entry(s).or_insert(0) += n;
            m
        });
    assert_eq!(
        client_statuses,
        [(200, 20), (404, 5), (500, 3)].into_iter().collect(),
        "{report}"
    );

    let spans: Vec<ReceivedSpan> = ctx
        .rx
        .spans()
        .into_iter()
        .filter(|s| nginx_span(s))
        .collect();
    let span_ids: HashSet<(String, String)> = spans
        .iter()
        .map(|s| (s.trace_id.clone(), s.span_id.clone()))
        .collect();
    let sums = duration_sums(&spans);
    let mut problems = Vec::new();
    let mut exemplars = 0;
    for p in &server {
        let route = p.attr_str("http.route").unwrap_or_default().to_string();
        let status = p.attr_int("http.response.status_code").unwrap_or(-1);
        let PointData::Histogram {
            count,
            sum,
            bucket_counts,
            bounds,
            min,
            max,
        } = &p.data
        else {
            problems.push(format!("not an explicit histogram: {}", p.compact()));
            continue;
        };
        if p.unit != "s" || p.temporality != 2 || p.start_ns == 0 || p.start_ns > p.time_ns {
            problems.push(format!(
                "unit {:?}, temporality {}, start {} time {}: {}",
                p.unit,
                p.temporality,
                p.start_ns,
                p.time_ns,
                p.compact()
            ));
        }
        if bucket_counts.iter().sum::<u64>() != *count || bounds.len() != 14 || bounds[0] != 0.005 {
            problems.push(format!(
                "buckets {bucket_counts:?} bounds {bounds:?}: {}",
                p.compact()
            ));
        }
        let spans_total = sums.get(&(route.clone(), status)).copied().unwrap_or(-1.0);
        if sum.is_none_or(|s| (s - spans_total).abs() > 1e-6) {
            problems.push(format!(
                "sum {sum:?} but the spans' durations add up to {spans_total}: {}",
                p.compact()
            ));
        }
        if min.is_none_or(|m| m <= 0.0) || max.is_none_or(|m| sum.is_none_or(|s| m > s)) {
            problems.push(format!("min {min:?} max {max:?}: {}", p.compact()));
        }
        let error_type = p.attr_str("error.type");
        if (status >= 500) != (error_type == Some("500")) {
            problems.push(format!("error.type {error_type:?}: {}", p.compact()));
        }
        for (k, v) in [
            ("http.request.method", "GET"),
            ("url.scheme", "http"),
            ("network.protocol.version", "1.1"),
        ] {
            if p.attr_str(k) != Some(v) {
                problems.push(format!("{k} is not {v:?}: {}", p.compact()));
            }
        }
        if p.resource.get("service.name").and_then(|v| v.as_str()) != Some("nginx")
            || p.resource
                .get("telemetry.distro.name")
                .and_then(|v| v.as_str())
                != Some("sonde")
        {
            problems.push(format!("resource {:?}", p.resource));
        }
        for e in &p.exemplars {
            exemplars += 1;
            if !span_ids.contains(&(e.trace_id.clone(), e.span_id.clone())) {
                problems.push(format!(
                    "exemplar {}/{} is no nginx span: {}",
                    e.trace_id,
                    e.span_id,
                    p.compact()
                ));
            }
        }
    }
    if exemplars == 0 {
        problems.push("no exemplar on any nginx duration series".into());
    }

    // Response body sizes of the static file.
    let sizes = ctx.series("http.server.response.body.size", |p| {
        from_nginx(p) && p.attr_int("http.response.status_code") == Some(200)
    });
    match sizes.as_slice() {
        [p] if p.count() == Some(20) && p.value() == Some(20.0 * INDEX_HTML.len() as f64) => {}
        other => problems.push(format!("response sizes of /index.html: {other:?}")),
    }

    // The service graph: this test's curl called nginx 28 times, 8 of them
    // failed for the client (404 and 500).
    let edge = |name: &str| {
        ctx.series(name, |p| {
            p.attr_str("client") == Some(client_name.as_str())
                && p.attr_str("server") == Some("nginx")
        })
    };
    let value = |points: Vec<ReceivedPoint>| points.first().and_then(ReceivedPoint::value);
    let count = |points: Vec<ReceivedPoint>| points.first().and_then(ReceivedPoint::count);
    for (name, got, want) in [
        (
            "requests",
            value(edge("traces_service_graph_request_total")),
            Some(28.0),
        ),
        (
            "failed",
            value(edge("traces_service_graph_request_failed_total")),
            Some(8.0),
        ),
        (
            "server durations",
            count(edge("traces_service_graph_request_server_seconds")).map(|c| c as f64),
            Some(28.0),
        ),
        (
            "client durations",
            count(edge("traces_service_graph_request_client_seconds")).map(|c| c as f64),
            Some(28.0),
        ),
    ] {
        if got != want {
            problems.push(format!("service graph {name}: {got:?}, expected {want:?}"));
        }
    }

    // The agent's own health, under its own resource.
    let own = |p: &ReceivedPoint| p.pid() == Some(ctx.agent_pid());
    let read = value(ctx.series("sonde.events.read", own));
    let built = value(ctx.series("sonde.spans.built", own));
    let rss = value(ctx.series("sonde.process.memory.rss", own));
    let dropped = ctx.series("sonde.events.dropped", own);
    if read.is_none_or(|v| v <= 0.0)
        || built.is_none_or(|v| v < 56.0)
        || rss.is_none_or(|v| v <= 0.0)
    {
        problems.push(format!(
            "self-metrics: events read {read:?}, spans built {built:?}, rss {rss:?}"
        ));
    }
    if dropped.len() != 3 {
        problems.push(format!(
            "sonde.events.dropped has {} series, expected 3 reasons",
            dropped.len()
        ));
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n  {}{report}",
        problems.len(),
        problems.join("\n  ")
    );
    eprintln!(
        "[otlp] {} nginx series, {exemplars} exemplars, agent rss {:.1} MiB",
        server.len(),
        rss.unwrap_or(0.0) / 1048576.0
    );
    ctx.stop();
}

/// The sample stage with a small share: metrics count every request, the
/// exported spans are bounded per operation and second, and every failed
/// request is exported.
#[test]
fn sampling_bounds_spans_but_not_metrics() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    const SHARE: usize = 5;
    const OK: usize = 200;
    const FAILED: usize = 10;
    let nginx = must(Nginx::start(None));
    let ctx = Ctx::start(
        "grpc",
        &format!(
            "{FAST_EXPORT}sample:\n  enabled: true\n  per_operation_per_second: {SHARE}\n  slow_ms: 60000\n"
        ),
        &[],
    );
    let mut targets = vec![nginx.url("/index.html"); OK];
    targets.extend(vec![nginx.url("/fail"); FAILED]);
    let started = std::time::Instant::now();
    let (_curl_pid, codes) = curl_as(&unique_name("sampled"), &targets);
    let seconds = started.elapsed().as_secs() as usize + 2;
    assert_eq!(codes.len(), OK + FAILED, "curl answers: {codes:?}");

    let from_nginx = pid_in(nginx.pids());
    assert!(
        ctx.wait_count(
            "http.server.request.duration",
            (OK + FAILED) as u64,
            &from_nginx
        ),
        "metrics did not count every request:{}",
        ctx.report(|p| from_nginx(p))
    );
    // Spans still on their way arrive within a batch timeout or two.
    std::thread::sleep(Duration::from_secs(2));
    let server = ctx.series("http.server.request.duration", &from_nginx);
    let report = ctx.report(|p| from_nginx(p));
    assert_eq!(
        counts_by(&server, "http.route"),
        want(&[
            ("/index.html", 200, OK as u64),
            ("/fail", 500, FAILED as u64)
        ]),
        "{report}"
    );

    let spans: Vec<ReceivedSpan> = ctx
        .rx
        .spans()
        .into_iter()
        .filter(|s| s.pid().is_some_and(|p| nginx.pids().contains(&p)) && s.kind == Kind::Server)
        .collect();
    let route_count = |route: &str| {
        spans
            .iter()
            .filter(|s| s.attr_str("http.route") == Some(route))
            .count()
    };
    let (ok_spans, failed_spans) = (route_count("/index.html"), route_count("/fail"));
    assert_eq!(failed_spans, FAILED, "every failed request is exported");
    assert!(
        (SHARE..=SHARE * seconds).contains(&ok_spans),
        "{ok_spans} spans of {OK} ordinary requests over at most {seconds} s, share {SHARE}/s"
    );
    let own = |p: &ReceivedPoint| p.pid() == Some(ctx.agent_pid());
    let sampled_out = ctx
        .series("sonde.spans.sampled_out", own)
        .first()
        .and_then(ReceivedPoint::value);
    assert!(
        sampled_out.is_some_and(|v| v >= (OK - ok_spans) as f64),
        "sonde.spans.sampled_out {sampled_out:?}, expected at least {}",
        OK - ok_spans
    );
    // An exemplar leads to a span the backend received, not to one the
    // sampler dropped.
    let exported: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let exemplars: Vec<_> = server.iter().flat_map(|p| &p.exemplars).collect();
    assert!(!exemplars.is_empty(), "no exemplars:{report}");
    for e in exemplars {
        assert!(
            exported.contains(e.span_id.as_str()),
            "exemplar {e:?} names a span that was not exported"
        );
    }
    ctx.stop();
}

/// Delta temporality over OTLP/HTTP: the points of each export hold what
/// happened since the previous one, and they add up to the requests made.
#[test]
fn otlp_delta_over_http_adds_up() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let nginx = must(Nginx::start(None));
    let ctx = Ctx::start(
        "http/protobuf",
        "metrics:\n  otlp:\n    interval_ms: 500\n    temporality: delta\n",
        &[],
    );
    let from_nginx = pid_in(nginx.pids());
    let sum_counts = |points: &[ReceivedPoint]| -> u64 {
        points
            .iter()
            .filter(|p| p.name == "http.server.request.duration" && from_nginx(p))
            .filter_map(ReceivedPoint::count)
            .sum()
    };
    must(curl(&vec![nginx.url("/index.html"); 10]));
    assert!(
        ctx.rx.wait_points(WAIT, |p| sum_counts(p) >= 10),
        "first batch not seen:{}",
        ctx.report(|_| true)
    );
    must(curl(&vec![nginx.url("/index.html"); 7]));
    ctx.rx.wait_points(WAIT, |p| sum_counts(p) >= 17);
    std::thread::sleep(Duration::from_secs(2));
    let points = ctx.rx.points();
    let mine: Vec<&ReceivedPoint> = points
        .iter()
        .filter(|p| p.name == "http.server.request.duration" && from_nginx(p))
        .collect();
    let report = ctx.report(|p| from_nginx(p));
    assert_eq!(sum_counts(&points), 17, "{report}");
    assert!(
        mine.len() >= 2,
        "expected the two batches in separate exports: {report}"
    );
    assert!(mine.iter().all(|p| p.temporality == 1), "{report}");
    // Each delta point starts where the previous one of its series ended.
    let mut by_start: Vec<(u64, u64)> = mine.iter().map(|p| (p.start_ns, p.time_ns)).collect();
    by_start.sort();
    for w in by_start.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlapping delta points {w:?}: {report}");
    }
    assert!(ctx.rx.errors().is_empty(), "{:?}", ctx.rx.errors());
    ctx.stop();
}

/// A real Prometheus scrapes `--prometheus`: the request count equals what
/// was sent, the p99 from the histogram buckets is a finite number, the
/// service graph is there, and exemplars reach Prometheus' exemplar store.
#[test]
fn prometheus_scrapes_the_agent() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let nginx = must(Nginx::start(None));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let ctx = Ctx::start("grpc", "", &["--prometheus", &listen]);
    let addr: SocketAddr = listen.parse().expect("listen address");
    let prom = must(Prometheus::start(addr));

    // Other tests on the host may run nginx too: this nginx's series are
    // picked by its pids, through target_info.
    let pids = nginx
        .pids()
        .iter()
        .map(std::string::ToString::to_string)
        .collect::<Vec<_>>()
        .join("|");
    let mine =
        format!("on (service_instance_id) group_left() target_info{{process_pid=~\"{pids}\"}}");
    let count = format!(
        "sum(http_server_request_duration_seconds_count{{http_route=\"/index.html\"}} * {mine})"
    );
    let client_name = unique_name("scraped");
    let urls = vec![nginx.url("/index.html"); 15];
    // Two batches: rate() needs the series to grow while Prometheus watches.
    assert_eq!(curl_as(&client_name, &urls).1, vec![200; 15]);
    let first = must(prom.wait_scalar(&count, WAIT, |v| v >= 15.0));
    assert_eq!(
        first,
        Some(15.0),
        "Prometheus did not see the first 15 requests; target {}; log {}",
        prom.target_health().unwrap_or_default(),
        prom.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(curl_as(&client_name, &urls).1, vec![200; 15]);
    let seen = must(prom.wait_scalar(&count, WAIT, |v| v >= 30.0));
    assert_eq!(
        seen,
        Some(30.0),
        "target {}",
        prom.target_health().unwrap_or_default()
    );
    // Let a few more scrapes land after the second batch.
    std::thread::sleep(Duration::from_secs(3));

    let p99 = format!(
        "histogram_quantile(0.99, sum by (le) (rate(http_server_request_duration_seconds_bucket[30s]) * {mine}))"
    );
    let q = must(prom.scalar(&p99));
    assert!(
        q.is_some_and(|v| v.is_finite() && v > 0.0),
        "p99 {q:?}; buckets: {:?}",
        prom.query(&format!(
            "http_server_request_duration_seconds_bucket * {mine}"
        ))
    );
    let edges = must(prom.scalar(&format!(
        "sum(traces_service_graph_request_total{{client=\"{client_name}\",server=\"nginx\"}})"
    )));
    assert_eq!(edges, Some(30.0));
    let health = must(prom.scalar("max(sonde_events_read_total)"));
    assert!(
        health.is_some_and(|v| v > 0.0),
        "sonde_events_read_total {health:?}"
    );

    let exemplars = must(prom.exemplars(
        "http_server_request_duration_seconds_bucket{service_name=\"nginx\"}",
        120,
    ));
    let trace_ids: Vec<String> = exemplars
        .iter()
        .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_string))
        .collect();
    assert!(
        !trace_ids.is_empty() && trace_ids.iter().all(|t| t.len() == 32),
        "exemplars in Prometheus: {exemplars:?}"
    );
    eprintln!(
        "[prometheus] count {seen:?}, p99 {q:?} s, {} exemplars",
        trace_ids.len()
    );
    ctx.stop();
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The agent as users run it: spans sampled (the test harness turns
/// sampling off elsewhere to count every span).
const DEFAULT_SAMPLING: &str = "sample:\n  enabled: true\n";

/// Memory figures of one agent run, in KiB.
#[derive(Debug)]
struct Memory {
    idle_rss: u64,
    rss: u64,
    hwm: u64,
    anon: u64,
}

/// Starts an agent with `yaml` and `args`, sends `routes` distinct paths
/// through nginx, waits until `ready` holds over the received metric
/// points (or a few seconds without metrics), scrapes `scrape` if given,
/// and reads the agent's memory.
fn memory_run(
    nginx: &Nginx,
    routes: usize,
    yaml: &str,
    args: &[&str],
    scrape: Option<u16>,
    ready: &dyn Fn(&[ReceivedPoint]) -> bool,
) -> Memory {
    let ctx = Ctx::start("grpc", yaml, args);
    let pid = ctx.agent_pid();
    let idle_rss = status_kib(pid, "VmRSS:");
    let urls: Vec<String> = (0..routes)
        .map(|i| nginx.url(&format!("/m/p{i}")))
        .collect();
    for chunk in urls.chunks(2500) {
        must(curl(chunk));
    }
    let ok = ctx.rx.wait_points(Duration::from_secs(90), ready);
    assert!(
        ok,
        "the agent never reported its series{}",
        ctx.report(|p| p.name.starts_with("sonde.metrics"))
    );
    if let Some(port) = scrape {
        // Scrape the endpoint too, the way Prometheus would.
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        std::io::Write::write_all(
            &mut conn,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\nConnection: close\r\n\r\n",
        )
        .expect("send");
        let mut page = Vec::new();
        std::io::Read::read_to_end(&mut conn, &mut page).expect("read");
        assert!(
            page.windows(5).any(|w| w == b"# EOF"),
            "the page has no end"
        );
        eprintln!(
            "[memory] scrape page {:.1} MiB",
            page.len() as f64 / 1048576.0
        );
    } else {
        std::thread::sleep(Duration::from_secs(5));
    }
    // What the agent holds, not what it is still handing back: freed pages
    // go back to the system within its allocator's purge delay (100 ms).
    std::thread::sleep(Duration::from_secs(1));
    let m = Memory {
        idle_rss,
        rss: status_kib(pid, "VmRSS:"),
        hwm: status_kib(pid, "VmHWM:"),
        anon: status_kib(pid, "RssAnon:"),
    };
    ctx.stop();
    m
}

/// 10,000 distinct routes through nginx: 10,000 series of
/// `http.server.request.duration` (and as many of the response size),
/// exported over OTLP and scraped, against the same traffic with metrics
/// off. The agent's RSS with them stays under 64 MiB, and the metrics stage
/// adds under 32 MiB to the peak.
///
/// The RSS counts the ring buffer, which the agent maps twice (the default
/// 4 MiB ring shows as 8 MiB), and the binary; the figures printed say how
/// much each part is.
#[test]
fn ten_thousand_series_memory() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    const ROUTES: usize = 10_000;
    let nginx = must(Nginx::start(None));
    let off = memory_run(
        &nginx,
        ROUTES,
        &format!("{DEFAULT_SAMPLING}metrics:\n  enabled: false\n"),
        &[],
        None,
        &|_| true,
    );
    // The agent's own gauge says how many series it holds; it is found
    // from the newest export backwards, without copying anything.
    let held = |points: &[ReceivedPoint]| {
        points
            .iter()
            .rev()
            .find(|p| {
                p.name == "sonde.metrics.series"
                    && p.attr_str("metric") == Some("http.server.request.duration")
            })
            .and_then(ReceivedPoint::value)
            .unwrap_or(0.0)
    };
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let on = memory_run(
        &nginx,
        ROUTES,
        &format!(
            "{DEFAULT_SAMPLING}metrics:\n  max_series_per_metric: 20000\n  otlp:\n    interval_ms: 2000\n"
        ),
        &["--prometheus", &listen],
        Some(port),
        &|points| held(points) >= ROUTES as f64,
    );
    let mib = |k: u64| k as f64 / 1024.0;
    eprintln!(
        "[memory] metrics off: VmRSS {:.1} MiB (idle {:.1}), VmHWM {:.1} MiB, RssAnon {:.1} MiB",
        mib(off.rss),
        mib(off.idle_rss),
        mib(off.hwm),
        mib(off.anon)
    );
    eprintln!(
        "[memory] metrics on, {ROUTES} routes: VmRSS {:.1} MiB (idle {:.1}), VmHWM {:.1} MiB, RssAnon {:.1} MiB",
        mib(on.rss),
        mib(on.idle_rss),
        mib(on.hwm),
        mib(on.anon)
    );
    assert!(
        on.rss < 64 * 1024,
        "RSS with {ROUTES} routes {on:?} is over 64 MiB"
    );
    assert!(
        on.hwm.saturating_sub(off.hwm) < 32 * 1024,
        "metrics added {} KiB to the peak ({off:?} -> {on:?})",
        on.hwm.saturating_sub(off.hwm)
    );
}

// Database and RPC metrics: real redis-server, MariaDB and grpcio
// programs, each side's metric checked against what was sent and against
// the same agent's spans.

/// The attributes docs/METRICS.md lists for the database and RPC metrics.
const DB_SERVER_ATTRS: &[&str] = &[
    "db.system.name",
    "db.operation.name",
    "db.namespace",
    "db.collection.name",
    "db.response.status_code",
    "error.type",
];
const DB_CLIENT_ATTRS: &[&str] = &[
    "db.system.name",
    "db.operation.name",
    "db.namespace",
    "db.collection.name",
    "db.response.status_code",
    "error.type",
    "server.address",
    "server.port",
];
const RPC_SERVER_ATTRS: &[&str] = &[
    "rpc.system",
    "rpc.service",
    "rpc.method",
    "rpc.grpc.status_code",
    "error.type",
];
const RPC_CLIENT_ATTRS: &[&str] = &[
    "rpc.system",
    "rpc.service",
    "rpc.method",
    "rpc.grpc.status_code",
    "error.type",
    "server.address",
    "server.port",
];

/// A string attribute value, for expected series.
fn s(v: &str) -> Option<Value> {
    Some(Value::Str(v.to_string()))
}

/// An integer attribute value, for expected series.
fn i(v: i64) -> Option<Value> {
    Some(Value::Int(v))
}

/// One attribute rendered for a series key: `-` when absent; strings
/// quoted, so that `"5"` and `5` differ.
fn render(v: Option<&Value>) -> String {
    v.map_or_else(|| "-".to_string(), Value::to_string)
}

/// The values of `keys` in `attrs`, as a series key.
fn key_of(attrs: &HashMap<String, Value>, keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| render(attrs.get(*k))).collect()
}

/// Histogram counts per values of `keys`.
fn counts_by_key(points: &[ReceivedPoint], keys: &[&str]) -> BTreeMap<Vec<String>, u64> {
    let mut m = BTreeMap::new();
    for p in points {
        *m.entry(key_of(&p.attributes, keys)).or_insert(0) += p.count().unwrap_or(0);
    }
    m
}

/// Expected [`counts_by_key`]: (attribute values, count) rows.
fn want_keys(rows: Vec<(Vec<Option<Value>>, u64)>) -> BTreeMap<Vec<String>, u64> {
    rows.into_iter()
        .map(|(vals, n)| (vals.iter().map(|v| render(v.as_ref())).collect(), n))
        .collect()
}

/// One traced process as a request metric should show it: `metric` under
/// the process's resource, fed by its spans of `kind`, with only the
/// attributes docs/METRICS.md lists for that metric.
struct Side {
    metric: &'static str,
    documented: &'static [&'static str],
    pid: u32,
    kind: Kind,
}

/// (metric, documented attributes) of the client and the server side.
type SideMetrics = [(&'static str, &'static [&'static str]); 2];
const DB_SIDES: SideMetrics = [
    ("db.client.operation.duration", DB_CLIENT_ATTRS),
    ("db.server.operation.duration", DB_SERVER_ATTRS),
];
const RPC_SIDES: SideMetrics = [
    ("rpc.client.duration", RPC_CLIENT_ATTRS),
    ("rpc.server.duration", RPC_SERVER_ATTRS),
];

/// The client process `client` and the server process `server` of `metrics`.
fn client_and_server(metrics: SideMetrics, client: u32, server: u32) -> [Side; 2] {
    let [(client_metric, client_attrs), (server_metric, server_attrs)] = metrics;
    [
        Side {
            metric: client_metric,
            documented: client_attrs,
            pid: client,
            kind: Kind::Client,
        },
        Side {
            metric: server_metric,
            documented: server_attrs,
            pid: server,
            kind: Kind::Server,
        },
    ]
}

/// The counts of `points` per values of `keys` are `want`.
fn check_counts(
    problems: &mut Vec<String>,
    side: &Side,
    points: &[ReceivedPoint],
    keys: &[&str],
    want: &BTreeMap<Vec<String>, u64>,
) {
    let got = counts_by_key(points, keys);
    if got != *want {
        problems.push(format!("{} counts {got:?}, expected {want:?}", side.metric));
    }
}

/// The client side's points name the server at 127.0.0.1:`port`.
fn check_server_named(problems: &mut Vec<String>, client_points: &[ReceivedPoint], port: u16) {
    same_on_all(problems, client_points, "server.address", s("127.0.0.1"));
    same_on_all(problems, client_points, "server.port", i(port.into()));
}

/// What the spans of one series add up to.
#[derive(Default)]
struct SpanGroup {
    n: u64,
    total: f64,
    min: f64,
    max: f64,
    ids: HashSet<(String, String)>,
}

/// Checks one side's newest points against its spans, grouped by the
/// metric's documented attributes: no other attribute on a point; each
/// series counts exactly its spans, its sum is their durations' total,
/// min and max the shortest and the longest, its exemplars among them;
/// and no span is left out of a series.
fn check_against_spans(
    side: &Side,
    points: &[ReceivedPoint],
    spans: &[ReceivedSpan],
) -> Vec<String> {
    let mut groups: BTreeMap<Vec<String>, SpanGroup> = BTreeMap::new();
    for sp in spans {
        let d = sp.duration_ns() as f64 / 1e9;
        let g = groups
            .entry(key_of(&sp.attributes, side.documented))
            .or_default();
        (g.min, g.max) = if g.n == 0 {
            (d, d)
        } else {
            (g.min.min(d), g.max.max(d))
        };
        g.n += 1;
        g.total += d;
        g.ids.insert((sp.trace_id.clone(), sp.span_id.clone()));
    }
    let mut problems = Vec::new();
    for p in points {
        let mut extra: Vec<&String> = p
            .attributes
            .keys()
            .filter(|k| !side.documented.contains(&k.as_str()))
            .collect();
        extra.sort();
        if !extra.is_empty() {
            problems.push(format!(
                "undocumented attributes {extra:?}: {}",
                p.compact()
            ));
        }
        let Some(g) = groups.remove(&key_of(&p.attributes, side.documented)) else {
            problems.push(format!("no span has these attributes: {}", p.compact()));
            continue;
        };
        let PointData::Histogram {
            count,
            sum,
            bucket_counts,
            min,
            max,
            ..
        } = &p.data
        else {
            problems.push(format!("not an explicit histogram: {}", p.compact()));
            continue;
        };
        if *count != g.n || bucket_counts.iter().sum::<u64>() != *count {
            problems.push(format!("{} spans: {}", g.n, p.compact()));
        }
        if sum.is_none_or(|s| (s - g.total).abs() > 1e-6) {
            problems.push(format!(
                "sum {sum:?} but the spans' durations add up to {}: {}",
                g.total,
                p.compact()
            ));
        }
        let near = |v: &Option<f64>, want: f64| v.is_some_and(|v| (v - want).abs() < 1e-9);
        if !near(min, g.min) || !near(max, g.max) {
            problems.push(format!(
                "min {min:?} max {max:?}, spans {} to {}: {}",
                g.min,
                g.max,
                p.compact()
            ));
        }
        for e in &p.exemplars {
            if !g.ids.contains(&(e.trace_id.clone(), e.span_id.clone())) {
                problems.push(format!(
                    "exemplar {}/{} is none of the series' spans: {}",
                    e.trace_id,
                    e.span_id,
                    p.compact()
                ));
            }
        }
    }
    for (key, g) in groups {
        problems.push(format!(
            "{} {} span(s) with {key:?} in no series",
            g.n, side.metric
        ));
    }
    problems
}

impl Ctx {
    /// Waits for `n` more metric export requests, so that a measurement
    /// still on its way when the counts added up has arrived too.
    fn wait_exports(&self, n: usize) {
        let target = self.rx.metric_requests() + n;
        let deadline = Instant::now() + WAIT;
        while self.rx.metric_requests() < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for `n` spans and `n` measurements on every side, then returns
    /// each side's newest points and the problems found: a process that
    /// has metrics other than its side's (a span feeds one metric only),
    /// and those of [`check_against_spans`].
    fn sides(&self, sides: &[Side], n: u64) -> (Vec<Vec<ReceivedPoint>>, Vec<String>) {
        let span_of = |side: &Side| {
            let (pid, kind) = (side.pid, side.kind);
            move |sp: &ReceivedSpan| sp.pid() == Some(pid) && sp.kind == kind
        };
        let of_pid = |pid: u32| move |p: &ReceivedPoint| p.pid() == Some(pid);
        for side in sides {
            let got = self.rx.wait_count(n as usize, WAIT, span_of(side)).len();
            assert_eq!(
                got,
                n as usize,
                "{:?} spans of pid {}; the metrics are checked against them{}",
                side.kind,
                side.pid,
                self.rx.report(span_of(side))
            );
            assert!(
                self.wait_count(side.metric, n, &of_pid(side.pid)),
                "{} of pid {} did not add up to {n}:{}",
                side.metric,
                side.pid,
                self.report(of_pid(side.pid))
            );
        }
        self.wait_exports(2);
        let mut problems = Vec::new();
        let mut all = Vec::new();
        for side in sides {
            let names: BTreeSet<String> = latest(&self.rx.points())
                .into_iter()
                .filter(of_pid(side.pid))
                .map(|p| p.name)
                .collect();
            if names != BTreeSet::from([side.metric.to_string()]) {
                problems.push(format!(
                    "pid {} has metrics {names:?}, expected only {}",
                    side.pid, side.metric
                ));
            }
            let points = self.series(side.metric, of_pid(side.pid));
            let spans: Vec<ReceivedSpan> =
                self.rx.spans().into_iter().filter(span_of(side)).collect();
            problems.extend(check_against_spans(side, &points, &spans));
            all.push(points);
        }
        (all, problems)
    }
}

/// `key` is `want` on every point (`None`: on none).
fn same_on_all(
    problems: &mut Vec<String>,
    points: &[ReceivedPoint],
    key: &str,
    want: Option<Value>,
) {
    for p in points {
        if p.attributes.get(key) != want.as_ref() {
            problems.push(format!("{key} is not {want:?}: {}", p.compact()));
        }
    }
}

/// Panics listing `problems`, with the metrics of `pids`, if there are any.
#[track_caller]
fn no_problems(ctx: &Ctx, problems: &[String], pids: &[u32]) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n  {}{}",
        problems.len(),
        problems.join("\n  "),
        ctx.report(pid_in(pids))
    );
}

/// redis-cli sends SETs, GETs, an INCR that works and one on a string
/// value that fails with `ERR`, and a DEL, one connection: the client's
/// `db.client.operation.duration` and redis-server's
/// `db.server.operation.duration` count each command per operation, the
/// failed INCR in its own series with `db.response.status_code` and
/// `error.type` = `ERR`.
#[test]
fn redis_db_metrics_match_the_commands() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let server = must(RedisServer::start(None));
    let ctx = Ctx::start("grpc", FAST_EXPORT, &[]);
    let commands = [
        "SET a 1",
        "SET b 2",
        "SET s text",
        "GET a",
        "GET b",
        "GET missing",
        "INCR a",
        "INCR s",
        "DEL b",
    ];
    let run = must(redis_cli_session(server.port, &commands));
    assert!(
        run.stdout.contains("ERR value is not an integer"),
        "redis-cli did not get the INCR error: {run:?}"
    );

    let ok = |op: &str, n: u64| (vec![s(op), None, None], n);
    let mut want = vec![
        ok("SET", 3),
        ok("GET", 3),
        ok("INCR", 1),
        (vec![s("INCR"), s("ERR"), s("ERR")], 1),
        ok("DEL", 1),
    ];
    // redis-cli 7 asks for COMMAND DOCS before the first command.
    if must(redis_cli_major()) >= 7 {
        want.push(ok("COMMAND DOCS", 1));
    }
    let want = want_keys(want);
    let total = want.values().sum();
    let sides = client_and_server(DB_SIDES, run.pid, server.pid());
    let (points, mut problems) = ctx.sides(&sides, total);
    let keys = ["db.operation.name", "db.response.status_code", "error.type"];
    for (side, points) in sides.iter().zip(&points) {
        check_counts(&mut problems, side, points, &keys, &want);
        same_on_all(&mut problems, points, "db.system.name", s("redis"));
        same_on_all(&mut problems, points, "db.namespace", s("0"));
    }
    check_server_named(&mut problems, &points[0], server.port);
    no_problems(&ctx, &problems, &[run.pid, server.pid()]);
    eprintln!("[redis metrics] {} series per side", points[0].len());
    ctx.stop();
}

/// The `mariadb` client: three INSERTs, three SELECTs, an INSERT that
/// fails on a duplicate key and a SELECT from a missing table. Both sides
/// count them per operation and table, the failures in their own series
/// with the error number (`db.response.status_code`) and SQLSTATE
/// (`error.type`).
#[test]
fn mariadb_db_metrics_match_the_statements() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let db = must(MariaDb::start(
        "CREATE TABLE items (id INT PRIMARY KEY, name TEXT NOT NULL);",
    ));
    let ctx = Ctx::start("grpc", FAST_EXPORT, &[]);
    let sql = "INSERT INTO items VALUES (1, 'apple');
INSERT INTO items VALUES (2, 'pear');
INSERT INTO items VALUES (3, 'plum');
SELECT name FROM items WHERE id = 1;
SELECT name FROM items WHERE id = 2;
SELECT COUNT(*) FROM items;
INSERT INTO items VALUES (1, 'again');
SELECT * FROM missing;
";
    let run = must(cli(db.port, DATABASE, sql));
    assert!(
        run.stderr.contains("ERROR 1062 (23000)") && run.stderr.contains("ERROR 1146 (42S02)"),
        "mariadb client output: {run:?}"
    );

    let want = want_keys(vec![
        (vec![s("INSERT"), s("items"), None, None], 3),
        (vec![s("SELECT"), s("items"), None, None], 3),
        (vec![s("INSERT"), s("items"), s("1062"), s("23000")], 1),
        (vec![s("SELECT"), s("missing"), s("1146"), s("42S02")], 1),
    ]);
    let total = want.values().sum();
    let sides = client_and_server(DB_SIDES, run.pid, db.pid());
    let (points, mut problems) = ctx.sides(&sides, total);
    let keys = [
        "db.operation.name",
        "db.collection.name",
        "db.response.status_code",
        "error.type",
    ];
    for (side, points) in sides.iter().zip(&points) {
        check_counts(&mut problems, side, points, &keys, &want);
        same_on_all(&mut problems, points, "db.system.name", s("mariadb"));
        same_on_all(&mut problems, points, "db.namespace", s(DATABASE));
    }
    check_server_named(&mut problems, &points[0], db.port);
    no_problems(&ctx, &problems, &[run.pid, db.pid()]);
    eprintln!("[mariadb metrics] {} series per side", points[0].len());
    ctx.stop();
}

/// The grpcio client makes unary and server-streaming calls, one NOT_FOUND
/// and one UNKNOWN (an exception in the handler) on one channel:
/// `rpc.client.duration` and `rpc.server.duration` count them per method
/// and status code. `error.type` follows the spans: every non-zero code on
/// the client, only UNKNOWN of these two on the server.
#[test]
fn grpc_rpc_metrics_match_the_calls() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    if !grpcio_available() {
        eprintln!("skipped: the tests' Python cannot import grpc (`cargo xtask deps`)");
        return;
    }
    const UNARY: u64 = 12;
    const STREAMS: u64 = 4;
    let server = must(GrpcServer::start());
    let ctx = Ctx::start("grpc", FAST_EXPORT, &[]);
    let args = grpc_client_args(
        server.port,
        "counts",
        &[&UNARY.to_string(), &STREAMS.to_string()],
    );
    let run = must(run_python(PY_GRPC_CLIENT, &args));
    let mut made: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for call in calls(&run.stdout) {
        *made.entry(call).or_insert(0) += 1;
    }
    let expected_calls = BTreeMap::from([
        (("SayHello".to_string(), 0), UNARY),
        (("Stream".to_string(), 0), STREAMS),
        (("Missing".to_string(), 5), 1),
        (("Boom".to_string(), 2), 1),
    ]);
    assert_eq!(made, expected_calls, "grpc client: {run:?}");

    let want = |not_found_error: Option<Value>| {
        want_keys(vec![
            (vec![s("SayHello"), i(0), None], UNARY),
            (vec![s("Stream"), i(0), None], STREAMS),
            (vec![s("Missing"), i(5), not_found_error], 1),
            (vec![s("Boom"), i(2), s("2")], 1),
        ])
    };
    let sides = client_and_server(RPC_SIDES, run.pid, server.pid());
    let (points, mut problems) = ctx.sides(&sides, UNARY + STREAMS + 2);
    let keys = ["rpc.method", "rpc.grpc.status_code", "error.type"];
    for ((side, points), want) in sides.iter().zip(&points).zip([want(s("5")), want(None)]) {
        check_counts(&mut problems, side, points, &keys, &want);
        same_on_all(&mut problems, points, "rpc.system", s("grpc"));
        same_on_all(&mut problems, points, "rpc.service", s(SERVICE));
    }
    check_server_named(&mut problems, &points[0], server.port);
    no_problems(&ctx, &problems, &[run.pid, server.pid()]);
    eprintln!("[grpc metrics] {} series per side", points[0].len());
    ctx.stop();
}
