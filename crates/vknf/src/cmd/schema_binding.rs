//! How a traffic model is bound to the feature schema it was trained with, so that the capture side
//! and the served function cannot disagree silently.
//!
//! The binding is the schema's own digest (`FeatureSchema::digest`, SHA-256 of its canonical text):
//! - an ONNX model carries it in its metadata as `vknf.schema_digest` (`python/train_traffic.py`);
//! - `vknf compile-model` copies that entry into the `.vkf` file's metadata (format version 2);
//! - `vknf manifest --schema S.json` checks it against the model and declares it on the function's
//!   Service as the annotation `vknf.io/feature-schema-sha256`, which `vknf classify --addr` reads
//!   from the manifest the function is served from (`--manifest`).
//!
//! A model without the entry, or with another digest, is refused with the two digests in the error.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use vknf_flow::FeatureSchema;
use vknf_forest::{GpuForest, VkfMetadata};

/// Metadata key of the schema digest, in ONNX `metadata_props` and in `.vkf` metadata.
pub const SCHEMA_DIGEST_KEY: &str = "vknf.schema_digest";
/// The Service annotation that declares a function's feature schema digest.
pub const SCHEMA_ANNOTATION: &str = "vknf.io/feature-schema-sha256";

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
    /// Its port.
    pub port: u16,
    /// Its `vknf.io/feature-schema-sha256` annotation.
    pub schema_digest: Option<String>,
}

/// The functions (Services labelled `vknf.io/function: "true"`) of a manifest file or directory.
pub fn declared_functions(path: &Path) -> anyhow::Result<Vec<DeclaredFunction>> {
    use serde::Deserialize as _;

    let files: Vec<PathBuf> = if path.is_dir() {
        vknf_manifest::manifest_files(path)?
    } else {
        vec![path.to_owned()]
    };
    let mut functions = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
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
    let port = value.get("spec")?.get("ports")?.get(0)?.get("port")?.as_u64()?;
    Some(DeclaredFunction {
        name: format!("{namespace}/{name}"),
        port: u16::try_from(port).ok()?,
        schema_digest: metadata
            .get("annotations")
            .and_then(|a| a.get(SCHEMA_ANNOTATION))
            .and_then(text)
            .map(|s| s.trim().to_owned()),
    })
}

/// Checks that the function a manifest serves on `port` declares `schema` as its feature schema.
pub fn check_declared(manifest: &Path, port: u16, schema: &FeatureSchema) -> anyhow::Result<String> {
    let functions = declared_functions(manifest)?;
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
    let digest = function.schema_digest.as_deref().with_context(|| {
        format!(
            "function {} declares no feature schema (annotation {SCHEMA_ANNOTATION}; write it with \
             `vknf manifest --schema`)",
            function.name
        )
    })?;
    schema.check_model_digest(digest).with_context(|| {
        format!(
            "function {} (from {}) and the schema do not match",
            function.name,
            manifest.display()
        )
    })?;
    Ok(function.name.clone())
}
