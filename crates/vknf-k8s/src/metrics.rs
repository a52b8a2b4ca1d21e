//! Prometheus metrics of the agent and the watchdog (prefix `vknf_agent`), served next to the
//! server's own on the agent's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming an error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// What failed: `watch`, `model_fetch`, `render`, `state_dir`, `slice`, `status`, `event`,
    /// `lease`, `watchdog`.
    pub kind: String,
}

/// Labels naming a cold-start phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `watch_delay`, `model_fetch`, `validation`, `load`, `probe` or `total`.
    pub phase: String,
}

/// Labels naming a function state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `pending`, `serving`, `failed` or `draining`.
    pub state: String,
}

/// Labels naming a watched resource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// `services`, `endpointslices`, `endpoints` or `configmaps`.
    pub resource: String,
}

fn seconds_histogram() -> Histogram {
    // 100 µs .. ~27 min
    Histogram::new(exponential_buckets(1e-4, 2.0, 24))
}

/// Every metric of the agent.
#[derive(Clone)]
pub struct AgentMetrics {
    /// Reconcile passes run.
    pub reconciles: Counter,
    /// Failures, by kind (each is retried).
    pub errors: Family<ErrorLabels, Counter>,
    /// Watch events received, by resource.
    pub watch_events: Family<ResourceLabels, Counter>,
    /// Seconds from a function's ADDED event to its port answering, by phase.
    pub cold_start: Family<PhaseLabels, Histogram>,
    /// Functions on this host, by state.
    pub functions: Family<StateLabels, Gauge>,
    /// Successful renewals of the host Lease.
    pub lease_renewals: Counter,
    /// Whether this process leads the watchdog (0 or 1).
    pub watchdog_leader: Gauge,
    /// Endpoints the watchdog marked not ready because their host's Lease expired.
    pub watchdog_marked: Counter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            reconciles: Counter::default(),
            errors: Family::default(),
            watch_events: Family::default(),
            cold_start: Family::new_with_constructor(seconds_histogram),
            functions: Family::default(),
            lease_renewals: Counter::default(),
            watchdog_leader: Gauge::default(),
            watchdog_marked: Counter::default(),
        }
    }
}

impl AgentMetrics {
    /// Registers every metric under `vknf_agent`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("vknf_agent");
        r.register("reconciles", "Reconcile passes run", self.reconciles.clone());
        r.register("errors", "Failures by kind; each is retried", self.errors.clone());
        r.register(
            "watch_events",
            "Watch events received by resource",
            self.watch_events.clone(),
        );
        r.register(
            "cold_start_seconds",
            "Seconds from a function's ADDED event to its port answering, by phase",
            self.cold_start.clone(),
        );
        r.register("functions", "Functions on this host by state", self.functions.clone());
        r.register(
            "lease_renewals",
            "Renewals of the host Lease",
            self.lease_renewals.clone(),
        );
        r.register(
            "watchdog_leader",
            "1 while this process leads the watchdog",
            self.watchdog_leader.clone(),
        );
        r.register(
            "watchdog_marked_not_ready",
            "Endpoints marked not ready because their host's Lease expired",
            self.watchdog_marked.clone(),
        );
    }

    /// Counts one failure of `kind`.
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&ErrorLabels { kind: kind.to_owned() }).inc();
    }

    /// Failures of `kind` so far.
    pub fn error_count(&self, kind: &str) -> u64 {
        self.errors.get_or_create(&ErrorLabels { kind: kind.to_owned() }).get()
    }

    /// Records one phase of a cold start.
    pub fn observe_phase(&self, phase: &str, seconds: f64) {
        self.cold_start
            .get_or_create(&PhaseLabels {
                phase: phase.to_owned(),
            })
            .observe(seconds);
    }

    /// Sets the number of functions in `state`.
    pub fn set_functions(&self, state: &str, count: usize) {
        self.functions
            .get_or_create(&StateLabels {
                state: state.to_owned(),
            })
            .set(count as i64);
    }
}

/// Encodes a registry in OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// Joins two OpenMetrics documents into one (a document has exactly one final `# EOF`).
pub fn concat_openmetrics(first: &str, second: &str) -> String {
    let first = first.trim_end().strip_suffix("# EOF").unwrap_or(first.trim_end());
    format!("{}{second}", first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_registries_appear_in_one_document_with_one_eof() {
        let metrics = AgentMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.reconciles.inc();
        metrics.error("slice");
        metrics.observe_phase("total", 0.25);
        let server = "# HELP vknf_requests Requests.\n# TYPE vknf_requests counter\nvknf_requests_total 3\n# EOF\n";
        let text = concat_openmetrics(server, &encode(&registry));
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.trim_end().ends_with("# EOF"));
        assert!(text.contains("vknf_requests_total 3"));
        assert!(text.contains("vknf_agent_reconciles_total 1"));
        assert!(text.contains("vknf_agent_errors_total{kind=\"slice\"} 1"));
        assert!(text.contains("vknf_agent_cold_start_seconds_count{phase=\"total\"} 1"));
        assert_eq!(metrics.error_count("slice"), 1);
    }
}
