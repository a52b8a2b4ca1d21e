//! Shared helpers of the benchmark binaries: timing statistics and the device to measure.

use std::time::Instant;

use serde::Serialize;

pub mod soak;

/// Summary statistics of repeated measurements, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Number of measurements.
    pub runs: usize,
    /// Median.
    pub median_us: f64,
    /// 10th percentile.
    pub p10_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Fastest run.
    pub min_us: f64,
}

impl Stats {
    /// Statistics of `samples` (microseconds).
    pub fn of(mut samples: Vec<f64>) -> Stats {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Stats {
            runs: samples.len(),
            median_us: at(0.5),
            p10_us: at(0.1),
            p90_us: at(0.9),
            p99_us: at(0.99),
            min_us: samples[0],
        }
    }
}

/// Runs `f` `warmup` times unmeasured, then `runs` times, returning microseconds per run.
pub fn time_runs(warmup: usize, runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        f()?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

/// Opens the instance and the device chosen by `selector` (or `VKNF_DEVICE`, or the best one).
pub fn open_device(selector: Option<&str>) -> anyhow::Result<(vknf_vulkan::Instance, vknf_vulkan::Device)> {
    let instance = vknf_vulkan::Instance::new(&vknf_vulkan::InstanceOptions::default())?;
    let selector = match selector {
        Some(text) => text.parse()?,
        None => vknf_vulkan::DeviceSelector::from_env()?,
    };
    let device = vknf_vulkan::Device::select(&instance, &selector)?;
    Ok((instance, device))
}
