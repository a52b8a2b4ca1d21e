//! One module per subcommand.

pub mod agent;
pub mod classify;
pub mod compile_model;
pub mod data_plane;
pub mod devices;
pub mod flows;
pub mod load;
pub mod manifest;
pub mod predict;
pub mod progress;
pub mod run_kernel;
pub mod schema_binding;
pub mod serve;

use vknf_vulkan::{Device, DeviceSelection, DeviceSelector, Instance, InstanceOptions};

/// Options every subcommand shares.
pub struct Global {
    /// Validation layer on.
    pub validate: bool,
}

impl Global {
    /// Creates the Vulkan instance these options ask for.
    pub fn instance(&self) -> anyhow::Result<Instance> {
        Ok(Instance::new(&InstanceOptions {
            validation: self.validate,
            ..InstanceOptions::default()
        })?)
    }

    /// Opens the device chosen by `--device` (or `VKNF_DEVICE`, or the default policy).
    pub fn device(&self, instance: &Instance, selector: Option<&str>) -> anyhow::Result<Device> {
        let selector = match selector {
            Some(text) => text.parse()?,
            None => DeviceSelector::from_env()?,
        };
        Ok(Device::select(instance, &selector)?)
    }

    /// The GPU function loader for `vknf serve` and `vknf agent`, over the devices `--devices` names.
    pub fn gpu_loader(
        &self,
        selection: Option<&str>,
    ) -> anyhow::Result<std::sync::Arc<dyn vknf_functions::FunctionLoader>> {
        let selection = match selection {
            Some(text) => text.parse()?,
            None => DeviceSelection::from_env()?,
        };
        let loader = vknf_functions::GpuLoader::open(self.validate, &selection, vknf_functions::Families::builtin())?;
        for (index, device) in vknf_functions::FunctionLoader::devices(&loader).iter().enumerate() {
            tracing::info!(index, device = %device.name, kind = %device.device_type, "serving on device");
        }
        Ok(std::sync::Arc::new(loader))
    }

    /// Fails if the validation layer reported errors during the command.
    pub fn finish(&self, instance: &Instance) -> anyhow::Result<()> {
        Ok(instance.check_validation()?)
    }
}
