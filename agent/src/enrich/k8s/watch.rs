//! The watcher: lists and watches this node's pods and all namespaces, and
//! publishes what it knows to [`Metadata`].
//!
//! It runs on a thread of its own with a small async runtime, so that an
//! API server that is slow or away never holds up the pipeline. kube's
//! watcher does the protocol (paged lists, watches from the listed
//! resourceVersion, bookmarks, a new list after 410 Gone) with backoff
//! between failed attempts; while the API server is away the last snapshot
//! stays in use, so spans keep the labels they had.
//!
//! A ReplicaSet's Deployment is read with one GET per ReplicaSet, cached;
//! watching every ReplicaSet of the cluster would cost far more memory on a
//! big cluster than the pods of one node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tracing::{info, warn};

use super::{Keep, Metadata, PodMeta, Snapshot, WatchedPod, controller, pod_meta, pod_owners};

/// How often changes are published at most: a burst of events (the first
/// list of a node's pods) becomes one snapshot.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// Namespace name → its labels.
type Namespaces = HashMap<Arc<str>, Arc<Vec<(String, String)>>>;

/// What the watcher is told.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// The node whose pods are watched (`spec.nodeName`).
    pub node_name: String,
    pub keep: Keep,
    /// How long a deleted pod's metadata is kept.
    pub deleted_pod_retention: Duration,
}

/// Starts the watcher thread. It runs until the process exits.
pub fn spawn(config: WatchConfig, metadata: Arc<Metadata>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("sonde-k8s".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    warn!("kubernetes metadata off: cannot start its runtime: {e}");
                    return;
                }
            };
            runtime.block_on(run(config, metadata));
        })
        .map(drop)
}

async fn run(config: WatchConfig, metadata: Arc<Metadata>) {
    let client = connect().await;
    let pods = watcher::watcher(
        Api::<WatchedPod>::all(client.clone()),
        watcher::Config::default()
            .fields(&format!("spec.nodeName={}", config.node_name))
            .any_semantic(),
    )
    .default_backoff();
    let namespaces = watcher::watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff();
    let mut pods = std::pin::pin!(pods);
    let mut namespaces = std::pin::pin!(namespaces);
    let mut state = State::new(client, config);
    let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = pods.next() => match event {
                Some(Ok(event)) => {
                    state.reachable();
                    state.busy = true;
                    state.pod_event(event).await;
                }
                Some(Err(e)) => state.unreachable(&e),
                None => return,
            },
            event = namespaces.next() => match event {
                Some(Ok(event)) => {
                    state.reachable();
                    state.busy = true;
                    state.namespace_event(event);
                }
                Some(Err(e)) => state.unreachable(&e),
                None => return,
            },
            _ = tick.tick() => {
                state.publish(&metadata);
                // A burst of events (a list above all) leaves free pages
                // with this thread, which an idle watch would keep for good.
                if std::mem::take(&mut state.busy) {
                    crate::memory::release(false);
                }
            }
        }
    }
}

/// A client from the pod's service account, or from a kubeconfig
/// (`$KUBECONFIG`, `~/.kube/config`) when the agent runs outside the
/// cluster. Retried until it works: the agent traces meanwhile.
async fn connect() -> Client {
    let mut warned = false;
    loop {
        match Client::try_default().await {
            Ok(client) => return client,
            Err(e) => {
                if !warned {
                    warn!(
                        "kubernetes metadata: no API server configuration yet ({e}); \
                         spans carry process labels only until there is"
                    );
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

struct State {
    client: Client,
    config: WatchConfig,
    pods: HashMap<Arc<str>, Arc<PodMeta>>,
    /// Pods of a list in progress (`Init` .. `InitDone`).
    listing: Option<HashMap<Arc<str>, Arc<PodMeta>>>,
    namespaces: Namespaces,
    listing_namespaces: Option<Namespaces>,
    /// (namespace, ReplicaSet) → its controller (kind, name), as the API
    /// server answered.
    replicaset_owners: HashMap<(String, String), Option<(String, String)>>,
    dirty: bool,
    /// Events came since the last tick.
    busy: bool,
    /// The namespace names pods share.
    namespace_names: HashSet<Arc<str>>,
    /// The API server failed and has not answered since.
    away: bool,
}

impl State {
    fn new(client: Client, config: WatchConfig) -> Self {
        State {
            client,
            config,
            pods: HashMap::new(),
            listing: None,
            namespaces: HashMap::new(),
            listing_namespaces: None,
            replicaset_owners: HashMap::new(),
            dirty: false,
            busy: false,
            namespace_names: HashSet::new(),
            away: false,
        }
    }

    fn unreachable(&mut self, error: &watcher::Error) {
        if !self.away {
            warn!(
                "kubernetes API server unreachable ({error}); labelling with what is known \
                 and retrying"
            );
            self.away = true;
        }
    }

    fn reachable(&mut self) {
        if self.away {
            info!("kubernetes API server reachable again");
            self.away = false;
        }
    }

    async fn pod_event(&mut self, event: Event<WatchedPod>) {
        let replicaset_owner = match &event {
            Event::InitApply(pod) | Event::Apply(pod) => self.replicaset_owner_of(pod).await,
            _ => None,
        };
        self.apply_pod_event(event, replicaset_owner);
    }

    /// What the pod store keeps of `event`; `replicaset_owner` as
    /// [`pod_owners`] takes it.
    fn apply_pod_event(
        &mut self,
        event: Event<WatchedPod>,
        replicaset_owner: Option<Option<(String, String)>>,
    ) {
        match event {
            Event::Init => self.listing = Some(HashMap::new()),
            Event::InitApply(pod) => {
                if let Some(meta) = self.meta(&pod, replicaset_owner) {
                    let uid = Arc::clone(&meta.uid);
                    let meta = same_or_new(self.pods.get(&uid), meta);
                    self.listing
                        .get_or_insert_with(HashMap::new)
                        .insert(uid, meta);
                }
            }
            Event::InitDone => {
                let mut pods = self.listing.take().unwrap_or_default();
                // Pods gone while the watch was down are deleted now, kept
                // for a while like any deleted pod.
                let now = Instant::now();
                for (uid, old) in self.pods.drain() {
                    pods.entry(uid).or_insert_with(|| {
                        let mut gone = PodMeta::clone(&old);
                        gone.deleted_at.get_or_insert(now);
                        Arc::new(gone)
                    });
                }
                self.pods = pods;
                self.dirty = true;
            }
            Event::Apply(pod) => {
                if let Some(meta) = self.meta(&pod, replicaset_owner) {
                    let uid = Arc::clone(&meta.uid);
                    let meta = same_or_new(self.pods.get(&uid), meta);
                    if self
                        .pods
                        .get(&uid)
                        .is_none_or(|old| !Arc::ptr_eq(old, &meta))
                    {
                        self.pods.insert(uid, meta);
                        self.dirty = true;
                    }
                }
            }
            Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref()
                    && let Some(old) = self.pods.get_mut(uid)
                {
                    let mut gone = PodMeta::clone(old);
                    gone.deleted_at = Some(Instant::now());
                    *old = Arc::new(gone);
                    self.dirty = true;
                }
            }
        }
    }

    fn namespace_event(&mut self, event: Event<Namespace>) {
        let labels = |ns: &Namespace| {
            let mut labels: Vec<(String, String)> = ns
                .metadata
                .labels
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.shrink_to_fit();
            Arc::new(labels)
        };
        match event {
            Event::Init => self.listing_namespaces = Some(HashMap::new()),
            Event::InitApply(ns) => {
                if let Some(name) = ns.metadata.name.as_deref() {
                    self.listing_namespaces
                        .get_or_insert_with(HashMap::new)
                        .insert(name.into(), labels(&ns));
                }
            }
            Event::InitDone => {
                self.namespaces = self.listing_namespaces.take().unwrap_or_default();
                self.dirty = true;
            }
            Event::Apply(ns) => {
                if let Some(name) = ns.metadata.name.as_deref() {
                    self.namespaces.insert(name.into(), labels(&ns));
                    self.dirty = true;
                }
            }
            Event::Delete(ns) => {
                if let Some(name) = ns.metadata.name.as_deref() {
                    self.namespaces.remove(name);
                    self.dirty = true;
                }
            }
        }
    }

    /// Strips a pod.
    fn meta(
        &mut self,
        pod: &WatchedPod,
        replicaset_owner: Option<Option<(String, String)>>,
    ) -> Option<PodMeta> {
        let mut meta = pod_meta(pod, &self.config.keep, pod_owners(pod, replicaset_owner))?;
        meta.namespace = match self.namespace_names.get(&meta.namespace) {
            Some(name) => Arc::clone(name),
            None => {
                self.namespace_names.insert(Arc::clone(&meta.namespace));
                meta.namespace
            }
        };
        Some(meta)
    }

    /// The owner of the pod's ReplicaSet, when its controller is one and
    /// the API server can say (see [`State::replicaset_owner`]).
    async fn replicaset_owner_of(&mut self, pod: &WatchedPod) -> Option<Option<(String, String)>> {
        let refs = pod.metadata.owner_references.as_deref().unwrap_or_default();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        match controller(refs) {
            Some(r) if r.kind == "ReplicaSet" => self.replicaset_owner(namespace, &r.name).await,
            _ => None,
        }
    }

    /// The controller of ReplicaSet `name`: asked once, then cached. None
    /// when the API server cannot say now (asked again next time).
    async fn replicaset_owner(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Option<Option<(String, String)>> {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(owner) = self.replicaset_owners.get(&key) {
            return Some(owner.clone());
        }
        let api = Api::<ReplicaSet>::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(rs) => {
                let owner = rs.and_then(|rs| {
                    let refs = rs.metadata.owner_references.unwrap_or_default();
                    controller(&refs).map(|r| (r.kind.clone(), r.name.clone()))
                });
                self.replicaset_owners.insert(key, owner.clone());
                Some(owner)
            }
            Err(_) => None,
        }
    }

    /// Publishes the state if it changed, dropping deleted pods whose time
    /// is up.
    fn publish(&mut self, metadata: &Metadata) {
        let retention = self.config.deleted_pod_retention;
        let before = self.pods.len();
        self.pods
            .retain(|_, p| p.deleted_at.is_none_or(|at| at.elapsed() < retention));
        if self.pods.len() != before {
            self.dirty = true;
            self.namespace_names
                .retain(|name| Arc::strong_count(name) > 1);
        }
        if !self.dirty {
            return;
        }
        self.dirty = false;
        // ReplicaSets of pods no longer here are asked again if they return.
        if self.replicaset_owners.len() > 4 * self.pods.len().max(256) {
            self.replicaset_owners.clear();
        }
        metadata.publish(Snapshot {
            version: 0,
            pods: self.pods.clone(),
            namespaces: self.namespaces.clone(),
        });
    }
}

/// The pod's published metadata when nothing labels use changed (most pod
/// updates are status changes), so that its processes keep their cached
/// resources; else `meta`.
fn same_or_new(current: Option<&Arc<PodMeta>>, meta: PodMeta) -> Arc<PodMeta> {
    match current {
        Some(old) if **old == meta => Arc::clone(old),
        _ => Arc::new(meta),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_pods_keep_their_metadata() {
        let meta = PodMeta {
            uid: "u".into(),
            name: "p".into(),
            ..PodMeta::default()
        };
        let old = Arc::new(meta.clone());
        assert!(Arc::ptr_eq(&same_or_new(Some(&old), meta.clone()), &old));
        let relabelled = PodMeta {
            app_name: Some("web".into()),
            ..meta.clone()
        };
        assert!(!Arc::ptr_eq(&same_or_new(Some(&old), relabelled), &old));
        assert_eq!(*same_or_new(None, meta.clone()), meta);
    }
}
