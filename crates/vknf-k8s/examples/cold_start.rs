//! Measures the agent's cold start: from a function Service's watch event to its port answering,
//! split into watch delay, model fetch, validation, load and probe. An in-process fake API
//! server and one agent on 127.0.0.2 with vknf-server's CPU loader (the GPU loader adds SPIR-V
//! validation, pipeline creation and model upload to the load phase; see docs/kubernetes.md for
//! the agent's metrics on a GPU host).
//!
//! `cargo run --release -p vknf-k8s --example cold_start -- [ITERATIONS] [TREES] [DEPTH]`
//! (defaults: 20 iterations of a 64-tree, depth-8 forest).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Service;
use vknf_k8s::{ColdStart, FunctionPhase, keys};
use vknf_k8s_fake::FakeApiServer;

fn arg(index: usize, default: usize) -> usize {
    std::env::args()
        .nth(index)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Reads one phase of a cold start.
type Phase = fn(&ColdStart) -> Duration;

fn percentile(mut values: Vec<Duration>, p: f64) -> Duration {
    values.sort();
    values[((values.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (iterations, trees, depth) = (arg(1, 20).max(1), arg(2, 64), arg(3, 8) as u32);
    let fake = FakeApiServer::start().await.expect("fake API server");
    let agent = start_agent(&fake, &GPU_A);
    let model = forest(42, trees, depth);
    println!(
        "model: {trees} trees of depth {depth}, {} bytes",
        model.to_vkf_bytes().len()
    );
    for i in 0..iterations {
        let name = format!("cold-{i}");
        let port = free_port();
        let (mut service, configmaps) = function(&name, port, &model, "v1");
        annotate(&mut service, keys::HOST_NAMES, GPU_A.name);
        apply(&fake, &service, &configmaps);
        wait_for("serving", || {
            phase(&fake, &name, &GPU_A) == Some(FunctionPhase::Serving)
        })
        .await;
        fake.remove::<Service>(NAMESPACE, &name).expect("delete");
        wait_for("removed", || agent.status().functions.is_empty()).await;
    }
    let samples = agent.cold_starts();
    let phases: [(&str, Phase); 6] = [
        ("watch delay", |c| c.watch_delay),
        ("model fetch", |c| c.model_fetch),
        ("validation", |c| c.validation),
        ("load", |c| c.load),
        ("probe", |c| c.probe),
        ("total", |c| c.total),
    ];
    println!("{} cold starts (CPU loader)", samples.len());
    println!("{:<12} {:>12} {:>12} {:>12}", "phase", "median", "p90", "max");
    for (phase, get) in phases {
        let values: Vec<Duration> = samples.iter().map(get).collect();
        println!(
            "{phase:<12} {:>12.3?} {:>12.3?} {:>12.3?}",
            percentile(values.clone(), 0.5),
            percentile(values.clone(), 0.9),
            percentile(values, 1.0)
        );
    }
    agent.shutdown().await;
}
