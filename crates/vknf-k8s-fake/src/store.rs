//! The object store: one global revision counter, a change history for watches, compaction.
//!
//! Every write bumps the revision (like etcd) and is recorded as a [`Change`]; watches replay
//! history after their starting revision and then receive live changes. Everything happens
//! under one mutex, so a watch registration sees no gap between replay and live delivery.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::admission::{self, Allocator};
use crate::object::{
    desired_state, generated_suffix, has_finalizers, meta_str, new_uid, now_rfc3339, remove_meta, set_meta,
};
use crate::ownership::{ManagedFields, Writer};
use crate::patch::{PatchError, json_patch, merge_patch};
use crate::resources::{ResourceId, ResourceTable, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;

/// Where an object lives: resource type, namespace ("" when cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ObjectKey {
    pub(crate) resource: ResourceId,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

#[derive(Debug, Clone)]
struct StoredObject {
    object: Value,
    fields: ManagedFields,
}

/// What a change did to its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed write, as watches see it.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) revision: u64,
    pub(crate) key: ObjectKey,
    pub(crate) kind: ChangeKind,
    /// The object after the change; for deletions, its last state stamped with the deletion revision.
    pub(crate) object: Value,
    /// The object before the change (`None` for additions).
    pub(crate) previous: Option<Value>,
}

/// What a watch stream receives after its initial events.
#[derive(Debug, Clone)]
pub(crate) enum WatchSignal {
    Change(Arc<Change>),
    /// A bookmark at this revision; everything up to it has been delivered before it.
    Bookmark(u64),
    /// End the stream now, as an apiserver restart or watch-cache reset would.
    End,
}

struct Watcher {
    resource: ResourceId,
    namespace: Option<String>,
    wants_bookmarks: bool,
    sender: mpsc::UnboundedSender<WatchSignal>,
}

struct State {
    revision: u64,
    /// Revisions below this are compacted away: watching or listing from them is 410 Gone.
    compacted: u64,
    objects: BTreeMap<ObjectKey, StoredObject>,
    history: Vec<Arc<Change>>,
    watchers: Vec<Watcher>,
    allocator: Allocator,
}

/// Who is writing and how, from the request's query and headers.
#[derive(Debug, Clone)]
pub(crate) struct WriteContext {
    pub(crate) manager: String,
    pub(crate) dry_run: bool,
    /// The admission policies in force for the request (`None`: writes by the test itself).
    pub(crate) admission: Option<Arc<dyn WriteCheck>>,
}

/// Validating admission of one request's writes: sees each object after defaulting, before it
/// is stored (`object` is `None` for a delete, `old_object` for a create).
pub(crate) trait WriteCheck: Send + Sync + std::fmt::Debug {
    /// `Err` refuses the write with that Status.
    fn validate(
        &self,
        resource: &ResourceType,
        operation: &str,
        namespace: Option<&str>,
        name: &str,
        object: Option<&Value>,
        old_object: Option<&Value>,
    ) -> Result<(), ApiError>;
}

/// Which part of the object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Main,
    Status,
}

/// A PATCH body, by content type.
#[derive(Debug, Clone)]
pub(crate) enum PatchBody {
    Merge(Value),
    /// Strategic merge patch; applied as a JSON merge patch (lists are replaced, not merged by key).
    Strategic(Value),
    Json(Value),
    Apply {
        config: Value,
        force: bool,
    },
}

/// The patch formats that modify an existing object (everything but apply).
enum MutationPatch {
    Merge(Value),
    Strategic(Value),
    Json(Value),
}

/// Parameters of a list request.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListQuery {
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
    pub(crate) limit: Option<usize>,
    pub(crate) continue_token: Option<String>,
    pub(crate) resource_version: Option<String>,
    pub(crate) version_match: Option<String>,
}

/// One page of a list.
#[derive(Debug)]
pub(crate) struct ListPage {
    pub(crate) revision: u64,
    pub(crate) items: Vec<Value>,
    pub(crate) continue_token: Option<String>,
    pub(crate) remaining: Option<usize>,
}

/// Parameters of a watch request.
#[derive(Debug, Clone, Default)]
pub(crate) struct WatchQuery {
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
    pub(crate) resource_version: Option<String>,
    pub(crate) send_initial_events: bool,
    pub(crate) bookmarks: bool,
}

/// One event to write before live changes: a synthetic ADDED, a replayed change or a bookmark.
#[derive(Debug, Clone)]
pub(crate) enum InitialEvent {
    Added(Value),
    Replayed(Arc<Change>),
    InitialEventsEnd(u64),
}

/// A registered watch: what to send first, then where live signals arrive.
pub(crate) struct Subscription {
    pub(crate) initial: Vec<InitialEvent>,
    pub(crate) signals: mpsc::UnboundedReceiver<WatchSignal>,
    /// Set when the watch cannot start (too old / too new); sent as an ERROR event.
    pub(crate) error: Option<ApiError>,
}

/// The result of a DELETE.
#[derive(Debug)]
pub(crate) enum Deletion {
    /// The object is gone; this is its final state.
    Deleted(Value),
    /// Finalizers hold the object; it now carries a deletionTimestamp.
    Pending(Value),
}

/// Options from a DELETE body (`DeleteOptions`).
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOptions {
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: Option<String>,
    pub(crate) dry_run: bool,
}

fn malformed(resource: &ResourceType, name: &str, error: &PatchError) -> ApiError {
    match error {
        PatchError::Malformed(message) => ApiError::bad_request(message.clone()),
        PatchError::OperationFailed { .. } => ApiError::invalid(resource, name, &[("patch".into(), error.to_string())]),
    }
}

fn encode_continue(revision: u64, after: &ObjectKey) -> String {
    let raw = json!([revision, after.namespace, after.name]).to_string();
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Option<(u64, String, String)> {
    if token.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let parsed: (u64, String, String) = serde_json::from_slice(&bytes?).ok()?;
    Some(parsed)
}

fn parse_revision(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version \"{text}\"")))
}

/// Checks `apiVersion`/`kind` of a request body, filling them in when absent.
fn check_type_meta(resource: &ResourceType, object: &mut Value) -> Result<(), ApiError> {
    let api_version = resource.api_version();
    let fields = object
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    for (field, expected) in [("apiVersion", api_version.as_str()), ("kind", &resource.kind)] {
        match fields.get(field) {
            None | Some(Value::Null) => {
                fields.insert(field.into(), json!(expected));
            }
            Some(Value::String(actual)) if actual == expected => {}
            Some(actual) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({}) does not match the expected API version ({})",
                    if field == "kind" {
                        format!("{actual} kind")
                    } else {
                        actual.to_string()
                    },
                    if field == "kind" {
                        format!("{expected} kind")
                    } else {
                        expected.to_string()
                    },
                )));
            }
        }
    }
    Ok(())
}

/// Decides the namespace of a write from the URL and the body, as the apiserver does.
fn namespace_for(
    resource: &ResourceType,
    path_namespace: Option<&str>,
    object: &mut Value,
) -> Result<String, ApiError> {
    if !resource.namespaced {
        remove_meta(object, "namespace");
        return Ok(String::new());
    }
    let path_namespace = path_namespace
        .ok_or_else(|| ApiError::method_not_allowed("namespaced resources are written through namespaced URLs"))?;
    match meta_str(object, "namespace") {
        None | Some("") => {
            set_meta(object, "namespace", json!(path_namespace));
            Ok(path_namespace.to_string())
        }
        Some(ns) if ns == path_namespace => Ok(ns.to_string()),
        Some(_) => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
    }
}

/// Body of a write before it becomes a stored object: server-owned metadata is the server's.
fn strip_server_fields(object: &mut Value) {
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "managedFields",
        "selfLink",
    ] {
        remove_meta(object, field);
    }
}

/// How a watch filter sees one change, with the apiserver's selector-transition rules.
pub(crate) fn filter_change(
    change: &Change,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<(&'static str, Value)> {
    let matches = |object: &Value| labels.matches(object) && fields.matches(object);
    match change.kind {
        ChangeKind::Added => matches(&change.object).then(|| ("ADDED", change.object.clone())),
        ChangeKind::Deleted => matches(&change.object).then(|| ("DELETED", change.object.clone())),
        ChangeKind::Modified => {
            let now = matches(&change.object);
            let before = change.previous.as_ref().is_some_and(matches);
            match (before, now) {
                (true, true) => Some(("MODIFIED", change.object.clone())),
                (false, true) => Some(("ADDED", change.object.clone())),
                (true, false) => {
                    // Leaving the selection is a deletion of the old state at the new revision.
                    let mut old = change.previous.clone().unwrap_or(Value::Null);
                    set_meta(&mut old, "resourceVersion", json!(change.revision.to_string()));
                    Some(("DELETED", old))
                }
                (false, false) => None,
            }
        }
    }
}

/// The in-memory apiserver state.
pub(crate) struct Store {
    resources: ResourceTable,
    state: Mutex<State>,
}

impl Store {
    pub(crate) fn new(resources: ResourceTable) -> Self {
        Self {
            resources,
            state: Mutex::new(State {
                revision: 1,
                compacted: 0,
                objects: BTreeMap::new(),
                history: Vec::new(),
                watchers: Vec::new(),
                allocator: Allocator::default(),
            }),
        }
    }

    pub(crate) fn resources(&self) -> &ResourceTable {
        &self.resources
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than refusing every later request would, so keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The latest revision.
    pub(crate) fn revision(&self) -> u64 {
        self.lock().revision
    }

    fn commit(
        &self,
        state: &mut State,
        key: ObjectKey,
        kind: ChangeKind,
        mut object: Value,
        previous: Option<Value>,
        fields: ManagedFields,
    ) -> Value {
        state.revision += 1;
        let revision = state.revision;
        set_meta(&mut object, "resourceVersion", json!(revision.to_string()));
        match kind {
            ChangeKind::Deleted => {
                state.objects.remove(&key);
                state.allocator.release(self.resources.get(key.resource), &object);
            }
            ChangeKind::Added | ChangeKind::Modified => {
                state.objects.insert(
                    key.clone(),
                    StoredObject {
                        object: object.clone(),
                        fields,
                    },
                );
            }
        }
        let change = Arc::new(Change {
            revision,
            key,
            kind,
            object: object.clone(),
            previous,
        });
        state.history.push(Arc::clone(&change));
        state.watchers.retain(|watcher| {
            let interested = watcher.resource == change.key.resource
                && watcher.namespace.as_ref().is_none_or(|ns| *ns == change.key.namespace);
            !interested || watcher.sender.send(WatchSignal::Change(Arc::clone(&change))).is_ok()
        });
        object
    }

    fn key(&self, resource: ResourceId, namespace: Option<&str>, name: &str) -> ObjectKey {
        let namespaced = self.resources.get(resource).namespaced;
        ObjectKey {
            resource,
            namespace: if namespaced {
                namespace.unwrap_or_default().to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }

    /// GET of one object.
    pub(crate) fn get(&self, resource: ResourceId, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let key = self.key(resource, namespace, name);
        self.lock()
            .objects
            .get(&key)
            .map(|stored| stored.object.clone())
            .ok_or_else(|| ApiError::not_found(self.resources.get(resource), name))
    }

    /// Finishes a new object (server metadata, defaults, validation) and stores it.
    fn insert_new(
        &self,
        state: &mut State,
        key: ObjectKey,
        mut object: Value,
        fields: Option<ManagedFields>,
        context: &WriteContext,
    ) -> Result<Value, ApiError> {
        let resource = self.resources.get(key.resource);
        if state.objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource, &key.name));
        }
        strip_server_fields(&mut object);
        set_meta(&mut object, "name", json!(key.name));
        set_meta(&mut object, "uid", json!(new_uid()));
        let now = now_rfc3339();
        set_meta(&mut object, "creationTimestamp", json!(now));
        set_meta(&mut object, "generation", json!(1));
        if resource.status_subresource {
            // Registries with a status subresource ignore status sent on create.
            let initial_status = if resource.group.is_empty() && resource.kind == "Service" {
                json!({"loadBalancer": {}})
            } else {
                json!({})
            };
            if let Some(fields) = object.as_object_mut() {
                fields.insert("status".into(), initial_status);
            }
        }
        admission::admit(resource, &mut object, None, &mut state.allocator)?;
        if let Some(policies) = &context.admission {
            let namespace = Some(key.namespace.as_str()).filter(|n| !n.is_empty());
            if let Err(denied) = policies.validate(resource, "CREATE", namespace, &key.name, Some(&object), None) {
                state.allocator.release(resource, &object);
                return Err(denied);
            }
        }
        let fields = fields.unwrap_or_else(|| {
            let mut fields = ManagedFields::default();
            let writer = Writer {
                manager: &context.manager,
                api_version: &resource.api_version(),
                time: &now,
            };
            fields.record_update(&writer, None, &object);
            fields
        });
        set_managed_fields(&mut object, &fields);
        if context.dry_run {
            state.allocator.release(resource, &object);
            return Ok(object);
        }
        Ok(self.commit(state, key, ChangeKind::Added, object, None, fields))
    }

    /// POST to a collection.
    pub(crate) fn create(
        &self,
        resource: ResourceId,
        namespace: Option<&str>,
        mut object: Value,
        context: &WriteContext,
    ) -> Result<Value, ApiError> {
        let resource_type = self.resources.get(resource);
        check_type_meta(resource_type, &mut object)?;
        let namespace = namespace_for(resource_type, namespace, &mut object)?;
        if meta_str(&object, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match (meta_str(&object, "name"), meta_str(&object, "generateName")) {
            (Some(name), _) if !name.is_empty() => name.to_string(),
            (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", generated_suffix()),
            _ => {
                return Err(ApiError::invalid(
                    resource_type,
                    "",
                    &[(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
        };
        admission::validate_name(resource_type, &name)?;
        let key = ObjectKey {
            resource,
            namespace,
            name,
        };
        let mut state = self.lock();
        self.insert_new(&mut state, key, object, None, context)
    }

    /// Completes an update of an existing object and commits it unless nothing changed.
    fn finish_update(
        &self,
        state: &mut State,
        key: ObjectKey,
        mut object: Value,
        fields: ManagedFields,
        context: &WriteContext,
    ) -> Result<Value, ApiError> {
        let resource = self.resources.get(key.resource);
        let Some(old) = state.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(resource, &key.name));
        };
        // The server owns identity and lifecycle metadata; clients cannot change them.
        strip_server_fields(&mut object);
        set_meta(&mut object, "name", json!(key.name));
        if resource.namespaced {
            set_meta(&mut object, "namespace", json!(key.namespace));
        }
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            if let Some(value) = old.object.get("metadata").and_then(|m| m.get(field)) {
                set_meta(&mut object, field, value.clone());
            }
        }
        set_meta(
            &mut object,
            "resourceVersion",
            old.object["metadata"]["resourceVersion"].clone(),
        );
        admission::admit(resource, &mut object, Some(&old.object), &mut state.allocator)?;
        if let Some(policies) = &context.admission {
            let namespace = Some(key.namespace.as_str()).filter(|n| !n.is_empty());
            policies.validate(
                resource,
                "UPDATE",
                namespace,
                &key.name,
                Some(&object),
                Some(&old.object),
            )?;
        }
        let generation = old
            .object
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let spec_changed = desired_state(&object) != desired_state(&old.object);
        set_meta(
            &mut object,
            "generation",
            json!(if spec_changed { generation + 1 } else { generation }),
        );
        set_managed_fields(&mut object, &fields);
        let mut unchanged_old = old.object.clone();
        let mut unchanged_new = object.clone();
        remove_meta(&mut unchanged_old, "managedFields");
        remove_meta(&mut unchanged_new, "managedFields");
        if unchanged_new == unchanged_old && fields.same_ownership(&old.fields) {
            // A no-op write keeps the revision and wakes no watcher, like the apiserver.
            return Ok(old.object);
        }
        if context.dry_run {
            return Ok(object);
        }
        let finalized = object.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(&object);
        let kind = if finalized {
            ChangeKind::Deleted
        } else {
            ChangeKind::Modified
        };
        Ok(self.commit(state, key, kind, object, Some(old.object), fields))
    }

    /// PUT of a whole object (or of its status).
    pub(crate) fn replace(
        &self,
        resource: ResourceId,
        namespace: Option<&str>,
        name: &str,
        mut object: Value,
        target: Target,
        context: &WriteContext,
    ) -> Result<Value, ApiError> {
        let resource_type = self.resources.get(resource);
        check_type_meta(resource_type, &mut object)?;
        if meta_str(&object, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        namespace_for(resource_type, namespace, &mut object)?;
        let key = self.key(resource, namespace, name);
        let mut state = self.lock();
        self.update_locked(&mut state, key, object, target, context)
    }

    /// The shared tail of PUT and non-apply PATCH: concurrency check, status rules, ownership.
    fn update_locked(
        &self,
        state: &mut State,
        key: ObjectKey,
        mut object: Value,
        target: Target,
        context: &WriteContext,
    ) -> Result<Value, ApiError> {
        let resource = self.resources.get(key.resource);
        let Some(old) = state.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(resource, &key.name));
        };
        if let Some(requested) = meta_str(&object, "resourceVersion").filter(|rv| !rv.is_empty()) {
            if Some(requested) != meta_str(&old.object, "resourceVersion") {
                return Err(ApiError::conflict(resource, &key.name));
            }
        }
        object = scope_to_target(resource, &old.object, object, target);
        let mut fields = old.fields.clone();
        let now = now_rfc3339();
        let writer = Writer {
            manager: &context.manager,
            api_version: &resource.api_version(),
            time: &now,
        };
        fields.record_update(&writer, Some(&old.object), &object);
        self.finish_update(state, key, object, fields, context)
    }

    /// PATCH in any supported format; returns the object and whether it was created (apply only).
    pub(crate) fn patch(
        &self,
        resource: ResourceId,
        namespace: Option<&str>,
        name: &str,
        patch: PatchBody,
        target: Target,
        context: &WriteContext,
    ) -> Result<(Value, bool), ApiError> {
        let resource_type = self.resources.get(resource);
        let key = self.key(resource, namespace, name);
        let patch = match patch {
            PatchBody::Apply { config, force } => {
                return self.apply(key, namespace, config, force, target, context);
            }
            PatchBody::Merge(body) => MutationPatch::Merge(body),
            PatchBody::Strategic(body) => MutationPatch::Strategic(body),
            PatchBody::Json(body) => MutationPatch::Json(body),
        };
        let mut state = self.lock();
        let Some(old) = state.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(resource_type, name));
        };
        let mut patched = old.object.clone();
        match &patch {
            MutationPatch::Merge(body) | MutationPatch::Strategic(body) => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                merge_patch(&mut patched, body);
            }
            MutationPatch::Json(body) => {
                json_patch(&mut patched, body).map_err(|e| malformed(resource_type, name, &e))?
            }
        }
        check_type_meta(resource_type, &mut patched)?;
        if meta_str(&patched, "name") != Some(name) {
            return Err(ApiError::bad_request("a patch may not change the object's name"));
        }
        if resource_type.namespaced && meta_str(&patched, "namespace") != Some(&key.namespace) {
            return Err(ApiError::bad_request("a patch may not change the object's namespace"));
        }
        self.update_locked(&mut state, key, patched, target, context)
            .map(|object| (object, false))
    }

    /// Server-side apply: create-or-merge with field ownership and conflict detection.
    fn apply(
        &self,
        key: ObjectKey,
        path_namespace: Option<&str>,
        mut config: Value,
        force: bool,
        target: Target,
        context: &WriteContext,
    ) -> Result<(Value, bool), ApiError> {
        let resource = self.resources.get(key.resource);
        for field in ["apiVersion", "kind"] {
            if config.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(ApiError::bad_request(format!("{field} must be set")));
            }
        }
        check_type_meta(resource, &mut config)?;
        match meta_str(&config, "name") {
            Some(name) if name == key.name => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            None => set_meta(&mut config, "name", json!(key.name)),
        }
        namespace_for(resource, path_namespace, &mut config)?;
        let precondition = meta_str(&config, "resourceVersion")
            .filter(|rv| !rv.is_empty())
            .map(str::to_string);
        strip_server_fields(&mut config);
        remove_meta(&mut config, "resourceVersion");
        if resource.status_subresource {
            config = match target {
                Target::Main => without_status(config),
                Target::Status => status_only(&config),
            };
        }

        let mut state = self.lock();
        let existing = state.objects.get(&key).cloned();
        let now = now_rfc3339();
        let api_version = resource.api_version();
        let writer = Writer {
            manager: &context.manager,
            api_version: &api_version,
            time: &now,
        };
        let conflict = |conflicts: Vec<(String, String)>| ApiError::apply_conflicts(resource, &key.name, &conflicts);
        match existing {
            None => {
                if precondition.is_some() {
                    return Err(ApiError::not_found(resource, &key.name));
                }
                admission::validate_name(resource, &key.name)?;
                let (object, fields) = ManagedFields::default()
                    .apply(&writer, force, &json!({}), &config)
                    .map_err(conflict)?;
                let mut object = object;
                for field in ["apiVersion", "kind"] {
                    object[field] = config[field].clone();
                }
                let created = self.insert_new(&mut state, key.clone(), object, Some(fields), context)?;
                Ok((created, true))
            }
            Some(old) => {
                if let Some(requested) = precondition {
                    if Some(requested.as_str()) != meta_str(&old.object, "resourceVersion") {
                        return Err(ApiError::conflict(resource, &key.name));
                    }
                }
                let (object, fields) = old
                    .fields
                    .apply(&writer, force, &old.object, &config)
                    .map_err(conflict)?;
                self.finish_update(&mut state, key, object, fields, context)
                    .map(|object| (object, false))
            }
        }
    }

    /// DELETE of one object, honouring preconditions and finalizers.
    pub(crate) fn delete(
        &self,
        resource: ResourceId,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Deletion, ApiError> {
        let key = self.key(resource, namespace, name);
        let mut state = self.lock();
        self.delete_locked(&mut state, key, options)
    }

    fn delete_locked(&self, state: &mut State, key: ObjectKey, options: &DeleteOptions) -> Result<Deletion, ApiError> {
        let resource = self.resources.get(key.resource);
        let Some(old) = state.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(resource, &key.name));
        };
        let actual_uid = meta_str(&old.object, "uid").unwrap_or_default();
        if let Some(uid) = options.uid.as_deref().filter(|uid| *uid != actual_uid) {
            return Err(ApiError::precondition_failed(
                resource,
                &key.name,
                format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual_uid}"),
            ));
        }
        let actual_rv = meta_str(&old.object, "resourceVersion").unwrap_or_default();
        if let Some(rv) = options.resource_version.as_deref().filter(|rv| *rv != actual_rv) {
            return Err(ApiError::precondition_failed(
                resource,
                &key.name,
                format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual_rv}"
                ),
            ));
        }
        if has_finalizers(&old.object) {
            if old.object.pointer("/metadata/deletionTimestamp").is_some() || options.dry_run {
                return Ok(Deletion::Pending(old.object));
            }
            let mut pending = old.object.clone();
            set_meta(&mut pending, "deletionTimestamp", json!(now_rfc3339()));
            set_meta(&mut pending, "deletionGracePeriodSeconds", json!(0));
            let pending = self.commit(state, key, ChangeKind::Modified, pending, Some(old.object), old.fields);
            return Ok(Deletion::Pending(pending));
        }
        if options.dry_run {
            return Ok(Deletion::Deleted(old.object));
        }
        let last = old.object.clone();
        Ok(Deletion::Deleted(self.commit(
            state,
            key,
            ChangeKind::Deleted,
            last,
            Some(old.object),
            old.fields,
        )))
    }

    /// DELETE of a collection: every selected object, returned in their final states.
    pub(crate) fn delete_collection(
        &self,
        resource: ResourceId,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        options: &DeleteOptions,
    ) -> Vec<Value> {
        let mut state = self.lock();
        let keys: Vec<ObjectKey> = state
            .objects
            .iter()
            .filter(|(key, stored)| {
                key.resource == resource
                    && namespace.is_none_or(|ns| key.namespace == ns)
                    && labels.matches(&stored.object)
                    && fields.matches(&stored.object)
            })
            .map(|(key, _)| key.clone())
            .collect();
        keys.into_iter()
            .filter_map(|key| match self.delete_locked(&mut state, key, options) {
                Ok(Deletion::Deleted(object) | Deletion::Pending(object)) => Some(object),
                Err(_) => None,
            })
            .collect()
    }

    /// The objects of one resource type as they were at `revision` (undoing later history).
    fn objects_at(&self, state: &State, resource: ResourceId, revision: u64) -> BTreeMap<ObjectKey, Value> {
        let mut objects: BTreeMap<ObjectKey, Value> = state
            .objects
            .iter()
            .filter(|(key, _)| key.resource == resource)
            .map(|(key, stored)| (key.clone(), stored.object.clone()))
            .collect();
        for change in state.history.iter().rev() {
            if change.revision <= revision {
                break;
            }
            if change.key.resource != resource {
                continue;
            }
            match (&change.kind, &change.previous) {
                (ChangeKind::Added, _) => {
                    objects.remove(&change.key);
                }
                (ChangeKind::Modified | ChangeKind::Deleted, Some(previous)) => {
                    objects.insert(change.key.clone(), previous.clone());
                }
                (_, None) => {}
            }
        }
        objects
    }

    /// LIST with selectors, resourceVersion semantics and limit/continue paging.
    pub(crate) fn list(
        &self,
        resource: ResourceId,
        namespace: Option<&str>,
        query: &ListQuery,
    ) -> Result<ListPage, ApiError> {
        let state = self.lock();
        let (revision, start_after) = match &query.continue_token {
            Some(token) => {
                if query.resource_version.as_deref().is_some_and(|rv| !rv.is_empty()) {
                    return Err(ApiError::bad_request(
                        "specifying resource version is not allowed when using continue",
                    ));
                }
                let (revision, namespace, name) =
                    decode_continue(token).ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                if revision < state.compacted {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results.",
                    ));
                }
                (revision, Some((namespace, name)))
            }
            None => (self.list_revision(&state, query)?, None),
        };
        let objects = if revision == state.revision {
            state
                .objects
                .iter()
                .filter(|(key, _)| key.resource == resource)
                .map(|(key, stored)| (key.clone(), stored.object.clone()))
                .collect()
        } else {
            self.objects_at(&state, resource, revision)
        };
        drop(state);

        let selected: Vec<(ObjectKey, Value)> = objects
            .into_iter()
            .filter(|(key, object)| {
                namespace.is_none_or(|ns| key.namespace == ns)
                    && start_after
                        .as_ref()
                        .is_none_or(|(ns, name)| (&key.namespace, &key.name) > (ns, name))
                    && query.labels.matches(object)
                    && query.fields.matches(object)
            })
            .collect();
        let limit = query.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let total = selected.len();
        let page: Vec<(ObjectKey, Value)> = selected.into_iter().take(limit).collect();
        let (continue_token, remaining) = match page.last() {
            Some((last, _)) if total > page.len() => {
                let remaining = (query.labels.is_empty() && query.fields.is_empty()).then(|| total - page.len());
                (Some(encode_continue(revision, last)), remaining)
            }
            _ => (None, None),
        };
        Ok(ListPage {
            revision,
            items: page.into_iter().map(|(_, object)| object).collect(),
            continue_token,
            remaining,
        })
    }

    fn list_revision(&self, state: &State, query: &ListQuery) -> Result<u64, ApiError> {
        let requested = query.resource_version.as_deref().filter(|rv| !rv.is_empty());
        let exact = match (requested, query.version_match.as_deref()) {
            (None, Some(_)) => {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            (_, None | Some("NotOlderThan")) => false,
            (_, Some("Exact")) => true,
            (_, Some(other)) => {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch \"{other}\" is not supported: use \"Exact\" or \"NotOlderThan\""
                )));
            }
        };
        let Some(requested) = requested else {
            return Ok(state.revision);
        };
        let requested = parse_revision(requested)?;
        if requested == 0 {
            if exact {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
            return Ok(state.revision);
        }
        if requested > state.revision {
            return Err(ApiError::resource_version_too_large(requested, state.revision));
        }
        if !exact {
            return Ok(state.revision);
        }
        if requested < state.compacted {
            return Err(ApiError::expired(format!(
                "too old resource version: {requested} ({})",
                state.compacted
            )));
        }
        Ok(requested)
    }

    /// Registers a watch and computes what it must send before live changes.
    pub(crate) fn watch(
        &self,
        resource: ResourceId,
        namespace: Option<&str>,
        query: &WatchQuery,
    ) -> Result<Subscription, ApiError> {
        let requested = query
            .resource_version
            .as_deref()
            .filter(|rv| !rv.is_empty() && *rv != "0")
            .map(parse_revision)
            .transpose()?;
        let mut state = self.lock();
        let (sender, signals) = mpsc::unbounded_channel();
        let in_scope = |key: &ObjectKey| key.resource == resource && namespace.is_none_or(|ns| key.namespace == ns);
        let snapshot = |state: &State| -> Vec<InitialEvent> {
            state
                .objects
                .iter()
                .filter(|(key, stored)| {
                    in_scope(key) && query.labels.matches(&stored.object) && query.fields.matches(&stored.object)
                })
                .map(|(_, stored)| InitialEvent::Added(stored.object.clone()))
                .collect()
        };
        let mut error = None;
        let initial = match requested {
            Some(revision) if revision > state.revision => {
                error = Some(ApiError::resource_version_too_large(revision, state.revision));
                Vec::new()
            }
            _ if query.send_initial_events => {
                let mut initial = snapshot(&state);
                initial.push(InitialEvent::InitialEventsEnd(state.revision));
                initial
            }
            None => snapshot(&state),
            Some(revision) if revision < state.compacted => {
                error = Some(ApiError::expired(format!(
                    "too old resource version: {revision} ({})",
                    state.compacted
                )));
                Vec::new()
            }
            Some(revision) => state
                .history
                .iter()
                .filter(|change| change.revision > revision && in_scope(&change.key))
                .cloned()
                .map(InitialEvent::Replayed)
                .collect(),
        };
        if error.is_none() {
            state.watchers.push(Watcher {
                resource,
                namespace: namespace.map(str::to_string),
                wants_bookmarks: query.bookmarks,
                sender,
            });
        }
        Ok(Subscription {
            initial,
            signals,
            error,
        })
    }

    /// Forgets history: watches and lists from earlier revisions now get 410 Gone.
    ///
    /// The revision is bumped first (as an unrelated write would), so every revision a client
    /// has seen so far is older than the compaction point.
    pub(crate) fn compact(&self) -> u64 {
        let mut state = self.lock();
        state.revision += 1;
        state.compacted = state.revision;
        state.history.clear();
        state.compacted
    }

    /// Ends every open watch stream; clients reconnect from their last revision.
    pub(crate) fn drop_watches(&self) {
        let mut state = self.lock();
        for watcher in state.watchers.drain(..) {
            // A closed receiver means the stream is already gone, which is the goal.
            let _ = watcher.sender.send(WatchSignal::End);
        }
    }

    /// Sends a bookmark at the current revision to watches that asked for bookmarks.
    pub(crate) fn send_bookmarks(&self) {
        let mut state = self.lock();
        let revision = state.revision;
        state
            .watchers
            .retain(|watcher| !watcher.wants_bookmarks || watcher.sender.send(WatchSignal::Bookmark(revision)).is_ok());
    }

    /// Stores an object directly, creating or replacing it without preconditions.
    pub(crate) fn upsert(&self, resource: ResourceId, mut object: Value) -> Result<Value, ApiError> {
        let resource_type = self.resources.get(resource);
        check_type_meta(resource_type, &mut object)?;
        let name = meta_str(&object, "name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::bad_request("metadata.name is required"))?
            .to_string();
        let namespace = meta_str(&object, "namespace")
            .filter(|ns| !ns.is_empty())
            .unwrap_or("default")
            .to_string();
        let key = self.key(resource, Some(&namespace), &name);
        if resource_type.namespaced {
            set_meta(&mut object, "namespace", json!(namespace));
        }
        remove_meta(&mut object, "resourceVersion");
        let context = WriteContext {
            manager: "vknf-k8s-fake".into(),
            dry_run: false,
            admission: None,
        };
        let mut state = self.lock();
        if state.objects.contains_key(&key) {
            self.update_locked(&mut state, key, object, Target::Main, &context)
        } else {
            admission::validate_name(resource_type, &name)?;
            self.insert_new(&mut state, key, object, None, &context)
        }
    }

    /// Current objects of one type, optionally in one namespace.
    pub(crate) fn snapshot(&self, resource: ResourceId, namespace: Option<&str>) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|(key, _)| key.resource == resource && namespace.is_none_or(|ns| key.namespace == ns))
            .map(|(_, stored)| stored.object.clone())
            .collect()
    }
}

fn set_managed_fields(object: &mut Value, fields: &ManagedFields) {
    let rendered = fields.render();
    if rendered.as_array().is_some_and(|a| a.is_empty()) {
        remove_meta(object, "managedFields");
    } else {
        set_meta(object, "managedFields", rendered);
    }
}

fn without_status(mut object: Value) -> Value {
    if let Some(fields) = object.as_object_mut() {
        fields.remove("status");
    }
    object
}

fn status_only(object: &Value) -> Value {
    let mut scoped = json!({
        "apiVersion": object["apiVersion"],
        "kind": object["kind"],
        "metadata": {"name": object["metadata"]["name"]},
    });
    if let Some(namespace) = object.pointer("/metadata/namespace") {
        scoped["metadata"]["namespace"] = namespace.clone();
    }
    if let Some(status) = object.get("status") {
        scoped["status"] = status.clone();
    }
    scoped
}

/// Applies the status-subresource rules: the main resource cannot change status, `/status`
/// can change nothing else.
fn scope_to_target(resource: &ResourceType, old: &Value, mut new: Value, target: Target) -> Value {
    if !resource.status_subresource {
        return new;
    }
    match target {
        Target::Main => {
            if let Some(fields) = new.as_object_mut() {
                match old.get("status") {
                    Some(status) => fields.insert("status".into(), status.clone()),
                    None => fields.remove("status"),
                };
            }
            new
        }
        Target::Status => {
            let mut scoped = old.clone();
            if let Some(fields) = scoped.as_object_mut() {
                match new.as_object_mut().and_then(|n| n.remove("status")) {
                    Some(status) => fields.insert("status".into(), status),
                    None => fields.remove("status"),
                };
            }
            scoped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ResourceType;

    fn store() -> (Store, ResourceId) {
        let table = ResourceTable::new(ResourceType::defaults());
        let id = table.find("", "v1", "configmaps").expect("configmaps");
        (Store::new(table), id)
    }

    fn context() -> WriteContext {
        WriteContext {
            manager: "test".into(),
            dry_run: false,
            admission: None,
        }
    }

    fn config_map(name: &str, value: &str) -> Value {
        json!({"metadata": {"name": name}, "data": {"k": value}})
    }

    #[test]
    fn exact_lists_reconstruct_past_revisions() {
        let (store, id) = store();
        store
            .create(id, Some("ns"), config_map("a", "1"), &context())
            .expect("create a");
        let after_a = store.revision();
        store
            .create(id, Some("ns"), config_map("b", "1"), &context())
            .expect("create b");
        store
            .patch(
                id,
                Some("ns"),
                "a",
                PatchBody::Merge(json!({"data": {"k": "2"}})),
                Target::Main,
                &context(),
            )
            .expect("patch a");
        store
            .delete(id, Some("ns"), "b", &DeleteOptions::default())
            .expect("delete b");

        let past = store
            .list(
                id,
                None,
                &ListQuery {
                    resource_version: Some(after_a.to_string()),
                    version_match: Some("Exact".into()),
                    ..ListQuery::default()
                },
            )
            .expect("exact list");
        assert_eq!(past.revision, after_a);
        assert_eq!(past.items.len(), 1);
        assert_eq!(past.items[0]["data"]["k"], "1");

        store.compact();
        let error = store
            .list(
                id,
                None,
                &ListQuery {
                    resource_version: Some(after_a.to_string()),
                    version_match: Some("Exact".into()),
                    ..ListQuery::default()
                },
            )
            .expect_err("compacted");
        assert_eq!(error.code, 410);
    }

    #[test]
    fn pages_are_consistent_snapshots() {
        let (store, id) = store();
        for name in ["a", "b", "c"] {
            store
                .create(id, Some("ns"), config_map(name, "1"), &context())
                .expect("create");
        }
        let first = store
            .list(
                id,
                Some("ns"),
                &ListQuery {
                    limit: Some(2),
                    ..ListQuery::default()
                },
            )
            .expect("page 1");
        assert_eq!(first.items.len(), 2);
        assert_eq!(first.remaining, Some(1));
        // A write between pages must not show up in the second page.
        store
            .create(id, Some("ns"), config_map("d", "1"), &context())
            .expect("create d");
        let second = store
            .list(
                id,
                Some("ns"),
                &ListQuery {
                    limit: Some(2),
                    continue_token: first.continue_token.clone(),
                    ..ListQuery::default()
                },
            )
            .expect("page 2");
        let names: Vec<&str> = second.items.iter().filter_map(|o| meta_str(o, "name")).collect();
        assert_eq!(names, vec!["c"]);
        assert!(second.continue_token.is_none());
        assert_eq!(second.revision, first.revision);
    }

    #[test]
    fn identical_writes_do_not_bump_the_revision() {
        let (store, id) = store();
        let created = store
            .create(id, Some("ns"), config_map("a", "1"), &context())
            .expect("create");
        let before = store.revision();
        let same = store
            .replace(id, Some("ns"), "a", created.clone(), Target::Main, &context())
            .expect("replace");
        assert_eq!(store.revision(), before);
        assert_eq!(
            same["metadata"]["resourceVersion"],
            created["metadata"]["resourceVersion"]
        );
        let apply = PatchBody::Apply {
            config: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "1"}}),
            force: false,
        };
        store
            .patch(id, Some("ns"), "a", apply.clone(), Target::Main, &context())
            .expect("apply");
        let after_first_apply = store.revision();
        store
            .patch(id, Some("ns"), "a", apply, Target::Main, &context())
            .expect("reapply");
        assert_eq!(
            store.revision(),
            after_first_apply,
            "re-applying the same config is a no-op"
        );
    }

    #[test]
    fn finalizers_delay_deletion_until_removed() {
        let (store, id) = store();
        let mut object = config_map("a", "1");
        object["metadata"]["finalizers"] = json!(["vknf.io/cleanup"]);
        store.create(id, Some("ns"), object, &context()).expect("create");
        let pending = store
            .delete(id, Some("ns"), "a", &DeleteOptions::default())
            .expect("delete");
        let Deletion::Pending(pending) = pending else {
            panic!("finalizer must hold the object");
        };
        assert!(pending.pointer("/metadata/deletionTimestamp").is_some());
        store
            .patch(
                id,
                Some("ns"),
                "a",
                PatchBody::Merge(json!({"metadata": {"finalizers": null}})),
                Target::Main,
                &context(),
            )
            .expect("remove finalizer");
        assert_eq!(store.get(id, Some("ns"), "a").map_err(|e| e.code), Err(404));
    }

    #[test]
    fn delete_preconditions_are_checked() {
        let (store, id) = store();
        store
            .create(id, Some("ns"), config_map("a", "1"), &context())
            .expect("create");
        let error = store
            .delete(
                id,
                Some("ns"),
                "a",
                &DeleteOptions {
                    uid: Some("other".into()),
                    ..DeleteOptions::default()
                },
            )
            .expect_err("uid mismatch");
        assert_eq!(error.code, 409);
    }
}
