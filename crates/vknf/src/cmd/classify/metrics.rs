//! Prometheus metrics of `vknf classify`: decisions per label and kind (early or final), and the
//! flow table's state. Served on `--metrics-addr` by vknf-server's operations endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vknf_flow::Stats;

/// Label set of the decision counter: `label` (the class) and `decision` (`early` or `final`).
type DecisionLabels = Vec<(&'static str, String)>;

/// The command's metrics.
#[derive(Clone, Default)]
pub struct ClassifyMetrics {
    decisions: Family<DecisionLabels, Counter>,
    active_flows: Gauge,
    evicted_flows: Gauge,
    dropped_frames: Gauge,
    frames: Gauge,
}

impl ClassifyMetrics {
    /// Registers the metrics under the `vknf_classify` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("vknf_classify");
        sub.register(
            "flows",
            "Flows classified, by label and decision (early: after the first N records; final: at flow end)",
            self.decisions.clone(),
        );
        sub.register(
            "flow_table_active_flows",
            "Flows open in the flow table",
            self.active_flows.clone(),
        );
        sub.register(
            "flow_table_evicted_flows",
            "Flows evicted because the flow table was full, since the start",
            self.evicted_flows.clone(),
        );
        sub.register(
            "flow_table_dropped_frames",
            "Frames dropped before the flow table (not TCP, malformed, fragments, unsupported link, kernel drops), since the start",
            self.dropped_frames.clone(),
        );
        sub.register("frames", "Frames read, since the start", self.frames.clone());
    }

    /// Counts one decision.
    pub fn decided(&self, label: &str, decision: &'static str) {
        self.decisions
            .get_or_create(&vec![("label", label.to_owned()), ("decision", decision.to_owned())])
            .inc();
    }

    /// Sets the flow-table gauges from the counters of every source read so far (`done`) plus the
    /// one being read (`current`).
    pub fn flow_table(&self, done: &Stats, current: &Stats) {
        let mut total = done.clone();
        total.add(current);
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let active = total.flows_created.saturating_sub(total.flows_finished);
        self.active_flows.set(gauge(active));
        self.evicted_flows.set(gauge(total.flows_evicted));
        let dropped = total.dropped_unsupported_link
            + total.dropped_malformed
            + total.dropped_not_ip
            + total.dropped_not_tcp
            + total.dropped_fragment
            + total.capture_dropped;
        self.dropped_frames.set(gauge(dropped));
        self.frames.set(gauge(total.frames));
    }
}

/// Serves `registry` as `/metrics` (with `/livez` and `/readyz`) on `addr` from `tokio`, for as
/// long as that runtime lives; returns the bound address.
pub fn serve(tokio: &tokio::runtime::Runtime, addr: SocketAddr, registry: Arc<Registry>) -> anyhow::Result<SocketAddr> {
    let listener = tokio.block_on(vknf_server::ops::bind_ops(addr))?;
    let bound = listener.local_addr()?;
    let source = vknf_server::ops::OpsSource {
        metrics: Arc::new(move || encode(&registry)),
        readiness: Arc::new(|| Ok("ready\n".to_owned())),
    };
    tokio.spawn(vknf_server::ops::serve_ops_source(
        listener,
        source,
        std::future::pending(),
    ));
    Ok(bound)
}

/// The registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}
