//! Field ownership for server-side apply, kept per object like the apiserver's `managedFields`.
//!
//! Simplification (documented in the crate docs): every list is atomic, so a list is owned and
//! replaced as a whole; real structured-merge-diff merges some lists (ports, containers) by key.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// Path of object keys from the root to a field, e.g. `["metadata", "labels", "app"]`.
pub(crate) type FieldPath = Vec<String>;

/// Whether a field manager wrote with server-side apply or with a create/update/patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "Apply",
            Self::Update => "Update",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct ManagerEntry {
    manager: String,
    operation: Operation,
    api_version: String,
    time: String,
    fields: BTreeSet<FieldPath>,
}

/// Who owns which fields of one stored object.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ManagedFields {
    entries: Vec<ManagerEntry>,
}

/// A write being recorded: who did it, in which API version, and when.
pub(crate) struct Writer<'a> {
    pub(crate) manager: &'a str,
    pub(crate) api_version: &'a str,
    pub(crate) time: &'a str,
}

/// Metadata the server owns; nobody manages these through apply.
const SERVER_OWNED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

fn collect_leaves(value: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match value {
        Value::Object(fields) if !fields.is_empty() => {
            for (key, child) in fields {
                let top_level_identity = path.is_empty() && (key == "apiVersion" || key == "kind");
                let server_metadata =
                    path.len() == 1 && path[0] == "metadata" && SERVER_OWNED_METADATA.contains(&key.as_str());
                if top_level_identity || server_metadata {
                    continue;
                }
                path.push(key.clone());
                collect_leaves(child, path, out);
                path.pop();
            }
        }
        _ if !path.is_empty() => {
            out.insert(path.clone());
        }
        _ => {}
    }
}

/// The user-managed leaf fields of an object: scalars, lists and empty objects.
pub(crate) fn leaf_paths(object: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    collect_leaves(object, &mut Vec::new(), &mut out);
    out
}

fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(object, |current, key| current.as_object()?.get(key))
}

/// One path is a prefix of the other, so writing one changes the other.
fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Removes a field, then any parent objects the removal left empty (below the top level).
fn remove_path(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let Some(Value::Object(parent)) = parents
        .iter()
        .try_fold(&mut *object, |current, key| current.as_object_mut()?.get_mut(key))
    else {
        return;
    };
    parent.remove(last);
    if parent.is_empty() && parents.len() > 1 {
        remove_path(object, parents);
    }
}

/// Adds one path to a FieldsV1 tree (`{"f:spec": {"f:ports": {}}}`).
fn insert_field(tree: &mut Map<String, Value>, path: &[String]) {
    if let Some((first, rest)) = path.split_first() {
        let child = tree
            .entry(format!("f:{first}"))
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(child) = child {
            insert_field(child, rest);
        }
    }
}

/// `.spec.ports` style, as the apiserver prints field paths in conflict messages.
pub(crate) fn display_path(path: &[String]) -> String {
    path.iter().map(|key| format!(".{key}")).collect()
}

impl ManagedFields {
    fn entry_mut(&mut self, writer: &Writer<'_>, operation: Operation) -> &mut ManagerEntry {
        let position = self
            .entries
            .iter()
            .position(|e| e.manager == writer.manager && e.operation == operation);
        let index = match position {
            Some(index) => index,
            None => {
                self.entries.push(ManagerEntry {
                    manager: writer.manager.to_string(),
                    operation,
                    api_version: writer.api_version.to_string(),
                    time: writer.time.to_string(),
                    fields: BTreeSet::new(),
                });
                self.entries.len() - 1
            }
        };
        let entry = &mut self.entries[index];
        entry.api_version = writer.api_version.to_string();
        entry.time = writer.time.to_string();
        entry
    }

    /// Drops ownership of fields that no longer exist and managers that own nothing.
    fn retain_existing(&mut self, object: &Value) {
        for entry in &mut self.entries {
            entry.fields.retain(|path| value_at(object, path).is_some());
        }
        self.entries.retain(|entry| !entry.fields.is_empty());
    }

    /// Records a non-apply write: the writer takes every field it changed or added.
    pub(crate) fn record_update(&mut self, writer: &Writer<'_>, old: Option<&Value>, new: &Value) {
        let changed: BTreeSet<FieldPath> = leaf_paths(new)
            .into_iter()
            .filter(|path| old.and_then(|o| value_at(o, path)) != value_at(new, path))
            .collect();
        if !changed.is_empty() {
            for entry in &mut self.entries {
                entry.fields.retain(|owned| !changed.iter().any(|c| overlaps(c, owned)));
            }
            self.entry_mut(writer, Operation::Update).fields.extend(changed);
        }
        self.retain_existing(new);
    }

    /// Server-side apply of `config` onto `current` (an empty object when creating).
    ///
    /// Returns the merged object and the new ownership, or the `(manager, field)` conflicts
    /// with other managers when `force` is false.
    pub(crate) fn apply(
        &self,
        writer: &Writer<'_>,
        force: bool,
        current: &Value,
        config: &Value,
    ) -> Result<(Value, ManagedFields), Vec<(String, String)>> {
        let applied = leaf_paths(config);
        let is_self = |e: &ManagerEntry| e.manager == writer.manager && e.operation == Operation::Apply;
        let previously_applied = self
            .entries
            .iter()
            .find(|e| is_self(e))
            .map(|e| e.fields.clone())
            .unwrap_or_default();

        let mut result = current.clone();
        for dropped in previously_applied.difference(&applied) {
            let shared = self.entries.iter().any(|e| !is_self(e) && e.fields.contains(dropped));
            if !shared {
                remove_path(&mut result, dropped);
            }
        }
        crate::patch::deep_merge(&mut result, config);

        let mut next = self.clone();
        let mut conflicts = Vec::new();
        for entry in next.entries.iter_mut().filter(|e| !is_self(e)) {
            // A manager's own earlier updates never conflict with its applies.
            let same_manager = entry.manager == writer.manager;
            entry.fields.retain(|owned| {
                let touched = applied.iter().any(|a| overlaps(a, owned));
                if !touched || value_at(current, owned) == value_at(&result, owned) {
                    return true;
                }
                if !force && !same_manager {
                    conflicts.push((entry.manager.clone(), display_path(owned)));
                }
                false
            });
        }
        if !conflicts.is_empty() {
            return Err(conflicts);
        }
        next.entry_mut(writer, Operation::Apply).fields = applied;
        next.retain_existing(&result);
        Ok((result, next))
    }

    /// Same managers owning the same fields, ignoring timestamps: a write that changes
    /// nothing else is then a no-op.
    pub(crate) fn same_ownership(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.manager == b.manager && a.operation == b.operation && a.fields == b.fields)
    }

    /// The `metadata.managedFields` list, in the apiserver's FieldsV1 format.
    pub(crate) fn render(&self) -> Value {
        Value::Array(
            self.entries
                .iter()
                .map(|entry| {
                    let mut tree = Map::new();
                    for path in &entry.fields {
                        insert_field(&mut tree, path);
                    }
                    json!({
                        "manager": entry.manager,
                        "operation": entry.operation.as_str(),
                        "apiVersion": entry.api_version,
                        "time": entry.time,
                        "fieldsType": "FieldsV1",
                        "fieldsV1": Value::Object(tree),
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "v1",
            time: "2025-01-01T00:00:00Z",
        }
    }

    #[test]
    fn leaves_skip_identity_and_server_metadata() {
        let object = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "resourceVersion": "3", "labels": {"a": "1"}},
            "data": {"k": "v"}, "list": [1], "empty": {}
        });
        let paths: Vec<String> = leaf_paths(&object).iter().map(|p| display_path(p)).collect();
        assert_eq!(paths, vec![".data.k", ".empty", ".list", ".metadata.labels.a"]);
    }

    #[test]
    fn reapplying_without_a_field_removes_it() {
        let owned = ManagedFields::default();
        let config = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let (object, owned) = owned
            .apply(&writer("agent"), false, &json!({}), &config)
            .expect("no conflicts on create");
        let (object, _) = owned
            .apply(
                &writer("agent"),
                false,
                &object,
                &json!({"metadata": {"labels": {"a": "1"}}}),
            )
            .expect("no conflicts");
        assert_eq!(object, json!({"metadata": {"labels": {"a": "1"}}}));
    }

    #[test]
    fn applying_over_another_managers_value_conflicts_unless_forced() {
        let mut owned = ManagedFields::default();
        let object = json!({"data": {"k": "mine"}});
        owned.record_update(&writer("editor"), None, &object);
        let config = json!({"data": {"k": "theirs"}});
        let conflicts = owned
            .apply(&writer("agent"), false, &object, &config)
            .expect_err("value owned by editor");
        assert_eq!(conflicts, vec![("editor".to_string(), ".data.k".to_string())]);
        // Same value: shared ownership, no conflict.
        owned
            .apply(&writer("agent"), false, &object, &object)
            .expect("same value is not a conflict");
        let (forced, after) = owned
            .apply(&writer("agent"), true, &object, &config)
            .expect("force takes ownership");
        assert_eq!(forced, config);
        let rendered = after.render();
        assert_eq!(rendered.as_array().map(Vec::len), Some(1));
        assert_eq!(rendered[0]["manager"], "agent");
        assert_eq!(rendered[0]["fieldsV1"], json!({"f:data": {"f:k": {}}}));
    }

    #[test]
    fn fields_kept_by_other_managers_survive_a_reapply() {
        let owned = ManagedFields::default();
        let (object, owned) = owned
            .apply(&writer("a"), false, &json!({}), &json!({"data": {"k": "v"}}))
            .expect("create");
        let (object, owned) = owned
            .apply(&writer("b"), false, &object, &json!({"data": {"k": "v"}}))
            .expect("shared");
        let (object, _) = owned
            .apply(&writer("a"), false, &object, &json!({"data": {"other": "x"}}))
            .expect("a drops k");
        assert_eq!(object, json!({"data": {"k": "v", "other": "x"}}));
    }
}
