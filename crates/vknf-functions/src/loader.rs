//! Loaders: a registry of families bound to an executor, the host's CPU or Vulkan devices.

use std::sync::Arc;

use crate::function::{Function, FunctionLoader, LoadError};
use crate::registry::Families;
use crate::spec::FunctionSpec;

/// Loads functions onto the host's CPU (the reference implementations; `vknf serve --cpu` and tests).
#[derive(Debug, Clone)]
pub struct CpuLoader {
    families: Families,
}

impl CpuLoader {
    /// A CPU loader for `families`.
    pub fn new(families: Families) -> CpuLoader {
        CpuLoader { families }
    }
}

impl Default for CpuLoader {
    fn default() -> Self {
        CpuLoader::new(Families::builtin())
    }
}

impl FunctionLoader for CpuLoader {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn load(&self, device: usize, spec: &FunctionSpec, model: Option<&[u8]>) -> Result<Arc<dyn Function>, LoadError> {
        if device != 0 {
            return Err(LoadError::InvalidSpec {
                function: spec.name.clone(),
                reason: format!("the CPU loader has one device, not device {device}"),
            });
        }
        self.families.family_of(spec)?.load_cpu(spec, model)
    }
}

#[cfg(feature = "gpu")]
pub use gpu::GpuLoader;

#[cfg(feature = "gpu")]
mod gpu {
    use super::*;
    use crate::function::{DeviceInfo, ExecError};
    use parking_lot::Mutex;
    use vknf_vulkan::{AdapterInfo, Device, DeviceSelection, DeviceSelector, Instance, InstanceOptions};

    /// One selected device: the adapter it was opened on (a reset opens the same one again) and the
    /// device now open.
    struct Slot {
        adapter: AdapterInfo,
        device: Mutex<Device>,
    }

    /// Loads functions onto one or more Vulkan devices; [`FunctionLoader::reset`] re-creates a device
    /// after its loss.
    pub struct GpuLoader {
        instance: Instance,
        slots: Vec<Slot>,
        families: Families,
    }

    impl GpuLoader {
        /// Opens the device chosen by `selector` (validation layer on when `validate`) with the
        /// built-in families.
        pub fn new(validate: bool, selector: DeviceSelector) -> Result<GpuLoader, vknf_vulkan::Error> {
            GpuLoader::with_families(validate, selector, Families::builtin())
        }

        /// Opens the device chosen by `selector` for `families`.
        pub fn with_families(
            validate: bool,
            selector: DeviceSelector,
            families: Families,
        ) -> Result<GpuLoader, vknf_vulkan::Error> {
            GpuLoader::open(validate, &DeviceSelection::Each(vec![selector]), families)
        }

        /// Opens every device of `selection` for `families`.
        pub fn open(
            validate: bool,
            selection: &DeviceSelection,
            families: Families,
        ) -> Result<GpuLoader, vknf_vulkan::Error> {
            let instance = Instance::new(&InstanceOptions {
                validation: validate,
                ..InstanceOptions::default()
            })?;
            let slots = selection
                .resolve(&instance.adapters())?
                .into_iter()
                .map(|adapter| {
                    let device = Device::new(&instance, &adapter)?;
                    tracing::info!(device = %adapter.name, index = adapter.index, "GPU loader: device open");
                    Ok(Slot {
                        adapter,
                        device: Mutex::new(device),
                    })
                })
                .collect::<Result<Vec<Slot>, vknf_vulkan::Error>>()?;
            Ok(GpuLoader {
                instance,
                slots,
                families,
            })
        }

        /// The first device functions are loaded onto.
        pub fn device(&self) -> Device {
            self.device_at(0)
        }

        /// Device `index` (in the order of [`FunctionLoader::devices`]).
        ///
        /// # Panics
        /// When `index` is not below the number of devices.
        pub fn device_at(&self, index: usize) -> Device {
            self.slots[index].device.lock().clone()
        }

        /// How many devices the loader opened.
        pub fn device_count(&self) -> usize {
            self.slots.len()
        }

        /// The Vulkan instance (for validation checks).
        pub fn instance(&self) -> &Instance {
            &self.instance
        }

        fn slot(&self, device: usize, function: &str) -> Result<&Slot, LoadError> {
            self.slots.get(device).ok_or_else(|| LoadError::InvalidSpec {
                function: function.to_string(),
                reason: format!("no device {device}: the loader has {}", self.slots.len()),
            })
        }
    }

    impl FunctionLoader for GpuLoader {
        fn name(&self) -> &'static str {
            "gpu"
        }

        fn devices(&self) -> Vec<DeviceInfo> {
            self.slots
                .iter()
                .map(|slot| DeviceInfo {
                    name: slot.adapter.name.clone(),
                    device_type: type_name(slot.adapter.device_type),
                })
                .collect()
        }

        fn load(
            &self,
            device: usize,
            spec: &FunctionSpec,
            model: Option<&[u8]>,
        ) -> Result<Arc<dyn Function>, LoadError> {
            let family = self.families.family_of(spec)?;
            // The function's streams take queues apart from other functions' while the device has
            // enough (vknf_vulkan::choose_queue); its lanes hold them until they are dropped.
            let device = self.slot(device, &spec.name)?.device.lock().for_function(&spec.name);
            family.load_gpu(&device, self.slots.len(), spec, model)
        }

        fn reset(&self, device: usize) -> Result<(), LoadError> {
            let slot = self.slot(device, "device")?;
            let fresh = Device::new(&self.instance, &slot.adapter).map_err(|e| LoadError::Exec {
                function: "device".into(),
                source: ExecError::DeviceLost(e.to_string()),
            })?;
            *slot.device.lock() = fresh;
            Ok(())
        }
    }

    /// The device type as `vknf devices` prints it.
    fn type_name(device_type: vknf_vulkan::DeviceType) -> String {
        use vknf_vulkan::DeviceType;
        match device_type {
            DeviceType::DiscreteGpu => "discrete-gpu",
            DeviceType::IntegratedGpu => "integrated-gpu",
            DeviceType::VirtualGpu => "virtual-gpu",
            DeviceType::Cpu => "cpu",
            DeviceType::Other => "other",
        }
        .to_string()
    }
}
