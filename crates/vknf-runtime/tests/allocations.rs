//! Steady-state serving allocates nothing that grows with a call: rows are shared with the caller,
//! results are written once into the caller's recycled answer buffers, batches reuse their segment
//! lists. What remains per call is three small bookkeeping allocations (the queued job, its reply and
//! one-shot channel), counted here by a counting global allocator.

mod common;

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use vknf_functions::CpuLoader;
use vknf_runtime::{Answer, Call, FunctionHandle, Rows, Runtime, RuntimeSettings};

// Counts every allocation of this test process (stats_alloc wraps the system allocator).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations and bytes per call over `calls` calls of `rows` rows, the caller's input prepared outside
/// the count (as a front end's frame would be) and the answer recycled.
fn per_call(function: &FunctionHandle, rows: usize, calls: usize) -> (f64, f64) {
    let inputs: Vec<Rows> = (0..calls + 20)
        .map(|i| Rows::u32(awkward_rows(rows + i % 2).split_off(2 * (i % 2)), 2).unwrap())
        .collect();
    let mut answer = Answer::default();
    let mut inputs = inputs.into_iter();
    // Warm up: answer buffers reach their size, channels their blocks, threads their caches.
    for rows in inputs.by_ref().take(20) {
        answer = function.call_blocking_reusing(Call::new(rows, 0b10), answer).unwrap();
    }
    let region = Region::new(GLOBAL);
    for rows in inputs.by_ref() {
        answer = function.call_blocking_reusing(Call::new(rows, 0b10), answer).unwrap();
    }
    let change = region.change();
    let count = change.allocations + change.reallocations;
    let bytes = change.bytes_allocated + change.bytes_reallocated.max(0) as usize;
    (count as f64 / calls as f64, bytes as f64 / calls as f64)
}

#[test]
fn allocations_per_call_do_not_grow_with_the_rows() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let function = tokio.block_on(async {
        let settings = RuntimeSettings {
            lanes_per_function: 1,
            drain_timeout: Duration::from_secs(10),
            ..RuntimeSettings::default()
        };
        let runtime = Runtime::new(Arc::new(CpuLoader::new(families_with_acl())), settings);
        runtime
            .load(acl_spec("acl", 4096), Some(rule_bytes(&some_rules()).into()), None)
            .await
            .unwrap()
    });
    let (small_count, small_bytes) = per_call(&function, 1, 300);
    let (large_count, large_bytes) = per_call(&function, 4000, 300);
    // 4000 rows are 32 KB in and 32 KB out: none of it may be allocated per call.
    assert!(
        large_bytes < small_bytes + 512.0,
        "{large_bytes:.0} bytes per 4000-row call vs {small_bytes:.0} per 1-row call"
    );
    assert!(
        small_count <= 3.5 && large_count <= 3.5,
        "{small_count} and {large_count} allocations per call"
    );
    assert!(small_bytes < 512.0, "{small_bytes:.0} bytes per call");
    eprintln!(
        "per call: 1 row {small_count:.1} allocations / {small_bytes:.0} B; 4000 rows {large_count:.1} / {large_bytes:.0} B"
    );
}
