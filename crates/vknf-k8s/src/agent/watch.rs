//! The agent's view of the cluster: reflector caches fed by watchers with backoff. Every event
//! wakes the reconciler; the caches, not the events, are what it reads.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use vknf_manifest::FunctionKey;

use crate::keys;
use crate::metrics::{AgentMetrics, ResourceLabels};
use crate::plan::object_key;

/// The reflector caches of one watched scope: one namespace, or every namespace.
#[derive(Clone)]
struct ScopeCaches {
    namespace: Option<String>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    endpoints: Store<Endpoints>,
    configmaps: Store<PartialObjectMeta<ConfigMap>>,
}

/// The reflector caches the reconciler plans from: one set per watched namespace (so the agent
/// needs permissions only in the namespaces it is told to watch), or one for the whole cluster.
#[derive(Clone)]
pub(crate) struct Caches {
    scopes: Vec<ScopeCaches>,
}

impl Caches {
    /// Waits until every cache has completed its first list.
    pub async fn wait_until_ready(&self) -> bool {
        for scope in &self.scopes {
            let ready = scope.services.wait_until_ready().await.is_ok()
                && scope.slices.wait_until_ready().await.is_ok()
                && scope.endpoints.wait_until_ready().await.is_ok()
                && scope.configmaps.wait_until_ready().await.is_ok();
            if !ready {
                return false;
            }
        }
        true
    }

    /// Every function Service watched.
    pub fn services(&self) -> Vec<Arc<Service>> {
        self.scopes.iter().flat_map(|s| s.services.state()).collect()
    }

    /// One function Service, if watched.
    pub fn service(&self, key: &FunctionKey) -> Option<Arc<Service>> {
        let reference = ObjectRef::new(&key.name).within(&key.namespace);
        self.scopes.iter().find_map(|s| s.services.get(&reference))
    }

    /// Every EndpointSlice watched (all but those of Kubernetes' own controller).
    pub fn slices(&self) -> Vec<Arc<EndpointSlice>> {
        self.scopes.iter().flat_map(|s| s.slices.state()).collect()
    }

    /// Every legacy Endpoints watched (all but those of Kubernetes' own controller).
    pub fn endpoints(&self) -> Vec<Arc<Endpoints>> {
        self.scopes.iter().flat_map(|s| s.endpoints.state()).collect()
    }

    /// The ConfigMap metadata cache covering `namespace` (an empty one when it is not watched).
    pub fn configmaps(&self, namespace: &str) -> Store<PartialObjectMeta<ConfigMap>> {
        self.scopes
            .iter()
            .find(|s| s.namespace.as_deref().is_none_or(|n| n == namespace))
            .map(|s| s.configmaps.clone())
            .unwrap_or_else(|| reflector::store().0)
    }
}

/// When the agent first saw each function Service change since it last acted on it: the start
/// of the "watch delay" phase of a cold start.
pub(crate) type FirstSeen = Arc<parking_lot::Mutex<HashMap<FunctionKey, Instant>>>;

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Starts the four watchers in each of `namespaces` (all namespaces when empty); returns their
/// caches and tasks.
pub(crate) fn start(
    client: &Client,
    namespaces: &[String],
    metrics: &AgentMetrics,
    wake: &Arc<Notify>,
    first_seen: &FirstSeen,
) -> (Caches, Vec<JoinHandle<()>>) {
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        let unique: BTreeSet<&str> = namespaces.iter().map(String::as_str).collect();
        unique.into_iter().map(Some).collect()
    };
    let mut caches = Caches { scopes: Vec::new() };
    let mut tasks = Vec::new();
    for namespace in scopes {
        let (scope, scope_tasks) = start_scope(client, namespace, metrics, wake, first_seen);
        caches.scopes.push(scope);
        tasks.extend(scope_tasks);
    }
    (caches, tasks)
}

/// Starts the four watchers of one namespace (or of all with `None`).
fn start_scope(
    client: &Client,
    namespace: Option<&str>,
    metrics: &AgentMetrics,
    wake: &Arc<Notify>,
    first_seen: &FirstSeen,
) -> (ScopeCaches, Vec<JoinHandle<()>>) {
    let services_config = watcher::Config::default().labels(&format!("{}=true", keys::FUNCTION_LABEL));
    // Slices and Endpoints that Kubernetes' own controllers write belong to Services with
    // selectors, never to functions: leave them out of the cache.
    let slices_config =
        watcher::Config::default().labels(&format!("{}!={}", keys::MANAGED_BY_LABEL, keys::MANAGED_BY_KUBERNETES));
    let endpoints_config = watcher::Config::default().labels(&format!(
        "{}!={}",
        keys::ENDPOINTS_MANAGED_BY_LABEL,
        keys::ENDPOINTS_MANAGED_BY_KUBERNETES
    ));

    let seen = first_seen.clone();
    let note_service = move |service: &Service| {
        if let Some(key) = object_key(&service.metadata) {
            seen.lock().entry(key).or_insert_with(Instant::now);
        }
    };
    let (services, services_task) = watch(
        api(client, namespace),
        services_config,
        "services",
        metrics,
        wake,
        note_service,
    );
    let (slices, slices_task) = watch(
        api(client, namespace),
        slices_config,
        "endpointslices",
        metrics,
        wake,
        |_| {},
    );
    let (endpoints, endpoints_task) = watch(
        api(client, namespace),
        endpoints_config,
        "endpoints",
        metrics,
        wake,
        |_| {},
    );
    let (configmaps, configmaps_task) = watch(
        api(client, namespace),
        watcher::Config::default(),
        "configmaps",
        metrics,
        wake,
        |_| {},
    );
    (
        ScopeCaches {
            namespace: namespace.map(str::to_owned),
            services,
            slices,
            endpoints,
            configmaps,
        },
        vec![services_task, slices_task, endpoints_task, configmaps_task],
    )
}

fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    metrics: &AgentMetrics,
    wake: &Arc<Notify>,
    on_apply: impl Fn(&K) + Send + 'static,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let metrics = metrics.clone();
    let wake = wake.clone();
    let labels = ResourceLabels {
        resource: resource.to_owned(),
    };
    let task = tokio::spawn(async move {
        // The backoff keeps a failing API server from being hammered; the watcher relists by
        // itself after a 410 Gone.
        let stream = watcher(api, config).default_backoff().reflect(writer);
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    metrics.watch_events.get_or_create(&labels).inc();
                    if let watcher::Event::Apply(object) | watcher::Event::InitApply(object) = &event {
                        on_apply(object);
                    }
                    wake.notify_one();
                }
                Err(error) => {
                    tracing::warn!(%error, resource, "watch failed; retrying with backoff");
                    metrics.error("watch");
                }
            }
        }
    });
    (store, task)
}
