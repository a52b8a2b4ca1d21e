//! Writing the manifests of a function: a selector-less Service, the ConfigMaps holding its
//! model, and optionally EndpointSlices placing it on hosts.

use std::collections::BTreeMap;
use std::net::IpAddr;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest as _, Sha256};

use crate::annotations as ann;
use crate::parse::{ObjectSet, ParseOptions, Placement, SpecError, hex, resolve};
use crate::spec::FunctionKey;

/// Raw model bytes per ConfigMap by default: under the 1 MiB limit with room for metadata.
pub const DEFAULT_PART_BYTES: usize = 1_000_000;

/// Everything `vknf manifest` needs to describe a function.
#[derive(Debug, Clone)]
pub struct ManifestRequest<'a> {
    /// Service name (also the prefix of the ConfigMap and EndpointSlice names).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// TCP port.
    pub port: u16,
    /// The hosts' Open Inference Protocol port, declared as a second Service port named
    /// [`ann::OIP_PORT_NAME`] (and listed in the generated EndpointSlices), if any.
    pub oip_port: Option<u16>,
    /// Function family (`vknf.io/kind`).
    pub kind: String,
    /// The SPIR-V module.
    pub spirv: &'a [u8],
    /// Entry point (`main` when `None`).
    pub entry_point: Option<String>,
    /// The model bytes, split over ConfigMaps.
    pub model: Option<&'a [u8]>,
    /// Specialization constants as a JSON object.
    pub spec_constants: Option<String>,
    /// The family's own parameters (each written as the annotation `vknf.io/<name>`), for example the
    /// `abi` of a generic kernel.
    pub params: BTreeMap<String, String>,
    /// Most rows per batch.
    pub max_batch_rows: Option<usize>,
    /// Longest batching wait in microseconds.
    pub max_wait_us: Option<u64>,
    /// Host addresses that serve the function (an EndpointSlice per address family).
    pub node_addresses: Vec<IpAddr>,
    /// Raw model bytes per ConfigMap.
    pub part_bytes: usize,
}

/// Why manifests could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The requested split would make ConfigMaps Kubernetes refuses.
    #[error("--part-bytes {requested} is over the ConfigMap limit of {limit} bytes (use smaller parts)")]
    PartTooLarge {
        /// Requested bytes per part.
        requested: usize,
        /// The limit.
        limit: usize,
    },
    /// Zero bytes per part.
    #[error("part size must be at least 1 byte")]
    EmptyParts,
    /// The result would not be a valid function (too-large annotations, bad SPIR-V ...).
    #[error("the manifest would be invalid: {0}")]
    Invalid(#[from] SpecError),
    /// Serialising failed.
    #[error("cannot write YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    /// A name that Kubernetes refuses.
    #[error("invalid name {0:?}: use lower-case letters, digits and '-', at most 63 characters")]
    BadName(String),
}

fn meta(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..Default::default()
    }
}

fn valid_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The objects of a function, validated by parsing them back exactly as the server will.
pub fn build_objects(request: &ManifestRequest<'_>) -> Result<Vec<serde_norway::Value>, GenerateError> {
    for name in [&request.name, &request.namespace] {
        if !valid_dns_label(name) {
            return Err(GenerateError::BadName(name.clone()));
        }
    }
    if request.part_bytes == 0 {
        return Err(GenerateError::EmptyParts);
    }
    if request.part_bytes > ann::CONFIGMAP_LIMIT - 1024 {
        return Err(GenerateError::PartTooLarge {
            requested: request.part_bytes,
            limit: ann::CONFIGMAP_LIMIT - 1024,
        });
    }
    let mut annotations = BTreeMap::new();
    annotations.insert(
        ann::SPIRV.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(request.spirv),
    );
    annotations.insert(ann::KIND.to_owned(), request.kind.clone());
    if let Some(entry) = &request.entry_point {
        annotations.insert(ann::ENTRY_POINT.to_owned(), entry.clone());
    }
    if let Some(constants) = &request.spec_constants {
        annotations.insert(ann::SPEC_CONSTANTS.to_owned(), constants.clone());
    }
    for (param, value) in &request.params {
        annotations.insert(ann::family_param(param), value.clone());
    }
    if let Some(rows) = request.max_batch_rows {
        annotations.insert(ann::MAX_BATCH_ROWS.to_owned(), rows.to_string());
    }
    if let Some(wait) = request.max_wait_us {
        annotations.insert(ann::MAX_WAIT_US.to_owned(), wait.to_string());
    }

    let mut configmaps = Vec::new();
    if let Some(model) = request.model {
        let names: Vec<String> = (0..model.len().div_ceil(request.part_bytes).max(1))
            .map(|i| format!("{}-model-{i}", request.name))
            .collect();
        let parts: Vec<&[u8]> = if model.is_empty() {
            vec![model]
        } else {
            model.chunks(request.part_bytes).collect()
        };
        for (index, (name, part)) in names.iter().zip(parts).enumerate() {
            configmaps.push(ConfigMap {
                metadata: meta(name, &request.namespace),
                binary_data: Some(BTreeMap::from([(
                    ann::model_part_key(index),
                    ByteString(part.to_vec()),
                )])),
                immutable: Some(true),
                ..Default::default()
            });
        }
        annotations.insert(ann::MODEL_CONFIGMAPS.to_owned(), names.join(","));
        annotations.insert(ann::MODEL_SHA256.to_owned(), hex(&Sha256::digest(model)));
    }

    let mut service_meta = meta(&request.name, &request.namespace);
    service_meta.labels = Some(BTreeMap::from([(ann::FUNCTION_LABEL.to_owned(), "true".to_owned())]));
    service_meta.annotations = Some(annotations);
    let service = Service {
        metadata: service_meta,
        spec: Some(ServiceSpec {
            ports: Some(
                std::iter::once(ServicePort {
                    name: Some("vknf".to_owned()),
                    port: i32::from(request.port),
                    protocol: Some("TCP".to_owned()),
                    ..Default::default()
                })
                .chain(request.oip_port.map(|port| ServicePort {
                    name: Some(ann::OIP_PORT_NAME.to_owned()),
                    port: i32::from(port),
                    protocol: Some("TCP".to_owned()),
                    app_protocol: Some(ann::OIP_APP_PROTOCOL.to_owned()),
                    ..Default::default()
                }))
                .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };

    let mut slices = Vec::new();
    for (family, addresses) in [
        (
            "IPv4",
            request
                .node_addresses
                .iter()
                .filter(|a| a.is_ipv4())
                .collect::<Vec<_>>(),
        ),
        (
            "IPv6",
            request
                .node_addresses
                .iter()
                .filter(|a| a.is_ipv6())
                .collect::<Vec<_>>(),
        ),
    ] {
        if addresses.is_empty() {
            continue;
        }
        let mut slice_meta = meta(
            &format!("{}-{}", request.name, family.to_lowercase()),
            &request.namespace,
        );
        slice_meta.labels = Some(BTreeMap::from([
            (ann::SERVICE_NAME_LABEL.to_owned(), request.name.clone()),
            // Keeps Kubernetes' EndpointSlice controller from adopting or deleting the slice.
            (
                "endpointslice.kubernetes.io/managed-by".to_owned(),
                "vknf.io".to_owned(),
            ),
        ]));
        slices.push(EndpointSlice {
            metadata: slice_meta,
            address_type: family.to_owned(),
            endpoints: addresses
                .into_iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.to_string()],
                    ..Default::default()
                })
                .collect(),
            ports: Some(
                std::iter::once(EndpointPort {
                    name: Some("vknf".to_owned()),
                    port: Some(i32::from(request.port)),
                    protocol: Some("TCP".to_owned()),
                    ..Default::default()
                })
                .chain(request.oip_port.map(|port| EndpointPort {
                    name: Some(ann::OIP_PORT_NAME.to_owned()),
                    port: Some(i32::from(port)),
                    protocol: Some("TCP".to_owned()),
                    app_protocol: Some(ann::OIP_APP_PROTOCOL.to_owned()),
                }))
                .collect(),
            ),
        });
    }

    // Parse back through the server's own reader: whatever it would reject is refused here.
    let mut objects = ObjectSet::default();
    let key = FunctionKey {
        namespace: request.namespace.clone(),
        name: request.name.clone(),
    };
    for configmap in &configmaps {
        objects.add_configmap(configmap.clone());
    }
    objects.add_service(service.clone());
    let host = resolve(
        &objects,
        &Placement::All,
        &ParseOptions {
            max_model_bytes: usize::MAX,
            ..Default::default()
        },
    );
    if let Some(rejected) = host.rejected.into_iter().find(|r| r.key == key) {
        return Err(rejected.error.into());
    }

    let mut values = Vec::new();
    for configmap in &configmaps {
        values.push(serde_norway::to_value(configmap)?);
    }
    values.push(serde_norway::to_value(&service)?);
    for slice in &slices {
        values.push(serde_norway::to_value(slice)?);
    }
    Ok(values)
}

/// The function's manifests as one multi-document YAML file, ready for
/// `kubectl apply --server-side -f`.
pub fn generate_yaml(request: &ManifestRequest<'_>) -> Result<String, GenerateError> {
    let mut out = String::new();
    for value in build_objects(request)? {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&value)?);
    }
    Ok(out)
}
