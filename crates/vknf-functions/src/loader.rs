//! Loaders: a registry of families bound to an executor, the host's CPU or one Vulkan device.

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

    fn load(&self, spec: &FunctionSpec, model: Option<&[u8]>) -> Result<Arc<dyn Function>, LoadError> {
        self.families.family_of(spec)?.load_cpu(spec, model)
    }
}

#[cfg(feature = "gpu")]
pub use gpu::GpuLoader;

#[cfg(feature = "gpu")]
mod gpu {
    use super::*;
    use crate::function::ExecError;
    use parking_lot::Mutex;
    use vknf_vulkan::{Device, DeviceSelector, Instance, InstanceOptions};

    /// Loads functions onto one Vulkan device; [`FunctionLoader::reset`] re-creates it after a loss.
    pub struct GpuLoader {
        instance: Instance,
        selector: DeviceSelector,
        device: Mutex<Device>,
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
            let instance = Instance::new(&InstanceOptions {
                validation: validate,
                ..InstanceOptions::default()
            })?;
            let device = Device::select(&instance, &selector)?;
            tracing::info!(device = %device.info().name, "GPU loader ready");
            Ok(GpuLoader {
                instance,
                selector,
                device: Mutex::new(device),
                families,
            })
        }

        /// The device functions are loaded onto.
        pub fn device(&self) -> Device {
            self.device.lock().clone()
        }

        /// The Vulkan instance (for validation checks).
        pub fn instance(&self) -> &Instance {
            &self.instance
        }
    }

    impl FunctionLoader for GpuLoader {
        fn name(&self) -> &'static str {
            "gpu"
        }

        fn load(&self, spec: &FunctionSpec, model: Option<&[u8]>) -> Result<Arc<dyn Function>, LoadError> {
            let family = self.families.family_of(spec)?;
            family.load_gpu(&self.device(), spec, model)
        }

        fn reset(&self) -> Result<(), LoadError> {
            let fresh = Device::select(&self.instance, &self.selector).map_err(|e| LoadError::Exec {
                function: "device".into(),
                source: ExecError::DeviceLost(e.to_string()),
            })?;
            *self.device.lock() = fresh;
            Ok(())
        }
    }
}
