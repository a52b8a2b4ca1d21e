//! How a traffic model is bound to the feature schema it was trained with, so that the capture side
//! and the served function cannot disagree silently.
//!
//! The binding is the schema's own digest (`FeatureSchema::digest`, SHA-256 of its canonical text):
//! - an ONNX model carries it in its metadata as `vknf.schema_digest` (`python/train_traffic.py`);
//! - `vknf compile-model` copies that entry into the `.vkf` file's metadata (format version 2);
//! - `vknf manifest --schema S.json` checks it against the model and declares it on the function's
//!   Service as the annotation `vknf.io/feature-schema-sha256`; `vknf serve` and the agent
//!   (`vknf_manifest::resolve`) refuse a manifest whose annotation is not the digest its model
//!   carries;
//! - `vknf classify --addr` reads the manifest the function is served from (`--manifest`) as the
//!   server reads it, checks the schema against the annotation and the model the manifest carries,
//!   and against the digest the function's hosts report on their Open Inference Protocol port (model
//!   metadata `parameters`), when they report one.
//!
//! A model without the entry, or with another digest, is refused with the two digests in the error.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use vknf_flow::FeatureSchema;
use vknf_forest::{GpuForest, VkfMetadata};
use vknf_manifest::{FunctionKey, ParseOptions, annotations};

/// Metadata key of the schema digest, in ONNX `metadata_props` and in `.vkf` metadata.
pub const SCHEMA_DIGEST_KEY: &str = annotations::MODEL_SCHEMA_DIGEST;
/// The Service annotation that declares a function's feature schema digest.
pub const SCHEMA_ANNOTATION: &str = annotations::FEATURE_SCHEMA_SHA256;
/// Longest wait for a host's Open Inference Protocol port to answer its model metadata.
const OIP_TIMEOUT: Duration = Duration::from_secs(5);

/// A model file with the metadata it carries.
pub struct BoundModel {
    /// The compiled forest.
    pub forest: GpuForest,
    /// Its `.vkf` metadata (from the `.vkf` file, or what `vknf compile-model` would write for the ONNX).
    pub metadata: VkfMetadata,
}

impl BoundModel {
    /// Loads `.onnx` or `.vkf`, with the schema digest the file carries.
    pub fn load(path: &Path) -> anyhow::Result<BoundModel> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let is_vkf = bytes.starts_with(&vknf_forest::VKF_MAGIC);
        if is_vkf {
            let (forest, metadata) = GpuForest::from_vkf_bytes_with_metadata(&bytes)
                .with_context(|| format!("loading {}", path.display()))?;
            return Ok(BoundModel { forest, metadata });
        }
        let forest = super::predict::load_model(path)?;
        Ok(BoundModel {
            forest,
            metadata: onnx_vkf_metadata(&bytes)
                .with_context(|| format!("reading the metadata of {}", path.display()))?,
        })
    }

    /// The schema digest the model was bound to when trained, if any.
    pub fn schema_digest(&self) -> Option<&str> {
        self.metadata.get(SCHEMA_DIGEST_KEY).map(String::as_str)
    }

    /// Checks that `schema` is the one the model was trained with and that they agree on the
    /// features and classes; `name` names the model in errors.
    pub fn check(&self, schema: &FeatureSchema, name: &str) -> anyhow::Result<()> {
        let digest = self.schema_digest().with_context(|| {
            format!(
                "{name} carries no feature schema digest ({SCHEMA_DIGEST_KEY}): it was not trained by \
                 python/train_traffic.py, or was compiled by a vknf that dropped it"
            )
        })?;
        schema
            .check_model_digest(digest)
            .with_context(|| format!("{name} and its schema do not match"))?;
        check_shape(schema, self.forest.n_features as usize, &self.class_names(), name)
    }

    /// Class names in output order.
    pub fn class_names(&self) -> Vec<String> {
        (0..self.forest.n_outputs).map(|i| self.forest.label_name(i)).collect()
    }
}

/// Checks a schema against a function's input width and classes (equal digests imply it; this
/// catches a hand-edited model).
pub fn check_shape(schema: &FeatureSchema, width: usize, classes: &[String], name: &str) -> anyhow::Result<()> {
    if schema.len() != width {
        anyhow::bail!("{name} takes {width} features; the schema selects {}", schema.len());
    }
    if schema.classes != classes {
        anyhow::bail!("{name} has classes {classes:?}; the schema has {:?}", schema.classes);
    }
    Ok(())
}

/// The `.vkf` metadata kept from an ONNX model: its schema digest, when it has one.
pub fn onnx_vkf_metadata(onnx: &[u8]) -> anyhow::Result<VkfMetadata> {
    let mut metadata = VkfMetadata::new();
    if let Some(digest) = vknf_forest::onnx_metadata(onnx)?.remove(SCHEMA_DIGEST_KEY) {
        metadata.insert(SCHEMA_DIGEST_KEY.to_owned(), digest);
    }
    Ok(metadata)
}

/// Loads a schema file with its path in errors.
pub fn load_schema(path: &Path) -> anyhow::Result<FeatureSchema> {
    FeatureSchema::load(path).with_context(|| format!("loading the feature schema {}", path.display()))
}

/// A function as a manifest declares it: what `vknf classify --addr` checks the schema against.
#[derive(Debug)]
pub struct DeclaredFunction {
    /// `namespace/name` of the Service.
    pub name: String,
    /// The same, as the manifest reader keys it.
    pub key: FunctionKey,
    /// Its port.
    pub port: u16,
    /// The hosts' Open Inference Protocol port, when the Service declares it (a port named `oip`).
    pub oip_port: Option<u16>,
    /// Its `vknf.io/feature-schema-sha256` annotation.
    pub schema_digest: Option<String>,
}

/// The manifest files of a manifest file or directory.
fn manifest_paths(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    Ok(if path.is_dir() {
        vknf_manifest::manifest_files(path)?
    } else {
        vec![path.to_owned()]
    })
}

/// The functions (Services labelled `vknf.io/function: "true"`) of manifest files.
pub fn declared_functions(files: &[PathBuf]) -> anyhow::Result<Vec<DeclaredFunction>> {
    use serde::Deserialize as _;

    let mut functions = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for document in serde_norway::Deserializer::from_str(&text) {
            let value =
                serde_norway::Value::deserialize(document).with_context(|| format!("parsing {}", file.display()))?;
            if let Some(function) = declared_function(&value) {
                functions.push(function);
            }
        }
    }
    Ok(functions)
}

fn declared_function(value: &serde_norway::Value) -> Option<DeclaredFunction> {
    let text = |v: &serde_norway::Value| v.as_str().map(str::to_owned);
    if value.get("kind").and_then(|k| k.as_str()) != Some("Service") {
        return None;
    }
    let metadata = value.get("metadata")?;
    let is_function = metadata
        .get("labels")
        .and_then(|l| l.get(vknf_manifest::annotations::FUNCTION_LABEL))
        .and_then(|v| v.as_str())
        == Some("true");
    if !is_function {
        return None;
    }
    let namespace = metadata
        .get("namespace")
        .and_then(text)
        .unwrap_or_else(|| "default".into());
    let name = metadata.get("name").and_then(text)?;
    let ports = value.get("spec")?.get("ports")?.as_sequence()?;
    let port_named = |oip: bool| {
        ports
            .iter()
            .find(|p| (p.get("name").and_then(|n| n.as_str()) == Some(annotations::OIP_PORT_NAME)) == oip)
            .and_then(|p| p.get("port")?.as_u64())
            .and_then(|p| u16::try_from(p).ok())
    };
    Some(DeclaredFunction {
        name: format!("{namespace}/{name}"),
        key: FunctionKey { namespace, name },
        port: port_named(false)?,
        oip_port: port_named(true),
        schema_digest: metadata
            .get("annotations")
            .and_then(|a| a.get(SCHEMA_ANNOTATION))
            .and_then(text)
            .map(|s| s.trim().to_owned()),
    })
}

/// Checks the function that a manifest serves on `port` against `schema`: the manifest is read by
/// `vknf serve`'s reader (a feature schema annotation that is not the digest its model carries is
/// refused; limits a server sets, such as its largest model, are not applied), it must declare a
/// schema, the model its ConfigMaps carry
/// must have been trained with `schema`, and `host` (the address classify sends flows to) and every
/// host of the function's endpoints that answers on the manifest's Open Inference Protocol port must
/// report that schema for the model it serves. Returns the function's name.
pub fn check_declared(manifest: &Path, host: &str, port: u16, schema: &FeatureSchema) -> anyhow::Result<String> {
    let files = manifest_paths(manifest)?;
    let functions = declared_functions(&files)?;
    let Some(function) = functions.iter().find(|f| f.port == port) else {
        let known: Vec<String> = functions.iter().map(|f| format!("{} on {}", f.name, f.port)).collect();
        anyhow::bail!(
            "{} declares no function on port {port} (it declares: {})",
            manifest.display(),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
    };
    let origin = format!("function {} (from {})", function.name, manifest.display());
    let objects = vknf_manifest::read_objects(&files)?;
    let options = ParseOptions {
        max_model_bytes: usize::MAX,
        allow_ephemeral_ports: true,
        ..ParseOptions::default()
    };
    let served = vknf_manifest::resolve_function(&objects, &function.key, &options)
        .with_context(|| format!("{origin}: the manifest reader finds no such function"))?
        .map_err(|e| anyhow::anyhow!("{origin} is refused, as `vknf serve` would refuse it: {e}"))?;
    function.schema_digest.as_deref().with_context(|| {
        format!(
            "function {} declares no feature schema (annotation {SCHEMA_ANNOTATION}; write it with \
             `vknf manifest --schema`)",
            function.name
        )
    })?;
    // The reader checked the annotation against the model's digest; this checks the schema against
    // the model (digest, features and classes).
    let model = served
        .model
        .as_deref()
        .with_context(|| format!("{origin} has no model"))?;
    let (forest, metadata) = GpuForest::from_vkf_bytes_with_metadata(model)
        .with_context(|| format!("{origin}: reading the model its ConfigMaps carry"))?;
    BoundModel { forest, metadata }.check(schema, &format!("the model of {origin}"))?;
    // The host flows go to first: it may be none of the manifest's endpoints (a server bound to
    // all addresses, a manifest without --node-address).
    let mut hosts: Vec<IpAddr> = (host, port)
        .to_socket_addrs()
        .map(|addrs| addrs.map(|addr| addr.ip()).collect())
        .unwrap_or_default();
    for endpoint in &served.spec.endpoints {
        if !hosts.contains(endpoint) {
            hosts.push(*endpoint);
        }
    }
    check_reported(function, &hosts, schema, manifest)?;
    Ok(function.name.clone())
}

/// Asks each host of `function` that answers on the manifest's Open Inference Protocol port which
/// feature schema the model it serves was trained with (the model metadata's `parameters`); a host
/// reporting another schema than `schema` is an error. A host that does not answer, or answers
/// without the digest, is passed over with a log line: the manifest was checked.
fn check_reported(
    function: &DeclaredFunction,
    hosts: &[IpAddr],
    schema: &FeatureSchema,
    manifest: &Path,
) -> anyhow::Result<()> {
    let Some(oip_port) = function.oip_port else {
        tracing::warn!(
            function = %function.name,
            "the manifest declares no Open Inference Protocol port: the schema the server reports is not checked"
        );
        return Ok(());
    };
    // Every host at once, each within its time limit: one that does not answer delays none other.
    let asks = async {
        let mut asks = tokio::task::JoinSet::new();
        for host in hosts {
            let addr = SocketAddr::new(*host, oip_port);
            let function = function.name.clone();
            asks.spawn(async move {
                let metadata = vknf_oip::client::model_metadata(addr, &function, OIP_TIMEOUT).await;
                (addr, metadata.map(|metadata| reported_digest(&metadata)))
            });
        }
        asks.join_all().await
    };
    let reports = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime that asks the function's hosts")?
        .block_on(asks);
    let mut reported = 0;
    for (addr, report) in reports {
        reported += usize::from(matches!(report, Ok(Some(_))));
        match report {
            Ok(Some(digest)) => schema.check_model_digest(&digest).with_context(|| {
                format!(
                    "function {} at {addr} (Open Inference Protocol) serves a model trained with another \
                     feature schema than the model {} carries (a stale manifest, or a server not yet \
                     reloaded)",
                    function.name,
                    manifest.display()
                )
            })?,
            Ok(None) => tracing::warn!(
                function = %function.name,
                %addr,
                "the server does not report the feature schema of its model (model metadata parameter {}): \
                 only the manifest was checked",
                annotations::MODEL_SCHEMA_DIGEST
            ),
            Err(why) => tracing::info!(
                function = %function.name,
                %addr,
                "the schema the server reports is not checked: {why}"
            ),
        }
    }
    if reported == 0 {
        tracing::warn!(
            function = %function.name,
            hosts = ?hosts,
            oip_port,
            "no host reported the feature schema of the model it serves: only the manifest was checked"
        );
    }
    Ok(())
}

/// The feature schema digest a model's metadata reports (`parameters`, key `vknf.schema_digest`), if
/// any.
fn reported_digest(metadata: &serde_json::Value) -> Option<String> {
    metadata
        .get("parameters")
        .and_then(|p| p.get(annotations::MODEL_SCHEMA_DIGEST))
        .and_then(|d| d.as_str())
        .map(|d| d.trim().to_owned())
}
