//! A node with many pods for the benches: Kubernetes metadata holding
//! them, and a fake `/proc` whose processes (the tgids the recorded
//! records carry) run in containers of some of them, in cgroups named as
//! the kubelet and containerd (systemd driver) name them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sonde::enrich::k8s::{ContainerId, Metadata, PodMeta, Snapshot, WorkloadKind};
use sonde::enrich::{ClusterInfo, HostInfo, Kubernetes, ProcessResources};
use sonde::span::model::AttrValue;

/// Pods in the metadata.
pub const PODS: usize = 10_000;
/// Namespaces they are spread over.
const NAMESPACES: usize = 50;
/// The recorded records' processes (`records::recorded`: 1000 + conn % 4).
pub const PIDS: [u32; 4] = [1000, 1001, 1002, 1003];

/// The pod process `pid` of [`PIDS`] runs in: spread over the node.
fn pod_of(pid: u32) -> usize {
    (pid as usize * 2_477) % PODS
}

fn mix(i: usize, round: u64) -> u64 {
    let mut h = (i as u64 ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_add(1);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn uid(i: usize) -> String {
    let (a, b) = (mix(i, 1), mix(i, 2));
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

fn container_id(i: usize, c: u64) -> String {
    (0..4)
        .map(|r| format!("{:016x}", mix(i, 10 + 4 * c + r)))
        .collect()
}

/// Pod `i`: a Deployment's, two containers, one kept label, the
/// `app.kubernetes.io/name` label.
fn pod(i: usize) -> PodMeta {
    let app = format!("svc-{}", i / 10);
    let rs = format!("{app}-7d9f8c6b5");
    PodMeta {
        uid: uid(i).into(),
        name: format!("{rs}-{:05x}", mix(i, 3) & 0xfffff),
        namespace: format!("team-{}", i % NAMESPACES).into(),
        owners: vec![
            (WorkloadKind::ReplicaSet, rs),
            (WorkloadKind::Deployment, app.clone()),
        ],
        containers: vec![
            (ContainerId::new(&container_id(i, 0)), "app".into()),
            (ContainerId::new(&container_id(i, 1)), "proxy".into()),
        ],
        labels: vec![("team".into(), format!("team-{}", i % NAMESPACES))],
        annotations: Vec::new(),
        rule_labels: Vec::new(),
        rule_annotations: Vec::new(),
        annotated_service_name: None,
        app_name: Some(app),
        deleted_at: None,
    }
}

/// [`PODS`] pods and their namespaces, as the watcher publishes them.
pub fn snapshot() -> Snapshot {
    let pods = (0..PODS)
        .map(|i| {
            let meta = pod(i);
            (Arc::clone(&meta.uid), Arc::new(meta))
        })
        .collect();
    let namespaces = (0..NAMESPACES)
        .map(|n| {
            let name = format!("team-{n}");
            let labels = vec![("kubernetes.io/metadata.name".to_owned(), name.clone())];
            (Arc::from(name.as_str()), Arc::new(labels))
        })
        .collect();
    Snapshot {
        version: 0,
        pods,
        namespaces,
    }
}

/// Publishes snapshot after snapshot of the same pods, as the watcher
/// does when some pod changed, without copying them each time (a copy of
/// 10,000 pods would sweep the caches of the thread the benches time):
/// the snapshot replaced is taken back once nothing else holds it.
pub struct Publisher {
    metadata: Arc<Metadata>,
    spare: Option<Snapshot>,
}

impl Publisher {
    pub fn new(snapshot: &Snapshot) -> Publisher {
        let metadata = Arc::new(Metadata::default());
        metadata.publish(copy(snapshot));
        Publisher {
            metadata,
            spare: Some(copy(snapshot)),
        }
    }

    pub fn metadata(&self) -> Arc<Metadata> {
        Arc::clone(&self.metadata)
    }

    /// Publishes the next snapshot: the same pods (another pod changed),
    /// or with the pods of [`PIDS`] replaced by equal new ones (their
    /// labels changed), which makes their processes' resources be built
    /// again.
    pub fn publish(&mut self, own_pods_changed: bool) {
        let current = self.metadata.load();
        let mut next = self.spare.take().unwrap_or_else(|| copy(&current));
        if own_pods_changed {
            for pid in PIDS {
                let meta = pod(pod_of(pid));
                next.pods.insert(Arc::clone(&meta.uid), Arc::new(meta));
            }
        }
        self.metadata.publish(next);
        self.spare = Arc::try_unwrap(current).ok();
    }
}

fn copy(snapshot: &Snapshot) -> Snapshot {
    Snapshot {
        version: 0,
        pods: snapshot.pods.clone(),
        namespaces: snapshot.namespaces.clone(),
    }
}

/// A `/proc` tree with [`PIDS`], each a python3 in the `app` container of
/// its pod; removed when dropped.
pub struct FakeProc(PathBuf);

impl FakeProc {
    pub fn new() -> FakeProc {
        let root = std::env::temp_dir().join(format!("sonde-bench-proc-{}", std::process::id()));
        for pid in PIDS {
            let i = pod_of(pid);
            let dir = root.join(pid.to_string());
            std::fs::create_dir_all(&dir).expect("fake /proc");
            let stat = format!(
                "{pid} (python3) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {} 100 10\n",
                1000 + pid
            );
            let cgroup = format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope\n",
                uid(i).replace('-', "_"),
                container_id(i, 0)
            );
            for (name, text) in [
                ("stat", stat.as_str()),
                ("comm", "python3\n"),
                ("environ", "PATH=/usr/bin\0"),
                ("cgroup", cgroup.as_str()),
            ] {
                std::fs::write(dir.join(name), text).expect("fake /proc file");
            }
            let exe = dir.join("exe");
            let _ = std::fs::remove_file(&exe);
            std::os::unix::fs::symlink("/usr/bin/python3.12", &exe).expect("fake exe link");
        }
        FakeProc(root)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The process cache over this tree, with `metadata` when given.
    pub fn resources(&self, metadata: Option<Arc<Metadata>>) -> ProcessResources {
        let host = HostInfo {
            host_name: "bench".into(),
            host_id: None,
        };
        let resources = ProcessResources::with_proc_root(
            host,
            self.path(),
            sonde::enrich::DEFAULT_PROCESS_CAPACITY,
        );
        match metadata {
            None => resources,
            Some(metadata) => resources.with_kubernetes(Kubernetes {
                metadata,
                cluster: ClusterInfo {
                    cluster_name: Some("bench".into()),
                    node_name: Some("node-1".into()),
                },
            }),
        }
    }
}

impl Drop for FakeProc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checks that every process of [`PIDS`] is labelled with its pod.
pub fn check_labelled(resources: &mut ProcessResources) {
    for pid in PIDS {
        let r = resources.get(pid);
        let want = pod(pod_of(pid));
        assert_eq!(
            r.attr("k8s.pod.name"),
            Some(&AttrValue::from(want.name.as_str())),
            "pid {pid}: {r:?}"
        );
        assert_eq!(r.service_name, want.app_name.unwrap_or_default(), "{r:?}");
    }
}
