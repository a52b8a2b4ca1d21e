//! # vknf-functions
//!
//! Network-function families and the contract they implement. A family ([`Family`]) validates its
//! specs and loads functions onto the CPU or a Vulkan device; a function ([`Function`]) describes its
//! typed input and outputs ([`FunctionInfo`]) and hands out lanes ([`Lane`]), each the staging memory
//! of one batch in flight. vknf ships two families ([`Families::builtin`]):
//!
//! - `forest`: the paper's encrypted-traffic classifier, random-forest inference with one generic
//!   SPIR-V kernel (`vknf_kernels::FOREST`) that serves any forest compiled by `vknf-forest`;
//! - `generic`: any SPIR-V kernel wired to requests by an ABI.
//!
//! Without the default `gpu` feature the crate has no Vulkan dependency: the contract, the schemas,
//! the families' validation and CPU implementations remain.

pub mod families;
mod family;
#[cfg(feature = "gpu")]
pub mod forest;
mod function;
mod loader;
mod registry;
mod schema;
mod spec;

pub use family::{Family, ParamError};
#[cfg(feature = "gpu")]
pub use function::vulkan_error;
pub use function::{DeviceInfo, ExecError, Function, FunctionLoader, Lane, LoadError, copy_to_device};
pub use loader::CpuLoader;
#[cfg(feature = "gpu")]
pub use loader::GpuLoader;
pub use registry::Families;
pub use schema::{DType, FunctionInfo, InputInfo, NON_FINITE_BLOCK, OutputInfo, any_non_finite, first_non_finite};
pub use spec::{FunctionSpec, SpecConstantKey, SpecConstantValue};

#[cfg(feature = "gpu")]
pub use forest::{
    BatchPlan, DEFAULT_SMALL_BATCH_ROWS, DispatchPipeline, ForestError, ForestKernel, ForestLane, ForestOptions,
    InputPath, KernelConfig, LaneResult, LaneStep, MAX_LANE_STEPS, PlanTrial, PlanTuning, SmallBatchConfig,
    candidate_plans,
};
