//! A logical device: its queues (a dedicated compute family and a transfer-only family where the
//! hardware has them), its memory allocator and its on-disk pipeline cache.

pub(crate) mod clock;
pub(crate) mod queues;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ash::vk;
use gpu_allocator::vulkan::{Allocator, AllocatorCreateDesc};
use parking_lot::Mutex;
use serde::Serialize;

use crate::adapter::AdapterInfo;
use crate::cache::PipelineCache;
use crate::error::{Error, Result, VkResultExt};
use crate::instance::Instance;

/// Which queue family a stream submits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueKind {
    /// The compute family (dispatches and copies).
    Compute,
    /// The transfer-only family if the device has one, otherwise the compute family.
    Transfer,
}

pub(crate) struct QueueFamily {
    pub(crate) family: u32,
    pub(crate) queues: Vec<Mutex<vk::Queue>>,
    next: AtomicUsize,
    /// How many functions' leases use each queue (see `queues`).
    pub(crate) owners: Mutex<Vec<usize>>,
}

impl QueueFamily {
    /// Streams of no function are spread over the family's queues round-robin.
    pub(crate) fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len()
    }
}

/// Live device memory as the allocator accounts for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryReport {
    /// Bytes handed out to live buffers.
    pub allocated_bytes: u64,
    /// Bytes of device memory blocks reserved from the driver.
    pub reserved_bytes: u64,
    /// Number of live allocations.
    pub allocations: usize,
}

/// A logical Vulkan device. Cheap to clone; buffers, pipelines and streams keep it alive. A view made
/// by [`Device::for_function`] is the same device whose streams take queues for one function.
#[derive(Clone)]
pub struct Device {
    pub(crate) shared: Arc<DeviceShared>,
    pub(crate) lease: Option<Arc<queues::QueueLease>>,
}

pub(crate) struct DeviceShared {
    pub(crate) instance: Instance,
    pub(crate) raw: ash::Device,
    pub(crate) info: AdapterInfo,
    pub(crate) allocator: Mutex<Option<Allocator>>,
    pub(crate) compute: QueueFamily,
    pub(crate) transfer: Option<QueueFamily>,
    pub(crate) lost: AtomicBool,
    pub(crate) pipeline_cache: PipelineCache,
    pub(crate) spirv_env: crate::validate::TargetEnv,
    /// `hostQueryReset` is enabled: timestamp slots can be reset by the host (a transfer queue cannot
    /// reset them itself).
    pub(crate) host_query_reset: bool,
    /// The calibrated-timestamp entry point, where the device offers one ([`Device::read_clocks`]).
    pub(crate) calibration: Option<clock::Calibration>,
    /// Where pipelines' statistics are kept ([`crate::InstanceOptions::pipeline_statistics`]) and the
    /// driver offers them: the entry points that read them.
    pub(crate) pipeline_statistics: Option<ash::khr::pipeline_executable_properties::Device>,
}

/// How many queues of one family the runtime opens at most.
const MAX_QUEUES_PER_FAMILY: u32 = 4;

impl Device {
    /// Creates a logical device on the adapter `info` describes (from [`Instance::adapters`] or
    /// [`Instance::select`]).
    pub fn new(instance: &Instance, info: &AdapterInfo) -> Result<Device> {
        let physical = instance
            .physical_device(info.index)
            .ok_or_else(|| Error::DeviceNotFound {
                selector: format!("index {}", info.index),
                available: String::new(),
            })?;
        let compute_family = info.compute_family().ok_or_else(|| Error::Unsupported {
            device: info.name.clone(),
            reason: "no compute queue family".into(),
        })?;
        let transfer_family = info.transfer_family();
        let priorities = [1.0f32; MAX_QUEUES_PER_FAMILY as usize];
        let mut queue_infos = vec![
            vk::DeviceQueueCreateInfo::default()
                .queue_family_index(compute_family.index)
                .queue_priorities(&priorities[..compute_family.count.min(MAX_QUEUES_PER_FAMILY) as usize]),
        ];
        if let Some(transfer) = transfer_family {
            queue_infos.push(
                vk::DeviceQueueCreateInfo::default()
                    .queue_family_index(transfer.index)
                    .queue_priorities(&priorities[..transfer.count.min(MAX_QUEUES_PER_FAMILY) as usize]),
            );
        }

        let raw_instance = &instance.shared.raw;
        // Timeline semaphores are core in 1.2 but must still be enabled.
        let mut vk12 = vk::PhysicalDeviceVulkan12Features::default();
        let mut supported = vk::PhysicalDeviceFeatures2::default().push_next(&mut vk12);
        // SAFETY: `physical` belongs to this instance; the chained struct is writable.
        unsafe { raw_instance.get_physical_device_features2(physical, &mut supported) };
        if vk12.timeline_semaphore == vk::FALSE {
            return Err(Error::Unsupported {
                device: info.name.clone(),
                reason: "timeline semaphores".into(),
            });
        }
        let host_query_reset = vk12.host_query_reset == vk::TRUE;
        let mut enabled12 = vk::PhysicalDeviceVulkan12Features::default()
            .timeline_semaphore(true)
            .shader_int8(vk12.shader_int8 == vk::TRUE)
            .storage_buffer8_bit_access(vk12.storage_buffer8_bit_access == vk::TRUE)
            .uniform_and_storage_buffer8_bit_access(vk12.uniform_and_storage_buffer8_bit_access == vk::TRUE)
            .host_query_reset(host_query_reset);
        let mut extension_names = Vec::new();
        // MoltenVK requires portability-subset to be enabled when it is offered.
        // SAFETY: `physical` belongs to this instance.
        let extensions = unsafe { raw_instance.enumerate_device_extension_properties(physical) }
            .call("vkEnumerateDeviceExtensionProperties")?;
        if extensions.iter().any(|e| {
            e.extension_name_as_c_str()
                .is_ok_and(|n| n == ash::khr::portability_subset::NAME)
        }) {
            extension_names.push(ash::khr::portability_subset::NAME.as_ptr());
        }
        // For placing GPU timestamps on the host's clock (timelines); enabled wherever offered.
        let calibration_extension =
            clock::Calibration::extension(&instance.shared.entry, raw_instance, physical, &extensions);
        if let Some(name) = calibration_extension {
            extension_names.push(name.as_ptr());
        }
        // Pipeline statistics (registers a thread ...), only where asked for: keeping them may slow
        // compilation or caching.
        let mut executable_info = vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR::default();
        let statistics = instance.shared.pipeline_statistics && info.pipeline_statistics && {
            let mut supported = vk::PhysicalDeviceFeatures2::default().push_next(&mut executable_info);
            // SAFETY: `physical` belongs to this instance; the chained struct is writable.
            unsafe { raw_instance.get_physical_device_features2(physical, &mut supported) };
            executable_info.pipeline_executable_info == vk::TRUE
        };
        if statistics {
            extension_names.push(ash::khr::pipeline_executable_properties::NAME.as_ptr());
        }
        let mut enabled_executable_info =
            vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR::default().pipeline_executable_info(true);
        let mut create_info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queue_infos)
            .enabled_extension_names(&extension_names)
            .push_next(&mut enabled12);
        if statistics {
            create_info = create_info.push_next(&mut enabled_executable_info);
        }
        // SAFETY: every pointer in `create_info` refers to locals that outlive the call.
        let raw = unsafe { raw_instance.create_device(physical, &create_info, None) }.call("vkCreateDevice")?;

        let open_family = |family: u32, count: u32| QueueFamily {
            family,
            queues: (0..count.min(MAX_QUEUES_PER_FAMILY))
                // SAFETY: these queues were requested in `create_info`.
                .map(|i| Mutex::new(unsafe { raw.get_device_queue(family, i) }))
                .collect(),
            next: AtomicUsize::new(0),
            owners: Mutex::new(vec![0; count.min(MAX_QUEUES_PER_FAMILY) as usize]),
        };
        let calibration = calibration_extension.map(|name| clock::Calibration::load(raw_instance, &raw, name));
        let pipeline_statistics =
            statistics.then(|| ash::khr::pipeline_executable_properties::Device::new(raw_instance, &raw));
        let compute = open_family(compute_family.index, compute_family.count);
        let transfer = transfer_family.map(|f| open_family(f.index, f.count));

        let allocator = Allocator::new(&AllocatorCreateDesc {
            instance: raw_instance.clone(),
            device: raw.clone(),
            physical_device: physical,
            debug_settings: Default::default(),
            buffer_device_address: false,
            allocation_sizes: Default::default(),
        });
        let allocator = match allocator {
            Ok(allocator) => allocator,
            Err(err) => {
                // SAFETY: nothing was created from the device yet.
                unsafe { raw.destroy_device(None) };
                return Err(Error::Allocation {
                    name: "allocator".into(),
                    message: err.to_string(),
                });
            }
        };
        let pipeline_cache = PipelineCache::open(&raw, info, instance.shared.pipeline_cache_dir.as_deref());
        let spirv_env = crate::validate::TargetEnv::for_api_version(&info.api_version);
        tracing::info!(device = %info.name, driver = %info.driver_info, "vulkan device created");
        Ok(Device {
            shared: Arc::new(DeviceShared {
                instance: instance.clone(),
                raw,
                info: info.clone(),
                allocator: Mutex::new(Some(allocator)),
                compute,
                transfer,
                lost: AtomicBool::new(false),
                pipeline_cache,
                spirv_env,
                host_query_reset,
                calibration,
                pipeline_statistics,
            }),
            lease: None,
        })
    }

    /// Creates an instance-less shortcut: picks a device by `selector` on `instance`.
    pub fn select(instance: &Instance, selector: &crate::DeviceSelector) -> Result<Device> {
        Device::new(instance, &instance.select(selector)?)
    }

    /// The adapter this device runs on.
    pub fn info(&self) -> &AdapterInfo {
        &self.shared.info
    }

    /// The instance the device belongs to.
    pub fn instance(&self) -> &Instance {
        &self.shared.instance
    }

    /// Number of queues opened for `kind` (a transfer request falls back to compute queues).
    pub fn queue_count(&self, kind: QueueKind) -> usize {
        self.shared.family(kind).queues.len()
    }

    /// True when the device keeps what its driver reports about each pipeline it compiles
    /// ([`crate::Pipeline::statistics`]): asked for by the instance and offered by the driver.
    pub fn keeps_pipeline_statistics(&self) -> bool {
        self.shared.pipeline_statistics.is_some()
    }

    /// True when transfers run on their own transfer-only family.
    pub fn has_dedicated_transfer(&self) -> bool {
        self.shared.transfer.is_some()
    }

    /// The queue family index used for `kind`.
    pub fn queue_family(&self, kind: QueueKind) -> u32 {
        self.shared.family(kind).family
    }

    /// True after a device loss or a missed deadline; the device must then be re-created.
    pub fn is_lost(&self) -> bool {
        self.shared.lost.load(Ordering::Acquire)
    }

    /// Declares the device lost: everything on it fails with [`Error::DeviceLost`] from now on, so its
    /// users drop it and open a new one. For a health check or an operator that no longer trusts the
    /// device (a hung queue, a fault reported elsewhere), and for tests of recovery.
    pub fn declare_lost(&self, reason: &str) {
        tracing::error!(device = %self.shared.info.name, reason, "device declared lost");
        self.shared.mark_lost();
    }

    /// Live device memory as the allocator sees it.
    pub fn memory_report(&self) -> MemoryReport {
        let guard = self.shared.allocator.lock();
        let report = guard.as_ref().map(|a| a.generate_report());
        report.map_or(
            MemoryReport {
                allocated_bytes: 0,
                reserved_bytes: 0,
                allocations: 0,
            },
            |r| MemoryReport {
                allocated_bytes: r.total_allocated_bytes,
                reserved_bytes: r.total_capacity_bytes,
                allocations: r.allocations.len(),
            },
        )
    }

    /// Waits until the device is idle.
    pub fn wait_idle(&self) -> Result<()> {
        self.shared.check_lost()?;
        // SAFETY: queue access is externally synchronised by holding every queue lock.
        let _locks: Vec<_> = self.shared.all_queues().map(|q| q.lock()).collect();
        unsafe { self.shared.raw.device_wait_idle() }
            .call("vkDeviceWaitIdle")
            .inspect_err(|e| {
                if e.is_device_lost() {
                    self.shared.mark_lost();
                }
            })
    }

    /// Writes the pipeline cache to disk now (it is also written when the device is dropped).
    pub fn save_pipeline_cache(&self) -> Result<()> {
        self.shared.pipeline_cache.save(&self.shared.raw)
    }

    /// Where the pipeline cache of this device lives on disk, if caching is enabled.
    pub fn pipeline_cache_path(&self) -> Option<&std::path::Path> {
        self.shared.pipeline_cache.path()
    }
}

impl DeviceShared {
    pub(crate) fn family(&self, kind: QueueKind) -> &QueueFamily {
        match kind {
            QueueKind::Compute => &self.compute,
            QueueKind::Transfer => self.transfer.as_ref().unwrap_or(&self.compute),
        }
    }

    pub(crate) fn all_queues(&self) -> impl Iterator<Item = &Mutex<vk::Queue>> {
        self.compute
            .queues
            .iter()
            .chain(self.transfer.iter().flat_map(|f| f.queues.iter()))
    }

    /// Queue family indices that buffers must be shared between.
    pub(crate) fn sharing_families(&self) -> Vec<u32> {
        let mut families = vec![self.compute.family];
        if let Some(transfer) = &self.transfer {
            families.push(transfer.family);
        }
        families
    }

    pub(crate) fn mark_lost(&self) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            tracing::error!(device = %self.info.name, "device marked lost");
        }
    }

    pub(crate) fn check_lost(&self) -> Result<()> {
        if self.lost.load(Ordering::Acquire) {
            Err(Error::DeviceLost(format!("{} was marked lost earlier", self.info.name)))
        } else {
            Ok(())
        }
    }
}

impl Drop for DeviceShared {
    fn drop(&mut self) {
        // SAFETY: this is the last reference: no buffer, pipeline or stream is alive, so nothing else
        // touches the device. Waiting for idle first lets in-flight work (even of a device that missed
        // a deadline) finish before its memory is freed.
        unsafe {
            let _ = self.raw.device_wait_idle();
            if !self.lost.load(Ordering::Acquire) {
                if let Err(err) = self.pipeline_cache.save(&self.raw) {
                    tracing::warn!("could not save the pipeline cache: {err}");
                }
            }
            self.pipeline_cache.destroy(&self.raw);
            drop(self.allocator.lock().take());
            self.raw.destroy_device(None);
        }
    }
}
