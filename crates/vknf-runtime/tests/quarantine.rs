//! A function whose kernel misses its deadline is quarantined, so that it cannot take its device
//! down again and again: the device is reset once, the other functions answer again, the bad one
//! answers `QUARANTINED` until its back-off ends (doubling with each miss) and is then loaded again.
//! On the GPU loader (lavapipe in CI, validation layer on) with a real kernel that runs past its
//! deadline.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use vknf_functions::families::generic::ABI_PARAM;
use vknf_functions::{FunctionSpec, GpuLoader};
use vknf_runtime::{Call, CallError, DeviceHealth, FunctionHandle, Metrics, Rows, Runtime, RuntimeSettings};
use vknf_testkit::drill::busy_reference;
use vknf_vulkan::DeviceSelector;

const FEATURES: usize = 5;

/// The `busy_rows` kernel as a generic function: each row is a number of generator steps.
fn busy_spec(deadline_ms: u64) -> FunctionSpec {
    let abi = vknf_testkit::drill::busy_abi();
    let mut spec = FunctionSpec::new(
        "busy",
        "generic",
        vknf_kernels::by_name("busy_rows")
            .expect("the busy_rows kernel")
            .to_vec(),
    );
    spec.params.insert(ABI_PARAM.into(), abi.to_json());
    spec.params.insert("deadline-ms".into(), deadline_ms.to_string());
    spec.max_batch_rows = Some(HEAVY_ROWS);
    spec
}

async fn light_call(busy: &FunctionHandle) -> Result<(), CallError> {
    let steps = vec![0u32, 3, 1000];
    let answer = busy.call(Call::new(Rows::u32(steps.clone(), 1).unwrap(), 0)).await?;
    let expected: Vec<u32> = steps
        .iter()
        .enumerate()
        .map(|(row, s)| busy_reference(row as u32, *s))
        .collect();
    assert_eq!(answer.output(0).unwrap().as_u32(), expected.as_slice());
    Ok(())
}

/// Rows of the heavy call, and of a batch.
const HEAVY_ROWS: usize = 1 << 14;

/// A call whose kernel runs for 0.3 to 2 s on lavapipe (2^14 rows of 60,000 steps each, on an idle or
/// a busy 2-core machine): past its 150 ms deadline, and short enough that the other function's
/// batches, which lavapipe queues behind it, stay well within their 10 s deadline.
async fn heavy_call(busy: &FunctionHandle) -> CallError {
    busy.call(Call::new(Rows::u32(vec![60_000; HEAVY_ROWS], 1).unwrap(), 0))
        .await
        .expect_err("the kernel cannot finish within its deadline")
}

async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    for _ in 0..3000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_past_its_deadline_is_quarantined_and_the_other_functions_serve_again() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let loader = Arc::new(GpuLoader::new(true, DeviceSelector::from_env().unwrap()).expect("a Vulkan device"));
        let settings = RuntimeSettings {
            lanes_per_function: 2,
            drain_timeout: Duration::from_secs(20),
            quarantine_backoff: Duration::from_secs(3),
            ..RuntimeSettings::default()
        };
        let runtime = Runtime::new(loader.clone(), settings);
        let model = vknf_testkit::synthetic::random_classifier(FEATURES, 3, 8, 6, 5);
        let good = runtime
            .load(forest_spec("good", 64), Some(model.to_vkf_bytes().into()), None)
            .await
            .unwrap();
        let busy = runtime.load(busy_spec(150), None, None).await.unwrap();
        let rows: Vec<f32> = (0..4 * FEATURES).map(|i| (i as f32 * 0.37).sin()).collect();
        let expected = model.predict_cpu(&rows, 4).unwrap();
        let good_call = || async {
            let answer = good
                .call(Call::new(Rows::f32(rows.clone(), FEATURES).unwrap(), 0))
                .await?;
            assert_eq!(answer.output(0).unwrap().as_u32(), expected.labels.as_slice());
            Ok::<(), CallError>(())
        };
        good_call().await.unwrap();
        light_call(&busy).await.unwrap();
        let quarantines = || {
            runtime
                .metrics()
                .quarantines
                .get_or_create(&vknf_runtime::FunctionLabels {
                    function: "busy".into(),
                })
                .get()
        };
        let mut threads_after_first = 0;
        for strike in 1..=2u64 {
            let error = heavy_call(&busy).await;
            assert!(
                matches!(&error, CallError::DeviceLost(m) if m.contains("deadline")),
                "{error}"
            );
            // The device is reset once; the forest answers again.
            wait_for(
                || runtime.devices()[0].health == DeviceHealth::Serving && runtime.devices()[0].resets == strike,
                "the device reset",
            )
            .await;
            good_call().await.unwrap();
            assert_eq!(quarantines(), strike);
            let quarantined = light_call(&busy).await.unwrap_err();
            assert!(matches!(quarantined, CallError::Quarantined(_)), "{quarantined}");
            let seconds = 3 << (strike - 1);
            assert!(
                quarantined
                    .to_string()
                    .contains(&format!("quarantined for {seconds} s")),
                "the back-off doubles with each miss: {quarantined}"
            );
            assert!(runtime.failure("busy").is_some_and(|f| f.contains("quarantined")));
            assert_eq!(runtime.failure("good"), None);
            // Quarantined, it cannot take the device down again: no further resets while the forest serves.
            for _ in 0..20 {
                good_call().await.unwrap();
                assert!(matches!(
                    light_call(&busy).await,
                    Err(CallError::Quarantined(_)) | Ok(())
                ));
            }
            assert_eq!(runtime.devices()[0].resets, strike);
            assert_eq!(runtime.metrics().device_losses.get(), strike);
            // Then its back-off ends and it is loaded again.
            wait_for(|| busy.quarantined().is_none(), "the quarantine lifted").await;
            light_call(&busy).await.unwrap();
            assert_eq!(runtime.failure("busy"), None);
            // The lost device's threads end once its last kernel has (lavapipe runs it to the end).
            if strike == 1 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                threads_after_first = threads();
            } else {
                wait_for(
                    || threads() <= threads_after_first + 2,
                    "no thread growth across resets",
                )
                .await;
            }
        }
        assert_eq!(
            runtime
                .metrics()
                .device_lanes
                .get_or_create(&Metrics::device_labels(0))
                .get(),
            4,
            "two lanes each for the two functions, none leaked"
        );
        runtime.shutdown().await;
        let errors = loader.instance().take_validation_errors();
        assert!(errors.is_empty(), "{errors:#?}");
    })
    .await
    .expect("test finished within 240 s");
}
