//! The soak's summary and its verdict: pass only when no answer was lost or wrong, the server lived
//! and stayed within its memory bound, and no hostile client saw the server misbehave.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::counters::CountersReport;
use super::good::{EXPECTED_ERRORS, GoodReport};
use super::sampler::{Sample, sum_metric};

/// Smallest, last and largest of a sampled quantity.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Range {
    /// At the first sample.
    pub start: u64,
    /// At the last sample.
    pub end: u64,
    /// Largest seen.
    pub max: u64,
}

impl Range {
    fn of(values: impl Iterator<Item = u64>) -> Range {
        let values: Vec<u64> = values.collect();
        Range {
            start: values.first().copied().unwrap_or(0),
            end: values.last().copied().unwrap_or(0),
            max: values.iter().copied().max().unwrap_or(0),
        }
    }
}

/// What happened to the server process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerReport {
    /// Its pid.
    pub pid: u32,
    /// Seconds from start to `/readyz` 200.
    pub ready_after_s: f64,
    /// Its exit status if it exited during the soak (it must not).
    pub died: Option<String>,
    /// Its exit status after SIGTERM at the end (`None`: killed after the timeout).
    pub shutdown_exit: Option<String>,
    /// Seconds the shutdown took.
    pub shutdown_s: f64,
}

/// `/readyz` and `/livez` over the soak.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Probes {
    /// Samples taken.
    pub samples: u64,
    /// `/readyz` 200 (every function serving).
    pub ready: u64,
    /// `/readyz` 503 (a function quarantined, a device being recovered).
    pub not_ready: u64,
    /// `/readyz` unanswered (the ops port at its connection cap under a flood).
    pub unreachable: u64,
    /// `/livez` not 200.
    pub livez_failures: u64,
}

/// The soak's result, written as JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Whether the soak passed.
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub failures: Vec<String>,
    /// Seconds of load.
    pub duration_s: f64,
    /// What the forest was.
    pub workload: String,
    /// The flags the server ran with.
    pub server_flags: Vec<String>,
    /// The server process.
    pub server: ServerReport,
    /// Requests the good clients sent.
    pub good_requests: u64,
    /// Good requests answered (and checked).
    pub good_answered: u64,
    /// Good requests that got neither an answer nor an error frame.
    pub answers_lost: u64,
    /// Good answers whose labels differ from the CPU reference.
    pub wrong_answers: u64,
    /// Good requests answered with an error not in [`EXPECTED_ERRORS`].
    pub unexpected_errors: u64,
    /// The good clients by kind (latency percentiles per request size and protocol).
    pub good: BTreeMap<String, GoodReport>,
    /// The largest p99 of any one-second interval, by kind, microseconds.
    pub worst_interval_p99_us: BTreeMap<String, u64>,
    /// Resident memory, KiB (max: the peak VmHWM).
    pub rss_kib: Range,
    /// The bound peak RSS had to stay under, KiB.
    pub rss_bound_kib: u64,
    /// Threads.
    pub threads: Range,
    /// File descriptors.
    pub fds: Range,
    /// Health probes.
    pub probes: Probes,
    /// `vknf_device_resets_total` at the end.
    pub device_resets: f64,
    /// `vknf_quarantines_total` at the end.
    pub quarantines: f64,
    /// `vknf_quarantines_total` by function at the end (only the drill function should be there).
    pub quarantines_by_function: BTreeMap<String, f64>,
    /// `vknf_memory_peak_bytes` at the end.
    pub budget_peak_bytes: f64,
    /// After every client had gone and the server had been left alone: bytes still charged to the
    /// memory budget (must be 0) and connections still open (must be 0).
    pub after_quiet: BTreeMap<String, f64>,
    /// The selected metrics at the end.
    pub metrics_end: BTreeMap<String, f64>,
    /// What each hostile client did.
    pub hostile: BTreeMap<String, CountersReport>,
}

impl Summary {
    /// Fills the figures drawn from the samples and the good clients' reports.
    pub fn tally(&mut self, samples: &[Sample]) {
        let processes = || samples.iter().filter_map(|s| s.process);
        self.rss_kib = Range::of(processes().map(|p| p.rss_kib));
        self.rss_kib.max = self.rss_kib.max.max(processes().map(|p| p.hwm_kib).max().unwrap_or(0));
        self.threads = Range::of(processes().map(|p| p.threads));
        self.fds = Range::of(processes().map(|p| p.fds));
        self.probes = Probes {
            samples: samples.len() as u64,
            ready: samples.iter().filter(|s| s.readyz == Some(200)).count() as u64,
            not_ready: samples
                .iter()
                .filter(|s| matches!(s.readyz, Some(code) if code != 200))
                .count() as u64,
            unreachable: samples.iter().filter(|s| s.readyz.is_none()).count() as u64,
            livez_failures: samples.iter().filter(|s| !s.livez).count() as u64,
        };
        for sample in samples {
            for (kind, p) in &sample.good {
                let worst = self.worst_interval_p99_us.entry(kind.clone()).or_default();
                *worst = (*worst).max(p.p99_us);
            }
        }
        if let Some(last) = samples.iter().rev().find(|s| !s.metrics.is_empty()) {
            self.metrics_end = last.metrics.clone();
        }
        let end = |name| sum_metric(&self.metrics_end, name).unwrap_or(0.0);
        self.device_resets = end("vknf_device_resets_total");
        self.quarantines = end("vknf_quarantines_total");
        self.quarantines_by_function = self
            .metrics_end
            .iter()
            .filter(|(key, _)| key.starts_with("vknf_quarantines_total{"))
            .filter_map(|(key, value)| {
                let function = key.split("function=\"").nth(1)?.split('"').next()?;
                Some((function.to_owned(), *value))
            })
            .collect();
        self.budget_peak_bytes = end("vknf_memory_peak_bytes");
        self.good_requests = self.good.values().map(|g| g.sent).sum();
        self.good_answered = self.good.values().map(|g| g.answered).sum();
        self.answers_lost = self.good.values().map(|g| g.lost).sum();
        self.wrong_answers = self.good.values().map(|g| g.wrong).sum();
        self.unexpected_errors = self
            .good
            .values()
            .flat_map(|g| &g.errors)
            .filter(|(code, _)| !expected_error(code))
            .map(|(_, n)| n)
            .sum();
    }

    /// Decides pass or fail; `drill` names the drill function when it ran (it must have been
    /// quarantined, and no other function may have been).
    pub fn judge(&mut self, drill: Option<&str>) {
        let mut failures = Vec::new();
        if let Some(status) = &self.server.died {
            failures.push(format!("the server died during the soak: {status}"));
        }
        if self.answers_lost > 0 {
            failures.push(format!("{} answers lost", self.answers_lost));
        }
        if self.wrong_answers > 0 {
            failures.push(format!("{} wrong answers", self.wrong_answers));
        }
        if self.unexpected_errors > 0 {
            failures.push(format!("{} unexpected errors to good clients", self.unexpected_errors));
        }
        if self.good_answered == 0 {
            failures.push("no good request was answered".into());
        }
        if self.rss_kib.max > self.rss_bound_kib {
            failures.push(format!(
                "peak RSS {} MiB over the bound of {} MiB",
                self.rss_kib.max >> 10,
                self.rss_bound_kib >> 10
            ));
        }
        for (name, counters) in &self.hostile {
            if counters.anomalies > 0 {
                failures.push(format!("{name}: {} anomalies", counters.anomalies));
            }
        }
        if let Some(drill) = drill {
            let drilled = self.quarantines_by_function.get(drill).copied().unwrap_or(0.0);
            if drilled < 1.0 {
                failures.push(
                    "the drill function was never quarantined (its kernel met its deadline: raise --busy-steps)".into(),
                );
            }
        }
        for (function, count) in &self.quarantines_by_function {
            if Some(function.as_str()) != drill && *count > 0.0 {
                failures.push(format!(
                    "{function}, an innocent function, was quarantined {count} times"
                ));
            }
        }
        for (what, value) in &self.after_quiet {
            if *value != 0.0 {
                failures.push(format!("after the clients had gone, {what} = {value} (should be 0)"));
            }
        }
        if self.server.died.is_none() && self.server.shutdown_exit.as_deref() != Some("exit status: 0") {
            failures.push(format!(
                "the server did not exit cleanly on SIGTERM: {}",
                self.server
                    .shutdown_exit
                    .as_deref()
                    .unwrap_or("killed after the timeout")
            ));
        }
        self.passed = failures.is_empty();
        self.failures = failures;
    }
}

/// Whether a good client's error is one the soak expects under attack.
fn expected_error(code: &str) -> bool {
    EXPECTED_ERRORS.iter().any(|e| code.starts_with(e))
        || (code.starts_with("connection closed") && code.contains("BUSY"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::good::Percentiles;
    use crate::soak::sampler::ProcessSample;

    fn sample(t: f64, rss: u64, hwm: u64, metrics: &[(&str, f64)]) -> Sample {
        Sample {
            t_s: t,
            process: Some(ProcessSample {
                rss_kib: rss,
                hwm_kib: hwm,
                threads: 20,
                fds: 30,
            }),
            readyz: Some(200),
            livez: true,
            metrics: metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            good: [(
                "binary_1_row".to_owned(),
                Percentiles {
                    count: 10,
                    p99_us: rss,
                    ..Percentiles::default()
                },
            )]
            .into(),
        }
    }

    fn passing() -> Summary {
        let mut summary = Summary {
            rss_bound_kib: 1 << 20,
            server: ServerReport {
                shutdown_exit: Some("exit status: 0".into()),
                ..ServerReport::default()
            },
            after_quiet: [("vknf_memory_used_bytes".to_owned(), 0.0)].into(),
            ..Summary::default()
        };
        summary.good.insert(
            "binary_1_row".into(),
            GoodReport {
                sent: 100,
                answered: 97,
                errors: [("BUSY".to_owned(), 2), ("DEVICE_LOST".to_owned(), 1)].into(),
                ..GoodReport::default()
            },
        );
        let samples = [
            sample(0.0, 1000, 1000, &[]),
            sample(
                1.0,
                5000,
                9000,
                &[("vknf_quarantines_total{function=\"default/busy\"}", 2.0)],
            ),
            sample(2.0, 3000, 9000, &[]),
        ];
        summary.tally(&samples);
        summary
    }

    #[test]
    fn a_clean_soak_passes_with_its_figures_drawn_from_the_samples() {
        let mut summary = passing();
        summary.judge(Some("default/busy"));
        assert!(summary.passed, "{:?}", summary.failures);
        assert_eq!(
            summary.rss_kib,
            Range {
                start: 1000,
                end: 3000,
                max: 9000
            }
        );
        assert_eq!(summary.quarantines, 2.0, "the last scrape that answered");
        assert_eq!(summary.quarantines_by_function["default/busy"], 2.0);
        assert_eq!((summary.good_requests, summary.good_answered), (100, 97));
        assert_eq!(summary.worst_interval_p99_us["binary_1_row"], 5000);
    }

    /// What a failure must say, and how to cause it.
    type Breakage = (&'static str, fn(&mut Summary));

    #[test]
    fn lost_wrong_unexpected_and_over_bound_each_fail() {
        let cases: [Breakage; 9] = [
            ("answers lost", |s| s.good.get_mut("binary_1_row").unwrap().lost = 1),
            ("wrong answers", |s| s.good.get_mut("binary_1_row").unwrap().wrong = 1),
            ("unexpected errors", |s| {
                s.good
                    .get_mut("binary_1_row")
                    .unwrap()
                    .errors
                    .insert("INTERNAL".into(), 1);
            }),
            ("over the bound", |s| s.rss_bound_kib = 8000),
            ("died", |s| s.server.died = Some("signal: 9".into())),
            ("anomalies", |s| {
                s.hostile.insert(
                    "slowloris".into(),
                    CountersReport {
                        anomalies: 1,
                        ..CountersReport::default()
                    },
                );
            }),
            ("should be 0", |s| {
                s.after_quiet.insert("vknf_connections".into(), 3.0);
            }),
            ("SIGTERM", |s| s.server.shutdown_exit = None),
            ("innocent", |s| {
                s.metrics_end
                    .insert("vknf_quarantines_total{function=\"default/forest\"}".into(), 1.0);
            }),
        ];
        for (expected, break_it) in cases {
            let mut summary = passing();
            break_it(&mut summary);
            let samples = [sample(0.0, 1000, 1000, &[]), sample(1.0, 5000, 9000, &[])];
            summary.tally(&samples);
            summary.judge(Some("default/busy"));
            assert!(!summary.passed, "{expected}");
            assert!(
                summary.failures.iter().any(|f| f.contains(expected)),
                "{expected}: {:?}",
                summary.failures
            );
        }
    }

    #[test]
    fn a_drill_that_never_quarantined_fails() {
        let mut summary = passing();
        summary.metrics_end.clear();
        summary.tally(&[]);
        summary.judge(Some("default/busy"));
        assert!(summary.failures.iter().any(|f| f.contains("never quarantined")));
        // Another function's quarantine does not count as the drill's.
        summary.metrics_end = [("vknf_quarantines_total{function=\"default/forest\"}".to_owned(), 1.0)].into();
        summary.tally(&[]);
        summary.judge(Some("default/busy"));
        assert!(summary.failures.iter().any(|f| f.contains("never quarantined")));
        assert!(
            summary
                .failures
                .iter()
                .any(|f| f.contains("default/forest, an innocent function"))
        );
    }

    #[test]
    fn busy_at_the_connection_limit_is_expected_other_closes_are_not() {
        assert!(expected_error("BUSY"));
        assert!(expected_error(
            "connection closed: server error BUSY: at the connection limit"
        ));
        assert!(!expected_error("connection closed: server error INTERNAL: x"));
        assert!(!expected_error("connect failed"));
    }
}
