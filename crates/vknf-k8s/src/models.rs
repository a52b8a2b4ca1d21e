//! Model ConfigMaps, fetched on demand. The agent watches only ConfigMap metadata (cheap,
//! cluster-wide) and reads the data of the few ConfigMaps a function placed on this host names,
//! again only when their resourceVersion changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use vknf_manifest::FunctionKey;

/// The ConfigMaps of one function, as far as they exist.
#[derive(Debug, Default)]
pub struct FetchedModel {
    /// ConfigMaps found (missing ones are left out: the reader then names them).
    pub configmaps: Vec<Arc<ConfigMap>>,
    /// Time spent reading them from the API server (zero when all were cached).
    pub elapsed: Duration,
}

/// A cache of model ConfigMaps keyed by namespace/name, valid for one resourceVersion.
pub struct ModelCache {
    client: Client,
    cache: BTreeMap<FunctionKey, Arc<ConfigMap>>,
}

impl ModelCache {
    /// An empty cache reading through `client`.
    pub fn new(client: Client) -> ModelCache {
        ModelCache {
            client,
            cache: BTreeMap::new(),
        }
    }

    /// The named ConfigMaps of `namespace`, read from the API server unless the cached copy has
    /// the resourceVersion `metadata` reports. ConfigMaps `metadata` does not know are treated as
    /// missing without asking the API server.
    pub async fn fetch(
        &mut self,
        namespace: &str,
        names: &[String],
        metadata: &Store<PartialObjectMeta<ConfigMap>>,
    ) -> Result<FetchedModel, kube::Error> {
        let mut fetched = FetchedModel::default();
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        for name in names {
            let key = FunctionKey {
                namespace: namespace.to_owned(),
                name: name.clone(),
            };
            let Some(meta) = metadata.get(&ObjectRef::new(name).within(namespace)) else {
                continue;
            };
            let cached = self
                .cache
                .get(&key)
                .filter(|c| c.metadata.resource_version == meta.metadata.resource_version);
            if let Some(cached) = cached {
                fetched.configmaps.push(cached.clone());
                continue;
            }
            let started = Instant::now();
            let configmap = api.get_opt(name).await?;
            fetched.elapsed += started.elapsed();
            if let Some(configmap) = configmap {
                let configmap = Arc::new(configmap);
                self.cache.insert(key, configmap.clone());
                fetched.configmaps.push(configmap);
            }
        }
        Ok(fetched)
    }

    /// Drops cached ConfigMaps no placed function names any more.
    pub fn retain(&mut self, wanted: &BTreeSet<FunctionKey>) {
        self.cache.retain(|key, _| wanted.contains(key));
    }

    /// Number of cached ConfigMaps.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}
