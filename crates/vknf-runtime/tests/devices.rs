//! Several devices behind one runtime: a function's batches spread over all of them, and a lost
//! device is reset and reloaded on its own while the others keep answering. On gated CPU devices
//! (deterministic) and on two logical Vulkan devices (lavapipe in CI, validation layer on).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use vknf_forest::GpuForest;
use vknf_functions::{FunctionLoader, GpuLoader};
use vknf_runtime::{Call, CallError, DeviceHealth, FunctionHandle, Metrics, Rows, Runtime, RuntimeSettings};
use vknf_testkit::gate::{Gate, GatedLoader};
use vknf_vulkan::{DeviceSelection, DeviceSelector};

const FEATURES: usize = 6;
const LANES: usize = 2;

fn forest(seed: u64) -> GpuForest {
    vknf_testkit::synthetic::random_classifier(FEATURES, 4, 12, 6, seed)
}

fn settings() -> RuntimeSettings {
    RuntimeSettings {
        lanes_per_function: LANES,
        default_max_wait: Duration::from_micros(200),
        drain_timeout: Duration::from_secs(20),
        ..RuntimeSettings::default()
    }
}

async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(120), body)
        .await
        .expect("test finished within 120 s");
}

async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    for _ in 0..2000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn rows(seed: usize, n_rows: usize) -> Vec<f32> {
    (0..n_rows * FEATURES)
        .map(|i| (((i + seed) * 7919) % 1000) as f32 / 400.0 - 1.2)
        .collect()
}

fn lanes_on(runtime: &Runtime, device: usize) -> i64 {
    runtime
        .metrics()
        .device_lanes
        .get_or_create(&Metrics::device_labels(device))
        .get()
}

fn batches_on(runtime: &Runtime, device: usize) -> u64 {
    runtime
        .metrics()
        .device_batches
        .get_or_create(&Metrics::device_labels(device))
        .get()
}

/// Rows per batch of the functions here: a call of this many rows fills a lane on its own.
const BATCH_ROWS: usize = 64;

/// Calls `function` once and checks the answer against the CPU reference; the error if it failed.
async fn checked_call(function: &FunctionHandle, model: &GpuForest, seed: usize) -> Result<(), CallError> {
    rows_call(function, model, seed, 3).await
}

async fn rows_call(function: &FunctionHandle, model: &GpuForest, seed: usize, n_rows: usize) -> Result<(), CallError> {
    let values = rows(seed, n_rows);
    let answer = function
        .call(Call::new(Rows::f32(values.clone(), FEATURES).unwrap(), 0))
        .await?;
    let expected = model.predict_cpu(&values, n_rows).unwrap();
    assert_eq!(
        answer.output(0).unwrap().as_u32(),
        expected.labels.as_slice(),
        "call {seed}"
    );
    Ok(())
}

/// Holds the gate while `calls` calls of a whole batch each are made at once, waits until `lanes`
/// lanes hold them, then lets them through and checks every answer: proves that `lanes` lanes (and so
/// their devices) serve.
async fn fill_lanes(gate: &Gate, function: &FunctionHandle, model: &GpuForest, calls: usize, lanes: usize) {
    gate.close();
    let mut tasks = tokio::task::JoinSet::new();
    for seed in 0..calls {
        let (function, model) = (function.clone(), model.clone());
        tasks.spawn(async move { rows_call(&function, &model, seed, BATCH_ROWS).await });
    }
    wait_for(
        || gate.waiting.load(Ordering::SeqCst) == lanes,
        "lanes held at the gate",
    )
    .await;
    gate.open();
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_device_recovers_on_its_own_while_the_others_keep_answering() {
    bounded(async {
        let gate = Gate::new();
        let runtime = Runtime::new(Arc::new(GatedLoader::cpu_devices(gate.clone(), 2)), settings());
        let model = forest(7);
        let function = runtime
            .load(forest_spec("f", BATCH_ROWS), Some(model.to_vkf_bytes().into()), None)
            .await
            .unwrap();
        assert_eq!(gate.loads.load(Ordering::SeqCst), 2, "loaded once per device");
        let devices = runtime.devices();
        assert_eq!(devices.len(), 2);
        assert!(devices.iter().all(|d| d.health == DeviceHealth::Serving));
        assert_eq!(
            (lanes_on(&runtime, 0), lanes_on(&runtime, 1)),
            (LANES as i64, LANES as i64)
        );

        // Four calls at once occupy the lanes of both devices.
        fill_lanes(&gate, &function, &model, 2 * LANES, 2 * LANES).await;
        assert!(batches_on(&runtime, 0) >= 1 && batches_on(&runtime, 1) >= 1);

        // Device 1 is lost and does not come back for now: of calls spread over every lane, at most
        // the batches on device 1's lanes fail; then device 0 answers everything.
        gate.refuse_resets.store(true, Ordering::SeqCst);
        gate.lose_device(1);
        gate.close();
        let mut calls = tokio::task::JoinSet::new();
        for seed in 0..2 * LANES {
            let (function, model) = (function.clone(), model.clone());
            calls.spawn(async move { rows_call(&function, &model, seed, BATCH_ROWS).await });
        }
        wait_for(|| gate.waiting.load(Ordering::SeqCst) == 2 * LANES, "every lane busy").await;
        gate.open();
        let mut failed = 0;
        while let Some(result) = calls.join_next().await {
            match result.unwrap() {
                Ok(()) => {}
                Err(CallError::DeviceLost(_)) => failed += 1,
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        assert_eq!(
            failed, LANES,
            "the batches on device 1 fail, those on device 0 are answered"
        );
        for seed in 0..40 {
            checked_call(&function, &model, seed).await.unwrap();
        }
        wait_for(
            || matches!(runtime.devices()[1].health, DeviceHealth::Failed(_)),
            "device 1 reported as failing to reset",
        )
        .await;
        assert_eq!(runtime.devices()[0].health, DeviceHealth::Serving);
        assert_eq!(runtime.metrics().device_losses.get(), 1);
        let up = |device| {
            runtime
                .metrics()
                .device_up
                .get_or_create(&Metrics::device_labels(device))
                .get()
        };
        assert_eq!((up(0), up(1)), (1, 0));
        wait_for(|| lanes_on(&runtime, 1) == 0, "device 1's lanes released").await;
        // Only device 0's two lanes take calls now.
        fill_lanes(&gate, &function, &model, 2 * LANES, LANES).await;

        // A function loaded meanwhile goes to the serving device only, and to device 1 once it is back.
        let second = forest(8);
        let other = runtime
            .load(forest_spec("g", BATCH_ROWS), Some(second.to_vkf_bytes().into()), None)
            .await
            .unwrap();
        assert_eq!(gate.loads.load(Ordering::SeqCst), 3);
        checked_call(&other, &second, 1).await.unwrap();

        gate.refuse_resets.store(false, Ordering::SeqCst);
        wait_for(
            || runtime.devices()[1].health == DeviceHealth::Serving,
            "device 1 recovered",
        )
        .await;
        assert_eq!(gate.resets_by_device[1].load(Ordering::SeqCst), 1);
        assert_eq!(
            gate.resets_by_device[0].load(Ordering::SeqCst),
            0,
            "device 0 was never reset"
        );
        assert_eq!(runtime.devices()[1].resets, 1);
        assert_eq!(up(1), 1);
        wait_for(
            || lanes_on(&runtime, 1) == 2 * LANES as i64,
            "both functions' lanes on device 1",
        )
        .await;
        assert_eq!(lanes_on(&runtime, 0), 2 * LANES as i64, "device 0's lanes untouched");
        assert_eq!(runtime.failure("f"), None);
        fill_lanes(&gate, &function, &model, 2 * LANES, 2 * LANES).await;
        fill_lanes(&gate, &other, &second, 2 * LANES, 2 * LANES).await;

        runtime.shutdown().await;
        assert_eq!(runtime.metrics().live_lanes.get(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_device_lost_calls_get_device_lost_until_one_is_back() {
    bounded(async {
        let gate = Gate::new();
        let runtime = Runtime::new(Arc::new(GatedLoader::cpu_devices(gate.clone(), 2)), settings());
        let model = forest(9);
        let function = runtime
            .load(forest_spec("f", BATCH_ROWS), Some(model.to_vkf_bytes().into()), None)
            .await
            .unwrap();
        gate.refuse_resets.store(true, Ordering::SeqCst);
        gate.lose_device(0);
        gate.lose_device(1);
        for seed in 0..6 {
            let _ = checked_call(&function, &model, seed).await;
        }
        wait_for(
            || {
                runtime
                    .devices()
                    .iter()
                    .all(|d| matches!(d.health, DeviceHealth::Failed(_)))
            },
            "both devices failing",
        )
        .await;
        wait_for(|| runtime.metrics().live_lanes.get() == 0, "every lane released").await;
        let error = checked_call(&function, &model, 1).await.unwrap_err();
        assert!(matches!(error, CallError::DeviceLost(_)), "{error}");
        let load = runtime
            .load(forest_spec("g", BATCH_ROWS), Some(model.to_vkf_bytes().into()), None)
            .await
            .unwrap_err();
        assert!(load.0.contains("no device is serving"), "{load}");

        gate.refuse_resets.store(false, Ordering::SeqCst);
        wait_for(
            || runtime.devices().iter().all(|d| d.health == DeviceHealth::Serving),
            "both devices recovered",
        )
        .await;
        checked_call(&function, &model, 2).await.unwrap();
        fill_lanes(&gate, &function, &model, 2 * LANES, 2 * LANES).await;
        runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vulkan_devices_serve_one_function_and_survive_the_loss_of_one() {
    bounded(async {
        let selector = DeviceSelector::from_env().unwrap();
        let selection = DeviceSelection::Each(vec![selector.clone(), selector]);
        let gpu = Arc::new(
            GpuLoader::open(true, &selection, vknf_functions::Families::builtin()).expect("two logical devices"),
        );
        assert_eq!(gpu.devices().len(), 2);
        let gate = Gate::new();
        let runtime = Runtime::new(Arc::new(GatedLoader::over(gate.clone(), gpu.clone())), settings());
        let model = forest(11);
        let function = runtime
            .load(forest_spec("f", BATCH_ROWS), Some(model.to_vkf_bytes().into()), None)
            .await
            .unwrap();
        fill_lanes(&gate, &function, &model, 2 * LANES, 2 * LANES).await;
        assert!(batches_on(&runtime, 0) >= 1 && batches_on(&runtime, 1) >= 1);

        // Callers keep calling while device 1 is declared lost under them.
        let mut callers = tokio::task::JoinSet::new();
        for caller in 0..3 {
            let (function, model) = (function.clone(), model.clone());
            callers.spawn(async move {
                let (mut answered, mut lost) = (0, 0);
                for seed in 0..150 {
                    match checked_call(&function, &model, caller * 1000 + seed).await {
                        Ok(()) => answered += 1,
                        Err(CallError::DeviceLost(_)) => lost += 1,
                        Err(other) => panic!("unexpected error: {other}"),
                    }
                }
                (answered, lost)
            });
        }
        wait_for(
            || batches_on(&runtime, 0) + batches_on(&runtime, 1) > 60,
            "load running",
        )
        .await;
        gpu.device_at(1).declare_lost("the test");
        let (mut answered, mut lost) = (0, 0);
        while let Some(result) = callers.join_next().await {
            let (a, l) = result.unwrap();
            answered += a;
            lost += l;
        }
        assert_eq!(answered + lost, 450);
        assert!(
            lost <= 3 * LANES,
            "{lost} calls lost: at most the batches in flight on device 1"
        );
        wait_for(
            || runtime.devices()[1].health == DeviceHealth::Serving && runtime.devices()[1].resets == 1,
            "device 1 reset",
        )
        .await;
        assert_eq!(runtime.devices()[0].resets, 0);
        assert!(
            !gpu.device_at(1).is_lost(),
            "a fresh logical device replaced the lost one"
        );
        let before = batches_on(&runtime, 1);
        fill_lanes(&gate, &function, &model, 2 * LANES, 2 * LANES).await;
        assert!(batches_on(&runtime, 1) > before, "device 1 serves again");
        runtime.shutdown().await;
        assert!(gpu.instance().take_validation_errors().is_empty());
    })
    .await;
}
