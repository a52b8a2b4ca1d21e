//! The table of resource types the fake serves, and how each maps onto REST paths.

use std::any::TypeId;

use kube::core::NamespaceResourceScope;

/// One servable resource type (a group/version/plural triple), as discovery would describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the legacy core group (`/api/v1`).
    pub group: String,
    /// API version inside the group, e.g. `v1`.
    pub version: String,
    /// Lower-case plural used in URLs, e.g. `services`.
    pub plural: String,
    /// Kind, e.g. `Service`.
    pub kind: String,
    /// Whether objects live inside a namespace.
    pub namespaced: bool,
    /// Whether a `/status` subresource exists. Writes to the main resource then keep the stored
    /// status, and creates start from an empty status, as the real registry strategies do.
    pub status_subresource: bool,
    /// Whether DELETE answers with the deleted object (true for Services and Pods in the real
    /// apiserver) instead of a `Status` of success.
    pub returns_deleted_object: bool,
}

impl ResourceType {
    /// Describes a typed resource from its `kube::Resource` implementation.
    pub fn of<K>() -> Self
    where
        K: kube::Resource<DynamicType = ()>,
        K::Scope: 'static,
    {
        Self {
            group: K::group(&()).into_owned(),
            version: K::version(&()).into_owned(),
            plural: K::plural(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            namespaced: TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>(),
            status_subresource: false,
            returns_deleted_object: false,
        }
    }

    /// Marks the type as having a `/status` subresource.
    pub fn with_status_subresource(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    /// Makes DELETE answer with the deleted object rather than a `Status`.
    pub fn returning_deleted_object(mut self) -> Self {
        self.returns_deleted_object = true;
        self
    }

    /// `apiVersion` as written in objects: `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`, the form the apiserver uses in error messages.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The types served by default: the ones the vknf node agent touches.
    ///
    /// `Event` is served both as core/v1 and as events.k8s.io/v1, but (unlike the real apiserver)
    /// the two are stored separately: an event written through one API is not visible through
    /// the other.
    pub fn defaults() -> Vec<Self> {
        use k8s_openapi::api::coordination::v1::Lease;
        use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, Service};
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        use k8s_openapi::api::events::v1::Event as EventsV1Event;
        vec![
            Self::of::<Service>()
                .with_status_subresource()
                .returning_deleted_object(),
            Self::of::<Endpoints>(),
            Self::of::<ConfigMap>(),
            Self::of::<Event>(),
            Self::of::<EventsV1Event>(),
            Self::of::<EndpointSlice>(),
            Self::of::<Lease>(),
        ]
    }
}

/// Index of a [`ResourceType`] inside the server's table.
pub(crate) type ResourceId = usize;

/// The registered resource types, looked up by URL or by kind.
#[derive(Debug, Clone)]
pub(crate) struct ResourceTable {
    types: Vec<ResourceType>,
}

impl ResourceTable {
    /// Builds the table; a later entry with the same group/version/plural replaces an earlier one.
    pub(crate) fn new(types: Vec<ResourceType>) -> Self {
        let mut unique: Vec<ResourceType> = Vec::with_capacity(types.len());
        for resource in types {
            match unique.iter_mut().find(|existing| {
                existing.group == resource.group
                    && existing.version == resource.version
                    && existing.plural == resource.plural
            }) {
                Some(existing) => *existing = resource,
                None => unique.push(resource),
            }
        }
        Self { types: unique }
    }

    pub(crate) fn get(&self, id: ResourceId) -> &ResourceType {
        &self.types[id]
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = (ResourceId, &ResourceType)> {
        self.types.iter().enumerate()
    }

    pub(crate) fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceId> {
        self.types
            .iter()
            .position(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Finds the entry for a typed resource, so store helpers can be called with Rust types.
    pub(crate) fn find_typed<K>(&self) -> Option<ResourceId>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        self.find(&K::group(&()), &K::version(&()), &K::plural(&()))
    }

    /// Group/version pairs in registration order, without duplicates.
    pub(crate) fn group_versions(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for r in &self.types {
            let pair = (r.group.clone(), r.version.clone());
            if !pairs.contains(&pair) {
                pairs.push(pair);
            }
        }
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_descriptions_match_the_real_urls() {
        use k8s_openapi::api::coordination::v1::Lease;
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        let lease = ResourceType::of::<Lease>();
        assert_eq!(lease.api_version(), "coordination.k8s.io/v1");
        assert_eq!(lease.plural, "leases");
        assert!(lease.namespaced);
        let slice = ResourceType::of::<EndpointSlice>();
        assert_eq!(slice.qualified_plural(), "endpointslices.discovery.k8s.io");
        let node = ResourceType::of::<k8s_openapi::api::core::v1::Node>();
        assert!(!node.namespaced);
        assert_eq!(node.api_version(), "v1");
    }

    #[test]
    fn later_registrations_replace_earlier_ones() {
        let table = ResourceTable::new(vec![
            ResourceType::of::<k8s_openapi::api::core::v1::Pod>(),
            ResourceType::of::<k8s_openapi::api::core::v1::Pod>().with_status_subresource(),
        ]);
        let id = table.find("", "v1", "pods").expect("pods registered");
        assert!(table.get(id).status_subresource);
        assert_eq!(table.all().count(), 1);
    }
}
