//! Authentication by bearer token, and RBAC authorization (rbac.authorization.k8s.io/v1) of the
//! requests of authenticated users, evaluated from the Roles, ClusterRoles and bindings stored in
//! the fake like any other object.

use serde_json::{Value, json};

use crate::resources::{ResourceTable, ResourceType};
use crate::status::ApiError;
use crate::store::Store;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Who sent a request, as the apiserver's authenticators describe a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The user name, e.g. `system:serviceaccount:vknf-hosts:gpu-1`.
    pub username: String,
    /// The groups the user belongs to.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// A ServiceAccount's identity, with the groups the token authenticator gives it.
    pub fn service_account(namespace: &str, name: &str) -> UserInfo {
        UserInfo {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
        }
    }

    /// A plain user in `groups` (plus `system:authenticated`).
    pub fn user(username: &str, groups: &[&str]) -> UserInfo {
        let mut groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        groups.push("system:authenticated".to_owned());
        UserInfo {
            username: username.to_owned(),
            groups,
        }
    }

    /// The identity of requests without credentials: a cluster administrator, which RBAC never
    /// limits (the fake's behaviour before it had authorization).
    pub(crate) fn admin() -> UserInfo {
        UserInfo::user("system:admin", &["system:masters"])
    }

    pub(crate) fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }

    /// `request.userInfo` of an admission request.
    pub(crate) fn to_json(&self) -> Value {
        json!({ "username": self.username, "groups": self.groups })
    }
}

/// What a resource request asks to do, as RBAC sees it.
#[derive(Debug, Clone)]
pub(crate) struct Attributes<'a> {
    pub verb: &'a str,
    pub resource: &'a ResourceType,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// The resource types RBAC objects are stored as; served when authorization is enforced.
pub(crate) fn rbac_resource_types() -> Vec<ResourceType> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    vec![
        ResourceType::of::<Role>(),
        ResourceType::of::<ClusterRole>(),
        ResourceType::of::<RoleBinding>(),
        ResourceType::of::<ClusterRoleBinding>(),
    ]
}

fn stored(store: &Store, plural: &str, namespace: Option<&str>) -> Vec<Value> {
    let table: &ResourceTable = store.resources();
    match table.find(RBAC_GROUP, "v1", plural) {
        Some(id) => store.snapshot(id, namespace),
        None => Vec::new(),
    }
}

fn strings<'a>(value: &'a Value, field: &str) -> impl Iterator<Item = &'a str> {
    value
        .get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn contains(value: &Value, field: &str, wanted: &str) -> bool {
    strings(value, field).any(|s| s == "*" || s == wanted)
}

/// Whether one PolicyRule allows the request (rbac/v1's `RuleAllows`).
fn rule_allows(rule: &Value, attributes: &Attributes<'_>) -> bool {
    let resource = &attributes.resource.plural;
    let combined = match attributes.subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.clone(),
    };
    let resource_matches = strings(rule, "resources")
        .any(|r| r == "*" || r == combined || attributes.subresource.is_some_and(|sub| r == format!("*/{sub}")));
    let names: Vec<&str> = strings(rule, "resourceNames").collect();
    let name_matches = names.is_empty() || attributes.name.is_some_and(|name| names.contains(&name));
    contains(rule, "verbs", attributes.verb)
        && contains(rule, "apiGroups", &attributes.resource.group)
        && resource_matches
        && name_matches
}

/// Whether a binding's subjects include the user; `binding_namespace` is the RoleBinding's.
fn binds(binding: &Value, user: &UserInfo, binding_namespace: Option<&str>) -> bool {
    let subjects = binding.get("subjects").and_then(Value::as_array).into_iter().flatten();
    subjects.into_iter().any(|subject| {
        let text = |field: &str| subject.get(field).and_then(Value::as_str).unwrap_or_default();
        match text("kind") {
            "User" => text("name") == user.username,
            "Group" => user.groups.iter().any(|g| g == text("name")),
            "ServiceAccount" => {
                let namespace = Some(text("namespace")).filter(|n| !n.is_empty()).or(binding_namespace);
                namespace.is_some_and(|ns| user.username == format!("system:serviceaccount:{ns}:{}", text("name")))
            }
            _ => false,
        }
    })
}

/// The rules a binding's roleRef grants (a RoleBinding may name a Role of its namespace or a
/// ClusterRole; a ClusterRoleBinding only a ClusterRole).
fn granted_rules(store: &Store, binding: &Value, binding_namespace: Option<&str>) -> Vec<Value> {
    let role_ref = &binding["roleRef"];
    let name = role_ref["name"].as_str().unwrap_or_default();
    let role = match (role_ref["kind"].as_str(), binding_namespace) {
        (Some("ClusterRole"), _) => stored(store, "clusterroles", None),
        (Some("Role"), Some(namespace)) => stored(store, "roles", Some(namespace)),
        _ => Vec::new(),
    }
    .into_iter()
    .find(|role| role["metadata"]["name"].as_str() == Some(name));
    role.and_then(|role| role.get("rules").and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

/// Allows the request when a binding of the user grants a rule covering it; otherwise the
/// apiserver's 403 `Forbidden` Status.
pub(crate) fn authorize(store: &Store, user: &UserInfo, attributes: &Attributes<'_>) -> Result<(), ApiError> {
    if user.is_admin() {
        return Ok(());
    }
    let mut bindings: Vec<(Value, Option<String>)> = stored(store, "clusterrolebindings", None)
        .into_iter()
        .map(|b| (b, None))
        .collect();
    if let Some(namespace) = attributes.namespace {
        bindings.extend(
            stored(store, "rolebindings", Some(namespace))
                .into_iter()
                .map(|b| (b, Some(namespace.to_owned()))),
        );
    }
    let allowed = bindings.iter().any(|(binding, namespace)| {
        binds(binding, user, namespace.as_deref())
            && granted_rules(store, binding, namespace.as_deref())
                .iter()
                .any(|rule| rule_allows(rule, attributes))
    });
    if allowed {
        Ok(())
    } else {
        Err(forbidden(user, attributes))
    }
}

/// RBAC's 403, worded like the apiserver's authorization filter.
fn forbidden(user: &UserInfo, attributes: &Attributes<'_>) -> ApiError {
    let resource = attributes.resource;
    let requested = match attributes.subresource {
        Some(sub) => format!("{}/{sub}", resource.plural),
        None => resource.plural.clone(),
    };
    let scope = match attributes.namespace {
        Some(namespace) => format!("in the namespace \"{namespace}\""),
        None => "at the cluster scope".to_owned(),
    };
    let reason = format!(
        "User \"{}\" cannot {} resource \"{requested}\" in API group \"{}\" {scope}",
        user.username, attributes.verb, resource.group
    );
    ApiError::forbidden(resource, attributes.name.unwrap_or_default(), &reason)
}

/// The verb RBAC checks for a resource request.
pub(crate) fn verb(method: &http::Method, has_name: bool, watching: bool) -> &'static str {
    match (method.as_str(), has_name) {
        ("GET", _) if watching => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}
