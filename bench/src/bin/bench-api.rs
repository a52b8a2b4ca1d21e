//! The in-process API's cost: closed-loop latency of one call at a time through the function runtime
//! (`FunctionHandle::call_blocking`: admission, batcher, lane thread, answer written into the caller's
//! buffers) next to the raw forest lane it drives (rows written, kernel run, labels read, on the calling
//! thread), on the paper's W1a forest, for several rows per call. Labels are checked against the CPU
//! reference. Results in bench/RESULTS.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use serde::Serialize;
use vknf_bench::Stats;
use vknf_functions::{ForestKernel, ForestOptions, FunctionLoader, FunctionSpec, GpuLoader};
use vknf_runtime::{Answer, Call, Rows, Runtime, RuntimeSettings};

#[derive(Parser, Debug)]
#[command(about = "Latency of one call at a time through the in-process API and through the raw lane")]
struct Args {
    /// The paper's tree (shared/paper-rf-tree): W1a is this tree x `--trees`.
    #[arg(long)]
    paper_tree: PathBuf,
    /// Trees in the forest.
    #[arg(long, default_value_t = 150)]
    trees: usize,
    /// Rows per call.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256,5788")]
    sizes: Vec<usize>,
    /// Measured calls per size.
    #[arg(long, default_value_t = 2000)]
    runs: usize,
    /// Lanes of the served function.
    #[arg(long, default_value_t = 3)]
    lanes: usize,
    /// How long lane threads poll for work before they sleep, in microseconds.
    #[arg(long, default_value_t = 0)]
    lane_spin_us: u64,
    /// Device (index, UUID or part of its name; default: `VKNF_DEVICE` or the best one).
    #[arg(long)]
    device: Option<String>,
    /// Writes the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Row {
    rows: usize,
    api: Stats,
    raw_lane: Stats,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workload = vknf_forest::paper_workload(&args.paper_tree, args.trees, *args.sizes.iter().max().unwrap(), 2021)?;
    let forest = workload.forest.compile()?;
    let width = forest.n_features as usize;
    let reference = forest.predict_cpu(&workload.rows.data, workload.rows.n_rows)?;
    let selector = match &args.device {
        Some(text) => text.parse()?,
        None => vknf_vulkan::DeviceSelector::from_env()?,
    };
    let loader = Arc::new(GpuLoader::new(false, selector)?);
    println!("device: {}", loader.device().info().name);
    let max_rows = *args.sizes.iter().max().unwrap();

    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let settings = RuntimeSettings {
        lanes_per_function: args.lanes,
        lane_spin: Duration::from_micros(args.lane_spin_us),
        ..RuntimeSettings::default()
    };
    let spirv = vknf_kernels::by_name("forest").context("the forest kernel")?.to_vec();
    let spec = FunctionSpec {
        max_batch_rows: Some(max_rows),
        ..FunctionSpec::new("w1a", "forest", spirv)
    };
    let model: Arc<[u8]> = forest.to_vkf_bytes().into();
    let runtime = tokio.block_on(async { Runtime::new(loader.clone() as Arc<dyn FunctionLoader>, settings) });
    let function = tokio.block_on(runtime.load(spec, Some(model), None))?;
    let kernel = ForestKernel::new(&loader.device(), &forest, &ForestOptions::default())?;
    let mut lane = kernel.lane(max_rows)?;

    let mut table = Vec::new();
    println!(
        "{:>6} | {:>26} | {:>26}",
        "rows", "API p50 / p99 / p99.9 us", "raw lane p50 / p99 us"
    );
    for &rows in &args.sizes {
        let data = &workload.rows.data[..rows * width];
        let labels = &reference.labels[..rows];
        // Through the API: a plain thread calls, blocking, one call at a time.
        let mut answer = Answer::default();
        let mut api = Vec::with_capacity(args.runs);
        for run in 0..args.runs + args.runs / 10 {
            let call = Call::new(Rows::f32(data.to_vec(), width)?, 0);
            let started = Instant::now();
            answer = function.call_blocking_reusing(call, answer)?;
            let elapsed = started.elapsed().as_secs_f64() * 1e6;
            if run >= args.runs / 10 {
                api.push(elapsed);
            }
        }
        anyhow::ensure!(
            answer.output(0).unwrap().as_u32() == labels,
            "API labels differ from the CPU reference"
        );
        // The raw lane the API drives.
        let mut out = vec![0u32; rows];
        let raw = vknf_bench::time_runs(args.runs / 10, args.runs, || {
            lane.write_rows(0, data)?;
            lane.run(rows, false)?;
            lane.read_labels(&mut out)?;
            Ok(())
        })?;
        anyhow::ensure!(out == labels, "raw lane labels differ from the CPU reference");
        let mut sorted = api.clone();
        sorted.sort_by(f64::total_cmp);
        let p999 = sorted[((sorted.len() - 1) as f64 * 0.999).round() as usize];
        let (api, raw_lane) = (Stats::of(api), Stats::of(raw));
        println!(
            "{rows:>6} | {:>8.1} / {:>7.1} / {:>7.1} | {:>11.1} / {:>8.1}",
            api.median_us, api.p99_us, p999, raw_lane.median_us, raw_lane.p99_us
        );
        table.push(Row { rows, api, raw_lane });
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&table)?)?;
    }
    // Lanes hold device memory: release them (and the raw lane) before the device goes.
    tokio.block_on(runtime.shutdown());
    drop((lane, kernel, function));
    Ok(())
}
