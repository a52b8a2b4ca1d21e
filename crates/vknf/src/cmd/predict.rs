//! `vknf predict`: classifies rows with a forest, on the GPU or with the CPU reference.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use vknf_forest::{GpuForest, ImportOptions, NodeOrder};
use vknf_functions::{ForestKernel, ForestOptions, InputPath};

/// Arguments of `vknf predict`.
#[derive(clap::Args)]
pub struct PredictArgs {
    /// The model: `.onnx` (scikit-learn via skl2onnx) or `.vkf` (from `vknf compile-model`).
    #[arg(long)]
    model: PathBuf,
    /// Input rows: `.csv` or `.npy` (float32/float64, 2-D).
    #[arg(long)]
    input: PathBuf,
    /// Also output the per-class probabilities (scores).
    #[arg(long)]
    proba: bool,
    /// Where to write the predictions (CSV); default: standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Use the multi-threaded CPU reference instead of the GPU.
    #[arg(long, conflicts_with = "addr")]
    cpu: bool,
    /// Ask the network function serving this model at `host:port` (`vknf serve`, `vknf agent`) instead
    /// of running it here; the model file names the labels and is checked against the function's shape.
    #[arg(long)]
    addr: Option<String>,
    /// Device: index, UUID or part of the name (default: VKNF_DEVICE or the best device).
    #[arg(long)]
    device: Option<String>,
    /// Rows per GPU batch.
    #[arg(long, default_value_t = 65_536)]
    batch_rows: usize,
    /// Copy rows to device memory by DMA before the kernel runs, batches of a MiB or more with a share of
    /// their rows written straight into the GPU's memory while the DMA brings the rest: the fastest end
    /// to end for such batches on an H200 (bench/RESULTS.md, "Both ways into the GPU"). The default
    /// where the device has a dedicated transfer queue and resizable BAR; this flag asks for the staged
    /// path on any device (without a transfer queue every row then takes the DMA, no share).
    #[arg(long, conflicts_with = "direct_input")]
    staged_input: bool,
    /// Write every row into memory the kernel reads directly (the default on devices without a dedicated
    /// transfer queue or resizable BAR).
    #[arg(long)]
    direct_input: bool,
    /// Walk the trees in node blocks (a node and both its children in one 32-byte load, two levels a
    /// load: `--node-blocks` or `--node-blocks=true`) or one node a load (`--node-blocks=false`).
    /// Default: blocks, but for forests of at least 64 trees and at most two outputs, whose kernel they
    /// measured slower (docs/forest-kernel.md).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    node_blocks: Option<bool>,
    /// The order of each tree's nodes (or blocks) in device memory: `breadth-first` (the default for
    /// whole batches: a level's nodes share cache lines) or `depth-first` (the `.vkf` file's own).
    #[arg(long)]
    node_order: Option<NodeOrder>,
    /// Before predicting, time every way of running a batch (dispatch counts, and the order its rows
    /// reach the GPU) on the first batch, this many rounds each (default 5, at most 64), and run every
    /// batch of that size in the fastest: worth it for inputs of many batches. Each plan (up to 12) is
    /// first checked against the others (a batch written and two run), then a round costs two
    /// batches a plan, and the plans within 5% of the best run twice as many rounds more. The trials
    /// are logged at info level.
    #[arg(
        long,
        num_args = 0..=1,
        default_missing_value = "5",
        require_equals = true,
        value_name = "ROUNDS",
        conflicts_with_all = ["cpu", "addr"]
    )]
    tune_plans: Option<usize>,
}

/// Loads a model from `.onnx` or `.vkf`, with a progress bar for long loads.
pub fn load_model(path: &Path) -> anyhow::Result<GpuForest> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match extension.as_str() {
        "vkf" => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            GpuForest::from_vkf_bytes(&bytes).with_context(|| format!("loading {}", path.display()))
        }
        "onnx" => {
            let bar = super::progress::progress_bar(false);
            let forest =
                vknf_forest::import_onnx_file(path, &ImportOptions::default(), &mut |p| super::progress::show(&bar, p))
                    .with_context(|| format!("importing {}", path.display()))?;
            bar.finish_and_clear();
            Ok(forest
                .compile()
                .with_context(|| format!("compiling {}", path.display()))?)
        }
        other => anyhow::bail!(
            "{}: unknown model type {other:?} (expected .onnx or .vkf)",
            path.display()
        ),
    }
}

/// Predicts and writes CSV.
pub fn run(global: &super::Global, args: PredictArgs) -> anyhow::Result<()> {
    let forest = load_model(&args.model)?;
    let rows = vknf_forest::read_rows(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    if rows.n_features != forest.n_features as usize {
        anyhow::bail!(
            "{} has {} features per row; the model expects {}",
            args.input.display(),
            rows.n_features,
            forest.n_features
        );
    }
    let started = Instant::now();
    let want_scores = args.proba || !forest.task.is_classifier();
    let (prediction, instance) = if let Some(addr) = &args.addr {
        (predict_remote(addr, &forest, &rows, want_scores)?, None)
    } else if args.cpu {
        (forest.predict_cpu(&rows.data, rows.n_rows)?, None)
    } else {
        let instance = global.instance()?;
        let device = global.device(&instance, args.device.as_deref())?;
        let options = ForestOptions {
            input_path: if args.staged_input {
                Some(InputPath::Staged)
            } else if args.direct_input {
                Some(InputPath::Direct)
            } else {
                None
            },
            node_blocks: args.node_blocks,
            node_order: args.node_order.or(ForestOptions::for_whole_batches().node_order),
            ..ForestOptions::for_whole_batches()
        };
        let kernel = ForestKernel::new(&device, &forest, &options)?;
        let batch_rows = args.batch_rows.min(rows.n_rows.max(1));
        let mut lane = kernel.lane(batch_rows)?;
        if let Some(rounds) = args.tune_plans.filter(|_| rows.n_rows > 0) {
            let tuning_started = Instant::now();
            let tuning = lane
                .tune_plans(&rows.data[..batch_rows * rows.n_features], rounds, want_scores)
                .context("tuning the batch plans")?;
            for trial in &tuning.trials {
                tracing::info!(plan = %trial.plan, median_us = trial.median_us, runs = trial.runs_us.len(), "plan timed");
            }
            tracing::info!(
                rows = tuning.rows,
                chosen = %tuning.chosen,
                tuning_ms = tuning_started.elapsed().as_secs_f64() * 1e3,
                "batches of this size follow the fastest plan"
            );
        }
        (lane.predict(&rows.data, want_scores)?, Some(instance))
    };
    tracing::info!(
        rows = rows.n_rows,
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "predicted"
    );
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    if want_scores {
        vknf_forest::write_predictions_csv(&mut out, &forest, &prediction)?;
    } else {
        writeln!(out, "label")?;
        for label in &prediction.labels {
            writeln!(out, "{}", forest.label_name(*label))?;
        }
    }
    out.flush()?;
    if let Some(instance) = instance {
        global.finish(&instance)?;
    }
    Ok(())
}

/// Most row bytes per request to a remote function (well inside the server's default frame limit).
const REMOTE_REQUEST_BYTES: usize = 4 << 20;

/// Runs `rows` through the function at `addr`, after checking that it has the model's shape.
fn predict_remote(
    addr: &str,
    forest: &GpuForest,
    rows: &vknf_forest::Rows,
    want_scores: bool,
) -> anyhow::Result<vknf_forest::Prediction> {
    use vknf_protocol::blocking_client::BlockingClient;

    let mut client = BlockingClient::connect(addr, std::time::Duration::from_secs(30))
        .with_context(|| format!("connecting to {addr}"))?;
    let description = client
        .describe()
        .with_context(|| format!("describing the function at {addr}"))?;
    let info = &description.info;
    let classifier = forest.task.is_classifier();
    let n_outputs = forest.n_outputs as usize;
    let labels_index = info.output_index("labels");
    let scores_index = info
        .output_index("scores")
        .filter(|i| info.outputs[*i].width == n_outputs);
    let shape = (info.input.width == forest.n_features as usize)
        .then_some(scores_index)
        .flatten()
        .filter(|_| !classifier || labels_index.is_some());
    let Some(scores_index) = shape else {
        anyhow::bail!(
            "{} at {addr} takes {} features and has outputs {:?}; the model has {} features and {} outputs",
            description.name,
            info.input.width,
            info.outputs
                .iter()
                .map(|o| format!("{} x{}", o.name, o.width))
                .collect::<Vec<_>>(),
            forest.n_features,
            n_outputs
        );
    };
    let mask = if want_scores { 1u32 << scores_index } else { 0 };
    let width = rows.n_features;
    let chunk_rows = (REMOTE_REQUEST_BYTES / 4 / width.max(1)).max(1);
    let mut labels = Vec::with_capacity(if classifier { rows.n_rows } else { 0 });
    let mut scores = Vec::with_capacity(if want_scores { rows.n_rows * n_outputs } else { 0 });
    for chunk in rows.data.chunks(chunk_rows * width.max(1)) {
        let answer = client
            .infer(width as u32, chunk, mask)
            .with_context(|| format!("the function at {addr} refused a request"))?;
        if let Some(index) = labels_index.filter(|_| classifier) {
            labels.extend(answer.output(index).context("the answer lacks labels")?.to_u32());
        }
        if want_scores {
            scores.extend(answer.output(scores_index).context("the answer lacks scores")?.to_f32());
        }
    }
    Ok(vknf_forest::Prediction {
        n_rows: rows.n_rows,
        n_outputs,
        scores,
        labels,
    })
}
