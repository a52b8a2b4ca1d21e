//! Discovery documents (`/version`, `/api`, `/apis`, resource lists), built from the table.

use serde_json::{Value, json};

use crate::resources::ResourceTable;
use crate::status::ApiError;

/// The Kubernetes minor version matching the k8s-openapi feature the workspace compiled.
fn served_minor_version() -> u32 {
    let mut minor = 0;
    k8s_openapi::k8s_if_ge_1_33! { minor = minor.max(33); }
    k8s_openapi::k8s_if_ge_1_34! { minor = minor.max(34); }
    k8s_openapi::k8s_if_ge_1_35! { minor = minor.max(35); }
    k8s_openapi::k8s_if_ge_1_36! { minor = minor.max(36); }
    k8s_openapi::k8s_if_ge_1_37! { minor = minor.max(37); }
    minor
}

/// `/version`.
pub(crate) fn version() -> Value {
    let minor = served_minor_version();
    json!({
        "major": "1",
        "minor": minor.to_string(),
        "gitVersion": format!("v1.{minor}.0-vknf-fake"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "none",
        "compiler": "rust",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

/// `/api`: the legacy core group's versions.
pub(crate) fn core_versions(table: &ResourceTable, server_address: &str) -> Value {
    let versions: Vec<String> = table
        .group_versions()
        .into_iter()
        .filter(|(group, _)| group.is_empty())
        .map(|(_, version)| version)
        .collect();
    json!({
        "kind": "APIVersions",
        "versions": versions,
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }],
    })
}

fn group_document(table: &ResourceTable, group: &str) -> Option<Value> {
    let versions: Vec<Value> = table
        .group_versions()
        .into_iter()
        .filter(|(g, _)| g == group)
        .map(|(g, v)| json!({ "groupVersion": format!("{g}/{v}"), "version": v }))
        .collect();
    let preferred = versions.first()?.clone();
    Some(json!({
        "name": group,
        "versions": versions,
        "preferredVersion": preferred,
    }))
}

/// `/apis`: every named group.
pub(crate) fn group_list(table: &ResourceTable) -> Value {
    let mut names: Vec<String> = Vec::new();
    for (group, _) in table.group_versions() {
        if !group.is_empty() && !names.contains(&group) {
            names.push(group);
        }
    }
    let groups: Vec<Value> = names.iter().filter_map(|group| group_document(table, group)).collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// `/apis/{group}`.
pub(crate) fn group(table: &ResourceTable, group: &str) -> Result<Value, ApiError> {
    let mut document = group_document(table, group).ok_or_else(ApiError::unknown_path)?;
    document["kind"] = json!("APIGroup");
    document["apiVersion"] = json!("v1");
    Ok(document)
}

/// `/api/v1` or `/apis/{group}/{version}`: the resources and verbs served there.
pub(crate) fn resource_list(table: &ResourceTable, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for (_, resource) in table.all().filter(|(_, r)| r.group == group && r.version == version) {
        resources.push(json!({
            "name": resource.plural,
            "singularName": resource.kind.to_lowercase(),
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }));
        if resource.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", resource.plural),
                "singularName": "",
                "namespaced": resource.namespaced,
                "kind": resource.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ResourceType;

    #[test]
    fn documents_describe_the_served_types() {
        let table = ResourceTable::new(ResourceType::defaults());
        assert_eq!(core_versions(&table, "127.0.0.1:1")["versions"], json!(["v1"]));
        let groups = group_list(&table);
        let names: Vec<&str> = groups["groups"]
            .as_array()
            .map(|g| g.iter().filter_map(|g| g["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, vec!["events.k8s.io", "discovery.k8s.io", "coordination.k8s.io"]);
        let core = resource_list(&table, "", "v1");
        let plurals: Vec<&str> = core["resources"]
            .as_array()
            .map(|r| r.iter().filter_map(|r| r["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            plurals,
            vec!["services", "services/status", "endpoints", "configmaps", "events"]
        );
        assert!(group(&table, "apps").is_err());
        assert!(served_minor_version() >= 33);
    }
}
