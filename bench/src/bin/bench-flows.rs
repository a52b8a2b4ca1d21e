//! The traffic path through the GPU in process, as `vknf classify --model` runs it: flows of a
//! capture (read once, replayed `--repeat` times), their feature rows by the model's schema, and
//! the forest through the function runtime (`FunctionHandle::call_blocking`, GPU loader), for
//! several flows per call. Reports flows per second of each stage; labels are checked against the
//! CPU reference. Not a test: run it by hand or on the GPU machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use serde::Serialize;
use vknf_flow::{FeatureSchema, FlowConfig, read_flows};
use vknf_forest::{GpuForest, ImportOptions};
use vknf_functions::{CpuLoader, FunctionLoader, FunctionSpec, GpuLoader};
use vknf_runtime::{Answer, Call, Rows, Runtime, RuntimeSettings};

#[derive(Parser, Debug)]
#[command(about = "Flows per second from a capture to labels, through the GPU in process")]
struct Args {
    /// A capture (pcap or pcapng) of TLS traffic.
    #[arg(long)]
    pcap: PathBuf,
    /// The traffic model (`.onnx` from python/train_traffic.py or `.vkf` from `vknf compile-model`).
    #[arg(long)]
    model: PathBuf,
    /// Its feature schema.
    #[arg(long)]
    schema: PathBuf,
    /// Times the capture's flows are replayed, for a workload of a useful size.
    #[arg(long, default_value_t = 1000)]
    repeat: usize,
    /// Flows per call.
    #[arg(long, value_delimiter = ',', default_value = "64,256,1024,4096")]
    batch_flows: Vec<usize>,
    /// The CPU loader instead of the GPU.
    #[arg(long)]
    cpu: bool,
    /// Device (index, UUID or part of its name; default: `VKNF_DEVICE` or the best one).
    #[arg(long)]
    device: Option<String>,
    /// Writes the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Results {
    loader: &'static str,
    capture_flows: usize,
    flows: usize,
    features: usize,
    read_flows_per_s: f64,
    features_flows_per_s: f64,
    classify: Vec<BatchResult>,
}

#[derive(Serialize)]
struct BatchResult {
    batch_flows: usize,
    flows_per_s: f64,
}

fn load_model(args: &Args, schema: &FeatureSchema) -> anyhow::Result<GpuForest> {
    let bytes = std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let (forest, digest) = if bytes.starts_with(&vknf_forest::VKF_MAGIC) {
        let (forest, metadata) = GpuForest::from_vkf_bytes_with_metadata(&bytes)?;
        (forest, metadata.get("vknf.schema_digest").cloned())
    } else {
        let forest = vknf_forest::import_onnx_bytes(&bytes, &ImportOptions::default(), &mut |_| {})?.compile()?;
        (forest, vknf_forest::onnx_metadata(&bytes)?.remove("vknf.schema_digest"))
    };
    schema.check_model_digest(&digest.context("the model carries no schema digest")?)?;
    Ok(forest)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let schema = FeatureSchema::load(&args.schema)?;
    let forest = load_model(&args, &schema)?;
    let width = schema.len();

    let started = Instant::now();
    let (flows, _, error) = read_flows(&args.pcap, FlowConfig::default())?;
    let read_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(error.is_none(), "reading {}: {error:?}", args.pcap.display());
    anyhow::ensure!(!flows.is_empty(), "{} has no flow", args.pcap.display());

    let n = flows.len() * args.repeat.max(1);
    let started = Instant::now();
    let mut rows = Vec::with_capacity(n * width);
    for flow in flows.iter().cycle().take(n) {
        rows.extend(schema.row(&flow.records));
    }
    let features_s = started.elapsed().as_secs_f64();
    let reference = forest.predict_cpu(&rows, n)?;

    let loader: Arc<dyn FunctionLoader> = if args.cpu {
        Arc::new(CpuLoader::default())
    } else {
        let selector = match &args.device {
            Some(text) => text.parse()?,
            None => vknf_vulkan::DeviceSelector::from_env()?,
        };
        let gpu = GpuLoader::new(false, selector)?;
        println!("device: {}", gpu.device().info().name);
        Arc::new(gpu)
    };
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let spirv = vknf_kernels::by_name("forest").context("the forest kernel")?.to_vec();
    let max_batch = args.batch_flows.iter().copied().max().unwrap_or(256).max(1);
    let spec = FunctionSpec {
        max_batch_rows: Some(max_batch),
        ..FunctionSpec::new("traffic", "forest", spirv)
    };
    let model: Arc<[u8]> = forest.to_vkf_bytes().into();
    let runtime = tokio.block_on(async { Runtime::new(loader.clone(), RuntimeSettings::default()) });
    let function = tokio.block_on(runtime.load(spec, Some(model), None))?;

    let mut classify = Vec::new();
    for &batch in &args.batch_flows {
        let batch = batch.max(1);
        let mut answer = Answer::default();
        let mut labels = Vec::with_capacity(n);
        let started = Instant::now();
        for chunk in rows.chunks(batch * width) {
            let call = Call::new(Rows::f32(chunk.to_vec(), width)?, 0b10);
            answer = function.call_blocking_reusing(call, answer)?;
            labels.extend_from_slice(answer.output(0).context("labels")?.as_u32());
        }
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            labels == reference.labels,
            "labels differ from the CPU reference at batch {batch}"
        );
        classify.push(BatchResult {
            batch_flows: batch,
            flows_per_s: n as f64 / seconds,
        });
    }

    let results = Results {
        loader: loader.name(),
        capture_flows: flows.len(),
        flows: n,
        features: width,
        read_flows_per_s: flows.len() as f64 / read_s,
        features_flows_per_s: n as f64 / features_s,
        classify,
    };
    println!(
        "{} flows ({} from the capture x {}), {} features; loader {}",
        results.flows, results.capture_flows, args.repeat, width, results.loader
    );
    println!("read capture to flows: {:>12.0} flows/s", results.read_flows_per_s);
    println!("feature rows:          {:>12.0} flows/s", results.features_flows_per_s);
    for r in &results.classify {
        println!(
            "classify, {:>5} flows/call: {:>12.0} flows/s",
            r.batch_flows, r.flows_per_s
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    // Lanes hold device memory: release them before the device goes.
    tokio.block_on(runtime.shutdown());
    drop(function);
    Ok(())
}
