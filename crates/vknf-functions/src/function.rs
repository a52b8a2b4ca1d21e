//! The contract between a function family and whatever runs its functions (the function runtime's
//! batcher, benchmarks, tests).
//!
//! A [`FunctionLoader`] turns a [`FunctionSpec`] into a [`Function`]; a function hands out [`Lane`]s,
//! each owning the staging memory of one batch in flight, so that writing one batch, computing another
//! and reading a third back can overlap.

use std::sync::Arc;

use crate::schema::FunctionInfo;
use crate::spec::FunctionSpec;

/// Why executing a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The device is gone (GPU reset, driver crash, a kernel past its deadline). The device is reset
    /// and every function reloaded onto it after this; other devices keep serving.
    #[error("device lost: {0}")]
    DeviceLost(String),
    /// A batch did not finish within its function's kernel deadline: the device is treated as lost
    /// (work past its deadline cannot be trusted to ever finish) and the function is quarantined.
    #[error("kernel deadline missed: {0}")]
    DeadlineMissed(String),
    /// Out of memory while running.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The caller broke the lane contract (more rows than the lane holds, unknown output).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// The input holds a value the function refuses (for example NaN without missing-value routing).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Anything else.
    #[error("execution failed: {0}")]
    Failed(String),
}

impl ExecError {
    /// Whether the device must be reset and every function reloaded.
    pub fn is_device_lost(&self) -> bool {
        matches!(self, ExecError::DeviceLost(_) | ExecError::DeadlineMissed(_))
    }
}

/// Maps a runtime error onto the function contract's: device loss and out-of-memory keep their
/// meaning, the rest is a plain failure.
#[cfg(feature = "gpu")]
pub fn vulkan_error(err: vknf_vulkan::Error) -> ExecError {
    match err {
        vknf_vulkan::Error::OutOfMemory { .. } => ExecError::OutOfMemory(err.to_string()),
        vknf_vulkan::Error::Timeout(_) => ExecError::DeadlineMissed(err.to_string()),
        err if err.is_device_lost() => ExecError::DeviceLost(err.to_string()),
        err => ExecError::Failed(err.to_string()),
    }
}

/// Owns the staging memory of one in-flight batch (on the GPU: the mapped upload buffer, the readback
/// buffers and a command list).
pub trait Lane: Send {
    /// Most rows one run takes.
    fn capacity_rows(&self) -> usize;

    /// Lends the lane's input memory (row-major little-endian 4-byte elements of the input's dtype, at
    /// least `capacity_rows` rows) to `write`, which puts the next batch's rows there. On the GPU this is
    /// mapped device memory, so rows are written once, in place. Called before [`Lane::run`].
    fn write_input(&mut self, write: &mut dyn FnMut(&mut [u8])) -> Result<(), ExecError>;

    /// Whether a device reads the input memory rather than this host's cores: the runtime then writes it
    /// with streaming stores ([`copy_to_device`]), which leave no dirty lines in the host's caches for the
    /// device's reads to snoop. CPU lanes, whose own cores read the rows next, keep the default.
    fn input_read_by_device(&self) -> bool {
        false
    }

    /// Runs the first `n_rows` rows. Blocking: call it from a dedicated thread. Bit `i` of `mask` asks
    /// for output `i`; outputs that are not `on_request` are computed whatever the mask says.
    fn run(&mut self, n_rows: usize, mask: u32) -> Result<(), ExecError>;

    /// Copies rows `first_row..` of output `index` of the last run into `dst`, which holds a whole
    /// number of that output's rows (little-endian elements). This is the only host copy of a result:
    /// `dst` is the caller's answer buffer.
    fn read_output(&self, index: usize, first_row: usize, dst: &mut [u8]) -> Result<(), ExecError>;
}

/// A loaded network function: describes itself and creates lanes.
pub trait Function: Send + Sync + 'static {
    /// The function's schema.
    fn info(&self) -> &FunctionInfo;

    /// Creates one more lane (one more batch that may be in flight).
    fn new_lane(&self) -> Result<Box<dyn Lane>, ExecError>;
}

/// Why a function could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No family of this name is registered.
    #[error("function {function}: unknown kind {kind:?} (known kinds: {known})")]
    UnknownKind {
        /// Function name.
        function: String,
        /// Kind named by the spec.
        kind: String,
        /// The registered kinds, comma-separated.
        known: String,
    },
    /// The family cannot run on this loader's executor (for example a GPU-only family on the CPU).
    #[error("function {function}: kind {kind} is not supported by the {loader} loader")]
    UnsupportedKind {
        /// Function name.
        function: String,
        /// Kind named by the spec.
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

/// One device a loader loads functions onto, as status reports and metrics name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device's name (`NVIDIA H200`, `llvmpipe (LLVM 15.0.6, 256 bits)`, `cpu`).
    pub name: String,
    /// The device's type (`discrete-gpu`, `integrated-gpu`, `virtual-gpu`, `cpu`, `other`).
    pub device_type: String,
}

/// Turns a [`FunctionSpec`] (and its model bytes) into a runnable [`Function`] on one of its devices.
///
/// A loader has one or more devices, numbered from 0 in the order [`FunctionLoader::devices`] lists
/// them; the function runtime loads every function once per device and spreads its batches over all
/// of them. Each device fails and recovers on its own.
pub trait FunctionLoader: Send + Sync + 'static {
    /// A short name for logs ("cpu", "gpu").
    fn name(&self) -> &'static str;

    /// The devices functions are loaded onto; at least one. The default is one device named after
    /// the loader.
    fn devices(&self) -> Vec<DeviceInfo> {
        vec![DeviceInfo {
            name: self.name().to_string(),
            device_type: self.name().to_string(),
        }]
    }

    /// Loads one function onto `device` (an index into [`FunctionLoader::devices`]).
    fn load(&self, device: usize, spec: &FunctionSpec, model: Option<&[u8]>) -> Result<Arc<dyn Function>, LoadError>;

    /// Called after a lane of `device` reported [`ExecError::DeviceLost`], before every function is
    /// loaded onto it again: recreate the device here. The default does nothing (for loaders without a
    /// device).
    fn reset(&self, device: usize) -> Result<(), LoadError> {
        let _ = device;
        Ok(())
    }
}

/// Copies `src` into `dst` (equal lengths) for a device to read: streaming stores on the GPU build
/// (`vknf_vulkan::copy_streaming`), an ordinary copy otherwise.
pub fn copy_to_device(dst: &mut [u8], src: &[u8]) {
    #[cfg(feature = "gpu")]
    vknf_vulkan::copy_streaming(dst, src);
    #[cfg(not(feature = "gpu"))]
    dst.copy_from_slice(src);
}
