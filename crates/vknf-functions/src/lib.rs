//! # vknf-functions
//!
//! Network functions that run on the GPU through the `vknf-vulkan` runtime. The flagship is the
//! paper's encrypted-traffic classifier: random-forest inference with one generic SPIR-V kernel
//! (`vknf_kernels::FOREST`) that serves any forest compiled by `vknf-forest`; the model is data.

pub mod forest;

pub use forest::{
    DEFAULT_SMALL_BATCH_ROWS, ForestError, ForestKernel, ForestLane, ForestOptions, InputPath, KernelConfig,
    LaneResult, SmallBatchConfig,
};
