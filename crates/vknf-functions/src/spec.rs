//! A function as its family sees it: the kernel, its configuration and the family's own parameters.
//! Where it is served (ports, hosts) is not the family's business and lives in the manifest crate.

use std::collections::BTreeMap;

/// Names a specialization constant by SPIR-V `SpecId` or by its name in the shader.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpecConstantKey {
    /// The `constant_id` / `SpecId`.
    Id(u32),
    /// The constant's name (resolved by reflection).
    Name(String),
}

/// A specialization constant's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SpecConstantValue {
    /// A boolean constant.
    Bool(bool),
    /// An integer constant (fits `i64` or was written as a non-negative `u64`).
    Int(i128),
    /// A floating-point constant.
    Float(f64),
}

/// A function to load: which family runs it, its kernel and its configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    /// Name for messages and metrics (`namespace/name` for functions from manifests).
    pub name: String,
    /// The family that runs it (annotation `vknf.io/kind`), for example `forest` or `generic`.
    pub kind: String,
    /// The kernel (validated SPIR-V: whole words, right magic).
    pub spirv: Vec<u8>,
    /// Kernel entry point.
    pub entry_point: String,
    /// Specialization constants.
    pub spec_constants: BTreeMap<SpecConstantKey, SpecConstantValue>,
    /// The family's own parameters, by name (annotation `vknf.io/<name>`); see [`crate::Family::params`].
    pub params: BTreeMap<String, String>,
    /// Most rows per batch; `None` lets the family choose.
    pub max_batch_rows: Option<usize>,
}

impl FunctionSpec {
    /// A spec of `kind` running `spirv` from `main`, with nothing else set.
    pub fn new(name: impl Into<String>, kind: impl Into<String>, spirv: Vec<u8>) -> FunctionSpec {
        FunctionSpec {
            name: name.into(),
            kind: kind.into(),
            spirv,
            entry_point: "main".to_owned(),
            spec_constants: BTreeMap::new(),
            params: BTreeMap::new(),
            max_batch_rows: None,
        }
    }

    /// The family parameter `name`, if set.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}
