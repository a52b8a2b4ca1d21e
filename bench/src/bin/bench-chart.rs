//! Draws the W1 comparison chart (bench/results/w1.svg) from the JSON results of a GPU run.

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
    let gpu = vknf["gpu"].as_array().context("no GPU results")?;
    let best = gpu
        .iter()
        .min_by(|a, b| {
            median(&a["end_to_end"])
                .unwrap_or(f64::MAX)
                .total_cmp(&median(&b["end_to_end"]).unwrap_or(f64::MAX))
        })
        .context("no GPU results")?;
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
    push("vknf GPU end to end", median(&best["end_to_end"]));
    push("vknf GPU kernel", median(&best["kernel"]));
    push("PCIe copy of the input (floor)", median(&base["pinned_copy_floor"]));
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workloads = [
        ("w1a", "W1a: the paper's tree x150"),
        ("w1b", "W1b: scikit-learn forest, 150 trees"),
    ];
    let root = SVGBackend::new(&args.output, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 1));
    for ((workload, title), panel) in workloads.iter().zip(panels.iter()) {
        let data = bars(&args, workload)?;
        let n = data.len();
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{title}: 5788 rows x 300 features, 198 classes (median, log scale)"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(230)
            .build_cartesian_2d((10f64..1e6f64).log_scale(), (0..n).into_segmented())?;
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
                [(10.0, SegmentValue::Exact(i)), (*value, SegmentValue::Exact(i + 1))],
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
