//! Patch formats: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).

use serde_json::{Map, Value};

/// Why a patch could not be applied; the server turns this into a 422 or 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PatchError {
    /// The patch document is not of the expected JSON shape.
    #[error("invalid patch document: {0}")]
    Malformed(String),
    /// A JSON patch operation addressed a location that does not exist.
    #[error("json patch operation {index} ({op}) failed: {reason}")]
    OperationFailed { index: usize, op: String, reason: String },
}

/// Applies an RFC 7386 merge patch: objects merge recursively, `null` deletes, the rest replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch_fields) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(target_fields) = target {
                for (key, patch_value) in patch_fields {
                    if patch_value.is_null() {
                        target_fields.remove(key);
                    } else {
                        let slot = target_fields.entry(key.clone()).or_insert(Value::Null);
                        merge_patch(slot, patch_value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Decodes one RFC 6901 pointer token.
fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Splits a pointer into its parent's tokens and the last token.
fn split_pointer(pointer: &str) -> Result<(Vec<String>, String), String> {
    if pointer.is_empty() {
        return Err("the root document cannot be the target of this operation".into());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("pointer \"{pointer}\" does not start with '/'"))?;
    let mut tokens: Vec<String> = rest.split('/').map(unescape).collect();
    let last = tokens.pop().unwrap_or_default();
    Ok((tokens, last))
}

fn resolve_mut<'a>(root: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut current = root;
    for token in tokens {
        current = match current {
            Value::Object(fields) => fields
                .get_mut(token)
                .ok_or_else(|| format!("path segment \"{token}\" does not exist"))?,
            Value::Array(items) => {
                let index: usize = token
                    .parse()
                    .map_err(|_| format!("\"{token}\" is not an array index"))?;
                items
                    .get_mut(index)
                    .ok_or_else(|| format!("array index {index} is out of range"))?
            }
            _ => return Err(format!("path segment \"{token}\" is inside a scalar")),
        };
    }
    Ok(current)
}

fn add(root: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    if pointer.is_empty() {
        *root = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(pointer)?;
    match resolve_mut(root, &parent)? {
        Value::Object(fields) => {
            fields.insert(last, value);
            Ok(())
        }
        Value::Array(items) => {
            let index = if last == "-" {
                items.len()
            } else {
                last.parse().map_err(|_| format!("\"{last}\" is not an array index"))?
            };
            if index > items.len() {
                return Err(format!("array index {index} is out of range"));
            }
            items.insert(index, value);
            Ok(())
        }
        _ => Err("the parent of the target is a scalar".into()),
    }
}

fn remove(root: &mut Value, pointer: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(pointer)?;
    match resolve_mut(root, &parent)? {
        Value::Object(fields) => fields
            .remove(&last)
            .ok_or_else(|| format!("path \"{pointer}\" does not exist")),
        Value::Array(items) => {
            let index: usize = last.parse().map_err(|_| format!("\"{last}\" is not an array index"))?;
            if index >= items.len() {
                return Err(format!("array index {index} is out of range"));
            }
            Ok(items.remove(index))
        }
        _ => Err("the parent of the target is a scalar".into()),
    }
}

fn read(root: &Value, pointer: &str) -> Result<Value, String> {
    root.pointer(pointer)
        .cloned()
        .ok_or_else(|| format!("path \"{pointer}\" does not exist"))
}

fn apply_operation(root: &mut Value, operation: &Map<String, Value>) -> Result<(), String> {
    let string_field = |name: &str| {
        operation
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("missing string field \"{name}\""))
    };
    let path = string_field("path")?;
    let value = || {
        operation
            .get("value")
            .cloned()
            .ok_or_else(|| "missing field \"value\"".to_string())
    };
    match string_field("op")? {
        "add" => add(root, path, value()?),
        "remove" => remove(root, path).map(drop),
        "replace" => {
            let slot = root
                .pointer_mut(path)
                .ok_or_else(|| format!("path \"{path}\" does not exist"))?;
            *slot = value()?;
            Ok(())
        }
        "move" => {
            let from = string_field("from")?;
            if path.starts_with(&format!("{from}/")) {
                return Err("cannot move a value into one of its children".into());
            }
            let moved = remove(root, from)?;
            add(root, path, moved)
        }
        "copy" => {
            let copied = read(root, string_field("from")?)?;
            add(root, path, copied)
        }
        "test" => {
            let expected = value()?;
            if read(root, path)? == expected {
                Ok(())
            } else {
                Err(format!("value at \"{path}\" differs from the expected value"))
            }
        }
        other => Err(format!("unknown operation \"{other}\"")),
    }
}

/// Applies an RFC 6902 JSON patch atomically: either every operation succeeds or `target` is untouched.
pub(crate) fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let operations = patch
        .as_array()
        .ok_or_else(|| PatchError::Malformed("a JSON patch must be an array".into()))?;
    let mut working = target.clone();
    for (index, operation) in operations.iter().enumerate() {
        let fields = operation
            .as_object()
            .ok_or_else(|| PatchError::Malformed(format!("operation {index} is not an object")))?;
        apply_operation(&mut working, fields).map_err(|reason| PatchError::OperationFailed {
            index,
            op: fields.get("op").and_then(Value::as_str).unwrap_or("?").to_string(),
            reason,
        })?;
    }
    *target = working;
    Ok(())
}

/// Merges `overlay` into `target` for server-side apply: objects merge recursively, any other
/// value (lists included, which this fake treats as atomic) replaces what was there.
pub(crate) fn deep_merge(target: &mut Value, overlay: &Value) {
    match (target, overlay) {
        (Value::Object(target_fields), Value::Object(overlay_fields)) => {
            for (key, value) in overlay_fields {
                match target_fields.get_mut(key) {
                    Some(existing) => deep_merge(existing, value),
                    None => {
                        target_fields.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, overlay) => *target = overlay.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386_examples() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        let mut doc = json!({"a": [{"b": "c"}]});
        merge_patch(&mut doc, &json!({"a": [1]}));
        assert_eq!(doc, json!({"a": [1]}));
        let mut doc = json!({"a": "foo"});
        merge_patch(&mut doc, &json!({"a": {"b": "c"}}));
        assert_eq!(doc, json!({"a": {"b": "c"}}));
    }

    #[test]
    fn json_patch_supports_all_operations() {
        let mut doc = json!({"spec": {"ports": [{"port": 80}], "x": 1}, "metadata": {"labels": {"a/b": "c"}}});
        let patch = json!([
            {"op": "test", "path": "/spec/x", "value": 1},
            {"op": "add", "path": "/spec/ports/-", "value": {"port": 443}},
            {"op": "replace", "path": "/spec/ports/0/port", "value": 8080},
            {"op": "copy", "from": "/spec/x", "path": "/spec/y"},
            {"op": "move", "from": "/spec/x", "path": "/spec/z"},
            {"op": "remove", "path": "/metadata/labels/a~1b"},
        ]);
        json_patch(&mut doc, &patch).expect("patch applies");
        assert_eq!(
            doc,
            json!({"spec": {"ports": [{"port": 8080}, {"port": 443}], "y": 1, "z": 1}, "metadata": {"labels": {}}})
        );
    }

    #[test]
    fn failed_json_patch_leaves_the_target_untouched() {
        let mut doc = json!({"a": 1});
        let error = json_patch(
            &mut doc,
            &json!([{"op": "replace", "path": "/a", "value": 2}, {"op": "test", "path": "/a", "value": 3}]),
        )
        .expect_err("test op fails");
        assert!(matches!(error, PatchError::OperationFailed { index: 1, .. }));
        assert_eq!(doc, json!({"a": 1}));
        assert!(matches!(
            json_patch(&mut doc, &json!({"op": "add"})),
            Err(PatchError::Malformed(_))
        ));
    }

    #[test]
    fn deep_merge_keeps_unmentioned_fields_and_replaces_lists() {
        let mut doc = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [1, 2], "keep": true}});
        deep_merge(
            &mut doc,
            &json!({"metadata": {"labels": {"b": "2"}}, "spec": {"ports": [3]}}),
        );
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"ports": [3], "keep": true}})
        );
    }
}
