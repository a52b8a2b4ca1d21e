//! Handshake outcomes by port, registered beside the server's other metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of a handshake: the kind of port and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    port: &'static str,
    result: &'static str,
}

/// Counts of TLS handshakes. Cheap to clone; clones count into the same family.
#[derive(Clone, Default, Debug)]
pub struct TlsMetrics {
    handshakes: Family<HandshakeLabels, Counter>,
}

impl TlsMetrics {
    /// Registers `vknf_tls_handshakes_total{port, result}` (`result`: `ok`, `timeout`, `failed`,
    /// `over_budget`: refused before the handshake, the memory budget having no room for its buffers).
    pub fn register(&self, registry: &mut Registry) {
        registry.sub_registry_with_prefix("vknf").register(
            "tls_handshakes",
            "TLS handshakes by port and result (ok, timeout, failed, over_budget)",
            self.handshakes.clone(),
        );
    }

    pub(crate) fn count(&self, port: &'static str, result: &'static str) {
        self.handshakes.get_or_create(&HandshakeLabels { port, result }).inc();
    }

    /// Handshakes on `port` that ended with `result` so far.
    pub fn handshakes(&self, port: &'static str, result: &'static str) -> u64 {
        self.handshakes.get_or_create(&HandshakeLabels { port, result }).get()
    }
}
