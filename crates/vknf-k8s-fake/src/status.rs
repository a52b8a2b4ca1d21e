//! Kubernetes `Status` errors, shaped exactly like the apiserver's so clients classify them right.

use serde_json::{Value, json};

use crate::resources::ResourceType;

/// A failed API request: HTTP code, machine-readable reason and the `Status` body to send.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code, also written into the `Status` body.
    pub code: u16,
    /// `StatusReason`, e.g. `NotFound`, `AlreadyExists`, `Conflict`, `Expired`.
    pub reason: &'static str,
    /// Human-readable message, worded like the real apiserver's.
    pub message: String,
    /// `details` of the `Status`, when the error concerns one object.
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, resource: &ResourceType, name: &str) -> Self {
        let mut details = json!({ "name": name, "kind": resource.plural });
        if !resource.group.is_empty() {
            details["group"] = json!(resource.group);
        }
        self.details = Some(details);
        self
    }

    /// 404 for a named object that does not exist.
    pub fn not_found(resource: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", resource.qualified_plural()),
        )
        .about(resource, name)
    }

    /// 404 for a URL that names no served resource.
    pub fn unknown_path() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    /// 409 when creating an object whose name is taken.
    pub fn already_exists(resource: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", resource.qualified_plural()),
        )
        .about(resource, name)
    }

    /// 409 for an optimistic-concurrency failure (stale `resourceVersion`).
    pub fn conflict(resource: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                resource.qualified_plural()
            ),
        )
        .about(resource, name)
    }

    /// 409 for a failed delete precondition.
    pub fn precondition_failed(resource: &ResourceType, name: &str, detail: String) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {detail}",
                resource.qualified_plural()
            ),
        )
        .about(resource, name)
    }

    /// 409 for a server-side apply that would take fields owned by other managers.
    pub fn apply_conflicts(resource: &ResourceType, name: &str, conflicts: &[(String, String)]) -> Self {
        let version = resource.version.as_str();
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(manager, field)| {
                json!({
                    "type": "FieldManagerConflict",
                    "message": format!("conflict with \"{manager}\" using {version}"),
                    "field": field,
                })
            })
            .collect();
        let listed: Vec<String> = conflicts
            .iter()
            .map(|(manager, field)| format!("conflict with \"{manager}\" using {version}: {field}"))
            .collect();
        let noun = if conflicts.len() == 1 { "conflict" } else { "conflicts" };
        let mut error = Self::new(
            409,
            "Conflict",
            format!("Apply failed with {} {noun}: {}", conflicts.len(), listed.join("\n")),
        )
        .about(resource, name);
        if let Some(details) = error.details.as_mut() {
            details["causes"] = Value::Array(causes);
        }
        error
    }

    /// 410 for a `resourceVersion` or continue token older than the compaction point.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422 for an object that fails validation; `causes` are `(field, message)` pairs.
    pub fn invalid(resource: &ResourceType, name: &str, causes: &[(String, String)]) -> Self {
        let summary: Vec<String> = causes
            .iter()
            .map(|(field, message)| format!("{field}: {message}"))
            .collect();
        let mut error = Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {}", resource.kind, summary.join(", ")),
        );
        let mut details = json!({ "name": name, "kind": resource.kind });
        if !resource.group.is_empty() {
            details["group"] = json!(resource.group);
        }
        details["causes"] = causes
            .iter()
            .map(|(field, message)| json!({ "reason": "FieldValueInvalid", "message": message, "field": field }))
            .collect();
        error.details = Some(details);
        error
    }

    /// 401 for a bearer token no user holds.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 500 for a server-side configuration the fake cannot use (e.g. an unsupported policy).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// A write refused by a ValidatingAdmissionPolicy: 403 unless the validation names another
    /// reason (`Invalid` 422, `Unauthorized` 401, `RequestEntityTooLarge` 413).
    pub(crate) fn denied_by_policy(resource: &ResourceType, name: &str, reason: &str, cause: &str) -> Self {
        let mut error = Self::forbidden(resource, name, cause);
        let (code, reason) = match reason {
            "Invalid" => (422, "Invalid"),
            "Unauthorized" => (401, "Unauthorized"),
            "RequestEntityTooLarge" => (413, "RequestEntityTooLarge"),
            _ => (403, "Forbidden"),
        };
        error.code = code;
        error.reason = reason;
        error
    }

    /// 403 `Forbidden` about a resource (`name` may be empty for collections).
    pub fn forbidden(resource: &ResourceType, name: &str, reason: &str) -> Self {
        let message = if name.is_empty() {
            format!("{} is forbidden: {reason}", resource.qualified_plural())
        } else {
            format!("{} \"{name}\" is forbidden: {reason}", resource.qualified_plural())
        };
        Self::new(403, "Forbidden", message).about(resource, name)
    }

    /// 405 for a verb the URL does not support.
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    /// 415 for a PATCH body type the server does not understand.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type})"
            ),
        )
    }

    /// 413 for a body larger than the apiserver accepts.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 504 for a `resourceVersion` newer than anything the store has reached.
    pub fn resource_version_too_large(requested: u64, current: u64) -> Self {
        let mut error = Self::new(
            504,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        );
        error.details = Some(json!({
            "causes": [{ "reason": "ResourceVersionTooLarge", "message": "Too large resource version" }],
            "retryAfterSeconds": 1,
        }));
        error
    }

    /// An error the test injected on purpose.
    pub fn injected(code: u16, message: &str) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "Unknown",
        };
        Self::new(code, reason, message)
    }

    /// The `Status` object sent as the response body (or inside a watch `ERROR` event).
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bodies_carry_code_reason_and_details() {
        let services = ResourceType::of::<k8s_openapi::api::core::v1::Service>();
        let status = ApiError::not_found(&services, "web").to_status();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["code"], 404);
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["message"], "services \"web\" not found");
        assert_eq!(status["details"]["name"], "web");
        let leases = ResourceType::of::<k8s_openapi::api::coordination::v1::Lease>();
        let conflict = ApiError::conflict(&leases, "lock").to_status();
        assert_eq!(conflict["details"]["group"], "coordination.k8s.io");
        assert!(
            conflict["message"]
                .as_str()
                .is_some_and(|m| { m.starts_with("Operation cannot be fulfilled on leases.coordination.k8s.io") })
        );
    }
}
