//! Metrics of the server's own (connections, manifest reloads), registered beside the function
//! runtime's in one Prometheus registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The server's metrics.
#[derive(Clone, Default)]
pub struct ServerMetrics {
    /// Open client connections.
    pub connections: Gauge,
    /// Connections refused because the server was at its connection limit.
    pub refused_connections: Counter,
    /// Reloads of the manifest directory, successful or not.
    pub reloads: Counter,
}

impl ServerMetrics {
    /// Registers every metric under the `vknf` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("vknf");
        r.register("connections", "Open client connections", self.connections.clone());
        r.register(
            "refused_connections",
            "Connections refused at the connection limit",
            self.refused_connections.clone(),
        );
        r.register("reloads", "Reloads of the function manifests", self.reloads.clone());
    }
}
