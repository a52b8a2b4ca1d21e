//! Reading a directory of Kubernetes manifests into the functions this host serves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize as _;
use sha2::{Digest as _, Sha256};

use vknf_functions::{Families, FunctionSpec, SpecConstantKey, SpecConstantValue};

use crate::annotations as ann;
use crate::spec::{FunctionKey, ModelRef, SchemaBinding, ServedSpec};

/// SPIR-V's magic number, as the first little-endian word of a module.
const SPIRV_MAGIC: u32 = 0x0723_0203;
/// Upper bound of `vknf.io/max-batch-rows`.
pub const MAX_BATCH_ROWS_LIMIT: usize = 1 << 20;
/// Upper bound of `vknf.io/max-wait-us` (one second).
pub const MAX_WAIT_US_LIMIT: u64 = 1_000_000;

/// Which functions this host serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Every function, wherever its endpoints are.
    All,
    /// Functions with an endpoint address among these.
    Addresses(Vec<IpAddr>),
}

impl Placement {
    /// Whether a function with these endpoint addresses runs here.
    pub fn includes(&self, endpoints: &[IpAddr]) -> bool {
        match self {
            Placement::All => true,
            Placement::Addresses(mine) => endpoints.iter().any(|ip| mine.contains(ip)),
        }
    }

    /// The addresses of every local network interface.
    pub fn local_addresses() -> std::io::Result<Placement> {
        let addresses = if_addrs::get_if_addrs()?.into_iter().map(|iface| iface.ip()).collect();
        Ok(Placement::Addresses(addresses))
    }
}

/// Limits applied while parsing, and the families a function's kind may name.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// Largest assembled model accepted.
    pub max_model_bytes: usize,
    /// Accept port 0 (an ephemeral port chosen at bind time). Kubernetes never allows it; tests
    /// use it to avoid port collisions.
    pub allow_ephemeral_ports: bool,
    /// The function families this host runs; a kind outside them is refused.
    pub families: Families,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            max_model_bytes: 256 << 20,
            allow_ephemeral_ports: false,
            families: Families::builtin(),
        }
    }
}

/// A valid function and its model bytes.
#[derive(Debug, Clone)]
pub struct ManifestFunction {
    /// The validated spec.
    pub spec: ServedSpec,
    /// The assembled model, when the function has one.
    pub model: Option<Arc<[u8]>>,
}

/// A function this host should serve whose manifest is invalid.
#[derive(Debug)]
pub struct RejectedFunction {
    /// Which function.
    pub key: FunctionKey,
    /// Why.
    pub error: SpecError,
}

/// The functions of a manifest directory, as seen from one host.
#[derive(Debug, Default)]
pub struct HostManifest {
    /// Valid functions placed on this host, sorted by key.
    pub functions: Vec<ManifestFunction>,
    /// Functions placed on this host (or of unknown placement) whose manifests are invalid.
    pub rejected: Vec<RejectedFunction>,
    /// Functions placed on other hosts only.
    pub elsewhere: Vec<FunctionKey>,
}

/// A problem that makes the directory as a whole unreadable; nothing of it is trusted.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The directory cannot be listed.
    #[error("cannot read manifest directory {dir}: {source}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML, or not a valid Kubernetes object of its kind.
    #[error("{path}, document {document}: {message}")]
    Document {
        /// The file.
        path: PathBuf,
        /// 1-based document number within the file.
        document: usize,
        /// What is wrong.
        message: String,
    },
    /// Two documents define the same object.
    #[error("{kind} {key} is defined twice ({first} and {second})")]
    Duplicate {
        /// Object kind.
        kind: &'static str,
        /// Namespace/name.
        key: String,
        /// Where it was first defined.
        first: String,
        /// Where it was defined again.
        second: String,
    },
}

/// Why one function's manifest is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A required annotation is absent.
    #[error("missing annotation {0}")]
    MissingAnnotation(String),
    /// An annotation's value cannot be used.
    #[error("annotation {annotation}: {reason}")]
    BadAnnotation {
        /// The annotation key.
        annotation: String,
        /// What is wrong.
        reason: String,
    },
    /// The Service's annotations exceed Kubernetes' limit.
    #[error("annotations total {bytes} bytes, over Kubernetes' limit of {limit} bytes")]
    AnnotationsTooLarge {
        /// Total size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The Service's ports are not exactly one TCP port.
    #[error("service ports: {0}")]
    BadPort(String),
    /// The Service has a selector, so Kubernetes would manage its endpoints.
    #[error("a function Service must not have a selector (its endpoints name the hosts that serve it)")]
    HasSelector,
    /// A model ConfigMap is not in the directory.
    #[error("model ConfigMap {0} not found")]
    MissingConfigMap(String),
    /// A model ConfigMap lacks its part.
    #[error("ConfigMap {configmap} has no binaryData key {key}")]
    MissingModelPart {
        /// The ConfigMap.
        configmap: String,
        /// The expected key.
        key: String,
    },
    /// A model ConfigMap exceeds Kubernetes' limit.
    #[error(
        "ConfigMap {configmap} holds {bytes} bytes, over Kubernetes' limit of {limit}; split the model over more ConfigMaps"
    )]
    ConfigMapTooLarge {
        /// The ConfigMap.
        configmap: String,
        /// Its data size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The assembled model exceeds the configured limit.
    #[error("model of {bytes} bytes exceeds the limit of {limit} bytes")]
    ModelTooLarge {
        /// Model size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The model does not match its digest.
    #[error("model digest mismatch: annotation says {expected}, ConfigMaps hold {actual}")]
    DigestMismatch {
        /// From the annotation.
        expected: String,
        /// Of the assembled bytes.
        actual: String,
    },
    /// The feature schema the manifest declares is not the one its model was trained with.
    #[error(
        "annotation {annotation} declares feature schema {declared}, but the model was trained with \
         feature schema {model} ({key} in its .vkf metadata): the manifest was edited or its model \
         replaced; write it again with `vknf manifest --model M.vkf --schema S.json`",
        annotation = ann::FEATURE_SCHEMA_SHA256,
        key = ann::MODEL_SCHEMA_DIGEST
    )]
    SchemaMismatch {
        /// The digest the annotation declares.
        declared: String,
        /// The digest the model carries.
        model: String,
    },
    /// The manifest declares a feature schema and the model carries no digest of one.
    #[error(
        "annotation {annotation} declares feature schema {declared}, but the model carries no feature \
         schema digest: {reason}",
        annotation = ann::FEATURE_SCHEMA_SHA256
    )]
    SchemaUnbound {
        /// The digest the annotation declares.
        declared: String,
        /// Why the model has none.
        reason: String,
    },
    /// Another function on this host uses the same port.
    #[error("port {port} is also used by {other}")]
    PortClash {
        /// The port.
        port: u16,
        /// The other function.
        other: FunctionKey,
    },
}

fn bad(annotation: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::BadAnnotation {
        annotation: annotation.to_owned(),
        reason: reason.into(),
    }
}

/// Where an object came from, for messages.
#[derive(Debug, Clone)]
struct Origin {
    path: PathBuf,
    document: usize,
}

impl Origin {
    /// An object that did not come from a file (built in code, or read from the API server).
    fn api() -> Origin {
        Origin {
            path: PathBuf::from("<api>"),
            document: 0,
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.path.display(), self.document)
    }
}

/// The Kubernetes objects that describe functions: what a manifest directory holds, or what
/// the node agent watches on the API server. [`resolve`] turns them into a [`HostManifest`].
#[derive(Default)]
pub struct ObjectSet {
    services: BTreeMap<FunctionKey, (Origin, Service)>,
    configmaps: BTreeMap<FunctionKey, (Origin, ConfigMap)>,
    endpoints: BTreeMap<FunctionKey, (Origin, Endpoints)>,
    slices: BTreeMap<FunctionKey, (Origin, EndpointSlice)>,
}

fn object_key(meta: &ObjectMeta) -> Option<FunctionKey> {
    Some(FunctionKey {
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        name: meta.name.clone()?,
    })
}

impl ObjectSet {
    /// Adds (or replaces) a Service; objects without a name are ignored.
    pub fn add_service(&mut self, service: Service) {
        if let Some(key) = object_key(&service.metadata) {
            self.services.insert(key, (Origin::api(), service));
        }
    }

    /// Adds (or replaces) a ConfigMap.
    pub fn add_configmap(&mut self, configmap: ConfigMap) {
        if let Some(key) = object_key(&configmap.metadata) {
            self.configmaps.insert(key, (Origin::api(), configmap));
        }
    }

    /// Adds (or replaces) an Endpoints object.
    pub fn add_endpoints(&mut self, endpoints: Endpoints) {
        if let Some(key) = object_key(&endpoints.metadata) {
            self.endpoints.insert(key, (Origin::api(), endpoints));
        }
    }

    /// Adds (or replaces) an EndpointSlice.
    pub fn add_endpoint_slice(&mut self, slice: EndpointSlice) {
        if let Some(key) = object_key(&slice.metadata) {
            self.slices.insert(key, (Origin::api(), slice));
        }
    }
}

fn insert_unique<T>(
    map: &mut BTreeMap<FunctionKey, (Origin, T)>,
    kind: &'static str,
    key: FunctionKey,
    origin: Origin,
    object: T,
) -> Result<(), ManifestError> {
    if let Some((first, _)) = map.get(&key) {
        return Err(ManifestError::Duplicate {
            kind,
            key: key.to_string(),
            first: first.to_string(),
            second: origin.to_string(),
        });
    }
    map.insert(key, (origin, object));
    Ok(())
}

/// Lists the manifest files of `dir`: `*.yaml`, `*.yml` and `*.json`, not hidden, sorted.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_dir = |source| ManifestError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let path = entry.map_err(read_dir)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let wanted = !name.starts_with('.')
            && [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext))
            && path.is_file();
        if wanted {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads the Kubernetes objects of manifest `files` (YAML or JSON, several documents each); objects
/// of other kinds are skipped.
pub fn read_objects(files: &[PathBuf]) -> Result<ObjectSet, ManifestError> {
    let mut objects = ObjectSet::default();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::ReadFile {
            path: path.clone(),
            source,
        })?;
        for (index, document) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let origin = Origin {
                path: path.clone(),
                document: index + 1,
            };
            let doc_error = |message: String| ManifestError::Document {
                path: path.clone(),
                document: index + 1,
                message,
            };
            let value =
                serde_norway::Value::deserialize(document).map_err(|e| doc_error(format!("invalid YAML: {e}")))?;
            if value.is_null() {
                continue;
            }
            let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or("");
            let (api_version, kind) = (field("apiVersion").to_owned(), field("kind").to_owned());
            let convert = |kind: &'static str| move |e: serde_norway::Error| doc_error(format!("invalid {kind}: {e}"));
            let missing_name = || doc_error(format!("{kind} without metadata.name"));
            match (api_version.as_str(), kind.as_str()) {
                ("v1", "Service") => {
                    let service: Service = serde_norway::from_value(value).map_err(convert("Service"))?;
                    let key = object_key(&service.metadata).ok_or_else(missing_name)?;
                    insert_unique(&mut objects.services, "Service", key, origin, service)?;
                }
                ("v1", "ConfigMap") => {
                    let configmap: ConfigMap = serde_norway::from_value(value).map_err(convert("ConfigMap"))?;
                    let key = object_key(&configmap.metadata).ok_or_else(missing_name)?;
                    insert_unique(&mut objects.configmaps, "ConfigMap", key, origin, configmap)?;
                }
                ("v1", "Endpoints") => {
                    let endpoints: Endpoints = serde_norway::from_value(value).map_err(convert("Endpoints"))?;
                    let key = object_key(&endpoints.metadata).ok_or_else(missing_name)?;
                    insert_unique(&mut objects.endpoints, "Endpoints", key, origin, endpoints)?;
                }
                ("discovery.k8s.io/v1", "EndpointSlice") => {
                    let slice: EndpointSlice = serde_norway::from_value(value).map_err(convert("EndpointSlice"))?;
                    let key = object_key(&slice.metadata).ok_or_else(missing_name)?;
                    insert_unique(&mut objects.slices, "EndpointSlice", key, origin, slice)?;
                }
                // Other objects (Deployments, the agent's DaemonSet ...) may share the directory.
                _ => {}
            }
        }
    }
    Ok(objects)
}

/// Reads every manifest in `dir` and returns the functions `placement` puts on this host.
pub fn load_dir(dir: &Path, placement: &Placement, options: &ParseOptions) -> Result<HostManifest, ManifestError> {
    let files = manifest_files(dir)?;
    let objects = read_objects(&files)?;
    Ok(resolve(&objects, placement, options))
}

fn is_function(service: &Service) -> bool {
    service
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ann::FUNCTION_LABEL))
        .map(String::as_str)
        == Some("true")
}

fn endpoints_of(objects: &ObjectSet, key: &FunctionKey) -> Vec<IpAddr> {
    let mut addresses = BTreeSet::new();
    if let Some((_, endpoints)) = objects.endpoints.get(key) {
        for subset in endpoints.subsets.iter().flatten() {
            for address in subset.addresses.iter().flatten() {
                if let Ok(ip) = address.ip.parse() {
                    addresses.insert(ip);
                }
            }
        }
    }
    for (slice_key, (_, slice)) in &objects.slices {
        let service_name = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ann::SERVICE_NAME_LABEL));
        if slice_key.namespace == key.namespace && service_name == Some(&key.name) {
            for endpoint in &slice.endpoints {
                // FQDN slices hold names, not host addresses: they never match a host.
                addresses.extend(endpoint.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()));
            }
        }
    }
    addresses.into_iter().collect()
}

/// The functions `objects` describe, as seen from a host with `placement`.
pub fn resolve(objects: &ObjectSet, placement: &Placement, options: &ParseOptions) -> HostManifest {
    let mut host = HostManifest::default();
    for (key, (_, service)) in &objects.services {
        if !is_function(service) {
            continue;
        }
        let endpoints = endpoints_of(objects, key);
        if !placement.includes(&endpoints) {
            host.elsewhere.push(key.clone());
            continue;
        }
        match build_function(objects, key, service, endpoints, options) {
            Ok(function) => host.functions.push(function),
            Err(error) => host.rejected.push(RejectedFunction {
                key: key.clone(),
                error,
            }),
        }
    }
    reject_port_clashes(&mut host);
    host
}

/// The function `objects` describe under `key`, checked as [`resolve`] checks it but wherever it is
/// placed and whatever shares its port: what a client of the function reads from its manifest.
/// `None` when no function Service has that key.
pub fn resolve_function(
    objects: &ObjectSet,
    key: &FunctionKey,
    options: &ParseOptions,
) -> Option<Result<ManifestFunction, SpecError>> {
    let (_, service) = objects.services.get(key)?;
    if !is_function(service) {
        return None;
    }
    let endpoints = endpoints_of(objects, key);
    Some(build_function(objects, key, service, endpoints, options))
}

/// Two functions on one host cannot share a port: both are rejected, so that which one serves
/// never depends on file order.
fn reject_port_clashes(host: &mut HostManifest) {
    let mut by_port: BTreeMap<u16, Vec<FunctionKey>> = BTreeMap::new();
    for function in &host.functions {
        if function.spec.port != 0 {
            by_port
                .entry(function.spec.port)
                .or_default()
                .push(function.spec.key.clone());
        }
    }
    let clashing: BTreeMap<FunctionKey, (u16, FunctionKey)> = by_port
        .into_iter()
        .filter(|(_, keys)| keys.len() > 1)
        .flat_map(|(port, keys)| {
            keys.iter()
                .map(|key| {
                    let other = keys.iter().find(|k| *k != key).cloned().unwrap_or_else(|| key.clone());
                    (key.clone(), (port, other))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let (kept, clashed): (Vec<_>, Vec<_>) = host
        .functions
        .drain(..)
        .partition(|f| !clashing.contains_key(&f.spec.key));
    host.functions = kept;
    for function in clashed {
        let (port, other) = clashing[&function.spec.key].clone();
        host.rejected.push(RejectedFunction {
            key: function.spec.key,
            error: SpecError::PortClash { port, other },
        });
    }
    host.rejected.sort_by(|a, b| a.key.cmp(&b.key));
}

fn build_function(
    objects: &ObjectSet,
    key: &FunctionKey,
    service: &Service,
    endpoints: Vec<IpAddr>,
    options: &ParseOptions,
) -> Result<ManifestFunction, SpecError> {
    let empty = BTreeMap::new();
    let annotations = service.metadata.annotations.as_ref().unwrap_or(&empty);
    let total: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > ann::ANNOTATIONS_LIMIT {
        return Err(SpecError::AnnotationsTooLarge {
            bytes: total,
            limit: ann::ANNOTATIONS_LIMIT,
        });
    }
    let get = |name: &str| annotations.get(name).map(|v| v.trim());

    let spec = service
        .spec
        .as_ref()
        .ok_or_else(|| SpecError::BadPort("no spec".into()))?;
    if spec.selector.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(SpecError::HasSelector);
    }
    let port = service_port(spec.ports.as_deref().unwrap_or(&[]), options)?;

    let kind = get(ann::KIND).ok_or_else(|| SpecError::MissingAnnotation(ann::KIND.to_owned()))?;
    let Some(family) = options.families.get(kind) else {
        let known: Vec<&str> = options.families.kinds().collect();
        return Err(bad(
            ann::KIND,
            format!("unknown kind {kind:?} (known kinds: {})", known.join(", ")),
        ));
    };
    let spirv = parse_spirv(get(ann::SPIRV).ok_or_else(|| SpecError::MissingAnnotation(ann::SPIRV.to_owned()))?)?;
    let entry_point = match get(ann::ENTRY_POINT) {
        None => "main".to_owned(),
        Some("") => return Err(bad(ann::ENTRY_POINT, "empty entry point")),
        Some(name) => name.to_owned(),
    };
    let spec_constants = match get(ann::SPEC_CONSTANTS) {
        None => BTreeMap::new(),
        Some(json) => parse_spec_constants(json)?,
    };
    let max_batch_rows = get(ann::MAX_BATCH_ROWS)
        .map(|v| parse_bounded(ann::MAX_BATCH_ROWS, v, 1, MAX_BATCH_ROWS_LIMIT as u64))
        .transpose()?
        .map(|v| v as usize);
    let max_wait = get(ann::MAX_WAIT_US)
        .map(|v| parse_bounded(ann::MAX_WAIT_US, v, 0, MAX_WAIT_US_LIMIT))
        .transpose()?
        .map(Duration::from_micros);

    let (model_ref, model) = match (get(ann::MODEL_CONFIGMAPS), get(ann::MODEL_SHA256)) {
        (None, None) => (None, None),
        (Some(_), None) => return Err(SpecError::MissingAnnotation(ann::MODEL_SHA256.to_owned())),
        (None, Some(_)) => return Err(SpecError::MissingAnnotation(ann::MODEL_CONFIGMAPS.to_owned())),
        (Some(names), Some(digest)) => {
            let (model_ref, bytes) = assemble_model(objects, key, names, digest, options)?;
            (Some(model_ref), Some(bytes))
        }
    };
    let schema = schema_binding(get(ann::FEATURE_SCHEMA_SHA256), model.as_deref())?;

    // Family parameters: each is the annotation vknf.io/<param>, and only the kind's family takes it.
    let mut params = BTreeMap::new();
    for param in options.families.all_params() {
        let annotation = ann::family_param(param);
        let Some(value) = get(&annotation) else { continue };
        if !family.params().contains(&param) {
            let owners = options.families.kinds_taking(param).join(", ");
            return Err(SpecError::BadAnnotation {
                annotation,
                reason: format!("applies only to kind {owners}, not {kind}"),
            });
        }
        params.insert(param.to_owned(), value.to_owned());
    }
    if family.needs_model() && model.is_none() {
        return Err(SpecError::MissingAnnotation(ann::MODEL_CONFIGMAPS.to_owned()));
    }
    let function = FunctionSpec {
        name: key.to_string(),
        kind: kind.to_owned(),
        spirv,
        entry_point,
        spec_constants,
        params,
        max_batch_rows,
    };
    family
        .validate(&function, model.as_ref().map(|m| m.len()))
        .map_err(|e| {
            let annotation = if e.param == "model" {
                ann::MODEL_CONFIGMAPS.to_owned()
            } else {
                ann::family_param(&e.param)
            };
            if e.missing {
                SpecError::MissingAnnotation(annotation)
            } else {
                SpecError::BadAnnotation {
                    annotation,
                    reason: e.reason,
                }
            }
        })?;

    Ok(ManifestFunction {
        spec: ServedSpec {
            key: key.clone(),
            port,
            function,
            max_wait,
            model: model_ref,
            endpoints,
            schema,
        },
        model,
    })
}

/// The feature schema digest a model carries in its `.vkf` metadata ([`ann::MODEL_SCHEMA_DIGEST`],
/// lower-case), or why it carries none. The model is parsed and validated in full, as its family will.
pub fn model_schema_digest(model: &[u8]) -> Result<String, String> {
    if !model.starts_with(&vknf_forest::VKF_MAGIC) {
        return Err("it is not a .vkf model".to_owned());
    }
    let (_, metadata) = vknf_forest::GpuForest::from_vkf_bytes_with_metadata(model)
        .map_err(|e| format!("its .vkf cannot be read: {e}"))?;
    let digest = metadata.get(ann::MODEL_SCHEMA_DIGEST).ok_or_else(|| {
        format!(
            "its .vkf metadata has no {} (the model was not trained by python/train_traffic.py, or was \
             compiled without the digest)",
            ann::MODEL_SCHEMA_DIGEST
        )
    })?;
    let digest = digest.trim();
    if !is_sha256_hex(digest) {
        return Err(format!(
            "its {} {digest:?} is not 64 hex digits",
            ann::MODEL_SCHEMA_DIGEST
        ));
    }
    Ok(digest.to_ascii_lowercase())
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Binds the function to the feature schema its model carries: a declared schema
/// ([`ann::FEATURE_SCHEMA_SHA256`]) must be that one. A model bound to a schema the manifest does not
/// declare is accepted (there is nothing to disagree with; the server reports the model's digest and
/// warns), so that a forest trained with a schema can be served to clients that do not compute
/// features themselves.
fn schema_binding(declared: Option<&str>, model: Option<&[u8]>) -> Result<Option<SchemaBinding>, SpecError> {
    let carried = match model {
        Some(model) => model_schema_digest(model),
        None => Err("the function has no model".to_owned()),
    };
    let Some(declared) = declared else {
        return Ok(carried.ok().map(|digest| SchemaBinding {
            digest,
            declared: false,
        }));
    };
    if !is_sha256_hex(declared) {
        return Err(bad(
            ann::FEATURE_SCHEMA_SHA256,
            format!("{declared:?} is not 64 hex digits"),
        ));
    }
    let declared = declared.to_ascii_lowercase();
    match carried {
        Ok(digest) if digest == declared => Ok(Some(SchemaBinding { digest, declared: true })),
        Ok(model) => Err(SpecError::SchemaMismatch { declared, model }),
        Err(reason) => Err(SpecError::SchemaUnbound { declared, reason }),
    }
}

fn service_port(ports: &[k8s_openapi::api::core::v1::ServicePort], options: &ParseOptions) -> Result<u16, SpecError> {
    // A port named `oip` routes to the host's Open Inference Protocol port, not to the function's.
    let function_ports: Vec<_> = ports
        .iter()
        .filter(|p| p.name.as_deref() != Some(crate::annotations::OIP_PORT_NAME))
        .collect();
    let [port] = function_ports.as_slice() else {
        return Err(SpecError::BadPort(format!(
            "expected exactly one port (besides one named {}), found {}",
            crate::annotations::OIP_PORT_NAME,
            function_ports.len()
        )));
    };
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    if protocol != "TCP" {
        return Err(SpecError::BadPort(format!("protocol {protocol}, only TCP is served")));
    }
    let lowest = if options.allow_ephemeral_ports { 0 } else { 1 };
    u16::try_from(port.port)
        .ok()
        .filter(|p| *p >= lowest)
        .ok_or_else(|| SpecError::BadPort(format!("port {} is outside {lowest}..=65535", port.port)))
}

fn parse_bounded(annotation: &'static str, value: &str, min: u64, max: u64) -> Result<u64, SpecError> {
    let n: u64 = value
        .parse()
        .map_err(|_| bad(annotation, format!("{value:?} is not a non-negative integer")))?;
    if !(min..=max).contains(&n) {
        return Err(bad(annotation, format!("{n} is outside {min}..={max}")));
    }
    Ok(n)
}

/// Decodes and sanity-checks a base64 SPIR-V module.
pub fn parse_spirv(encoded: &str) -> Result<Vec<u8>, SpecError> {
    let compact: String = encoded.split_whitespace().collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| bad(ann::SPIRV, format!("invalid base64: {e}")))?;
    if bytes.len() < 20 || bytes.len() % 4 != 0 {
        return Err(bad(
            ann::SPIRV,
            format!(
                "{} bytes is not a SPIR-V module (whole 32-bit words, 5-word header)",
                bytes.len()
            ),
        ));
    }
    let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != SPIRV_MAGIC {
        return Err(bad(
            ann::SPIRV,
            format!("magic {magic:#010x} is not SPIR-V's {SPIRV_MAGIC:#010x}"),
        ));
    }
    Ok(bytes)
}

fn parse_spec_constants(json: &str) -> Result<BTreeMap<SpecConstantKey, SpecConstantValue>, SpecError> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|e| bad(ann::SPEC_CONSTANTS, format!("not a JSON object: {e}")))?;
    let mut constants = BTreeMap::new();
    for (name, value) in object {
        if name.is_empty() {
            return Err(bad(ann::SPEC_CONSTANTS, "empty constant name"));
        }
        let key = match name.parse::<u32>() {
            Ok(id) => SpecConstantKey::Id(id),
            Err(_) => SpecConstantKey::Name(name.clone()),
        };
        let value = match value {
            serde_json::Value::Bool(b) => SpecConstantValue::Bool(b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    SpecConstantValue::Int(i128::from(i))
                } else if let Some(u) = n.as_u64() {
                    SpecConstantValue::Int(i128::from(u))
                } else {
                    SpecConstantValue::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            other => {
                return Err(bad(
                    ann::SPEC_CONSTANTS,
                    format!("{name}: {other} is not a number or bool"),
                ));
            }
        };
        constants.insert(key, value);
    }
    Ok(constants)
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_digest(digest: &str) -> Result<[u8; 32], SpecError> {
    let reason = || bad(ann::MODEL_SHA256, format!("{digest:?} is not 64 hex digits"));
    if digest.len() != 64 || !digest.is_ascii() {
        return Err(reason());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).map_err(|_| reason())?;
    }
    Ok(out)
}

fn assemble_model(
    objects: &ObjectSet,
    key: &FunctionKey,
    names: &str,
    digest: &str,
    options: &ParseOptions,
) -> Result<(ModelRef, Arc<[u8]>), SpecError> {
    let expected = parse_digest(digest)?;
    let configmaps: Vec<String> = names.split(',').map(|n| n.trim().to_owned()).collect();
    if configmaps.iter().any(String::is_empty) {
        return Err(bad(ann::MODEL_CONFIGMAPS, format!("{names:?} has an empty name")));
    }
    let mut parts = Vec::with_capacity(configmaps.len());
    for (index, name) in configmaps.iter().enumerate() {
        let cm_key = FunctionKey {
            namespace: key.namespace.clone(),
            name: name.clone(),
        };
        let (_, configmap) = objects
            .configmaps
            .get(&cm_key)
            .ok_or_else(|| SpecError::MissingConfigMap(name.clone()))?;
        let part_key = ann::model_part_key(index);
        let part = configmap
            .binary_data
            .as_ref()
            .and_then(|data| data.get(&part_key))
            .ok_or_else(|| SpecError::MissingModelPart {
                configmap: name.clone(),
                key: part_key,
            })?;
        let binary: usize = configmap
            .binary_data
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.0.len())
            .sum();
        let text: usize = configmap.data.iter().flatten().map(|(k, v)| k.len() + v.len()).sum();
        if binary + text > ann::CONFIGMAP_LIMIT {
            return Err(SpecError::ConfigMapTooLarge {
                configmap: name.clone(),
                bytes: binary + text,
                limit: ann::CONFIGMAP_LIMIT,
            });
        }
        parts.push(part.0.as_slice());
    }
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total > options.max_model_bytes {
        return Err(SpecError::ModelTooLarge {
            bytes: total,
            limit: options.max_model_bytes,
        });
    }
    let model = parts.concat();
    let actual: [u8; 32] = Sha256::digest(&model).into();
    if actual != expected {
        return Err(SpecError::DigestMismatch {
            expected: hex(&expected),
            actual: hex(&actual),
        });
    }
    let model_ref = ModelRef {
        configmaps,
        sha256: actual,
        len: model.len(),
    };
    Ok((model_ref, model.into()))
}
