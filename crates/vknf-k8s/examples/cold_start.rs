//! Measures the agent's cold start: from a function Service's watch event to its port answering,
//! split into watch delay, model fetch, validation, load and probe. An in-process fake API
//! server and one agent on 127.0.0.2, with vknf-server's CPU loader or, with `--gpu`, the GPU
//! loader on the device `VKNF_DEVICE` selects (its load phase adds SPIR-V pipeline creation and
//! the model upload).
//!
//! `cargo run --release -p vknf-k8s --example cold_start -- [--gpu] [--json PATH] [ITERATIONS] [TREES] [DEPTH]`
//! (defaults: 20 iterations of a 64-tree, depth-8 forest).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Service;
use vknf_functions::CpuLoader;
use vknf_functions::FunctionLoader;
use vknf_functions::GpuLoader;
use vknf_k8s::{ColdStart, FunctionPhase, keys};

const USAGE: &str = "usage: cold_start [--gpu] [--json PATH] [ITERATIONS] [TREES] [DEPTH]";

/// What to measure.
struct Options {
    gpu: bool,
    json: Option<PathBuf>,
    iterations: usize,
    trees: usize,
    depth: u32,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        gpu: false,
        json: None,
        iterations: 20,
        trees: 64,
        depth: 8,
    };
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--gpu" => options.gpu = true,
            "--json" => options.json = Some(args.next().ok_or("--json needs a PATH")?.into()),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}\n{USAGE}")),
            number => positional.push(
                number
                    .parse::<usize>()
                    .map_err(|_| format!("{number:?} is not a count\n{USAGE}"))?,
            ),
        }
    }
    match positional[..] {
        [] => {}
        [iterations] => options.iterations = iterations,
        [iterations, trees] => (options.iterations, options.trees) = (iterations, trees),
        [iterations, trees, depth] => {
            let depth = u32::try_from(depth).map_err(|_| format!("depth {depth} is too large"))?;
            (options.iterations, options.trees, options.depth) = (iterations, trees, depth);
        }
        _ => return Err(format!("too many arguments\n{USAGE}")),
    }
    options.iterations = options.iterations.max(1);
    Ok(options)
}

/// Reads one phase of a cold start.
type Phase = fn(&ColdStart) -> Duration;

const PHASES: [(&str, Phase); 6] = [
    ("watch_delay", |c| c.watch_delay),
    ("model_fetch", |c| c.model_fetch),
    ("validation", |c| c.validation),
    ("load", |c| c.load),
    ("probe", |c| c.probe),
    ("total", |c| c.total),
];

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort();
    values[((values.len() - 1) as f64 * p).round() as usize]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = parse_options()?;
    let (loader, device): (Arc<dyn FunctionLoader>, String) = if options.gpu {
        let loader = GpuLoader::new(false, vknf_vulkan::DeviceSelector::from_env()?)?;
        let device = loader.device().info().name.clone();
        (Arc::new(loader), device)
    } else {
        (Arc::new(CpuLoader::default()), "CPU reference predictor".to_owned())
    };
    let fake = cluster().await;
    let agent = start_agent_with_loader(&fake, &GPU_A, loader);
    let model = forest(42, options.trees, options.depth);
    let model_bytes = model.to_vkf_bytes().len();
    println!(
        "model: {} trees of depth {}, {model_bytes} bytes; loader: {device}",
        options.trees, options.depth
    );
    for i in 0..options.iterations {
        let name = format!("cold-{i}");
        let port = free_port();
        let (mut service, configmaps) = function(&name, port, &model, "v1");
        annotate(&mut service, keys::HOST_NAMES, GPU_A.name);
        apply(&fake, &service, &configmaps);
        wait_for("serving", || {
            phase(&fake, &name, &GPU_A) == Some(FunctionPhase::Serving)
        })
        .await;
        fake.remove::<Service>(NAMESPACE, &name)?;
        wait_for("removed", || agent.status().functions.is_empty()).await;
    }
    let samples = agent.cold_starts();
    agent.shutdown().await;

    let load_label = if options.gpu {
        "load (GPU pipeline creation + upload)"
    } else {
        "load (CPU loader)"
    };
    println!("{} cold starts", samples.len());
    println!("{:<38} {:>10} {:>10} {:>10}", "phase", "median ms", "p90 ms", "max ms");
    let mut summary = serde_json::Map::new();
    for (phase, get) in PHASES {
        let mut values: Vec<Duration> = samples.iter().map(get).collect();
        let (median, p90, max) = (
            percentile(&mut values, 0.5),
            percentile(&mut values, 0.9),
            percentile(&mut values, 1.0),
        );
        let label = if phase == "load" { load_label } else { phase };
        println!(
            "{label:<38} {:>10.3} {:>10.3} {:>10.3}",
            millis(median),
            millis(p90),
            millis(max)
        );
        summary.insert(
            phase.to_owned(),
            serde_json::json!({ "median_ms": millis(median), "p90_ms": millis(p90), "max_ms": millis(max) }),
        );
    }
    if let Some(path) = options.json {
        let report = serde_json::json!({
            "loader": if options.gpu { "gpu" } else { "cpu" },
            "device": device,
            "iterations": options.iterations,
            "samples": samples.len(),
            "trees": options.trees,
            "depth": options.depth,
            "model_bytes": model_bytes,
            "phases": summary,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
