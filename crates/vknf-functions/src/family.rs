//! Function families as an open set: a family validates its specs, says what it needs, and loads its
//! functions onto the CPU or a GPU. Adding a family is one module implementing [`Family`] plus one
//! [`crate::Families::register`] call.

use std::sync::Arc;

use crate::function::{Function, LoadError};
use crate::spec::FunctionSpec;

/// A spec that its family cannot serve, named by the parameter at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {reason}")]
pub struct ParamError {
    /// The family parameter (annotation `vknf.io/<param>`), or another spec field such as `model`.
    pub param: String,
    /// What is wrong.
    pub reason: String,
    /// Whether the parameter is missing altogether.
    pub missing: bool,
}

impl ParamError {
    /// An error about the value of `param`.
    pub fn new(param: impl Into<String>, reason: impl Into<String>) -> ParamError {
        ParamError {
            param: param.into(),
            reason: reason.into(),
            missing: false,
        }
    }

    /// `param` is required and absent.
    pub fn missing(param: impl Into<String>) -> ParamError {
        ParamError {
            param: param.into(),
            reason: "missing".into(),
            missing: true,
        }
    }
}

/// A kind of network function: everything vknf needs to know to serve functions of that kind.
pub trait Family: Send + Sync + 'static {
    /// The kind, as named by a spec (`vknf.io/kind`).
    fn kind(&self) -> &'static str;

    /// The family's own parameters (each is the annotation `vknf.io/<name>` of a manifest). A spec may
    /// set only the parameters of its own family.
    fn params(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether its functions need model bytes.
    fn needs_model(&self) -> bool;

    /// Checks a spec before anything is loaded (no device needed), so that manifests are refused early
    /// with a message naming the parameter at fault. `model_len` is the model's size, if one is given.
    fn validate(&self, spec: &FunctionSpec, model_len: Option<usize>) -> Result<(), ParamError>;

    /// Loads a function onto the host's CPU. Families without a CPU implementation refuse.
    fn load_cpu(&self, spec: &FunctionSpec, model: Option<&[u8]>) -> Result<Arc<dyn Function>, LoadError> {
        let _ = model;
        Err(LoadError::UnsupportedKind {
            function: spec.name.clone(),
            kind: spec.kind.clone(),
            loader: "cpu",
        })
    }

    /// Loads a function onto a Vulkan device, one of `devices_serving` devices of the host that load it
    /// (a family may tune for that: with several GPUs the host's cores feeding them are the limit).
    /// Families without a GPU implementation refuse.
    #[cfg(feature = "gpu")]
    fn load_gpu(
        &self,
        device: &vknf_vulkan::Device,
        devices_serving: usize,
        spec: &FunctionSpec,
        model: Option<&[u8]>,
    ) -> Result<Arc<dyn Function>, LoadError> {
        let _ = (device, devices_serving, model);
        Err(LoadError::UnsupportedKind {
            function: spec.name.clone(),
            kind: spec.kind.clone(),
            loader: "gpu",
        })
    }
}
