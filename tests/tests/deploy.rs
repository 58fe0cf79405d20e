//! The Kubernetes deployment, checked offline: the Helm chart in
//! deploy/helm/sonde is rendered by Helm itself (its Go SDK, through the
//! `helm-python-sdk` package, which needs no cluster and no helm binary),
//! with its default values and with a set of non-default ones. Every
//! manifest is then validated against the Kubernetes API schemas
//! (`kubernetes-validate --strict`), and the properties the agent's
//! security rests on are asserted one by one: the DaemonSet shares the
//! host's pid namespace but not its network, nothing is privileged, the
//! capabilities are exactly the ones named, the root filesystem is read-only,
//! the RBAC only reads pods, namespaces and replicasets.
//!
//! deploy/kubernetes/sonde.yaml must be the default render (plus its
//! Namespace): after changing the chart, write it anew with
//! `SONDE_BLESS=1 cargo test --release -p sonde-tests --test deploy` and
//! read its diff.
//!
//! Needs no root. Needs the Python packages `helm-python-sdk` and
//! `kubernetes-validate`, which `cargo xtask test` installs
//! (xtask/src/deps.rs): without them the tests fail, they never skip.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde_json::{Value, json};
use sonde_tests::util::{python_bin, workspace_root};

/// The Kubernetes version whose API schemas the manifests must satisfy.
const KUBE_VERSION: &str = "1.30.0";
/// The release name and namespace the manifests are rendered for.
const RELEASE: &str = "sonde";
const NAMESPACE: &str = "sonde";

/// The capabilities the agent gets by default, and the one a value adds.
const CAPABILITIES: &[&str] = &[
    "BPF",
    "PERFMON",
    "SYS_RESOURCE",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
];
const SYS_ADMIN: &str = "SYS_ADMIN";

/// The host directories the agent may see, all read-only.
const HOST_PATHS: &[&str] = &["/sys/kernel/tracing", "/sys/fs/cgroup"];

/// What the ClusterRole may do: (API group, resource), each with exactly
/// these verbs.
const RBAC_RESOURCES: &[(&str, &str)] =
    &[("", "pods"), ("", "namespaces"), ("apps", "replicasets")];
const RBAC_VERBS: &[&str] = &["get", "list", "watch"];

/// The kinds the chart renders, in the order Helm installs them; the
/// checked-in manifest lists them in this order too.
const KIND_ORDER: &[&str] = &[
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "ClusterRole",
    "ClusterRoleBinding",
    "DaemonSet",
];

/// The checked-in manifest, relative to the workspace root.
const MANIFEST: &str = "deploy/kubernetes/sonde.yaml";

/// Held by the tests that read or write [`MANIFEST`], so that a blessing
/// run does not validate a half-written file.
static MANIFEST_LOCK: Mutex<()> = Mutex::new(());

fn manifest_lock() -> MutexGuard<'static, ()> {
    MANIFEST_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What goes before the rendered chart in the checked-in manifest.
const MANIFEST_HEAD: &str = "\
# sonde as a DaemonSet: one agent per node, tracing every process on it.
#
# Generated from the Helm chart deploy/helm/sonde with its default values
# (release \"sonde\", namespace \"sonde\"), after the Namespace. Do not edit:
# change the chart, then write this file anew with
#   SONDE_BLESS=1 cargo test --release -p sonde-tests --test deploy
# (tests/tests/deploy.rs fails while the two differ). docs/DEPLOY.md says
# how to build the image and what to change.
---
apiVersion: v1
kind: Namespace
metadata:
  name: sonde
  labels:
    # hostPID and the added capabilities are beyond the baseline Pod
    # Security Standard.
    pod-security.kubernetes.io/enforce: privileged
";

/// Non-default values: every branch the defaults leave out.
const CUSTOM_VALUES: &str = r#"
image:
  repository: registry.example.com/observability/sonde
  tag: 0.1.0-rc1
  pullPolicy: Always
imagePullSecrets:
  - name: regcred
clusterName: prod-eu-1
otlp:
  endpoint: http://otel-collector.observability.svc:4317
  protocol: grpc
  headersSecret:
    name: sonde-otlp
    key: headers
extraEnv:
  - name: OTEL_RESOURCE_ATTRIBUTES
    value: deployment.environment.name=prod
securityContext:
  sysAdmin: true
  appArmorProfile:
    type: Unconfined
serviceAccount:
  name: sonde-agent
priorityClassName: system-node-critical
podAnnotations:
  prometheus.io/scrape: "true"
rolloutOnConfigChange: true
updateStrategy:
  rollingUpdate:
    maxUnavailable: 10%
"#;

/// What a render should show, beyond what every render shares.
struct Expect {
    sys_admin: bool,
    cluster_name: &'static str,
    service_account: &'static str,
    image: &'static str,
    endpoint: Option<&'static str>,
    /// (Secret name, key) of OTEL_EXPORTER_OTLP_HEADERS.
    headers_secret: Option<(&'static str, &'static str)>,
    max_unavailable: Value,
}

fn default_expect() -> Expect {
    Expect {
        sys_admin: false,
        cluster_name: "",
        service_account: "sonde",
        image: "sonde:0.1.0",
        endpoint: None,
        headers_secret: None,
        max_unavailable: json!(1),
    }
}

fn custom_expect() -> Expect {
    Expect {
        sys_admin: true,
        cluster_name: "prod-eu-1",
        service_account: "sonde-agent",
        image: "registry.example.com/observability/sonde:0.1.0-rc1",
        endpoint: Some("http://otel-collector.observability.svc:4317"),
        headers_secret: Some(("sonde-otlp", "headers")),
        max_unavailable: json!("10%"),
    }
}

/// One Kubernetes object of a render.
#[derive(Clone, Debug)]
struct Doc {
    /// The template it came from, e.g. `sonde/templates/daemonset.yaml`.
    source: String,
    /// Its text as Helm rendered it.
    text: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// A chart rendered by Helm, with `helm lint --strict`'s findings.
struct Render {
    docs: Vec<Doc>,
    notes: String,
    /// Lint findings of warning severity or worse, and lint errors.
    lint: Vec<String>,
}

/// Renders the chart with Helm's Go SDK; prints one JSON object with the
/// lint report and the rendered templates.
const RENDER_PY: &str = r#"
import json, sys
import helm_python as helm

chart_dir, values_file, kube_version, release, namespace = sys.argv[1:6]
values = None
if values_file:
    with open(values_file) as f:
        values = helm.values_from_yaml(f.read())
lint = helm.lint(chart_dir, values, strict=True, namespace=namespace,
                 kube_version="v" + kube_version)
with helm.Chart.load(chart_dir) as chart:
    manifests = chart.render(values, name=release, namespace=namespace,
                             is_install=True)
json.dump({"lint": lint, "manifests": manifests}, sys.stdout)
"#;

/// The Python packages the tests run, with the module that proves each.
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("helm-python-sdk", "helm_python"),
    ("kubernetes-validate", "kubernetes_validate"),
];

/// Fails (never skips) when a tool is missing, naming the install step.
fn require_tools() {
    let python = python_bin();
    for (package, module) in PYTHON_PACKAGES {
        let imported = Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            imported,
            "the Python package {package} is not installed for {}: `cargo xtask test` installs \
             it (PIP_PACKAGES in xtask/src/deps.rs); by hand: `{} -m pip install {package}`",
            python.display(),
            python.display(),
        );
    }
}

fn chart_dir() -> PathBuf {
    workspace_root().join("deploy/helm/sonde")
}

/// Renders the chart with `values` (YAML) on top of its defaults.
fn render(values: Option<&str>) -> Render {
    require_tools();
    let dir = tempfile::tempdir().expect("temporary directory");
    let values_file = match values {
        Some(text) => {
            let path = dir.path().join("values.yaml");
            std::fs::write(&path, text).expect("writing the values file");
            path.display().to_string()
        }
        None => String::new(),
    };
    let out = Command::new(python_bin())
        .args(["-c", RENDER_PY])
        .arg(chart_dir())
        .args([values_file.as_str(), KUBE_VERSION, RELEASE, NAMESPACE])
        .output()
        .expect("starting python to render the chart");
    assert!(
        out.status.success(),
        "helm could not render deploy/helm/sonde: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("the render script's JSON");

    let mut lint = Vec::new();
    for m in report["lint"]["messages"].as_array().into_iter().flatten() {
        if m["severity"].as_i64().unwrap_or(3) >= 2 {
            lint.push(format!("{}: {}", m["path"], m["error"]));
        }
    }
    for e in report["lint"]["errors"].as_array().into_iter().flatten() {
        lint.push(e.to_string());
    }

    let manifests = report["manifests"]
        .as_object()
        .expect("the render is an object of templates");
    let mut docs = Vec::new();
    let mut notes = String::new();
    for (source, text) in manifests {
        let text = text.as_str().unwrap_or_default();
        if source.ends_with("NOTES.txt") {
            notes = text.to_string();
            continue;
        }
        docs.extend(split_docs(source, text));
    }
    docs.sort_by_key(|d| (kind_rank(d.kind()), d.source.clone()));
    Render { docs, notes, lint }
}

/// The position of `kind` in [`KIND_ORDER`]; a kind not there fails.
fn kind_rank(kind: &str) -> usize {
    KIND_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_else(|| panic!("the chart renders a {kind}, which the test does not expect"))
}

/// The objects in one rendered template (or file), each parsed; documents
/// with nothing but comments are left out.
fn split_docs(source: &str, text: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut flush = |current: &mut String| {
        let body = std::mem::take(current);
        let has_content = body.lines().any(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#')
        });
        if has_content {
            let value: Value = serde_saphyr::from_str(&body)
                .unwrap_or_else(|e| panic!("{source} is not YAML: {e}\n{body}"));
            let text = body.trim_matches('\n').to_string() + "\n";
            docs.push(Doc {
                source: source.to_string(),
                text,
                value,
            });
        }
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            flush(&mut current);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current);
    docs
}

fn default_render() -> &'static Render {
    static R: OnceLock<Render> = OnceLock::new();
    R.get_or_init(|| render(None))
}

fn custom_render() -> &'static Render {
    static R: OnceLock<Render> = OnceLock::new();
    R.get_or_init(|| render(Some(CUSTOM_VALUES)))
}

/// The checked-in manifest as it must be: the head, then every rendered
/// object under the template it came from.
fn manifest_text(render: &Render) -> String {
    let mut text = MANIFEST_HEAD.to_string();
    for doc in &render.docs {
        let _ = write!(text, "---\n# Source: {}\n{}", doc.source, doc.text);
    }
    text
}

/// Runs `kubernetes-validate --strict` on `files`, which hold `objects`
/// objects in all; every one of them must pass (a kind it has no schema for
/// is only a warning to the tool, and a failure here).
fn validate(files: &[&Path], objects: usize) -> Result<(), String> {
    let out = Command::new(python_bin())
        .args(["-m", "kubernetes_validate", "--strict", "-k", KUBE_VERSION])
        .args(files)
        .output()
        .map_err(|e| format!("cannot start kubernetes-validate: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let passed = stdout.lines().filter(|l| l.contains(" passed ")).count();
    let complaints: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| !l.starts_with("INFO "))
        .collect();
    if !out.status.success() || !complaints.is_empty() || passed != objects {
        return Err(format!(
            "kubernetes-validate --strict -k {KUBE_VERSION} ({}; {passed} of {objects} objects \
             passed):\n{stdout}{stderr}",
            out.status
        ));
    }
    Ok(())
}

/// Validates the objects of a render, written as one file.
fn validate_render(render: &Render) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("rendered.yaml");
    let text: String = render
        .docs
        .iter()
        .map(|d| format!("---\n# Source: {}\n{}", d.source, d.text))
        .collect();
    std::fs::write(&path, text).expect("writing the rendered manifests");
    validate(&[path.as_path()], render.docs.len())
}

/// Problems found in a render, all reported at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }

    fn eq(&mut self, what: &str, got: &Value, want: &Value) {
        if got != want {
            self.0.push(format!("{what}: got {got}, want {want}"));
        }
    }

    fn finish(self, render: &str) {
        assert!(
            self.0.is_empty(),
            "the {render} render of deploy/helm/sonde is wrong:\n  - {}",
            self.0.join("\n  - ")
        );
    }
}

/// The one object of `kind` in `docs`.
fn only<'a>(p: &mut Problems, docs: &'a [Doc], kind: &str) -> Option<&'a Doc> {
    let found: Vec<&Doc> = docs.iter().filter(|d| d.kind() == kind).collect();
    p.check(
        found.len() == 1,
        format!("{} {kind} objects, want exactly 1", found.len()),
    );
    found.into_iter().next()
}

/// Every place in `v` where `key` is `value`, as paths.
fn find_key(v: &Value, key: &str, value: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let here = format!("{path}.{k}");
                if k == key && child == value {
                    out.push(here.clone());
                }
                find_key(child, key, value, &here, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                find_key(child, key, value, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The strings of a JSON array (nothing for anything else).
fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The env entry named `name` of a container.
fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// The container port a probe's port (a number or a port name) means.
fn probe_port(container: &Value, port: &Value) -> Option<i64> {
    if let Some(n) = port.as_i64() {
        return Some(n);
    }
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == *port)?["containerPort"]
        .as_i64()
}

/// Everything a render must show, with `expect` for what values change.
fn check_render(render: &Render, expect: &Expect, which: &str) {
    let mut p = Problems::default();
    p.check(
        render.lint.is_empty(),
        format!("helm lint --strict: {}", render.lint.join("; ")),
    );
    p.check(
        render.notes.contains(NAMESPACE),
        "NOTES.txt rendered empty or without the namespace",
    );
    let docs = &render.docs;
    for doc in docs {
        let mut found = Vec::new();
        find_key(&doc.value, "privileged", &json!(true), "", &mut found);
        find_key(&doc.value, "hostNetwork", &json!(true), "", &mut found);
        find_key(&doc.value, "hostIPC", &json!(true), "", &mut found);
        p.check(
            found.is_empty(),
            format!("{} sets {}", doc.source, found.join(", ")),
        );
        if doc.kind() != "ClusterRole" && doc.kind() != "ClusterRoleBinding" {
            p.eq(
                &format!("{} namespace", doc.source),
                &doc.value["metadata"]["namespace"],
                &json!(NAMESPACE),
            );
        }
    }

    check_rbac(&mut p, docs, expect);
    let config_map = only(&mut p, docs, "ConfigMap");
    if let Some(cm) = config_map {
        check_config(&mut p, cm, expect);
    }
    if let Some(ds) = only(&mut p, docs, "DaemonSet") {
        check_daemonset(&mut p, ds, config_map.map(Doc::name), expect);
    }
    p.finish(which);
}

/// ServiceAccount, ClusterRole and ClusterRoleBinding.
fn check_rbac(p: &mut Problems, docs: &[Doc], expect: &Expect) {
    if let Some(sa) = only(p, docs, "ServiceAccount") {
        p.eq(
            "ServiceAccount name",
            &sa.value["metadata"]["name"],
            &json!(expect.service_account),
        );
    }
    let role = only(p, docs, "ClusterRole");
    if let Some(role) = role {
        let mut granted = BTreeSet::new();
        for rule in role.value["rules"].as_array().into_iter().flatten() {
            let keys: BTreeSet<&str> = rule
                .as_object()
                .into_iter()
                .flat_map(|m| m.keys().map(String::as_str))
                .collect();
            p.check(
                keys == BTreeSet::from(["apiGroups", "resources", "verbs"]),
                format!(
                    "ClusterRole rule {rule} has keys {keys:?}, want apiGroups, resources, verbs"
                ),
            );
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        granted.insert((group, resource, verb));
                    }
                }
            }
        }
        let wanted: BTreeSet<(&str, &str, &str)> = RBAC_RESOURCES
            .iter()
            .flat_map(|(g, r)| RBAC_VERBS.iter().map(move |v| (*g, *r, *v)))
            .collect();
        p.check(
            granted == wanted,
            format!(
                "ClusterRole grants {:?} beyond what it should, and lacks {:?}",
                granted.difference(&wanted).collect::<Vec<_>>(),
                wanted.difference(&granted).collect::<Vec<_>>()
            ),
        );
    }
    if let Some(binding) = only(p, docs, "ClusterRoleBinding") {
        p.eq(
            "ClusterRoleBinding roleRef",
            &binding.value["roleRef"],
            &json!({
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role.map(Doc::name).unwrap_or("?"),
            }),
        );
        p.eq(
            "ClusterRoleBinding subjects",
            &binding.value["subjects"],
            &json!([{
                "kind": "ServiceAccount",
                "name": expect.service_account,
                "namespace": NAMESPACE,
            }]),
        );
    }
}

/// The agent's sonde.yaml in the ConfigMap.
fn check_config(p: &mut Problems, cm: &Doc, expect: &Expect) {
    let Some(text) = cm.value["data"]["sonde.yaml"].as_str() else {
        p.check(false, "the ConfigMap has no data.sonde.yaml");
        return;
    };
    let config: Value = match serde_saphyr::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            p.check(false, format!("data.sonde.yaml is not YAML: {e}"));
            return;
        }
    };
    p.eq(
        "config health.listen",
        &config["health"]["listen"],
        &json!("0.0.0.0:9465"),
    );
    p.eq(
        "config metrics.prometheus.listen",
        &config["metrics"]["prometheus"]["listen"],
        &json!("0.0.0.0:9464"),
    );
    p.eq(
        "config kubernetes.enabled",
        &config["kubernetes"]["enabled"],
        &json!(true),
    );
    p.eq(
        "config kubernetes.cluster_name",
        &config["kubernetes"]["cluster_name"],
        &json!(expect.cluster_name),
    );
}

fn check_daemonset(p: &mut Problems, ds: &Doc, config_map: Option<&str>, expect: &Expect) {
    let spec = &ds.value["spec"];
    let pod = &spec["template"]["spec"];
    p.eq("hostPID", &pod["hostPID"], &json!(true));
    p.check(
        pod["hostNetwork"].is_null() || pod["hostNetwork"] == false,
        format!(
            "hostNetwork is {}, want it unset or false",
            pod["hostNetwork"]
        ),
    );
    p.eq(
        "updateStrategy.type",
        &spec["updateStrategy"]["type"],
        &json!("RollingUpdate"),
    );
    p.eq(
        "updateStrategy.rollingUpdate.maxUnavailable",
        &spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        &expect.max_unavailable,
    );
    p.eq(
        "tolerations",
        &pod["tolerations"],
        &json!([{"operator": "Exists"}]),
    );
    p.eq(
        "serviceAccountName",
        &pod["serviceAccountName"],
        &json!(expect.service_account),
    );
    p.check(
        pod["terminationGracePeriodSeconds"].as_i64().is_some(),
        "terminationGracePeriodSeconds is not set",
    );
    let selector = spec["selector"]["matchLabels"].as_object();
    let labels = &spec["template"]["metadata"]["labels"];
    p.check(
        selector.is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels[k] == *v)),
        "the selector does not match the pod template's labels",
    );

    let containers = pod["containers"].as_array().cloned().unwrap_or_default();
    p.check(
        containers.len() == 1 && pod["initContainers"].is_null(),
        format!("{} containers, want only sonde", containers.len()),
    );
    let Some(c) = containers.iter().find(|c| c["name"] == "sonde") else {
        p.check(false, "no container named sonde");
        return;
    };
    p.eq("image", &c["image"], &json!(expect.image));
    p.eq(
        "args",
        &c["args"],
        &json!(["run", "--config", "/etc/sonde/sonde.yaml"]),
    );
    p.check(
        c["command"].is_null(),
        "command overrides the image's entrypoint",
    );

    // Security context.
    let sc = &c["securityContext"];
    p.eq("runAsUser", &sc["runAsUser"], &json!(0));
    p.eq(
        "readOnlyRootFilesystem",
        &sc["readOnlyRootFilesystem"],
        &json!(true),
    );
    if expect.sys_admin {
        // Kubernetes refuses allowPrivilegeEscalation: false beside
        // CAP_SYS_ADMIN; with SYS_ADMIN it must be left unset.
        p.check(
            sc["allowPrivilegeEscalation"].is_null(),
            format!(
                "allowPrivilegeEscalation is {} with SYS_ADMIN, want it unset",
                sc["allowPrivilegeEscalation"]
            ),
        );
    } else {
        p.eq(
            "allowPrivilegeEscalation",
            &sc["allowPrivilegeEscalation"],
            &json!(false),
        );
    }
    p.eq(
        "capabilities.drop",
        &sc["capabilities"]["drop"],
        &json!(["ALL"]),
    );
    let added = strings(&sc["capabilities"]["add"]);
    let mut wanted: Vec<&str> = CAPABILITIES.to_vec();
    if expect.sys_admin {
        wanted.push(SYS_ADMIN);
    }
    let added_set: BTreeSet<&str> = added.iter().copied().collect();
    p.check(
        added.len() == added_set.len() && added_set == wanted.iter().copied().collect(),
        format!("capabilities.add is {added:?}, want exactly {wanted:?}"),
    );
    p.eq(
        "seccompProfile",
        &sc["seccompProfile"],
        &json!({"type": "RuntimeDefault"}),
    );
    p.check(
        pod["securityContext"]["sysctls"].is_null(),
        "the pod sets sysctls",
    );

    // Environment.
    p.eq(
        "env NODE_NAME",
        env(c, "NODE_NAME").unwrap_or(&Value::Null),
        &json!({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}),
    );
    p.eq(
        "env OTEL_EXPORTER_OTLP_ENDPOINT",
        &env(c, "OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|e| e["value"].clone())
            .unwrap_or(Value::Null),
        &expect.endpoint.map_or(Value::Null, |e| json!(e)),
    );
    let headers = env(c, "OTEL_EXPORTER_OTLP_HEADERS");
    match expect.headers_secret {
        Some((name, key)) => p.eq(
            "env OTEL_EXPORTER_OTLP_HEADERS",
            headers.unwrap_or(&Value::Null),
            &json!({
                "name": "OTEL_EXPORTER_OTLP_HEADERS",
                "valueFrom": {"secretKeyRef": {"name": name, "key": key}},
            }),
        ),
        None => p.check(
            headers.is_none(),
            "OTEL_EXPORTER_OTLP_HEADERS is set with no headers in the values",
        ),
    }

    // Ports and probes.
    let port = |name: &str| {
        c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|entry| entry["name"] == name)
            .map(|entry| entry["containerPort"].clone())
            .unwrap_or(Value::Null)
    };
    p.eq("port health", &port("health"), &json!(9465));
    p.eq("port metrics", &port("metrics"), &json!(9464));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        p.eq(&format!("{probe} path"), &get["path"], &json!(path));
        p.check(
            probe_port(c, &get["port"]) == Some(9465),
            format!("{probe} port is {}, want 9465 (health)", get["port"]),
        );
    }

    // Volumes: the config, and host directories only read-only.
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
    let mount_of = |volume: &str| mounts.iter().find(|m| m["name"] == volume);
    let mut host_paths = BTreeSet::new();
    for v in &volumes {
        let name = v["name"].as_str().unwrap_or("?");
        let mount = mount_of(name);
        if let Some(path) = v["hostPath"]["path"].as_str() {
            host_paths.insert(path);
            p.check(
                mount.is_some_and(|m| m["readOnly"] == true && m["mountPath"] == path),
                format!("host path {path} is not mounted read-only at {path}"),
            );
        }
        if let Some(cm) = v["configMap"]["name"].as_str() {
            p.check(
                Some(cm) == config_map,
                format!("volume {name} is ConfigMap {cm}, not the chart's"),
            );
            p.check(
                mount.is_some_and(|m| m["mountPath"] == "/etc/sonde" && m["readOnly"] == true),
                "the config is not mounted read-only at /etc/sonde",
            );
        }
    }
    p.check(
        host_paths == HOST_PATHS.iter().copied().collect(),
        format!("host paths {host_paths:?}, want exactly {HOST_PATHS:?}"),
    );
    p.check(
        mounts
            .iter()
            .all(|m| volumes.iter().any(|v| v["name"] == m["name"])),
        "a volume mount names no volume",
    );
}

#[test]
fn default_values_render_a_minimal_confined_agent() {
    check_render(default_render(), &default_expect(), "default");
    // The agents take config changes live: an upgrade that changes only
    // `config` does not roll them.
    let ds = default_render()
        .docs
        .iter()
        .find(|d| d.kind() == "DaemonSet");
    let pod = ds.map_or(&Value::Null, |d| &d.value["spec"]["template"]);
    assert_eq!(
        pod["metadata"]["annotations"],
        Value::Null,
        "the default pods carry annotations (a config checksum would roll the agents)"
    );
}

#[test]
fn custom_values_render_as_asked() {
    let render = custom_render();
    check_render(render, &custom_expect(), "custom");
    let mut p = Problems::default();
    let ds = render.docs.iter().find(|d| d.kind() == "DaemonSet");
    let pod = ds.map_or(&Value::Null, |d| &d.value["spec"]["template"]);
    let c = &pod["spec"]["containers"][0];
    p.eq(
        "priorityClassName",
        &pod["spec"]["priorityClassName"],
        &json!("system-node-critical"),
    );
    p.eq(
        "imagePullSecrets",
        &pod["spec"]["imagePullSecrets"],
        &json!([{"name": "regcred"}]),
    );
    p.eq("imagePullPolicy", &c["imagePullPolicy"], &json!("Always"));
    p.eq(
        "appArmorProfile",
        &c["securityContext"]["appArmorProfile"],
        &json!({"type": "Unconfined"}),
    );
    p.eq(
        "podAnnotations",
        &pod["metadata"]["annotations"]["prometheus.io/scrape"],
        &json!("true"),
    );
    p.check(
        pod["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .is_some_and(|sum| sum.len() == 64),
        "rolloutOnConfigChange: no checksum/config annotation on the pods",
    );
    p.eq(
        "extraEnv",
        env(c, "OTEL_RESOURCE_ATTRIBUTES").unwrap_or(&Value::Null),
        &json!({"name": "OTEL_RESOURCE_ATTRIBUTES", "value": "deployment.environment.name=prod"}),
    );
    p.finish("custom");
}

#[test]
fn renders_pass_kubernetes_validate_strict() {
    require_tools();
    let mut failures = Vec::new();
    for (which, render) in [("default", default_render()), ("custom", custom_render())] {
        if let Err(e) = validate_render(render) {
            failures.push(format!("the {which} render: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn checked_in_manifest_is_the_default_render() {
    let want = manifest_text(default_render());
    let _lock = manifest_lock();
    let path = workspace_root().join(MANIFEST);
    if std::env::var_os("SONDE_BLESS").is_some() {
        std::fs::write(&path, &want).expect("writing the manifest");
        eprintln!("wrote {}", path.display());
        return;
    }
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .position(|(g, w)| g != w)
            .unwrap_or_else(|| got.lines().count().min(want.lines().count()));
        panic!(
            "{MANIFEST} is not the default render of deploy/helm/sonde (first difference at \
             line {}: {:?}, the chart gives {:?}); write it anew with `SONDE_BLESS=1 cargo test \
             --release -p sonde-tests --test deploy` and read its diff",
            first + 1,
            got.lines().nth(first).unwrap_or("<end of file>"),
            want.lines().nth(first).unwrap_or("<end of render>"),
        );
    }
}

#[test]
fn checked_in_manifest_passes_kubernetes_validate_strict() {
    require_tools();
    let _lock = manifest_lock();
    let path = workspace_root().join(MANIFEST);
    let text = std::fs::read_to_string(&path).expect("reading the manifest");
    let docs = split_docs(MANIFEST, &text);
    assert!(
        docs.iter()
            .any(|d| d.kind() == "Namespace" && d.name() == NAMESPACE)
            && docs.iter().any(|d| d.kind() == "DaemonSet"),
        "{MANIFEST} lacks the Namespace or the DaemonSet"
    );
    if let Err(e) = validate(&[path.as_path()], docs.len()) {
        panic!("{MANIFEST}: {e}");
    }
}
