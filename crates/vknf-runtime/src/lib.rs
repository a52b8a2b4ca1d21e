//! # vknf-runtime
//!
//! The function runtime: functions loaded in process and called by anyone (front ends, the traffic path,
//! tests), with one admission, batching and backpressure policy for every caller.
//!
//! ```text
//! caller --Call{Rows, outputs, deadline}--> FunctionHandle --admit--> queue --batcher--> lane threads
//!   ^                                                                                     |
//!   +------------ Reply (answer buffers lent by the caller, written once) <---------------+
//! ```
//!
//! - [`Runtime`]: loads functions through a [`vknf_functions::FunctionLoader`], swaps new versions in
//!   (hot reload), removes them, recovers from device loss and shuts down without losing admitted calls.
//! - [`FunctionHandle`]: calls a function: async ([`FunctionHandle::call`]), blocking
//!   ([`FunctionHandle::call_blocking`]), into a [`CallSlot`] the caller keeps between calls
//!   ([`FunctionHandle::call_in`], [`FunctionHandle::call_blocking_in`]: nothing allocated per call)
//!   or with a reply of the caller's ([`FunctionHandle::submit`], which front ends use to write
//!   answers straight into their frames).
//! - [`Call`], [`Rows`], [`CallError`]: typed rows in (f32, u32, i32), typed errors out.
//! - [`Metrics`]: Prometheus metrics of every call.
//! - [`MemoryBudget`]: the process's one memory budget (requests being received, queued calls, unsent
//!   answers), with a share per client; every front end charges it.

mod answer;
mod budget;
mod call;
mod call_slot;
mod engine;
mod handle;
mod job;
mod lane_worker;
mod metrics;
mod runtime;

pub use answer::{Answer, Tensor};
pub use budget::{Account, Category, Charge, ClientBudget, MemoryBudget, Refusal};
pub use call::{AnswerLayout, Call, CallError, Reply, Rows};
pub use call_slot::CallSlot;
pub use handle::FunctionHandle;
pub use metrics::{
    DeviceInfoLabels, DeviceLabels, ErrorLabels, FunctionLabels, Metrics, ProtocolErrorLabels, ProtocolLabels,
};
pub use runtime::{DeviceHealth, DeviceStatus, LoadFailure, MAX_QUARANTINE, Runtime, RuntimeSettings};
pub use vknf_functions::{DType, DeviceInfo, FunctionInfo, FunctionSpec, InputInfo, OutputInfo, first_non_finite};
