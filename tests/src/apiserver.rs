//! A local Kubernetes API server for the tests: `tests/k8s/apiserver.py`
//! (standard-library Python) speaks the real list/watch protocol over plain
//! HTTP on 127.0.0.1, so the agent's Kubernetes watcher runs against it as
//! it would against a cluster. `tests/k8s/README.md` says what it
//! implements and what it leaves out.
//!
//! [`ApiServer`] starts it, changes objects through its control API
//! (`/_control/`), reads its statistics (open watches, requests per verb
//! and resource, a log of recent requests), and kills and restarts it on
//! the same port with the same state, as an API server restart behind a
//! stable address looks to a client. [`pod`], [`namespace`], [`replicaset`]
//! and [`job`] build realistic objects.
//!
//! The client here is a plain blocking HTTP/1.1 one on `TcpStream`, one
//! connection per request.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use crate::util::{Lines, python_bin, send_signal, workspace_root};

/// How long a start waits for the server to answer.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Connect and read timeout of one control request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start the server.
#[derive(Clone, Debug)]
pub struct ApiServerConfig {
    /// 0 lets the server pick a free port.
    pub port: u16,
    /// The state file; `None` makes one in a temporary directory owned by
    /// the handle (so [`ApiServer::restart`] always has one).
    pub state_file: Option<PathBuf>,
    /// Seconds between BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// The watch length when a client sends no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
    /// Log every request to the server's stderr ([`ApiServer::stderr`]).
    pub verbose: bool,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            port: 0,
            state_file: None,
            bookmark_interval: Duration::from_secs(1),
            default_watch_timeout: Duration::from_secs(1800),
            verbose: false,
        }
    }
}

/// A response to one request.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "response {} is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The running server process; killed when dropped.
pub struct ApiServer {
    child: Option<Child>,
    port: u16,
    state_file: PathBuf,
    config: ApiServerConfig,
    out: Lines,
    err: Lines,
    _dir: Option<tempfile::TempDir>,
}

impl ApiServer {
    /// The server script, `tests/k8s/apiserver.py`.
    pub fn script() -> PathBuf {
        workspace_root().join("tests/k8s/apiserver.py")
    }

    /// Starts it on a free port with a fresh state file and 1 s bookmarks.
    pub fn start() -> anyhow::Result<ApiServer> {
        ApiServer::start_with(ApiServerConfig::default())
    }

    /// Starts it on `port` (0: a free one) with `state_file`, which is
    /// loaded if it exists.
    pub fn start_on(port: u16, state_file: &Path) -> anyhow::Result<ApiServer> {
        ApiServer::start_with(ApiServerConfig {
            port,
            state_file: Some(state_file.to_path_buf()),
            ..ApiServerConfig::default()
        })
    }

    pub fn start_with(config: ApiServerConfig) -> anyhow::Result<ApiServer> {
        let (state_file, dir) = match &config.state_file {
            Some(f) => (f.clone(), None),
            None => {
                let dir = tempfile::Builder::new().prefix("sonde-k8s-").tempdir()?;
                (dir.path().join("state.jsonl"), Some(dir))
            }
        };
        let mut server = ApiServer {
            child: None,
            port: config.port,
            state_file,
            config,
            out: Lines::default(),
            err: Lines::default(),
            _dir: dir,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let script = ApiServer::script();
        let mut cmd = Command::new(python_bin());
        cmd.arg("-u")
            .arg(&script)
            .args(["--port", &self.port.to_string()])
            .arg("--state")
            .arg(&self.state_file)
            .arg("--bookmark-interval")
            .arg(self.config.bookmark_interval.as_secs_f64().to_string())
            .arg("--default-watch-timeout")
            .arg(self.config.default_watch_timeout.as_secs_f64().to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if self.config.verbose {
            cmd.arg("--verbose");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} {}",
                    python_bin().display(),
                    script.display()
                )
            })?;
        self.out = child.stdout.take().map(Lines::collect).unwrap_or_default();
        self.err = child.stderr.take().map(Lines::collect).unwrap_or_default();
        let deadline = Instant::now() + START_TIMEOUT;
        let mut port = None;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the API server exited with {status} (port {}): {}",
                    self.port,
                    self.err.get().join("\n")
                );
            }
            if port.is_none() {
                port = self
                    .out
                    .get()
                    .iter()
                    .find_map(|l| l.strip_prefix("listening 127.0.0.1:")?.parse::<u16>().ok());
            }
            if let Some(p) = port
                && http(p, "GET", "/healthz", None).is_ok_and(|r| r.status == 200)
            {
                self.port = p;
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "the API server did not answer within {START_TIMEOUT:?}: {}",
            self.err.get().join("\n")
        )
    }

    /// `http://127.0.0.1:PORT`, what the agent's `kubernetes.api_server`
    /// (or a kubeconfig's `server`) points at.
    /// Writes a kubeconfig for this server (no credentials) into `dir`;
    /// returns its path, for `KUBECONFIG`.
    pub fn write_kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: test\n\
             current-context: local\n",
            self.url()
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn state_file(&self) -> &Path {
        &self.state_file
    }

    /// The server's stderr so far (tracebacks; request lines when verbose).
    pub fn stderr(&self) -> Vec<String> {
        self.err.get()
    }

    /// One request; any status is returned, not an error.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        http(self.port, method, path, body)
    }

    /// GET `path` (a Kubernetes path with its query, as a client sends it);
    /// an error unless the answer is 200.
    pub fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        expect_ok(self.request("GET", path, None)?, "GET", path)
    }

    /// Creates or replaces one object (any of the four kinds; namespace and
    /// name say which): ADDED or MODIFIED for watchers, nothing when
    /// nothing changed. Returns the object as stored.
    pub fn apply(&self, obj: &Value) -> anyhow::Result<Value> {
        let body = serde_json::to_vec(obj)?;
        expect_ok(
            self.request("PUT", "/_control/objects", Some(&body))?,
            "PUT",
            "/_control/objects",
        )
    }

    /// Deletes one object: `kind` as `Pod`, `pod` or `pods`; `namespace`
    /// is ignored (`-` by convention) for namespaces. Returns the object
    /// as deleted, at the deletion's resourceVersion.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> anyhow::Result<Value> {
        let ns = if namespace.is_empty() { "-" } else { namespace };
        let path = format!("/_control/objects/{kind}/{ns}/{name}");
        expect_ok(self.request("DELETE", &path, None)?, "DELETE", &path)
    }

    /// Creates or replaces many objects in one call (each gets its own
    /// resourceVersion, as on a real server). Returns the resourceVersion
    /// after the last.
    pub fn bulk(&self, objs: &[Value]) -> anyhow::Result<u64> {
        let body = serde_json::to_vec(objs)?;
        let v = expect_ok(
            self.request("POST", "/_control/bulk", Some(&body))?,
            "POST",
            "/_control/bulk",
        )?;
        rv_field(&v, "resourceVersion")
    }

    /// Forgets the history up to now, as an etcd compaction: continue
    /// tokens and watches from older resourceVersions then get 410 Expired
    /// (watches already streaming go on). Returns the compaction point.
    pub fn compact(&self) -> anyhow::Result<u64> {
        let v = expect_ok(
            self.request("POST", "/_control/compact", None)?,
            "POST",
            "/_control/compact",
        )?;
        rv_field(&v, "compactedResourceVersion")
    }

    /// Ends every open watch: cleanly (the last chunk, as when a watch's
    /// timeout ends it) or, with `abrupt`, by closing the connection.
    pub fn close_watches(&self, abrupt: bool) -> anyhow::Result<()> {
        let path = format!("/_control/close-watches?abrupt={abrupt}");
        expect_ok(self.request("POST", &path, None)?, "POST", &path).map(drop)
    }

    /// `watches_open`, `watches_total`, `watches` (resource, namespace,
    /// query of each open watch, and `sent_resource_version`: the
    /// resourceVersion up to which its events are sent), `requests` (per verb: list, watch, get,
    /// discovery, control, health, other), `requests_by_resource`
    /// (`{"pods": {"list": n, "watch": n, "get": n}}`), `log` (the last
    /// 2000 requests: verb, resource, path, query, user agent),
    /// `resource_version`, `compacted_resource_version`, `objects` (count
    /// per resource) and `threads`. Counters start at zero in each server
    /// process: a restart resets them.
    pub fn stats(&self) -> anyhow::Result<Value> {
        self.get_json("/_control/stats")
    }

    /// Zeroes the request counters and the log.
    pub fn reset_stats(&self) -> anyhow::Result<()> {
        expect_ok(
            self.request("POST", "/_control/stats/reset", None)?,
            "POST",
            "/_control/stats/reset",
        )
        .map(drop)
    }

    /// The store's current resourceVersion.
    pub fn resource_version(&self) -> anyhow::Result<u64> {
        self.stats()?
            .get("resource_version")
            .and_then(Value::as_u64)
            .context("stats without resource_version")
    }

    /// Kills the server with SIGKILL (an API server crash), keeping the
    /// state file. Clients see their connections reset.
    pub fn stop(&mut self) {
        self.stop_with(libc::SIGKILL);
    }

    /// Stops the server with `signal` (SIGTERM: a clean shutdown) and waits
    /// for it to exit.
    pub fn stop_with(&mut self, signal: libc::c_int) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = send_signal(child.id(), signal);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it (if running) and starts it again on the same port with the
    /// same state: the same objects, history and resourceVersion counter.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn expect_ok(resp: Response, method: &str, path: &str) -> anyhow::Result<Value> {
    if !(200..300).contains(&resp.status) {
        bail!(
            "{method} {path}: {} {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        );
    }
    resp.json()
}

fn rv_field(v: &Value, key: &str) -> anyhow::Result<u64> {
    v.get(key)
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no {key} in {v}"))
}

/// One HTTP/1.1 request on a new connection (`Connection: close`); reads
/// the whole response.
fn http(port: u16, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<Response> {
    let addr = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
        .with_context(|| format!("connect to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let body = body.unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: sonde-tests\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("{method} {path}: reading the response"))?;
    parse_response(&raw).with_context(|| format!("{method} {path}"))
}

fn parse_response(raw: &[u8]) -> anyhow::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("response without the end of its headers")?;
    let head = std::str::from_utf8(&raw[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let rest = &raw[end + 4..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let body = if find("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(n) = find("Content-Length") {
        let n: usize = n.parse().context("bad Content-Length")?;
        if rest.len() < n {
            bail!("body cut short: {} of {n} bytes", rest.len());
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunked body cut short")?;
        let size_text = std::str::from_utf8(&data[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("chunk cut short");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// ---------------------------------------------------------------------------
// Object builders

/// A creation time for built objects (fixed, so objects are reproducible).
const CREATED: &str = "2025-01-01T00:00:00Z";

fn fnv1a(seed: &str, round: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in seed.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// 64 hex digits derived from `seed`: a container id, as the runtime
/// shows it in /proc/PID/cgroup and in `containerID` after `containerd://`.
pub fn container_id(seed: &str) -> String {
    (0..4).map(|r| format!("{:016x}", fnv1a(seed, r))).collect()
}

/// A UUID-shaped uid derived from `seed`.
pub fn uid_for(seed: &str) -> String {
    let a = fnv1a(seed, 11);
    let b = fnv1a(seed, 12);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

fn string_map(pairs: &[(&str, &str)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::String((*v).to_string())))
            .collect::<Map<String, Value>>(),
    )
}

fn owner_api_version(kind: &str) -> &'static str {
    match kind {
        "ReplicaSet" | "Deployment" | "StatefulSet" | "DaemonSet" => "apps/v1",
        "Job" | "CronJob" => "batch/v1",
        _ => "v1",
    }
}

fn owner_reference(kind: &str, name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": owner_api_version(kind),
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// A running pod on `node` as the API server returns it. `owner` is
/// `(kind, name, uid)` of its controller; `containers` are
/// `(name, container id)`: the id is the 64 hex digits (see
/// [`container_id`]) and becomes `containerd://<id>` in
/// `status.containerStatuses[].containerID` (an id that already has a
/// `scheme://` is kept as it is).
#[allow(
    clippy::too_many_arguments,
    reason = "one argument per field the tests vary, as they read at the call site"
)]
pub fn pod(
    ns: &str,
    name: &str,
    uid: &str,
    node: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    owner: Option<(&str, &str, &str)>,
    containers: &[(&str, &str)],
) -> Value {
    let h = fnv1a(uid, 0);
    let pod_ip = format!("10.244.{}.{}", (h >> 8) & 0xff, (h & 0xfd) + 2);
    let host_ip = format!("192.168.0.{}", (fnv1a(node, 0) % 250) + 2);
    let image = |c: &str| format!("registry.example/{ns}/{c}:1.0");
    let spec_containers: Vec<Value> = containers
        .iter()
        .map(|(c, _)| {
            json!({
                "name": c,
                "image": image(c),
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "volumeMounts": [{
                    "name": "kube-api-access",
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    "readOnly": true,
                }],
            })
        })
        .collect();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(c, id)| {
            let id = if id.contains("://") {
                (*id).to_string()
            } else {
                format!("containerd://{id}")
            };
            json!({
                "name": c,
                "containerID": id,
                "image": image(c),
                "imageID": format!("registry.example/{ns}/{c}@sha256:{}", container_id(&image(c))),
                "ready": true,
                "restartCount": 0,
                "started": true,
                "state": {"running": {"startedAt": CREATED}},
                "lastState": {},
            })
        })
        .collect();
    let mut metadata = json!({
        "name": name,
        "namespace": ns,
        "uid": uid,
        "creationTimestamp": CREATED,
        "labels": string_map(labels),
    });
    if !annotations.is_empty() {
        metadata["annotations"] = string_map(annotations);
    }
    if let Some((kind, oname, ouid)) = owner {
        metadata["generateName"] = json!(format!("{oname}-"));
        metadata["ownerReferences"] = json!([owner_reference(kind, oname, ouid)]);
    }
    let condition = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": CREATED});
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": node,
            "containers": spec_containers,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": "Running",
            "conditions": [condition("Initialized"), condition("Ready"), condition("ContainersReady"), condition("PodScheduled")],
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": CREATED,
            "containerStatuses": statuses,
            "qosClass": "BestEffort",
        },
    })
}

/// A namespace with `labels` (the server adds
/// `kubernetes.io/metadata.name`, as the real one does).
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": uid_for(&format!("namespace/{name}")),
            "creationTimestamp": CREATED,
            "labels": string_map(labels),
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// A ReplicaSet, owned by Deployment `deployment` when given (its uid is
/// [`uid_for`]`("deployment/NS/NAME")`).
pub fn replicaset(ns: &str, name: &str, uid: &str, deployment: Option<&str>) -> Value {
    let app = deployment.unwrap_or(name);
    let hash = name
        .rsplit_once('-')
        .map_or("5d4f8c7b9", |(_, h)| h)
        .to_string();
    let labels = json!({"app": app, "pod-template-hash": hash});
    let mut metadata = json!({
        "name": name,
        "namespace": ns,
        "uid": uid,
        "creationTimestamp": CREATED,
        "labels": labels,
        "annotations": {
            "deployment.kubernetes.io/desired-replicas": "1",
            "deployment.kubernetes.io/max-replicas": "2",
            "deployment.kubernetes.io/revision": "1",
        },
    });
    if let Some(d) = deployment {
        metadata["ownerReferences"] = json!([owner_reference(
            "Deployment",
            d,
            &uid_for(&format!("deployment/{ns}/{d}"))
        )]);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": app, "image": format!("registry.example/{ns}/{app}:1.0")}]},
            },
        },
        "status": {"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "observedGeneration": 1},
    })
}

/// A running Job, owned by CronJob `cronjob` when given (its uid is
/// [`uid_for`]`("cronjob/NS/NAME")`).
pub fn job(ns: &str, name: &str, uid: &str, cronjob: Option<&str>) -> Value {
    let labels = json!({
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    });
    let mut metadata = json!({
        "name": name,
        "namespace": ns,
        "uid": uid,
        "creationTimestamp": CREATED,
        "labels": labels,
    });
    if let Some(c) = cronjob {
        metadata["ownerReferences"] = json!([owner_reference(
            "CronJob",
            c,
            &uid_for(&format!("cronjob/{ns}/{c}"))
        )]);
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "parallelism": 1,
            "completions": 1,
            "backoffLimit": 6,
            "completionMode": "NonIndexed",
            "suspend": false,
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "job", "image": format!("registry.example/{ns}/{name}:1.0")}], "restartPolicy": "Never"},
            },
        },
        "status": {"startTime": CREATED, "active": 1, "ready": 1, "terminating": 0, "uncountedTerminatedPods": {}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_runtime_shapes() {
        let id = container_id("a");
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, container_id("b"));
        let uid = uid_for("x");
        assert_eq!(uid.len(), 36);
        assert_eq!(uid.matches('-').count(), 4);
    }

    #[test]
    fn parses_chunked_and_sized_responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"{}"[..]));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
                .is_err()
        );
    }
}
