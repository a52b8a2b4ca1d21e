//! The `generic` family: any SPIR-V compute kernel, wired to requests by an ABI (parameter `abi`,
//! annotation `vknf.io/abi`): the request rows go to the input binding, resident buffers come from
//! byte ranges of the model, outputs are read back per row, the row count goes to a push-constant
//! field, and the kernel runs one invocation per row along x. GPU only.

use std::collections::BTreeSet;
#[cfg(feature = "gpu")]
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::family::{Family, ParamError};
#[cfg(feature = "gpu")]
use crate::function::{Function, LoadError};
use crate::schema::DType;
use crate::spec::FunctionSpec;

/// The family parameter holding the ABI JSON.
pub const ABI_PARAM: &str = "abi";

/// The parameter bounding one batch's kernel time in milliseconds (`vknf.io/deadline-ms`; default
/// 10 s, as for forests). A batch past it makes the device lost and the function quarantined.
pub const DEADLINE_PARAM: &str = "deadline-ms";

/// The longest deadline a function may ask for.
pub const MAX_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// The kernel deadline `spec` asks for, checked.
pub fn kernel_deadline(spec: &FunctionSpec) -> Result<Option<std::time::Duration>, ParamError> {
    let Some(text) = spec.param(DEADLINE_PARAM) else {
        return Ok(None);
    };
    let millis: u64 = text
        .trim()
        .parse()
        .map_err(|_| ParamError::new(DEADLINE_PARAM, "not a whole number of milliseconds".to_string()))?;
    let deadline = std::time::Duration::from_millis(millis);
    if millis == 0 || deadline > MAX_DEADLINE {
        return Err(ParamError::new(
            DEADLINE_PARAM,
            format!("{millis} ms: a deadline is 1 ms to {} s", MAX_DEADLINE.as_secs()),
        ));
    }
    Ok(Some(deadline))
}
/// Rows per batch of a generic function when the spec does not say.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 4096;

/// Descriptor set and binding of a kernel resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BindingRef {
    /// Descriptor set (0 when omitted).
    #[serde(default)]
    pub set: u32,
    /// Binding number.
    pub binding: u32,
}

fn f32_dtype() -> DType {
    DType::F32
}

fn is_f32(dtype: &DType) -> bool {
    *dtype == DType::F32
}

/// The request-input buffer of a generic kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbiInput {
    /// Where the input buffer is bound.
    #[serde(flatten)]
    pub at: BindingRef,
    /// Elements per row.
    pub width: usize,
    /// Element type of the input (default `f32`); integers are passed bit for bit.
    #[serde(default = "f32_dtype", skip_serializing_if = "is_f32")]
    pub dtype: DType,
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

/// How a generic kernel's resources map onto requests, model bytes and outputs.
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
    /// Whether NaN and infinities are valid float input.
    #[serde(default)]
    pub accepts_nan: bool,
}

impl GenericAbi {
    /// Parses and checks the ABI JSON against a model of `model_len` bytes.
    pub fn parse(json: &str, model_len: usize) -> Result<GenericAbi, ParamError> {
        let abi: GenericAbi =
            serde_json::from_str(json).map_err(|e| ParamError::new(ABI_PARAM, format!("invalid ABI JSON: {e}")))?;
        abi.check(model_len)?;
        Ok(abi)
    }

    /// The ABI as the JSON of its parameter.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the ABI serialises")
    }

    fn check(&self, model_len: usize) -> Result<(), ParamError> {
        let fail = |reason: String| Err(ParamError::new(ABI_PARAM, reason));
        if self.input.width == 0 {
            return fail("input width must be at least 1".into());
        }
        if self.outputs.is_empty() || self.outputs.len() > 32 {
            return fail(format!("{} outputs; between 1 and 32 are allowed", self.outputs.len()));
        }
        let mut bindings = BTreeSet::from([self.input.at]);
        let mut names = BTreeSet::new();
        for output in &self.outputs {
            if output.width == 0 {
                return fail(format!("output {:?} has width 0", output.name));
            }
            if output.name.is_empty() || !names.insert(output.name.as_str()) {
                return fail(format!("output name {:?} is empty or repeated", output.name));
            }
            if !bindings.insert(output.at) {
                return fail(format!("binding {}.{} is used twice", output.at.set, output.at.binding));
            }
        }
        for resident in &self.resident {
            if !bindings.insert(resident.at) {
                return fail(format!(
                    "binding {}.{} is used twice",
                    resident.at.set, resident.at.binding
                ));
            }
            let end = resident.offset.checked_add(resident.length);
            if resident.length == 0 || resident.offset % 4 != 0 || end.is_none_or(|e| e > model_len as u64) {
                return fail(format!(
                    "resident binding {}.{}: bytes {}..+{} are empty, unaligned or outside the {model_len}-byte model",
                    resident.at.set, resident.at.binding, resident.offset, resident.length
                ));
            }
        }
        if self.row_count.push_constant_offset % 4 != 0 {
            return fail("row_count.push_constant_offset must be a multiple of 4".into());
        }
        Ok(())
    }
}

/// The `generic` family.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenericFamily;

impl Family for GenericFamily {
    fn kind(&self) -> &'static str {
        "generic"
    }

    fn params(&self) -> &'static [&'static str] {
        &[ABI_PARAM, DEADLINE_PARAM]
    }

    fn needs_model(&self) -> bool {
        false
    }

    fn validate(&self, spec: &FunctionSpec, model_len: Option<usize>) -> Result<(), ParamError> {
        let json = spec.param(ABI_PARAM).ok_or_else(|| ParamError::missing(ABI_PARAM))?;
        kernel_deadline(spec)?;
        GenericAbi::parse(json, model_len.unwrap_or(0)).map(|_| ())
    }

    #[cfg(feature = "gpu")]
    fn load_gpu(
        &self,
        device: &vknf_vulkan::Device,
        _devices_serving: usize,
        spec: &FunctionSpec,
        model: Option<&[u8]>,
    ) -> Result<Arc<dyn Function>, LoadError> {
        Ok(Arc::new(gpu::GpuGenericFunction::load(device, spec, model)?))
    }
}

#[cfg(feature = "gpu")]
mod gpu;
#[cfg(feature = "gpu")]
pub use gpu::GpuGenericFunction;
