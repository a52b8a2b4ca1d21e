//! Test kernels run on the device and are checked against the CPU on fresh random data.

mod common;

use std::time::Duration;

use common::{Gpu, Rng};
use vknf_vulkan::{Kernel, MemoryKind, QueueKind, Specialization};

const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn element_wise_add_matches_cpu_for_many_sizes() {
    let gpu = Gpu::new();
    let device = &gpu.device;
    let kernel = Kernel::new(device, vknf_kernels::ADD, "main").unwrap();
    let mut rng = Rng(0x5eed_1234);
    for workgroup in [64u32, 32] {
        let pipeline = device
            .create_pipeline(&kernel, &Specialization::new().id(0, workgroup))
            .unwrap();
        assert_eq!(pipeline.workgroup_size(), [workgroup, 1, 1]);
        // Sizes below, at and around multiples of the workgroup size.
        for n in [1usize, 63, 64, 65, 1000, 4097, 100_003] {
            let a: Vec<f32> = (0..n).map(|_| rng.next_f32()).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.next_f32()).collect();
            let buf_a = device.create_buffer_with("a", &a, MemoryKind::DeviceLocal).unwrap();
            let buf_b = device.create_buffer_with("b", &b, MemoryKind::Upload).unwrap();
            // One element more than needed, with a sentinel: the kernel must not write past n.
            let out = device
                .create_buffer_with("c", &vec![-7.0f32; n + 1], MemoryKind::Readback)
                .unwrap();
            let group = pipeline.bind(&[(0, &buf_a), (1, &buf_b), (2, &out)]).unwrap();
            let mut stream = device.stream(QueueKind::Compute).unwrap();
            let mut list = stream
                .record(|rec| rec.dispatch(&group, &(n as u32), [pipeline.groups_for(n as u64), 1, 1]))
                .unwrap();
            stream.run(&mut list, DEADLINE).unwrap();
            let got: Vec<f32> = out.read_vec(0, n + 1).unwrap();
            for i in 0..n {
                assert_eq!(got[i], a[i] + b[i], "n={n} i={i}");
            }
            assert_eq!(got[n], -7.0, "wrote past the end for n={n}");
        }
    }
}

#[test]
fn subgroup_reduction_matches_cpu() {
    let gpu = Gpu::new();
    let device = &gpu.device;
    let kernel = Kernel::new(device, vknf_kernels::REDUCE_SUM, "main").unwrap();
    let pipeline = device.create_pipeline(&kernel, &Specialization::new()).unwrap();
    let mut rng = Rng(42);
    for n in [1usize, 127, 128, 129, 5000, 65_537] {
        let values: Vec<u32> = (0..n).map(|_| rng.next_u32() % 1000).collect();
        let input = device
            .create_buffer_with("values", &values, MemoryKind::Upload)
            .unwrap();
        let total = device
            .create_buffer_with("total", &[0u32], MemoryKind::Readback)
            .unwrap();
        let group = pipeline.bind(&[(0, &input), (1, &total)]).unwrap();
        let mut stream = device.stream(QueueKind::Compute).unwrap();
        let mut list = stream
            .record(|rec| rec.dispatch(&group, &(n as u32), [pipeline.groups_for(n as u64), 1, 1]))
            .unwrap();
        stream.run(&mut list, DEADLINE).unwrap();
        let expected: u32 = values.iter().sum();
        assert_eq!(total.read_vec::<u32>(0, 1).unwrap()[0], expected, "n={n}");
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SaxpyParams {
    alpha: f32,
    n: u32,
    offset: u32,
}

#[test]
fn push_and_specialization_constants_change_results() {
    let gpu = Gpu::new();
    let device = &gpu.device;
    let kernel = Kernel::new(device, vknf_kernels::SAXPY_SPEC, "main").unwrap();
    let mut rng = Rng(7);
    for (scale, negate, workgroup) in [(1.0f32, false, 32u32), (0.5, true, 16), (3.0, false, 128)] {
        let spec = Specialization::new()
            .name("SCALE", scale)
            .name("NEGATE", negate)
            .name("WORKGROUP_SIZE", workgroup);
        let pipeline = device.create_pipeline(&kernel, &spec).unwrap();
        assert_eq!(pipeline.workgroup_size(), [workgroup, 1, 1]);
        let n = 1000 + rng.next_u32() as usize % 3000;
        let offset = rng.next_u32() % 50;
        let alpha = rng.next_f32();
        let x: Vec<f32> = (0..n).map(|_| rng.next_f32()).collect();
        let y: Vec<f32> = (0..n).map(|_| rng.next_f32()).collect();
        let bx = device.create_buffer_with("x", &x, MemoryKind::Upload).unwrap();
        let by = device.create_buffer_with("y", &y, MemoryKind::Readback).unwrap();
        let group = pipeline.bind(&[(0, &bx), (1, &by)]).unwrap();
        let params = SaxpyParams {
            alpha,
            n: n as u32,
            offset,
        };
        let mut stream = device.stream(QueueKind::Compute).unwrap();
        let mut list = stream
            .record(|rec| rec.dispatch(&group, &params, [pipeline.groups_for(n as u64), 1, 1]))
            .unwrap();
        stream.run(&mut list, DEADLINE).unwrap();
        let got: Vec<f32> = by.read_vec(0, n).unwrap();
        for i in 0..n {
            let expected = if i < offset as usize {
                y[i]
            } else {
                let r = (alpha * x[i] + y[i]) * scale;
                if negate { -r } else { r }
            };
            let tolerance = 1e-4 * expected.abs().max(1.0);
            assert!(
                (got[i] - expected).abs() <= tolerance,
                "i={i}: {} vs {expected}",
                got[i]
            );
        }
    }
}

#[test]
fn wrong_specialization_and_push_constants_are_rejected() {
    let gpu = Gpu::new();
    let device = &gpu.device;
    let kernel = Kernel::new(device, vknf_kernels::SAXPY_SPEC, "main").unwrap();
    let err = device
        .create_pipeline(&kernel, &Specialization::new().name("NOPE", 1u32))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("NOPE") && err.to_string().contains("SCALE"),
        "{err}"
    );
    let err = device
        .create_pipeline(&kernel, &Specialization::new().id(9, 1u32))
        .err()
        .unwrap();
    assert!(err.to_string().contains("not declared"), "{err}");
    let err = device
        .create_pipeline(&kernel, &Specialization::new().name("NEGATE", 2.5f32))
        .err()
        .unwrap();
    assert!(err.to_string().contains("does not fit"), "{err}");
    let err = device
        .create_pipeline(&kernel, &Specialization::new().id(0, 1_000_000u32))
        .err()
        .unwrap();
    assert!(err.to_string().contains("exceeds"), "{err}");

    let pipeline = device.create_pipeline(&kernel, &Specialization::new()).unwrap();
    let x = device.create_buffer("x", 64, MemoryKind::Upload).unwrap();
    let err = pipeline.bind(&[(0, &x)]).err().unwrap();
    assert!(err.to_string().contains("binding 0.1"), "{err}");
    let err = pipeline.bind(&[(0, &x), (1, &x), (5, &x)]).err().unwrap();
    assert!(err.to_string().contains("no binding 0.5"), "{err}");
    let group = pipeline.bind(&[(0, &x), (1, &x)]).unwrap();
    let stream = device.stream(QueueKind::Compute).unwrap();
    let err = stream
        .record(|rec| rec.dispatch(&group, &1u32, [1, 1, 1]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("12 bytes"), "{err}");
    let err = stream.record(|rec| rec.copy(&x, 0, &x, 32, 64)).err().unwrap();
    assert!(err.to_string().contains("outside"), "{err}");
}

#[test]
fn transfer_and_compute_streams_chain_with_tickets() {
    let gpu = Gpu::new();
    let device = &gpu.device;
    let n = 10_000usize;
    let Doubling {
        pipeline,
        staging,
        on_device,
        result,
        group,
    } = doubling(device, n);
    let readback = device
        .create_buffer("readback", (n * 4) as u64, MemoryKind::Readback)
        .unwrap();

    let mut transfer = device.stream(QueueKind::Transfer).unwrap();
    let mut compute = device.stream(QueueKind::Compute).unwrap();
    let mut upload = transfer
        .record(|rec| rec.copy(&staging, 0, &on_device, 0, (n * 4) as u64))
        .unwrap();
    let mut work = compute
        .record(|rec| {
            rec.dispatch(&group, &(n as u32), [pipeline.groups_for(n as u64), 1, 1])?;
            rec.barrier();
            rec.copy(&result, 0, &readback, 0, (n * 4) as u64)
        })
        .unwrap();
    for round in 0..3 {
        let uploaded = transfer.submit(&mut upload).unwrap();
        let done = compute.submit_after(&mut work, &[&uploaded]).unwrap();
        done.wait(DEADLINE).unwrap();
        let got: Vec<f32> = readback.read_vec(0, n).unwrap();
        assert!(
            got.iter().enumerate().all(|(i, v)| *v == 2.0 * i as f32),
            "round {round}"
        );
    }
    // A list recorded for the transfer family cannot go to another family's stream.
    if device.has_dedicated_transfer() {
        assert!(compute.submit(&mut upload).is_err());
    }
}

/// Timestamps written on a transfer stream (on a dedicated transfer family, which cannot reset them
/// itself; on lavapipe a second stream of the compute family) and a compute stream, reset from the host
/// before each round: a list's start stamp precedes its end stamp, and where both streams are one queue
/// family (lavapipe: one clock) the dispatch waiting for the copy starts after the copy ended and each
/// round's stamps are new (Vulkan does not promise one clock across families).
#[test]
fn timestamps_on_a_transfer_stream_reset_from_the_host() {
    let gpu = Gpu::new();
    let device = &gpu.device;
    let n = 1 << 16;
    let Doubling {
        pipeline,
        staging,
        on_device,
        group,
        ..
    } = doubling(device, n);
    let copy_stamps = device.create_timestamps(2).unwrap();
    let kernel_stamps = device.create_timestamps(2).unwrap();
    let mut transfer = device.stream(QueueKind::Transfer).unwrap();
    let mut compute = device.stream(QueueKind::Compute).unwrap();
    let mut upload = transfer
        .record(|rec| {
            rec.write_start_timestamp(&copy_stamps, 0)?;
            rec.copy(&staging, 0, &on_device, 0, (n * 4) as u64)?;
            rec.write_timestamp(&copy_stamps, 1)
        })
        .unwrap();
    let mut work = compute
        .record(|rec| {
            rec.write_start_timestamp(&kernel_stamps, 0)?;
            rec.dispatch(&group, &(n as u32), [pipeline.groups_for(n as u64), 1, 1])?;
            rec.write_timestamp(&kernel_stamps, 1)
        })
        .unwrap();
    let mut last_end = 0.0;
    for round in 0..3 {
        copy_stamps.reset_on_host().unwrap();
        kernel_stamps.reset_on_host().unwrap();
        let uploaded = transfer.submit(&mut upload).unwrap();
        compute
            .submit_after(&mut work, &[&uploaded])
            .unwrap()
            .wait(DEADLINE)
            .unwrap();
        let copy = copy_stamps.read_ns().unwrap();
        let dispatch = kernel_stamps.read_ns().unwrap();
        assert!(
            copy[0] <= copy[1] && dispatch[0] <= dispatch[1],
            "round {round}: {copy:?} {dispatch:?}"
        );
        if !device.has_dedicated_transfer() {
            assert!(
                copy[1] <= dispatch[0],
                "round {round}: the dispatch started before its copy ended"
            );
            assert!(copy[0] > last_end, "round {round}: stamps of an earlier round");
        }
        last_end = dispatch[1];
    }
}

/// The element-wise add kernel doubling `n` floats: their values (0, 1, 2, ...) in host-visible staging
/// memory, the device buffer they are copied into (bound as both inputs) and the result buffer.
struct Doubling {
    pipeline: vknf_vulkan::Pipeline,
    staging: vknf_vulkan::Buffer,
    on_device: vknf_vulkan::Buffer,
    result: vknf_vulkan::Buffer,
    group: vknf_vulkan::BindGroup,
}

fn doubling(device: &vknf_vulkan::Device, n: usize) -> Doubling {
    let kernel = Kernel::new(device, vknf_kernels::ADD, "main").unwrap();
    let pipeline = device.create_pipeline(&kernel, &Specialization::new()).unwrap();
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let staging = device.create_buffer_with("staging", &a, MemoryKind::Readback).unwrap();
    let on_device = device
        .create_buffer("a", (n * 4) as u64, MemoryKind::DeviceLocal)
        .unwrap();
    let result = device
        .create_buffer("result", (n * 4) as u64, MemoryKind::DeviceLocal)
        .unwrap();
    let group = pipeline
        .bind(&[(0, &on_device), (1, &on_device), (2, &result)])
        .unwrap();
    Doubling {
        pipeline,
        staging,
        on_device,
        result,
        group,
    }
}

/// The host cannot reset timestamp slots that a submitted list has not finished writing: the reset is
/// refused until the list's ticket completes, then allowed.
#[test]
fn timestamps_are_not_reset_on_the_host_while_a_list_writes_them() {
    let gpu = Gpu::new();
    let device = &gpu.device;
    let spin = Kernel::new(device, vknf_kernels::SPIN, "main").unwrap();
    let pipeline = device.create_pipeline(&spin, &Specialization::new()).unwrap();
    let state = device
        .create_buffer_with("state", &[1u32], MemoryKind::Readback)
        .unwrap();
    let group = pipeline.bind(&[(0, &state)]).unwrap();
    let stamps = device.create_timestamps(2).unwrap();
    let mut stream = device.stream(QueueKind::Compute).unwrap();
    // Long enough that no device has run it right after the submission; bounded, so it ends.
    let mut list = stream
        .record(|rec| {
            rec.write_start_timestamp(&stamps, 0)?;
            rec.dispatch(&group, &20_000_000u32, [1, 1, 1])?;
            rec.write_timestamp(&stamps, 1)
        })
        .unwrap();
    stamps.reset_on_host().unwrap();
    let ticket = stream.submit(&mut list).unwrap();
    match stamps.reset_on_host() {
        Err(vknf_vulkan::Error::StillExecuting) => {}
        other => panic!(
            "expected the reset to be refused while the list runs, got {other:?} (on lavapipe, run with \
             MESA_VK_ENABLE_SUBMIT_THREAD=1, as `make test` does, so that submissions run asynchronously)"
        ),
    }
    ticket.wait(DEADLINE).unwrap();
    let ns = stamps.read_ns().unwrap();
    assert!(ns[0] <= ns[1], "{ns:?}");
    stamps.reset_on_host().unwrap();
}

/// Where the device reads its clock beside the host's, GPU timestamps placed on the host's clock fall
/// within what the host saw: a list's timestamps after the host submitted it and before the host saw
/// it finish (within the reading's uncertainty), and two readings agree on the clocks' offset.
#[test]
fn device_timestamps_placed_on_the_host_clock_fall_between_submission_and_completion() {
    let gpu = Gpu::new();
    let device = &gpu.device;
    let Some(first) = device.read_clocks().unwrap() else {
        // lavapipe, CI's driver, offers them: there a missing reading is the failure.
        assert!(
            !device.info().name.contains("llvmpipe"),
            "lavapipe reads its clock beside the host's"
        );
        eprintln!("{}: no calibrated timestamps; nothing to check", device.info().name);
        return;
    };
    let n = 1 << 16;
    let Doubling { pipeline, group, .. } = doubling(device, n);
    let stamps = device.create_timestamps(2).unwrap();
    let mut compute = device.stream(QueueKind::Compute).unwrap();
    let mut work = compute
        .record(|rec| {
            rec.write_start_timestamp(&stamps, 0)?;
            rec.dispatch(&group, &(n as u32), [pipeline.groups_for(n as u64), 1, 1])?;
            rec.write_timestamp(&stamps, 1)
        })
        .unwrap();
    for round in 0..3 {
        stamps.reset_on_host().unwrap();
        let submitted = std::time::Instant::now();
        compute.submit(&mut work).unwrap().wait(DEADLINE).unwrap();
        let finished = std::time::Instant::now();
        let reading = device.read_clocks().unwrap().expect("the device read its clock before");
        let slack = Duration::from_nanos(reading.uncertainty_ns as u64) + Duration::from_micros(50);
        let ns = stamps.read_ns().unwrap();
        let (start, end) = (reading.host_moment(ns[0]), reading.host_moment(ns[1]));
        assert!(start <= end, "round {round}");
        assert!(
            start + slack >= submitted,
            "round {round}: the list started {:?} before it was submitted",
            submitted - start
        );
        assert!(
            end <= finished + slack,
            "round {round}: the list ended {:?} after the host saw it finish",
            end - finished
        );
        // Both readings place the same device moment at (about) the same host moment.
        let (a, b) = (first.host_moment(ns[0]), reading.host_moment(ns[0]));
        let apart = if a > b { a - b } else { b - a };
        assert!(
            apart <= slack + Duration::from_nanos(first.uncertainty_ns as u64),
            "round {round}: {apart:?}"
        );
    }
}
