//! What a host reports about each function it serves: the status annotation on the Service
//! (`vknf.io/status-<host>`) and the reasons of the Events it records.

use serde::{Deserialize, Serialize};
use vknf_manifest::{SpecError, annotations};

/// Why a function is not served as its Service says; the Event reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureReason {
    /// `vknf.io/spirv` is not a SPIR-V module.
    InvalidSpirv,
    /// The model is not a valid model (or too large).
    InvalidModel,
    /// The model ConfigMaps do not hash to `vknf.io/model-sha256`.
    DigestMismatch,
    /// A model ConfigMap or part is missing.
    MissingModel,
    /// The port is taken (by another function or process).
    PortConflict,
    /// Any other manifest problem (annotations, ports, selector).
    InvalidManifest,
    /// The loader refused or failed (on the GPU: SPIR-V validation, pipeline creation, upload).
    LoadFailed,
    /// The model ConfigMaps could not be read from the API server.
    ModelFetchFailed,
    /// The host selector does not parse.
    InvalidPlacement,
    /// The function's kernel missed its deadline: it is quarantined (not run) for a back-off, then
    /// loaded again.
    Quarantined,
}

impl FailureReason {
    /// The reason as Events and the status annotation spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::InvalidSpirv => "InvalidSpirv",
            FailureReason::InvalidModel => "InvalidModel",
            FailureReason::DigestMismatch => "DigestMismatch",
            FailureReason::MissingModel => "MissingModel",
            FailureReason::PortConflict => "PortConflict",
            FailureReason::InvalidManifest => "InvalidManifest",
            FailureReason::LoadFailed => "LoadFailed",
            FailureReason::ModelFetchFailed => "ModelFetchFailed",
            FailureReason::InvalidPlacement => "InvalidPlacement",
            FailureReason::Quarantined => "Quarantined",
        }
    }

    /// The Event action that failed.
    pub fn action(self) -> &'static str {
        match self {
            FailureReason::InvalidSpirv
            | FailureReason::InvalidModel
            | FailureReason::DigestMismatch
            | FailureReason::MissingModel
            | FailureReason::InvalidManifest => "Validate",
            FailureReason::PortConflict => "Bind",
            FailureReason::LoadFailed => "Load",
            FailureReason::ModelFetchFailed => "FetchModel",
            FailureReason::InvalidPlacement => "Place",
            FailureReason::Quarantined => "Run",
        }
    }

    /// Classifies a manifest the server's reader rejected.
    pub fn of_spec_error(error: &SpecError) -> FailureReason {
        match error {
            SpecError::BadAnnotation { annotation, .. } if *annotation == annotations::SPIRV => {
                FailureReason::InvalidSpirv
            }
            SpecError::MissingAnnotation(annotation) if *annotation == annotations::SPIRV => {
                FailureReason::InvalidSpirv
            }
            SpecError::DigestMismatch { .. } => FailureReason::DigestMismatch,
            SpecError::MissingConfigMap(_) | SpecError::MissingModelPart { .. } => FailureReason::MissingModel,
            SpecError::ModelTooLarge { .. } | SpecError::ConfigMapTooLarge { .. } => FailureReason::InvalidModel,
            SpecError::PortClash { .. } => FailureReason::PortConflict,
            _ => FailureReason::InvalidManifest,
        }
    }

    /// Classifies a failure the server reported for a valid manifest (its reasons are text).
    pub fn of_server_failure(reason: &str) -> FailureReason {
        if reason.starts_with("cannot listen on port") {
            FailureReason::PortConflict
        } else if reason.contains(" is quarantined for ") {
            FailureReason::Quarantined
        } else if reason.contains(": invalid model: ") {
            FailureReason::InvalidModel
        } else {
            FailureReason::LoadFailed
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a function on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum FunctionPhase {
    /// Placed here; not answering yet.
    Pending,
    /// Loaded and answering; the endpoint is ready.
    Serving,
    /// The latest spec cannot be served (an earlier version may still serve: see `address`).
    Failed,
    /// No longer placed here: finishing what it admitted, taking no new traffic.
    Draining,
}

/// The value of `vknf.io/status-<host>` (JSON). Only facts that change with the function are
/// written, so an unchanged function never causes a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostFunctionStatus {
    /// The phase.
    pub phase: FunctionPhase,
    /// Where the host answers, while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// SHA-256 of the model being served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// SHA-256 of the SPIR-V being served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spirv_sha256: Option<String>,
    /// Why the latest spec is not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    /// Details of the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The host's devices serving the function, while it serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<HostDevice>,
}

/// A device of the host, as the status annotation lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostDevice {
    /// Index in the host's order (`vknf devices`, the `device` label of the metrics).
    pub index: usize,
    /// The device's name.
    pub name: String,
    /// `Serving`, `Recovering` or `Failed`.
    pub state: String,
}

impl HostDevice {
    /// The entry for a device of the server's status.
    pub fn of(device: &vknf_server::DeviceStatus) -> HostDevice {
        HostDevice {
            index: device.index,
            name: device.info.name.clone(),
            state: match device.health {
                vknf_server::DeviceHealth::Serving => "Serving",
                vknf_server::DeviceHealth::Recovering => "Recovering",
                vknf_server::DeviceHealth::Failed(_) => "Failed",
            }
            .to_owned(),
        }
    }
}

impl HostFunctionStatus {
    /// The annotation value.
    pub fn to_json(&self) -> String {
        // A struct of strings and enums always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Shortens a message to what an Event note allows (1 kB), on a character boundary.
pub fn truncate_note(message: &str) -> String {
    const LIMIT: usize = 1000;
    if message.len() <= LIMIT {
        return message.to_owned();
    }
    let mut end = LIMIT - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

#[cfg(test)]
mod tests {
    use vknf_manifest::FunctionKey;

    use super::*;

    #[test]
    fn rejections_are_classified_by_what_is_wrong() {
        let spirv = SpecError::BadAnnotation {
            annotation: annotations::SPIRV.to_owned(),
            reason: "bad magic".into(),
        };
        assert_eq!(FailureReason::of_spec_error(&spirv), FailureReason::InvalidSpirv);
        let digest = SpecError::DigestMismatch {
            expected: "a".into(),
            actual: "b".into(),
        };
        assert_eq!(FailureReason::of_spec_error(&digest), FailureReason::DigestMismatch);
        assert_eq!(
            FailureReason::of_spec_error(&SpecError::MissingConfigMap("m".into())),
            FailureReason::MissingModel
        );
        let clash = SpecError::PortClash {
            port: 1,
            other: FunctionKey {
                namespace: "a".into(),
                name: "b".into(),
            },
        };
        assert_eq!(FailureReason::of_spec_error(&clash), FailureReason::PortConflict);
        assert_eq!(
            FailureReason::of_spec_error(&SpecError::HasSelector),
            FailureReason::InvalidManifest
        );
        assert_eq!(FailureReason::InvalidSpirv.action(), "Validate");
    }

    #[test]
    fn server_failures_are_classified_from_the_servers_messages() {
        assert_eq!(
            FailureReason::of_server_failure("cannot listen on port 7000: Address already in use (os error 98)"),
            FailureReason::PortConflict
        );
        let invalid = vknf_functions::LoadError::InvalidModel {
            function: "default/web".into(),
            reason: "truncated".into(),
        };
        assert_eq!(
            FailureReason::of_server_failure(&invalid.to_string()),
            FailureReason::InvalidModel
        );
        assert_eq!(
            FailureReason::of_server_failure("the loader failed: panic"),
            FailureReason::LoadFailed
        );
        assert_eq!(
            FailureReason::of_server_failure(
                "default/spin is quarantined for 30 s: its kernel missed its deadline on device 0 (strike 1); it is loaded again after that"
            ),
            FailureReason::Quarantined
        );
    }

    #[test]
    fn the_annotation_is_compact_json_that_reads_back() {
        let status = HostFunctionStatus {
            phase: FunctionPhase::Failed,
            address: Some("10.0.0.1:7000".into()),
            model_sha256: None,
            spirv_sha256: None,
            reason: Some(FailureReason::DigestMismatch),
            message: Some("model digest mismatch".into()),
            devices: vec![],
        };
        let json = status.to_json();
        assert!(json.contains("\"phase\":\"Failed\""), "{json}");
        assert!(json.contains("\"reason\":\"DigestMismatch\""), "{json}");
        assert!(!json.contains("modelSha256") && !json.contains("devices"));
        assert_eq!(serde_json::from_str::<HostFunctionStatus>(&json).unwrap(), status);
        let serving = HostFunctionStatus {
            phase: FunctionPhase::Serving,
            reason: None,
            message: None,
            devices: vec![
                HostDevice {
                    index: 0,
                    name: "NVIDIA H200".into(),
                    state: "Serving".into(),
                },
                HostDevice {
                    index: 1,
                    name: "NVIDIA H200".into(),
                    state: "Recovering".into(),
                },
            ],
            ..status
        };
        let json = serving.to_json();
        assert!(
            json.contains(r#""devices":[{"index":0,"name":"NVIDIA H200","state":"Serving"},{"index":1"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<HostFunctionStatus>(&json).unwrap(), serving);
    }

    #[test]
    fn notes_are_cut_to_the_event_limit_on_a_character_boundary() {
        let long = "é".repeat(800);
        let note = truncate_note(&long);
        assert!(note.len() <= 1000 && note.ends_with("..."));
        assert_eq!(truncate_note("short"), "short");
    }
}
