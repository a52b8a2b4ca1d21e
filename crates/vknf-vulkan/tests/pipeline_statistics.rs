//! What the driver reports about a compiled pipeline (`VK_KHR_pipeline_executable_properties`), kept
//! only where the instance asks for it: lavapipe with validation on in CI.

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
fn statistics_are_kept_only_where_asked_for() {
    for asked in [false, true] {
        let (instance, device) = device(asked);
        let kernel = Kernel::new(&device, vknf_kernels::FOREST, "main").unwrap();
        let pipeline = device.create_pipeline(&kernel, &Specialization::new()).unwrap();
        let statistics = pipeline.statistics().unwrap();
        // Kept where asked for and offered (lavapipe offers none: there, asking changes nothing).
        assert_eq!(
            device.keeps_pipeline_statistics(),
            asked && device.info().pipeline_statistics
        );
        if device.keeps_pipeline_statistics() {
            assert!(!statistics.is_empty(), "no statistics from {}", device.info().name);
            assert!(statistics.iter().all(|s| !s.name.is_empty()), "{statistics:?}");
        } else {
            assert!(statistics.is_empty(), "{statistics:?}");
        }
        let errors = instance.take_validation_errors();
        assert!(errors.is_empty(), "validation layer errors:\n{}", errors.join("\n"));
    }
}
