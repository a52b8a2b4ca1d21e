//! Shared set-up: every test runs with the Khronos validation layer on, and any error it reports fails
//! the test. Devices come from `VKNF_DEVICE` (default: the policy's choice; lavapipe in CI).
#![allow(dead_code)]

use vknf_vulkan::{Device, DeviceSelector, Instance, InstanceOptions};

pub struct Gpu {
    pub instance: Instance,
    pub device: Device,
}

impl Gpu {
    pub fn new() -> Gpu {
        Gpu::with_cache_dir(None)
    }

    /// With the pipeline cache in `pipeline_cache_dir` (`None`: the default location).
    pub fn with_cache_dir(pipeline_cache_dir: Option<std::path::PathBuf>) -> Gpu {
        let instance = Instance::new(&InstanceOptions {
            validation: true,
            application_name: "vknf-tests".into(),
            pipeline_cache_dir,
            ..InstanceOptions::default()
        })
        .expect("a Vulkan instance with validation (install libvulkan1, mesa-vulkan-drivers, vulkan-validationlayers)");
        let device = Device::select(&instance, &DeviceSelector::from_env().unwrap()).expect("a Vulkan device");
        Gpu { instance, device }
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        let errors = self.instance.take_validation_errors();
        if !std::thread::panicking() {
            assert!(errors.is_empty(), "validation layer errors:\n{}", errors.join("\n"));
        }
    }
}

/// Deterministic pseudo-random data (xorshift), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() as f32 / u32::MAX as f32) * 200.0 - 100.0
    }
}
