//! Maps request paths onto discovery documents, collections and items.

use crate::resources::{ResourceId, ResourceTable};
use crate::status::ApiError;
use crate::store::Target;

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Route {
    /// `/version`
    Version,
    /// `/api`
    CoreVersions,
    /// `/apis`
    GroupList,
    /// `/apis/{group}`
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`
    ResourceList { group: String, version: String },
    /// A collection, in one namespace or across all of them.
    Collection {
        resource: ResourceId,
        namespace: Option<String>,
    },
    /// One object, or its status subresource.
    Item {
        resource: ResourceId,
        namespace: Option<String>,
        name: String,
        target: Target,
    },
}

/// Resolves `path` against the served resource types.
pub(crate) fn route(table: &ResourceTable, path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::GroupList),
        ["apis", group] => return Ok(Route::Group((*group).to_string())),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::unknown_path()),
    };
    let known_version = table.group_versions().iter().any(|(g, v)| g == group && v == version);
    if !known_version {
        return Err(ApiError::unknown_path());
    }
    let find = |plural: &str, namespaced: bool| {
        table
            .find(group, version, plural)
            .filter(|id| table.get(*id).namespaced == namespaced)
            .ok_or_else(ApiError::unknown_path)
    };
    let status_target = |id: ResourceId, sub: &str| {
        if sub == "status" && table.get(id).status_subresource {
            Ok(Target::Status)
        } else {
            Err(ApiError::unknown_path())
        }
    };
    let item = |resource, namespace: Option<&str>, name: &str, target| Route::Item {
        resource,
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
        target,
    };
    match rest {
        [] => Ok(Route::ResourceList {
            group: group.to_string(),
            version: version.to_string(),
        }),
        // `/namespaces/{ns}/...` is a namespaced path unless it is the Namespace resource itself.
        ["namespaces", namespace, plural, tail @ ..] => {
            let resource = find(plural, true)?;
            match tail {
                [] => Ok(Route::Collection {
                    resource,
                    namespace: Some((*namespace).to_string()),
                }),
                [name] => Ok(item(resource, Some(namespace), name, Target::Main)),
                [name, sub] => Ok(item(resource, Some(namespace), name, status_target(resource, sub)?)),
                _ => Err(ApiError::unknown_path()),
            }
        }
        [plural] => {
            // All-namespaces lists/watches of namespaced types use the same shape as
            // cluster-scoped collections.
            let resource = table.find(group, version, plural).ok_or_else(ApiError::unknown_path)?;
            Ok(Route::Collection {
                resource,
                namespace: None,
            })
        }
        [plural, name] => Ok(item(find(plural, false)?, None, name, Target::Main)),
        [plural, name, sub] => {
            let resource = find(plural, false)?;
            Ok(item(resource, None, name, status_target(resource, sub)?))
        }
        _ => Err(ApiError::unknown_path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ResourceType;

    fn table() -> ResourceTable {
        let mut types = ResourceType::defaults();
        types.push(ResourceType::of::<k8s_openapi::api::core::v1::Node>());
        ResourceTable::new(types)
    }

    #[test]
    fn namespaced_and_cluster_paths_resolve() {
        let table = table();
        let services = table.find("", "v1", "services").expect("services");
        assert_eq!(
            route(&table, "/api/v1/namespaces/ns/services/web/status"),
            Ok(Route::Item {
                resource: services,
                namespace: Some("ns".into()),
                name: "web".into(),
                target: Target::Status,
            })
        );
        assert_eq!(
            route(&table, "/api/v1/services"),
            Ok(Route::Collection {
                resource: services,
                namespace: None
            })
        );
        let slices = table.find("discovery.k8s.io", "v1", "endpointslices").expect("slices");
        assert_eq!(
            route(&table, "/apis/discovery.k8s.io/v1/namespaces/x/endpointslices"),
            Ok(Route::Collection {
                resource: slices,
                namespace: Some("x".into())
            })
        );
        let nodes = table.find("", "v1", "nodes").expect("nodes");
        assert_eq!(
            route(&table, "/api/v1/nodes/n1"),
            Ok(Route::Item {
                resource: nodes,
                namespace: None,
                name: "n1".into(),
                target: Target::Main
            })
        );
    }

    #[test]
    fn unknown_and_mis_scoped_paths_are_404() {
        let table = table();
        for path in [
            "/api/v2/services",
            "/api/v1/pods",
            "/api/v1/services/web",
            "/api/v1/namespaces/ns/nodes",
            "/api/v1/namespaces/ns/configmaps/x/status",
            "/apis/apps/v1/deployments",
            "/healthz/x",
        ] {
            assert_eq!(route(&table, path).map_err(|e| e.code), Err(404), "{path}");
        }
    }
}
