//! Kubernetes metadata end to end: real servers run in kubelet-shaped
//! cgroups (Python servers in cgroups made here, nginx in a runc
//! container), a local API server (tests/k8s/apiserver.py) serves their
//! pods with the real list/watch protocol, and the real agent must label
//! their spans and metrics with the pod, namespace, workload and
//! container, by the `service.name` rules. Needs root (skips otherwise)
//! and a release build of the agent.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sonde_tests::apiserver::{ApiServer, container_id, namespace, pod, replicaset, uid_for};
use sonde_tests::clients::curl;
use sonde_tests::runc::RuncNginx;
use sonde_tests::servers::PodServer;
use sonde_tests::{Agent, Kind, ReceivedPoint, ReceivedSpan, Receiver, Value, require_root};

const NODE: &str = "node-test";
const WAIT: Duration = Duration::from_secs(30);

/// One agent at a time: each traces the whole host.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn must<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// A server in a pod's container that the tests request and whose SERVER
/// spans they pick.
trait PodProcess {
    /// One request.
    fn get(&self);
    /// The host pids whose SERVER spans are its.
    fn pids(&self) -> Vec<u32>;
}

impl PodProcess for PodServer {
    fn get(&self) {
        must(curl(&[format!("http://127.0.0.1:{}/", self.port)]));
    }

    fn pids(&self) -> Vec<u32> {
        vec![self.pid()]
    }
}

impl PodProcess for RuncNginx {
    /// A curl of its own, so a new connection: either worker may take it.
    fn get(&self) {
        must(curl(&[self.url("/index.html")]));
    }

    fn pids(&self) -> Vec<u32> {
        RuncNginx::pids(self).to_vec()
    }
}

/// SERVER spans of `server`.
fn served_by(server: &impl PodProcess) -> impl Fn(&ReceivedSpan) -> bool {
    let pids = server.pids();
    move |s| s.kind == Kind::Server && s.pid().is_some_and(|p| pids.contains(&p))
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Requests `server` until one of its SERVER spans that started after
/// `since_ns` satisfies `ok`; returns it.
fn span_where(
    rx: &Receiver,
    server: &impl PodProcess,
    what: &str,
    since_ns: u64,
    ok: impl Fn(&ReceivedSpan) -> bool,
) -> ReceivedSpan {
    let deadline = Instant::now() + WAIT;
    let mine = served_by(server);
    loop {
        server.get();
        std::thread::sleep(Duration::from_millis(300));
        let spans = rx.spans();
        if let Some(s) = spans
            .iter()
            .find(|s| mine(s) && s.start_ns > since_ns && ok(s))
        {
            return s.clone();
        }
        if Instant::now() > deadline {
            let mine: Vec<_> = spans.iter().filter(|s| mine(s)).collect();
            panic!(
                "no span {what} after {WAIT:?}; last of {} from pids {:?}:\n{}",
                mine.len(),
                server.pids(),
                mine.last().map(|s| s.full()).unwrap_or_default()
            );
        }
    }
}

fn check_resource(s: &ReceivedSpan, want: &[(&str, &str)]) {
    let problems: Vec<String> = want
        .iter()
        .filter(|(k, v)| s.res_str(k) != Some(v))
        .map(|(k, v)| format!("{k}: {:?}, expected {v:?}", s.res_str(k)))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}\n{}", s.full());
}

#[test]
fn pods_label_spans_through_api_restarts() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let mut api = must(ApiServer::start());
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = must(api.write_kubeconfig(tmp.path()));

    // A Deployment's pod, a pod naming its service by annotation, and a pod
    // on another node (never watched).
    let (web_uid, web_cid) = (uid_for("web"), container_id("web"));
    let (ann_uid, ann_cid) = (uid_for("annotated"), container_id("annotated"));
    let (late_uid, late_cid) = (uid_for("late"), container_id("late"));
    let rs_uid = uid_for("web-rs");
    must(api.apply(&namespace("shop", &[("env", "test")])));
    must(api.apply(&replicaset("shop", "web-7d9f8c6b5", &rs_uid, Some("web"))));
    must(api.apply(&pod(
        "shop",
        "web-7d9f8c6b5-x2x4z",
        &web_uid,
        NODE,
        &[("team", "payments"), ("pod-template-hash", "7d9f8c6b5")],
        &[],
        Some(("ReplicaSet", "web-7d9f8c6b5", &rs_uid)),
        &[("app", &web_cid)],
    )));
    must(api.apply(&pod(
        "shop",
        "cart-0",
        &ann_uid,
        NODE,
        &[("app.kubernetes.io/name", "cart")],
        &[("resource.opentelemetry.io/service.name", "storefront")],
        None,
        &[("main", &ann_cid)],
    )));
    must(api.apply(&pod(
        "shop",
        "elsewhere",
        &uid_for("elsewhere"),
        "node-other",
        &[],
        &[],
        None,
        &[("c", &container_id("elsewhere"))],
    )));

    let web = must(PodServer::start(&web_uid, &web_cid));
    let annotated = must(PodServer::start(&ann_uid, &ann_cid));
    // Its process starts before its pod is served.
    let late = must(PodServer::start(&late_uid, &late_cid));

    let rx = must(Receiver::start());
    let agent = must(Agent::start_with_env(
        &rx.grpc_endpoint(),
        "grpc",
        "kubernetes:\n  enabled: true\n  node_name: node-test\n  cluster_name: test-cluster\n  pod_labels: [team]\n",
        &[],
        &[("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))],
    ));

    let s = span_where(&rx, &web, "with its pod's name", 0, |s| {
        s.res_str("k8s.pod.name").is_some()
    });
    check_resource(
        &s,
        &[
            ("service.name", "web"),
            ("service.namespace", "shop"),
            ("service.instance.id", "shop.web-7d9f8c6b5-x2x4z.app"),
            ("k8s.namespace.name", "shop"),
            ("k8s.pod.name", "web-7d9f8c6b5-x2x4z"),
            ("k8s.pod.uid", &web_uid),
            ("k8s.container.name", "app"),
            ("k8s.node.name", NODE),
            ("k8s.cluster.name", "test-cluster"),
            ("k8s.deployment.name", "web"),
            ("k8s.replicaset.name", "web-7d9f8c6b5"),
            ("k8s.pod.label.team", "payments"),
            ("container.id", &web_cid),
            ("process.executable.name", "python3"),
        ],
    );
    assert_eq!(
        s.res_str("k8s.pod.label.pod-template-hash"),
        None,
        "only listed labels"
    );

    let s = span_where(&rx, &annotated, "with its pod's name", 0, |s| {
        s.res_str("k8s.pod.name").is_some()
    });
    check_resource(
        &s,
        &[
            ("service.name", "storefront"),
            ("k8s.pod.name", "cart-0"),
            ("k8s.container.name", "main"),
            ("service.instance.id", "shop.cart-0.main"),
        ],
    );

    // Before its pod is served: what the cgroup says, and no names.
    let s = span_where(&rx, &late, "with its pod uid", 0, |s| {
        s.res_str("k8s.pod.uid").is_some()
    });
    check_resource(
        &s,
        &[
            ("k8s.pod.uid", &late_uid),
            ("container.id", &late_cid),
            ("service.name", "python3"),
        ],
    );
    assert_eq!(s.res_str("k8s.pod.name"), None, "{}", s.full());

    // The client, curl, is in no pod: no Kubernetes attributes.
    let client = rx
        .spans()
        .into_iter()
        .find(|s| s.kind == Kind::Client && s.res_str("process.executable.name") == Some("curl"))
        .expect("a curl client span");
    let k8s_keys: Vec<&String> = client
        .resource
        .keys()
        .filter(|k| k.starts_with("k8s.") || k.starts_with("container."))
        .collect();
    assert!(k8s_keys.is_empty(), "curl is in no pod: {k8s_keys:?}");

    // The API server goes away: tracing goes on with the labels known.
    api.stop();
    let s = span_where(&rx, &web, "while the API server is away", now_ns(), |s| {
        s.res_str("k8s.pod.name").is_some()
    });
    check_resource(&s, &[("service.name", "web")]);

    // It comes back: the late pod is served and labels resume.
    must(api.restart());
    must(api.apply(&pod(
        "shop",
        "late-pod",
        &late_uid,
        NODE,
        &[("app.kubernetes.io/name", "latecomer")],
        &[],
        None,
        &[("srv", &late_cid)],
    )));
    let s = span_where(
        &rx,
        &late,
        "labelled after the API server returned",
        0,
        |s| s.res_str("k8s.pod.name") == Some("late-pod"),
    );
    check_resource(
        &s,
        &[("service.name", "latecomer"), ("k8s.container.name", "srv")],
    );

    // A deleted pod's last requests keep its labels.
    must(api.delete("Pod", "shop", "web-7d9f8c6b5-x2x4z"));
    std::thread::sleep(Duration::from_millis(500));
    let s = span_where(&rx, &web, "after its pod was deleted", now_ns(), |s| {
        s.res_str("k8s.pod.name").is_some()
    });
    check_resource(
        &s,
        &[
            ("k8s.pod.name", "web-7d9f8c6b5-x2x4z"),
            ("service.name", "web"),
        ],
    );
    must(agent.stop());
}

/// The `service.*`, `k8s.*` and `container.*` attributes of a resource:
/// what the tests compare whole, so that a missing or extra key fails.
fn pod_attributes(resource: &HashMap<String, Value>) -> BTreeMap<String, String> {
    resource
        .iter()
        .filter(|(k, _)| {
            k.starts_with("service.") || k.starts_with("k8s.") || k.starts_with("container.")
        })
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_owned),
            )
        })
        .collect()
}

fn attribute_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The newest point of each series of `metric` per process: the workers
/// of one container share `service.instance.id`, which is all
/// [`ReceivedPoint::series_key`] knows of the resource.
fn latest_per_process(points: &[ReceivedPoint], metric: &str) -> Vec<ReceivedPoint> {
    let mut by: HashMap<(Option<u32>, String), ReceivedPoint> = HashMap::new();
    for p in points.iter().filter(|p| p.name == metric) {
        let key = (p.pid(), p.series_key());
        if by.get(&key).is_none_or(|old| old.time_ns <= p.time_ns) {
            by.insert(key, p.clone());
        }
    }
    by.into_values().collect()
}

/// nginx as runc runs it for a Deployment's pod: its own pid namespace, the
/// kubelet's cgroup, two workers. Whichever worker serves, its spans and
/// its `http.server.request.duration` series carry exactly the pod's
/// attributes.
#[test]
fn runc_nginx_of_a_deployment_is_labelled_on_spans_and_metrics() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let api = must(ApiServer::start());
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = must(api.write_kubeconfig(tmp.path()));
    let (uid, cid) = (uid_for("frontend"), container_id("frontend"));
    let rs_uid = uid_for("frontend-rs");
    must(api.apply(&namespace("storefront", &[])));
    must(api.apply(&replicaset(
        "storefront",
        "frontend-6c8d7f9b4",
        &rs_uid,
        Some("frontend"),
    )));
    must(api.apply(&pod(
        "storefront",
        "frontend-6c8d7f9b4-q7w2m",
        &uid,
        NODE,
        &[("app", "frontend"), ("pod-template-hash", "6c8d7f9b4")],
        &[],
        Some(("ReplicaSet", "frontend-6c8d7f9b4", &rs_uid)),
        &[("nginx", &cid)],
    )));

    let nginx = must(RuncNginx::start(&uid, &cid));
    let pid_ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("pid ns");
    assert_ne!(
        pid_ns(&nginx.master_pid().to_string()),
        pid_ns("self"),
        "nginx runs in a pid namespace of its own"
    );

    let rx = must(Receiver::start());
    let agent = must(Agent::start_with_env(
        &rx.grpc_endpoint(),
        "grpc",
        "kubernetes:\n  enabled: true\n  node_name: node-test\n  cluster_name: test-cluster\n\
         metrics:\n  otlp:\n    interval_ms: 500\n",
        &[],
        &[("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))],
    ));

    // Synced once one span has its pod's name; from then on every span
    // must be labelled, whichever worker serves it.
    let first = span_where(&rx, &nginx, "with its pod's name", 0, |s| {
        s.res_str("k8s.pod.name").is_some()
    });
    let since = first.start_ns;
    let want = attribute_map(&[
        ("service.name", "frontend"),
        ("service.namespace", "storefront"),
        (
            "service.instance.id",
            "storefront.frontend-6c8d7f9b4-q7w2m.nginx",
        ),
        ("k8s.namespace.name", "storefront"),
        ("k8s.pod.name", "frontend-6c8d7f9b4-q7w2m"),
        ("k8s.pod.uid", &uid),
        ("k8s.container.name", "nginx"),
        ("k8s.node.name", NODE),
        ("k8s.cluster.name", "test-cluster"),
        ("k8s.deployment.name", "frontend"),
        ("k8s.replicaset.name", "frontend-6c8d7f9b4"),
        ("container.id", &cid),
        ("container.runtime.name", "containerd"),
    ]);
    let mine = served_by(&nginx);
    let labelled_spans = || -> Vec<ReceivedSpan> {
        rx.spans()
            .into_iter()
            .filter(|s| mine(s) && s.start_ns >= since)
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        nginx.get();
        let spans = labelled_spans();
        let served = |w: &u32| spans.iter().any(|s| s.pid() == Some(*w));
        if spans.len() >= 10 && nginx.worker_pids().iter().all(served) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both workers {:?} did not serve within {WAIT:?}; {} spans since the first labelled",
            nginx.worker_pids(),
            spans.len()
        );
    }
    // The last spans' batch.
    std::thread::sleep(Duration::from_secs(1));
    let spans = labelled_spans();
    for s in &spans {
        assert_eq!(pod_attributes(&s.resource), want, "{}", s.full());
        assert_eq!(
            s.res_str("process.executable.name"),
            Some("nginx"),
            "{}",
            s.full()
        );
        assert!(
            s.pid().is_some_and(|p| nginx.worker_pids().contains(&p)),
            "served by a worker: {}",
            s.full()
        );
    }

    // The metric series of the labelled processes count exactly those
    // spans: what had no labels yet went to other series.
    let metric = "http.server.request.duration";
    let labelled_points = |points: &[ReceivedPoint]| -> Vec<ReceivedPoint> {
        latest_per_process(points, metric)
            .into_iter()
            .filter(|p| p.pid().is_some_and(|pid| nginx.pids().contains(&pid)))
            .filter(|p| p.resource.contains_key("k8s.pod.name"))
            .collect()
    };
    let counted = |points: &[ReceivedPoint]| -> u64 {
        labelled_points(points)
            .iter()
            .filter_map(ReceivedPoint::count)
            .sum()
    };
    let all_spans = spans.len() as u64;
    assert!(
        rx.wait_points(WAIT, |points| counted(points) >= all_spans),
        "{metric} of labelled nginx processes did not count {all_spans} requests:{}",
        rx.points_report(|p| p.name == metric, 50)
    );
    let points = rx.points();
    assert_eq!(counted(&points), all_spans, "one count per labelled span");
    for p in labelled_points(&points) {
        assert_eq!(pod_attributes(&p.resource), want, "{}", p.compact());
    }
    must(agent.stop());
}

/// The query parameter `key` of a request logged by the API server.
fn query_param<'a>(entry: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    entry["query"]
        .as_str()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// While the API server is away, the pod's `app.kubernetes.io/name`
/// changes and history is compacted. When it returns, the agent's pod
/// watch from its old resourceVersion gets 410 Gone; only a new list can
/// bring the change, and the spans must show it.
#[test]
fn relist_after_410_gone_brings_a_label_changed_meanwhile() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let mut api = must(ApiServer::start());
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = must(api.write_kubeconfig(tmp.path()));
    let (uid, cid) = (uid_for("catalog"), container_id("catalog"));
    let catalog_pod = |app: &str| {
        pod(
            "shop",
            "catalog-0",
            &uid,
            NODE,
            &[("app.kubernetes.io/name", app)],
            &[],
            None,
            &[("app", &cid)],
        )
    };
    must(api.apply(&namespace("shop", &[])));
    must(api.apply(&catalog_pod("catalog")));
    let server = must(PodServer::start(&uid, &cid));

    let rx = must(Receiver::start());
    let agent = must(Agent::start_with_env(
        &rx.grpc_endpoint(),
        "grpc",
        "kubernetes:\n  enabled: true\n  node_name: node-test\n",
        &[],
        &[("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))],
    ));
    span_where(&rx, &server, "named by its label", 0, |s| {
        s.service() == Some("catalog")
    });

    // The change must reach no open watch (a live watch would deliver it
    // and no 410 would follow), so it is made while the agent's watches
    // are down: another API server on the same store (as in a cluster with
    // several) takes it and compacts.
    api.stop();
    let state = api.state_file().to_path_buf();
    let compacted = {
        let other = must(ApiServer::start_on(0, &state));
        must(other.apply(&catalog_pod("catalog-v2")));
        must(other.compact())
    };
    must(api.restart());

    let s = span_where(&rx, &server, "named by the new label", now_ns(), |s| {
        s.service() == Some("catalog-v2")
    });
    check_resource(
        &s,
        &[("k8s.pod.name", "catalog-0"), ("k8s.container.name", "app")],
    );

    // It came by a 410 and a new list: a pod watch from before the
    // compaction, then a pod list.
    let stats = must(api.stats());
    let log = stats["log"].as_array().cloned().unwrap_or_default();
    let is_pods = |e: &serde_json::Value, verb: &str| e["verb"] == verb && e["resource"] == "pods";
    let expired = log.iter().position(|e| {
        is_pods(e, "watch")
            && query_param(e, "resourceVersion")
                .and_then(|rv| rv.parse::<u64>().ok())
                .is_some_and(|rv| rv < compacted)
    });
    let relisted = expired.is_some_and(|i| log[i..].iter().any(|e| is_pods(e, "list")));
    assert!(
        relisted,
        "no pod watch from before resourceVersion {compacted} followed by a pod list; \
         requests since the restart:\n{}",
        log.iter()
            .map(|e| format!("  {} {} ?{}", e["verb"], e["path"], e["query"]))
            .collect::<Vec<_>>()
            .join("\n")
    );
    must(agent.stop());
}

/// The last value the agent exported of its own counter `name`.
fn agent_counter(points: &[ReceivedPoint], name: &str) -> Option<f64> {
    points
        .iter()
        .filter(|p| p.name == name && p.service() == Some("sonde"))
        .max_by_key(|p| p.time_ns)
        .and_then(ReceivedPoint::value)
}

/// `select` rules exclude a namespace and a labelled pod: their servers
/// make no spans and no metric series, and the kernel mutes their
/// containers after the first connection, while a pod beside them is
/// traced as usual.
#[test]
fn excluded_namespaces_and_pods_are_not_traced() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let api = must(ApiServer::start());
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = must(api.write_kubeconfig(tmp.path()));
    let (web_uid, web_cid) = (uid_for("sel-web"), container_id("sel-web"));
    let (job_uid, job_cid) = (uid_for("sel-job"), container_id("sel-job"));
    let (canary_uid, canary_cid) = (uid_for("sel-canary"), container_id("sel-canary"));
    must(api.apply(&namespace("shop", &[])));
    must(api.apply(&namespace("batch", &[("team", "data")])));
    for (ns, name, uid, labels, cid) in [
        ("shop", "web-0", &web_uid, &[("app", "web")][..], &web_cid),
        (
            "batch",
            "report-0",
            &job_uid,
            &[("app", "report")][..],
            &job_cid,
        ),
        (
            "shop",
            "web-canary-0",
            &canary_uid,
            &[("app", "web"), ("track", "canary")][..],
            &canary_cid,
        ),
    ] {
        must(api.apply(&pod(
            ns,
            name,
            uid,
            NODE,
            labels,
            &[],
            None,
            &[("main", cid)],
        )));
    }
    let web = must(PodServer::start(&web_uid, &web_cid));
    let job = must(PodServer::start(&job_uid, &job_cid));
    let canary = must(PodServer::start(&canary_uid, &canary_cid));

    let rx = must(Receiver::start());
    let agent = must(Agent::start_with_env(
        &rx.grpc_endpoint(),
        "grpc",
        "kubernetes:\n  enabled: true\n  node_name: node-test\n\
         select:\n  exclude:\n    - namespace: bat*\n    - labels: track in (canary)\n\
         metrics:\n  otlp:\n    interval_ms: 500\n",
        &[],
        &[("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))],
    ));
    // Synced: the traced pod's spans carry its name (every pod was in the
    // first list).
    span_where(&rx, &web, "with its pod's name", 0, |s| {
        s.res_str("k8s.pod.name") == Some("web-0")
    });
    const REQUESTS: usize = 12;
    for _ in 0..REQUESTS {
        job.get();
        canary.get();
        web.get();
    }
    // curl, in no pod, is traced: its client spans say the requests were seen.
    let client_spans = |port: u16| {
        rx.spans()
            .iter()
            .filter(|s| s.kind == Kind::Client && s.attr_int("server.port") == Some(port.into()))
            .count()
    };
    let served = |server: &PodServer| rx.spans().iter().filter(|s| served_by(server)(s)).count();
    // The traced pod served the sync request(s) and these.
    let deadline = Instant::now() + WAIT;
    while client_spans(job.port) < REQUESTS
        || client_spans(canary.port) < REQUESTS
        || served(&web) <= REQUESTS
    {
        assert!(
            Instant::now() < deadline,
            "curl's client spans: {} to the excluded namespace, {} to the canary; \
             {} spans of the traced pod",
            client_spans(job.port),
            client_spans(canary.port),
            served(&web)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        served(&job),
        0,
        "no span of the excluded namespace's server"
    );
    assert_eq!(served(&canary), 0, "no span of the excluded pod's server");

    // At most the first connection of each excluded container reached
    // user space (its records dropped there); without the kernel's mute
    // each request would send some.
    assert!(
        rx.wait_points(WAIT, |points| {
            agent_counter(points, "sonde.events.excluded").is_some()
        }),
        "the agent's counters"
    );
    std::thread::sleep(Duration::from_secs(1));
    let points = rx.points();
    let excluded = agent_counter(&points, "sonde.events.excluded").unwrap_or_default();
    assert!(
        excluded <= 2.0 * 3.0,
        "{excluded} records of excluded processes for {} requests: the kernel did not mute them",
        2 * REQUESTS
    );
    let server_series: Vec<_> = points
        .iter()
        .filter(|p| p.name == "http.server.request.duration")
        .filter(|p| {
            p.pid()
                .is_some_and(|pid| pid == job.pid() || pid == canary.pid())
        })
        .map(ReceivedPoint::compact)
        .collect();
    assert_eq!(
        server_series,
        Vec::<String>::new(),
        "no series of excluded servers"
    );
    must(agent.stop());
}
