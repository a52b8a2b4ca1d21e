//! The paper's workload W1 (150 trees, 5788 rows, 300 features, 198 classes) on vknf: the GPU kernel
//! end to end (host rows in, labels out, copies included) and kernel alone (GPU timestamps), over a
//! sweep of kernel configurations, next to vknf's multi-threaded CPU reference.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use vknf_bench::{Stats, open_device, time_runs};
use vknf_forest::{GpuForest, ImportOptions, Rows};
use vknf_functions::{ForestKernel, ForestOptions, InputPath};

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
    /// Write vknf's GPU labels (best configuration) as .npy (int64 class indices).
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
    Ok(("W1b: scikit-learn forest".into(), forest, rows, depth))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (name, forest, rows, mean_depth) = load(&args)?;
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
    let mut configurations = vec![ForestOptions::default()];
    if args.sweep {
        for input_path in [InputPath::Staged, InputPath::Direct] {
            for stage_input in [true, false] {
                for rows_per_group in [8, 16, 32, 64] {
                    for tree_lanes in [2, 4, 8, 16, 32] {
                        configurations.push(ForestOptions {
                            rows_per_group: Some(rows_per_group),
                            tree_lanes: Some(tree_lanes),
                            stage_input: Some(stage_input),
                            input_path: Some(input_path),
                            ..ForestOptions::default()
                        });
                    }
                }
            }
        }
    }
    let mut results = Vec::new();
    let mut best: Option<(f64, Vec<u32>)> = None;
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
        // End to end: host rows in (copied into the lane), GPU, labels out.
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
        if config.input_path == InputPath::Direct {
            for chunks in [2usize, 4, 8] {
                let mut got = Vec::new();
                let stats = Stats::of(time_runs(3, args.runs, || {
                    got = lane.run_pipelined(&rows.data, chunks, false)?.labels;
                    Ok(())
                })?);
                let wrong = got.iter().zip(&reference.labels).filter(|(a, b)| a != b).count();
                println!(
                    "    pipelined, {chunks} chunks: e2e {:.1} us, label mismatches {wrong}",
                    stats.median_us
                );
                pipelined.insert(
                    chunks.to_string(),
                    json!({"end_to_end": stats, "label_mismatches_vs_cpu_reference": wrong}),
                );
            }
        }
        let mismatches = labels.iter().zip(&reference.labels).filter(|(a, b)| a != b).count();
        println!(
            "{:?}: e2e {:.1} us, in place {:.1} us, kernel {:?} us, label mismatches vs CPU {}",
            config,
            e2e.median_us,
            in_place.median_us,
            kernel_stats.as_ref().map(|k| k.median_us.round()),
            mismatches
        );
        if best.as_ref().is_none_or(|(t, _)| e2e.median_us < *t) {
            best = Some((e2e.median_us, labels.clone()));
        }
        results.push(json!({
            "config": config, "end_to_end": e2e, "in_place": in_place, "kernel": kernel_stats, "pipelined": pipelined,
            "label_mismatches_vs_cpu_reference": mismatches,
        }));
    }
    let small_batches = if args.small_batches {
        small_batch_table(&device, &forest, &rows, &reference.labels, args.runs)?
    } else {
        Vec::new()
    };
    if let (Some(path), Some((_, labels))) = (&args.write_labels, &best) {
        let bytes: Vec<u8> = labels.iter().flat_map(|l| (*l as i64).to_le_bytes()).collect();
        write_npy(path, "<i8", &[labels.len()], &bytes)?;
    }
    let report = json!({
        "workload": name,
        "device": device.info().name,
        "driver": device.info().driver_info,
        "trees": forest.n_trees, "nodes": n_nodes, "bytes_per_node": forest.node_format.words() * 4,
        "features": forest.n_features, "outputs": forest.n_outputs, "rows": rows.n_rows,
        "max_depth": forest.max_depth, "mean_depth": mean_depth,
        "input_bytes": rows.data.len() * 4,
        "cpu_reference": cpu,
        "cpu_threads": std::thread::available_parallelism()?.get(),
        "gpu": results,
        "small_batches": small_batches,
        "finished_at_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// Latency of small batches (the server's one-row requests) on the bulk pipeline and on the
/// small-batch one (one row per workgroup, a thread per tree).
fn small_batch_table(
    device: &vknf_vulkan::Device,
    forest: &GpuForest,
    rows: &Rows,
    reference: &[u32],
    runs: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let nf = forest.n_features as usize;
    let mut table = Vec::new();
    for (name, small_batch_rows) in [("bulk", Some(0)), ("small-batch", Some(usize::MAX))] {
        let kernel = ForestKernel::new(
            device,
            forest,
            &ForestOptions {
                small_batch_rows,
                ..ForestOptions::default()
            },
        )?;
        let mut lane = kernel.lane(rows.n_rows)?;
        for n in [
            1usize,
            2,
            4,
            8,
            16,
            32,
            64,
            128,
            256,
            512,
            1024,
            2048,
            4096,
            rows.n_rows,
        ]
        .into_iter()
        .filter(|n| *n <= rows.n_rows)
        {
            let mut kernel_us = Vec::new();
            let mut labels = Vec::new();
            let e2e = Stats::of(time_runs(20, if n > 256 { runs } else { runs.max(200) }, || {
                lane.write_rows(0, &rows.data[..n * nf])?;
                labels = lane.run(n, false)?.labels;
                if let Some(ns) = lane.last_kernel_ns() {
                    kernel_us.push(ns / 1e3);
                }
                Ok(())
            })?);
            let kernel_stats = (!kernel_us.is_empty()).then(|| Stats::of(kernel_us));
            let wrong = labels.iter().zip(reference).filter(|(a, b)| a != b).count();
            println!(
                "  {name:>11} {n:>3} rows: e2e median {:.1} us p99 {:.1} us, kernel {:?} us, mismatches {wrong}",
                e2e.median_us,
                e2e.p99_us,
                kernel_stats.as_ref().map(|k| (k.median_us * 10.0).round() / 10.0),
            );
            table.push(json!({
                "pipeline": name, "rows": n, "end_to_end": e2e, "kernel": kernel_stats,
                "label_mismatches_vs_cpu_reference": wrong,
            }));
        }
    }
    Ok(table)
}
