//! Once a second: the server's memory, threads and descriptors from `/proc`, its `/readyz` and
//! `/livez`, and selected `/metrics` values.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::good::Percentiles;
use super::net::{Dialer, http_once};

/// The metric families sampled (prefixes of their names).
pub const SAMPLED_METRICS: [&str; 13] = [
    "vknf_quarantines",
    "vknf_device_resets",
    "vknf_device_losses",
    "vknf_device_up",
    "vknf_memory_used_bytes",
    "vknf_memory_peak_bytes",
    "vknf_memory_category_bytes",
    "vknf_memory_refusals",
    "vknf_connections",
    "vknf_refused_connections",
    "vknf_queued_bytes",
    "vknf_errors",
    "vknf_live_lanes",
];

/// What `/proc/PID` says of the server.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessSample {
    /// Resident memory (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident memory so far (VmHWM), KiB.
    pub hwm_kib: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub fds: u64,
}

impl ProcessSample {
    /// Reads `/proc/PID`; `None` once the process is gone.
    pub fn read(pid: u32) -> Option<ProcessSample> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
        Some(ProcessSample {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            threads: field("Threads:"),
            fds,
        })
    }
}

/// One line of the time series.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Seconds since the soak started.
    pub t_s: f64,
    /// The process, when it was still there.
    pub process: Option<ProcessSample>,
    /// `/readyz`: 200 or 503; `None` when the ops port did not answer (its connection cap, under a flood).
    pub readyz: Option<u16>,
    /// `/livez` answered 200.
    pub livez: bool,
    /// Selected metrics (`name{labels}` to value); empty when `/metrics` did not answer.
    pub metrics: BTreeMap<String, f64>,
    /// The good clients' answers and latencies since the previous sample, by kind.
    pub good: BTreeMap<String, Percentiles>,
}

impl Sample {
    /// The sum of the sampled metric `name` over its label sets (`None` when not scraped).
    pub fn metric_sum(&self, name: &str) -> Option<f64> {
        sum_metric(&self.metrics, name)
    }
}

/// The sum of `name` (exactly, or with labels) over `metrics`; `None` when absent.
pub fn sum_metric(metrics: &BTreeMap<String, f64>, name: &str) -> Option<f64> {
    let mut found = None;
    for (key, value) in metrics {
        let family = key.split('{').next().unwrap_or(key);
        if family == name {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// The samples of the ops endpoint at `ops` (probes retried briefly: under an ops flood the port
/// closes connections beyond its cap).
pub async fn probe(dialer: &Dialer, ops: SocketAddr) -> (Option<u16>, bool, BTreeMap<String, f64>) {
    let timeout = Duration::from_millis(900);
    let attempt = |path: &'static str| async move {
        for _ in 0..3 {
            if let Ok(response) = http_once(dialer, ops, path, timeout).await {
                return Some(response);
            }
        }
        None
    };
    let (ready, live, metrics) = tokio::join!(attempt("/readyz"), attempt("/livez"), attempt("/metrics"));
    let metrics = metrics
        .filter(|r| r.status == 200)
        .map(|r| parse_metrics(&String::from_utf8_lossy(&r.body)))
        .unwrap_or_default();
    (ready.map(|r| r.status), live.is_some_and(|r| r.status == 200), metrics)
}

/// The samples of the families in [`SAMPLED_METRICS`] from an OpenMetrics document.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let family = key.split('{').next()?;
            if family.ends_with("_bucket") || family.ends_with("_created") {
                return None;
            }
            if !SAMPLED_METRICS.iter().any(|prefix| family.starts_with(prefix)) {
                return None;
            }
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selected_families_are_parsed_and_summed_over_labels() {
        let text = "# TYPE vknf_quarantines counter\n\
                    vknf_quarantines_total{function=\"default/busy\"} 2\n\
                    vknf_quarantines_total{function=\"default/other\"} 1\n\
                    vknf_memory_used_bytes 4096\n\
                    vknf_request_latency_seconds_bucket{le=\"0.1\"} 5\n\
                    vknf_requests_total{function=\"f\"} 9\n# EOF\n";
        let metrics = parse_metrics(text);
        assert_eq!(sum_metric(&metrics, "vknf_quarantines_total"), Some(3.0));
        assert_eq!(sum_metric(&metrics, "vknf_memory_used_bytes"), Some(4096.0));
        assert_eq!(
            sum_metric(&metrics, "vknf_requests_total"),
            None,
            "not a sampled family"
        );
        assert_eq!(metrics.len(), 3);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let sample = ProcessSample::read(std::process::id()).unwrap();
        assert!(sample.rss_kib > 0 && sample.threads > 0 && sample.fds > 0);
    }
}
