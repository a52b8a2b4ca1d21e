//! Function families as an open set: a family validates its specs, says what it needs, and loads its
//! functions onto the CPU or a GPU. Adding a family is one module implementing [`Family`] plus one
//! [`Families::register`] call.

use std::collections::BTreeMap;
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

    /// Loads a function onto a Vulkan device. Families without a GPU implementation refuse.
    #[cfg(feature = "gpu")]
    fn load_gpu(
        &self,
        device: &vknf_vulkan::Device,
        spec: &FunctionSpec,
        model: Option<&[u8]>,
    ) -> Result<Arc<dyn Function>, LoadError> {
        let _ = (device, model);
        Err(LoadError::UnsupportedKind {
            function: spec.name.clone(),
            kind: spec.kind.clone(),
            loader: "gpu",
        })
    }
}

/// The registered families, by kind.
#[derive(Clone, Default)]
pub struct Families {
    by_kind: BTreeMap<&'static str, Arc<dyn Family>>,
}

impl Families {
    /// No family at all (add some with [`Families::register`]).
    pub fn empty() -> Families {
        Families::default()
    }

    /// The families vknf ships: `forest` and `generic`.
    pub fn builtin() -> Families {
        let mut families = Families::empty();
        families.register(Arc::new(crate::families::forest::ForestFamily));
        families.register(Arc::new(crate::families::generic::GenericFamily));
        families
    }

    /// Adds a family; a family of the same kind is replaced.
    pub fn register(&mut self, family: Arc<dyn Family>) -> &mut Families {
        self.by_kind.insert(family.kind(), family);
        self
    }

    /// The family of `kind`.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Family>> {
        self.by_kind.get(kind)
    }

    /// The registered kinds, in order.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_kind.keys().copied()
    }

    /// The family of a spec's kind, or the error that names the known kinds.
    pub fn family_of(&self, spec: &FunctionSpec) -> Result<&Arc<dyn Family>, LoadError> {
        self.get(&spec.kind).ok_or_else(|| LoadError::UnknownKind {
            function: spec.name.clone(),
            kind: spec.kind.clone(),
            known: self.kinds().collect::<Vec<_>>().join(", "),
        })
    }

    /// The kinds whose families take the parameter `param`.
    pub fn kinds_taking(&self, param: &str) -> Vec<&'static str> {
        self.by_kind
            .values()
            .filter(|f| f.params().contains(&param))
            .map(|f| f.kind())
            .collect()
    }

    /// Every parameter some family takes.
    pub fn all_params(&self) -> Vec<&'static str> {
        let mut params: Vec<&'static str> = self.by_kind.values().flat_map(|f| f.params().iter().copied()).collect();
        params.sort_unstable();
        params.dedup();
        params
    }
}

impl std::fmt::Debug for Families {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds()).finish()
    }
}
