//! The validated description of one network function, as read from its manifest.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use vknf_functions::FunctionSpec;

/// Namespace and name of a function's Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey {
    /// Kubernetes namespace (`default` when the manifest names none).
    pub namespace: String,
    /// Service name.
    pub name: String,
}

impl fmt::Display for FunctionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The model bytes of a function, assembled from ConfigMaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// ConfigMap names, in the order their parts are concatenated.
    pub configmaps: Vec<String>,
    /// SHA-256 of the assembled bytes (checked when parsing).
    pub sha256: [u8; 32],
    /// Length of the assembled bytes.
    pub len: usize,
}

/// The feature schema a function's model is bound to (traffic classifiers: the digest of the
/// `FeatureSchema` whose rows the forest was trained on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaBinding {
    /// Lower-case hex SHA-256 of the schema, read from the model's own `.vkf` metadata
    /// ([`crate::annotations::MODEL_SCHEMA_DIGEST`]): what the function was compiled for.
    pub digest: String,
    /// Whether the manifest declares it ([`crate::annotations::FEATURE_SCHEMA_SHA256`]); a declaration
    /// is checked equal to the model's digest, or the function is refused.
    pub declared: bool,
}

/// The function a Service describes: where it is served (name, port, hosts), what runs it, how its
/// batches wait, and where its model comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedSpec {
    /// Namespace and name of the Service.
    pub key: FunctionKey,
    /// TCP port the function listens on.
    pub port: u16,
    /// What runs it: the family, kernel and configuration (its `name` is the key's `namespace/name`).
    pub function: FunctionSpec,
    /// Longest a batch waits to fill up; `None` takes the server default.
    pub max_wait: Option<Duration>,
    /// Where the model bytes come from.
    pub model: Option<ModelRef>,
    /// Host addresses from the Endpoints / EndpointSlices of the Service.
    pub endpoints: Vec<IpAddr>,
    /// The feature schema the model is bound to, when its metadata names one.
    pub schema: Option<SchemaBinding>,
}

impl ServedSpec {
    /// Whether two specs describe the same running function (everything but placement, and the
    /// schema binding, which follows from the model).
    pub fn same_function(&self, other: &ServedSpec) -> bool {
        let ServedSpec {
            key,
            port,
            function,
            max_wait,
            model,
            endpoints: _,
            schema: _,
        } = self;
        *key == other.key
            && *port == other.port
            && *function == other.function
            && *max_wait == other.max_wait
            && *model == other.model
    }
}
