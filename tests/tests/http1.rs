//! HTTP/1.x end to end: real nginx, Python servers and clients, the real
//! agent, spans received over OTLP. Needs root (skips otherwise) and a
//! release build of the agent (`cargo build --release -p sonde`).
//!
//! Every test starts its own receiver, servers and agent. They share the
//! kernel, so a static mutex runs them one at a time.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use sonde_tests::clients::{
    PY_FILE_IO, PY_KEEPALIVE_CLIENT, PY_PIPELINED_CLIENT, PyChild, curl, run_python,
};
use sonde_tests::servers::{INDEX_HTML, Nginx, PyUpstream};
use sonde_tests::util::process_exists;
use sonde_tests::{Agent, Kind, ReceivedSpan, Receiver, Status, require_root};

static SERIAL: Mutex<()> = Mutex::new(());

/// A span selector.
type Pick<'a> = &'a dyn Fn(&ReceivedSpan) -> bool;

/// How long to wait for expected spans.
const WAIT: Duration = Duration::from_secs(15);
/// Extra time after the expected spans arrived, to catch any surplus ones.
const SETTLE: Duration = Duration::from_secs(1);

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
    /// Starts a receiver and an agent exporting with `protocol`
    /// (`grpc` or `http/protobuf`).
    fn start(protocol: &str) -> Ctx {
        Ctx::start_with(protocol, "")
    }

    /// Like [`Ctx::start`], with `extra_yaml` merged into the agent config.
    fn start_with(protocol: &str, extra_yaml: &str) -> Ctx {
        let rx = must(Receiver::start());
        let endpoint = if protocol == "grpc" {
            rx.grpc_endpoint()
        } else {
            rx.http_endpoint()
        };
        let agent = must(Agent::start(&endpoint, protocol, extra_yaml));
        Ctx {
            rx,
            agent: Some(agent),
        }
    }

    /// Spans matching `f`, ordered by start time.
    fn spans(&self, f: impl Fn(&ReceivedSpan) -> bool) -> Vec<ReceivedSpan> {
        let mut v: Vec<_> = self.rx.spans().into_iter().filter(|s| f(s)).collect();
        v.sort_by_key(|s| (s.start_ns, s.end_ns));
        v
    }

    /// Waits until at least `n` spans match each filter, then a little more.
    fn wait_counts(&self, wanted: &[(usize, Pick)]) {
        self.rx.wait_for(WAIT, |spans| {
            wanted
                .iter()
                .all(|(n, f)| spans.iter().filter(|s| f(s)).count() >= *n)
        });
        std::thread::sleep(SETTLE);
    }

    /// Panics with `msg` and a dump of the received spans (those `relevant`
    /// picks first).
    fn fail(&self, msg: &str, relevant: Pick) -> ! {
        panic!("{msg}{}", self.rx.report(relevant));
    }

    fn check(&self, ok: bool, msg: &str, relevant: Pick) {
        if !ok {
            self.fail(msg, relevant);
        }
    }

    /// Panics listing every problem, if there are any.
    fn check_problems(&self, problems: Vec<String>, relevant: Pick) {
        if !problems.is_empty() {
            let mut msg = format!("{} problem(s):\n", problems.len());
            for p in problems.iter().take(40) {
                msg.push_str("  - ");
                msg.push_str(p);
                msg.push('\n');
            }
            self.fail(&msg, relevant);
        }
    }

    /// SIGTERM the agent; it must exit 0 within 5 s.
    fn stop(mut self) {
        if let Some(agent) = self.agent.take() {
            must(agent.stop());
        }
    }
}

/// What an HTTP span should say.
struct Expect<'a> {
    kind: Kind,
    path: &'a str,
    status: i64,
    /// `network.protocol.version`, when the test knows it.
    version: Option<&'a str>,
}

fn get(kind: Kind, path: &str, status: i64) -> Expect<'_> {
    Expect {
        kind,
        path,
        status,
        version: Some("1.1"),
    }
}

/// Checks one span against the common HTTP conventions and `e`; returns the
/// problems found, each naming the span.
fn http_problems(s: &ReceivedSpan, e: &Expect) -> Vec<String> {
    let mut p = Vec::new();
    let mut bad = |what: String| p.push(format!("{what} in [{}]", s.compact()));
    if s.kind != e.kind {
        bad(format!("kind {:?}, expected {:?}", s.kind, e.kind));
    }
    let name = format!("GET {}", e.path);
    if s.name != name {
        bad(format!("name {:?}, expected {name:?}", s.name));
    }
    if s.attr_str("http.request.method") != Some("GET") {
        bad(format!(
            "http.request.method {:?}",
            s.attr("http.request.method")
        ));
    }
    if s.attr_str("url.path") != Some(e.path) {
        bad(format!(
            "url.path {:?}, expected {:?}",
            s.attr("url.path"),
            e.path
        ));
    }
    if s.attr_str("http.route") != Some(e.path) {
        bad(format!(
            "http.route {:?}, expected {:?}",
            s.attr("http.route"),
            e.path
        ));
    }
    if s.attr_str("url.scheme") != Some("http") {
        bad(format!("url.scheme {:?}", s.attr("url.scheme")));
    }
    if s.attr_int("http.response.status_code") != Some(e.status) {
        bad(format!(
            "http.response.status_code {:?}, expected {}",
            s.attr("http.response.status_code"),
            e.status
        ));
    }
    if let Some(v) = e.version
        && s.attr_str("network.protocol.version") != Some(v)
    {
        bad(format!(
            "network.protocol.version {:?}, expected {v:?}",
            s.attr("network.protocol.version")
        ));
    }
    if s.attr_str("network.transport") != Some("tcp") {
        bad(format!(
            "network.transport {:?}",
            s.attr("network.transport")
        ));
    }
    let is_error = match e.kind {
        Kind::Server => e.status >= 500,
        _ => e.status >= 400,
    };
    if is_error {
        if s.status != Status::Error {
            bad(format!("span status {:?}, expected Error", s.status));
        }
        let code = e.status.to_string();
        if s.attr_str("error.type") != Some(code.as_str()) {
            bad(format!(
                "error.type {:?}, expected {code:?}",
                s.attr("error.type")
            ));
        }
    } else {
        if s.status == Status::Error {
            bad("span status Error on a non-error response".to_string());
        }
        if s.attr("error.type").is_some() {
            bad(format!(
                "error.type {:?} on a non-error response",
                s.attr("error.type")
            ));
        }
    }
    if s.start_ns == 0 || s.duration_ns() <= 0 {
        bad(format!("bad times start={} end={}", s.start_ns, s.end_ns));
    }
    // Wall clock: within a day of now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    if (now - i128::from(s.start_ns)).abs() > 86_400 * 1_000_000_000 {
        bad(format!("start {} is not wall-clock time", s.start_ns));
    }
    if s.res_str("telemetry.distro.name") != Some("sonde") {
        bad(format!(
            "resource telemetry.distro.name {:?}",
            s.resource.get("telemetry.distro.name")
        ));
    }
    if s.res_str("host.name").is_none_or(str::is_empty) {
        bad(format!(
            "resource host.name {:?}",
            s.resource.get("host.name")
        ));
    }
    if s.res_str("process.executable.name")
        .is_none_or(str::is_empty)
    {
        bad(format!(
            "resource process.executable.name {:?}",
            s.resource.get("process.executable.name")
        ));
    }
    p
}

/// Compares one attribute with a string.
fn want_str(p: &mut Vec<String>, s: &ReceivedSpan, key: &str, want: &str) {
    if s.attr_str(key) != Some(want) {
        p.push(format!(
            "{key} {:?}, expected {want:?} in [{}]",
            s.attr(key),
            s.compact()
        ));
    }
}

/// Compares one attribute with an integer.
fn want_int(p: &mut Vec<String>, s: &ReceivedSpan, key: &str, want: i64) {
    if s.attr_int(key) != Some(want) {
        p.push(format!(
            "{key} {:?}, expected {want} in [{}]",
            s.attr(key),
            s.compact()
        ));
    }
}

/// Compares a resource attribute with a string.
fn want_res(p: &mut Vec<String>, s: &ReceivedSpan, key: &str, want: &str) {
    if s.res_str(key) != Some(want) {
        p.push(format!(
            "resource {key} {:?}, expected {want:?} in [{}]",
            s.resource.get(key),
            s.compact()
        ));
    }
}

/// The user agent starts with `prefix`.
fn want_ua(p: &mut Vec<String>, s: &ReceivedSpan, prefix: &str) {
    if !s
        .attr_str("user_agent.original")
        .is_some_and(|ua| ua.starts_with(prefix))
    {
        p.push(format!(
            "user_agent.original {:?}, expected {prefix:?}... in [{}]",
            s.attr("user_agent.original"),
            s.compact()
        ));
    }
}

/// Server-side fields for a request from 127.0.0.1:`client_port` to nginx.
fn server_side(p: &mut Vec<String>, s: &ReceivedSpan, server_port: u16, client_port: u16) {
    want_str(p, s, "client.address", "127.0.0.1");
    want_int(p, s, "client.port", client_port.into());
    want_str(p, s, "network.peer.address", "127.0.0.1");
    want_int(p, s, "network.peer.port", client_port.into());
    want_str(p, s, "server.address", "127.0.0.1");
    want_int(p, s, "server.port", server_port.into());
}

/// Client-side fields for a request to 127.0.0.1:`server_port`.
fn client_side(p: &mut Vec<String>, s: &ReceivedSpan, server_port: u16) {
    want_str(p, s, "server.address", "127.0.0.1");
    want_int(p, s, "server.port", server_port.into());
    want_str(p, s, "network.peer.address", "127.0.0.1");
    want_int(p, s, "network.peer.port", server_port.into());
    if let Some(path) = s.attr_str("url.path") {
        want_str(
            p,
            s,
            "url.full",
            &format!("http://127.0.0.1:{server_port}{path}"),
        );
    }
}

/// `path -> status` counts, for comparing sets of spans regardless of order.
fn path_status(spans: &[ReceivedSpan]) -> BTreeMap<(String, i64), usize> {
    let mut m = BTreeMap::new();
    for s in spans {
        let key = (
            s.attr_str("url.path").unwrap_or("<none>").to_string(),
            s.attr_int("http.response.status_code").unwrap_or(-1),
        );
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

fn expected_path_status(pairs: &[(&str, i64)]) -> BTreeMap<(String, i64), usize> {
    let mut m = BTreeMap::new();
    for (p, s) in pairs {
        *m.entry((p.to_string(), *s)).or_insert(0) += 1;
    }
    m
}

fn pid_in(pids: &[u32]) -> impl Fn(&ReceivedSpan) -> bool + '_ {
    move |s| s.pid().is_some_and(|p| pids.contains(&p))
}

/// 100 GETs on one keep-alive connection: exactly 100 server spans in nginx
/// and exactly 100 client spans in curl.
#[test]
fn keep_alive_100() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let nginx = must(Nginx::start(None));
    let ctx = Ctx::start("grpc");

    let urls = vec![nginx.url("/index.html"); 100];
    let run = must(curl(&urls));
    let port = run.results[0].local_port;
    assert!(
        run.results
            .iter()
            .all(|r| r.code == 200 && r.local_port == port),
        "curl did not get 100 × 200 on one connection: {:?}",
        run.results
    );

    let from_nginx = pid_in(nginx.pids());
    let srv = |s: &ReceivedSpan| from_nginx(s) && s.kind == Kind::Server;
    let cli = |s: &ReceivedSpan| s.pid() == Some(run.pid);
    let relevant = |s: &ReceivedSpan| from_nginx(s) || cli(s);
    ctx.wait_counts(&[(100, &srv), (100, &cli)]);
    let servers = ctx.spans(srv);
    let clients = ctx.spans(cli);
    ctx.check(
        servers.len() == 100 && clients.len() == 100,
        &format!(
            "expected exactly 100 nginx SERVER spans and 100 curl spans, got {} and {}",
            servers.len(),
            clients.len()
        ),
        &relevant,
    );
    eprintln!(
        "[keep_alive_100] sample spans:\n  {}\n  {}",
        servers[0].full(),
        clients[0].full()
    );
    let body_len = INDEX_HTML.len() as i64;
    let mut problems = Vec::new();
    for s in &servers {
        problems.extend(http_problems(s, &get(Kind::Server, "/index.html", 200)));
        want_res(&mut problems, s, "service.name", "nginx");
        want_res(&mut problems, s, "process.executable.name", "nginx");
        server_side(&mut problems, s, nginx.port, port);
        want_ua(&mut problems, s, "curl/");
        want_int(&mut problems, s, "http.response.body.size", body_len);
    }
    for s in &clients {
        problems.extend(http_problems(s, &get(Kind::Client, "/index.html", 200)));
        want_res(&mut problems, s, "service.name", "curl");
        want_res(&mut problems, s, "process.executable.name", "curl");
        client_side(&mut problems, s, nginx.port);
        want_ua(&mut problems, s, "curl/");
        want_int(&mut problems, s, "http.response.body.size", body_len);
    }
    ctx.check_problems(problems, &relevant);
    ctx.stop();
}

/// Five requests written in one `sendall`: each response is paired with the
/// right request on both sides.
#[test]
fn pipelined() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let nginx = must(Nginx::start(None));
    // The five responses (about 1.7 KB) usually reach the client in a single
    // read. The agent copies only `capture.bytes` of each read and skips the
    // rest as a gap, so capture enough to see every response in that read.
    let ctx = Ctx::start_with("grpc", "capture:\n  bytes: 4096\n");

    let paths = [
        "/index.html",
        "/missing1",
        "/index.html",
        "/missing2",
        "/index.html",
    ];
    let mut args = vec![nginx.port.to_string()];
    args.extend(paths.iter().map(std::string::ToString::to_string));
    let run = must(run_python(PY_PIPELINED_CLIENT, &args));
    assert_eq!(
        run.value("statuses"),
        Some("200 404 200 404 200"),
        "the pipelined client did not get the expected responses: {run:?}"
    );
    eprintln!("[pipelined] client recv sizes: {:?}", run.value("reads"));
    let local_port: u16 = run
        .value("local_port")
        .and_then(|p| p.parse().ok())
        .expect("local_port line");

    let from_nginx = pid_in(nginx.pids());
    let srv = |s: &ReceivedSpan| from_nginx(s) && s.kind == Kind::Server;
    let cli = |s: &ReceivedSpan| s.pid() == Some(run.pid);
    let relevant = |s: &ReceivedSpan| from_nginx(s) || cli(s);
    ctx.wait_counts(&[(5, &srv), (5, &cli)]);
    let servers = ctx.spans(srv);
    let clients = ctx.spans(cli);
    let want = expected_path_status(&[
        ("/index.html", 200),
        ("/index.html", 200),
        ("/index.html", 200),
        ("/missing1", 404),
        ("/missing2", 404),
    ]);
    ctx.check(
        servers.len() == 5 && path_status(&servers) == want,
        &format!(
            "nginx SERVER spans: expected {want:?}, got {:?} ({} spans)",
            path_status(&servers),
            servers.len()
        ),
        &relevant,
    );
    ctx.check(
        clients.len() == 5 && path_status(&clients) == want,
        &format!(
            "python CLIENT spans: expected {want:?}, got {:?} ({} spans)",
            path_status(&clients),
            clients.len()
        ),
        &relevant,
    );
    let mut problems = Vec::new();
    for s in &servers {
        let path = s.attr_str("url.path").unwrap_or_default();
        let status = if path == "/index.html" { 200 } else { 404 };
        problems.extend(http_problems(s, &get(Kind::Server, path, status)));
        want_res(&mut problems, s, "service.name", "nginx");
        server_side(&mut problems, s, nginx.port, local_port);
        want_ua(&mut problems, s, "sonde-test-pipeline");
    }
    for s in &clients {
        let path = s.attr_str("url.path").unwrap_or_default();
        let status = if path == "/index.html" { 200 } else { 404 };
        problems.extend(http_problems(s, &get(Kind::Client, path, status)));
        client_side(&mut problems, s, nginx.port);
        want_ua(&mut problems, s, "sonde-test-pipeline");
    }
    ctx.check_problems(problems, &relevant);
    ctx.stop();
}

/// 404 is an error for the client only; 500 is an error on both sides.
#[test]
fn errors() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let nginx = must(Nginx::start(None));
    let ctx = Ctx::start("grpc");

    let run = must(curl(&[nginx.url("/missing"), nginx.url("/fail")]));
    let codes: Vec<u16> = run.results.iter().map(|r| r.code).collect();
    assert_eq!(codes, [404, 500], "curl results {:?}", run.results);
    let local_port = run.results[0].local_port;

    let from_nginx = pid_in(nginx.pids());
    let srv = |s: &ReceivedSpan| from_nginx(s) && s.kind == Kind::Server;
    let cli = |s: &ReceivedSpan| s.pid() == Some(run.pid);
    let relevant = |s: &ReceivedSpan| from_nginx(s) || cli(s);
    ctx.wait_counts(&[(2, &srv), (2, &cli)]);
    let servers = ctx.spans(srv);
    let clients = ctx.spans(cli);
    let want = expected_path_status(&[("/missing", 404), ("/fail", 500)]);
    ctx.check(
        path_status(&servers) == want && path_status(&clients) == want,
        &format!(
            "expected {want:?} on both sides; nginx SERVER {:?}, curl {:?}",
            path_status(&servers),
            path_status(&clients)
        ),
        &relevant,
    );
    // http_problems holds the error rules: server spans are errors only for
    // 5xx, client spans for 4xx and 5xx, with error.type the status code.
    let mut problems = Vec::new();
    for s in &servers {
        let path = s.attr_str("url.path").unwrap_or_default();
        let status = s.attr_int("http.response.status_code").unwrap_or(-1);
        problems.extend(http_problems(s, &get(Kind::Server, path, status)));
        server_side(&mut problems, s, nginx.port, local_port);
    }
    for s in &clients {
        let path = s.attr_str("url.path").unwrap_or_default();
        let status = s.attr_int("http.response.status_code").unwrap_or(-1);
        problems.extend(http_problems(s, &get(Kind::Client, path, status)));
        client_side(&mut problems, s, nginx.port);
    }
    ctx.check_problems(problems, &relevant);
    ctx.stop();
}

/// curl -> nginx /proxy/index.html -> Python upstream /index.html: a server
/// and a client span in nginx, a server span in the upstream whose peer is
/// nginx's upstream connection.
#[test]
fn proxy() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let upstream = must(PyUpstream::start("py-upstream", "HTTP/1.0"));
    let nginx = must(Nginx::start(Some(upstream.port)));
    let ctx = Ctx::start("grpc");

    let run = must(curl(&[nginx.url("/proxy/index.html")]));
    assert_eq!(
        run.results[0].code,
        200,
        "curl: {run:?}; nginx error.log:\n{}",
        nginx.error_log()
    );
    let peers = upstream.peers();
    assert_eq!(
        peers.len(),
        1,
        "upstream saw {peers:?}; stderr {:?}",
        upstream.stderr()
    );
    let (nginx_local_port, up_path) = peers[0].clone();
    assert_eq!(up_path, "/index.html");

    let from_nginx = pid_in(nginx.pids());
    let up_pid = upstream.pid();
    let ng_srv = |s: &ReceivedSpan| from_nginx(s) && s.kind == Kind::Server;
    let ng_cli = |s: &ReceivedSpan| from_nginx(s) && s.kind == Kind::Client;
    let up_srv = |s: &ReceivedSpan| s.pid() == Some(up_pid);
    let cli = |s: &ReceivedSpan| s.pid() == Some(run.pid);
    let relevant = |s: &ReceivedSpan| from_nginx(s) || up_srv(s) || cli(s);
    ctx.wait_counts(&[(1, &ng_srv), (1, &ng_cli), (1, &up_srv), (1, &cli)]);
    let (a, b, c, d) = (
        ctx.spans(ng_srv),
        ctx.spans(ng_cli),
        ctx.spans(up_srv),
        ctx.spans(cli),
    );
    ctx.check(
        a.len() == 1 && b.len() == 1 && c.len() == 1 && d.len() == 1,
        &format!(
            "expected one span each: nginx SERVER {}, nginx CLIENT {}, upstream {}, curl {}",
            a.len(),
            b.len(),
            c.len(),
            d.len()
        ),
        &relevant,
    );
    let (ng_server, ng_client, up_server, curl_client) = (&a[0], &b[0], &c[0], &d[0]);
    let mut p = Vec::new();

    p.extend(http_problems(
        ng_server,
        &get(Kind::Server, "/proxy/index.html", 200),
    ));
    want_res(&mut p, ng_server, "service.name", "nginx");
    server_side(&mut p, ng_server, nginx.port, run.results[0].local_port);

    p.extend(http_problems(
        ng_client,
        &get(Kind::Client, "/index.html", 200),
    ));
    want_res(&mut p, ng_client, "service.name", "nginx");
    client_side(&mut p, ng_client, upstream.port);

    // nginx asks in HTTP/1.1 and the upstream answers in HTTP/1.0, so the
    // version is not checked on this span.
    let mut up = get(Kind::Server, "/index.html", 200);
    up.version = None;
    p.extend(http_problems(up_server, &up));
    want_res(&mut p, up_server, "service.name", "py-upstream");
    server_side(&mut p, up_server, upstream.port, nginx_local_port);

    p.extend(http_problems(
        curl_client,
        &get(Kind::Client, "/proxy/index.html", 200),
    ));
    client_side(&mut p, curl_client, nginx.port);

    // Each hop contains the next one, so durations shrink along the chain.
    if !(curl_client.duration_ns() >= ng_server.duration_ns()
        && ng_server.duration_ns() >= ng_client.duration_ns()
        && ng_client.duration_ns() >= up_server.duration_ns())
    {
        p.push(format!(
            "durations do not nest: curl {} >= nginx server {} >= nginx client {} >= upstream {} (ns)",
            curl_client.duration_ns(),
            ng_server.duration_ns(),
            ng_client.duration_ns(),
            up_server.duration_ns()
        ));
    }
    eprintln!(
        "[proxy] traces: nginx server {}/{} parent {:?}; nginx client {}/{} parent {:?}; upstream {}/{} parent {:?}",
        ng_server.trace_id,
        ng_server.span_id,
        ng_server.parent_span_id,
        ng_client.trace_id,
        ng_client.span_id,
        ng_client.parent_span_id,
        up_server.trace_id,
        up_server.span_id,
        up_server.parent_span_id
    );
    ctx.check_problems(p, &relevant);
    ctx.stop();
}

/// A connection opened (and used once) before the agent started is traced
/// from then on: exactly the three later requests appear on both sides.
#[test]
fn preexisting_connection() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let nginx = must(Nginx::start(None));
    let mut client = must(PyChild::spawn(
        PY_KEEPALIVE_CLIENT,
        &[
            nginx.port.to_string(),
            "/before-agent".into(),
            "/index.html,/after-1,/after-2".into(),
        ],
    ));
    must(client.wait_line("waiting", Duration::from_secs(15)));
    let local_port: u16 = must(client.wait_line("local_port", Duration::from_secs(1)))
        .trim_start_matches("local_port ")
        .parse()
        .expect("local_port");

    let ctx = Ctx::start("grpc");
    must(client.send_line("go"));
    let py_pid = client.pid();
    let out = must(client.finish(Duration::from_secs(15)));
    assert!(
        out.iter().any(|l| l == "404 /before-agent")
            && out.iter().any(|l| l == "200 /index.html")
            && out.iter().any(|l| l == "404 /after-2"),
        "python client output {out:?}"
    );

    let from_nginx = pid_in(nginx.pids());
    let srv = |s: &ReceivedSpan| from_nginx(s) && s.kind == Kind::Server;
    let cli = |s: &ReceivedSpan| s.pid() == Some(py_pid);
    let relevant = |s: &ReceivedSpan| from_nginx(s) || cli(s);
    ctx.wait_counts(&[(3, &srv), (3, &cli)]);
    let servers = ctx.spans(srv);
    let clients = ctx.spans(cli);
    let want = expected_path_status(&[("/index.html", 200), ("/after-1", 404), ("/after-2", 404)]);
    ctx.check(
        servers.len() == 3 && path_status(&servers) == want,
        &format!(
            "nginx SERVER spans: expected {want:?}, got {:?}",
            path_status(&servers)
        ),
        &relevant,
    );
    ctx.check(
        clients.len() == 3 && path_status(&clients) == want,
        &format!(
            "python CLIENT spans: expected {want:?}, got {:?}",
            path_status(&clients)
        ),
        &relevant,
    );
    let mut p = Vec::new();
    for s in &servers {
        let path = s.attr_str("url.path").unwrap_or_default();
        let status = s.attr_int("http.response.status_code").unwrap_or(-1);
        p.extend(http_problems(s, &get(Kind::Server, path, status)));
        server_side(&mut p, s, nginx.port, local_port);
        want_ua(&mut p, s, "sonde-test-python");
    }
    for s in &clients {
        let path = s.attr_str("url.path").unwrap_or_default();
        let status = s.attr_int("http.response.status_code").unwrap_or(-1);
        p.extend(http_problems(s, &get(Kind::Client, path, status)));
        client_side(&mut p, s, nginx.port);
    }
    ctx.check_problems(p, &relevant);
    ctx.stop();
}

/// A client that has exited (and been reaped) before the agent reads its
/// /proc entry is still named: the kernel sends its name with the
/// connection's first record.
#[test]
fn exited_client_keeps_its_name() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let nginx = must(Nginx::start(None));
    let ctx = Ctx::start("grpc");
    let agent_pid = ctx.agent.as_ref().expect("agent").pid() as libc::pid_t;
    // The agent is stopped while curl runs, so curl is gone when it looks.
    // SAFETY: plain signals to the agent's pid.
    assert_eq!(unsafe { libc::kill(agent_pid, libc::SIGSTOP) }, 0);
    let run = curl(&[nginx.url("/index.html")]);
    assert_eq!(unsafe { libc::kill(agent_pid, libc::SIGCONT) }, 0);
    let run = must(run);
    assert!(!process_exists(run.pid), "curl {} still runs", run.pid);

    let cli = |s: &ReceivedSpan| s.pid() == Some(run.pid);
    ctx.wait_counts(&[(1, &cli)]);
    let clients = ctx.spans(cli);
    let mut problems = Vec::new();
    if clients.len() != 1 {
        problems.push(format!("{} client spans from curl, want 1", clients.len()));
    }
    for s in &clients {
        problems.extend(http_problems(s, &get(Kind::Client, "/index.html", 200)));
        want_res(&mut problems, s, "service.name", "curl");
        want_res(&mut problems, s, "process.executable.name", "curl");
    }
    ctx.check_problems(problems, &cli);
    ctx.stop();
}

/// Client span durations are bounded by what curl measured; server span
/// durations by their client span.
#[test]
fn durations() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let nginx = must(Nginx::start(None));
    let ctx = Ctx::start("grpc");

    let run = must(curl(&vec![nginx.url("/index.html"); 20]));
    assert!(run.results.iter().all(|r| r.code == 200), "curl: {run:?}");

    let from_nginx = pid_in(nginx.pids());
    let srv = |s: &ReceivedSpan| from_nginx(s) && s.kind == Kind::Server;
    let cli = |s: &ReceivedSpan| s.pid() == Some(run.pid);
    let relevant = |s: &ReceivedSpan| from_nginx(s) || cli(s);
    ctx.wait_counts(&[(20, &srv), (20, &cli)]);
    let servers = ctx.spans(srv);
    let clients = ctx.spans(cli);
    ctx.check(
        servers.len() == 20 && clients.len() == 20,
        &format!(
            "expected 20 spans on each side, got {} nginx SERVER and {} curl",
            servers.len(),
            clients.len()
        ),
        &relevant,
    );
    // Clock granularity allowance.
    const TOLERANCE_NS: i128 = 1_000_000;
    let mut p = Vec::new();
    for (i, ((c, s), r)) in clients.iter().zip(&servers).zip(&run.results).enumerate() {
        let measured = (r.time_total * 1e9) as i128;
        if c.duration_ns() <= 0 || c.duration_ns() > measured + TOLERANCE_NS {
            p.push(format!(
                "request {i}: client span {} ns, curl measured {measured} ns in [{}]",
                c.duration_ns(),
                c.compact()
            ));
        }
        if s.duration_ns() <= 0 || s.duration_ns() > c.duration_ns() {
            p.push(format!(
                "request {i}: server span {} ns > client span {} ns in [{}] / [{}]",
                s.duration_ns(),
                c.duration_ns(),
                s.compact(),
                c.compact()
            ));
        }
        if s.start_ns < c.start_ns || s.end_ns > c.end_ns {
            p.push(format!(
                "request {i}: server span [{}, {}] is not inside client span [{}, {}]",
                s.start_ns, s.end_ns, c.start_ns, c.end_ns
            ));
        }
    }
    ctx.check_problems(p, &relevant);
    ctx.stop();
}

/// Files and pipes never produce spans, even when their bytes look like HTTP.
#[test]
fn no_file_spans() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let nginx = must(Nginx::start(None));
    let ctx = Ctx::start("grpc");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("http-looking.bin");
    let io = must(run_python(PY_FILE_IO, &[file.display().to_string()]));
    assert_eq!(
        io.value("read"),
        Some("52428800 piped 8388608"),
        "file/pipe script: {io:?}"
    );
    // A request after the file work: once its span is here, anything the
    // file work could have produced would be here too.
    let run = must(curl(&[nginx.url("/index.html")]));
    let fence = |s: &ReceivedSpan| s.pid() == Some(run.pid);
    let from_io = |s: &ReceivedSpan| s.pid() == Some(io.pid);
    ctx.wait_counts(&[(1, &fence)]);
    let relevant = |s: &ReceivedSpan| fence(s) || from_io(s);
    ctx.check(
        !ctx.spans(fence).is_empty(),
        "the fence request's span never arrived",
        &relevant,
    );
    let leaked = ctx.spans(from_io);
    ctx.check(
        leaked.is_empty(),
        &format!(
            "{} span(s) from the file/pipe process {}",
            leaked.len(),
            io.pid
        ),
        &relevant,
    );
    ctx.stop();
}

/// The same single request, exported with OTLP/HTTP protobuf.
#[test]
fn otlp_http() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let nginx = must(Nginx::start(None));
    let ctx = Ctx::start("http/protobuf");

    let run = must(curl(&[nginx.url("/index.html")]));
    assert_eq!(run.results[0].code, 200, "curl: {run:?}");
    let from_nginx = pid_in(nginx.pids());
    let srv = |s: &ReceivedSpan| from_nginx(s) && s.kind == Kind::Server;
    let cli = |s: &ReceivedSpan| s.pid() == Some(run.pid);
    let relevant = |s: &ReceivedSpan| from_nginx(s) || cli(s);
    ctx.wait_counts(&[(1, &srv), (1, &cli)]);
    let servers = ctx.spans(srv);
    let clients = ctx.spans(cli);
    ctx.check(
        servers.len() == 1 && clients.len() == 1,
        &format!(
            "expected one span per side over OTLP/HTTP, got {} nginx SERVER and {} curl",
            servers.len(),
            clients.len()
        ),
        &relevant,
    );
    let mut p = http_problems(&servers[0], &get(Kind::Server, "/index.html", 200));
    p.extend(http_problems(
        &clients[0],
        &get(Kind::Client, "/index.html", 200),
    ));
    let via_grpc = ctx
        .rx
        .spans()
        .iter()
        .filter(|s| s.via != sonde_tests::receiver::Via::Http)
        .count();
    if via_grpc > 0 {
        p.push(format!(
            "{via_grpc} span(s) arrived over gRPC, expected HTTP only"
        ));
    }
    ctx.check_problems(p, &relevant);
    ctx.stop();
}

/// Kernel probe registrations visible in tracefs (legacy kprobe/uprobe
/// events); newer kernels attach through perf links and list nothing here.
fn tracefs_probe_events() -> Vec<String> {
    let mut v = Vec::new();
    for base in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        for f in ["kprobe_events", "uprobe_events"] {
            if let Ok(text) = std::fs::read_to_string(format!("{base}/{f}")) {
                v.extend(text.lines().map(|l| format!("{f}: {l}")));
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

/// SIGTERM: exit code 0 within 5 s, the process is gone and it left no probe
/// registrations or pinned objects behind.
#[test]
fn shutdown() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let nginx = must(Nginx::start(None));
    let events_before = tracefs_probe_events();
    let ctx = Ctx::start("grpc");
    let pid = ctx.agent.as_ref().map(Agent::pid).expect("agent");

    // It works before it is stopped.
    let run = must(curl(&[nginx.url("/index.html")]));
    let cli = |s: &ReceivedSpan| s.pid() == Some(run.pid);
    ctx.wait_counts(&[(1, &cli)]);
    ctx.check(!ctx.spans(cli).is_empty(), "no span for the request", &cli);

    let started = std::time::Instant::now();
    ctx.stop();
    eprintln!("[shutdown] stopped in {:?}", started.elapsed());
    assert!(
        !process_exists(pid),
        "/proc/{pid} still exists after the agent exited"
    );
    let events_after = tracefs_probe_events();
    let left: Vec<_> = events_after
        .iter()
        .filter(|e| !events_before.contains(e))
        .collect();
    assert!(
        left.is_empty(),
        "probe events left behind in tracefs: {left:?}"
    );
    let pinned: Vec<_> = std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.filter_map(std::result::Result::ok)
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.contains("sonde"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        pinned.is_empty(),
        "pinned BPF objects left in /sys/fs/bpf: {pinned:?}"
    );
}

/// An HTTP/1.1 server on a Unix stream socket (path in argv[1]) that answers
/// two requests.
const PY_UNIX_SERVER: &str = r#"
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"unix ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def address_string(self):
        return "unix"
    def log_message(self, *a):
        pass
srv = socketserver.UnixStreamServer(sys.argv[1], H)
print("ready", flush=True)
srv.handle_request()
"#;

#[test]
fn unix_socket() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let dir = must(tempfile::tempdir().map_err(anyhow::Error::from));
    let path = dir.path().join("http.sock");
    let server = must(PyChild::spawn(
        PY_UNIX_SERVER,
        &[path.display().to_string()],
    ));
    must(server.wait_line("ready", Duration::from_secs(10)));
    let ctx = Ctx::start("grpc");

    // Two requests on one connection over the socket.
    let curl = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-o", "/dev/null", "--unix-socket"])
        .arg(&path)
        .args(["http://localhost/unix-a", "http://localhost/unix-b"])
        .spawn()
        .expect("curl runs");
    let curl_pid = curl.id();
    let out = curl.wait_with_output().expect("curl exits");
    assert!(out.status.success(), "curl over the unix socket failed");

    let server_pid = server.pid();
    let srv = |s: &ReceivedSpan| s.pid() == Some(server_pid);
    let cli = |s: &ReceivedSpan| s.pid() == Some(curl_pid);
    let relevant = |s: &ReceivedSpan| srv(s) || cli(s);
    // One keep-alive connection, two requests: two spans on each side.
    ctx.wait_counts(&[(2, &srv), (2, &cli)]);
    let mut p = Vec::new();
    let servers = ctx.spans(srv);
    let clients = ctx.spans(cli);
    for (side, spans, kind) in [
        ("SERVER", &servers, Kind::Server),
        ("CLIENT", &clients, Kind::Client),
    ] {
        if spans.len() != 2 {
            p.push(format!("{} {side} spans, expected 2", spans.len()));
            continue;
        }
        for (s, path) in spans.iter().zip(["/unix-a", "/unix-b"]) {
            if s.kind != kind {
                p.push(format!(
                    "kind {:?}, expected {kind:?}: {}",
                    s.kind,
                    s.compact()
                ));
            }
            want_str(&mut p, s, "network.transport", "unix");
            want_str(&mut p, s, "url.path", path);
            want_int(&mut p, s, "http.response.status_code", 200);
            if s.attr("network.peer.address").is_some() {
                p.push(format!("a unix span has a peer address: {}", s.compact()));
            }
        }
    }
    ctx.check_problems(p, &relevant);
    let _ = server.finish(Duration::from_secs(5));
    ctx.stop();
}

/// A connection muted for carrying no known protocol (TLS-looking bytes)
/// is revived by an HTTP request on it: the kernel's message-start filter
/// lets the request through and both spans arrive.
#[test]
fn muted_connection_revives_on_a_request() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    const SCRIPT: &str = "import socket,threading,time\n\
srv=socket.socket(); srv.bind(('127.0.0.1',0)); srv.listen(1)\n\
def serve():\n    c,_=srv.accept()\n    c.recv(100)\n    got=b''\n    while b'\\r\\n\\r\\n' not in got: got+=c.recv(4096)\n    c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')\n    time.sleep(0.5); c.close()\n\
t=threading.Thread(target=serve); t.start()\n\
cl=socket.create_connection(srv.getsockname())\n\
cl.sendall(b'\\x16\\x03\\x01\\x00\\x05hello')\n\
time.sleep(1.5)\n\
cl.sendall(b'GET /revived HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n')\n\
got=b''\n\
while not got.endswith(b'ok'): got+=cl.recv(4096)\n\
print('status', got.split(b' ')[1].decode())\n\
t.join(); cl.close()\n";
    let ctx = Ctx::start("grpc");
    let run = must(run_python(SCRIPT, &[]));
    assert_eq!(run.value("status"), Some("200"), "{run:?}");
    let mine = |s: &ReceivedSpan| s.pid() == Some(run.pid);
    let cli = |s: &ReceivedSpan| mine(s) && s.kind == Kind::Client;
    let srv = |s: &ReceivedSpan| mine(s) && s.kind == Kind::Server;
    ctx.wait_counts(&[(1, &cli), (1, &srv)]);
    let mut p = Vec::new();
    let spans = ctx.spans(mine);
    if spans.len() != 2 {
        p.push(format!("{} spans, want 1 client and 1 server", spans.len()));
    }
    for s in &spans {
        p.extend(http_problems(s, &get(s.kind, "/revived", 200)));
    }
    ctx.check_problems(p, &mine);
    ctx.stop();
}

/// An inetd-style server: busybox httpd accepts in the parent and serves
/// each connection in a forked child that reads fd 0 and writes fd 1, both
/// the accepted socket. One socket reached through two fds and two
/// processes is one connection: each request gets its SERVER span, from
/// the child that served it, besides curl's CLIENT span.
#[test]
fn forked_child_on_stdio() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("index.html"), INDEX_HTML).expect("index.html");
    let port = sonde_tests::util::free_port();
    let mut httpd = std::process::Command::new("busybox")
        .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
        .arg(root.path())
        .spawn()
        .expect("busybox httpd starts (busybox-static is installed by xtask)");
    let parent = httpd.id();
    assert!(
        sonde_tests::util::wait_port(port, Duration::from_secs(10)),
        "busybox httpd listens"
    );
    let ctx = Ctx::start("grpc");

    let url = format!("http://127.0.0.1:{port}/index.html");
    let run = must(curl(&[url.clone(), url]));
    assert!(run.results.iter().all(|r| r.code == 200), "curl: {run:?}");
    let served = |s: &ReceivedSpan| {
        s.kind == Kind::Server && s.attr_int("server.port") == Some(i64::from(port))
    };
    let cli = |s: &ReceivedSpan| s.pid() == Some(run.pid);
    let relevant = |s: &ReceivedSpan| served(s) || cli(s);
    ctx.wait_counts(&[(2, &served), (2, &cli)]);
    let servers = ctx.spans(served);
    ctx.check(
        servers.len() == 2 && ctx.spans(cli).len() == 2,
        &format!(
            "expected two SERVER spans from busybox httpd's children and two curl spans, got {} and {}",
            servers.len(),
            ctx.spans(cli).len()
        ),
        &relevant,
    );
    let mut p = Vec::new();
    for s in &servers {
        p.extend(http_problems(s, &get(Kind::Server, "/index.html", 200)));
        if s.pid() == Some(parent) || s.pid().is_none() {
            p.push(format!("served by {:?}, not a forked child", s.pid()));
        }
    }
    ctx.check_problems(p, &relevant);
    ctx.stop();
    let _ = httpd.kill();
    let _ = httpd.wait();
}
