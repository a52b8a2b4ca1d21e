//! Deadlines, device loss and re-creation; buffer reuse without growth; several devices; the cache.

mod common;

use std::time::Duration;

use common::Gpu;
use vknf_vulkan::{Device, Error, Kernel, MemoryKind, QueueKind, Specialization};

#[test]
fn a_kernel_past_its_deadline_times_out_and_a_new_device_works() {
    let gpu = Gpu::new();
    let device = gpu.device.clone();
    let spin = Kernel::new(&device, vknf_kernels::SPIN, "main").unwrap();
    let pipeline = device.create_pipeline(&spin, &Specialization::new()).unwrap();
    let out = device.create_buffer_with("out", &[1u32], MemoryKind::Readback).unwrap();
    let group = pipeline.bind(&[(0, &out)]).unwrap();
    let mut stream = device.stream(QueueKind::Compute).unwrap();
    // Long-running but bounded, so the device always finishes it: a billion dependent steps, about a
    // second on lavapipe, so that the test's thread, descheduled between the submission and the wait on
    // a loaded 2-core CI machine, still finds it running (with 100 million, ~0.1 s, it once did not).
    let mut list = stream
        .record(|rec| rec.dispatch(&group, &1_000_000_000u32, [1, 1, 1]))
        .unwrap();
    let ticket = stream.submit(&mut list).unwrap();
    // A zero deadline: the wait checks once, right after the submission, when no device can have run
    // a billion dependent steps yet (a longer deadline would race the device's speed).
    match ticket.wait(Duration::ZERO) {
        Err(Error::Timeout(deadline)) => assert_eq!(deadline, Duration::ZERO),
        other => panic!(
            "expected a timeout, got {:?} (on lavapipe, run with MESA_VK_ENABLE_SUBMIT_THREAD=1, as `make test` does, \
             so that submissions run asynchronously as on a GPU)",
            other.err()
        ),
    }
    assert!(device.is_lost());
    let err = stream.submit(&mut list).err().unwrap();
    assert!(matches!(err, Error::DeviceLost(_)) && err.is_device_lost(), "{err}");
    assert!(device.create_buffer("more", 4, MemoryKind::Upload).is_err());
    let info = device.info().clone();
    drop((list, group, out, pipeline, stream, device));

    // The process goes on: a fresh device on the same adapter runs work again.
    let fresh = Device::new(&gpu.instance, &info).unwrap();
    assert!(!fresh.is_lost());
    let pipeline = fresh
        .create_pipeline(
            &Kernel::new(&fresh, vknf_kernels::SPIN, "main").unwrap(),
            &Specialization::new(),
        )
        .unwrap();
    let out = fresh.create_buffer_with("out", &[1u32], MemoryKind::Readback).unwrap();
    let group = pipeline.bind(&[(0, &out)]).unwrap();
    let mut stream = fresh.stream(QueueKind::Compute).unwrap();
    let mut list = stream.record(|rec| rec.dispatch(&group, &3u32, [1, 1, 1])).unwrap();
    stream.run(&mut list, Duration::from_secs(60)).unwrap();
    let mut x = 1u32;
    for _ in 0..3 {
        x = x.wrapping_mul(1664525).wrapping_add(1013904223);
    }
    assert_eq!(out.read_vec::<u32>(0, 1).unwrap()[0], x);
}

#[test]
fn ten_thousand_dispatches_reuse_buffers_without_memory_growth() {
    let gpu = Gpu::new();
    let device = &gpu.device;
    let kernel = Kernel::new(device, vknf_kernels::ADD, "main").unwrap();
    let pipeline = device.create_pipeline(&kernel, &Specialization::new()).unwrap();
    let n = 256usize;
    let a = device
        .create_buffer_with("a", &vec![1.0f32; n], MemoryKind::Upload)
        .unwrap();
    let b = device
        .create_buffer_with("b", &vec![0.0f32; n], MemoryKind::Upload)
        .unwrap();
    let c = device.create_buffer("c", (n * 4) as u64, MemoryKind::Readback).unwrap();
    let group = pipeline.bind(&[(0, &a), (1, &b), (2, &c)]).unwrap();
    let mut stream = device.stream(QueueKind::Compute).unwrap();
    let mut list = stream
        .record(|rec| rec.dispatch(&group, &(n as u32), [pipeline.groups_for(n as u64), 1, 1]))
        .unwrap();
    stream.run(&mut list, Duration::from_secs(60)).unwrap();
    let before = device.memory_report();
    let mut input = vec![0.0f32; n];
    for i in 0..10_000u32 {
        input[(i as usize) % n] = i as f32;
        b.write(0, &input).unwrap();
        stream.run(&mut list, Duration::from_secs(60)).unwrap();
        if i % 1000 == 999 {
            let got: Vec<f32> = c.read_vec(0, n).unwrap();
            assert!(got.iter().zip(&input).all(|(g, x)| *g == 1.0 + x), "dispatch {i}");
        }
    }
    assert_eq!(
        device.memory_report(),
        before,
        "allocations changed over 10,000 dispatches"
    );
    // A list still executing cannot be resubmitted or re-recorded, but can once its ticket completes.
    let ticket = stream.submit(&mut list).unwrap();
    ticket.wait(Duration::from_secs(60)).unwrap();
    list.rerecord(|rec| rec.dispatch(&group, &1u32, [1, 1, 1])).unwrap();
}

#[test]
fn several_devices_run_side_by_side() {
    let gpu = Gpu::new();
    // Every adapter, and the first one twice, as a stand-in for a multi-GPU host.
    let mut adapters = gpu.instance.adapters();
    adapters.push(adapters[0].clone());
    let devices: Vec<Device> = adapters
        .iter()
        .map(|a| Device::new(&gpu.instance, a).unwrap())
        .collect();
    for (i, device) in devices.iter().enumerate() {
        let kernel = Kernel::new(device, vknf_kernels::ADD, "main").unwrap();
        // Defaults only: the runtime passes every constant explicitly (lavapipe otherwise reuses a
        // pipeline specialised differently on a second device).
        let pipeline = device.create_pipeline(&kernel, &Specialization::new()).unwrap();
        let a = device
            .create_buffer_with("a", &[i as f32; 100], MemoryKind::Upload)
            .unwrap();
        let c = device.create_buffer("c", 400, MemoryKind::Readback).unwrap();
        let group = pipeline.bind(&[(0, &a), (1, &a), (2, &c)]).unwrap();
        let mut stream = device.stream(QueueKind::Compute).unwrap();
        let mut list = stream.record(|rec| rec.dispatch(&group, &100u32, [2, 1, 1])).unwrap();
        stream.run(&mut list, Duration::from_secs(60)).unwrap();
        let got = c.read_vec::<f32>(0, 100).unwrap();
        assert!(
            got.iter().all(|v| *v == 2.0 * i as f32),
            "device {i}: {:?} wg {:?}",
            got.iter().filter(|v| **v != 0.0).count(),
            pipeline.workgroup_size()
        );
        assert!(device.queue_count(QueueKind::Compute) >= 1);
        assert!(device.queue_count(QueueKind::Transfer) >= 1);
    }
}

#[test]
fn pipeline_cache_is_persisted_per_device_and_driver() {
    let dir = tempfile::tempdir().unwrap();
    let gpu = Gpu::with_cache_dir(Some(dir.path().to_path_buf()));
    let device = &gpu.device;
    let path = device.pipeline_cache_path().unwrap().to_path_buf();
    assert!(path.starts_with(dir.path()));
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.contains(&device.info().uuid), "{name}");
    let kernel = Kernel::new(device, vknf_kernels::SAXPY_SPEC, "main").unwrap();
    device
        .create_pipeline(&kernel, &Specialization::new().name("SCALE", 2.0f32))
        .unwrap();
    device.save_pipeline_cache().unwrap();
    let saved = std::fs::read(&path).unwrap();
    assert!(saved.len() >= 32, "cache file has no header");
    // Garbage in the cache file is ignored, not handed to the driver.
    std::fs::write(&path, b"garbage").unwrap();
    let second = Device::new(&gpu.instance, device.info()).unwrap();
    second.create_pipeline(&kernel, &Specialization::new()).unwrap();
}
