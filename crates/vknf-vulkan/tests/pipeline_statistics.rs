//! What the driver reports about a compiled pipeline (`VK_KHR_pipeline_executable_properties`), kept
//! only where the instance asks for it: lavapipe with validation on in CI. Mesa 22.3's lavapipe does not
//! list the extension, so there this checks that asking for statistics changes nothing (no extension
//! enabled, no flag, no validation error) and that none are kept unasked; reading them on a driver that
//! keeps them runs on the GPU machine (bench/RESULTS.md, "Refilled walks ...", table 3).

use vknf_vulkan::{Device, DeviceSelector, Instance, InstanceOptions, Kernel, Specialization};

fn device(pipeline_statistics: bool) -> (Instance, Device) {
    let instance = Instance::new(&InstanceOptions {
        validation: true,
        application_name: "vknf-statistics".into(),
        pipeline_statistics,
        ..InstanceOptions::default()
    })
    .unwrap();
    let device = Device::select(&instance, &DeviceSelector::from_env().unwrap()).unwrap();
    (instance, device)
}

#[test]
fn statistics_are_kept_only_where_asked_for_and_offered() {
    for asked in [false, true] {
        let (instance, device) = device(asked);
        let kernel = Kernel::new(&device, vknf_kernels::FOREST, "main").unwrap();
        let pipeline = device.create_pipeline(&kernel, &Specialization::new()).unwrap();
        let statistics = pipeline.statistics().unwrap();
        let keeps = device.keeps_pipeline_statistics();
        // Kept only where asked for and listed by the driver (its feature bit may still be off).
        assert!(!keeps || (asked && device.info().pipeline_statistics), "asked {asked}");
        if keeps {
            assert!(!statistics.is_empty(), "no statistics from {}", device.info().name);
            assert!(statistics.iter().all(|s| !s.name.is_empty()), "{statistics:?}");
        } else {
            assert!(statistics.is_empty(), "{statistics:?}");
        }
        let errors = instance.take_validation_errors();
        assert!(errors.is_empty(), "validation layer errors:\n{}", errors.join("\n"));
    }
}
