//! Draws a comparison chart from the JSON results of a GPU run: by default the W1 chart
//! (bench/results/w1.svg); `--workloads w1a,deep,wide,tiny` with the shapes run's directory draws the
//! named shapes (bench/results/shapes/shapes.svg).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use plotters::prelude::*;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// Directory with w1a_vknf.json, w1a_baselines.json, w1b_vknf.json, w1b_baselines.json.
    #[arg(default_value = "bench/results")]
    results: PathBuf,
    /// Output SVG.
    #[arg(long, default_value = "bench/results/w1.svg")]
    output: PathBuf,
    /// Workloads (one panel each), by file prefix.
    #[arg(long, value_delimiter = ',', default_value = "w1a,w1b")]
    workloads: Vec<String>,
    /// TrueType font for the labels.
    #[arg(long, default_value = FONT)]
    font: PathBuf,
}

fn median(value: &Value) -> Option<f64> {
    value.get("median_us").and_then(Value::as_f64)
}

/// (system, microseconds) bars of one workload.
fn bars(args: &Args, workload: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let read = |name: String| -> anyhow::Result<Value> {
        let path = args.results.join(&name);
        Ok(serde_json::from_str(
            &std::fs::read_to_string(&path).with_context(|| path.display().to_string())?,
        )?)
    };
    let vknf = read(format!("{workload}_vknf.json"))?;
    let base = read(format!("{workload}_baselines.json"))?;
    // Runs with `predict` (the configuration vknf chooses) report that; older runs the best of the sweep.
    let best = match vknf.get("predict").and_then(|p| p.get("chosen")) {
        Some(chosen) => chosen,
        None => vknf["gpu"]
            .as_array()
            .context("no GPU results")?
            .iter()
            .min_by(|a, b| {
                median(&a["end_to_end"])
                    .unwrap_or(f64::MAX)
                    .total_cmp(&median(&b["end_to_end"]).unwrap_or(f64::MAX))
            })
            .context("no GPU results")?,
    };
    let mut out = vec![];
    let mut push = |name: &str, v: Option<f64>| {
        if let Some(v) = v {
            out.push((name.to_string(), v));
        }
    };
    push("scikit-learn, 1 core", median(&base["sklearn_one_core"]));
    push("scikit-learn, 16 cores", median(&base["sklearn_all_cores"]));
    push("ONNX Runtime CPU", median(&base["onnxruntime_cpu"]));
    push("vknf CPU reference", median(&vknf["cpu_reference"]));
    push("Hummingbird torch CUDA", median(&base["hummingbird_torch_cuda"]));
    // The previous commit's binary on the same rows, same call (bench/run_gpu_shapes.sh).
    if let Ok(old) = read(format!("{workload}_old.json")) {
        if let Some(first) = old["gpu"].get(0) {
            push("vknf previous binary, end to end", median(&first["end_to_end"]));
        }
    }
    match vknf.get("predict").and_then(Value::as_object) {
        // One bar per distinct way `predict` ran: one dispatch (the configuration chosen now) and
        // pipelined chunks (measured, slower).
        Some(entries) => {
            for entry in entries.values() {
                let chunks = entry["chunks"].as_u64().unwrap_or(1);
                if chunks > 1 {
                    push(
                        &format!("vknf GPU e2e, {chunks} pipelined chunks"),
                        median(&entry["end_to_end"]),
                    );
                }
            }
            // The one-dispatch run of the chosen configuration; where `chosen` was pipelined when the
            // run was made, `previous-default` is that same one-dispatch configuration.
            let one_dispatch = ["chosen", "previous-default"]
                .iter()
                .filter_map(|name| entries.get(*name))
                .find(|entry| entry["chunks"].as_u64().unwrap_or(1) <= 1);
            push(
                "vknf GPU end to end",
                one_dispatch.and_then(|e| median(&e["end_to_end"])),
            );
        }
        None => push("vknf GPU end to end", median(&best["end_to_end"])),
    }
    push("vknf GPU kernel", median(&best["kernel"]));
    push("PCIe copy of the input (floor)", median(&base["pinned_copy_floor"]));
    Ok(out)
}

/// A panel's title from the vknf report: the workload's shape.
fn title(args: &Args, workload: &str) -> String {
    let path = args.results.join(format!("{workload}_vknf.json"));
    let Some(report) = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
    else {
        return workload.to_string();
    };
    let field = |name: &str| report[name].as_u64().unwrap_or(0);
    format!(
        "{}: {} trees, {} rows x {} features, {} classes (median, log scale)",
        report["workload"].as_str().unwrap_or(workload),
        field("trees"),
        field("rows"),
        field("features"),
        field("outputs"),
    )
}

/// Where the labels' font comes from: DejaVu Sans, which the README's set-up installs (Debian's
/// fonts-dejavu-core). Without a font plotters cannot measure text, and fails with FontUnavailable.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers [`FONT`] (or `--font`) as plotters' "sans-serif".
fn register_font(path: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("{} (install fonts-dejavu-core)", path.display()))?;
    // plotters keeps a registered font for the process's lifetime.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a font plotters can read", path.display()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    register_font(&args.font)?;
    let root = SVGBackend::new(&args.output, (1000, 360 * args.workloads.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((args.workloads.len(), 1));
    for (workload, panel) in args.workloads.iter().zip(panels.iter()) {
        let data = bars(&args, workload)?;
        let n = data.len();
        let mut chart = ChartBuilder::on(panel)
            .caption(title(&args, workload), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(230)
            .build_cartesian_2d((1f64..1e7f64).log_scale(), (0..n).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("microseconds")
            .y_label_formatter(&|y| match y {
                SegmentValue::CenterOf(i) => data.get(*i).map(|d| d.0.clone()).unwrap_or_default(),
                _ => String::new(),
            })
            .draw()?;
        chart.draw_series(data.iter().enumerate().map(|(i, (name, value))| {
            let color = if name.starts_with("vknf GPU") {
                RGBColor(200, 60, 40)
            } else {
                RGBColor(70, 110, 170)
            };
            let mut bar = Rectangle::new(
                [(1.0, SegmentValue::Exact(i)), (*value, SegmentValue::Exact(i + 1))],
                color.filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        }))?;
        chart.draw_series(data.iter().enumerate().map(|(i, (_, value))| {
            Text::new(
                format!("{:.0} us", value),
                (*value * 1.1, SegmentValue::CenterOf(i)),
                ("sans-serif", 13),
            )
        }))?;
    }
    root.present()?;
    println!("wrote {}", args.output.display());
    Ok(())
}
