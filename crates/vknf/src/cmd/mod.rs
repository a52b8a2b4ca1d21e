//! One module per subcommand.

pub mod compile_model;
pub mod devices;
pub mod predict;
pub mod progress;
pub mod run_kernel;

use vknf_vulkan::{Device, DeviceSelector, Instance, InstanceOptions};

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

    /// Fails if the validation layer reported errors during the command.
    pub fn finish(&self, instance: &Instance) -> anyhow::Result<()> {
        Ok(instance.check_validation()?)
    }
}
