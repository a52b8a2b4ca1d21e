//! A forest workload on vknf: the paper's W1a (`--paper-tree`) or any model and rows (`--model`,
//! `--input`; the named shapes of `bench/run_gpu.sh`: W1b/deep, wide, tiny). Reports the GPU end to end
//! (host rows in, labels out, copies included) with the configuration vknf chooses for the forest's shape
//! and the batch (`ForestLane::predict`; `--rows-per-group` and `--tree-lanes` override parts of it),
//! the previous fixed default, and, with `--sweep`, a grid of kernel configurations and pipelined chunk
//! counts; kernel alone from GPU timestamps; next to vknf's multi-threaded CPU reference. Every
//! configuration's labels are checked against the CPU reference.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use vknf_bench::{Stats, open_device, time_runs};
use vknf_forest::{GpuForest, ImportOptions, Rows};
use vknf_functions::forest::{BatchTimeline, ChunkTimeline};
use vknf_functions::{ForestKernel, ForestLane, ForestOptions, InputPath};

#[derive(Parser)]
struct Args {
    /// W1a: the directory of the paper's tree (its CSV arrays), repeated --trees times.
    #[arg(long, conflicts_with = "model")]
    paper_tree: Option<PathBuf>,
    /// Copies of the paper tree.
    #[arg(long, default_value_t = 150)]
    trees: usize,
    /// Rows to generate for W1a.
    #[arg(long, default_value_t = 5788)]
    rows: usize,
    /// W1b: a model file (.onnx or .vkf).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Input rows for --model (.npy or .csv).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Write the generated W1a input rows as .npy (float32), so baselines use the same rows.
    #[arg(long)]
    write_input: Option<PathBuf>,
    /// Write vknf's GPU labels (`predict` with the chosen configuration) as .npy (int64 class indices).
    #[arg(long)]
    write_labels: Option<PathBuf>,
    /// Device selector.
    #[arg(long)]
    device: Option<String>,
    /// Measured runs per configuration.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Sweep kernel configurations (otherwise only the default one).
    #[arg(long)]
    sweep: bool,
    /// Also time small batches (1 to 256 rows) with and without the small-batch pipeline.
    #[arg(long)]
    small_batches: bool,
    /// Skip the CPU reference timing.
    #[arg(long)]
    no_cpu: bool,
    /// Results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The workload's name in the report (default: W1a or the model's file name).
    #[arg(long)]
    name: Option<String>,
    /// How rows reach the GPU in the chosen configuration and the small-batch table: `direct`,
    /// `host-memory` or `staged` (default: the kernel's choice).
    #[arg(long, value_parser = parse_input_path)]
    input_path: Option<InputPath>,
    /// Direct shares of the staged path to time in the input-path table (`ForestOptions::direct_share`).
    #[arg(long, value_delimiter = ',', default_values_t = [0.0f32, vknf_functions::forest::DEFAULT_DIRECT_SHARE])]
    direct_shares: Vec<f32>,
    /// Rows per workgroup in the chosen configuration, the input-path and small-batch tables (default:
    /// the kernel's choice).
    #[arg(long)]
    rows_per_group: Option<u32>,
    /// Threads per row (each walking a share of the trees) in the chosen configuration and those tables.
    #[arg(long)]
    tree_lanes: Option<u32>,
    /// Walk node blocks (`true`) or single nodes (`false`) in the chosen configuration and the tables
    /// (default: the kernel's choice); the headline also times the other layout, and `--sweep` both.
    #[arg(long)]
    node_blocks: Option<bool>,
    /// The order of each tree's nodes (or blocks) in device memory, `depth-first` or `breadth-first`,
    /// in the chosen configuration, the other layout's and the input-path, small-batch, writes and
    /// timeline tables (default: what `ForestOptions::for_whole_batches` takes, breadth first; served
    /// functions keep depth first; `--sweep`'s grid and `--distinct-trees` take depth first).
    #[arg(long)]
    node_order: Option<vknf_forest::NodeOrder>,
    /// Where a pipelined batch's time goes: for each pipelined dispatch count of --chunk-counts (the
    /// chosen configuration otherwise), end to end over --rounds rounds, then the median timeline of each
    /// dispatch (host writes and submissions, GPU copies and kernels, on the host's clock where the
    /// device has calibrated timestamps).
    #[arg(long)]
    timeline: bool,
    /// Pipelined dispatch counts for --timeline (default: the chosen count), each optionally with the
    /// tree lanes of its kernel (`6@16`: six dispatches walked by 16 lanes a row; default --tree-lanes),
    /// and `s` or `w` for a one-dispatch batch's directly written rows dispatched first or not (`1s`,
    /// `1w@90`; `ForestOptions::direct_rows_first`; otherwise as the chosen configuration has it), and
    /// `o` for several dispatches whose direct shares are written after the previous dispatch's copy
    /// (`4o`; `ForestOptions::direct_after_copy`).
    #[arg(long, value_delimiter = ',', value_parser = parse_chunk_plan)]
    chunk_counts: Vec<ChunkPlan>,
    /// The direct share of the chosen configuration (`ForestOptions::direct_share`; default: what
    /// `ForestOptions::for_whole_batches` takes).
    #[arg(long)]
    chosen_share: Option<f32>,
    /// Microseconds the pool's threads are kept awake after each batch in the chosen configuration
    /// (`ForestOptions::keep_writers_awake`; default: what `ForestOptions::for_whole_batches` takes).
    #[arg(long)]
    writers_awake_us: Option<u64>,
    /// The writes table: end to end of the chosen configuration with each of these keep-awake times (us)
    /// ...
    #[arg(long, value_delimiter = ',')]
    awake_us: Vec<u64>,
    /// ... and each of these direct shares; `--rounds` rounds, the combinations alternating.
    #[arg(long, value_delimiter = ',')]
    write_shares: Vec<f32>,
    /// Rounds of the writes table, of the timeline's end-to-end runs and of the tuned table.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The tuned table: the chosen configuration's lane tuned on the whole batch (`ForestLane::
    /// tune_plans`, this many rounds), then end to end of the kernel's rule and of the tuned plan,
    /// `--rounds` rounds alternating, each of `--runs` batches.
    #[arg(long)]
    tune_plans: Option<usize>,
    /// A diagnostic of what the kernel's time depends on: `given` (the rows as read), `by-label` (the
    /// rows sorted by the CPU reference's label, so a workgroup's rows tend to walk the same paths) or
    /// `first-row` (every row a copy of the first: no divergence at all).
    #[arg(long, default_value = "given", value_parser = ["given", "by-label", "first-row"])]
    row_order: String,
    /// A diagnostic of what the kernel's time depends on: the forest's trees replaced by its first N,
    /// repeated in turn (as many walks, of the same kinds, over a fraction of the nodes). The repeated
    /// roots share their nodes, which node blocks refuse: give `--node-blocks false` (the nodes then
    /// keep their depth-first order, which the breadth-first one would refuse too).
    #[arg(long)]
    distinct_trees: Option<usize>,
    /// Dispatch a one-dispatch batch's directly written rows first (`true`) or not, in the chosen
    /// configuration and the tables (`ForestOptions::direct_rows_first`; default: what
    /// `ForestOptions::for_whole_batches` takes).
    #[arg(long)]
    direct_rows_first: Option<bool>,
}

/// One entry of --chunk-counts: dispatches, the tree lanes their kernel is built with, and whether the
/// directly written rows are dispatched first (`None`: as the chosen configuration has it).
#[derive(Clone, Copy)]
struct ChunkPlan {
    chunks: usize,
    tree_lanes: Option<u32>,
    direct_first: Option<bool>,
    after_copy: bool,
}

impl std::fmt::Display for ChunkPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let split = match (self.direct_first, self.after_copy) {
            (Some(true), _) => "s",
            (Some(false), _) => "w",
            (None, true) => "o",
            (None, false) => "",
        };
        write!(f, "{}{split}", self.chunks)?;
        match self.tree_lanes {
            Some(lanes) => write!(f, "@{lanes}"),
            None => Ok(()),
        }
    }
}

fn parse_chunk_plan(text: &str) -> Result<ChunkPlan, String> {
    let positive = |part: &str, what: &str| -> Result<u32, String> {
        match part.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            Ok(_) => Err(format!("{text:?}: {what} start at 1")),
            Err(err) => Err(format!("{part:?} in {text:?}: {err}")),
        }
    };
    let (chunks, lanes) = match text.split_once('@') {
        Some((chunks, lanes)) => (chunks, Some(positive(lanes, "tree lanes")?)),
        None => (text, None),
    };
    let chunks = chunks.trim();
    let (chunks, after_copy) = match chunks.strip_suffix('o') {
        Some(chunks) => (chunks, true),
        None => (chunks, false),
    };
    let (chunks, direct_first) = match (chunks.strip_suffix('s'), chunks.strip_suffix('w')) {
        (Some(chunks), _) => (chunks, Some(true)),
        (_, Some(chunks)) => (chunks, Some(false)),
        _ => (chunks, None),
    };
    let chunks = positive(chunks, "dispatch counts")? as usize;
    if chunks > 1 && direct_first.is_some() {
        return Err(format!("{text:?}: only one dispatch splits (`1s`, `1w`)"));
    }
    if after_copy && (chunks < 2 || direct_first.is_some()) {
        return Err(format!("{text:?}: `o` is for several dispatches (`4o`)"));
    }
    Ok(ChunkPlan {
        chunks,
        tree_lanes: lanes,
        direct_first,
        after_copy,
    })
}

fn parse_input_path(text: &str) -> Result<InputPath, String> {
    match text {
        "direct" => Ok(InputPath::Direct),
        "host-memory" => Ok(InputPath::HostMemory),
        "staged" => Ok(InputPath::Staged),
        other => Err(format!("{other:?}: direct, host-memory or staged")),
    }
}

/// What every table times: the forest on the device, its rows and the CPU reference's labels.
#[derive(Clone, Copy)]
struct Workload<'a> {
    device: &'a vknf_vulkan::Device,
    forest: &'a GpuForest,
    rows: &'a Rows,
    reference: &'a [u32],
}

/// The fixed configuration vknf used for every forest before it chose by shape and batch: 24 rows x 32
/// tree lanes, one node a load, one dispatch per batch (bench/RESULTS.md, W1 sweep).
fn previous_default() -> ForestOptions {
    ForestOptions {
        rows_per_group: Some(24),
        tree_lanes: Some(32),
        pipeline_chunks: Some(1),
        node_blocks: Some(false),
        ..ForestOptions::default()
    }
}

fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> anyhow::Result<()> {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// Puts the rows in the order `--row-order` names.
fn reorder_rows(forest: &GpuForest, rows: &mut Rows, order: &str) -> anyhow::Result<()> {
    let nf = rows.n_features;
    let permutation: Vec<usize> = match order {
        "by-label" => {
            let labels = forest.predict_cpu(&rows.data, rows.n_rows)?.labels;
            let mut indices: Vec<usize> = (0..rows.n_rows).collect();
            indices.sort_by_key(|&r| labels[r]);
            indices
        }
        "first-row" => vec![0; rows.n_rows],
        _ => return Ok(()),
    };
    rows.data = permutation
        .iter()
        .flat_map(|&r| rows.data[r * nf..(r + 1) * nf].iter().copied())
        .collect();
    Ok(())
}

fn load(args: &Args) -> anyhow::Result<(String, GpuForest, Rows, Option<f64>)> {
    if let Some(dir) = &args.paper_tree {
        let workload = vknf_forest::paper_workload(dir, args.trees, args.rows, 2021)?;
        let forest = workload.forest.compile()?;
        if let Some(path) = &args.write_input {
            let bytes: Vec<u8> = workload.rows.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            write_npy(path, "<f4", &[workload.rows.n_rows, workload.rows.n_features], &bytes)?;
        }
        return Ok((
            "W1a: paper tree x150".into(),
            forest,
            workload.rows,
            Some(workload.mean_depth),
        ));
    }
    let model = args.model.as_ref().context("give --paper-tree or --model")?;
    let forest = if model.extension().is_some_and(|e| e == "vkf") {
        GpuForest::from_vkf_bytes(&std::fs::read(model)?)?
    } else {
        vknf_forest::import_onnx_file(model, &ImportOptions::default(), &mut |_| {})?.compile()?
    };
    let rows = vknf_forest::read_rows(args.input.as_ref().context("--model needs --input")?)?;
    let depth = forest.mean_depth(&rows.data, rows.n_rows).ok();
    let name = model
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().to_string());
    Ok((name, forest, rows, depth))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (name, mut forest, mut rows, mean_depth) = load(&args)?;
    reorder_rows(&forest, &mut rows, &args.row_order)?;
    if let Some(distinct) = args.distinct_trees {
        anyhow::ensure!(
            args.node_blocks == Some(false) && !args.sweep,
            "--distinct-trees shares nodes between roots, which node blocks refuse: give --node-blocks false, and no --sweep"
        );
        let distinct = distinct.clamp(1, forest.tree_roots.len().max(1));
        forest.tree_roots = (0..forest.tree_roots.len())
            .map(|t| forest.tree_roots[t % distinct])
            .collect();
    }
    let mean_depth = if args.row_order == "given" && args.distinct_trees.is_none() {
        mean_depth
    } else {
        forest.mean_depth(&rows.data, rows.n_rows).ok()
    };
    let name = args.name.clone().unwrap_or(name);
    let n_nodes = forest.nodes.len() / forest.node_format.words();
    println!(
        "{name}: {} trees, {} nodes ({} bytes/node), {} features, {} outputs, max depth {}, {} rows, mean depth {:?}",
        forest.n_trees,
        n_nodes,
        forest.node_format.words() * 4,
        forest.n_features,
        forest.n_outputs,
        forest.max_depth,
        rows.n_rows,
        mean_depth
    );
    use std::io::Write;
    print!("CPU reference ... ");
    std::io::stdout().flush()?;
    let reference = forest.predict_cpu(&rows.data, rows.n_rows)?;
    println!("done");
    let cpu = if args.no_cpu {
        None
    } else {
        let samples = time_runs(1, 5, || {
            forest.predict_cpu(&rows.data, rows.n_rows)?;
            Ok(())
        })?;
        Some(Stats::of(samples))
    };
    if let Some(cpu) = &cpu {
        println!(
            "vknf CPU reference ({} threads): median {:.3} ms",
            std::thread::available_parallelism()?,
            cpu.median_us / 1e3
        );
    }

    let (_instance, device) = open_device(args.device.as_deref())?;
    let nf = forest.n_features as usize;

    // The headline: `predict` with the configuration vknf chooses (shape and batch), against the
    // previous fixed default on the same rows.
    let whole_batches = ForestOptions::for_whole_batches();
    let chosen = ForestOptions {
        input_path: args.input_path,
        rows_per_group: args.rows_per_group,
        tree_lanes: args.tree_lanes,
        node_blocks: args.node_blocks,
        // Repeated trees share their nodes, which only the depth-first order (the words as they are)
        // takes.
        node_order: match args.distinct_trees {
            Some(_) => Some(vknf_forest::NodeOrder::DepthFirst),
            None => args.node_order.or(whole_batches.node_order),
        },
        direct_share: args.chosen_share.or(whole_batches.direct_share),
        keep_writers_awake: args
            .writers_awake_us
            .map(std::time::Duration::from_micros)
            .or(whole_batches.keep_writers_awake),
        direct_rows_first: args.direct_rows_first.or(whole_batches.direct_rows_first),
        ..whole_batches
    };
    // vknf's own kernel declares the node-block binding: the default applies as it is.
    let chosen_blocks = chosen
        .node_blocks
        .unwrap_or_else(|| vknf_functions::forest::node_blocks_by_default(&forest));
    let other_layout = ForestOptions {
        node_blocks: Some(!chosen_blocks),
        ..chosen
    };
    let mut chosen_labels = Vec::new();
    let mut headline = serde_json::Map::new();
    for (label, options) in [
        ("chosen", chosen),
        ("other-node-layout", other_layout),
        ("previous-default", previous_default()),
    ] {
        // Shared roots (--distinct-trees) are refused by node blocks: the other layout is not timed.
        if args.distinct_trees.is_some() && options.node_blocks != Some(false) {
            continue;
        }
        let kernel = ForestKernel::new(&device, &forest, &options)?;
        let config = kernel.config();
        let chunks = kernel.pipeline_chunks(rows.n_rows);
        let mut lane = kernel.lane(rows.n_rows)?;
        let (e2e, labels, wrong) = time_predict(&mut lane, &rows, &reference.labels, args.runs)?;
        let kernel_stats = one_dispatch_kernel(&mut lane, &rows, args.runs)?;
        println!(
            "{label}: {config:?}, {chunks} chunk(s): predict e2e median {:.1} us (p90 {:.1}), kernel {:?} us, label mismatches vs CPU {wrong}",
            e2e.median_us,
            e2e.p90_us,
            kernel_stats.as_ref().map(|k| (k.median_us * 10.0).round() / 10.0),
        );
        if label == "chosen" {
            chosen_labels = labels;
        }
        // What the driver says about the compiled pipelines, where the device keeps it
        // ($VKNF_PIPELINE_STATISTICS): registers a thread set how many threads a multiprocessor holds.
        let statistics = kernel.pipeline_statistics()?;
        for (pipeline, figures) in statistics.iter().filter(|(_, figures)| !figures.is_empty()) {
            let figures: Vec<String> = figures.iter().map(|s| format!("{} {}", s.name, s.value)).collect();
            println!("  {label} {pipeline}: {}", figures.join(", "));
        }
        headline.insert(
            label.into(),
            json!({"config": config, "chunks": chunks, "end_to_end": e2e, "kernel": kernel_stats,
                   "label_mismatches_vs_cpu_reference": wrong, "pipeline_statistics": statistics}),
        );
    }

    let mut configurations = Vec::new();
    if args.sweep {
        configurations.push(ForestOptions::default());
        configurations.push(ForestOptions {
            small_batch_rows: Some(0),
            ..ForestOptions::default()
        });
        configurations.push(ForestOptions {
            stage_input: Some(false),
            ..ForestOptions::default()
        });
        for rows_per_group in [8u32, 16, 24, 32, 64, 128] {
            for tree_lanes in [4u32, 8, 16, 32, 48, 64] {
                if rows_per_group * tree_lanes > 1024 || tree_lanes as usize > (forest.n_trees as usize).max(4) {
                    continue;
                }
                for node_blocks in [false, true] {
                    configurations.push(ForestOptions {
                        rows_per_group: Some(rows_per_group),
                        tree_lanes: Some(tree_lanes),
                        node_blocks: Some(node_blocks),
                        ..ForestOptions::default()
                    });
                }
            }
        }
    }
    let mut results = Vec::new();
    let mut seen = Vec::new();
    for options in configurations {
        let kernel = ForestKernel::new(&device, &forest, &options)?;
        let config = kernel.config();
        if seen.contains(&format!("{config:?}")) {
            continue;
        }
        seen.push(format!("{config:?}"));
        let mut lane = kernel.lane(rows.n_rows)?;
        let mut labels = Vec::new();
        let mut kernel_ns = Vec::new();
        // End to end as one dispatch: host rows in (copied into the lane), GPU, labels out.
        let e2e = Stats::of(time_runs(3, args.runs, || {
            lane.write_rows(0, &rows.data)?;
            lane.submit(rows.n_rows, false)?;
            labels = lane.finish(vknf_functions::forest::BATCH_DEADLINE)?.labels;
            if let Some(ns) = lane.last_kernel_ns() {
                kernel_ns.push(ns / 1e3);
            }
            Ok(())
        })?);
        // Rows already in the lane's staging memory (zero-copy producers, e.g. the server).
        let in_place = Stats::of(time_runs(3, args.runs, || {
            lane.submit(rows.n_rows, false)?;
            lane.finish(vknf_functions::forest::BATCH_DEADLINE)?;
            Ok(())
        })?);
        let kernel_stats = (!kernel_ns.is_empty()).then(|| Stats::of(kernel_ns.clone()));
        // End to end with the batch split into dispatches that overlap the host's writes.
        let mut pipelined = serde_json::Map::new();
        let mut line = String::new();
        if config.input_path == InputPath::Direct && rows.data.len() * 4 >= 1 << 20 {
            for chunks in [2usize, 4, 8, 16, 32] {
                if chunks > rows.n_rows.div_ceil(config.rows_per_group as usize) {
                    continue;
                }
                let mut got = Vec::new();
                let stats = Stats::of(time_runs(3, args.runs, || {
                    got = lane.run_pipelined(&rows.data, chunks, false)?.labels;
                    Ok(())
                })?);
                let wrong = got.iter().zip(&reference.labels).filter(|(a, b)| a != b).count();
                line.push_str(&format!(
                    " {chunks}:{:.0}{}",
                    stats.median_us,
                    if wrong > 0 { "!" } else { "" }
                ));
                pipelined.insert(
                    chunks.to_string(),
                    json!({"end_to_end": stats, "label_mismatches_vs_cpu_reference": wrong}),
                );
            }
        }
        let mismatches = labels.iter().zip(&reference.labels).filter(|(a, b)| a != b).count();
        println!(
            "  {}x{}{}{}{}{}: e2e {:.1} us, in place {:.1} us, kernel {:?} us, mismatches {}; pipelined us:{line}",
            config.rows_per_group,
            config.tree_lanes,
            if config.node_blocks { " blocks" } else { "" },
            if config.breadth_first { " breadth-first" } else { "" },
            if config.stage_input { "" } else { " unstaged" },
            match config.small_batch {
                Some(small) => format!(" small<={}", small.max_rows),
                None => String::new(),
            },
            e2e.median_us,
            in_place.median_us,
            kernel_stats.as_ref().map(|k| k.median_us.round()),
            mismatches
        );
        results.push(json!({
            "config": config, "end_to_end": e2e, "in_place": in_place, "kernel": kernel_stats, "pipelined": pipelined,
            "label_mismatches_vs_cpu_reference": mismatches,
        }));
    }
    let workload = Workload {
        device: &device,
        forest: &forest,
        rows: &rows,
        reference: &reference.labels,
    };
    let input_paths = input_path_table(workload, args.runs, chosen, &args.direct_shares)?;
    let writes = if args.awake_us.is_empty() && args.write_shares.is_empty() {
        Vec::new()
    } else {
        writes_table(workload, &args, chosen)?
    };
    let timelines = if args.timeline {
        timeline_table(workload, &args, chosen)?
    } else {
        Vec::new()
    };
    let tuned = match args.tune_plans {
        Some(tuning_rounds) => tuned_table(workload, &args, chosen, tuning_rounds)?,
        None => serde_json::Value::Null,
    };
    let small_batches = if args.small_batches {
        small_batch_table(workload, args.runs, chosen)?
    } else {
        Vec::new()
    };
    if let Some(path) = &args.write_labels {
        let bytes: Vec<u8> = chosen_labels.iter().flat_map(|l| (*l as i64).to_le_bytes()).collect();
        write_npy(path, "<i8", &[chosen_labels.len()], &bytes)?;
    }
    let report = json!({
        "workload": name,
        "device": device.info().name,
        "driver": device.info().driver_info,
        "trees": forest.n_trees, "nodes": n_nodes, "bytes_per_node": forest.node_format.words() * 4,
        "features": forest.n_features, "outputs": forest.n_outputs, "rows": rows.n_rows,
        "max_depth": forest.max_depth, "mean_depth": mean_depth, "n_features": nf,
        "input_bytes": rows.data.len() * 4, "row_order": args.row_order, "distinct_trees": args.distinct_trees,
        "cpu_reference": cpu,
        "cpu_threads": std::thread::available_parallelism()?.get(),
        "predict": headline,
        "gpu": results,
        "input_paths": input_paths,
        "small_batches": small_batches,
        "timelines": timelines,
        "writes": writes,
        "tuned": tuned,
        "finished_at_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// Latency of small batches (the server's one-row requests) with the chosen configuration, the
/// previous fixed default, and the bulk and small-batch pipelines forced.
fn small_batch_table(
    workload: Workload<'_>,
    runs: usize,
    chosen: ForestOptions,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let Workload {
        device,
        forest,
        rows,
        reference,
    } = workload;
    let nf = forest.n_features as usize;
    let mut table = Vec::new();
    let variants = [
        ("chosen", chosen),
        ("previous-default", previous_default()),
        (
            "bulk",
            ForestOptions {
                small_batch_rows: Some(0),
                ..chosen
            },
        ),
        (
            "small-batch",
            ForestOptions {
                small_batch_rows: Some(usize::MAX),
                ..chosen
            },
        ),
    ];
    let mut seen = Vec::new();
    for (name, options) in variants {
        let kernel = ForestKernel::new(device, forest, &options)?;
        if seen.contains(&format!("{:?}", kernel.config())) {
            continue;
        }
        seen.push(format!("{:?}", kernel.config()));
        let max = rows.n_rows.min(8192);
        let mut lane = kernel.lane(max)?;
        let mut sizes: Vec<usize> = [1usize, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
            .into_iter()
            .filter(|n| *n < max)
            .collect();
        sizes.push(max);
        for n in sizes {
            let mut kernel_us = Vec::new();
            let mut labels = Vec::new();
            let pipelined = kernel.pipeline_chunks(n) > 1;
            let e2e = Stats::of(time_runs(20, if n > 256 { runs } else { runs.max(200) }, || {
                labels = lane.predict(&rows.data[..n * nf], false)?.labels;
                if let Some(ns) = lane.last_kernel_ns().filter(|_| !pipelined) {
                    kernel_us.push(ns / 1e3);
                }
                Ok(())
            })?);
            let kernel_stats = (!kernel_us.is_empty()).then(|| Stats::of(kernel_us));
            let wrong = labels.iter().zip(reference).filter(|(a, b)| a != b).count();
            println!(
                "  {name:>16} {n:>5} rows: e2e median {:.1} us p99 {:.1} us, kernel {:?} us, mismatches {wrong}",
                e2e.median_us,
                e2e.p99_us,
                kernel_stats.as_ref().map(|k| (k.median_us * 10.0).round() / 10.0),
            );
            table.push(json!({
                "pipeline": name, "config": kernel.config(), "rows": n, "end_to_end": e2e, "kernel": kernel_stats,
                "label_mismatches_vs_cpu_reference": wrong,
            }));
        }
    }
    Ok(table)
}

/// The chosen configuration's lane tuned on the whole batch (`--tune-plans` rounds): every plan's
/// median, then the rule's lane and the tuned one (two lanes of one kernel) alternating for
/// `--rounds` rounds, labels checked every time.
fn tuned_table(
    workload: Workload<'_>,
    args: &Args,
    chosen: ForestOptions,
    tuning_rounds: usize,
) -> anyhow::Result<serde_json::Value> {
    let Workload {
        device,
        forest,
        rows,
        reference,
    } = workload;
    let kernel = ForestKernel::new(device, forest, &chosen)?;
    let mut rule = kernel.lane(rows.n_rows)?;
    let mut tuned = kernel.lane(rows.n_rows)?;
    let started = std::time::Instant::now();
    let tuning = tuned.tune_plans(&rows.data, tuning_rounds, false)?;
    let rule_plan = rule.plan_for(rows.n_rows);
    let tuning_ms = started.elapsed().as_secs_f64() * 1e3;
    let trials: Vec<String> = tuning
        .trials
        .iter()
        .map(|trial| {
            let mark = if trial.finalist { "*" } else { "" };
            format!("{}{mark} {:.1}", trial.plan, trial.median_us)
        })
        .collect();
    println!(
        "tuning ({tuning_rounds} rounds, {tuning_ms:.0} ms; plan median us, * timed again): {}; chosen {} (rule {rule_plan})",
        trials.join(", "),
        tuning.chosen,
    );
    let mut rounds = Vec::new();
    println!("tuned (e2e median us, p90):");
    for round in 1..=args.rounds {
        let (rule_e2e, _, rule_wrong) = time_predict(&mut rule, rows, reference, args.runs)?;
        let (tuned_e2e, _, tuned_wrong) = time_predict(&mut tuned, rows, reference, args.runs)?;
        println!(
            "  round {round}:{}{}",
            round_cell(format_args!("rule {rule_plan}"), &rule_e2e, rule_wrong),
            round_cell(format_args!("tuned {}", tuning.chosen), &tuned_e2e, tuned_wrong)
        );
        rounds.push(json!({"round": round, "rule": rule_e2e, "tuned": tuned_e2e,
                           "label_mismatches_vs_cpu_reference": rule_wrong + tuned_wrong}));
    }
    Ok(json!({"tuning": tuning, "tuning_ms": tuning_ms, "rule_plan": rule_plan, "rounds": rounds}))
}

/// `predict` of the whole batch end to end (3 unmeasured runs first): its statistics, the last run's
/// labels and how many differ from `reference`.
fn time_predict(
    lane: &mut ForestLane,
    rows: &Rows,
    reference: &[u32],
    runs: usize,
) -> anyhow::Result<(Stats, Vec<u32>, usize)> {
    let mut labels = Vec::new();
    let e2e = Stats::of(time_runs(3, runs, || {
        labels = lane.predict(&rows.data, false)?.labels;
        Ok(())
    })?);
    let wrong = labels.iter().zip(reference).filter(|(a, b)| a != b).count();
    Ok((e2e, labels, wrong))
}

/// The kernel alone: the whole batch as one dispatch, from GPU timestamps (`None` where the device has
/// none).
fn one_dispatch_kernel(lane: &mut ForestLane, rows: &Rows, runs: usize) -> anyhow::Result<Option<Stats>> {
    let mut kernel_ns = Vec::new();
    time_runs(2, runs.min(20), || {
        lane.write_rows(0, &rows.data)?;
        lane.submit(rows.n_rows, false)?;
        lane.finish(vknf_functions::forest::BATCH_DEADLINE)?;
        if let Some(ns) = lane.last_kernel_ns() {
            kernel_ns.push(ns / 1e3);
        }
        Ok(())
    })?;
    Ok((!kernel_ns.is_empty()).then(|| Stats::of(kernel_ns)))
}

/// End to end (host rows in, labels out) of the whole batch for each way rows reach the GPU, in one
/// dispatch and split into pipelined chunks, with the chosen workgroup shape (`chosen`'s, where the
/// command line fixes parts of it); the kernel's GPU time per path (the host-memory path's kernel pulls
/// the rows over the bus); labels checked every time.
fn input_path_table(
    workload: Workload<'_>,
    runs: usize,
    chosen: ForestOptions,
    direct_shares: &[f32],
) -> anyhow::Result<Vec<serde_json::Value>> {
    let Workload {
        device,
        forest,
        rows,
        reference,
    } = workload;
    let mut table = Vec::new();
    println!("input paths (e2e median us by pipelined chunks; kernel us of one dispatch):");
    let variants = [(InputPath::Direct, None), (InputPath::HostMemory, None)]
        .into_iter()
        .chain(direct_shares.iter().map(|share| (InputPath::Staged, Some(*share))));
    for (path, direct_share) in variants {
        let options = ForestOptions {
            input_path: Some(path),
            small_batch_rows: Some(0),
            direct_share,
            ..chosen
        };
        let kernel = ForestKernel::new(device, forest, &options)?;
        let config = kernel.config();
        let mut lane = kernel.lane(rows.n_rows)?;
        // The share the lane really splits by (none without a transfer stream or resizable BAR).
        let effective_share = lane.direct_share();
        let kernel_stats = one_dispatch_kernel(&mut lane, rows, runs)?;
        // Where one dispatch's time goes: the host writing the rows, then everything after (copy if
        // staged, kernel, completion, labels read back) with the rows already in place.
        let write = Stats::of(time_runs(3, runs, || Ok(lane.write_rows(0, &rows.data)?))?);
        let in_place = Stats::of(time_runs(3, runs, || {
            lane.submit(rows.n_rows, false)?;
            lane.finish(vknf_functions::forest::BATCH_DEADLINE)?;
            Ok(())
        })?);
        table.push(json!({
            "input_path": config.input_path, "requested_input_path": path, "config": config,
            "effective_direct_share": effective_share, "host_write": write, "in_place": in_place,
        }));
        let groups = rows.n_rows.div_ceil(config.rows_per_group as usize);
        let mut line = String::new();
        for chunks in [1usize, 2, 3, 4, 6, 8, 12, 16] {
            if chunks > 1 && (chunks > groups || rows.data.len() * 4 < 256 << 10) {
                continue;
            }
            let mut got = Vec::new();
            let stats = Stats::of(time_runs(3, runs, || {
                got = lane.run_pipelined(&rows.data, chunks, false)?.labels;
                Ok(())
            })?);
            let wrong = got.iter().zip(reference).filter(|(a, b)| a != b).count();
            line.push_str(&format!(
                " {chunks}:{:.0}{}",
                stats.median_us,
                if wrong > 0 { "!" } else { "" }
            ));
            table.push(json!({
                "input_path": config.input_path, "requested_input_path": path, "config": config, "chunks": chunks,
                "end_to_end": stats, "kernel_one_dispatch": kernel_stats,
                "label_mismatches_vs_cpu_reference": wrong,
            }));
        }
        println!(
            "  {:?}{} ({}x{}): kernel {:?} us, host write {:.0} us, in place {:.0} us; e2e us by chunks:{line}",
            config.input_path,
            match (direct_share, effective_share) {
                (None, _) => String::new(),
                (Some(_), Some(share)) => format!(" direct share {share:.2}"),
                (Some(asked), None) if asked <= 0.0 => " direct share 0.00".into(),
                (Some(_), None) => " (no direct share on this device)".into(),
            },
            config.rows_per_group,
            config.tree_lanes,
            kernel_stats.as_ref().map(|k| k.median_us.round()),
            write.median_us,
            in_place.median_us,
        );
    }
    Ok(table)
}

/// End to end and the median per-dispatch timeline of the whole batch for each dispatch count asked for
/// (`--timeline`, `--chunk-counts`; the chosen count otherwise): `--rounds` rounds of end-to-end runs,
/// the counts alternating within each round, then each count's timelines, with the GPU's moments on
/// the host's clock where the device reads both clocks; labels checked every time.
fn timeline_table(
    workload: Workload<'_>,
    args: &Args,
    chosen: ForestOptions,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let Workload {
        device,
        forest,
        rows,
        reference,
    } = workload;
    let counts = match args.chunk_counts.is_empty() {
        true => vec![ChunkPlan {
            chunks: ForestKernel::new(device, forest, &chosen)?.pipeline_chunks(rows.n_rows),
            tree_lanes: None,
            direct_first: None,
            after_copy: false,
        }],
        false => args.chunk_counts.clone(),
    };
    let mut lanes = Vec::new();
    for &chunks in &counts {
        let options = ForestOptions {
            pipeline_chunks: Some(chunks.chunks),
            tree_lanes: chunks.tree_lanes.or(chosen.tree_lanes),
            direct_rows_first: chunks.direct_first.or(chosen.direct_rows_first),
            direct_after_copy: Some(chunks.after_copy),
            ..chosen
        };
        let kernel = ForestKernel::new(device, forest, &options)?;
        lanes.push((chunks, kernel.config(), kernel.lane(rows.n_rows)?, Vec::new()));
    }
    println!("dispatches (e2e median us, p90, by dispatch count):");
    for round in 1..=args.rounds {
        let mut line = String::new();
        for (chunks, _, lane, rounds) in &mut lanes {
            let (e2e, _, wrong) = time_predict(lane, rows, reference, args.runs)?;
            line.push_str(&round_cell(chunks, &e2e, wrong));
            rounds.push(json!({"round": round, "end_to_end": e2e, "label_mismatches_vs_cpu_reference": wrong}));
        }
        println!("  round {round}:{line}");
    }
    let mut table = Vec::new();
    println!("timelines (us from the batch's start; medians):");
    for (chunks, config, mut lane, rounds) in lanes {
        lane.record_timeline(true)?;
        let mut timelines = Vec::new();
        let mut wrong = 0;
        time_runs(3, args.runs, || {
            let got = lane.predict(&rows.data, false)?;
            wrong += got.labels.iter().zip(reference).filter(|(a, b)| a != b).count();
            timelines.extend(lane.last_timeline().cloned());
            Ok(())
        })?;
        // The warm-up runs' timelines (the first re-records the lists) are not medians' material.
        timelines.drain(..3.min(timelines.len()));
        let median = median_timeline(&timelines);
        match (timelines.is_empty(), median.gpu_origin_uncertainty_us) {
            (true, _) => println!(
                "  {chunks} dispatch(es): no timeline (one dispatch of rows written whole), mismatches {wrong}"
            ),
            (false, Some(within)) => println!(
                "  {chunks} dispatch(es): {:.1} us with the timeline, mismatches {wrong}; GPU moments on the host's clock (+/- {within:.1} us)",
                median.total_us
            ),
            (false, None) => println!(
                "  {chunks} dispatch(es): {:.1} us with the timeline, mismatches {wrong}; GPU moments from the batch's first GPU timestamp (no calibrated clocks)",
                median.total_us
            ),
        }
        // `median_timeline` already moved the GPU moments to the host's clock where it could.
        for (index, chunk) in median.chunks.iter().enumerate() {
            println!(
                "    #{index} {:>6} rows | host: write {:>6.1}..{:>6.1} (DMA rows {:>6.1}, DMA submitted {:>6.1}), dispatch submitted {:>6.1} | gpu: copy {} list {:>6.1} kernel {:>6.1}..{:>6.1}",
                chunk.rows,
                chunk.write_start_us,
                chunk.written_us,
                chunk.staged_written_us,
                chunk.copy_submitted_us,
                chunk.dispatch_submitted_us,
                chunk
                    .copy_gpu_us
                    .map_or("-".to_string(), |(start, end)| format!("{start:>6.1}..{end:>6.1}")),
                chunk.list_start_gpu_us,
                chunk.kernel_gpu_us.0,
                chunk.kernel_gpu_us.1,
            );
        }
        table.push(json!({
            "plan": chunks.to_string(), "chunks": chunks.chunks, "tree_lanes_asked": chunks.tree_lanes, "config": config, "rounds": rounds,
            "timeline_label_mismatches_vs_cpu_reference": wrong, "median_timeline": median,
            "timeline_runs": timelines.len(),
        }));
    }
    Ok(table)
}

/// End to end of the whole batch with the chosen configuration for each combination of direct share and
/// keep-awake time asked for (`--write-shares`, `--awake-us`; each defaults to the chosen value),
/// `--rounds` times, the combinations alternating within each round; labels checked every time.
fn writes_table(workload: Workload<'_>, args: &Args, chosen: ForestOptions) -> anyhow::Result<Vec<serde_json::Value>> {
    let Workload {
        device,
        forest,
        rows,
        reference,
    } = workload;
    let config = ForestKernel::new(device, forest, &chosen)?.config();
    let awake = match args.awake_us.is_empty() {
        true => vec![u64::from(config.writers_awake_us)],
        false => args.awake_us.clone(),
    };
    let shares = match args.write_shares.is_empty() {
        true => vec![config.direct_share],
        false => args.write_shares.clone(),
    };
    let mut lanes = Vec::new();
    for &share in &shares {
        for &a in &awake {
            let options = ForestOptions {
                direct_share: Some(share),
                keep_writers_awake: Some(std::time::Duration::from_micros(a)),
                ..chosen
            };
            let kernel = ForestKernel::new(device, forest, &options)?;
            let chunks = kernel.pipeline_chunks(rows.n_rows);
            lanes.push((share, a, chunks, kernel.lane(rows.n_rows)?));
        }
    }
    let mut table = Vec::new();
    println!("writes (e2e median us, p90; by direct share and keep-awake us):");
    for round in 1..=args.rounds {
        let mut line = String::new();
        for (share, a, chunks, lane) in &mut lanes {
            let (e2e, _, wrong) = time_predict(lane, rows, reference, args.runs)?;
            line.push_str(&round_cell(format_args!("s{share}/a{a}"), &e2e, wrong));
            table.push(json!({
                "round": round, "direct_share": share, "writers_awake_us": a,
                "chunks": chunks, "end_to_end": e2e, "label_mismatches_vs_cpu_reference": wrong,
            }));
        }
        println!("  round {round}:{line}");
    }
    Ok(table)
}

/// One configuration's figure in a round's line: ` name:median(p90)`, marked `!` where labels differed
/// from the CPU reference.
fn round_cell(name: impl std::fmt::Display, e2e: &Stats, wrong: usize) -> String {
    let mark = if wrong > 0 { "!" } else { "" };
    format!(" {name}:{:.0}({:.0}){mark}", e2e.median_us, e2e.p90_us)
}

/// The field-by-field median of timelines of one batch shape (the same dispatches in each).
fn median_timeline(timelines: &[BatchTimeline]) -> BatchTimeline {
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let Some(first) = timelines.first() else {
        return BatchTimeline::default();
    };
    // Where every run placed its GPU moments on the host's clock, each run's are moved there before the
    // medians are taken (a median of moments plus a median of origins could order them as no run did),
    // and the median's origin is 0.
    let placed = timelines.iter().all(|t| t.gpu_origin_us.is_some());
    let shift = |t: &BatchTimeline| if placed { t.gpu_origin_us.unwrap_or(0.0) } else { 0.0 };
    let field = |get: &dyn Fn(&BatchTimeline) -> Option<f64>| median(timelines.iter().filter_map(get).collect());
    let chunks = (0..first.chunks.len())
        .map(|i| {
            let at = |get: fn(&ChunkTimeline) -> f64| field(&|t: &BatchTimeline| t.chunks.get(i).map(get));
            let gpu_at =
                |get: fn(&ChunkTimeline) -> f64| field(&|t: &BatchTimeline| Some(get(t.chunks.get(i)?) + shift(t)));
            let copy = |end: bool| {
                field(&|t: &BatchTimeline| {
                    let copy = t.chunks.get(i)?.copy_gpu_us?;
                    Some(if end { copy.1 } else { copy.0 } + shift(t))
                })
            };
            ChunkTimeline {
                rows: first.chunks[i].rows,
                write_start_us: at(|c| c.write_start_us),
                staged_written_us: at(|c| c.staged_written_us),
                copy_submitted_us: at(|c| c.copy_submitted_us),
                written_us: at(|c| c.written_us),
                dispatch_submitted_us: at(|c| c.dispatch_submitted_us),
                copy_gpu_us: first.chunks[i].copy_gpu_us.map(|_| (copy(false), copy(true))),
                list_start_gpu_us: gpu_at(|c| c.list_start_gpu_us),
                kernel_gpu_us: (gpu_at(|c| c.kernel_gpu_us.0), gpu_at(|c| c.kernel_gpu_us.1)),
            }
        })
        .collect();
    let within = field(&|t: &BatchTimeline| t.gpu_origin_uncertainty_us);
    BatchTimeline {
        total_us: field(&|t: &BatchTimeline| Some(t.total_us)),
        chunks,
        gpu_origin_us: placed.then_some(0.0),
        gpu_origin_uncertainty_us: within.is_finite().then_some(within),
    }
}
