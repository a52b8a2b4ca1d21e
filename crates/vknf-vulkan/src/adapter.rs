//! Describing physical devices and choosing one.

use ash::vk;
use serde::Serialize;

use crate::error::{Error, Result, VkResultExt};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn version_text(version: u32) -> String {
    format!(
        "{}.{}.{}",
        vk::api_version_major(version),
        vk::api_version_minor(version),
        vk::api_version_patch(version)
    )
}

fn memory_flag_names(flags: vk::MemoryPropertyFlags) -> Vec<&'static str> {
    [
        (vk::MemoryPropertyFlags::DEVICE_LOCAL, "device-local"),
        (vk::MemoryPropertyFlags::HOST_VISIBLE, "host-visible"),
        (vk::MemoryPropertyFlags::HOST_COHERENT, "host-coherent"),
        (vk::MemoryPropertyFlags::HOST_CACHED, "host-cached"),
        (vk::MemoryPropertyFlags::LAZILY_ALLOCATED, "lazily-allocated"),
    ]
    .into_iter()
    .filter(|(flag, _)| flags.contains(*flag))
    .map(|(_, name)| name)
    .collect()
}

fn subgroup_operation_names(ops: vk::SubgroupFeatureFlags) -> Vec<&'static str> {
    [
        (vk::SubgroupFeatureFlags::BASIC, "basic"),
        (vk::SubgroupFeatureFlags::VOTE, "vote"),
        (vk::SubgroupFeatureFlags::ARITHMETIC, "arithmetic"),
        (vk::SubgroupFeatureFlags::BALLOT, "ballot"),
        (vk::SubgroupFeatureFlags::SHUFFLE, "shuffle"),
        (vk::SubgroupFeatureFlags::SHUFFLE_RELATIVE, "shuffle-relative"),
        (vk::SubgroupFeatureFlags::CLUSTERED, "clustered"),
        (vk::SubgroupFeatureFlags::QUAD, "quad"),
    ]
    .into_iter()
    .filter(|(flag, _)| ops.contains(*flag))
    .map(|(_, name)| name)
    .collect()
}

/// Describes every physical device that offers Vulkan 1.2 and a compute queue.
pub(crate) fn enumerate(instance: &ash::Instance) -> Result<Vec<(vk::PhysicalDevice, AdapterInfo)>> {
    // SAFETY: the instance is valid for the duration of this call.
    let physical_devices = unsafe { instance.enumerate_physical_devices() }.call("vkEnumeratePhysicalDevices")?;
    let mut adapters = Vec::new();
    for physical in physical_devices {
        // SAFETY: `physical` came from this instance.
        let basic = unsafe { instance.get_physical_device_properties(physical) };
        if basic.api_version < vk::API_VERSION_1_2 {
            tracing::info!(
                device = ?basic.device_name_as_c_str().unwrap_or_default(),
                "skipping a device without Vulkan 1.2 (timeline semaphores are required)"
            );
            continue;
        }
        let mut driver = vk::PhysicalDeviceDriverProperties::default();
        let mut subgroup = vk::PhysicalDeviceSubgroupProperties::default();
        let mut ids = vk::PhysicalDeviceIDProperties::default();
        let mut properties = vk::PhysicalDeviceProperties2::default()
            .push_next(&mut driver)
            .push_next(&mut subgroup)
            .push_next(&mut ids);
        // SAFETY: the chained structs live on this stack frame and are valid for writing.
        unsafe { instance.get_physical_device_properties2(physical, &mut properties) };
        let props = properties.properties;
        // SAFETY: `physical` came from this instance.
        let families = unsafe { instance.get_physical_device_queue_family_properties(physical) };
        // SAFETY: as above.
        let memory = unsafe { instance.get_physical_device_memory_properties(physical) };
        // SAFETY: as above.
        let extensions = unsafe { instance.enumerate_device_extension_properties(physical) }
            .call("vkEnumerateDeviceExtensionProperties")?;
        let has_extension = |name: &std::ffi::CStr| {
            extensions
                .iter()
                .any(|ext| ext.extension_name_as_c_str().is_ok_and(|n| n == name))
        };
        let external_memory_host = has_extension(ash::ext::external_memory_host::NAME);
        let pipeline_statistics = has_extension(ash::khr::pipeline_executable_properties::NAME);
        let compute_units = has_extension(ash::nv::shader_sm_builtins::NAME)
            .then(|| nvidia_compute_units(instance, physical))
            .flatten();

        let queue_families: Vec<QueueFamilyInfo> = families
            .iter()
            .enumerate()
            .map(|(index, family)| QueueFamilyInfo {
                index: index as u32,
                count: family.queue_count,
                graphics: family.queue_flags.contains(vk::QueueFlags::GRAPHICS),
                compute: family.queue_flags.contains(vk::QueueFlags::COMPUTE),
                transfer: family.queue_flags.contains(vk::QueueFlags::TRANSFER),
                sparse_binding: family.queue_flags.contains(vk::QueueFlags::SPARSE_BINDING),
                timestamp_valid_bits: family.timestamp_valid_bits,
            })
            .collect();
        if !queue_families.iter().any(|f| f.compute) {
            continue;
        }
        let memory_heaps = memory
            .memory_heaps_as_slice()
            .iter()
            .enumerate()
            .map(|(heap_index, heap)| MemoryHeapInfo {
                size: heap.size,
                device_local: heap.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL),
                memory_types: memory
                    .memory_types_as_slice()
                    .iter()
                    .filter(|t| t.heap_index as usize == heap_index)
                    .map(|t| memory_flag_names(t.property_flags))
                    .collect(),
            })
            .collect();
        let device_type = match props.device_type {
            vk::PhysicalDeviceType::DISCRETE_GPU => DeviceType::DiscreteGpu,
            vk::PhysicalDeviceType::INTEGRATED_GPU => DeviceType::IntegratedGpu,
            vk::PhysicalDeviceType::VIRTUAL_GPU => DeviceType::VirtualGpu,
            vk::PhysicalDeviceType::CPU => DeviceType::Cpu,
            _ => DeviceType::Other,
        };
        let limits = props.limits;
        let info = AdapterInfo {
            index: adapters.len(),
            name: props
                .device_name_as_c_str()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            device_type,
            vendor_id: props.vendor_id,
            device_id: props.device_id,
            driver_name: driver
                .driver_name_as_c_str()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            driver_info: driver
                .driver_info_as_c_str()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            driver_version: props.driver_version,
            api_version: version_text(props.api_version),
            uuid: hex(&ids.device_uuid),
            pipeline_cache_uuid: hex(&props.pipeline_cache_uuid),
            subgroup_size: subgroup.subgroup_size,
            subgroup_operations: if subgroup.supported_stages.contains(vk::ShaderStageFlags::COMPUTE) {
                subgroup_operation_names(subgroup.supported_operations)
            } else {
                Vec::new()
            },
            max_shared_memory: limits.max_compute_shared_memory_size,
            max_workgroup_invocations: limits.max_compute_work_group_invocations,
            max_workgroup_size: limits.max_compute_work_group_size,
            max_workgroup_count: limits.max_compute_work_group_count,
            max_storage_buffer_range: limits.max_storage_buffer_range,
            max_push_constants_size: limits.max_push_constants_size,
            queue_families,
            memory_heaps,
            external_memory_host,
            pipeline_statistics,
            timestamp_period_ns: limits.timestamp_period,
            compute_units,
        };
        adapters.push((physical, info));
    }
    Ok(adapters)
}

/// An NVIDIA device's SMs and the invocations each holds (warps per SM x 32), from
/// `VK_NV_shader_sm_builtins`, which the caller checked the device lists. (Other vendors' counts, such as
/// AMD's, are not read: none was measured.)
fn nvidia_compute_units(instance: &ash::Instance, physical: vk::PhysicalDevice) -> Option<ComputeUnits> {
    const WARP: u32 = 32;
    let mut sm = vk::PhysicalDeviceShaderSMBuiltinsPropertiesNV::default();
    let mut properties = vk::PhysicalDeviceProperties2::default().push_next(&mut sm);
    // SAFETY: `physical` came from this instance and lists the extension whose structure is chained;
    // the chained struct lives on this stack frame and is valid for writing.
    unsafe { instance.get_physical_device_properties2(physical, &mut properties) };
    (sm.shader_sm_count > 0 && sm.shader_warps_per_sm > 0).then(|| ComputeUnits {
        count: sm.shader_sm_count,
        invocations_each: sm.shader_warps_per_sm.saturating_mul(WARP),
    })
}

/// Applies a selector to the described devices.
pub(crate) fn select(adapters: &[AdapterInfo], selector: &DeviceSelector) -> Result<AdapterInfo> {
    if adapters.is_empty() {
        return Err(Error::NoDevice);
    }
    let found = match selector {
        DeviceSelector::Auto => adapters.iter().min_by_key(|a| (a.device_type.rank(), a.index)),
        DeviceSelector::Index(index) => adapters.get(*index),
        DeviceSelector::Uuid(uuid) => adapters.iter().find(|a| a.uuid_bytes() == *uuid),
        DeviceSelector::Name(name) => {
            let needle = name.to_lowercase();
            adapters.iter().find(|a| a.name.to_lowercase().contains(&needle))
        }
    };
    found.cloned().ok_or_else(|| Error::DeviceNotFound {
        selector: format!("{selector:?}"),
        available: adapters
            .iter()
            .map(|a| format!("[{}] {} ({})", a.index, a.name, a.uuid))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// How to pick a device: by policy or explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelector {
    /// Prefer a discrete GPU, then integrated, virtual, and finally CPU devices (such as lavapipe).
    Auto,
    /// The n-th device in the driver's order (as `vknf devices` numbers them).
    Index(usize),
    /// The device whose UUID matches.
    Uuid([u8; 16]),
    /// The first device whose name contains this text (case-insensitive).
    Name(String),
}

impl DeviceSelector {
    /// Reads `VKNF_DEVICE`, falling back to [`DeviceSelector::Auto`].
    pub fn from_env() -> Result<DeviceSelector> {
        match std::env::var("VKNF_DEVICE") {
            Ok(value) if !value.trim().is_empty() => value.parse(),
            _ => Ok(DeviceSelector::Auto),
        }
    }
}

impl std::str::FromStr for DeviceSelector {
    type Err = Error;

    /// `auto`, an index (`0`), a UUID (32 hex digits, dashes allowed), or part of a name.
    fn from_str(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::BadSelector(text.to_string()));
        }
        if text.eq_ignore_ascii_case("auto") {
            return Ok(DeviceSelector::Auto);
        }
        if let Ok(index) = text.parse::<usize>() {
            return Ok(DeviceSelector::Index(index));
        }
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            let mut uuid = [0u8; 16];
            for (i, byte) in uuid.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| Error::BadSelector(text.into()))?;
            }
            return Ok(DeviceSelector::Uuid(uuid));
        }
        Ok(DeviceSelector::Name(text.to_string()))
    }
}

/// Which devices serve: every GPU of the host, or a list of selectors (`--devices`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelection {
    /// Every GPU (discrete, integrated or virtual); the CPU implementations (lavapipe) only when the
    /// host has no GPU, since a CPU device taking batches beside a GPU would only add latency.
    All,
    /// These devices, in this order. Naming one device twice opens it twice, as separate logical
    /// devices (useful for testing several devices on one GPU or on lavapipe).
    Each(Vec<DeviceSelector>),
}

impl DeviceSelection {
    /// Reads `VKNF_DEVICES`, then `VKNF_DEVICE` (one device), falling back to one device chosen by
    /// [`DeviceSelector::Auto`].
    pub fn from_env() -> Result<DeviceSelection> {
        match std::env::var("VKNF_DEVICES") {
            Ok(value) if !value.trim().is_empty() => value.parse(),
            _ => Ok(DeviceSelection::Each(vec![DeviceSelector::from_env()?])),
        }
    }

    /// The devices this selection names among `adapters`, in order.
    pub fn resolve(&self, adapters: &[AdapterInfo]) -> Result<Vec<AdapterInfo>> {
        match self {
            DeviceSelection::All => {
                if adapters.is_empty() {
                    return Err(Error::NoDevice);
                }
                let gpus: Vec<AdapterInfo> = adapters
                    .iter()
                    .filter(|a| a.device_type != DeviceType::Cpu)
                    .cloned()
                    .collect();
                Ok(if gpus.is_empty() { adapters.to_vec() } else { gpus })
            }
            DeviceSelection::Each(selectors) => selectors.iter().map(|s| select(adapters, s)).collect(),
        }
    }
}

impl std::str::FromStr for DeviceSelection {
    type Err = Error;

    /// `all`, or a comma-separated list of selectors (`0,2`, `nvidia,amd`, UUIDs, `auto`).
    fn from_str(text: &str) -> Result<Self> {
        if text.trim().eq_ignore_ascii_case("all") {
            return Ok(DeviceSelection::All);
        }
        let selectors = text
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<DeviceSelector>>>()
            .map_err(|_| Error::BadSelector(text.to_string()))?;
        Ok(DeviceSelection::Each(selectors))
    }
}

/// The kind of a physical device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceType {
    /// A discrete GPU.
    DiscreteGpu,
    /// A GPU sharing memory with the host.
    IntegratedGpu,
    /// A virtualised GPU.
    VirtualGpu,
    /// A CPU implementation such as lavapipe.
    Cpu,
    /// Anything else.
    Other,
}

impl DeviceType {
    /// Preference order of [`DeviceSelector::Auto`]: lower is better.
    pub(crate) fn rank(self) -> u8 {
        match self {
            DeviceType::DiscreteGpu => 0,
            DeviceType::IntegratedGpu => 1,
            DeviceType::VirtualGpu => 2,
            DeviceType::Other => 3,
            DeviceType::Cpu => 4,
        }
    }
}

/// One queue family.
#[derive(Debug, Clone, Serialize)]
pub struct QueueFamilyInfo {
    /// Family index.
    pub index: u32,
    /// Number of queues.
    pub count: u32,
    /// Supports graphics.
    pub graphics: bool,
    /// Supports compute.
    pub compute: bool,
    /// Supports transfer.
    pub transfer: bool,
    /// Supports sparse binding.
    pub sparse_binding: bool,
    /// Bits of valid timestamps (0: none).
    pub timestamp_valid_bits: u32,
}

/// One memory heap.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryHeapInfo {
    /// Heap size in bytes.
    pub size: u64,
    /// Device-local heap.
    pub device_local: bool,
    /// Property flags of the memory types in this heap, e.g. `["device-local", "host-visible"]`.
    pub memory_types: Vec<Vec<&'static str>>,
}

/// Everything known about a physical device, as `vknf devices` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterInfo {
    /// Position in the driver's order.
    pub index: usize,
    /// Device name.
    pub name: String,
    /// Device type.
    pub device_type: DeviceType,
    /// PCI vendor id.
    pub vendor_id: u32,
    /// PCI device id.
    pub device_id: u32,
    /// Driver name (e.g. `llvmpipe`, `NVIDIA`).
    pub driver_name: String,
    /// Driver version text (e.g. `Mesa 22.3.6`).
    pub driver_info: String,
    /// Raw driver version number (vendor-specific encoding).
    pub driver_version: u32,
    /// Highest Vulkan version the device supports, e.g. `1.3.230`.
    pub api_version: String,
    /// Device UUID as 32 hex digits.
    pub uuid: String,
    /// Pipeline-cache UUID as 32 hex digits.
    pub pipeline_cache_uuid: String,
    /// Default subgroup size.
    pub subgroup_size: u32,
    /// Subgroup operations supported in compute shaders (e.g. `basic`, `arithmetic`).
    pub subgroup_operations: Vec<&'static str>,
    /// Largest shared memory per workgroup, bytes.
    pub max_shared_memory: u32,
    /// Largest workgroup, invocations.
    pub max_workgroup_invocations: u32,
    /// Largest workgroup size per axis.
    pub max_workgroup_size: [u32; 3],
    /// Largest dispatch per axis.
    pub max_workgroup_count: [u32; 3],
    /// Largest storage buffer binding, bytes.
    pub max_storage_buffer_range: u32,
    /// Largest push-constant block, bytes.
    pub max_push_constants_size: u32,
    /// Queue families.
    pub queue_families: Vec<QueueFamilyInfo>,
    /// Memory heaps.
    pub memory_heaps: Vec<MemoryHeapInfo>,
    /// Supports importing host memory (`VK_EXT_external_memory_host`).
    pub external_memory_host: bool,
    /// The driver lists `VK_KHR_pipeline_executable_properties`: statistics about compiled pipelines,
    /// registers a thread among them (kept where asked for and its `pipelineExecutableInfo` feature is
    /// supported: [`crate::InstanceOptions::pipeline_statistics`], [`crate::Device::keeps_pipeline_statistics`]).
    pub pipeline_statistics: bool,
    /// Nanoseconds per timestamp tick.
    pub timestamp_period_ns: f32,
    /// The device's multiprocessors and the invocations each runs at once, where the driver reports them
    /// (NVIDIA's `VK_NV_shader_sm_builtins`).
    pub compute_units: Option<ComputeUnits>,
}

/// A device's multiprocessors (NVIDIA's SMs) and how many invocations each holds at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ComputeUnits {
    /// Multiprocessors.
    pub count: u32,
    /// Invocations one multiprocessor runs at once.
    pub invocations_each: u32,
}

impl ComputeUnits {
    /// How many workgroups of `group_invocations` (each rounded up to whole subgroups of
    /// `subgroup_size`) the whole device runs at once, at most: registers and shared memory may hold
    /// fewer.
    pub fn resident_workgroups(&self, group_invocations: u32, subgroup_size: u32) -> u64 {
        let per_group = group_invocations.max(1).next_multiple_of(subgroup_size.max(1));
        u64::from(self.count) * u64::from(self.invocations_each / per_group)
    }
}

impl AdapterInfo {
    /// UUID as bytes.
    pub fn uuid_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&self.uuid[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
        out
    }

    /// A family with compute and no graphics if one exists, else any compute family.
    pub fn compute_family(&self) -> Option<&QueueFamilyInfo> {
        self.queue_families
            .iter()
            .find(|f| f.compute && !f.graphics && f.count > 0)
            .or_else(|| self.queue_families.iter().find(|f| f.compute && f.count > 0))
    }

    /// A transfer-only family (no compute, no graphics) if one exists.
    pub fn transfer_family(&self) -> Option<&QueueFamilyInfo> {
        self.queue_families
            .iter()
            .find(|f| f.transfer && !f.compute && !f.graphics && f.count > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(index: usize, name: &str, device_type: DeviceType) -> AdapterInfo {
        AdapterInfo {
            index,
            name: name.into(),
            device_type,
            vendor_id: 0,
            device_id: 0,
            driver_name: String::new(),
            driver_info: String::new(),
            driver_version: 0,
            api_version: "1.3.0".into(),
            uuid: format!("{index:032x}"),
            pipeline_cache_uuid: String::new(),
            subgroup_size: 32,
            subgroup_operations: vec![],
            max_shared_memory: 0,
            max_workgroup_invocations: 0,
            max_workgroup_size: [0; 3],
            max_workgroup_count: [0; 3],
            max_storage_buffer_range: 0,
            max_push_constants_size: 0,
            queue_families: vec![],
            memory_heaps: vec![],
            external_memory_host: false,
            pipeline_statistics: false,
            timestamp_period_ns: 1.0,
            compute_units: None,
        }
    }

    #[test]
    fn auto_prefers_discrete_then_integrated_then_cpu() {
        let list = vec![
            adapter(0, "llvmpipe", DeviceType::Cpu),
            adapter(1, "Intel UHD", DeviceType::IntegratedGpu),
            adapter(2, "NVIDIA H100", DeviceType::DiscreteGpu),
        ];
        assert_eq!(select(&list, &DeviceSelector::Auto).unwrap().index, 2);
        assert_eq!(select(&list[..2], &DeviceSelector::Auto).unwrap().index, 1);
        assert_eq!(select(&list[..1], &DeviceSelector::Auto).unwrap().index, 0);
    }

    #[test]
    fn explicit_selectors() {
        let list = vec![
            adapter(0, "llvmpipe (LLVM 15)", DeviceType::Cpu),
            adapter(1, "NVIDIA H100", DeviceType::DiscreteGpu),
        ];
        assert_eq!(select(&list, &"1".parse().unwrap()).unwrap().name, "NVIDIA H100");
        assert_eq!(select(&list, &"llvm".parse().unwrap()).unwrap().index, 0);
        let uuid = format!("{:032x}", 1);
        assert_eq!(select(&list, &uuid.parse().unwrap()).unwrap().index, 1);
        let err = select(&list, &"7".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("NVIDIA H100"), "{err}");
        assert!(matches!(select(&[], &DeviceSelector::Auto), Err(Error::NoDevice)));
        assert!("".parse::<DeviceSelector>().is_err());
        assert_eq!("AUTO".parse::<DeviceSelector>().unwrap(), DeviceSelector::Auto);
    }

    #[test]
    fn selections_of_several_devices() {
        let list = vec![
            adapter(0, "llvmpipe (LLVM 15)", DeviceType::Cpu),
            adapter(1, "NVIDIA H200", DeviceType::DiscreteGpu),
            adapter(2, "NVIDIA H200", DeviceType::DiscreteGpu),
        ];
        let indices = |selection: &str, list: &[AdapterInfo]| -> Vec<usize> {
            let selection: DeviceSelection = selection.parse().unwrap();
            selection.resolve(list).unwrap().iter().map(|a| a.index).collect()
        };
        assert_eq!(indices("all", &list), vec![1, 2], "all GPUs, not the CPU device");
        assert_eq!(
            indices("ALL", &list[..1]),
            vec![0],
            "a host without a GPU uses its CPU device"
        );
        assert_eq!(indices("2,0", &list), vec![2, 0]);
        assert_eq!(
            indices("0,0", &list),
            vec![0, 0],
            "one device twice is two logical devices"
        );
        assert_eq!(indices("llvm, 1", &list), vec![0, 1]);
        assert!("0,,1".parse::<DeviceSelection>().is_err());
        let missing: DeviceSelection = "1,9".parse().unwrap();
        assert!(matches!(missing.resolve(&list), Err(Error::DeviceNotFound { .. })));
        assert!(matches!(DeviceSelection::All.resolve(&[]), Err(Error::NoDevice)));
    }
}
