//! Describing physical devices and choosing one.

use ash::vk;

use crate::error::{Error, Result, VkResultExt};
use crate::instance::{AdapterInfo, DeviceSelector, DeviceType, InstanceShared, MemoryHeapInfo, QueueFamilyInfo};

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
pub(crate) fn enumerate(instance: &InstanceShared) -> Result<Vec<(vk::PhysicalDevice, AdapterInfo)>> {
    // SAFETY: the instance is valid for the duration of this call.
    let physical_devices = unsafe { instance.raw.enumerate_physical_devices() }.call("vkEnumeratePhysicalDevices")?;
    let mut adapters = Vec::new();
    for physical in physical_devices {
        // SAFETY: `physical` came from this instance.
        let basic = unsafe { instance.raw.get_physical_device_properties(physical) };
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
        unsafe { instance.raw.get_physical_device_properties2(physical, &mut properties) };
        let props = properties.properties;
        // SAFETY: `physical` came from this instance.
        let families = unsafe { instance.raw.get_physical_device_queue_family_properties(physical) };
        // SAFETY: as above.
        let memory = unsafe { instance.raw.get_physical_device_memory_properties(physical) };
        // SAFETY: as above.
        let extensions = unsafe { instance.raw.enumerate_device_extension_properties(physical) }
            .call("vkEnumerateDeviceExtensionProperties")?;
        let external_memory_host = extensions.iter().any(|ext| {
            ext.extension_name_as_c_str()
                .is_ok_and(|n| n == ash::ext::external_memory_host::NAME)
        });

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
            timestamp_period_ns: limits.timestamp_period,
        };
        adapters.push((physical, info));
    }
    Ok(adapters)
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
            timestamp_period_ns: 1.0,
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
}
