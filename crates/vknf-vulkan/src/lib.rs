//! # vknf-vulkan
//!
//! A safe Vulkan compute runtime over [`ash`]: it runs SPIR-V compute kernels on any Vulkan 1.2 device
//! (NVIDIA, AMD, Intel, Apple through MoltenVK, Mesa's lavapipe on a CPU), several devices at once.
//!
//! - [`Instance`] loads the Vulkan library at run time, optionally with the Khronos validation layer,
//!   and describes every device ([`AdapterInfo`]); [`DeviceSelector`] picks one by policy, index, name or
//!   UUID (`VKNF_DEVICE`).
//! - [`Device`] opens a compute queue family without graphics where one exists and a transfer-only
//!   family where one exists; [`Stream`]s submit to them.
//! - [`Buffer`]s are sub-allocated by gpu-allocator ([`MemoryKind`]: device-local, upload, readback) and
//!   persistently mapped. Allocate once, dispatch a million times.
//! - [`Kernel`]s are validated with SPIRV-Tools and reflected (bindings, push constants, specialization
//!   constants, workgroup size); [`Pipeline`]s come from a disk-persisted pipeline cache.
//! - [`CommandList`]s are recorded once and reused; [`Ticket`]s are waited on with deadlines; a missed
//!   deadline or `VK_ERROR_DEVICE_LOST` is a typed error after which a new [`Device`] can be created.
//!
//! ```no_run
//! use std::time::Duration;
//! use vknf_vulkan::*;
//! # fn main() -> Result<()> {
//! # let spirv: &[u8] = &[];
//! let instance = Instance::new(&InstanceOptions::default())?;
//! let device = Device::select(&instance, &DeviceSelector::from_env()?)?;
//! let kernel = Kernel::new(&device, spirv, "main")?;
//! let pipeline = device.create_pipeline(&kernel, &Specialization::new().name("WORKGROUP_SIZE", 64u32))?;
//! let data = device.create_buffer_with("data", &[1.0f32; 1024], MemoryKind::Upload)?;
//! let bind_group = pipeline.bind(&[(0, &data)])?;
//! let mut stream = device.stream(QueueKind::Compute)?;
//! let mut list = stream.record(|rec| rec.dispatch(&bind_group, &1024u32, [pipeline.groups_for(1024), 1, 1]))?;
//! stream.run(&mut list, Duration::from_secs(1))?;
//! # Ok(()) }
//! ```

mod adapter;
mod cache;
mod device;
mod error;
mod instance;
mod memory;
mod pipeline;
pub mod reflect;
mod streaming;
mod submit;
pub mod validate;

pub use adapter::{
    AdapterInfo, ComputeUnits, DeviceSelection, DeviceSelector, DeviceType, MemoryHeapInfo, QueueFamilyInfo,
};
pub use device::clock::ClockReading;
pub use device::queues::{AssignedQueue, QueueChoice, QueueLease, choose_queue};
pub use device::{Device, MemoryReport, QueueKind};
pub use error::{Error, Result};
pub use instance::{Instance, InstanceOptions};
pub use memory::{Buffer, Mapped, MemoryKind};
pub use pipeline::{BindGroup, Kernel, Pipeline, PipelineStatistic, Specialization, StatisticValue};
pub use reflect::{Access, BindingInfo, BindingKind, KernelInfo, SpecType, SpecValue};
pub use streaming::copy_streaming;
pub use submit::{CommandList, Recorder, Stream, Ticket, Timestamps};
