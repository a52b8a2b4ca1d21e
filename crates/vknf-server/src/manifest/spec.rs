//! The validated description of one network function, as read from its manifest.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exec::DType;

/// What executes a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FunctionKind {
    /// vknf's random-forest kernel over a compiled `.vkf` model.
    Forest,
    /// Any SPIR-V kernel, wired by a [`GenericAbi`]; only the GPU loader runs these.
    Generic,
}

impl FunctionKind {
    /// The annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionKind::Forest => "forest",
            FunctionKind::Generic => "generic",
        }
    }
}

impl fmt::Display for FunctionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Namespace and name of a function's Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey {
    /// Kubernetes namespace (`default` when the manifest names none).
    pub namespace: String,
    /// Service name.
    pub name: String,
}

impl fmt::Display for FunctionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

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

/// The model bytes of a function, assembled from ConfigMaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// ConfigMap names, in the order their parts are concatenated.
    pub configmaps: Vec<String>,
    /// SHA-256 of the assembled bytes (checked when parsing).
    pub sha256: [u8; 32],
    /// Length of the assembled bytes.
    pub len: usize,
}

/// Descriptor set and binding of a kernel resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BindingRef {
    /// Descriptor set (0 when omitted).
    #[serde(default)]
    pub set: u32,
    /// Binding number.
    pub binding: u32,
}

/// The request-input buffer of a generic kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbiInput {
    /// Where the input buffer is bound.
    #[serde(flatten)]
    pub at: BindingRef,
    /// `f32` values per row.
    pub width: usize,
}

/// A buffer of a generic kernel filled once from the model bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbiResident {
    /// Where the buffer is bound.
    #[serde(flatten)]
    pub at: BindingRef,
    /// Byte offset into the model.
    pub offset: u64,
    /// Byte length.
    pub length: u64,
}

/// An output buffer of a generic kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbiOutput {
    /// Where the buffer is bound.
    #[serde(flatten)]
    pub at: BindingRef,
    /// Output name, reported to clients.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Elements per row.
    pub width: usize,
    /// Computed only when asked for.
    #[serde(default)]
    pub on_request: bool,
}

/// Where the row count of a batch goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbiRowCount {
    /// Byte offset of a `uint` in the push-constant block.
    pub push_constant_offset: u32,
}

/// How a generic kernel's resources map onto requests, model bytes and outputs
/// (annotation `vknf.io/abi`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericAbi {
    /// The request rows.
    pub input: AbiInput,
    /// Buffers uploaded once from the model bytes.
    #[serde(default)]
    pub resident: Vec<AbiResident>,
    /// Outputs, in wire order.
    pub outputs: Vec<AbiOutput>,
    /// The push constant receiving the row count.
    pub row_count: AbiRowCount,
    /// Whether NaN and infinities are valid input.
    #[serde(default)]
    pub accepts_nan: bool,
}

/// A validated network function.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    /// Namespace and name of the Service.
    pub key: FunctionKey,
    /// TCP port the function listens on.
    pub port: u16,
    /// What executes it.
    pub kind: FunctionKind,
    /// The kernel (validated SPIR-V: whole words, right magic).
    pub spirv: Vec<u8>,
    /// Kernel entry point.
    pub entry_point: String,
    /// Specialization constants.
    pub spec_constants: BTreeMap<SpecConstantKey, SpecConstantValue>,
    /// Resource wiring, for kind `generic` only.
    pub abi: Option<GenericAbi>,
    /// Most rows per batch; `None` lets the loader choose.
    pub max_batch_rows: Option<usize>,
    /// Longest a batch waits to fill up; `None` takes the server default.
    pub max_wait: Option<Duration>,
    /// Where the model bytes come from.
    pub model: Option<ModelRef>,
    /// Host addresses from the Endpoints / EndpointSlices of the Service.
    pub endpoints: Vec<IpAddr>,
}

impl FunctionSpec {
    /// Whether two specs describe the same running function (everything but placement).
    pub fn same_function(&self, other: &FunctionSpec) -> bool {
        let FunctionSpec {
            key,
            port,
            kind,
            spirv,
            entry_point,
            spec_constants,
            abi,
            max_batch_rows,
            max_wait,
            model,
            endpoints: _,
        } = self;
        *key == other.key
            && *port == other.port
            && *kind == other.kind
            && *spirv == other.spirv
            && *entry_point == other.entry_point
            && *spec_constants == other.spec_constants
            && *abi == other.abi
            && *max_batch_rows == other.max_batch_rows
            && *max_wait == other.max_wait
            && *model == other.model
    }
}
