//! Which container, pod and systemd unit a process runs in, read from the
//! path of its cgroup.
//!
//! Container runtimes name the cgroup of each container after its id, and
//! the kubelet names each pod's cgroup after the pod's UID, so the path
//! alone says both, with no runtime socket to ask. The shapes differ by
//! runtime and by cgroup driver:
//!
//! | driver | container | pod |
//! | --- | --- | --- |
//! | systemd | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, `libpod-<id>.scope` | `kubepods-<qos>-pod<uid with _>.slice` |
//! | cgroupfs | `<id>` under `kubepods/<qos>/pod<uid>`, `docker/`, `k8s.io/`, `libpod_parent/` | `pod<uid>` |
//! | containerd, driver mismatch | `kubepods-<qos>-pod<uid>.slice:cri-containerd:<id>` | in the same name |
//!
//! Ids are 64 lowercase hex digits everywhere. The innermost container in a
//! path wins (a pod inside a kind node, itself a Docker container). Shapes
//! that are not containers (`session-3.scope`, `user.slice`, `init.scope`,
//! a runtime's own `crio-conmon-<id>.scope` monitor) give no id at all:
//! a wrong container id would label a process with another pod.
//!
//! Paths may start with `/..` components when the reader is in a cgroup
//! namespace of its own (an agent in a pod): they are skipped.

use std::collections::HashMap;
use std::os::unix::fs::{DirEntryExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

/// The container runtime a cgroup name points at, as
/// `container.runtime.name` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }
}

/// What a cgroup path says about the processes in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupInfo {
    /// The innermost container's id (64 hex digits).
    pub container_id: Option<String>,
    /// Its runtime, where the path names it.
    pub runtime: Option<Runtime>,
    /// The Kubernetes pod's UID, with dashes (`8-4-4-4-12` hex digits).
    pub pod_uid: Option<String>,
    /// The systemd service the process belongs to (`nginx.service`), when
    /// it is in no container.
    pub systemd_unit: Option<String>,
}

impl CgroupInfo {
    pub fn is_empty(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none() && self.systemd_unit.is_none()
    }
}

/// Parses one cgroup path (the part after the second `:` of a
/// `/proc/PID/cgroup` line).
pub fn parse_path(path: &str) -> CgroupInfo {
    let mut info = CgroupInfo::default();
    let mut in_kubepods = false;
    let mut parent = "";
    for part in path.split('/') {
        if part.is_empty() || part == ".." || part == "." {
            continue;
        }
        if part.contains("kubepods") {
            in_kubepods = true;
        }
        if in_kubepods && let Some(uid) = pod_uid(part) {
            info.pod_uid = Some(uid);
            // A pod's slice holds containers only: a container id seen
            // further out belongs to the node (a kind node, say).
            info.container_id = None;
            info.runtime = None;
        }
        if let Some((id, runtime)) = container(part, parent, in_kubepods) {
            info.container_id = Some(id.to_owned());
            info.runtime = runtime;
            info.systemd_unit = None;
        } else if let Some(unit) = service_unit(part) {
            info.systemd_unit = Some(unit.to_owned());
        }
        parent = part;
    }
    if info.container_id.is_some() || info.pod_uid.is_some() {
        info.systemd_unit = None;
    }
    info
}

/// Parses the whole of `/proc/PID/cgroup`. A container or pod named by any
/// hierarchy counts (on a hybrid host, runtimes may leave the unified one at
/// `/`), the unified hierarchy (`0::`) first; a systemd unit is taken from
/// the unified hierarchy, else from the `name=systemd` one.
pub fn parse_proc_cgroup(text: &str) -> CgroupInfo {
    let mut unified = None;
    let mut systemd = None;
    let mut others = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            unified = Some(path);
        } else if controllers == "name=systemd" {
            systemd = Some(path);
        } else {
            others.push(path);
        }
    }
    let candidates = unified.into_iter().chain(systemd).chain(others);
    let mut unit = None;
    for path in candidates {
        let info = parse_path(path);
        if info.container_id.is_some() || info.pod_uid.is_some() {
            return info;
        }
        if unit.is_none() && info.systemd_unit.is_some() {
            unit = Some(info);
        }
    }
    unit.unwrap_or_default()
}

/// The unified hierarchy's path in `/proc/PID/cgroup`, if there is one.
pub fn unified_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Cgroup ids (as the kernel reports them with each process record) mapped
/// to what their paths say, for processes that are gone before their
/// `/proc/PID/cgroup` is read.
///
/// In the unified hierarchy a cgroup's id is its directory's inode number.
/// Ids are learnt from every process read, and an unknown one is looked up
/// by a bounded walk of the hierarchy.
pub struct CgroupIds {
    /// Where the unified hierarchy is mounted (`/sys/fs/cgroup` or, on a
    /// hybrid host, `/sys/fs/cgroup/unified`).
    root: Option<PathBuf>,
    known: HashMap<u64, CgroupInfo>,
}

/// Ids remembered at most; past it the map starts again.
const MAX_KNOWN_IDS: usize = 8192;
/// Directories a walk looks at at most, and how deep it goes.
const MAX_WALK_DIRS: usize = 20_000;
const MAX_WALK_DEPTH: usize = 12;

impl CgroupIds {
    /// Finds the unified hierarchy in this process's mount table.
    pub fn detect() -> Self {
        let root = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| unified_mount(&text));
        CgroupIds::at(root)
    }

    pub fn at(root: Option<PathBuf>) -> Self {
        CgroupIds {
            root,
            known: HashMap::new(),
        }
    }

    /// Remembers the id of the cgroup in `proc_cgroup` (a process's
    /// `/proc/PID/cgroup`), which `info` describes.
    pub fn learn(&mut self, proc_cgroup: &str, info: &CgroupInfo) {
        let (Some(root), Some(path)) = (&self.root, unified_path(proc_cgroup)) else {
            return;
        };
        if info.is_empty() {
            return;
        }
        if let Ok(meta) = std::fs::metadata(root.join(relative(path))) {
            if self.known.len() >= MAX_KNOWN_IDS {
                self.known.clear();
            }
            self.known.insert(meta.ino(), info.clone());
        }
    }

    /// What cgroup `id` says (nothing, when it cannot be found). An id is
    /// walked for once: what the walk found, or that it found nothing, is
    /// remembered, so processes of the root cgroup or of a cgroup gone
    /// since do not walk the hierarchy again.
    pub fn info(&mut self, id: u64) -> CgroupInfo {
        let Some(root) = self.root.as_ref().filter(|_| id != 0) else {
            return CgroupInfo::default();
        };
        if let Some(info) = self.known.get(&id) {
            return info.clone();
        }
        let info = find_inode(root, id)
            .map(|path| parse_path(&path))
            .unwrap_or_default();
        if self.known.len() >= MAX_KNOWN_IDS {
            self.known.clear();
        }
        self.known.insert(id, info.clone());
        info
    }
}

/// A path from `/proc/PID/cgroup` made relative, its leading `/..`
/// components (seen from inside a cgroup namespace) dropped.
fn relative(path: &str) -> PathBuf {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".." && *p != ".")
        .collect()
}

/// The mount point of the cgroup2 filesystem in a `mountinfo` table.
pub fn unified_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        let mount_point = before.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// The path (relative to `root`, with a leading `/`) of the directory with
/// inode `id`, by a breadth-first walk, bounded.
fn find_inode(root: &Path, id: u64) -> Option<String> {
    let mut queue = std::collections::VecDeque::from([(root.to_path_buf(), 0usize)]);
    let mut seen = 0;
    while let Some((dir, depth)) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !kind.is_dir() {
                continue;
            }
            seen += 1;
            if seen > MAX_WALK_DIRS {
                return None;
            }
            let path = entry.path();
            if entry.ino() == id {
                let rel = path.strip_prefix(root).ok()?;
                return Some(format!("/{}", rel.to_string_lossy()));
            }
            if depth + 1 < MAX_WALK_DEPTH {
                queue.push_back((path, depth + 1));
            }
        }
    }
    None
}

/// A container id in one path component, and the runtime the name shows.
fn container<'a>(
    part: &'a str,
    parent: &str,
    in_kubepods: bool,
) -> Option<(&'a str, Option<Runtime>)> {
    // containerd given a systemd-style parent while using cgroupfs:
    // `<pod slice>:cri-containerd:<id>`.
    if let Some((_, rest)) = part.split_once(':') {
        let (prefix, id) = rest.split_once(':')?;
        let runtime = match prefix {
            "cri-containerd" => Runtime::Containerd,
            "crio" => Runtime::CriO,
            "docker" => Runtime::Docker,
            _ => return None,
        };
        return is_id(id).then_some((id, Some(runtime)));
    }
    if let Some(name) = part.strip_suffix(".scope") {
        const PREFIXES: &[(&str, Runtime)] = &[
            ("cri-containerd-", Runtime::Containerd),
            ("crio-", Runtime::CriO),
            ("docker-", Runtime::Docker),
            ("libpod-", Runtime::Podman),
        ];
        return PREFIXES.iter().find_map(|&(prefix, runtime)| {
            // `crio-conmon-<id>` and `libpod-conmon-<id>` are the runtime's
            // monitor process, not the container: the id is not 64 hex
            // digits after the prefix, so they fail here.
            let id = name.strip_prefix(prefix)?;
            is_id(id).then_some((id, Some(runtime)))
        });
    }
    if let Some(id) = part.strip_prefix("libpod-")
        && is_id(id)
    {
        return Some((id, Some(Runtime::Podman)));
    }
    if !is_id(part) {
        return None;
    }
    let runtime = match parent {
        "docker" => Some(Runtime::Docker),
        "k8s.io" => Some(Runtime::Containerd),
        "libpod_parent" => Some(Runtime::Podman),
        _ if in_kubepods => None,
        // A bare id elsewhere could be anything a program named with a
        // hash: only the parents above are known to hold containers.
        _ => return None,
    };
    Some((part, runtime))
}

/// The pod UID a kubelet cgroup name carries: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid with _>.slice` (systemd), possibly followed by
/// `:<runtime>:<id>`.
fn pod_uid(part: &str) -> Option<String> {
    let name = part.split(':').next().unwrap_or(part);
    let name = name.strip_suffix(".slice").unwrap_or(name);
    let at = name.rfind("pod")?;
    let before = &name[..at];
    if !(before.is_empty() || before.ends_with('-')) {
        return None;
    }
    let uid = name[at + 3..].replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// A systemd service name (`nginx.service`), but not a user's service
/// manager (`user@1000.service`), which holds that user's whole session.
fn service_unit(part: &str) -> Option<&str> {
    let stem = part.strip_suffix(".service")?;
    (!stem.is_empty() && !stem.starts_with("user@")).then_some(part)
}

fn is_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A UID as Kubernetes writes it: 8-4-4-4-12 hex digits.
fn is_uid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f2b9c0d1e3a5b7c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "3d1e6b5a-7c2f-4e8d-9a0b-1c2d3e4f5a6b";

    fn uid_(u: &str) -> String {
        u.replace('-', "_")
    }

    struct Case {
        path: String,
        container: Option<&'static str>,
        runtime: Option<Runtime>,
        pod: Option<&'static str>,
        unit: Option<&'static str>,
    }

    fn case(path: String) -> Case {
        Case {
            path,
            container: None,
            runtime: None,
            pod: None,
            unit: None,
        }
    }

    impl Case {
        fn container(mut self, id: &'static str, runtime: Option<Runtime>) -> Self {
            self.container = Some(id);
            self.runtime = runtime;
            self
        }
        fn pod(mut self, uid: &'static str) -> Self {
            self.pod = Some(uid);
            self
        }
        fn unit(mut self, unit: &'static str) -> Self {
            self.unit = Some(unit);
            self
        }
    }

    fn cases() -> Vec<Case> {
        use Runtime::*;
        let u = uid_(UID);
        vec![
            // containerd, systemd driver, cgroup v2 (most managed clusters).
            case(format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
            ))
            .container(ID, Some(Containerd))
            .pod(UID),
            // Guaranteed QoS: no QoS slice.
            case(format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"))
                .container(ID, Some(Containerd))
                .pod(UID),
            case(format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope"
            ))
            .container(ID, Some(CriO))
            .pod(UID),
            // crun under CRI-O puts the process one level deeper.
            case(format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope/container"
            ))
            .container(ID, Some(CriO))
            .pod(UID),
            // CRI-O's monitor: in the pod, but no container of its own.
            case(format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{ID}.scope"
            ))
            .pod(UID),
            // The pod's slice itself (a process before its container is set up).
            case(format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"))
                .pod(UID),
            // cgroupfs driver (cgroup v1 and v2).
            case(format!("/kubepods/burstable/pod{UID}/{ID}"))
                .container(ID, None)
                .pod(UID),
            case(format!("/kubepods/pod{UID}/{ID}")).container(ID, None).pod(UID),
            case(format!("/kubepods/besteffort/pod{UID}")).pod(UID),
            // containerd given a systemd parent while on cgroupfs.
            case(format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice:cri-containerd:{ID}"
            ))
            .container(ID, Some(Containerd))
            .pod(UID),
            // A kubelet under its own slice (kind, some distributions).
            case(format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
            ))
            .container(ID, Some(Containerd))
            .pod(UID),
            // A pod in a kind node, the node being a Docker container: the
            // pod's container, not the node's.
            case(format!(
                "/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{u}.slice/cri-containerd-{ID}.scope"
            ))
            .container(ID, Some(Containerd))
            .pod(UID),
            case(format!("/docker/{ID2}/kubepods/burstable/pod{UID}/{ID}"))
                .container(ID, None)
                .pod(UID),
            // The kind node's own processes: the node's container.
            case(format!("/system.slice/docker-{ID2}.scope/init.scope"))
                .container(ID2, Some(Docker)),
            // Docker and Podman outside Kubernetes.
            case(format!("/system.slice/docker-{ID}.scope")).container(ID, Some(Docker)),
            case(format!("/docker/{ID}")).container(ID, Some(Docker)),
            case(format!("/machine.slice/libpod-{ID}.scope")).container(ID, Some(Podman)),
            case(format!("/machine.slice/libpod-{ID}.scope/container"))
                .container(ID, Some(Podman)),
            case(format!("/libpod_parent/libpod-{ID}")).container(ID, Some(Podman)),
            case(format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            ))
            .container(ID, Some(Podman)),
            case(format!("/machine.slice/libpod-conmon-{ID}.scope")),
            // containerd outside Kubernetes (nerdctl, ctr).
            case(format!("/k8s.io/{ID}")).container(ID, Some(Containerd)),
            case(format!("/default/{ID}")),
            // The reader in a cgroup namespace of its own.
            case(format!(
                "/../../kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
            ))
            .container(ID, Some(Containerd))
            .pod(UID),
            // Not containers.
            case("/".into()),
            case(String::new()),
            case("/init.scope".into()),
            case("/user.slice".into()),
            case("/user.slice/user-1000.slice/session-3.scope".into()),
            case("/user.slice/user-1000.slice/user@1000.service/init.scope".into()),
            case("/system.slice/nginx.service".into()).unit("nginx.service"),
            case("/system.slice/containerd.service".into()).unit("containerd.service"),
            case("/system.slice/foo.service/worker".into()).unit("foo.service"),
            case(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/myapp.service".into(),
            )
            .unit("myapp.service"),
            // Near misses.
            case(format!("/system.slice/docker-{}.scope", &ID[..63])),
            case(format!("/system.slice/docker-{}.scope", ID.to_uppercase())),
            case(format!("/system.slice/docker-{ID}0.scope")),
            case(format!("/system.slice/cri-containerd-{ID}.mount")),
            case(format!("/kubepods/burstable/pod{}/{ID}", &UID[1..])).container(ID, None),
            case(format!("/tmp/pod{UID}")),
            case(format!("/build/{ID}")),
            case("/process_api/be6efef31b3e7e11fd35f1770cc9e863".into()),
        ]
    }

    #[test]
    fn cgroup_paths() {
        for c in cases() {
            let got = parse_path(&c.path);
            let want = CgroupInfo {
                container_id: c.container.map(str::to_owned),
                runtime: c.runtime,
                pod_uid: c.pod.map(str::to_owned),
                systemd_unit: c.unit.map(str::to_owned),
            };
            assert_eq!(got, want, "{}", c.path);
        }
    }

    #[test]
    fn cgroup_ids_are_walked_for_once() {
        use std::os::unix::fs::MetadataExt as _;
        let root = std::env::temp_dir().join(format!("sonde-cgroup-ids-{}", std::process::id()));
        let dir = root.join(format!("system.slice/docker-{ID}.scope"));
        std::fs::create_dir_all(&dir).unwrap();
        let id = std::fs::metadata(&dir).unwrap().ino();
        let mut ids = CgroupIds::at(Some(root.clone()));
        assert_eq!(ids.info(id).container_id.as_deref(), Some(ID));
        // Found or not, an id is remembered: no second walk.
        let missing = id + 1_000_000;
        assert!(ids.info(missing).is_empty());
        assert_eq!(ids.known.len(), 2);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(ids.info(id).container_id.as_deref(), Some(ID));
        assert!(ids.info(0).is_empty());
        assert!(CgroupIds::at(None).info(id).is_empty());
    }

    #[test]
    fn proc_cgroup_files() {
        let u = uid_(UID);
        // Hybrid host: the unified hierarchy left at `/`, v1 ones named.
        let hybrid = format!(
            "12:memory:/kubepods/burstable/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n0::/\n"
        );
        let info = parse_proc_cgroup(&hybrid);
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
        // cgroup v2 only.
        let v2 = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(parse_proc_cgroup(&v2).container_id.as_deref(), Some(ID));
        assert_eq!(unified_path(&v2).map(str::len), Some(v2.len() - 4));
        // A service on a hybrid host.
        let service = "4:memory:/system.slice/redis-server.service\n\
                       1:name=systemd:/system.slice/redis-server.service\n0::/system.slice/redis-server.service\n";
        let info = parse_proc_cgroup(service);
        assert_eq!(info.systemd_unit.as_deref(), Some("redis-server.service"));
        assert_eq!(info.container_id, None);
        // Garbage is nothing.
        assert!(parse_proc_cgroup("no colons\n::\n7:\n").is_empty());
        assert!(parse_proc_cgroup("").is_empty());
    }
}
