//! What the OIP tests share: a small forest served by a gated CPU runtime behind an OIP port.

#![allow(dead_code)]

use std::sync::Arc;

use vknf_oip::{OipConfig, OipServer};
use vknf_runtime::{Call, FunctionSpec, Rows, Runtime, RuntimeSettings};
use vknf_testkit::gate::{Gate, GatedLoader};

pub const FEATURES: usize = 4;
pub const CLASSES: usize = 3;
pub const FUNCTION: &str = "default/forest";

/// The forest `FUNCTION` (`FEATURES` features, `CLASSES` classes) loaded into a runtime over the CPU
/// loader behind `gate`, with batches of at most `max_batch_rows`, and an OIP port on loopback.
pub async fn serve_forest(
    gate: Arc<Gate>,
    settings: RuntimeSettings,
    config: OipConfig,
    max_batch_rows: Option<usize>,
) -> (Runtime, OipServer) {
    let runtime = Runtime::new(Arc::new(GatedLoader::cpu(gate)), settings);
    let forest = vknf_testkit::synthetic::random_classifier(FEATURES, CLASSES, 5, 3, 11);
    let spec = FunctionSpec {
        max_batch_rows,
        ..FunctionSpec::new(
            FUNCTION,
            "forest",
            vknf_kernels::by_name("forest").expect("the forest kernel").to_vec(),
        )
    };
    runtime
        .load(spec, Some(forest.to_vkf_bytes().into()), None)
        .await
        .expect("the forest loads");
    let server = OipServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        runtime.clone(),
        Arc::new(|| true),
        config,
    )
    .await
    .expect("the port opens");
    (runtime, server)
}

/// `n` rows of `FEATURES` values in [-1, 1), different for each `seed`.
pub fn rows(n: usize, seed: usize) -> Vec<f32> {
    (0..n * FEATURES)
        .map(|i| (((i + seed) * 7919) % 200) as f32 / 100.0 - 1.0)
        .collect()
}

/// Labels and scores of `data` through the runtime in process: what every front end must answer.
pub async fn in_process(runtime: &Runtime, data: Vec<f32>) -> (Vec<u32>, Vec<f32>) {
    let function = runtime.get(FUNCTION).await.unwrap();
    let answer = function
        .call(Call::new(Rows::f32(data, FEATURES).unwrap(), 0b11))
        .await
        .unwrap();
    (
        answer.output(0).unwrap().as_u32().to_vec(),
        answer.output(1).unwrap().as_f32().to_vec(),
    )
}
