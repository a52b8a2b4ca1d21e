//! Functions loaded by the GPU loader take queues apart from each other's while the device has
//! enough, share them when it has not (lavapipe has one compute queue), and give them back when their
//! lanes go; lanes on a shared queue still compute their functions' answers (validation layer on).

use vknf_functions::{FunctionLoader, FunctionSpec, GpuLoader};
use vknf_vulkan::{DeviceSelector, QueueKind};

const FEATURES: usize = 4;

fn forest_spec(name: &str) -> FunctionSpec {
    FunctionSpec::new(
        name,
        "forest",
        vknf_kernels::by_name("forest").expect("the forest kernel").to_vec(),
    )
}

#[test]
fn functions_take_queues_apart_and_share_only_when_the_device_has_too_few() {
    let loader = GpuLoader::new(true, DeviceSelector::from_env().unwrap()).expect("a Vulkan device");
    let device = loader.device();
    let queues = device.queue_count(QueueKind::Compute);
    let forest = vknf_testkit::synthetic::random_classifier(FEATURES, 3, 5, 3, 11);
    let model = forest.to_vkf_bytes();
    let cpu = forest.predict_cpu(&[0.25; 8 * FEATURES], 8).unwrap();

    let first = loader.load(0, &forest_spec("default/first"), Some(&model)).unwrap();
    let second = loader.load(0, &forest_spec("default/second"), Some(&model)).unwrap();
    let mut lanes = Vec::new();
    for function in [&first, &second] {
        for _ in 0..3 {
            lanes.push(function.new_lane().unwrap());
        }
    }
    let owners = device.queue_owners(QueueKind::Compute);
    assert_eq!(owners.len(), queues);
    if queues == 1 {
        // One queue: both functions submit to it (the documented fallback).
        assert_eq!(owners, vec![2]);
    } else {
        // Enough queues: no queue serves both functions, and each has at least one.
        assert!(owners.iter().all(|&o| o <= 1), "{owners:?}");
        assert!(owners.iter().sum::<usize>() >= 2, "{owners:?}");
    }

    // Every lane computes its function's answer on whatever queue it got.
    for lane in &mut lanes {
        lane.write_input(&mut |input: &mut [u8]| {
            for value in input.chunks_exact_mut(4).take(8 * FEATURES) {
                value.copy_from_slice(&0.25f32.to_le_bytes());
            }
        })
        .unwrap();
        lane.run(8, 0b11).unwrap();
        let mut labels = vec![0u8; 8 * 4];
        lane.read_output(0, 0, &mut labels).unwrap();
        let labels: Vec<u32> = labels
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(labels, cpu.labels);
    }

    // Their queues are given back with the last lane.
    drop(lanes);
    drop((first, second));
    assert!(device.queue_owners(QueueKind::Compute).iter().all(|&o| o == 0));
    assert!(loader.instance().take_validation_errors().is_empty());
}
