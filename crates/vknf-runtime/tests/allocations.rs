//! Steady-state calls allocate nothing: rows are shared with the caller, results are written once into
//! the caller's recycled answer buffers, batches reuse their segment lists, jobs are recycled by the
//! engine and the reply travels in the caller's `CallSlot`. A counting global allocator checks it, on
//! the CPU loader and on the GPU loader (lavapipe, validation on), for blocking and async callers.

mod common;

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use vknf_functions::{CpuLoader, FunctionLoader, GpuLoader};
use vknf_runtime::{Answer, Call, CallSlot, FunctionHandle, Rows, Runtime, RuntimeSettings};
use vknf_vulkan::DeviceSelector;

// Counts every allocation of this test process (stats_alloc wraps the system allocator).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The allocator counts the whole process: the tests of this file take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Calls of one size, counted after a warm-up: answer buffers reach their size, threads their caches,
/// the engine its spare jobs, and the queues' channels (blocks of 32 messages, recycled once the
/// receiver is past them) the blocks they go round.
const WARM_UP: usize = 200;
const COUNTED: usize = 300;

/// How a test calls.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// `call_blocking_reusing`, handing each answer back.
    BlockingReusing,
    /// `call_blocking_in` with a slot kept between calls.
    BlockingSlot,
    /// `call_in` from an async task with a slot kept between calls.
    AsyncSlot,
}

/// Allocations and bytes over [`COUNTED`] calls of `rows` rows (after a warm-up), the caller's input
/// prepared outside the count (as a front end's frame would be). Every answer is checked.
fn count_calls(
    tokio: &tokio::runtime::Runtime,
    function: &FunctionHandle,
    rows: usize,
    vary: bool,
    caller: Caller,
) -> (u64, u64) {
    let rules = some_rules();
    let inputs: Vec<(Vec<u32>, Rows)> = (0..WARM_UP + COUNTED)
        .map(|i| {
            // With `vary`, calls of two sizes alternate, so answers grow and shrink within their buffers.
            let odd = usize::from(vary) * (i % 2);
            let values = awkward_rows(rows + odd).split_off(2 * odd);
            let call_rows = Rows::u32(values.clone(), 2).unwrap();
            (values, call_rows)
        })
        .collect();
    let check = |values: &[u32], answer: &Answer| {
        let rule = answer.output(0).unwrap().as_i32();
        let network = answer.output(1).unwrap().as_u32();
        assert_eq!(rule.len(), values.len() / 2);
        for (row, flow) in values.chunks(2).enumerate() {
            assert_eq!((rule[row], network[row]), acl_reference(&rules, flow[0], flow[1]));
        }
    };
    let mut answer = Answer::default();
    let mut slot = CallSlot::new();
    let mut counted = None;
    for (index, (values, call_rows)) in inputs.into_iter().enumerate() {
        let region = (index == WARM_UP).then(|| Region::new(GLOBAL));
        if let Some(region) = region {
            counted = Some(region);
        }
        let call = Call::new(call_rows, 0b10);
        match caller {
            Caller::BlockingReusing => {
                answer = function.call_blocking_reusing(call, answer).unwrap();
                check(&values, &answer);
            }
            Caller::BlockingSlot => check(&values, function.call_blocking_in(&mut slot, call).unwrap()),
            Caller::AsyncSlot => tokio.block_on(async {
                check(&values, function.call_in(&mut slot, call).await.unwrap());
            }),
        }
    }
    let change = counted.expect("calls were counted").change();
    let count = (change.allocations + change.reallocations) as u64;
    let bytes = (change.bytes_allocated + change.bytes_reallocated.max(0) as usize) as u64;
    (count, bytes)
}

fn runtime_settings() -> RuntimeSettings {
    RuntimeSettings {
        lanes_per_function: 1,
        drain_timeout: Duration::from_secs(10),
        ..RuntimeSettings::default()
    }
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Calls `rows` rows from several threads at once, so that the engine holds the spare jobs that
/// overlapping calls need: a caller's next call can be admitted before the lane thread has given its
/// last call's job back (the answer is delivered first), so even one caller keeps two jobs going.
fn warm_up_concurrently(function: &FunctionHandle, rows: usize) {
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..10 {
                    let call = Call::new(Rows::u32(awkward_rows(rows), 2).unwrap(), 0b10);
                    function.call_blocking(call).unwrap();
                }
            });
        }
    });
}

/// Every caller, each size of call: nothing is allocated per call once warm.
fn assert_no_allocations(
    tokio: &tokio::runtime::Runtime,
    function: &FunctionHandle,
    lane: &str,
    sizes: [usize; 2],
    vary: bool,
) {
    for rows in sizes {
        warm_up_concurrently(function, rows);
    }
    for caller in [Caller::BlockingReusing, Caller::BlockingSlot, Caller::AsyncSlot] {
        for rows in sizes {
            let (count, bytes) = count_calls(tokio, function, rows, vary, caller);
            eprintln!("{lane}, {caller:?}, {rows} rows: {count} allocations, {bytes} B in {COUNTED} calls");
            assert_eq!(
                (count, bytes),
                (0, 0),
                "{lane}, {caller:?}, {rows} rows: allocations and bytes in {COUNTED} calls"
            );
        }
    }
}

#[test]
fn steady_state_calls_allocate_nothing_on_the_cpu() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tokio = tokio_runtime();
    let (runtime, function) = tokio.block_on(async {
        let runtime = Runtime::new(Arc::new(CpuLoader::new(families_with_acl())), runtime_settings());
        let function = runtime
            .load(acl_spec("acl", 4096), Some(rule_bytes(&some_rules()).into()), None)
            .await
            .unwrap();
        (runtime, function)
    });
    // 4000 rows are 32 KB in and 32 KB out: none of it may be allocated per call.
    assert_no_allocations(&tokio, &function, "CPU", [1, 4000], true);
    tokio.block_on(runtime.shutdown());
}

#[test]
fn steady_state_calls_allocate_nothing_on_the_gpu() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tokio = tokio_runtime();
    let loader: Arc<dyn FunctionLoader> =
        Arc::new(GpuLoader::new(true, DeviceSelector::from_env().unwrap()).expect("a Vulkan device"));
    let rules = some_rules();
    let (runtime, function) = tokio.block_on(async {
        let runtime = Runtime::new(loader, runtime_settings());
        let function = runtime
            .load(acl_gpu_spec("acl", rules.len()), Some(rule_bytes(&rules).into()), None)
            .await
            .unwrap();
        (runtime, function)
    });
    // 128 rows are two batches of the function's 64 rows: a call split across batches. The sizes
    // stay the same: the generic family's GPU lane records its command list again (and allocates)
    // whenever a batch's row count changes.
    assert_no_allocations(&tokio, &function, "GPU", [1, 128], false);
    tokio.block_on(runtime.shutdown());
}

#[test]
fn a_call_given_up_never_answers_a_later_call_of_its_slot() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tokio = tokio_runtime();
    let rules = some_rules();
    let (runtime, function) = tokio.block_on(async {
        let runtime = Runtime::new(Arc::new(CpuLoader::new(families_with_acl())), runtime_settings());
        let function = runtime
            .load(acl_spec("acl", 4096), Some(rule_bytes(&rules).into()), None)
            .await
            .unwrap();
        (runtime, function)
    });
    tokio.block_on(async {
        let mut slot = CallSlot::new();
        for round in 0..200usize {
            // A large call, given up at once or after a little while (queued, running or answered),
            // then a small one through the same slot: its answer is its own, never the large one's.
            let large = awkward_rows(4000 + round);
            let given_up = function.call_in(&mut slot, Call::new(Rows::u32(large, 2).unwrap(), 0b10));
            let _ = tokio::time::timeout(Duration::from_micros((round % 7) as u64 * 50), given_up).await;
            let small = awkward_rows(1 + round % 3);
            let answer = function
                .call_in(&mut slot, Call::new(Rows::u32(small.clone(), 2).unwrap(), 0b10))
                .await
                .unwrap();
            assert_eq!(answer.n_rows, small.len() / 2, "round {round}");
            let rule = answer.output(0).unwrap().as_i32();
            let network = answer.output(1).unwrap().as_u32();
            assert_eq!(rule.len(), small.len() / 2, "round {round}");
            for (row, flow) in small.chunks(2).enumerate() {
                assert_eq!(
                    (rule[row], network[row]),
                    acl_reference(&rules, flow[0], flow[1]),
                    "round {round}"
                );
            }
        }
        // Every call given up was answered or skipped: nothing stays queued.
        for _ in 0..500 {
            if function.queued_requests() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(function.queued_requests(), 0);
        // A slot dropped with a call in flight lets go of it too.
        let mut slot = CallSlot::new();
        let pending = function.call_in(&mut slot, Call::new(Rows::u32(awkward_rows(4000), 2).unwrap(), 0));
        let _ = tokio::time::timeout(Duration::from_micros(10), pending).await;
        drop(slot);
        runtime.shutdown().await;
    });
}
