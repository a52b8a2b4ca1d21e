//! The contract between the server and whatever executes a network function (the GPU runtime,
//! or the CPU reference loader of this crate).
//!
//! A [`FunctionLoader`] turns a [`FunctionSpec`] into a [`Function`]; a function hands out
//! [`Lane`]s, each owning the staging memory of one batch in flight, so that uploading one batch,
//! computing another and reading a third back can overlap.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::manifest::FunctionSpec;

/// Element type of a function output (all are four bytes wide, little-endian on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// IEEE-754 single precision float.
    F32,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        4
    }

    /// The code used on the wire (see docs/protocol.md).
    pub const fn wire_code(self) -> u8 {
        match self {
            DType::U32 => 1,
            DType::I32 => 2,
            DType::F32 => 3,
        }
    }

    /// Inverse of [`DType::wire_code`].
    pub const fn from_wire_code(code: u8) -> Option<DType> {
        match code {
            1 => Some(DType::U32),
            2 => Some(DType::I32),
            3 => Some(DType::F32),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::U32 => "u32",
            DType::I32 => "i32",
            DType::F32 => "f32",
        })
    }
}

/// One output of a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputInfo {
    /// Name of the output, for example `"labels"` or `"scores"`.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Elements per input row.
    pub width: usize,
    /// Computed only when a request asks for it (bit `i` of the request's output mask).
    pub on_request: bool,
}

/// What a loaded network function tells the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    /// `f32` values per input row.
    pub input_width: usize,
    /// The outputs, in wire order (the request's output mask indexes this list).
    pub outputs: Vec<OutputInfo>,
    /// Most rows one lane runs at once; larger requests are split across batches.
    pub max_batch_rows: usize,
    /// Whether NaN and infinities are valid input; when false the server rejects them per request.
    pub accepts_nan: bool,
}

impl FunctionInfo {
    /// Output mask with a bit for every output that is always computed.
    pub fn mandatory_mask(&self) -> u32 {
        self.outputs
            .iter()
            .enumerate()
            .filter(|(_, o)| !o.on_request)
            .fold(0, |mask, (i, _)| mask | (1 << i))
    }

    /// Output mask with a bit for every output.
    pub fn full_mask(&self) -> u32 {
        if self.outputs.len() >= 32 {
            u32::MAX
        } else {
            (1u32 << self.outputs.len()) - 1
        }
    }

    /// Index of the output called `name`.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|o| o.name == name)
    }
}

/// Why executing a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The device is gone (GPU reset, driver crash). Every function is reloaded after this.
    #[error("device lost: {0}")]
    DeviceLost(String),
    /// Out of memory while running.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The caller broke the lane contract (more rows than the lane holds, wrong mask length).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// Anything else.
    #[error("execution failed: {0}")]
    Failed(String),
}

impl ExecError {
    /// Whether the device must be reset and every function reloaded.
    pub fn is_device_lost(&self) -> bool {
        matches!(self, ExecError::DeviceLost(_))
    }
}

/// Outputs of one run of a lane, borrowed from the lane's readback memory.
pub struct LaneOutputs<'a> {
    /// Per [`OutputInfo`]: `n_rows * width` elements of its dtype, little-endian; `None` when not
    /// requested.
    pub outputs: Vec<Option<&'a [u8]>>,
}

/// Owns the staging memory of one in-flight batch (on the GPU: the mapped upload buffer, the
/// readback buffers and a command buffer).
pub trait Lane: Send {
    /// Most rows one run takes.
    fn capacity_rows(&self) -> usize;

    /// Lends the lane's input memory (row-major `f32`, at least `capacity_rows` rows) to `write`,
    /// which puts the next batch's rows there. On the GPU this is mapped device memory, so rows
    /// are written once, in place. Called on the lane's thread, before [`Lane::run`].
    fn write_input(&mut self, write: &mut dyn FnMut(&mut [f32])) -> Result<(), ExecError>;

    /// Runs the first `n_rows` rows. Blocking: call it from a dedicated thread.
    ///
    /// `want` has one flag per [`OutputInfo`]; outputs that are not `on_request` are always
    /// wanted.
    fn run(&mut self, n_rows: usize, want: &[bool]) -> Result<LaneOutputs<'_>, ExecError>;
}

/// A loaded network function: describes itself and creates lanes.
pub trait Function: Send + Sync + 'static {
    /// The function's shape.
    fn info(&self) -> &FunctionInfo;

    /// Creates one more lane (one more batch that may be in flight).
    fn new_lane(&self) -> Result<Box<dyn Lane>, ExecError>;
}

/// Why a function could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// This loader cannot run functions of this kind.
    #[error("function {function}: kind {kind} is not supported by the {loader} loader")]
    UnsupportedKind {
        /// Function name.
        function: String,
        /// Kind named by the manifest.
        kind: String,
        /// Which loader refused.
        loader: &'static str,
    },
    /// The function needs model bytes and none were given.
    #[error("function {0}: a model is required (annotation vknf.io/model-configmaps)")]
    MissingModel(String),
    /// The model bytes are not a valid model.
    #[error("function {function}: invalid model: {reason}")]
    InvalidModel {
        /// Function name.
        function: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The spec is inconsistent with the model or the kernel.
    #[error("function {function}: {reason}")]
    InvalidSpec {
        /// Function name.
        function: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The device failed while loading.
    #[error("function {function}: {source}")]
    Exec {
        /// Function name.
        function: String,
        /// The execution error.
        #[source]
        source: ExecError,
    },
}

/// Turns a [`FunctionSpec`] (and its model bytes) into a runnable [`Function`].
pub trait FunctionLoader: Send + Sync + 'static {
    /// A short name for logs ("cpu", "vulkan").
    fn name(&self) -> &'static str;

    /// Loads one function.
    fn load(&self, spec: &FunctionSpec, model: Option<&[u8]>) -> Result<Arc<dyn Function>, LoadError>;

    /// Called after a lane reported [`ExecError::DeviceLost`], before every function is loaded
    /// again: recreate the device here. The default does nothing (for loaders without a device).
    fn reset(&self) -> Result<(), LoadError> {
        Ok(())
    }
}
