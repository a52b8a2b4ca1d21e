//! Typed errors of the runtime. Each message says what went wrong and what to do about it.

use std::time::Duration;

use ash::vk;

/// Every failure the runtime reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Vulkan loader library could not be opened.
    #[error(
        "the Vulkan loader could not be loaded ({0}); install it (Debian: `apt-get install libvulkan1 mesa-vulkan-drivers`)"
    )]
    LoaderMissing(String),
    /// The loader works but no usable device exists.
    #[error(
        "no Vulkan 1.2 compute device found; install a driver (Debian's `mesa-vulkan-drivers` provides lavapipe, a CPU device)"
    )]
    NoDevice,
    /// A device selector matched nothing.
    #[error("no Vulkan device matches {selector:?}; available devices: {available}")]
    DeviceNotFound {
        /// The selector as the user wrote it.
        selector: String,
        /// A one-line list of the devices that exist.
        available: String,
    },
    /// A device selector could not be parsed.
    #[error("invalid device selector {0:?}: use an index (0), a UUID (32 hex digits), or part of a device name")]
    BadSelector(String),
    /// The device lacks a feature the runtime needs.
    #[error("device {device:?} is not supported: {reason}")]
    Unsupported {
        /// Device name.
        device: String,
        /// What is missing.
        reason: String,
    },
    /// A Vulkan call returned an error code.
    #[error("Vulkan call {call} failed: {result}")]
    Vulkan {
        /// The entry point that failed.
        call: &'static str,
        /// Its result code.
        result: vk::Result,
    },
    /// The device was lost (driver reset, GPU fault, or a deadline passed): nothing more can run on it.
    #[error("the device is lost ({0}); drop it and create a new `Device` to continue")]
    DeviceLost(String),
    /// A host wait reached its deadline. The device is marked lost.
    #[error("the GPU did not finish within {0:?}; the device is now marked lost: create a new `Device` to continue")]
    Timeout(Duration),
    /// Device or host memory ran out.
    #[error("out of memory allocating {size} bytes for {name:?}: {message}")]
    OutOfMemory {
        /// Allocation name.
        name: String,
        /// Bytes asked for.
        size: u64,
        /// The allocator's explanation.
        message: String,
    },
    /// Any other allocator failure.
    #[error("memory allocation for {name:?} failed: {message}")]
    Allocation {
        /// Allocation name.
        name: String,
        /// The allocator's explanation.
        message: String,
    },
    /// The SPIR-V module is malformed or fails the Khronos validator.
    #[error("invalid SPIR-V: {0}")]
    InvalidSpirv(String),
    /// The module could not be reflected or uses something the runtime cannot bind.
    #[error("cannot use this kernel: {0}")]
    Reflection(String),
    /// A specialization constant was set that the kernel does not declare, or with the wrong type.
    #[error("specialization constant {name:?}: {problem}")]
    SpecConstant {
        /// The id or name used.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// Buffers given to a pipeline do not match its reflected bindings.
    #[error("binding mismatch: {0}")]
    Binding(String),
    /// A buffer access fell outside the buffer, or used a buffer of the wrong kind.
    #[error("buffer {name:?}: {problem}")]
    BufferAccess {
        /// Buffer name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// Push constants do not match the kernel's declared block.
    #[error("push constants: {0}")]
    PushConstants(String),
    /// A command list was reused while the GPU still executes it.
    #[error("command list is still executing on the GPU; wait for its ticket before resubmitting or re-recording")]
    StillExecuting,
    /// The Khronos validation layer reported errors.
    #[error("the Vulkan validation layer reported {} error(s); first: {}", .0.len(), .0.first().map(String::as_str).unwrap_or(""))]
    Validation(Vec<String>),
    /// File-system failure (pipeline cache).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Maps a Vulkan result code, turning device loss into [`Error::DeviceLost`].
    pub(crate) fn vk(call: &'static str, result: vk::Result) -> Self {
        match result {
            vk::Result::ERROR_DEVICE_LOST => Error::DeviceLost(format!("{call} returned VK_ERROR_DEVICE_LOST")),
            result => Error::Vulkan { call, result },
        }
    }

    /// True for errors after which the device must be re-created.
    pub fn is_device_lost(&self) -> bool {
        matches!(self, Error::DeviceLost(_) | Error::Timeout(_))
    }
}

/// Extension to attach the Vulkan entry point's name to a raw `VkResult`.
pub(crate) trait VkResultExt<T> {
    fn call(self, name: &'static str) -> Result<T>;
}

impl<T> VkResultExt<T> for std::result::Result<T, vk::Result> {
    fn call(self, name: &'static str) -> Result<T> {
        self.map_err(|result| Error::vk(name, result))
    }
}
