//! The names Docker and Podman give their containers, read from the files
//! each runtime keeps on disk (readable by root): no socket and no API
//! call that could stall the pipeline, one file read per container.
//!
//! | runtime | file | what is used |
//! | --- | --- | --- |
//! | Docker | `<root>/containers/<id>/config.v2.json` | `Name` (without its leading `/`), the `com.docker.compose.service` label of `Config.Labels` |
//! | Podman (as root) | `<root>/<driver>-containers/containers.json` | the first of the container's `names` |
//!
//! Podman keeps labels in its own database (BoltDB or SQLite), not in a
//! file this reads, so a Podman container gives its name only. Rootless
//! Podman keeps each user's containers under that user's home: not looked
//! at. Containers in a Kubernetes pod are named by the pod's metadata
//! instead (`k8s.container.name`).

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::cgroup::{CgroupInfo, Runtime};

/// Where Docker keeps its containers unless `data-root` says otherwise.
pub const DEFAULT_DOCKER_ROOT: &str = "/var/lib/docker";
/// Where rootful Podman keeps its containers (`graphroot` in
/// `storage.conf`).
pub const DEFAULT_PODMAN_ROOT: &str = "/var/lib/containers/storage";

/// Most bytes read from one `config.v2.json` (a few KiB, more with many
/// mounts or a long environment).
const MAX_DOCKER_CONFIG_BYTES: u64 = 4 << 20;
/// Most bytes read from Podman's `containers.json` (some 600 bytes per
/// container on the host).
const MAX_PODMAN_INDEX_BYTES: u64 = 16 << 20;
/// Storage drivers' folders looked at in the Podman root, at most.
const MAX_PODMAN_DRIVERS: usize = 16;
/// Containers remembered at most; past it the cache starts again.
const MAX_CACHED: usize = 1024;

/// Docker Compose's label naming the service a container runs.
const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";

/// What a container's runtime says of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMeta {
    /// `container.name`.
    pub name: String,
    /// The Docker Compose service the container is a replica of.
    pub compose_service: Option<String>,
}

impl ContainerMeta {
    /// The `service.name` the container suggests. A Compose service comes
    /// before the container's name: Compose names its containers
    /// `<project>-<service>-<n>`, which changes with each replica and each
    /// project, while the service is what they all serve.
    pub fn service_name(&self) -> &str {
        self.compose_service.as_deref().unwrap_or(&self.name)
    }
}

/// The runtimes' folders, and what was found there per container id.
#[derive(Debug)]
pub struct ContainerStores {
    docker_root: PathBuf,
    podman_root: PathBuf,
    /// Unreadable metadata is remembered too, so that each new process of
    /// such a container does not try the files again.
    cache: HashMap<(Runtime, String), Option<Arc<ContainerMeta>>>,
}

impl Default for ContainerStores {
    fn default() -> Self {
        ContainerStores::new(DEFAULT_DOCKER_ROOT, DEFAULT_PODMAN_ROOT)
    }
}

impl ContainerStores {
    /// Stores at other places: a runtime with another root, or an agent in
    /// a container that sees the host's folders under a prefix.
    pub fn new(docker_root: impl Into<PathBuf>, podman_root: impl Into<PathBuf>) -> Self {
        ContainerStores {
            docker_root: docker_root.into(),
            podman_root: podman_root.into(),
            cache: HashMap::new(),
        }
    }

    /// What the runtime says of the Docker or Podman container `cgroup`
    /// names, outside Kubernetes. `None` for anything else, and when the
    /// runtime's files cannot be read.
    pub fn lookup(&mut self, cgroup: &CgroupInfo) -> Option<Arc<ContainerMeta>> {
        if cgroup.pod_uid.is_some() {
            return None;
        }
        let id = cgroup.container_id.as_deref().filter(|id| is_id(id))?;
        let runtime = cgroup.runtime?;
        let key = (runtime, id.to_owned());
        if let Some(found) = self.cache.get(&key) {
            return found.clone();
        }
        let found = match runtime {
            Runtime::Docker => read_docker(&self.docker_root, id),
            Runtime::Podman => read_podman(&self.podman_root, id),
            Runtime::Containerd | Runtime::CriO => return None,
        }
        .map(Arc::new);
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(key, found.clone());
        found
    }
}

fn read_docker(root: &Path, id: &str) -> Option<ContainerMeta> {
    let path = root.join("containers").join(id).join("config.v2.json");
    docker_meta(&read_bounded(&path, MAX_DOCKER_CONFIG_BYTES)?)
}

fn read_podman(root: &Path, id: &str) -> Option<ContainerMeta> {
    // `overlay-containers` with the usual driver, `vfs-containers`, ...
    let mut indexes: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with("-containers"))
        .take(MAX_PODMAN_DRIVERS)
        .map(|e| e.path().join("containers.json"))
        .collect();
    indexes.sort();
    indexes
        .iter()
        .filter_map(|path| read_bounded(path, MAX_PODMAN_INDEX_BYTES))
        .find_map(|bytes| podman_meta(&bytes, id))
}

/// The file at `path`, if it is no longer than `max` bytes.
fn read_bounded(path: &Path, max: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(max + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() as u64 <= max).then_some(bytes)
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name", default)]
    name: Option<String>,
    #[serde(rename = "Config", default)]
    config: Option<DockerContainerConfig>,
}

#[derive(Deserialize)]
struct DockerContainerConfig {
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

/// The name and Compose service in a Docker `config.v2.json`. Docker names
/// every container: a file without a name is not one of its.
pub fn docker_meta(config_v2: &[u8]) -> Option<ContainerMeta> {
    let config: DockerConfig = serde_json::from_slice(config_v2).ok()?;
    let name = config.name.as_deref()?;
    let name = non_empty(name.strip_prefix('/').unwrap_or(name))?;
    let compose_service = config
        .config
        .and_then(|c| c.labels)
        .and_then(|labels| labels.get(COMPOSE_SERVICE_LABEL).and_then(|s| non_empty(s)));
    Some(ContainerMeta {
        name,
        compose_service,
    })
}

#[derive(Deserialize)]
struct PodmanEntry {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// The name of container `id` in a Podman (containers/storage)
/// `containers.json`.
pub fn podman_meta(containers_json: &[u8], id: &str) -> Option<ContainerMeta> {
    let entries: Vec<PodmanEntry> = serde_json::from_slice(containers_json).ok()?;
    let entry = entries.into_iter().find(|e| e.id == id)?;
    Some(ContainerMeta {
        name: non_empty(entry.names.first()?)?,
        compose_service: None,
    })
}

fn non_empty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// 64 lowercase hex digits, as every runtime writes ids: nothing else is
/// ever joined to a path.
fn is_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{HostInfo, ProcessResources, Resource};
    use crate::span::model::AttrValue;

    /// Written by dockerd 20.10 for `docker run --name shop-web-1 --label
    /// com.docker.compose.service=web --label com.docker.compose.project=shop
    /// -e SECRET_TOKEN=...`.
    const DOCKER_CONFIG: &[u8] = include_bytes!("fixtures/docker-config.v2.json");
    const DOCKER_ID: &str = "d3ec8466e0b226ff9ef1b0433eec9d58c7ed932b9fa1a6ad65ac8853b0f8ad63";
    /// Written by Podman 4.3 (rootful, overlay driver) for two containers.
    const PODMAN_INDEX: &[u8] = include_bytes!("fixtures/podman-containers.json");
    const PODMAN_ID: &str = "5ce6005243e781c8a2449e01cf843911d4b36131805b2c413dbf9226a70aca4c";
    const OTHER_PODMAN_ID: &str =
        "bca0e0431cea9a8fc6d54dce16e8063dd73e3b85c724f3fff1fd71479f485d18";

    fn meta(name: &str, service: Option<&str>) -> ContainerMeta {
        ContainerMeta {
            name: name.to_owned(),
            compose_service: service.map(str::to_owned),
        }
    }

    /// The Docker fixture with `edit` applied to its JSON.
    fn docker_edited(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value: serde_json::Value = serde_json::from_slice(DOCKER_CONFIG).unwrap();
        edit(&mut value);
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn docker_config_files() {
        let found = docker_meta(DOCKER_CONFIG).unwrap();
        assert_eq!(found, meta("shop-web-1", Some("web")));
        assert_eq!(found.service_name(), "web");

        let no_labels = docker_edited(|v| v["Config"]["Labels"] = serde_json::Value::Null);
        let found = docker_meta(&no_labels).unwrap();
        assert_eq!(found, meta("shop-web-1", None));
        assert_eq!(found.service_name(), "shop-web-1");
        let no_config = docker_edited(|v| {
            v.as_object_mut().unwrap().remove("Config");
        });
        assert_eq!(docker_meta(&no_config), Some(meta("shop-web-1", None)));
        let blank_service = docker_edited(|v| {
            v["Config"]["Labels"]["com.docker.compose.service"] = " ".into();
        });
        assert_eq!(docker_meta(&blank_service), Some(meta("shop-web-1", None)));
        let unnamed = docker_edited(|v| v["Name"] = "/".into());
        assert_eq!(docker_meta(&unnamed), None);
        // A label that is not a string: the file is not what Docker writes.
        let odd = docker_edited(|v| v["Config"]["Labels"]["x"] = 1.into());
        assert_eq!(docker_meta(&odd), None);
        for garbage in [&b""[..], b"null", b"[]", b"{\"Name\": 7}", b"\xff\xfe"] {
            assert_eq!(docker_meta(garbage), None);
        }
        // Cut anywhere (a file being rewritten): never a guess.
        let text = DOCKER_CONFIG.trim_ascii_end();
        for end in 0..text.len() {
            assert_eq!(docker_meta(&text[..end]), None, "cut at {end}");
        }
    }

    #[test]
    fn podman_index_files() {
        assert_eq!(
            podman_meta(PODMAN_INDEX, PODMAN_ID),
            Some(meta("cache-redis", None))
        );
        assert_eq!(
            podman_meta(PODMAN_INDEX, OTHER_PODMAN_ID),
            Some(meta("sonde-probe", None))
        );
        assert_eq!(podman_meta(PODMAN_INDEX, DOCKER_ID), None);
        let unnamed = format!(r#"[{{"id":"{PODMAN_ID}"}}]"#);
        assert_eq!(podman_meta(unnamed.as_bytes(), PODMAN_ID), None);
        for garbage in [&b""[..], b"{}", b"[{}]", b"[1]", b"\xff"] {
            assert_eq!(podman_meta(garbage, PODMAN_ID), None);
        }
        let text = PODMAN_INDEX.trim_ascii_end();
        for end in 0..text.len() {
            assert_eq!(podman_meta(&text[..end], PODMAN_ID), None, "cut at {end}");
        }
    }

    /// Runtimes' folders and a `/proc`, laid out in a throwaway directory.
    struct FakeHost(PathBuf);

    impl FakeHost {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("sonde-containers-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let docker = dir.join("docker/containers").join(DOCKER_ID);
            std::fs::create_dir_all(&docker).unwrap();
            std::fs::write(docker.join("config.v2.json"), DOCKER_CONFIG).unwrap();
            let podman = dir.join("podman/overlay-containers");
            std::fs::create_dir_all(&podman).unwrap();
            std::fs::write(podman.join("containers.json"), PODMAN_INDEX).unwrap();
            FakeHost(dir)
        }

        fn stores(&self) -> ContainerStores {
            ContainerStores::new(self.0.join("docker"), self.0.join("podman"))
        }

        fn process(&self, pid: u32, name: &str, cgroup: &str, environ: &[u8]) {
            let dir = self.0.join("proc").join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let stat = crate::enrich::proc::fake_stat_line(pid, name, 100);
            std::fs::write(dir.join("stat"), stat).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
            std::fs::write(dir.join("environ"), environ).unwrap();
        }
    }

    impl Drop for FakeHost {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn cgroup(id: &str, runtime: Runtime) -> CgroupInfo {
        CgroupInfo {
            container_id: Some(id.into()),
            runtime: Some(runtime),
            ..CgroupInfo::default()
        }
    }

    #[test]
    fn lookups() {
        let host = FakeHost::new("lookup");
        let mut stores = host.stores();
        let docker = stores.lookup(&cgroup(DOCKER_ID, Runtime::Docker)).unwrap();
        assert_eq!(*docker, meta("shop-web-1", Some("web")));
        let podman = stores.lookup(&cgroup(PODMAN_ID, Runtime::Podman)).unwrap();
        assert_eq!(podman.name, "cache-redis");
        // The runtime the cgroup names decides where to look.
        assert_eq!(stores.lookup(&cgroup(DOCKER_ID, Runtime::Podman)), None);
        assert_eq!(stores.lookup(&cgroup(DOCKER_ID, Runtime::Containerd)), None);
        // In a pod, the pod's metadata names the container.
        let mut in_pod = cgroup(DOCKER_ID, Runtime::Docker);
        in_pod.pod_uid = Some("3d1e6b5a-7c2f-4e8d-9a0b-1c2d3e4f5a6b".into());
        assert_eq!(stores.lookup(&in_pod), None);
        // Nothing that is not an id is joined to a path.
        assert_eq!(stores.lookup(&cgroup("../../etc", Runtime::Docker)), None);
        assert_eq!(stores.lookup(&CgroupInfo::default()), None);

        // Found once per container: a file changed or gone later is not
        // read again, found or not.
        std::fs::remove_dir_all(host.0.join("docker")).unwrap();
        let again = stores.lookup(&cgroup(DOCKER_ID, Runtime::Docker)).unwrap();
        assert!(Arc::ptr_eq(&docker, &again));
        let mut fresh = host.stores();
        assert_eq!(fresh.lookup(&cgroup(DOCKER_ID, Runtime::Docker)), None);
        std::fs::write(
            host.0.join("podman/overlay-containers/containers.json"),
            b"[]",
        )
        .unwrap();
        assert_eq!(fresh.lookup(&cgroup(PODMAN_ID, Runtime::Podman)), None);
        std::fs::write(
            host.0.join("podman/overlay-containers/containers.json"),
            PODMAN_INDEX,
        )
        .unwrap();
        assert_eq!(fresh.lookup(&cgroup(PODMAN_ID, Runtime::Podman)), None);
        // Another storage driver's folder is found too.
        std::fs::rename(
            host.0.join("podman/overlay-containers"),
            host.0.join("podman/vfs-containers"),
        )
        .unwrap();
        assert!(
            host.stores()
                .lookup(&cgroup(PODMAN_ID, Runtime::Podman))
                .is_some()
        );
    }

    #[test]
    fn bounded_reads() {
        let host = FakeHost::new("bound");
        let path = host.0.join("ten");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_bounded(&path, 10).as_deref(), Some(&b"0123456789"[..]));
        assert_eq!(read_bounded(&path, 9), None);
        assert_eq!(read_bounded(&host.0.join("missing"), 10), None);
    }

    fn str_attr<'a>(r: &'a Resource, key: &str) -> Option<&'a str> {
        match r.attr(key)? {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    #[test]
    fn resources_of_container_processes() {
        let host = FakeHost::new("resource");
        let info = HostInfo {
            host_name: "node-1".into(),
            host_id: None,
        };
        let mut cache = ProcessResources::with_proc_root(info, host.0.join("proc"), 16)
            .with_container_stores(host.stores());
        let docker_cgroup = format!("0::/system.slice/docker-{DOCKER_ID}.scope\n");
        let podman_cgroup = format!("0::/libpod_parent/libpod-{PODMAN_ID}\n");
        host.process(10, "nginx", &docker_cgroup, b"");
        host.process(11, "redis-server", &podman_cgroup, b"");
        host.process(12, "nginx", &docker_cgroup, b"OTEL_SERVICE_NAME=edge\0");
        host.process(13, "nginx", "0::/system.slice/nginx.service\n", b"");

        // A Compose service names the service; the container keeps its name.
        let web = cache.get(10);
        assert_eq!(web.service_name, "web");
        assert_eq!(str_attr(&web, "container.name"), Some("shop-web-1"));
        assert_eq!(str_attr(&web, "container.id"), Some(DOCKER_ID));
        assert_eq!(str_attr(&web, "container.runtime.name"), Some("docker"));
        assert_eq!(str_attr(&web, "process.executable.name"), Some("nginx"));
        // No Compose labels: the container's name.
        let redis = cache.get(11);
        assert_eq!(redis.service_name, "cache-redis");
        assert_eq!(str_attr(&redis, "container.name"), Some("cache-redis"));
        assert_eq!(str_attr(&redis, "container.runtime.name"), Some("podman"));
        // The process's own setting wins.
        let edge = cache.get(12);
        assert_eq!(edge.service_name, "edge");
        assert_eq!(str_attr(&edge, "container.name"), Some("shop-web-1"));
        // No container: the executable, and no container attributes.
        let plain = cache.get(13);
        assert_eq!(plain.service_name, "nginx");
        assert_eq!(plain.attr("container.name"), None);
        assert_eq!(str_attr(&plain, "systemd.unit.name"), Some("nginx.service"));

        // Unreadable runtime files: the id alone, named by the executable.
        let mut blind = ProcessResources::with_proc_root(
            HostInfo {
                host_name: "node-1".into(),
                host_id: None,
            },
            host.0.join("proc"),
            16,
        )
        .with_container_stores(ContainerStores::new(
            host.0.join("nowhere"),
            host.0.join("nowhere"),
        ));
        let unnamed = blind.get(10);
        assert_eq!(unnamed.service_name, "nginx");
        assert_eq!(unnamed.attr("container.name"), None);
        assert_eq!(str_attr(&unnamed, "container.id"), Some(DOCKER_ID));
    }
}
