//! One function over several GPUs, in process: rows/s of one forest function served on each device
//! selection (for example one GPU, then both), by closed-loop callers on plain threads
//! (`FunctionHandle::call_blocking_reusing`), for the paper's W1a forest (5788 rows per call) and a
//! wide shallow binary forest (100,000 rows per call). Then one device is declared lost under load:
//! the calls that failed, the other device's answers meanwhile, and the time until the lost device
//! serves again. Labels are checked against the CPU reference. Results in bench/RESULTS.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use serde::Serialize;
use vknf_forest::GpuForest;
use vknf_functions::families::forest::INPUT_PATH_PARAM;
use vknf_functions::{Families, FunctionLoader, FunctionSpec, GpuLoader};
use vknf_runtime::{
    Answer, Call, CallError, DType, DeviceHealth, FunctionHandle, Metrics, Rows, Runtime, RuntimeSettings,
};
use vknf_vulkan::DeviceSelection;

#[derive(Parser, Debug)]
#[command(about = "Throughput of one forest function over one and several GPUs, and the loss of one")]
struct Args {
    /// The paper's tree (shared/paper-rf-tree): W1a is this tree x 150.
    #[arg(long)]
    paper_tree: PathBuf,
    /// Device selections to compare, separated by `;` (each as `vknf serve --devices`).
    #[arg(long, default_value = "0;all")]
    devices: String,
    /// Shapes: `w1a` (5788 rows per call), `wide` (300 trees of depth 12, 80 features, 2 classes,
    /// 100,000 rows per call).
    #[arg(long, value_delimiter = ',', default_value = "w1a,wide")]
    shapes: Vec<String>,
    /// Closed-loop callers (threads), each with one call in flight.
    #[arg(long, default_value_t = 8)]
    callers: usize,
    /// Lanes per function and device.
    #[arg(long, default_value_t = 3)]
    lanes: usize,
    /// Seconds measured per shape and selection.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Run the loss test on the last selection, declaring this device lost (index in the selection).
    #[arg(long)]
    lose_device: Option<usize>,
    /// Probe on the last selection, instead of a loss: while callers run, this device (index in the
    /// selection) is reset over and over (a fresh logical device opened and dropped, as recovery does)
    /// without any lane losing its device: whether the driver's device creation alone slows the others.
    #[arg(long, conflicts_with = "lose_device")]
    churn_device: Option<usize>,
    /// The forest's `vknf.io/input-path` (`direct`, `host-memory`, `staged`); the kernel's choice when
    /// absent.
    #[arg(long)]
    input_path: Option<String>,
    /// Writes the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Shape {
    name: String,
    forest: GpuForest,
    /// The rows of one call, little-endian: every call shares them (no copy per call).
    rows: bytes::Bytes,
    rows_per_call: usize,
    labels: Vec<u32>,
}

#[derive(Serialize)]
struct Throughput {
    shape: String,
    input_path: Option<String>,
    devices: String,
    device_names: Vec<String>,
    rows_per_call: usize,
    calls: u64,
    rows_per_s: f64,
    batches_per_device: Vec<u64>,
}

#[derive(Serialize)]
struct Loss {
    shape: String,
    devices: String,
    lost_device: usize,
    calls_failed: u64,
    calls_answered_while_recovering: u64,
    recovery_ms: f64,
    rows_per_s_before: f64,
    rows_per_s_while_recovering: f64,
    rows_per_s_after: f64,
}

#[derive(Serialize)]
struct Churn {
    shape: String,
    devices: String,
    churned_device: usize,
    resets: u64,
    mean_reset_ms: f64,
    rows_per_s_before: f64,
    rows_per_s_during: f64,
    rows_per_s_after: f64,
    batches_per_device_during: Vec<u64>,
}

#[derive(Serialize, Default)]
struct Report {
    throughput: Vec<Throughput>,
    loss: Vec<Loss>,
    churn: Vec<Churn>,
}

fn shape(name: &str, args: &Args) -> anyhow::Result<Shape> {
    let (forest, rows, rows_per_call) = match name {
        "w1a" => {
            let workload = vknf_forest::paper_workload(&args.paper_tree, 150, 5788, 2021)?;
            (workload.forest.compile()?, workload.rows.data, 5788)
        }
        "wide" => {
            let forest = vknf_testkit::synthetic::random_classifier(80, 2, 300, 12, 2026);
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            let rows = (0..100_000 * 80)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 24) as f32 * 2.4 - 1.2
                })
                .collect();
            (forest, rows, 100_000)
        }
        other => anyhow::bail!("unknown shape {other:?}: w1a or wide"),
    };
    let labels = forest.predict_cpu(&rows, rows_per_call)?.labels;
    let rows: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(Shape {
        name: name.into(),
        forest,
        rows: rows.into(),
        rows_per_call,
        labels,
    })
}

/// Closed-loop callers until `stop`; counts answered and failed calls. The first answer of each caller
/// is checked against the CPU reference.
fn callers(
    function: &FunctionHandle,
    shape: &Shape,
    count: usize,
    stop: &AtomicBool,
    answered: &AtomicU64,
    failed: &AtomicU64,
) -> anyhow::Result<()> {
    let width = shape.forest.n_features as usize;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    let mut answer = Answer::default();
                    let mut checked = false;
                    // Bounded: at most a million calls, whatever `stop` says.
                    for _ in 0..1_000_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let rows = Rows::from_le_bytes(shape.rows.clone(), shape.rows_per_call, width, DType::F32)?;
                        let call = Call::new(rows, 0);
                        match function.call_blocking_reusing(call, answer) {
                            Ok(done) => {
                                if !checked {
                                    anyhow::ensure!(
                                        done.output(0).unwrap().as_u32() == shape.labels.as_slice(),
                                        "labels differ from the CPU reference"
                                    );
                                    checked = true;
                                }
                                answer = done;
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(CallError::DeviceLost(_)) => {
                                answer = Answer::default();
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(CallError::Busy(_)) => {
                                answer = Answer::default();
                                std::thread::sleep(Duration::from_micros(100));
                            }
                            Err(other) => return Err(other.into()),
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| anyhow::anyhow!("a caller panicked"))?)
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let spirv = vknf_kernels::by_name("forest").context("the forest kernel")?.to_vec();
    let selections: Vec<String> = args.devices.split(';').map(str::to_owned).collect();
    let mut report = Report::default();
    for name in &args.shapes {
        let shape = shape(name, &args)?;
        println!(
            "== {} ({} rows per call, {} callers)",
            shape.name, shape.rows_per_call, args.callers
        );
        for (position, selection) in selections.iter().enumerate() {
            let parsed: DeviceSelection = selection.parse()?;
            let loader = Arc::new(GpuLoader::open(false, &parsed, Families::builtin())?);
            let device_names: Vec<String> = loader.devices().into_iter().map(|d| d.name).collect();
            let settings = RuntimeSettings {
                lanes_per_function: args.lanes,
                max_queued_bytes: 1 << 30,
                ..RuntimeSettings::default()
            };
            let runtime = tokio.block_on(async { Runtime::new(loader.clone() as Arc<dyn FunctionLoader>, settings) });
            let spec = FunctionSpec {
                max_batch_rows: Some(shape.rows_per_call),
                params: args
                    .input_path
                    .iter()
                    .map(|path| (INPUT_PATH_PARAM.to_owned(), path.clone()))
                    .collect(),
                ..FunctionSpec::new(&shape.name, "forest", spirv.clone())
            };
            let model: Arc<[u8]> = shape.forest.to_vkf_bytes().into();
            let function = tokio.block_on(runtime.load(spec, Some(model), None))?;
            let batches = |runtime: &Runtime| -> Vec<u64> {
                (0..device_names.len())
                    .map(|d| {
                        runtime
                            .metrics()
                            .device_batches
                            .get_or_create(&Metrics::device_labels(d))
                            .get()
                    })
                    .collect()
            };
            // Warm-up, then the measured run.
            let (stop, answered, failed) = (AtomicBool::new(false), AtomicU64::new(0), AtomicU64::new(0));
            std::thread::scope(|scope| -> anyhow::Result<()> {
                let run = scope.spawn(|| callers(&function, &shape, args.callers, &stop, &answered, &failed));
                std::thread::sleep(Duration::from_secs_f64(0.5));
                let (calls_before, batches_before) = (answered.load(Ordering::Relaxed), batches(&runtime));
                let started = Instant::now();
                std::thread::sleep(Duration::from_secs_f64(args.seconds));
                let calls = answered.load(Ordering::Relaxed) - calls_before;
                let elapsed = started.elapsed().as_secs_f64();
                let batches_per_device: Vec<u64> = batches(&runtime)
                    .iter()
                    .zip(&batches_before)
                    .map(|(now, before)| now - before)
                    .collect();
                stop.store(true, Ordering::Relaxed);
                run.join().map_err(|_| anyhow::anyhow!("callers panicked"))??;
                anyhow::ensure!(
                    failed.load(Ordering::Relaxed) == 0,
                    "calls failed without a device loss"
                );
                let rows_per_s = (calls * shape.rows_per_call as u64) as f64 / elapsed;
                println!(
                    "devices {selection:>6} ({}): {:>8.2} M rows/s, {calls} calls, batches per device {batches_per_device:?}",
                    device_names.join(", "),
                    rows_per_s / 1e6
                );
                report.throughput.push(Throughput {
                    shape: shape.name.clone(),
                    input_path: args.input_path.clone(),
                    devices: selection.clone(),
                    device_names: device_names.clone(),
                    rows_per_call: shape.rows_per_call,
                    calls,
                    rows_per_s,
                    batches_per_device,
                });
                Ok(())
            })?;
            let last = position + 1 == selections.len();
            if let (Some(lost), true) = (args.lose_device, last && device_names.len() > 1) {
                report.loss.push(lose_one(
                    &tokio, &runtime, &loader, &function, &shape, &args, selection, lost,
                )?);
            }
            if let (Some(churned), true) = (args.churn_device, last && device_names.len() > 1) {
                report.churn.push(churn_one(
                    &tokio, &runtime, &loader, &function, &shape, &args, selection, churned,
                )?);
            }
            tokio.block_on(runtime.shutdown());
        }
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        }
    }
    Ok(())
}

/// Declares `lost` lost under load, after a third of the run: counts what failed and how long the device
/// took to serve again.
#[allow(clippy::too_many_arguments)]
fn lose_one(
    tokio: &tokio::runtime::Runtime,
    runtime: &Runtime,
    loader: &GpuLoader,
    function: &FunctionHandle,
    shape: &Shape,
    args: &Args,
    selection: &str,
    lost: usize,
) -> anyhow::Result<Loss> {
    let _entered = tokio.enter();
    let (stop, answered, failed) = (AtomicBool::new(false), AtomicU64::new(0), AtomicU64::new(0));
    let rows = shape.rows_per_call as f64;
    std::thread::scope(|scope| -> anyhow::Result<Loss> {
        let run = scope.spawn(|| callers(function, shape, args.callers, &stop, &answered, &failed));
        std::thread::sleep(Duration::from_secs_f64(0.5));
        let rows_per_s_before = rate_over(&answered, rows, Duration::from_secs_f64(args.seconds / 3.0));
        let at_loss = answered.load(Ordering::Relaxed);
        let lost_at = Instant::now();
        loader
            .device_at(lost)
            .declare_lost("bench-devices: one device made to fail mid-run");
        let deadline = lost_at + Duration::from_secs(60);
        loop {
            let device = &runtime.devices()[lost];
            if device.health == DeviceHealth::Serving && device.resets >= 1 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "device {lost} did not come back within 60 s");
            std::thread::sleep(Duration::from_micros(500));
        }
        let recovery = lost_at.elapsed();
        let during = answered.load(Ordering::Relaxed) - at_loss;
        let rows_per_s_after = rate_over(&answered, rows, Duration::from_secs_f64(args.seconds / 3.0));
        stop.store(true, Ordering::Relaxed);
        run.join().map_err(|_| anyhow::anyhow!("callers panicked"))??;
        let loss = Loss {
            shape: shape.name.clone(),
            devices: selection.into(),
            lost_device: lost,
            calls_failed: failed.load(Ordering::Relaxed),
            calls_answered_while_recovering: during,
            recovery_ms: recovery.as_secs_f64() * 1e3,
            rows_per_s_before,
            rows_per_s_while_recovering: during as f64 * rows / recovery.as_secs_f64(),
            rows_per_s_after,
        };
        println!(
            "device {lost} lost under load: {} calls failed, {} answered while it recovered ({:.1} ms); {:.2} / {:.2} / {:.2} M rows/s before / during / after",
            loss.calls_failed,
            loss.calls_answered_while_recovering,
            loss.recovery_ms,
            loss.rows_per_s_before / 1e6,
            loss.rows_per_s_while_recovering / 1e6,
            loss.rows_per_s_after / 1e6
        );
        Ok(loss)
    })
}

/// Rows per second answered over `window`, counted from `answered`.
fn rate_over(answered: &AtomicU64, rows_per_call: f64, window: Duration) -> f64 {
    let (before, started) = (answered.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(window);
    (answered.load(Ordering::Relaxed) - before) as f64 * rows_per_call / started.elapsed().as_secs_f64()
}

/// Resets `churned` over and over under load (its serving lanes keep their device) and compares the
/// rate before, during and after: the recovery of a lost device opens a fresh device the same way.
#[allow(clippy::too_many_arguments)]
fn churn_one(
    tokio: &tokio::runtime::Runtime,
    runtime: &Runtime,
    loader: &GpuLoader,
    function: &FunctionHandle,
    shape: &Shape,
    args: &Args,
    selection: &str,
    churned: usize,
) -> anyhow::Result<Churn> {
    let _entered = tokio.enter();
    let (stop, answered, failed) = (AtomicBool::new(false), AtomicU64::new(0), AtomicU64::new(0));
    let churning = AtomicBool::new(true);
    let rows = shape.rows_per_call as f64;
    let window = Duration::from_secs_f64(args.seconds / 3.0);
    let batches = || -> Vec<u64> {
        (0..runtime.devices().len())
            .map(|d| {
                runtime
                    .metrics()
                    .device_batches
                    .get_or_create(&Metrics::device_labels(d))
                    .get()
            })
            .collect()
    };
    std::thread::scope(|scope| -> anyhow::Result<Churn> {
        let run = scope.spawn(|| callers(function, shape, args.callers, &stop, &answered, &failed));
        std::thread::sleep(Duration::from_secs_f64(0.5));
        let rows_per_s_before = rate_over(&answered, rows, window);
        let batches_before = batches();
        let resets = scope.spawn(|| -> anyhow::Result<(u64, Duration)> {
            let (mut count, mut spent) = (0u64, Duration::ZERO);
            // Bounded by count as well as by the window.
            while churning.load(Ordering::Relaxed) && count < 10_000 {
                let started = Instant::now();
                FunctionLoader::reset(loader, churned)?;
                spent += started.elapsed();
                count += 1;
            }
            Ok((count, spent))
        });
        let rows_per_s_during = rate_over(&answered, rows, window);
        churning.store(false, Ordering::Relaxed);
        let batches_per_device_during = batches().iter().zip(&batches_before).map(|(a, b)| a - b).collect();
        let (count, spent) = resets
            .join()
            .map_err(|_| anyhow::anyhow!("the resetting thread panicked"))??;
        let rows_per_s_after = rate_over(&answered, rows, window);
        stop.store(true, Ordering::Relaxed);
        run.join().map_err(|_| anyhow::anyhow!("callers panicked"))??;
        anyhow::ensure!(
            failed.load(Ordering::Relaxed) == 0,
            "calls failed while no device was lost"
        );
        let churn = Churn {
            shape: shape.name.clone(),
            devices: selection.into(),
            churned_device: churned,
            resets: count,
            mean_reset_ms: spent.as_secs_f64() * 1e3 / count.max(1) as f64,
            rows_per_s_before,
            rows_per_s_during,
            rows_per_s_after,
            batches_per_device_during,
        };
        println!(
            "device {churned} reset {} times under load ({:.1} ms each), no lane lost: {:.2} / {:.2} / {:.2} M rows/s before / during / after, batches per device during {:?}",
            churn.resets,
            churn.mean_reset_ms,
            churn.rows_per_s_before / 1e6,
            churn.rows_per_s_during / 1e6,
            churn.rows_per_s_after / 1e6,
            churn.batches_per_device_during
        );
        Ok(churn)
    })
}
