//! The enrich stage: which process a span came from, as an OpenTelemetry
//! resource.
//!
//! A span only knows the pid (tgid) it was observed in. [`ProcessResources`]
//! turns that pid into a [`Resource`] by reading `/proc/PID` once and caching
//! the result, so the hot path is one hash lookup. The resource says which
//! service the process belongs to (`service.name`), which instance it is, what
//! it runs and on which host; spans with the same resource are exported
//! together.
//!
//! `service.name` is chosen like an OpenTelemetry SDK inside the process would
//! choose it, so that spans from sonde and from an instrumented service line
//! up: `OTEL_SERVICE_NAME` from the process environment, else `service.name`
//! inside its `OTEL_RESOURCE_ATTRIBUTES`, else the executable name.
//!
//! The command line is deliberately not recorded: it often carries passwords
//! and tokens.
//!
//! Parsing (`environ`, the `key=value,...` list) is written as pure
//! functions over bytes so that garbage from `/proc` can be tested without a
//! live process.

pub mod cgroup;
pub mod containers;
pub mod k8s;
pub mod proc;
pub mod select;
pub mod tenant;

use proc::{Identity, read_identity, strip_deleted};
pub use proc::{ProcFacts, environ_var};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::span::model::AttrValue;
use cgroup::CgroupInfo;
use containers::{ContainerMeta, ContainerStores};
use k8s::{Metadata, PodMeta, Snapshot};
use select::{Selection, Subject};
use tenant::{ProcessTenant, ProcessView, Tenants};

/// Processes whose resource is kept at once by [`ProcessResources::new`].
pub const DEFAULT_PROCESS_CAPACITY: usize = 4096;

/// `service.name` when nothing at all is known about the process.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// `process.executable.name` when the process could not be inspected.
pub const UNKNOWN_EXECUTABLE: &str = "unknown";

/// The resource of one process: what every span from it is labelled with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resource {
    /// The value of the `service.name` attribute, kept apart for quick use
    /// (console output, logs).
    pub service_name: String,
    /// All resource attributes, `service.name` included.
    pub attributes: Vec<(String, AttrValue)>,
    /// The process's tenant by the `tenants` rules (also in `attributes`
    /// under the configured name), and where header rules stop.
    pub tenant: ProcessTenant,
}

impl Resource {
    /// The value of attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// Facts about the host the agent runs on, shared by every resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    /// `host.name`: the kernel host name.
    pub host_name: String,
    /// `host.id`: the machine id, when the host has one.
    pub host_id: Option<String>,
}

impl HostInfo {
    /// Reads the host name from `/proc/sys/kernel/hostname` and the machine id
    /// from `/etc/machine-id` (or `/var/lib/dbus/machine-id`). Never fails:
    /// an unreadable host name becomes `unknown`, a missing machine id `None`.
    pub fn detect() -> Self {
        let host_name = read_trimmed(Path::new("/proc/sys/kernel/hostname"))
            .unwrap_or_else(|| "unknown".to_owned());
        let host_id = read_trimmed(Path::new("/etc/machine-id"))
            .or_else(|| read_trimmed(Path::new("/var/lib/dbus/machine-id")));
        HostInfo { host_name, host_id }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

struct Entry {
    resource: Arc<Resource>,
    identity: Identity,
    process: Process,
    /// The kernel's id of its cgroup; 0 until a process record said it.
    cgroup_id: u64,
    /// Whether the `select` rules trace it.
    traced: bool,
    /// The pod the resource was built with, and the metadata version it
    /// was last checked against.
    pod: Option<Arc<PodMeta>>,
    meta_version: u64,
    /// Position in the LRU order.
    seq: u64,
    /// Check the identity on the next `get` before trusting the entry.
    verify: bool,
    /// The labels of its pod's namespace the resource was built with.
    namespace_labels: Option<Arc<Vec<(String, String)>>>,
    /// The [`ProcessResources::set_tenants`] generation its resource was
    /// built with; an older one is rebuilt on the next hit.
    tenants_generation: u64,
}

/// What the kernel said of a process not cached yet, used when `/proc/PID`
/// is gone by the time it is read.
struct Hint {
    name: String,
    cgroup_id: u64,
}

/// Kubernetes metadata for the resources, when the agent runs in a cluster.
pub struct Kubernetes {
    pub metadata: Arc<Metadata>,
    pub cluster: ClusterInfo,
}

/// What the kernel is to do with the connections a cgroup opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupOrder {
    /// Ship nothing of them: the `select` rules exclude the cgroup.
    Silence(u64),
    /// Trace them again.
    Trace(u64),
}

/// Most cgroups muted at once (the kernel's map holds as many).
pub const MAX_SILENCED_CGROUPS: usize = sonde_common::MAX_SILENCED_CGROUPS as usize;

/// A bounded cache pid → resource.
///
/// A hit costs one hash lookup (and, with Kubernetes metadata, one atomic
/// load to see whether the metadata changed). [`forget`](Self::forget)
/// marks a pid as doubtful (its process may have exited and the pid may
/// come back as another process); the next [`get`](Self::get) then compares
/// the start time and executable in `/proc/PID` with the cached ones and
/// rebuilds the resource only when they changed. When the cache is full the
/// least recently used pid is dropped.
///
/// A process in a pod the metadata does not know yet is labelled with what
/// its cgroup says (`k8s.pod.uid`, `container.id`); once the pod is known
/// its next span gets the pod's labels.
///
/// Each process also has a verdict of the `select` rules. A process found
/// excluded has its cgroup muted in the kernel ([`CgroupOrder`]) and its
/// open connections muted by the pipeline
/// ([`take_newly_excluded`](Self::take_newly_excluded)); muted cgroups are
/// judged again when the metadata changes
/// ([`recheck_silenced`](Self::recheck_silenced)).
pub struct ProcessResources {
    host: HostInfo,
    proc_root: PathBuf,
    capacity: usize,
    entries: HashMap<u32, Entry>,
    /// seq → pid, oldest first.
    order: BTreeMap<u64, u32>,
    next_seq: u64,
    hints: HashMap<u32, Hint>,
    kubernetes: Option<Kubernetes>,
    cgroups: cgroup::CgroupIds,
    selection: Selection,
    /// Cgroups muted in the kernel, with what their verdict is taken on.
    silenced: HashMap<u64, CgroupInfo>,
    /// The metadata version the muted cgroups were last judged against.
    silenced_version: u64,
    orders: Vec<CgroupOrder>,
    newly_excluded: Vec<u32>,
    containers: ContainerStores,
    tenants: Tenants,
    /// Bumped by each [`set_tenants`](Self::set_tenants).
    tenants_generation: u64,
}

impl ProcessResources {
    /// A cache of [`DEFAULT_PROCESS_CAPACITY`] processes read from `/proc`.
    pub fn new(host: HostInfo) -> Self {
        Self::with_proc_root(host, "/proc", DEFAULT_PROCESS_CAPACITY)
    }

    /// A cache of `capacity` processes (at least one) read from `proc_root`,
    /// for hosts where the host's `/proc` is mounted elsewhere (a container
    /// with `/host/proc`) and for tests.
    pub fn with_proc_root(host: HostInfo, proc_root: impl Into<PathBuf>, capacity: usize) -> Self {
        ProcessResources {
            host,
            proc_root: proc_root.into(),
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            hints: HashMap::new(),
            kubernetes: None,
            cgroups: cgroup::CgroupIds::detect(),
            selection: Selection::all(),
            silenced: HashMap::new(),
            silenced_version: u64::MAX,
            orders: Vec::new(),
            newly_excluded: Vec::new(),
            containers: ContainerStores::default(),
            tenants: Tenants::default(),
            tenants_generation: 0,
        }
    }

    /// Reads Docker's and Podman's container names from `stores` instead
    /// of the runtimes' default folders.
    pub fn with_container_stores(mut self, stores: ContainerStores) -> Self {
        self.containers = stores;
        self
    }

    /// Labels resources with the pods in `kubernetes.metadata`.
    pub fn with_kubernetes(mut self, kubernetes: Kubernetes) -> Self {
        self.kubernetes = Some(kubernetes);
        self
    }

    /// Gives each resource its tenant by `tenants`' rules.
    pub fn with_tenants(mut self, tenants: Tenants) -> Self {
        self.tenants = tenants;
        self
    }

    /// The tenant rules resources are built with.
    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    /// Traces only the processes `selection` selects.
    pub fn with_selection(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// Gives resources their tenant by `tenants` from now on (a config
    /// reload). Each cached resource is rebuilt on its next hit rather
    /// than all at once: most processes of a busy node are hit within a
    /// second, and those that are not cost nothing.
    pub fn set_tenants(&mut self, tenants: Tenants) {
        self.tenants = tenants;
        self.tenants_generation += 1;
    }

    /// Traces only what `selection` selects from now on (a config
    /// reload). Every muted cgroup and every cached process is judged
    /// again at once, with what it was last judged on: the newly excluded
    /// are muted like any process found excluded
    /// ([`take_newly_excluded`](Self::take_newly_excluded),
    /// [`take_cgroup_orders`](Self::take_cgroup_orders)), and the cgroups
    /// of the newly included are traced again.
    pub fn set_selection(&mut self, selection: Selection) {
        self.selection = selection;
        // Cgroups first: a cached process then mutes its cgroup again if
        // its own verdict says so.
        self.rejudge_silenced();
        let snapshot = self.kubernetes.as_ref().map(|k| k.metadata.load());
        let changed: Vec<u32> = self
            .entries
            .iter_mut()
            .filter_map(|(&pid, entry)| {
                let traced = decide(
                    &self.selection,
                    &entry.process.cgroup,
                    entry.pod.as_deref(),
                    snapshot.as_deref(),
                );
                (traced != entry.traced).then(|| {
                    entry.traced = traced;
                    pid
                })
            })
            .collect();
        for pid in changed {
            self.judged(pid);
        }
    }

    /// The selection processes are judged by.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// Notes what the kernel saw of `pid` (its `comm` and cgroup), for the
    /// case where the process exits before [`get`](Self::get) reads `/proc`.
    pub fn name_hint(&mut self, pid: u32, name: &[u8], cgroup_id: u64) {
        if let Some(entry) = self.entries.get_mut(&pid)
            && !entry.verify
        {
            if entry.cgroup_id != cgroup_id && cgroup_id != 0 {
                entry.cgroup_id = cgroup_id;
                if !entry.traced {
                    silence(
                        &mut self.silenced,
                        &mut self.orders,
                        cgroup_id,
                        &entry.process.cgroup,
                    );
                }
            }
            return;
        }
        // Hints whose data record was lost are never taken: bound them.
        if self.hints.len() >= self.capacity {
            self.hints.clear();
        }
        let name = String::from_utf8_lossy(name).into_owned();
        self.hints.insert(pid, Hint { name, cgroup_id });
    }

    /// The resource of process `pid`. Never fails: a process that is gone
    /// gets a resource with what is known (its pid, executable `unknown`).
    pub fn get(&mut self, pid: u32) -> Arc<Resource> {
        self.lookup(pid).0
    }

    /// The resource of process `pid` and whether the `select` rules trace it.
    pub fn lookup(&mut self, pid: u32) -> (Arc<Resource>, bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(entry) = self.entries.get_mut(&pid) {
            // One check per `forget`: the pipeline calls it on each new
            // connection, which is where a new process with a reused pid
            // first shows. Checking on every call would cost /proc reads per
            // span for a process that has exited.
            // A process that is gone by now keeps what was read while it ran.
            let trusted = !entry.verify || {
                let now = read_identity(&self.proc_root.join(pid.to_string()));
                entry.verify = false;
                now.start_time.is_none() || entry.identity.same_process(&now)
            };
            if trusted {
                self.order.remove(&entry.seq);
                entry.seq = seq;
                self.order.insert(seq, pid);
                if entry.tenants_generation != self.tenants_generation {
                    entry.tenants_generation = self.tenants_generation;
                    retenant(
                        &self.host,
                        &self.proc_root,
                        &self.tenants,
                        self.kubernetes.is_some(),
                        entry,
                    );
                }
                let mut judged_anew = false;
                if let Some(k8s) = &self.kubernetes {
                    let was_traced = entry.traced;
                    refresh(&self.host, k8s, &self.selection, &self.tenants, entry);
                    judged_anew = was_traced != entry.traced;
                }
                // Taken before `judged` so a hit looks the pid up once.
                let found = (Arc::clone(&entry.resource), entry.traced);
                if judged_anew {
                    self.judged(pid);
                }
                return found;
            }
        }

        let mut facts = ProcFacts::read(&self.proc_root, pid);
        let hint = self.hints.remove(&pid);
        if let Some(hint) = &hint
            && facts.comm.is_none()
            && !hint.name.is_empty()
        {
            facts.comm = Some(hint.name.clone());
        }
        let mut process = Process::from_facts(pid, &facts);
        let cgroup_id = hint.as_ref().map_or(0, |h| h.cgroup_id);
        match (&facts.cgroup, hint) {
            (Some(text), _) => self.cgroups.learn(text, &process.cgroup),
            (None, Some(hint)) => process.cgroup = self.cgroups.info(hint.cgroup_id),
            (None, None) => {}
        }
        process.container = self.containers.lookup(&process.cgroup);
        if let Some(environ) = &facts.environ {
            process.tenant_env = tenant_env(&self.tenants, environ);
        }
        let mut entry = Entry {
            resource: Arc::new(Resource::default()),
            identity: Identity {
                start_time: facts.start_time,
                exe_path: facts.exe_path,
            },
            process,
            cgroup_id,
            traced: true,
            pod: None,
            meta_version: u64::MAX,
            seq,
            verify: false,
            namespace_labels: None,
            tenants_generation: self.tenants_generation,
        };
        match &self.kubernetes {
            Some(k8s) => refresh(&self.host, k8s, &self.selection, &self.tenants, &mut entry),
            None => {
                entry.resource = Arc::new(build(
                    &self.host,
                    &ClusterInfo::default(),
                    &self.tenants,
                    &entry.process,
                    None,
                    None,
                ));
                entry.traced = decide(&self.selection, &entry.process.cgroup, None, None);
            }
        }
        let found = (Arc::clone(&entry.resource), entry.traced);
        if let Some(old) = self.entries.insert(pid, entry) {
            self.order.remove(&old.seq);
        }
        if !found.1 {
            self.judged(pid);
        }
        self.order.insert(seq, pid);
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        found
    }

    /// The verdict on `pid` is new: mute or unmute its cgroup.
    fn judged(&mut self, pid: u32) {
        let Some(entry) = self.entries.get(&pid) else {
            return;
        };
        if entry.traced {
            if self.silenced.remove(&entry.cgroup_id).is_some() {
                self.orders.push(CgroupOrder::Trace(entry.cgroup_id));
            }
            return;
        }
        self.newly_excluded.push(pid);
        if entry.cgroup_id != 0 {
            silence(
                &mut self.silenced,
                &mut self.orders,
                entry.cgroup_id,
                &entry.process.cgroup,
            );
        }
    }

    /// Says that `pid` may have exited (and its pid may be reused). The entry
    /// is kept, but the next [`get`](Self::get) checks it against `/proc`.
    pub fn forget(&mut self, pid: u32) {
        if let Some(entry) = self.entries.get_mut(&pid) {
            entry.verify = true;
        }
    }

    /// What the kernel is to do for cgroups whose verdict changed.
    pub fn take_cgroup_orders(&mut self) -> std::vec::Drain<'_, CgroupOrder> {
        self.orders.drain(..)
    }

    /// Processes found excluded since the last call: their open
    /// connections are to be muted too.
    pub fn take_newly_excluded(&mut self) -> std::vec::Drain<'_, u32> {
        self.newly_excluded.drain(..)
    }

    /// Judges the muted cgroups again if the metadata changed (their
    /// processes send nothing that would make the pipeline ask).
    pub fn recheck_silenced(&mut self) {
        let Some(k8s) = &self.kubernetes else {
            return;
        };
        let version = k8s.metadata.version();
        if version == self.silenced_version || self.silenced.is_empty() {
            return;
        }
        self.silenced_version = version;
        self.rejudge_silenced();
    }

    /// Judges every muted cgroup again; those now traced are unmuted.
    fn rejudge_silenced(&mut self) {
        let snapshot = self.kubernetes.as_ref().map(|k| k.metadata.load());
        let (selection, orders) = (&self.selection, &mut self.orders);
        self.silenced.retain(|&id, info| {
            let pod = snapshot
                .as_ref()
                .zip(info.pod_uid.as_deref())
                .and_then(|(s, uid)| s.pods.get(uid));
            let traced = decide(selection, info, pod.map(|p| &**p), snapshot.as_deref());
            if traced {
                orders.push(CgroupOrder::Trace(id));
            }
            !traced
        });
    }

    /// Cgroups muted in the kernel now.
    pub fn silenced_cgroups(&self) -> usize {
        self.silenced.len()
    }

    /// Processes cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The values of the environment variables `tenants` reads, from a
/// process's `environ`.
fn tenant_env(tenants: &Tenants, environ: &[u8]) -> Vec<(String, String)> {
    tenants
        .env_names()
        .filter_map(|name| {
            let value = environ_var(environ, name)?;
            Some((name.to_owned(), String::from_utf8_lossy(value).into_owned()))
        })
        .collect()
}

/// Brings `entry` to the tenant rules `tenants` (they changed since its
/// resource was built): the variables they read are read again, and the
/// resource rebuilt, at once without Kubernetes and by the next
/// [`refresh`] with it.
fn retenant(
    host: &HostInfo,
    proc_root: &Path,
    tenants: &Tenants,
    kubernetes: bool,
    entry: &mut Entry,
) {
    // A process that is gone keeps the values read while it ran.
    if let Ok(environ) = std::fs::read(
        proc_root
            .join(entry.process.pid.to_string())
            .join("environ"),
    ) {
        entry.process.tenant_env = tenant_env(tenants, &environ);
    }
    if kubernetes {
        // As if never built: `refresh` rebuilds it with the metadata of now.
        entry.meta_version = u64::MAX;
    } else {
        entry.resource = Arc::new(build(
            host,
            &ClusterInfo::default(),
            tenants,
            &entry.process,
            None,
            None,
        ));
    }
}

/// Mutes cgroup `id` in the kernel, remembering what its verdict was taken on.
fn silence(
    silenced: &mut HashMap<u64, CgroupInfo>,
    orders: &mut Vec<CgroupOrder>,
    id: u64,
    info: &CgroupInfo,
) {
    if silenced.contains_key(&id) || silenced.len() >= MAX_SILENCED_CGROUPS {
        return;
    }
    silenced.insert(id, info.clone());
    orders.push(CgroupOrder::Silence(id));
}

/// The `select` verdict on a cgroup: whether its processes are traced.
fn decide(
    selection: &Selection,
    cgroup: &CgroupInfo,
    pod: Option<&PodMeta>,
    snapshot: Option<&Snapshot>,
) -> bool {
    if selection.traces_everything() {
        return true;
    }
    // A pod not known yet is traced until it is (see select.rs).
    if pod.is_none() && cgroup.pod_uid.is_some() && selection.needs_pods() {
        return true;
    }
    let container = pod
        .zip(cgroup.container_id.as_deref())
        .and_then(|(p, id)| p.container_name(id));
    let namespace_labels = pod
        .zip(snapshot)
        .and_then(|(p, s)| s.namespaces.get(&*p.namespace))
        .map(|labels| labels.as_slice());
    selection.traces(&Subject {
        pod,
        namespace_labels,
        container,
        systemd_unit: cgroup.systemd_unit.as_deref(),
    })
}

/// Rebuilds `entry`'s resource if the metadata changed for its pod since
/// it was built (or it was never built), and takes the `select` verdict
/// again.
fn refresh(
    host: &HostInfo,
    k8s: &Kubernetes,
    selection: &Selection,
    tenants: &Tenants,
    entry: &mut Entry,
) {
    let version = k8s.metadata.version();
    if version == entry.meta_version {
        return;
    }
    let first = entry.meta_version == u64::MAX;
    entry.meta_version = version;
    let snapshot = k8s.metadata.load();
    let pod = entry
        .process
        .cgroup
        .pod_uid
        .as_deref()
        .and_then(|uid| snapshot.pods.get(uid).cloned());
    // A process never moves to another pod: one that is no longer known
    // (deleted, its time up) keeps the labels it had.
    let same = match (&pod, &entry.pod) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, _) => true,
        (Some(_), None) => false,
    };
    // A tenant rule may read the namespace's labels, which change apart
    // from the pod.
    let namespace_labels = entry
        .pod
        .as_ref()
        .or(pod.as_ref())
        .and_then(|p| snapshot.namespaces.get(&*p.namespace))
        .cloned();
    let labels_changed = tenants.is_active()
        && match (&namespace_labels, &entry.namespace_labels) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (a, b) => a.is_some() != b.is_some(),
        };
    if !same || first || labels_changed {
        if pod.is_some() {
            entry.pod = pod;
        }
        entry.resource = Arc::new(build(
            host,
            &k8s.cluster,
            tenants,
            &entry.process,
            entry.pod.as_deref(),
            namespace_labels.as_deref().map(Vec::as_slice),
        ));
        entry.namespace_labels = namespace_labels;
    }
    // Namespace labels may have changed with the pod unchanged.
    entry.traced = decide(
        selection,
        &entry.process.cgroup,
        entry.pod.as_deref(),
        Some(&snapshot),
    );
}

/// Longest process name the kernel keeps in `comm`.
const COMM_MAX: usize = 15;

/// What labels use of one process, distilled from its [`ProcFacts`] once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub start_time: Option<u64>,
    /// `process.executable.name`.
    pub exe_name: Option<String>,
    pub exe_path: Option<String>,
    /// `OTEL_SERVICE_NAME` from its environment.
    pub env_service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES` from its environment.
    pub env_attributes: Vec<(String, String)>,
    /// Its container, pod and systemd unit.
    pub cgroup: CgroupInfo,
    /// What Docker or Podman says of its container, outside Kubernetes.
    pub container: Option<Arc<ContainerMeta>>,
    /// Its unified-hierarchy cgroup path (for tenant rules).
    pub cgroup_path: Option<String>,
    /// The environment variables tenant rules read, with their values.
    pub tenant_env: Vec<(String, String)>,
}

impl Process {
    pub fn from_facts(pid: u32, facts: &ProcFacts) -> Self {
        // The process name the kernel shows (`comm`, the Name in
        // /proc/PID/status), as the semantic conventions define
        // process.executable.name: it follows what the program was started
        // as, where the exe link may name a symlink's target (Debian's
        // redis-server is a link to redis-check-rdb). The kernel cuts comm
        // at 15 bytes; when it is such a cut of the exe file name, the full
        // file name is better.
        let exe_file = facts
            .exe_path
            .as_deref()
            .map(executable_name)
            .filter(|n| !n.is_empty());
        let comm = facts
            .comm
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty());
        let exe_name = match (comm, exe_file) {
            (Some(c), Some(f)) if c.len() >= COMM_MAX && f.starts_with(c) => Some(f),
            (Some(c), _) => Some(c),
            (None, f) => f,
        }
        .map(str::to_owned);

        let environ = facts.environ.as_deref().unwrap_or_default();
        let env_text = |name: &str| {
            environ_var(environ, name)
                .map(|v| String::from_utf8_lossy(v).trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // Per the OpenTelemetry resource spec, a list that cannot be decoded
        // is ignored as a whole.
        let env_attributes = env_text("OTEL_RESOURCE_ATTRIBUTES")
            .and_then(|text| parse_key_value_list(&text).ok())
            .unwrap_or_default();
        Process {
            pid,
            start_time: facts.start_time,
            exe_name,
            exe_path: facts.exe_path.clone(),
            env_service_name: env_text("OTEL_SERVICE_NAME"),
            env_attributes,
            cgroup: facts
                .cgroup
                .as_deref()
                .map(cgroup::parse_proc_cgroup)
                .unwrap_or_default(),
            container: None,
            cgroup_path: facts
                .cgroup
                .as_deref()
                .and_then(cgroup::unified_path)
                .map(str::to_owned),
            tenant_env: Vec::new(),
        }
    }

    /// A value of `OTEL_RESOURCE_ATTRIBUTES`: the last one wins.
    fn env_attr(&self, key: &str) -> Option<String> {
        self.env_attributes
            .iter()
            .rev()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.clone())
    }
}

/// What the agent knows of the cluster it runs in, for every resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    /// `k8s.cluster.name`, from the configuration.
    pub cluster_name: Option<String>,
    /// `k8s.node.name`: this node.
    pub node_name: Option<String>,
}

/// Builds the resource of process `pid` from what was read about it.
pub fn build_resource(host: &HostInfo, pid: u32, facts: &ProcFacts) -> Resource {
    compose(
        host,
        &ClusterInfo::default(),
        &Process::from_facts(pid, facts),
        None,
    )
}

/// The `service.name` of a process, by the OpenTelemetry rules in this
/// order: its environment (`OTEL_SERVICE_NAME`, then `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`), its pod's annotation
/// `resource.opentelemetry.io/service.name`, the pod's label
/// `app.kubernetes.io/name`, the workload that owns the pod, the pod's
/// name, the container's name (outside Kubernetes, what
/// [`ContainerMeta::service_name`] says), the executable.
pub fn service_name(process: &Process, pod: Option<&PodMeta>, container: Option<&str>) -> String {
    process
        .env_service_name
        .clone()
        .or_else(|| process.env_attr("service.name"))
        .or_else(|| {
            let pod = pod?;
            pod.declared_service_name()
                .or_else(|| pod.workload().map(|(_, name)| name.as_str()))
                .or(Some(pod.name.as_str()))
                .map(str::to_owned)
        })
        .or_else(|| container.map(str::to_owned))
        .or_else(|| process.exe_name.clone())
        .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned())
}

/// [`compose`], with the process's tenant when tenant rules are written.
fn build(
    host: &HostInfo,
    cluster: &ClusterInfo,
    tenants: &Tenants,
    process: &Process,
    pod: Option<&PodMeta>,
    namespace_labels: Option<&[(String, String)]>,
) -> Resource {
    let mut resource = compose(host, cluster, process, pod);
    if tenants.is_active() {
        let tenant = tenants.of_process(&ProcessView {
            pod,
            namespace_labels,
            env: &process.tenant_env,
            cgroup_path: process.cgroup_path.as_deref(),
            executable: process.exe_name.as_deref(),
        });
        if let Some(id) = &tenant.tenant {
            resource
                .attributes
                .push((tenants.attribute().to_owned(), AttrValue::from(&**id)));
        }
        resource.tenant = tenant;
    }
    resource
}

/// Builds a resource from a process and, when known, its pod.
pub fn compose(
    host: &HostInfo,
    cluster: &ClusterInfo,
    process: &Process,
    pod: Option<&PodMeta>,
) -> Resource {
    let container_id = process.cgroup.container_id.as_deref();
    let container_name = pod
        .zip(container_id)
        .and_then(|(p, id)| p.container_name(id));
    let runtime_container = process.container.as_deref();
    let service_name = service_name(
        process,
        pod,
        container_name.or(runtime_container.map(ContainerMeta::service_name)),
    );
    let pid = process.pid;
    let instance_id =
        process
            .env_attr("service.instance.id")
            .unwrap_or_else(|| match (pod, container_name) {
                (Some(pod), Some(container)) => {
                    format!("{}.{}.{}", pod.namespace, pod.name, container)
                }
                _ => {
                    let host_key = host.host_id.as_deref().unwrap_or(&host.host_name);
                    instance_uuid(host_key, pid, process.start_time.unwrap_or(0))
                }
            });

    let mut attributes: Vec<(String, AttrValue)> = vec![
        ("service.name".into(), service_name.clone().into()),
        ("service.instance.id".into(), instance_id.into()),
    ];
    let mut add = |key: &str, value: &str| attributes.push((key.to_owned(), value.into()));
    if let Some(pod) = pod
        && process.env_attr("service.namespace").is_none()
    {
        add("service.namespace", &pod.namespace);
    }
    if let Some(id) = container_id {
        add("container.id", id);
    }
    if let Some(container) = runtime_container {
        add("container.name", &container.name);
    }
    if let Some(runtime) = process.cgroup.runtime {
        add("container.runtime.name", runtime.name());
    }
    if let Some(unit) = &process.cgroup.systemd_unit {
        add("systemd.unit.name", unit);
    }
    // A pod the cgroup names is in this cluster, on this node, even before
    // the API server has said more of it.
    if pod.is_some() || process.cgroup.pod_uid.is_some() {
        if let Some(cluster) = &cluster.cluster_name {
            add("k8s.cluster.name", cluster);
        }
        if let Some(node) = &cluster.node_name {
            add("k8s.node.name", node);
        }
    }
    if let Some(uid) = &process.cgroup.pod_uid {
        add("k8s.pod.uid", uid);
    }
    if let Some(pod) = pod {
        add("k8s.namespace.name", &pod.namespace);
        add("k8s.pod.name", &pod.name);
        if let Some(name) = container_name {
            add("k8s.container.name", name);
        }
        for (kind, name) in &pod.owners {
            add(kind.attribute(), name);
        }
        for (key, value) in &pod.labels {
            add(&format!("k8s.pod.label.{key}"), value);
        }
        for (key, value) in &pod.annotations {
            add(&format!("k8s.pod.annotation.{key}"), value);
        }
    }
    attributes.push(("process.pid".into(), AttrValue::Int(i64::from(pid))));
    attributes.push((
        "process.executable.name".into(),
        process
            .exe_name
            .clone()
            .unwrap_or_else(|| UNKNOWN_EXECUTABLE.to_owned())
            .into(),
    ));
    if let Some(path) = &process.exe_path {
        attributes.push(("process.executable.path".into(), path.clone().into()));
    }
    attributes.push(("host.name".into(), host.host_name.clone().into()));
    if let Some(id) = &host.host_id {
        attributes.push(("host.id".into(), id.clone().into()));
    }
    attributes.push(("telemetry.distro.name".into(), "sonde".into()));
    attributes.push((
        "telemetry.distro.version".into(),
        env!("CARGO_PKG_VERSION").into(),
    ));

    // The remaining OTEL_RESOURCE_ATTRIBUTES entries (service.version,
    // deployment.environment.name, ...). What sonde observed itself wins
    // over what the environment claims.
    let observed = attributes.len();
    for (key, value) in &process.env_attributes {
        if AGENT_KEYS.contains(&key.as_str()) {
            continue;
        }
        match attributes.iter().position(|(k, _)| k == key) {
            Some(i) if i < observed => {}
            // A later duplicate in the list wins.
            Some(i) => attributes[i].1 = value.clone().into(),
            None => attributes.push((key.clone(), value.clone().into())),
        }
    }

    Resource {
        service_name,
        attributes,
        tenant: ProcessTenant::default(),
    }
}

/// Keys [`build_resource`] sets from its own observations; an
/// `OTEL_RESOURCE_ATTRIBUTES` entry never replaces them (`service.name` and
/// `service.instance.id` from that list are used when choosing the values).
const AGENT_KEYS: &[&str] = &[
    "service.name",
    "service.instance.id",
    "process.pid",
    "process.executable.name",
    "process.executable.path",
    "host.name",
    "host.id",
    "telemetry.distro.name",
    "telemetry.distro.version",
];

/// `service.instance.id`: a UUID (version 8, "custom") derived from the host
/// (machine id, else host name), the pid and the process start time. The
/// same process gets the same id across agent restarts, and a later process
/// that reuses the pid gets another one. The hash is FNV-1a over 128 bits,
/// fixed here so that the id never changes between sonde versions.
pub fn instance_uuid(host_key: &str, pid: u32, start_time: u64) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u128::from(b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    feed(b"sonde.instance\0");
    feed(host_key.as_bytes());
    feed(&[0]);
    feed(&pid.to_le_bytes());
    feed(&start_time.to_le_bytes());
    let mut b = hash.to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x80; // version 8
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 9562 variant
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The file name of an executable path (`/usr/sbin/nginx` → `nginx`).
pub fn executable_name(path: &str) -> &str {
    let path = strip_deleted(path).trim_end_matches('/');
    path.rsplit('/').next().unwrap_or(path)
}

/// Why a `key=value,...` list could not be read. Entries are named by their
/// position, never by their text: header lists carry credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyValueError {
    #[error("entry {0} has no `=` (expected key=value)")]
    MissingEquals(usize),
    #[error("entry {0} has an empty key")]
    EmptyKey(usize),
    #[error("entry {0} has a bad percent escape (expected %XX with two hex digits, giving UTF-8)")]
    BadEscape(usize),
}

/// Parses the `key1=value1,key2=value2` lists of `OTEL_RESOURCE_ATTRIBUTES`
/// and `OTEL_EXPORTER_OTLP_HEADERS`: keys and values are trimmed and
/// percent-decoded, empty entries are skipped. Entries are 1-based in errors.
pub fn parse_key_value_list(text: &str) -> Result<Vec<(String, String)>, KeyValueError> {
    let mut out = Vec::new();
    for (i, entry) in text.split(',').enumerate() {
        let n = i + 1;
        if entry.trim().is_empty() {
            continue;
        }
        let (key, value) = entry
            .split_once('=')
            .ok_or(KeyValueError::MissingEquals(n))?;
        let key = percent_decode(key.trim()).ok_or(KeyValueError::BadEscape(n))?;
        let value = percent_decode(value.trim()).ok_or(KeyValueError::BadEscape(n))?;
        if key.trim().is_empty() {
            return Err(KeyValueError::EmptyKey(n));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Decodes `%XX` escapes. `None` when an escape is malformed or the result
/// is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_digit(*bytes.get(i + 1)?)?;
            let lo = hex_digit(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostInfo {
        HostInfo {
            host_name: "node-1".into(),
            host_id: Some("0123456789abcdef".into()),
        }
    }

    fn facts(exe: Option<&str>, comm: Option<&str>, environ: &[u8]) -> ProcFacts {
        ProcFacts {
            start_time: Some(4242),
            exe_path: exe.map(str::to_owned),
            comm: comm.map(str::to_owned),
            environ: Some(environ.to_vec()),
            cgroup: None,
        }
    }

    fn str_attr<'a>(r: &'a Resource, key: &str) -> Option<&'a str> {
        match r.attr(key)? {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    #[test]
    fn key_value_lists() {
        assert_eq!(
            parse_key_value_list(" service.name = shop , deployment.environment.name=prod,")
                .unwrap(),
            vec![
                ("service.name".into(), "shop".into()),
                ("deployment.environment.name".into(), "prod".into()),
            ]
        );
        assert_eq!(
            parse_key_value_list("a%2Cb=c%3Dd%20e,,k=").unwrap(),
            vec![("a,b".into(), "c=d e".into()), ("k".into(), String::new())]
        );
        assert_eq!(
            parse_key_value_list("k=caf%C3%A9").unwrap(),
            vec![("k".into(), "café".into())]
        );
        assert_eq!(parse_key_value_list("").unwrap(), vec![]);
        assert_eq!(parse_key_value_list(" , ").unwrap(), vec![]);
        assert_eq!(
            parse_key_value_list("a=1,b"),
            Err(KeyValueError::MissingEquals(2))
        );
        assert_eq!(parse_key_value_list("=1"), Err(KeyValueError::EmptyKey(1)));
        assert_eq!(
            parse_key_value_list("a=%zz"),
            Err(KeyValueError::BadEscape(1))
        );
        assert_eq!(
            parse_key_value_list("a=%4"),
            Err(KeyValueError::BadEscape(1))
        );
        assert_eq!(
            parse_key_value_list("a=%"),
            Err(KeyValueError::BadEscape(1))
        );
        assert_eq!(
            parse_key_value_list("a=%ff"),
            Err(KeyValueError::BadEscape(1))
        );
        // Errors never echo the text (it may be a credential).
        let msg = parse_key_value_list("authorization=Bearer%zzsecret")
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("secret"), "{msg}");
    }

    #[test]
    fn executable_names() {
        assert_eq!(executable_name("/usr/sbin/nginx"), "nginx");
        assert_eq!(
            executable_name("/usr/bin/python3.12 (deleted)"),
            "python3.12"
        );
        assert_eq!(executable_name("redis-server"), "redis-server");
        assert_eq!(executable_name(""), "");
        assert_eq!(executable_name("/"), "");
    }

    #[test]
    fn service_name_precedence() {
        let both =
            b"OTEL_RESOURCE_ATTRIBUTES=service.name=from-attrs\0OTEL_SERVICE_NAME=from-env\0";
        let r = build_resource(&host(), 7, &facts(Some("/usr/bin/app"), Some("app"), both));
        assert_eq!(r.service_name, "from-env");
        assert_eq!(str_attr(&r, "service.name"), Some("from-env"));

        let attrs = b"OTEL_RESOURCE_ATTRIBUTES=service.name=from-attrs\0OTEL_SERVICE_NAME=  \0";
        let r = build_resource(&host(), 7, &facts(Some("/usr/bin/app"), Some("app"), attrs));
        assert_eq!(r.service_name, "from-attrs");

        // The name the process runs as wins over a symlink's target.
        let r = build_resource(
            &host(),
            7,
            &facts(Some("/usr/bin/redis-check-rdb"), Some("redis-server"), b""),
        );
        assert_eq!(r.service_name, "redis-server");
        // A comm the kernel cut at 15 bytes gives way to the full file name.
        let r = build_resource(
            &host(),
            7,
            &facts(
                Some("/usr/bin/kube-controller-manager"),
                Some("kube-controller"),
                b"",
            ),
        );
        assert_eq!(r.service_name, "kube-controller-manager");

        let r = build_resource(
            &host(),
            7,
            &facts(Some("/usr/bin/app (deleted)"), None, b""),
        );
        assert_eq!(r.service_name, "app");
        assert_eq!(
            str_attr(&r, "process.executable.path"),
            Some("/usr/bin/app (deleted)")
        );

        let r = build_resource(&host(), 7, &facts(None, Some("worker 3"), b""));
        assert_eq!(r.service_name, "worker 3");
        assert_eq!(str_attr(&r, "process.executable.name"), Some("worker 3"));
        assert_eq!(r.attr("process.executable.path"), None);
    }

    #[test]
    fn resource_attributes() {
        let env = b"OTEL_RESOURCE_ATTRIBUTES=service.version=1.2,deployment.environment.name=prod%2Ceu,process.pid=1,host.name=spoofed,service.version=1.3\0";
        let r = build_resource(&host(), 31337, &facts(Some("/srv/shop"), None, env));
        assert_eq!(r.service_name, "shop");
        assert_eq!(r.attr("process.pid"), Some(&AttrValue::Int(31337)));
        assert_eq!(str_attr(&r, "host.name"), Some("node-1"));
        assert_eq!(str_attr(&r, "host.id"), Some("0123456789abcdef"));
        assert_eq!(str_attr(&r, "service.version"), Some("1.3"));
        assert_eq!(str_attr(&r, "deployment.environment.name"), Some("prod,eu"));
        assert_eq!(str_attr(&r, "telemetry.distro.name"), Some("sonde"));
        assert_eq!(
            str_attr(&r, "telemetry.distro.version"),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert!(r.attr("process.command_line").is_none());
        let keys: Vec<&str> = r.attributes.iter().map(|(k, _)| k.as_str()).collect();
        for key in &keys {
            assert_eq!(keys.iter().filter(|k| *k == key).count(), 1, "{key} twice");
        }
        assert_eq!(
            str_attr(&r, "service.instance.id"),
            Some(instance_uuid("0123456789abcdef", 31337, 4242).as_str())
        );

        let own_id = b"OTEL_RESOURCE_ATTRIBUTES=service.instance.id=pod-7\0";
        let r = build_resource(&host(), 1, &facts(Some("/srv/shop"), None, own_id));
        assert_eq!(str_attr(&r, "service.instance.id"), Some("pod-7"));

        // A list that cannot be decoded is dropped as a whole.
        let bad = b"OTEL_SERVICE_NAME=shop\0OTEL_RESOURCE_ATTRIBUTES=a=1,b=%zz\0";
        let r = build_resource(&host(), 1, &facts(Some("/srv/x"), None, bad));
        assert_eq!(r.service_name, "shop");
        assert!(r.attr("a").is_none());

        let no_host_id = HostInfo {
            host_name: "h".into(),
            host_id: None,
        };
        let r = build_resource(&no_host_id, 1, &facts(Some("/srv/x"), None, b""));
        assert!(r.attr("host.id").is_none());
    }

    #[test]
    fn vanished_process() {
        let r = build_resource(&host(), 99, &ProcFacts::default());
        assert_eq!(r.service_name, UNKNOWN_SERVICE);
        assert_eq!(r.attr("process.pid"), Some(&AttrValue::Int(99)));
        assert_eq!(
            str_attr(&r, "process.executable.name"),
            Some(UNKNOWN_EXECUTABLE)
        );
        assert_eq!(r.attr("process.executable.path"), None);
        // Garbage in the environment block.
        let f = ProcFacts {
            environ: Some(b"\xff\0OTEL_SERVICE_NAME=\xff\xfe\0=\0".to_vec()),
            ..ProcFacts::default()
        };
        let r = build_resource(&host(), 99, &f);
        assert_eq!(r.service_name, "\u{fffd}\u{fffd}");
    }

    #[test]
    fn instance_ids() {
        let a = instance_uuid("host", 10, 500);
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'8');
        assert!(matches!(a.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
        assert_eq!(a, instance_uuid("host", 10, 500));
        assert_ne!(a, instance_uuid("host", 10, 501));
        assert_ne!(a, instance_uuid("host", 11, 500));
        assert_ne!(a, instance_uuid("other", 10, 500));
        // Fixed forever: the id of a process must not change when sonde is
        // upgraded.
        assert_eq!(a, GOLDEN_INSTANCE_ID);
    }

    const GOLDEN_INSTANCE_ID: &str = "4d98d073-1b31-8561-854d-5775efe5719a";

    /// A throwaway directory laid out like `/proc`.
    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("sonde-enrich-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            FakeProc(dir)
        }

        fn process(&self, pid: u32, start: u64, exe: &str, environ: &[u8]) {
            let dir = self.0.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let name = executable_name(exe);
            let stat = proc::fake_stat_line(pid, name, start);
            std::fs::write(dir.join("stat"), stat).unwrap();
            std::fs::write(dir.join("comm"), format!("{name}\n")).unwrap();
            std::fs::write(dir.join("environ"), environ).unwrap();
            let link = dir.join("exe");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(exe, &link).unwrap();
        }

        fn exit(&self, pid: u32) {
            std::fs::remove_dir_all(self.0.join(pid.to_string())).unwrap();
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn cache_follows_process_lifetimes() {
        let proc = FakeProc::new("life");
        let mut cache = ProcessResources::with_proc_root(host(), &proc.0, 16);
        proc.process(100, 1000, "/usr/sbin/nginx", b"OTEL_SERVICE_NAME=web\0");

        let first = cache.get(100);
        assert_eq!(first.service_name, "web");
        assert_eq!(
            str_attr(&first, "process.executable.path"),
            Some("/usr/sbin/nginx")
        );

        // A hit does not look at /proc again.
        proc.process(100, 2000, "/usr/bin/redis-server", b"");
        assert!(Arc::ptr_eq(&first, &cache.get(100)));

        // After `forget`, a changed start time means another process.
        cache.forget(100);
        let second = cache.get(100);
        assert_eq!(second.service_name, "redis-server");
        assert!(!Arc::ptr_eq(&first, &second));

        // `forget` of a process that is still the same keeps the resource.
        cache.forget(100);
        assert!(Arc::ptr_eq(&second, &cache.get(100)));
        cache.forget(12345); // unknown pid: nothing happens

        // A process that is gone keeps what was read while it ran: its last
        // spans are often finished after it exited.
        proc.exit(100);
        cache.forget(100);
        assert!(Arc::ptr_eq(&second, &cache.get(100)));
        assert!(Arc::ptr_eq(&second, &cache.get(100)));
        // An exited process not yet reaped (a zombie) still has its stat
        // but no exe link or environment: it is the same process, and
        // keeps its name.
        proc.process(100, 2000, "/usr/bin/redis-server", b"");
        std::fs::remove_file(proc.0.join("100").join("exe")).unwrap();
        cache.forget(100);
        assert!(Arc::ptr_eq(&second, &cache.get(100)));
        proc.exit(100);
        // A new process on the pid is seen at the next `forget` (the
        // pipeline calls it for every new connection).
        proc.process(100, 3000, "/usr/bin/python3", b"");
        cache.forget(100);
        assert_eq!(cache.get(100).service_name, "python3");

        let never = cache.get(4_000_000);
        assert_eq!(never.service_name, UNKNOWN_SERVICE);
    }

    #[test]
    fn kernel_names_a_process_that_is_gone() {
        let proc = FakeProc::new("hint");
        let mut cache = ProcessResources::with_proc_root(host(), &proc.0, 2);
        // Exited before its /proc entry was read: the kernel's name is used.
        cache.name_hint(200, b"curl", 0);
        let gone = cache.get(200);
        assert_eq!(gone.service_name, "curl");
        assert_eq!(str_attr(&gone, "process.executable.name"), Some("curl"));
        // A readable /proc wins over the hint, and the hint is used once.
        proc.process(201, 1, "/usr/bin/python3", b"OTEL_SERVICE_NAME=shop\0");
        cache.name_hint(201, b"python3", 0);
        assert_eq!(cache.get(201).service_name, "shop");
        cache.name_hint(202, b"", 0);
        assert_eq!(cache.get(202).service_name, UNKNOWN_SERVICE);
        // A cached process takes no hint; hints stay bounded.
        cache.name_hint(201, b"other", 0);
        assert!(cache.hints.is_empty());
        for pid in 300..310 {
            cache.name_hint(pid, b"x", 0);
        }
        assert!(cache.hints.len() <= 2);
    }

    const UID: &str = "3d1e6b5a-7c2f-4e8d-9a0b-1c2d3e4f5a6b";
    const CID: &str = "4f2b9c0d1e3a5b7c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e";

    fn pod(annotation: Option<&str>, label: Option<&str>, owners: k8s::Owners) -> PodMeta {
        PodMeta {
            uid: UID.into(),
            name: "web-7d9f8c6b5-x2x4z".into(),
            namespace: "shop".into(),
            owners,
            containers: vec![(crate::enrich::k8s::ContainerId::new(CID), "app".into())],
            annotated_service_name: annotation.map(str::to_owned),
            app_name: label.map(str::to_owned),
            ..PodMeta::default()
        }
    }

    fn process_in_pod(environ: &[u8]) -> Process {
        let mut facts = facts(Some("/usr/bin/java"), Some("java"), environ);
        facts.cgroup = Some(format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope\n",
            UID.replace('-', "_")
        ));
        Process::from_facts(7, &facts)
    }

    #[test]
    fn service_name_precedence_in_kubernetes() {
        use k8s::WorkloadKind::*;
        let deployment = vec![
            (ReplicaSet, "web-7d9f8c6b5".to_owned()),
            (Deployment, "web".to_owned()),
        ];
        let env = b"OTEL_SERVICE_NAME=from-env\0OTEL_RESOURCE_ATTRIBUTES=service.name=from-attrs\0";
        let attrs = b"OTEL_RESOURCE_ATTRIBUTES=service.name=from-attrs\0";
        let full = pod(Some("annotated"), Some("labelled"), deployment.clone());
        let cases: Vec<(&[u8], Option<PodMeta>, &str)> = vec![
            (env, Some(full.clone()), "from-env"),
            (attrs, Some(full.clone()), "from-attrs"),
            (b"", Some(full.clone()), "annotated"),
            (
                b"",
                Some(pod(None, Some("labelled"), deployment.clone())),
                "labelled",
            ),
            (
                b"",
                Some(pod(Some(""), Some(""), deployment.clone())),
                "web",
            ),
            (
                b"",
                Some(pod(None, None, vec![(ReplicaSet, "bare-rs".into())])),
                "bare-rs",
            ),
            (
                b"",
                Some(pod(None, None, vec![(StatefulSet, "db".into())])),
                "db",
            ),
            (
                b"",
                Some(pod(
                    None,
                    None,
                    vec![(Job, "backup-29012345".into()), (CronJob, "backup".into())],
                )),
                "backup",
            ),
            (b"", Some(pod(None, None, vec![])), "web-7d9f8c6b5-x2x4z"),
            (b"", None, "java"),
        ];
        for (environ, pod, want) in cases {
            let process = process_in_pod(environ);
            let got = service_name(&process, pod.as_ref(), None);
            assert_eq!(got, want, "{pod:?}");
        }
        // The container's name comes before the executable when no pod is known.
        let process = process_in_pod(b"");
        assert_eq!(service_name(&process, None, Some("app")), "app");
    }

    #[test]
    fn kubernetes_attributes() {
        use k8s::WorkloadKind::*;
        let cluster = ClusterInfo {
            cluster_name: Some("prod-eu".into()),
            node_name: Some("node-1".into()),
        };
        let mut meta = pod(
            None,
            None,
            vec![
                (ReplicaSet, "web-7d9f8c6b5".into()),
                (Deployment, "web".into()),
            ],
        );
        meta.labels = vec![("team".into(), "payments".into())];
        meta.annotations = vec![("owner".into(), "sre".into())];
        let r = compose(&host(), &cluster, &process_in_pod(b""), Some(&meta));
        for (key, want) in [
            ("service.name", "web"),
            ("service.namespace", "shop"),
            ("service.instance.id", "shop.web-7d9f8c6b5-x2x4z.app"),
            ("k8s.namespace.name", "shop"),
            ("k8s.pod.name", "web-7d9f8c6b5-x2x4z"),
            ("k8s.pod.uid", UID),
            ("k8s.container.name", "app"),
            ("k8s.node.name", "node-1"),
            ("k8s.cluster.name", "prod-eu"),
            ("k8s.deployment.name", "web"),
            ("k8s.replicaset.name", "web-7d9f8c6b5"),
            ("k8s.pod.label.team", "payments"),
            ("k8s.pod.annotation.owner", "sre"),
            ("container.id", CID),
            ("container.runtime.name", "containerd"),
            ("process.executable.name", "java"),
        ] {
            assert_eq!(str_attr(&r, key), Some(want), "{key}");
        }
        assert_eq!(r.attr("k8s.statefulset.name"), None);
        // The pod not known yet: what the cgroup says, no names.
        let r = compose(&host(), &cluster, &process_in_pod(b""), None);
        assert_eq!(str_attr(&r, "k8s.pod.uid"), Some(UID));
        assert_eq!(str_attr(&r, "container.id"), Some(CID));
        assert_eq!(str_attr(&r, "k8s.node.name"), Some("node-1"));
        assert_eq!(r.attr("k8s.pod.name"), None);
        assert_eq!(r.service_name, "java");
        // A process outside any pod gets no k8s attributes at all.
        let mut facts = facts(Some("/usr/sbin/nginx"), Some("nginx"), b"");
        facts.cgroup = Some("0::/system.slice/nginx.service\n".into());
        let r = compose(&host(), &cluster, &Process::from_facts(9, &facts), None);
        assert!(
            r.attributes
                .iter()
                .all(|(k, _)| !k.starts_with("k8s.") && !k.starts_with("container.")),
            "{r:?}"
        );
        assert_eq!(str_attr(&r, "systemd.unit.name"), Some("nginx.service"));
        // What the environment says never replaces what was observed.
        let r = compose(
            &host(),
            &cluster,
            &process_in_pod(b"OTEL_RESOURCE_ATTRIBUTES=k8s.pod.name=fake,service.version=1.2\0"),
            Some(&meta),
        );
        assert_eq!(str_attr(&r, "k8s.pod.name"), Some("web-7d9f8c6b5-x2x4z"));
        assert_eq!(str_attr(&r, "service.version"), Some("1.2"));
    }

    #[test]
    fn late_and_deleted_pods() {
        let proc = FakeProc::new("k8s");
        proc.process(7, 1, "/usr/bin/java", b"");
        std::fs::write(
            proc.0.join("7/cgroup"),
            format!("0::/kubepods/burstable/pod{UID}/{CID}\n"),
        )
        .unwrap();
        let metadata = Arc::new(Metadata::default());
        let mut cache =
            ProcessResources::with_proc_root(host(), &proc.0, 16).with_kubernetes(Kubernetes {
                metadata: Arc::clone(&metadata),
                cluster: ClusterInfo::default(),
            });
        // Seen before its pod reaches the watch.
        let early = cache.get(7);
        assert_eq!(early.service_name, "java");
        assert_eq!(str_attr(&early, "k8s.pod.uid"), Some(UID));
        assert!(
            Arc::ptr_eq(&early, &cache.get(7)),
            "unchanged metadata: the cached resource"
        );
        // The pod arrives: the next span is labelled.
        let mut pods = HashMap::new();
        let meta = Arc::new(pod(None, Some("checkout"), vec![]));
        pods.insert(Arc::from(UID), Arc::clone(&meta));
        metadata.publish(k8s::Snapshot {
            pods: pods.clone(),
            ..Default::default()
        });
        let late = cache.get(7);
        assert_eq!(late.service_name, "checkout");
        assert_eq!(str_attr(&late, "k8s.container.name"), Some("app"));
        // Another pod changes: this resource is kept as it is.
        metadata.publish(k8s::Snapshot {
            pods: pods.clone(),
            ..Default::default()
        });
        assert!(Arc::ptr_eq(&late, &cache.get(7)));
        // The pod is deleted and its time is up: the process keeps its labels.
        metadata.publish(k8s::Snapshot::default());
        assert_eq!(cache.get(7).service_name, "checkout");
    }

    fn rule(yaml: &str) -> select::Rule {
        serde_saphyr::from_str(yaml).unwrap()
    }

    /// A process in an excluded pod: traced until its pod is known, then
    /// its cgroup is muted; muted cgroups are judged again as the pod's
    /// labels change.
    #[test]
    fn selection_mutes_cgroups_and_follows_the_pod() {
        let proc = FakeProc::new("select");
        proc.process(7, 1, "/usr/bin/java", b"");
        std::fs::write(
            proc.0.join("7/cgroup"),
            format!("0::/kubepods/burstable/pod{UID}/{CID}\n"),
        )
        .unwrap();
        let metadata = Arc::new(Metadata::default());
        let mut cache = ProcessResources::with_proc_root(host(), &proc.0, 16)
            .with_selection(Selection {
                include: vec![],
                exclude: vec![rule("labels: sonde.io/trace=off")],
            })
            .with_kubernetes(Kubernetes {
                metadata: Arc::clone(&metadata),
                cluster: ClusterInfo::default(),
            });
        const CGROUP: u64 = 0xc0ffee;
        cache.name_hint(7, b"java", CGROUP);
        assert!(cache.lookup(7).1, "its pod is not known yet: traced");
        assert_eq!(cache.take_cgroup_orders().count(), 0);

        let publish = |trace: &str| {
            let mut meta = pod(None, Some("checkout"), vec![]);
            meta.rule_labels = vec![("sonde.io/trace".into(), trace.into())];
            let mut pods = HashMap::new();
            pods.insert(Arc::from(UID), Arc::new(meta));
            metadata.publish(k8s::Snapshot {
                pods,
                ..Default::default()
            });
        };
        publish("off");
        assert!(!cache.lookup(7).1, "its pod is excluded");
        assert_eq!(
            cache.take_cgroup_orders().collect::<Vec<_>>(),
            [CgroupOrder::Silence(CGROUP)]
        );
        assert_eq!(cache.take_newly_excluded().collect::<Vec<_>>(), [7]);
        assert_eq!(cache.silenced_cgroups(), 1);
        // Judged again only when the metadata changed, and still excluded.
        cache.recheck_silenced();
        publish("off");
        cache.recheck_silenced();
        assert_eq!(cache.take_cgroup_orders().count(), 0);
        assert!(!cache.lookup(7).1);
        assert_eq!(cache.take_newly_excluded().count(), 0, "said once");

        // The label is gone: the cgroup is traced again without a span
        // from it (a muted cgroup sends none).
        publish("on");
        cache.recheck_silenced();
        assert_eq!(
            cache.take_cgroup_orders().collect::<Vec<_>>(),
            [CgroupOrder::Trace(CGROUP)]
        );
        assert_eq!(cache.silenced_cgroups(), 0);
        assert!(cache.lookup(7).1);
        assert_eq!(cache.take_cgroup_orders().count(), 0, "said once");
    }

    /// Without Kubernetes, rules on systemd units still apply; a process
    /// whose cgroup id the kernel has not said is excluded without a
    /// cgroup to mute.
    #[test]
    fn selection_of_host_processes() {
        let proc = FakeProc::new("select-host");
        for (pid, unit) in [(8, "sshd.service"), (9, "nginx.service")] {
            proc.process(pid, 1, "/usr/sbin/x", b"");
            std::fs::write(
                proc.0.join(format!("{pid}/cgroup")),
                format!("0::/system.slice/{unit}\n"),
            )
            .unwrap();
        }
        let mut cache =
            ProcessResources::with_proc_root(host(), &proc.0, 16).with_selection(Selection {
                include: vec![],
                exclude: vec![rule("systemd_unit: ssh*")],
            });
        assert!(cache.lookup(9).1);
        assert!(!cache.lookup(8).1);
        assert_eq!(cache.take_newly_excluded().collect::<Vec<_>>(), [8]);
        assert_eq!(cache.take_cgroup_orders().count(), 0, "no cgroup id yet");
        cache.name_hint(8, b"sshd", 42);
        assert_eq!(
            cache.take_cgroup_orders().collect::<Vec<_>>(),
            [CgroupOrder::Silence(42)]
        );
    }

    /// Tenant rules label resources: by the pod's label once the pod is
    /// known, by a namespace label that changes while the pod does not,
    /// and by an environment variable outside Kubernetes.
    #[test]
    fn resources_carry_their_tenant() {
        let tenants = || {
            Tenants::new(
                serde_saphyr::from_str(
                    "attribute: org.id\nrules:\n  - pod_label: tenant\n  - namespace_label: tenant\n  - env: TENANT_ID\ndefault: shared\n",
                )
                .unwrap(),
            )
        };
        let proc = FakeProc::new("tenant");
        proc.process(7, 1, "/usr/bin/java", b"TENANT_ID=from-env\0");
        std::fs::write(
            proc.0.join("7/cgroup"),
            format!("0::/kubepods/burstable/pod{UID}/{CID}\n"),
        )
        .unwrap();
        proc.process(8, 1, "/usr/bin/python3", b"PATH=/bin\0TENANT_ID=umbrella\0");
        let metadata = Arc::new(Metadata::default());
        let mut cache = ProcessResources::with_proc_root(host(), &proc.0, 16)
            .with_tenants(tenants())
            .with_kubernetes(Kubernetes {
                metadata: Arc::clone(&metadata),
                cluster: ClusterInfo::default(),
            });
        let tenant_of = |r: &Resource| {
            (
                r.tenant.tenant.as_deref().map(str::to_owned),
                str_attr(r, "org.id").map(str::to_owned),
            )
        };
        let both = |t: &str| (Some(t.to_owned()), Some(t.to_owned()));
        assert_eq!(
            tenant_of(&cache.get(7)),
            both("from-env"),
            "no pod yet: env"
        );
        assert_eq!(tenant_of(&cache.get(8)), both("umbrella"));

        let publish = |pod_tenant: Option<&str>, ns_tenant: &str| {
            let mut meta = pod(None, None, vec![]);
            meta.rule_labels = pod_tenant
                .map(|t| vec![("tenant".to_owned(), t.to_owned())])
                .unwrap_or_default();
            let mut pods = HashMap::new();
            pods.insert(Arc::from(UID), Arc::new(meta));
            let mut namespaces = HashMap::new();
            namespaces.insert(
                Arc::from("shop"),
                Arc::new(vec![("tenant".to_owned(), ns_tenant.to_owned())]),
            );
            metadata.publish(k8s::Snapshot {
                pods,
                namespaces,
                ..Default::default()
            });
        };
        publish(Some("acme"), "initech");
        assert_eq!(tenant_of(&cache.get(7)), both("acme"), "the pod's label");
        publish(None, "initech");
        // The same pod object is kept only when unchanged: a new one (no
        // label) is a change of pod, so the namespace label applies.
        assert_eq!(tenant_of(&cache.get(7)), both("initech"));
        let kept = cache.get(7);
        let pods = metadata.load().pods.clone();
        let mut namespaces = HashMap::new();
        namespaces.insert(
            Arc::from("shop"),
            Arc::new(vec![("tenant".to_owned(), "globex".to_owned())]),
        );
        metadata.publish(k8s::Snapshot {
            pods,
            namespaces,
            ..Default::default()
        });
        let relabelled = cache.get(7);
        assert!(!Arc::ptr_eq(&kept, &relabelled));
        assert_eq!(
            tenant_of(&relabelled),
            both("globex"),
            "the namespace's new label"
        );

        // Without rules, no tenant attribute at all.
        let mut plain = ProcessResources::with_proc_root(host(), &proc.0, 16);
        let r = plain.get(8);
        assert_eq!(r.tenant, ProcessTenant::default());
        assert!(r.attr("tenant.id").is_none());
    }

    /// A new selection judges every cached process and muted cgroup at
    /// once: the newly excluded are muted, and a muted cgroup whose
    /// process left the cache is traced again all the same.
    #[test]
    fn new_selection_rejudges_processes_and_muted_cgroups() {
        let proc = FakeProc::new("reselect");
        for (pid, unit) in [(8, "sshd.service"), (9, "nginx.service")] {
            proc.process(pid, 1, "/usr/sbin/x", b"");
            std::fs::write(
                proc.0.join(format!("{pid}/cgroup")),
                format!("0::/system.slice/{unit}\n"),
            )
            .unwrap();
        }
        let mut cache = ProcessResources::with_proc_root(host(), &proc.0, 16);
        cache.name_hint(8, b"sshd", 42);
        cache.name_hint(9, b"nginx", 43);
        assert!(cache.lookup(8).1 && cache.lookup(9).1);

        let exclude = |glob: &str| Selection {
            include: vec![],
            exclude: vec![rule(&format!("systemd_unit: {glob}"))],
        };
        cache.set_selection(exclude("ssh*"));
        assert_eq!(cache.take_newly_excluded().collect::<Vec<_>>(), [8]);
        assert_eq!(
            cache.take_cgroup_orders().collect::<Vec<_>>(),
            [CgroupOrder::Silence(42)]
        );
        assert!(!cache.lookup(8).1, "judged without a new connection");
        assert!(cache.lookup(9).1);

        // Both swap: one order each, said once.
        cache.set_selection(exclude("nginx*"));
        let mut orders: Vec<_> = cache.take_cgroup_orders().collect();
        orders.sort_by_key(|o| match o {
            CgroupOrder::Silence(id) | CgroupOrder::Trace(id) => *id,
        });
        assert_eq!(orders, [CgroupOrder::Trace(42), CgroupOrder::Silence(43)]);
        assert_eq!(cache.take_newly_excluded().collect::<Vec<_>>(), [9]);
        assert!(cache.lookup(8).1 && !cache.lookup(9).1);
        cache.set_selection(exclude("nginx*"));
        assert_eq!(cache.take_cgroup_orders().count(), 0, "no change, no order");

        // The excluded process leaves the cache; its cgroup stays muted
        // until the rules change.
        let mut small =
            ProcessResources::with_proc_root(host(), &proc.0, 1).with_selection(exclude("nginx*"));
        small.name_hint(9, b"nginx", 43);
        assert!(!small.lookup(9).1);
        assert!(small.lookup(8).1, "evicts 9");
        assert_eq!(small.len(), 1);
        assert_eq!(small.silenced_cgroups(), 1);
        small.take_cgroup_orders().for_each(drop);
        small.set_selection(Selection::all());
        assert_eq!(
            small.take_cgroup_orders().collect::<Vec<_>>(),
            [CgroupOrder::Trace(43)]
        );
        assert_eq!(small.silenced_cgroups(), 0);
    }

    /// New tenant rules rebuild each cached resource on its next hit:
    /// variables the new rules name are read then, a pod's labels are
    /// taken from the metadata of now, and a process that is gone keeps
    /// what was read while it ran.
    #[test]
    fn new_tenant_rules_rebuild_resources_on_their_next_hit() {
        let tenants = |yaml: &str| Tenants::new(serde_saphyr::from_str(yaml).unwrap());
        let proc = FakeProc::new("retenant");
        proc.process(8, 1, "/usr/bin/python3", b"TENANT_ID=umbrella\0TEAM=blue\0");
        let mut cache = ProcessResources::with_proc_root(host(), &proc.0, 16)
            .with_tenants(tenants("rules:\n  - env: TENANT_ID\ndefault: shared\n"));
        let first = cache.get(8);
        assert_eq!(first.tenant.tenant.as_deref(), Some("umbrella"));
        assert!(Arc::ptr_eq(&first, &cache.get(8)));

        cache.set_tenants(tenants(
            "attribute: org.team\nrules:\n  - env: TEAM\ndefault: shared\n",
        ));
        let second = cache.get(8);
        assert_eq!(second.tenant.tenant.as_deref(), Some("blue"));
        assert_eq!(str_attr(&second, "org.team"), Some("blue"));
        assert_eq!(second.attr("tenant.id"), None, "the old attribute is gone");
        assert!(Arc::ptr_eq(&second, &cache.get(8)), "rebuilt once");

        proc.exit(8);
        cache.set_tenants(tenants("rules:\n  - env: TEAM\n    tenant: team\n"));
        assert_eq!(cache.get(8).tenant.tenant.as_deref(), Some("team"));
        cache.set_tenants(Tenants::default());
        let plain = cache.get(8);
        assert_eq!(plain.tenant, ProcessTenant::default());
        assert_eq!(plain.attr("tenant.id"), None);

        // With Kubernetes: the pod's labels of now.
        proc.process(7, 1, "/usr/bin/java", b"");
        std::fs::write(
            proc.0.join("7/cgroup"),
            format!("0::/kubepods/burstable/pod{UID}/{CID}\n"),
        )
        .unwrap();
        let metadata = Arc::new(Metadata::default());
        let mut meta = pod(None, None, vec![]);
        meta.rule_labels = vec![
            ("tenant".to_owned(), "acme".to_owned()),
            ("team".to_owned(), "red".to_owned()),
        ];
        let mut pods = HashMap::new();
        pods.insert(Arc::from(UID), Arc::new(meta));
        metadata.publish(k8s::Snapshot {
            pods,
            ..Default::default()
        });
        let mut cache = ProcessResources::with_proc_root(host(), &proc.0, 16)
            .with_tenants(tenants("rules:\n  - pod_label: tenant\n"))
            .with_kubernetes(Kubernetes {
                metadata: Arc::clone(&metadata),
                cluster: ClusterInfo::default(),
            });
        assert_eq!(cache.get(7).tenant.tenant.as_deref(), Some("acme"));
        cache.set_tenants(tenants("rules:\n  - pod_label: team\n"));
        let relabelled = cache.get(7);
        assert_eq!(relabelled.tenant.tenant.as_deref(), Some("red"));
        assert_eq!(
            str_attr(&relabelled, "k8s.pod.name"),
            Some("web-7d9f8c6b5-x2x4z")
        );
        assert!(Arc::ptr_eq(&relabelled, &cache.get(7)));
    }

    #[test]
    fn cgroup_ids_of_processes_that_are_gone() {
        let proc = FakeProc::new("cgid");
        let root = proc.0.join("unified");
        let dir = root.join(format!("kubepods/burstable/pod{UID}/{CID}"));
        std::fs::create_dir_all(&dir).unwrap();
        let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dir).unwrap());
        let mut cache = ProcessResources::with_proc_root(host(), &proc.0, 16);
        cache.cgroups = cgroup::CgroupIds::at(Some(root.clone()));
        // Gone before /proc was read: the kernel's cgroup id is looked up.
        cache.name_hint(300, b"curl", id);
        let r = cache.get(300);
        assert_eq!(str_attr(&r, "container.id"), Some(CID));
        assert_eq!(str_attr(&r, "k8s.pod.uid"), Some(UID));
        // An id that names no directory says nothing.
        cache.name_hint(301, b"curl", id + 1_000_000);
        assert_eq!(cache.get(301).attr("container.id"), None);
    }

    #[test]
    fn cgroup2_mount_point() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup::unified_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup::unified_mount(v2),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup::unified_mount("garbage\n - \n"), None);
    }

    #[test]
    fn cache_is_bounded_lru() {
        let proc = FakeProc::new("lru");
        for pid in 1..=4 {
            proc.process(pid, u64::from(pid), &format!("/bin/p{pid}"), b"");
        }
        let mut cache = ProcessResources::with_proc_root(host(), &proc.0, 2);
        let one = cache.get(1);
        let _two = cache.get(2);
        assert!(Arc::ptr_eq(&one, &cache.get(1))); // 1 is now the most recent
        cache.get(3); // evicts 2
        assert_eq!(cache.len(), 2);
        assert!(Arc::ptr_eq(&one, &cache.get(1)));
        cache.get(4); // evicts 3
        cache.get(1);
        assert_eq!(cache.len(), 2);
        assert!(Arc::ptr_eq(&one, &cache.get(1)));
    }

    #[test]
    fn reads_own_process() {
        let mut cache = ProcessResources::new(HostInfo::detect());
        let me = cache.get(std::process::id());
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            str_attr(&me, "process.executable.name"),
            Some(name.as_str())
        );
        assert_eq!(
            me.attr("process.pid"),
            Some(&AttrValue::Int(i64::from(std::process::id())))
        );
        assert!(!me.service_name.is_empty());
        assert!(!HostInfo::detect().host_name.is_empty());
    }
}
