//! Kubernetes metadata: which pod, namespace and workload a container
//! belongs to.
//!
//! A watcher ([`watch`]) lists and watches the pods of this node and all
//! namespaces from the API server and publishes what it knows as one
//! immutable [`Snapshot`] in a shared [`Metadata`]. The pipeline reads the
//! snapshot without ever waiting on the watcher: a read is an atomic load,
//! and the version number tells cached resources when to look again.
//!
//! Pods are stripped on arrival to what labels use ([`PodMeta`]); a pod
//! deleted a moment ago is kept for a while (its last requests may still be
//! in flight through the pipeline).

pub mod pod;
pub mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

pub use pod::WatchedPod;

/// The annotation that names a pod's service (OpenTelemetry's convention).
pub const SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";
/// The label that names an application (Kubernetes' recommended labels).
pub const APP_NAME_LABEL: &str = "app.kubernetes.io/name";

/// The kinds of workload a pod can belong to, as far as labels go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    CronJob,
    Job,
}

impl WorkloadKind {
    /// The resource attribute that carries a workload of this kind's name.
    pub fn attribute(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "k8s.deployment.name",
            WorkloadKind::ReplicaSet => "k8s.replicaset.name",
            WorkloadKind::StatefulSet => "k8s.statefulset.name",
            WorkloadKind::DaemonSet => "k8s.daemonset.name",
            WorkloadKind::CronJob => "k8s.cronjob.name",
            WorkloadKind::Job => "k8s.job.name",
        }
    }
}

/// A pod's owners, innermost first: a ReplicaSet and its Deployment, a Job
/// and its CronJob, or one StatefulSet or DaemonSet.
pub type Owners = Vec<(WorkloadKind, String)>;

/// What labels use of one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// Shared with the pod store's key.
    pub uid: Arc<str>,
    pub name: String,
    /// Shared by the pods of a namespace (the watcher interns it).
    pub namespace: Arc<str>,
    pub owners: Owners,
    /// Container id (runtime prefix removed) → container name, init
    /// containers included.
    pub containers: Vec<(ContainerId, Box<str>)>,
    /// The pod's labels and annotations the configuration lists, copied
    /// onto its resources.
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    /// The labels and annotations the `select` and `tenants` rules look
    /// at (not copied onto resources).
    pub rule_labels: Vec<(String, String)>,
    pub rule_annotations: Vec<(String, String)>,
    /// Its [`SERVICE_NAME_ANNOTATION`] and [`APP_NAME_LABEL`], which name
    /// its service.
    pub annotated_service_name: Option<String>,
    pub app_name: Option<String>,
    /// Set when the API server said the pod was deleted.
    pub deleted_at: Option<Instant>,
}

impl PodMeta {
    pub fn label(&self, key: &str) -> Option<&str> {
        lookup(&self.labels, key)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        lookup(&self.annotations, key)
    }

    /// What the pod says its service is called: the annotation, else the
    /// label.
    pub fn declared_service_name(&self) -> Option<&str> {
        self.annotated_service_name
            .as_deref()
            .or(self.app_name.as_deref())
            .filter(|v| !v.is_empty())
    }

    /// The name of the container with this id.
    pub fn container_name(&self, container_id: &str) -> Option<&str> {
        let wanted = ContainerId::new(container_id);
        self.containers
            .iter()
            .find(|(id, _)| *id == wanted)
            .map(|(_, name)| &**name)
    }

    /// The outermost owner: the workload that names the pod's service.
    pub fn workload(&self) -> Option<&(WorkloadKind, String)> {
        self.owners.last()
    }
}

/// A container id as the runtime reports it: the usual 64 hex digits kept
/// as the 32 bytes they spell (a third of the memory, for the tens of
/// thousands of containers a node's pods may list), anything else as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerId {
    Hex([u8; 32]),
    Text(Box<str>),
}

impl ContainerId {
    pub fn new(id: &str) -> ContainerId {
        let mut bytes = [0u8; 32];
        let hex = id.len() == 64
            && id.as_bytes().chunks(2).zip(&mut bytes).all(|(pair, out)| {
                // Lower case only: upper case would not give back the same text.
                let digit = |c: u8| match c {
                    b'0'..=b'9' => Some(c - b'0'),
                    b'a'..=b'f' => Some(c - b'a' + 10),
                    _ => None,
                };
                match (digit(pair[0]), digit(pair[1])) {
                    (Some(hi), Some(lo)) => {
                        *out = hi << 4 | lo;
                        true
                    }
                    _ => false,
                }
            });
        if hex {
            ContainerId::Hex(bytes)
        } else {
            ContainerId::Text(id.into())
        }
    }
}

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContainerId::Hex(bytes) => bytes.iter().try_for_each(|b| write!(f, "{b:02x}")),
            ContainerId::Text(t) => f.write_str(t),
        }
    }
}

fn lookup<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Which labels and annotations of a pod are kept.
#[derive(Clone, Debug, Default)]
pub struct Keep {
    pub labels: Vec<String>,
    pub annotations: Vec<String>,
    /// Label and annotation keys the `select` and `tenants` rules look at.
    pub rule_labels: Vec<String>,
    pub rule_annotations: Vec<String>,
}

impl Keep {
    fn label(&self, key: &str) -> bool {
        self.labels.iter().any(|k| k == key)
    }

    fn annotation(&self, key: &str) -> bool {
        self.annotations.iter().any(|k| k == key)
    }

    fn rule_label(&self, key: &str) -> bool {
        self.rule_labels.iter().any(|k| k == key)
    }

    fn rule_annotation(&self, key: &str) -> bool {
        self.rule_annotations.iter().any(|k| k == key)
    }
}

/// Strips a pod to its [`PodMeta`]. `owners` resolves the pod's controller
/// reference (see [`owners_of`]). None for a pod without a UID or name,
/// which the API server never sends.
pub fn pod_meta(pod: &WatchedPod, keep: &Keep, owners: Owners) -> Option<PodMeta> {
    let meta = &pod.metadata;
    let uid = Arc::from(meta.uid.as_deref()?);
    let name = meta.name.clone()?;
    let namespace = Arc::from(meta.namespace.as_deref().unwrap_or_default());
    let mut containers = Vec::new();
    if let Some(status) = &pod.status {
        let all = [
            &status.init_container_statuses,
            &status.container_statuses,
            &status.ephemeral_container_statuses,
        ];
        for statuses in all.into_iter().flatten() {
            for s in statuses {
                if let Some(id) = s.container_id.as_deref().and_then(strip_runtime) {
                    containers.push((ContainerId::new(id), s.name.as_str().into()));
                }
            }
        }
    }
    let kept = |map: &Option<std::collections::BTreeMap<String, String>>,
                wanted: &dyn Fn(&str) -> bool| {
        map.iter()
            .flatten()
            .filter(|(k, _)| wanted(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    containers.shrink_to_fit();
    Some(PodMeta {
        uid,
        name,
        namespace,
        owners,
        containers,
        labels: kept(&meta.labels, &|k| keep.label(k)),
        annotations: kept(&meta.annotations, &|k| keep.annotation(k)),
        rule_labels: kept(&meta.labels, &|k| keep.rule_label(k)),
        rule_annotations: kept(&meta.annotations, &|k| keep.rule_annotation(k)),
        annotated_service_name: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(SERVICE_NAME_ANNOTATION))
            .cloned(),
        app_name: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(APP_NAME_LABEL))
            .cloned(),
        deleted_at: None,
    })
}

/// `containerd://<id>` → `<id>`: the id as the cgroup path shows it.
fn strip_runtime(id: &str) -> Option<&str> {
    let (_, id) = id.split_once("://")?;
    (!id.is_empty()).then_some(id)
}

/// A pod's owners, from its controller reference and its
/// `pod-template-hash` label; `replicaset_owner` is what the API server
/// said owns its ReplicaSet, when asked (see [`owners_of`]).
pub fn pod_owners(pod: &WatchedPod, replicaset_owner: Option<Option<(String, String)>>) -> Owners {
    let refs = pod.metadata.owner_references.as_deref().unwrap_or_default();
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .map(String::as_str);
    owners_of(
        controller(refs).map(|r| (r.kind.as_str(), r.name.as_str())),
        hash,
        replicaset_owner,
    )
}

/// The controller among a pod's owner references.
pub fn controller(refs: &[OwnerReference]) -> Option<&OwnerReference> {
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
}

/// A pod's owners from its controller reference. A ReplicaSet's own owner
/// comes from `replicaset_owner` (the API server, cached), else from the
/// naming rule a Deployment follows (`<deployment>-<pod-template-hash>`,
/// the hash being a label of the pod). A Job's CronJob comes from the rule
/// the CronJob controller names its Jobs by (`<cronjob>-<scheduled minute>`),
/// as the agent may not read Jobs.
pub fn owners_of(
    controller: Option<(&str, &str)>,
    pod_template_hash: Option<&str>,
    replicaset_owner: Option<Option<(String, String)>>,
) -> Owners {
    let Some((kind, name)) = controller else {
        return Vec::new();
    };
    let name = name.to_owned();
    match kind {
        "ReplicaSet" => {
            let parent = match replicaset_owner {
                // The API server answered: its controller, if a Deployment.
                Some(owner) => owner
                    .filter(|(kind, _)| kind == "Deployment")
                    .map(|(_, name)| name),
                None => pod_template_hash.and_then(|hash| {
                    name.strip_suffix(hash)
                        .and_then(|n| n.strip_suffix('-'))
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                }),
            };
            let mut owners = vec![(WorkloadKind::ReplicaSet, name)];
            owners.extend(parent.map(|p| (WorkloadKind::Deployment, p)));
            owners
        }
        "StatefulSet" => vec![(WorkloadKind::StatefulSet, name)],
        "DaemonSet" => vec![(WorkloadKind::DaemonSet, name)],
        "Job" => {
            let cronjob = name
                .rsplit_once('-')
                .filter(|(prefix, minute)| {
                    !prefix.is_empty()
                        && minute.len() >= 8
                        && minute.bytes().all(|b| b.is_ascii_digit())
                })
                .map(|(prefix, _)| prefix.to_owned());
            let mut owners = vec![(WorkloadKind::Job, name)];
            owners.extend(cronjob.map(|c| (WorkloadKind::CronJob, c)));
            owners
        }
        // A static pod (owned by its Node) or a custom controller: the pod
        // names itself.
        _ => Vec::new(),
    }
}

/// What the agent knows of the cluster at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Changes with every published snapshot.
    pub version: u64,
    /// By pod UID.
    pub pods: HashMap<Arc<str>, Arc<PodMeta>>,
    /// Namespace name → its labels.
    pub namespaces: HashMap<Arc<str>, Arc<Vec<(String, String)>>>,
}

/// The snapshot shared between the watcher and the pipeline.
#[derive(Debug)]
pub struct Metadata {
    current: ArcSwap<Snapshot>,
    version: AtomicU64,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            current: ArcSwap::from_pointee(Snapshot::default()),
            version: AtomicU64::new(0),
        }
    }
}

impl Metadata {
    /// The version of the current snapshot: one atomic load, for caches to
    /// tell whether to look again.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot (the watcher does).
    pub fn publish(&self, mut snapshot: Snapshot) {
        let version = self.version.load(Ordering::Relaxed) + 1;
        snapshot.version = version;
        self.current.store(Arc::new(snapshot));
        self.version.store(version, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(
        kind: &str,
        name: &str,
        hash: Option<&str>,
        rs: Option<Option<(&str, &str)>>,
    ) -> Owners {
        owners_of(
            Some((kind, name)),
            hash,
            rs.map(|o| o.map(|(k, n)| (k.to_owned(), n.to_owned()))),
        )
    }

    #[test]
    fn owner_resolution() {
        use WorkloadKind::*;
        let rs = |n: &str| (ReplicaSet, n.to_owned());
        // The API server says which Deployment owns the ReplicaSet.
        assert_eq!(
            owners(
                "ReplicaSet",
                "web-7d9f8c6b5",
                Some("7d9f8c6b5"),
                Some(Some(("Deployment", "web")))
            ),
            vec![rs("web-7d9f8c6b5"), (Deployment, "web".into())]
        );
        // ... even when the name does not follow the rule.
        assert_eq!(
            owners(
                "ReplicaSet",
                "custom",
                None,
                Some(Some(("Deployment", "frontend")))
            ),
            vec![rs("custom"), (Deployment, "frontend".into())]
        );
        // A ReplicaSet owned by something else (an Argo Rollout) or nothing.
        assert_eq!(
            owners(
                "ReplicaSet",
                "r-abc",
                Some("abc"),
                Some(Some(("Rollout", "r")))
            ),
            vec![rs("r-abc")]
        );
        assert_eq!(
            owners("ReplicaSet", "solo", None, Some(None)),
            vec![rs("solo")]
        );
        // The API server did not answer: the naming rule, with the hash label.
        assert_eq!(
            owners("ReplicaSet", "api-server-5c7b9d", Some("5c7b9d"), None),
            vec![rs("api-server-5c7b9d"), (Deployment, "api-server".into())]
        );
        assert_eq!(
            owners("ReplicaSet", "api-5c7b9d", Some("other"), None),
            vec![rs("api-5c7b9d")]
        );
        assert_eq!(
            owners("ReplicaSet", "api-5c7b9d", None, None),
            vec![rs("api-5c7b9d")]
        );
        assert_eq!(owners("ReplicaSet", "-h", Some("h"), None), vec![rs("-h")]);
        // Jobs of a CronJob are named after the scheduled minute.
        assert_eq!(
            owners("Job", "backup-29012345", None, None),
            vec![(Job, "backup-29012345".into()), (CronJob, "backup".into())]
        );
        assert_eq!(
            owners("Job", "migrate-v2", None, None),
            vec![(Job, "migrate-v2".into())]
        );
        assert_eq!(
            owners("Job", "run-1234", None, None),
            vec![(Job, "run-1234".into())]
        );
        assert_eq!(
            owners("StatefulSet", "db", None, None),
            vec![(StatefulSet, "db".into())]
        );
        assert_eq!(
            owners("DaemonSet", "agent", None, None),
            vec![(DaemonSet, "agent".into())]
        );
        assert_eq!(owners("Node", "node-1", None, None), vec![]);
        assert_eq!(owners_of(None, None, None), vec![]);
    }

    #[test]
    fn pods_are_stripped_to_what_is_used() {
        let pod: WatchedPod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-7d9f8c6b5-x2x4z", "namespace": "shop", "uid": "3d1e6b5a-7c2f-4e8d-9a0b-1c2d3e4f5a6b",
                "labels": {"app.kubernetes.io/name": "web", "team": "a", "pod-template-hash": "7d9f8c6b5"},
                "annotations": {"resource.opentelemetry.io/service.name": "storefront", "big": "x"},
                "managedFields": [{"manager": "kubelet"}], "resourceVersion": "42",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5", "uid": "u", "controller": true}],
            },
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "i"}]},
            "status": {
                "containerStatuses": [
                    {"name": "app", "containerID": "containerd://abc", "image": "i", "imageID": "", "ready": true, "restartCount": 0},
                    {"name": "pending", "image": "i", "imageID": "", "ready": false, "restartCount": 0}
                ],
                "initContainerStatuses": [
                    {"name": "init", "containerID": "cri-o://def", "image": "i", "imageID": "", "ready": false, "restartCount": 0}
                ]
            }
        }))
        .expect("a pod");
        assert_eq!(pod.metadata.managed_fields, None, "skipped by the parser");
        assert_eq!(
            pod.metadata.resource_version.as_deref(),
            Some("42"),
            "the watcher needs it"
        );
        assert_eq!(
            pod_owners(&pod, None),
            vec![
                (WorkloadKind::ReplicaSet, "web-7d9f8c6b5".into()),
                (WorkloadKind::Deployment, "web".into())
            ]
        );
        let keep = Keep {
            labels: vec!["team".into()],
            annotations: vec![],
            rule_labels: vec!["app.kubernetes.io/name".into(), "missing".into()],
            rule_annotations: vec![],
        };
        let meta = pod_meta(&pod, &keep, Vec::new()).expect("meta");
        assert_eq!(meta.name, "web-7d9f8c6b5-x2x4z");
        assert_eq!(&*meta.namespace, "shop");
        assert_eq!(meta.container_name("abc"), Some("app"));
        assert_eq!(meta.container_name("def"), Some("init"));
        assert_eq!(meta.containers.len(), 2);
        assert_eq!(meta.label("team"), Some("a"));
        assert_eq!(meta.labels.len(), 1, "only the listed labels");
        assert_eq!(
            meta.rule_labels,
            [("app.kubernetes.io/name".to_owned(), "web".to_owned())],
            "the labels the select rules look at, kept apart"
        );
        assert_eq!(meta.app_name.as_deref(), Some("web"));
        assert_eq!(meta.annotations, vec![]);
        assert_eq!(meta.declared_service_name(), Some("storefront"));
        let mut nameless = pod.clone();
        nameless.metadata.uid = None;
        assert_eq!(pod_meta(&nameless, &keep, Vec::new()), None);
    }

    #[test]
    fn container_ids_are_kept_as_bytes_when_they_are_hex() {
        let hex = "0123456789abcdef".repeat(4);
        let id = ContainerId::new(&hex);
        assert!(matches!(id, ContainerId::Hex(_)));
        assert_eq!(id.to_string(), hex);
        for text in [
            "ABCDEF".repeat(10) + "ABCD",
            "abc".into(),
            "g".repeat(64),
            String::new(),
        ] {
            let id = ContainerId::new(&text);
            assert_eq!(id, ContainerId::Text(text.as_str().into()));
            assert_eq!(id.to_string(), text);
        }
        let meta = PodMeta {
            containers: vec![
                (ContainerId::new(&hex), "app".into()),
                (ContainerId::new("short-id"), "sidecar".into()),
            ],
            ..PodMeta::default()
        };
        assert_eq!(meta.container_name(&hex), Some("app"));
        assert_eq!(meta.container_name("short-id"), Some("sidecar"));
        assert_eq!(meta.container_name(&hex.to_uppercase()), None);
        assert_eq!(meta.container_name(&hex[1..]), None);
    }
}
