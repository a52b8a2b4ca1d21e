//! The agent's writes: its EndpointSlices (server-side apply), the status annotation (merge
//! patch, which unlike apply never recreates a deleted Service) and Events.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource as _};

use crate::keys;
use crate::status::truncate_note;

/// A one-line description of an API error (kube's own includes the whole `Status`).
pub(super) fn error_text(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!(
            "the API server answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        other => other.to_string(),
    }
}

fn ignore_not_found<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

/// Creates or updates one of the host's slices.
pub(super) async fn apply_slice(client: &Client, slice: &EndpointSlice) -> Result<(), kube::Error> {
    let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
    let name = slice.metadata.name.as_deref().unwrap_or_default();
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    // Forced: the agent is the authority on its own slice, also over the watchdog's marks.
    let params = PatchParams::apply(keys::FIELD_MANAGER).force();
    api.patch(name, &params, &Patch::Apply(slice)).await.map(|_| ())
}

/// Deletes one of the host's slices (gone already is fine).
pub(super) async fn delete_slice(client: &Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    ignore_not_found(api.delete(name, &DeleteParams::default()).await)
}

/// Sets (or with `None` removes) the host's status annotation on a Service.
pub(super) async fn set_status_annotation(
    client: &Client,
    service: &Service,
    annotation: &str,
    value: Option<&str>,
) -> Result<(), kube::Error> {
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({ "metadata": { "annotations": { annotation: value } } });
    let params = PatchParams {
        field_manager: Some(keys::FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    ignore_not_found(api.patch(name, &params, &Patch::Merge(&patch)).await)
}

/// Records an Event about a function's Service.
pub(super) async fn record(
    recorder: &Recorder,
    service: &Service,
    warning: bool,
    reason: &str,
    action: &str,
    note: &str,
) -> Result<(), kube::Error> {
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.to_owned(),
        note: Some(truncate_note(note)),
        action: action.to_owned(),
        secondary: None,
    };
    recorder.publish(&event, &service.object_ref(&())).await
}
