//! The agent's view of the cluster: reflector caches fed by watchers with backoff. Every event
//! wakes the reconciler; the caches, not the events, are what it reads.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use vknf_manifest::FunctionKey;

use crate::keys;
use crate::metrics::{AgentMetrics, ResourceLabels};
use crate::plan::object_key;

/// The reflector caches the reconciler plans from.
#[derive(Clone)]
pub(crate) struct Caches {
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub endpoints: Store<Endpoints>,
    pub configmaps: Store<PartialObjectMeta<ConfigMap>>,
}

impl Caches {
    /// Waits until every cache has completed its first list.
    pub async fn wait_until_ready(&self) -> bool {
        self.services.wait_until_ready().await.is_ok()
            && self.slices.wait_until_ready().await.is_ok()
            && self.endpoints.wait_until_ready().await.is_ok()
            && self.configmaps.wait_until_ready().await.is_ok()
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

/// Starts the four watchers; returns their caches and tasks.
pub(crate) fn start(
    client: &Client,
    namespace: Option<&str>,
    metrics: &AgentMetrics,
    wake: &Arc<Notify>,
    first_seen: &FirstSeen,
) -> (Caches, Vec<JoinHandle<()>>) {
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
        Caches {
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
