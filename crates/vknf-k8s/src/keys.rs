//! Names the agent reads and writes in the cluster: annotations, labels, object names.
//!
//! The function schema itself (`vknf.io/spirv`, `vknf.io/model-configmaps` ...) belongs to
//! vknf-server (`vknf_manifest::annotations`); these are the agent's additions.

pub use vknf_manifest::annotations::{FUNCTION_LABEL, MODEL_CONFIGMAPS, SERVICE_NAME_LABEL};

/// Service annotation: a label selector over host labels naming the hosts that serve the
/// function (managed placement), e.g. `gpu=h100` or `zone in (a,b),!maintenance`.
pub const HOSTS_SELECTOR: &str = "vknf.io/hosts";
/// Service annotation: comma-separated host names that serve the function (managed placement).
pub const HOST_NAMES: &str = "vknf.io/host-names";
/// Prefix of the per-host status annotation on a function's Service.
pub const STATUS_PREFIX: &str = "vknf.io/status-";
/// Label every host carries implicitly: its name, so selectors can name hosts.
pub const HOSTNAME_LABEL: &str = "vknf.io/hostname";
/// Label on agent-published EndpointSlices naming the host they describe.
pub const HOST_LABEL: &str = "vknf.io/host";
/// Standard label telling controllers who owns an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on slices the agent publishes (label values cannot hold a
/// `/`, hence not `vknf.io/agent`).
pub const MANAGED_BY_AGENT: &str = "agent.vknf.io";
/// Value of [`MANAGED_BY_LABEL`] on slices Kubernetes' EndpointSlice controller writes: these
/// belong to Services with selectors, never to functions, so the agent does not watch them.
pub const MANAGED_BY_KUBERNETES: &str = "endpointslice-controller.k8s.io";
/// Label Kubernetes (1.33+) puts on Endpoints its endpoints controller writes.
pub const ENDPOINTS_MANAGED_BY_LABEL: &str = "endpoints.kubernetes.io/managed-by";
/// Value of [`ENDPOINTS_MANAGED_BY_LABEL`] set by Kubernetes' endpoints controller.
pub const ENDPOINTS_MANAGED_BY_KUBERNETES: &str = "endpoint-controller";
/// Field manager of the agent's server-side applies.
pub const FIELD_MANAGER: &str = "vknf-agent";
/// Field manager of the watchdog's writes.
pub const WATCHDOG_FIELD_MANAGER: &str = "vknf-watchdog";
/// Controller name in Events the agent records.
pub const EVENT_CONTROLLER: &str = "vknf.io/agent";
/// Name of the watchdog's leader-election Lease.
pub const WATCHDOG_LEASE: &str = "vknf-watchdog";

/// The status annotation a host writes on the Services it serves.
pub fn status_annotation(host: &str) -> String {
    format!("{STATUS_PREFIX}{host}")
}

/// The Lease a host renews while its agent runs.
pub fn host_lease_name(host: &str) -> String {
    format!("vknf-host-{host}")
}

/// The EndpointSlice a host publishes for a Service. Service names are DNS labels (no dots), so
/// the first dot separates the two parts and distinct pairs never share a name.
pub fn slice_name(service: &str, host: &str) -> String {
    format!("{service}.{host}")
}

/// Whether `name` is a valid host name for the agent: a DNS subdomain of at most 63 characters
/// (so that it fits a label value and object names derived from it).
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_must_fit_labels_and_object_names() {
        assert!(valid_host_name("gpu-1"));
        assert!(valid_host_name("gpu-1.rack-2.example"));
        assert!(!valid_host_name(""));
        assert!(!valid_host_name("GPU-1"));
        assert!(!valid_host_name("gpu_1"));
        assert!(!valid_host_name("-gpu"));
        assert!(!valid_host_name("gpu..1"));
        assert!(!valid_host_name(&"a".repeat(64)));
    }

    #[test]
    fn slice_names_of_distinct_pairs_differ() {
        assert_ne!(slice_name("a-vknf-b", "c"), slice_name("a", "b-vknf-c"));
        assert_eq!(slice_name("web", "gpu-1"), "web.gpu-1");
    }
}
