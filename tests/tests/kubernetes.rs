//! Kubernetes metadata end to end: real servers run in kubelet-shaped
//! cgroups, a local API server (tests/k8s/apiserver.py) serves their pods
//! with the real list/watch protocol, and the real agent must label their
//! spans with the pod, namespace, workload and container, by the
//! `service.name` rules. Needs root (skips otherwise) and a release build
//! of the agent.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use sonde_tests::apiserver::{ApiServer, container_id, namespace, pod, replicaset, uid_for};
use sonde_tests::clients::curl;
use sonde_tests::util::python_bin;
use sonde_tests::{Agent, Kind, ReceivedSpan, Receiver, require_root};

const NODE: &str = "node-test";
const WAIT: Duration = Duration::from_secs(30);

fn must<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Where the unified cgroup hierarchy is mounted.
fn unified_root() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .find_map(|l| {
            let (before, after) = l.split_once(" - ")?;
            let mount = before.split_whitespace().nth(4)?;
            (after.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .expect("a cgroup2 mount")
}

/// A Python HTTP server in a pod's container cgroup, as the kubelet and
/// containerd (systemd driver) name them.
struct PodServer {
    child: Child,
    dirs: Vec<PathBuf>,
    port: u16,
}

impl PodServer {
    fn start(uid: &str, container: &str) -> PodServer {
        let root = unified_root();
        let pod_slice = format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"));
        let parts = [
            "kubepods.slice".to_owned(),
            "kubepods-burstable.slice".to_owned(),
            pod_slice,
            format!("cri-containerd-{container}.scope"),
        ];
        let mut dirs = Vec::new();
        let mut dir = root;
        for p in &parts {
            dir = dir.join(p);
            dirs.push(dir.clone());
        }
        std::fs::create_dir_all(&dir).expect("create the container's cgroup");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {} -m http.server {port} --bind 127.0.0.1",
            dir.display(),
            python_bin().display()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sh runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the pod's server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        PodServer { child, dirs, port }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn get(&self) {
        must(curl(&[format!("http://127.0.0.1:{}/", self.port)]));
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shared parents stay while another pod's cgroup is in them.
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn kubeconfig(api: &ApiServer, dir: &std::path::Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n\
         users:\n- name: test\n  user: {{}}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: test\n\
         current-context: local\n",
        api.url()
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// SERVER spans of `pid`.
fn served_by(pid: u32) -> impl Fn(&ReceivedSpan) -> bool {
    move |s| s.kind == Kind::Server && s.pid() == Some(pid)
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
    server: &PodServer,
    what: &str,
    since_ns: u64,
    ok: impl Fn(&ReceivedSpan) -> bool,
) -> ReceivedSpan {
    let deadline = Instant::now() + WAIT;
    loop {
        server.get();
        std::thread::sleep(Duration::from_millis(300));
        let spans = rx.spans();
        if let Some(s) = spans
            .iter()
            .find(|s| served_by(server.pid())(s) && s.start_ns > since_ns && ok(s))
        {
            return s.clone();
        }
        if Instant::now() > deadline {
            let mine: Vec<_> = spans
                .iter()
                .filter(|s| served_by(server.pid())(s))
                .collect();
            panic!(
                "no span {what} after {WAIT:?}; last of {} from pid {}:\n{}",
                mine.len(),
                server.pid(),
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
    if !require_root() {
        return;
    }
    let mut api = must(ApiServer::start());
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig(&api, tmp.path());

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

    let web = PodServer::start(&web_uid, &web_cid);
    let annotated = PodServer::start(&ann_uid, &ann_cid);
    // Its process starts before its pod is served.
    let late = PodServer::start(&late_uid, &late_cid);

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
