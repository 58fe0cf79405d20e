//! Tenants end to end: the real agent, real servers mapped to tenants by
//! each kind of process rule (an environment variable, a cgroup path
//! pattern, the executable's name, and a pod label and a namespace label
//! of pods in kubelet-shaped cgroups, served by the local API server), a
//! gateway whose requests are split by their `x-tenant-id` header, and
//! three OTLP receivers standing for two tenants' backends and the default
//! route's. Needs root (skips otherwise) and a release build of the agent.
//!
//! One test, in phases over one run of traffic:
//! 1. every receiver gets exactly its tenant's spans and series, with its
//!    `X-Scope-OrgID`, and nothing of the others';
//! 2. the rules change in the config file while traffic runs: within 2 s
//!    the new rule routes a server's spans elsewhere, and no request's
//!    span is lost or duplicated across the switch; a broken file then
//!    changes nothing;
//! 3. one tenant's receiver is killed: the others still get everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sonde_tests::agent::config_text;
use sonde_tests::apiserver::{ApiServer, container_id, namespace, pod, uid_for};
use sonde_tests::clients::{PyChild, Timed, timed_lines, unix_now_secs};
use sonde_tests::servers::PodServer;
use sonde_tests::util::{python_bin, send_signal, unified_cgroup_root, wait_port};
use sonde_tests::{Agent, Kind, ReceivedPoint, ReceivedSpan, Receiver, free_port, require_root};

/// The node the agent and the pods are on.
const NODE: &str = "node-tenants";

/// What the issue allows between writing the file and the rules applying.
const APPLY_WITHIN: Duration = Duration::from_secs(2);
/// How long each phase runs with requests flowing.
const PHASE: Duration = Duration::from_secs(4);
/// How long to wait for the last spans and series.
const WAIT: Duration = Duration::from_secs(20);

/// Every 30 ms, one round of GETs, each on a new connection, to every
/// target: `NAME=PORT[=TENANT]` arguments; a TENANT is sent as
/// `x-tenant-id`. The path is `/r/ROUND/NAME`. Prints `ROUND START END`
/// per round (Unix seconds) until stdin closes, then `done`.
const PY_CLIENT: &str = r#"
import http.client, sys, threading, time
targets = []
for arg in sys.argv[1:]:
    parts = arg.split("=")
    targets.append((parts[0], int(parts[1]), parts[2] if len(parts) > 2 else None))
stop = threading.Event()
def watch():
    sys.stdin.readline()
    stop.set()
threading.Thread(target=watch, daemon=True).start()
n = 0
while not stop.is_set():
    start = time.time()
    for name, port, tenant in targets:
        headers = {"User-Agent": "sonde-test-tenants"}
        if tenant:
            headers["x-tenant-id"] = tenant
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/r/%d/%s" % (n, name), headers=headers)
        conn.getresponse().read()
        conn.close()
    print("%d %.6f %.6f" % (n, start, time.time()), flush=True)
    n += 1
    time.sleep(0.03)
print("done", flush=True)
"#;

fn must<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// A Python HTTP server (HTTP/1.0: a connection per request), started by
/// `program` with `env`, in `cgroup` (a directory of the unified
/// hierarchy, made here) when given.
struct Server {
    child: Child,
    port: u16,
    cgroup: Option<PathBuf>,
}

impl Server {
    fn start(program: &Path, env: &[(&str, &str)], cgroup: Option<PathBuf>) -> Server {
        let port = free_port();
        let mut script = String::new();
        if let Some(dir) = &cgroup {
            std::fs::create_dir_all(dir).expect("create the server's cgroup");
            script.push_str(&format!("echo $$ > {}/cgroup.procs && ", dir.display()));
        }
        script.push_str(&format!(
            "exec {} -m http.server {port} --bind 127.0.0.1",
            program.display()
        ));
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh runs");
        assert!(
            wait_port(port, Duration::from_secs(10)),
            "{} did not start",
            program.display()
        );
        Server {
            child,
            port,
            cgroup,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.cgroup {
            let _ = std::fs::remove_dir(dir);
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// (round, target) of a span, by its `/r/ROUND/NAME` path.
fn request_of(span: &ReceivedSpan) -> Option<(u64, String)> {
    let rest = span.attr_str("url.path")?.strip_prefix("/r/")?;
    let (round, name) = rest.split_once('/')?;
    Some((round.parse().ok()?, name.to_owned()))
}

/// The tenant a span carries: a header rule's (span attribute), else its
/// process's (resource attribute).
fn tenant_of(span: &ReceivedSpan) -> Option<&str> {
    span.attr_str("tenant.id")
        .or_else(|| span.res_str("tenant.id"))
}

/// The receivers by route name.
struct Routes {
    acme: Receiver,
    globex: Option<Receiver>,
    default: Receiver,
}

impl Routes {
    fn all(&self) -> Vec<(&'static str, &Receiver)> {
        let mut all = vec![("acme", &self.acme), ("default", &self.default)];
        if let Some(g) = &self.globex {
            all.push(("globex", g));
        }
        all
    }

    /// (round, target, kind) → the routes its spans reached, one entry
    /// per span.
    fn seen(&self) -> BTreeMap<(u64, String, Kind), Vec<&'static str>> {
        let mut seen: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for (route, rx) in self.all() {
            for s in rx.spans() {
                if let Some((round, target)) = request_of(&s) {
                    seen.entry((round, target, s.kind)).or_default().push(route);
                }
            }
        }
        seen
    }
}

fn rules(extra: &str) -> String {
    format!(
        "tenants:
  rules:
    - header: x-tenant-id
    - env: TENANT_ID
    - cgroup: 'sonde-tenants\\.slice/(?P<tenant>[a-z]+)\\.scope$'
{extra}    - executable: 'initech-*'
      tenant: initech
    - pod_label: tenant-id
    - namespace_label: tenant
    - pod_annotation: example.com/tenant
    - namespace: 'stark-*'
  default: shared
kubernetes:
  enabled: true
  node_name: {NODE}
"
    )
}

#[test]
fn each_tenant_gets_its_own_and_routes_change_live() {
    if !require_root() {
        return;
    }
    let mut routes = Routes {
        acme: must(Receiver::start()),
        globex: Some(must(Receiver::start())),
        default: must(Receiver::start()),
    };
    let globex_endpoint = routes.globex.as_ref().map(Receiver::grpc_endpoint).unwrap();
    let export = format!(
        "export:
  tenants:
    acme:
      endpoint: {}
      protocol: http/protobuf
      headers:
        X-Scope-OrgID: '${{tenant}}'
      batch_timeout_ms: 200
    globex:
      endpoint: {globex_endpoint}
      protocol: grpc
      headers:
        X-Scope-OrgID: '${{tenant}}'
      batch_timeout_ms: 200
metrics:
  otlp:
    interval_ms: 500
",
        routes.acme.http_endpoint()
    );
    let config = |extra_rules: &str| must(config_text(&format!("{}{export}", rules(extra_rules))));

    // The servers: acme's by its environment, globex's by its cgroup,
    // initech's by its executable's name, and a gateway of no tenant.
    let python = python_bin();
    let exe_dir = tempfile::tempdir().expect("a temporary directory");
    let initech_python = exe_dir.path().join("initech-server");
    std::fs::copy(&python, &initech_python).expect("copy python");
    let acme_server = Server::start(&python, &[("TENANT_ID", "acme")], None);
    let globex_server = Server::start(
        &python,
        &[],
        Some(unified_cgroup_root().join("sonde-tenants.slice/globex.scope")),
    );
    let initech_server = Server::start(&initech_python, &[], None);
    let gateway = Server::start(&python, &[], None);
    // Pods: umbrella's by its pod label, hooli's by its namespace's label,
    // wayne's by its pod annotation, stark-ind's by its namespace's name.
    let api = must(ApiServer::start());
    let kubeconfig = must(api.write_kubeconfig(exe_dir.path()));
    must(api.apply(&namespace("umbrella-web", &[])));
    must(api.apply(&namespace("hooli-shop", &[("tenant", "hooli")])));
    must(api.apply(&namespace("misc", &[])));
    must(api.apply(&namespace("stark-ind", &[])));
    let mut pods = Vec::new();
    let annotated = [("example.com/tenant", "wayne")];
    for (ns, name, labels, annotations) in [
        (
            "umbrella-web",
            "portal",
            &[("tenant-id", "umbrella")][..],
            &[][..],
        ),
        ("hooli-shop", "cart", &[][..], &[][..]),
        ("misc", "dash", &[][..], &annotated[..]),
        ("stark-ind", "armory", &[][..], &[][..]),
    ] {
        let (uid, cid) = (uid_for(name), container_id(name));
        must(api.apply(&pod(
            ns,
            name,
            &uid,
            NODE,
            labels,
            annotations,
            None,
            &[("app", &cid)],
        )));
        pods.push(must(PodServer::start(&uid, &cid)));
    }

    let agent = must(Agent::start_with_env(
        &routes.default.http_endpoint(),
        "http/protobuf",
        &config(""),
        &[],
        &[("KUBECONFIG", kubeconfig.to_str().expect("a UTF-8 path"))],
    ));
    let path = agent.config_path().to_path_buf();
    let targets = [
        format!("acme-env={}", acme_server.port),
        format!("globex-cgroup={}", globex_server.port),
        format!("initech-exe={}", initech_server.port),
        format!("gw-acme={}=acme", gateway.port),
        format!("gw-globex={}=globex", gateway.port),
        format!("gw-none={}", gateway.port),
        format!("pod-label={}", pods[0].port),
        format!("ns-label={}", pods[1].port),
        format!("pod-annotation={}", pods[2].port),
        format!("ns-name={}", pods[3].port),
    ];
    let mut client = must(PyChild::spawn(PY_CLIENT, &targets));
    let began = Instant::now();
    while routes.seen().len() < targets.len() * 2 * 5 {
        assert!(
            began.elapsed() < WAIT,
            "too few spans: {:?}",
            routes.seen().keys().take(20).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(PHASE);

    // 2. A rule before the executable's: initech's server goes to acme.
    let switch_at = unix_now_secs();
    let replace = |text: &str| {
        let next = path.with_extension("new");
        std::fs::write(&next, text).expect("write the config");
        std::fs::rename(&next, &path).expect("replace the config");
    };
    replace(&config(
        "    - executable: 'initech-*'\n      tenant: acme\n",
    ));
    must(send_signal(agent.pid(), libc::SIGHUP));
    std::thread::sleep(PHASE);
    // A broken file (a rule with two matchers) changes nothing.
    replace(&config("    - env: X\n      header: y\n"));
    must(send_signal(agent.pid(), libc::SIGHUP));
    std::thread::sleep(PHASE);
    assert!(
        agent
            .log_lines()
            .iter()
            .any(|l| l.contains("config reload refused") && l.contains("tenants.rules")),
        "the broken rules were not refused by key:\n{}",
        agent.log_text()
    );

    // 3. globex's collector dies; acme's and the default route's go on.
    let killed_at = unix_now_secs();
    let globex = routes
        .globex
        .take()
        .map(|g| (g.spans(), g.points(), g.request_headers()));
    std::thread::sleep(PHASE);
    must(client.send_line(""));
    let lines = must(client.finish(Duration::from_secs(10)));
    let rounds = timed_lines(&lines);
    let last_round = rounds
        .last()
        .map(|r| r.n)
        .expect("the client made requests");
    // Let the last spans and series arrive.
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let seen = routes.seen();
        let done = ["acme-env", "initech-exe", "gw-acme", "gw-none"]
            .iter()
            .all(|t| seen.contains_key(&(last_round, t.to_string(), Kind::Server)));
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (globex_spans, globex_points, globex_headers) = globex.expect("globex's receiver ran");

    // Where each request's spans must be, by the rules of its time.
    // Rounds that straddle the switch may go either way (but still once).
    let switch_done = switch_at + APPLY_WITHIN.as_secs_f64();
    let expected = |round: &Timed, target: &str, kind: Kind| -> Option<BTreeSet<&'static str>> {
        let one = |r: &'static str| Some(BTreeSet::from([r]));
        match (target, kind) {
            ("acme-env", Kind::Server) | ("gw-acme", _) => one("acme"),
            ("globex-cgroup", Kind::Server) | ("gw-globex", _) => {
                if round.start >= killed_at {
                    None
                } else {
                    one("globex")
                }
            }
            ("initech-exe", Kind::Server) => {
                if round.end < switch_at {
                    one("default")
                } else if round.start >= switch_done {
                    one("acme")
                } else {
                    Some(BTreeSet::from(["acme", "default"]))
                }
            }
            _ => one("default"),
        }
    };
    let mut seen = routes.seen();
    for s in &globex_spans {
        if let Some((round, target)) = request_of(s) {
            seen.entry((round, target, s.kind))
                .or_default()
                .push("globex");
        }
    }
    let mut wrong = Vec::new();
    let mut checked = 0;
    for round in &rounds {
        // The last rounds of globex's may be on their way when it dies.
        let near_kill = (round.end - killed_at).abs() < 2.0;
        for target in [
            "acme-env",
            "globex-cgroup",
            "initech-exe",
            "gw-acme",
            "gw-globex",
            "gw-none",
            "pod-label",
            "ns-label",
            "pod-annotation",
            "ns-name",
        ] {
            for kind in [Kind::Server, Kind::Client] {
                let got = seen
                    .get(&(round.n, target.to_owned(), kind))
                    .cloned()
                    .unwrap_or_default();
                let Some(allowed) = expected(round, target, kind) else {
                    continue;
                };
                if near_kill && allowed.contains("globex") {
                    continue;
                }
                checked += 1;
                if got.len() != 1 || !allowed.contains(got[0]) {
                    wrong.push(format!(
                        "round {} {target} {kind:?}: {got:?}, want one of {allowed:?}",
                        round.n
                    ));
                }
            }
        }
    }
    eprintln!("checked {checked} spans of {} rounds", rounds.len());
    assert!(checked > 200, "too few requests checked: {checked}");
    assert!(
        wrong.is_empty(),
        "{} of {checked} spans lost, duplicated or misrouted (switch at {switch_at:.3}, globex killed at {killed_at:.3}):\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Each span carries its tenant.
    for (route, spans) in [
        ("acme", routes.acme.spans()),
        ("globex", globex_spans.clone()),
        ("default", routes.default.spans()),
    ] {
        for s in spans.iter().filter(|s| request_of(s).is_some()) {
            let t = tenant_of(s);
            let ok = match route {
                "default" => matches!(
                    t,
                    Some("shared" | "initech" | "umbrella" | "hooli" | "wayne" | "stark-ind")
                ),
                r => t == Some(r),
            };
            assert!(ok, "{route} got a span of tenant {t:?}: {}", s.full());
        }
    }
    // The pods' spans carry their label's tenant once the watcher has
    // them (before, the default), and every one after that.
    let default_spans = routes.default.spans();
    for (target, tenant) in [
        ("pod-label", "umbrella"),
        ("ns-label", "hooli"),
        ("pod-annotation", "wayne"),
        ("ns-name", "stark-ind"),
    ] {
        let mut served: Vec<(u64, Option<&str>)> = default_spans
            .iter()
            .filter(|s| s.kind == Kind::Server)
            .filter_map(|s| {
                let (round, t) = request_of(s)?;
                (t == target).then(|| (round, tenant_of(s)))
            })
            .collect();
        served.sort();
        let first = served
            .iter()
            .position(|(_, t)| *t == Some(tenant))
            .unwrap_or_else(|| {
                panic!(
                    "no {target} span of tenant {tenant} in {} (the first: {:?})",
                    served.len(),
                    &served[..served.len().min(10)]
                )
            });
        let late: Vec<_> = served[first..]
            .iter()
            .filter(|(_, t)| *t != Some(tenant))
            .take(10)
            .collect();
        assert!(
            late.is_empty(),
            "{target}: spans without tenant {tenant} after the first with it: {late:?}"
        );
    }

    // The gateway's spans carry the header's tenant as a span attribute.
    assert!(
        routes
            .acme
            .spans()
            .iter()
            .any(|s| request_of(s).is_some_and(|(_, t)| t == "gw-acme")
                && s.attr_str("tenant.id") == Some("acme")),
        "no gateway span with a tenant.id span attribute"
    );

    // Each route's requests carry its header; the default's none.
    for (route, headers) in [
        ("acme", routes.acme.request_headers()),
        ("globex", globex_headers),
        ("default", routes.default.request_headers()),
    ] {
        assert!(!headers.is_empty(), "{route} got no request");
        for h in &headers {
            let org = h.get("x-scope-orgid");
            let want = (route != "default").then(|| route.to_owned());
            assert_eq!(org, want, "{route}: {} {:?}", h.path, h.headers);
        }
        assert!(
            headers.iter().any(|h| h.path.contains("metrics")),
            "{route} got no metrics export"
        );
    }

    // Series: each receiver gets its tenant's, and every series says whose.
    let series_tenants = |p: &ReceivedPoint| -> Vec<Option<String>> {
        if p.attr_str("client").is_some() {
            ["client_tenant.id", "server_tenant.id"]
                .iter()
                .map(|k| p.attr_str(k).map(str::to_owned))
                .collect()
        } else {
            vec![p.attr_str("tenant.id").map(str::to_owned)]
        }
    };
    let server_series = |points: &[ReceivedPoint], tenant: &str| {
        points.iter().any(|p| {
            p.name == "http.server.request.duration" && p.attr_str("tenant.id") == Some(tenant)
        })
    };
    for (route, points) in [("acme", routes.acme.points()), ("globex", globex_points)] {
        assert!(
            server_series(&points, route),
            "{route} got no server series of its own"
        );
        for p in points.iter().filter(|p| !p.name.starts_with("sonde.")) {
            let tenants = series_tenants(p);
            assert!(
                tenants.iter().any(|t| t.as_deref() == Some(route)),
                "{route} got a series not of its tenant: {}",
                p.compact()
            );
        }
        assert!(
            !points.iter().any(|p| p.name.starts_with("sonde.")),
            "{route} got the agent's own health series"
        );
    }
    let default_points = routes.default.points();
    assert!(server_series(&default_points, "shared"));
    assert!(server_series(&default_points, "initech"));
    assert!(server_series(&default_points, "umbrella"));
    assert!(server_series(&default_points, "hooli"));
    assert!(default_points.iter().any(|p| p.name.starts_with("sonde.")));
    for p in &default_points {
        let tenants = series_tenants(p);
        let routed = |t: &Option<String>| matches!(t.as_deref(), Some("acme" | "globex"));
        assert!(
            !tenants.iter().all(routed),
            "the default route got a series of a routed tenant: {}",
            p.compact()
        );
    }
    // The edges from the client (tenant shared) into acme's server reach
    // both routes, labelled at both ends.
    let edge = |points: &[ReceivedPoint]| {
        points.iter().any(|p| {
            p.name == "traces_service_graph_request_total"
                && p.attr_str("client_tenant.id") == Some("shared")
                && p.attr_str("server_tenant.id") == Some("acme")
        })
    };
    assert!(edge(&routes.acme.points()), "acme has no edge into it");
    assert!(
        edge(&default_points),
        "the default route has no edge out of shared"
    );
    drop(agent);
}
