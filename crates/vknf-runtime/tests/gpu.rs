//! The in-process API on the GPU loader (lavapipe in CI, validation layer on): integer inputs reach a
//! generic kernel bit for bit, and a forest answers like the CPU reference.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use vknf_functions::{DType, GpuLoader};
use vknf_runtime::{Call, CallError, Rows, Runtime, RuntimeSettings};
use vknf_vulkan::DeviceSelector;

/// The GPU loader (validation layer on) and a runtime over it with two lanes per function.
fn gpu_runtime() -> (Arc<GpuLoader>, Runtime) {
    let loader = Arc::new(GpuLoader::new(true, DeviceSelector::from_env().unwrap()).expect("a Vulkan device"));
    let settings = RuntimeSettings {
        lanes_per_function: 2,
        drain_timeout: Duration::from_secs(20),
        ..RuntimeSettings::default()
    };
    let runtime = Runtime::new(loader.clone(), settings);
    (loader, runtime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_rows_reach_a_generic_kernel_bit_for_bit_and_forests_match_the_cpu() {
    let (loader, runtime) = gpu_runtime();
    let rules = some_rules();
    let spec = acl_gpu_spec("default/acl", rules.len());
    let acl = runtime.load(spec, Some(rule_bytes(&rules).into()), None).await.unwrap();
    assert_eq!(acl.info().unwrap().input.dtype, DType::U32);

    // 150 rows: three batches, the awkward values included (NaN and infinity patterns as f32).
    let values = awkward_rows(150);
    for outputs in [0, 0b10] {
        let answer = acl
            .call(Call::new(Rows::u32(values.clone(), 2).unwrap(), outputs))
            .await
            .unwrap();
        let matches = answer.output(0).unwrap().as_i32();
        for (row, flow) in values.chunks(2).enumerate() {
            let (rule, network) = acl_reference(&rules, flow[0], flow[1]);
            assert_eq!(matches[row], rule, "row {row}");
            if outputs != 0 {
                assert_eq!(answer.output(1).unwrap().as_u32()[row], network, "row {row}");
            }
        }
        assert_eq!(answer.output(1).is_some(), outputs != 0);
    }
    let error = acl
        .call(Call::new(Rows::i32(vec![1, 2], 2).unwrap(), 0))
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::Shape(_)), "{error}");

    let forest = vknf_testkit::synthetic::random_classifier(9, 5, 16, 7, 3);
    let classifier = runtime
        .load(
            forest_spec("default/forest", 128),
            Some(forest.to_vkf_bytes().into()),
            None,
        )
        .await
        .unwrap();
    let rows: Vec<f32> = (0..300 * 9).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let answer = classifier
        .call(Call::new(Rows::f32(rows.clone(), 9).unwrap(), 0b10))
        .await
        .unwrap();
    let expected = forest.predict_cpu(&rows, 300).unwrap();
    assert_eq!(answer.output(0).unwrap().as_u32(), expected.labels.as_slice());
    for (got, want) in answer.output(1).unwrap().as_f32().iter().zip(&expected.scores) {
        assert!((got - want).abs() <= 1e-5, "{got} vs {want}");
    }
    runtime.shutdown().await;
    assert!(loader.instance().take_validation_errors().is_empty());
}

/// Large calls on a GPU lane are copied into its device-read memory with streaming stores and have
/// their values checked during that copy: a NaN or an infinity is reported at its row and feature
/// wherever the batches split the call, and clean rows give the CPU reference's labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_calls_reach_a_gpu_lane_whole_and_their_non_finite_values_are_found() {
    const FEATURES: usize = 9;
    let (loader, runtime) = gpu_runtime();
    let forest = vknf_testkit::synthetic::random_classifier(FEATURES, 4, 12, 6, 11);
    let function = runtime
        .load(
            forest_spec("default/big", 16_384),
            Some(forest.to_vkf_bytes().into()),
            None,
        )
        .await
        .unwrap();
    let n_rows = 40_000;
    assert!(
        n_rows * FEATURES * 4 >= 1 << 20,
        "a call large enough to be checked while copied"
    );
    let clean: Vec<f32> = (0..n_rows * FEATURES)
        .map(|i| ((i * 7919) % 2003) as f32 / 1000.0 - 1.0)
        .collect();
    for (row, feature, value) in [(20_000, 3, f32::NAN), (n_rows - 1, FEATURES - 1, f32::INFINITY)] {
        let mut rows = clean.clone();
        rows[row * FEATURES + feature] = value;
        let error = function
            .call(Call::new(Rows::f32(rows, FEATURES).unwrap(), 0))
            .await
            .unwrap_err();
        assert_eq!(error, CallError::NonFinite { row, feature });
    }
    let answer = function
        .call(Call::new(Rows::f32(clean.clone(), FEATURES).unwrap(), 0))
        .await
        .unwrap();
    let expected = forest.predict_cpu(&clean, n_rows).unwrap();
    assert_eq!(answer.output(0).unwrap().as_u32(), expected.labels.as_slice());
    runtime.shutdown().await;
    let errors = loader.instance().take_validation_errors();
    assert!(errors.is_empty(), "validation errors: {errors:#?}");
}
