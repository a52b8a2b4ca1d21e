//! The in-process API: functions loaded and called with no socket, by tasks and threads alike, with
//! the same admission, batching, backpressure, deadlines and device-loss recovery as every front end.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng as _, SeedableRng as _};
use vknf_forest::GpuForest;
use vknf_functions::{CpuLoader, FunctionLoader};
use vknf_runtime::{Call, CallError, Rows, Runtime, RuntimeSettings};
use vknf_testkit::gate::{Gate, GatedLoader};

const FEATURES: usize = 6;

fn forest(seed: u64) -> GpuForest {
    vknf_testkit::synthetic::random_classifier(FEATURES, 4, 12, 6, seed)
}

fn random_rows(n_rows: usize, rng: &mut impl rand::Rng) -> Vec<f32> {
    (0..n_rows * FEATURES).map(|_| rng.random_range(-1.2f32..1.2)).collect()
}

fn settings() -> RuntimeSettings {
    RuntimeSettings {
        lanes_per_function: 2,
        default_max_wait: Duration::from_micros(200),
        drain_timeout: Duration::from_secs(20),
        ..RuntimeSettings::default()
    }
}

/// Runs a test body with a 60 s bound, so a regression fails instead of hanging.
async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("test finished within 60 s");
}

async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_and_threads_calling_at_once_get_the_reference_answers() {
    bounded(async {
        let model = forest(1);
        let runtime = Runtime::new(Arc::new(CpuLoader::default()), settings());
        let function = runtime
            .load(forest_spec("f", 64), Some(model.to_vkf_bytes().into()), None)
            .await
            .unwrap();
        let info = function.info().unwrap();
        assert_eq!((info.input.width, info.outputs.len()), (FEATURES, 2));

        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..6u64 {
            let (function, model) = (function.clone(), model.clone());
            tasks.spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                for i in 0..15 {
                    // Up to 200 rows: calls are split across 64-row batches and share batches.
                    let rows = random_rows(rng.random_range(1..200), &mut rng);
                    let scores = i % 2 == 1;
                    let call = Call::new(Rows::f32(rows.clone(), FEATURES).unwrap(), u32::from(scores) << 1);
                    let answer = function.call(call).await.unwrap();
                    let expected = model.predict_cpu(&rows, rows.len() / FEATURES).unwrap();
                    assert_eq!(answer.output(0).unwrap().as_u32(), expected.labels.as_slice());
                    match answer.output(1) {
                        Some(got) => assert_eq!(got.as_f32(), expected.scores.as_slice()),
                        None => assert!(!scores, "scores were asked for"),
                    }
                }
            });
        }
        // Two plain threads call too, blocking.
        let threads: Vec<_> = (0..2u64)
            .map(|t| {
                let (function, model) = (function.clone(), model.clone());
                std::thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(100 + t);
                    let mut answer = Default::default();
                    for _ in 0..15 {
                        let rows = random_rows(rng.random_range(1..100), &mut rng);
                        let call = Call::new(Rows::f32(rows.clone(), FEATURES).unwrap(), 0);
                        answer = function.call_blocking_reusing(call, answer).unwrap();
                        let expected = model.predict_cpu(&rows, rows.len() / FEATURES).unwrap();
                        assert_eq!(answer.output(0).unwrap().as_u32(), expected.labels.as_slice());
                        assert!(answer.output(1).is_none());
                    }
                })
            })
            .collect();
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
        for thread in threads {
            tokio::task::spawn_blocking(move || thread.join().unwrap())
                .await
                .unwrap();
        }
        assert_eq!(function.queued_requests(), 0);
        assert_eq!(
            runtime
                .metrics()
                .requests
                .get_or_create(&vknf_runtime::Metrics::function("f"))
                .get(),
            6 * 15 + 2 * 15
        );
        runtime.shutdown().await;
        assert!(function.is_closing());
        let after = function
            .call(Call::new(Rows::f32(vec![0.0; FEATURES], FEATURES).unwrap(), 0))
            .await;
        assert!(matches!(after, Err(CallError::ShuttingDown(_))), "{after:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_shapes_types_and_non_finite_values_are_typed_errors() {
    bounded(async {
        let runtime = Runtime::new(Arc::new(CpuLoader::default()), settings());
        let function = runtime
            .load(forest_spec("f", 64), Some(forest(2).to_vkf_bytes().into()), None)
            .await
            .unwrap();
        let call = |rows: Rows, outputs| function.call(Call::new(rows, outputs));
        let error = call(Rows::f32(vec![0.0; 5], 5).unwrap(), 0).await.unwrap_err();
        assert!(
            matches!(&error, CallError::Shape(m) if m.contains("takes 6 features")),
            "{error}"
        );
        let error = call(Rows::u32(vec![0; FEATURES], FEATURES).unwrap(), 0)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, CallError::Shape(m) if m.contains("takes f32 input")),
            "{error}"
        );
        let error = call(Rows::f32(vec![0.0; FEATURES], FEATURES).unwrap(), 0b100)
            .await
            .unwrap_err();
        assert!(matches!(error, CallError::Shape(_)), "{error}");
        let mut rows = vec![0.5; 3 * FEATURES];
        rows[2 * FEATURES + 4] = f32::NAN;
        let error = call(Rows::f32(rows, FEATURES).unwrap(), 0).await.unwrap_err();
        assert_eq!(error, CallError::NonFinite { row: 2, feature: 4 });
        assert!(
            Rows::f32(vec![0.0; 7], FEATURES).is_err(),
            "partial rows are refused before any call"
        );
        // The function keeps serving.
        assert!(call(Rows::f32(vec![0.5; FEATURES], FEATURES).unwrap(), 0).await.is_ok());
        assert_eq!(runtime.metrics().error_count("f", "SHAPE"), 3);
        assert_eq!(runtime.metrics().error_count("f", "NAN"), 1);
        runtime.shutdown().await;
    })
    .await;
}

/// Calls of 1 MiB or more have their values checked while the lane copies them (one pass over the
/// rows): the error is the same, at the same row, wherever the batches split the call, and calls
/// batched with it are answered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_values_of_large_calls_are_found_while_copying_into_the_lane() {
    bounded(async {
        let model = forest(3);
        let runtime = Runtime::new(Arc::new(CpuLoader::default()), settings());
        // 16,384 rows per batch: a 50,000-row call spans four batches.
        let function = runtime
            .load(forest_spec("f", 16_384), Some(model.to_vkf_bytes().into()), None)
            .await
            .unwrap();
        let n_rows = 50_000;
        assert!(n_rows * FEATURES * 4 >= 1 << 20, "a large call");
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let clean = random_rows(n_rows, &mut rng);
        for (row, feature, value) in [
            (0, 0, f32::NAN),
            (20_000, 3, f32::INFINITY),
            (49_999, FEATURES - 1, f32::NEG_INFINITY),
        ] {
            let mut rows = clean.clone();
            rows[row * FEATURES + feature] = value;
            // A later non-finite value in the same call does not change which one is reported.
            if row + 1 < n_rows {
                rows[(row + 1) * FEATURES] = f32::NAN;
            }
            let bad = function.call(Call::new(Rows::f32(rows, FEATURES).unwrap(), 0));
            let good = function.call(Call::new(
                Rows::f32(clean[..100 * FEATURES].to_vec(), FEATURES).unwrap(),
                0,
            ));
            let (bad, good) = tokio::join!(bad, good);
            assert_eq!(bad.unwrap_err(), CallError::NonFinite { row, feature });
            let expected = model.predict_cpu(&clean[..100 * FEATURES], 100).unwrap();
            assert_eq!(good.unwrap().output(0).unwrap().as_u32(), expected.labels.as_slice());
        }
        let answer = function
            .call(Call::new(Rows::f32(clean.clone(), FEATURES).unwrap(), 0))
            .await
            .unwrap();
        let expected = model.predict_cpu(&clean, n_rows).unwrap();
        assert_eq!(answer.output(0).unwrap().as_u32(), expected.labels.as_slice());
        assert_eq!(runtime.metrics().error_count("f", "NAN"), 3);
        wait_for(|| function.queued_bytes() == 0, "the failed calls' bytes released").await;
        runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_busy_and_calls_past_their_deadline_never_run() {
    bounded(async {
        let gate = Gate::new();
        let settings = RuntimeSettings {
            lanes_per_function: 1,
            max_queued_bytes: 4 * FEATURES * 4,
            ..settings()
        };
        let runtime = Runtime::new(Arc::new(GatedLoader::cpu(gate.clone())), settings);
        let function = runtime
            .load(forest_spec("f", 64), Some(forest(3).to_vkf_bytes().into()), None)
            .await
            .unwrap();
        let one_row = || Rows::f32(vec![0.25; FEATURES], FEATURES).unwrap();
        gate.close();
        // The first call holds the only lane at the gate.
        let first = tokio::spawn({
            let function = function.clone();
            async move { function.call(Call::new(one_row(), 0)).await }
        });
        wait_for(
            || gate.waiting.load(Ordering::SeqCst) == 1,
            "the first call at the gate",
        )
        .await;
        // A call whose deadline passes while it waits in the queue.
        let late = tokio::spawn({
            let function = function.clone();
            async move {
                let deadline = Instant::now() + Duration::from_millis(20);
                function.call(Call::new(one_row(), 0).with_deadline(deadline)).await
            }
        });
        // Two more fill the queue (four rows' worth of bytes with the two above); the next is BUSY.
        let queued: Vec<_> = (0..2)
            .map(|_| {
                let function = function.clone();
                tokio::spawn(async move { function.call(Call::new(one_row(), 0)).await })
            })
            .collect();
        wait_for(|| function.queued_requests() == 4, "four calls admitted").await;
        let busy = function.call(Call::new(one_row(), 0)).await.unwrap_err();
        assert!(matches!(&busy, CallError::Busy(_)) && busy.is_retryable(), "{busy}");
        let too_large = function
            .call(Call::new(Rows::f32(vec![0.0; 5 * FEATURES], FEATURES).unwrap(), 0))
            .await
            .unwrap_err();
        assert!(matches!(too_large, CallError::TooLarge(_)), "{too_large}");

        tokio::time::sleep(Duration::from_millis(40)).await;
        gate.open();
        assert!(first.await.unwrap().is_ok());
        let late = late.await.unwrap().unwrap_err();
        assert!(matches!(late, CallError::DeadlineExceeded(_)), "{late}");
        for call in queued {
            assert!(call.await.unwrap().is_ok());
        }
        // Three runs: the first call and one batch for the two queued ones at most; the late call none.
        assert!(gate.runs.load(Ordering::SeqCst) <= 3);
        assert_eq!(function.queued_bytes(), 0);
        assert_eq!(runtime.metrics().error_count("f", "BUSY"), 1);
        assert_eq!(runtime.metrics().error_count("f", "DEADLINE_EXCEEDED"), 1);
        runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_loss_fails_the_batch_then_the_function_is_reloaded_behind_the_same_handle() {
    bounded(async {
        let gate = Gate::new();
        gate.lose_device_on_run.store(1, Ordering::SeqCst);
        let runtime = Runtime::new(Arc::new(GatedLoader::cpu(gate.clone())), settings());
        let model = forest(4);
        let function = runtime
            .load(forest_spec("f", 64), Some(model.to_vkf_bytes().into()), None)
            .await
            .unwrap();
        let rows = vec![0.1; 2 * FEATURES];
        let call = || Call::new(Rows::f32(rows.clone(), FEATURES).unwrap(), 0);
        assert!(function.call(call()).await.is_ok());
        let lost = function.call(call()).await.unwrap_err();
        assert!(matches!(lost, CallError::DeviceLost(_)), "{lost}");
        wait_for(
            || gate.resets.load(Ordering::SeqCst) == 1 && gate.loads.load(Ordering::SeqCst) == 2,
            "device reset and reload",
        )
        .await;
        let answer = function.call(call()).await.unwrap();
        let expected = model.predict_cpu(&rows, 2).unwrap();
        assert_eq!(answer.output(0).unwrap().as_u32(), expected.labels.as_slice());
        assert_eq!(runtime.failure("f"), None);
        assert_eq!(runtime.metrics().device_losses.get(), 1);
        wait_for(|| runtime.metrics().live_lanes.get() == 2, "the lost lanes released").await;
        runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_inputs_pass_bit_for_bit_through_a_family_added_by_one_registration() {
    bounded(async {
        let rules = some_rules();
        let loader: Arc<dyn FunctionLoader> = Arc::new(CpuLoader::new(families_with_acl()));
        let runtime = Runtime::new(loader, settings());
        let function = runtime
            .load(acl_spec("acl", 32), Some(rule_bytes(&rules).into()), None)
            .await
            .unwrap();
        assert_eq!(function.info().unwrap(), acl_info(32));
        let values = awkward_rows(100);
        let answer = function
            .call(Call::new(Rows::u32(values.clone(), 2).unwrap(), 0b10))
            .await
            .unwrap();
        let (matches, networks) = (answer.output(0).unwrap().as_i32(), answer.output(1).unwrap().as_u32());
        for (row, flow) in values.chunks(2).enumerate() {
            assert_eq!(
                (matches[row], networks[row]),
                acl_reference(&rules, flow[0], flow[1]),
                "row {row}"
            );
        }
        assert!(matches.contains(&2), "a rule over NaN-patterned addresses matched");
        // Float rows are a shape error for an integer function.
        let error = function
            .call(Call::new(Rows::f32(vec![1.0; 2], 2).unwrap(), 0))
            .await
            .unwrap_err();
        assert!(matches!(error, CallError::Shape(_)), "{error}");
        runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_family_is_a_clear_error_and_a_failed_reload_keeps_the_old_version() {
    bounded(async {
        let runtime = Runtime::new(Arc::new(CpuLoader::default()), settings());
        let error = runtime
            .load(vknf_functions::FunctionSpec::new("x", "quantum", vec![]), None, None)
            .await
            .unwrap_err();
        assert!(
            error
                .0
                .contains("unknown kind \"quantum\" (known kinds: forest, generic)"),
            "{error}"
        );
        // A family that exists but has no CPU implementation.
        let error = runtime
            .load(vknf_functions::FunctionSpec::new("g", "generic", vec![]), None, None)
            .await
            .unwrap_err();
        assert!(error.0.contains("not supported by the cpu loader"), "{error}");

        let model = forest(5);
        let function = runtime
            .load(forest_spec("f", 64), Some(model.to_vkf_bytes().into()), None)
            .await
            .unwrap();
        let broken = runtime
            .load(forest_spec("f", 64), Some(vec![1, 2, 3].into()), None)
            .await
            .unwrap_err();
        assert!(broken.0.contains("invalid model"), "{broken}");
        let rows = vec![0.3; FEATURES];
        let answer = function
            .call(Call::new(Rows::f32(rows.clone(), FEATURES).unwrap(), 0))
            .await
            .unwrap();
        assert_eq!(
            answer.output(0).unwrap().as_u32(),
            model.predict_cpu(&rows, 1).unwrap().labels.as_slice()
        );
        // A hot reload swaps the new version in behind the same handle.
        let other = forest(6);
        let same = runtime
            .load(forest_spec("f", 64), Some(other.to_vkf_bytes().into()), None)
            .await
            .unwrap();
        let probe: Vec<f32> = (0..50 * FEATURES).map(|i| (i as f32 * 0.37).sin()).collect();
        let answer = function
            .call(Call::new(Rows::f32(probe.clone(), FEATURES).unwrap(), 0))
            .await
            .unwrap();
        assert_eq!(
            answer.output(0).unwrap().as_u32(),
            other.predict_cpu(&probe, 50).unwrap().labels.as_slice()
        );
        assert_eq!(same.name(), function.name());
        assert!(runtime.remove("f").await);
        assert!(function.is_closing());
        assert!(!runtime.remove("f").await);
        runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_calls_are_charged_to_the_memory_budget_and_refused_busy_past_it() {
    bounded(async {
        let model = forest(12);
        let gate = Gate::new();
        let call_bytes = 8 * FEATURES * 4;
        let settings = RuntimeSettings {
            lanes_per_function: 1,
            // The function's queue (64 MiB) would take many more: only the budget refuses here.
            memory_budget: 3 * call_bytes,
            ..settings()
        };
        let runtime = Runtime::new(Arc::new(GatedLoader::cpu(gate.clone())), settings);
        let budget = runtime.budget().clone();
        let function = runtime
            .load(forest_spec("f", 8), Some(model.to_vkf_bytes().into()), None)
            .await
            .unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        gate.close();
        let mut admitted = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let (function, rows) = (function.clone(), random_rows(8, &mut rng));
            admitted.spawn(async move {
                let answer = function
                    .call(Call::new(Rows::f32(rows.clone(), FEATURES).unwrap(), 0))
                    .await;
                (rows, answer)
            });
        }
        wait_for(
            || budget.used_by(vknf_runtime::Category::Queued) == 3 * call_bytes,
            "three calls charged",
        )
        .await;
        let refused = function
            .call(Call::new(Rows::f32(random_rows(8, &mut rng), FEATURES).unwrap(), 0))
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, CallError::Busy(m) if m.contains("memory budget")),
            "{refused}"
        );
        assert_eq!(budget.refusals(vknf_runtime::Category::Queued, "budget_full"), 1);
        assert_eq!(function.queued_requests(), 3);

        gate.open();
        while let Some(joined) = admitted.join_next().await {
            let (rows, answer) = joined.unwrap();
            let expected = model.predict_cpu(&rows, 8).unwrap();
            assert_eq!(answer.unwrap().output(0).unwrap().as_u32(), expected.labels.as_slice());
        }
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.peak(), 3 * call_bytes);
        function
            .call(Call::new(Rows::f32(random_rows(8, &mut rng), FEATURES).unwrap(), 0))
            .await
            .expect("room again once the calls are answered");
    })
    .await;
}
