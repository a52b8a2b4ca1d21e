//! Import of ONNX-ML tree ensembles.
//!
//! Supported operators (domain `ai.onnx.ml`): `TreeEnsembleClassifier` and
//! `TreeEnsembleRegressor` (opsets 1 and 3, `nodes_values` or `nodes_values_as_tensor`, with
//! or without ZipMap after them) and `TreeEnsemble` (opset 5). The graph may contain other
//! nodes after the ensemble (ZipMap, Cast, ArgMax...) but only `Cast`/`Identity` between the
//! graph input and the ensemble: any other preprocessing would be silently skipped, so it is
//! rejected.
//!
//! The model file is read once into memory and walked in place: ModelProto, GraphProto and
//! NodeProto are located with the zero-copy wire reader, the big repeated attributes are
//! streamed and zero class weights are dropped as they are read.

mod attrs;
mod classic;
pub mod proto;
mod v5;

use std::path::Path;

use prost::Message;

use crate::import::{ImportError, ImportOptions, Progress, Stage, Tracker, read_file_with_progress};
use crate::model::Forest;
use crate::validate::RawForest;
use crate::wire::{Fields, WireValue};
use attrs::NodeView;
use proto::{ValueInfoProto, data_type};

const ML_DOMAIN: &str = "ai.onnx.ml";

/// Imports and validates the tree ensemble of an ONNX file.
pub fn import_onnx_file(
    path: &Path,
    options: &ImportOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Forest, ImportError> {
    let bytes = read_file_with_progress(path, progress)?;
    import_onnx_bytes(&bytes, options, progress)
}

/// Imports and validates the tree ensemble of an in-memory ONNX model.
pub fn import_onnx_bytes(
    bytes: &[u8],
    options: &ImportOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Forest, ImportError> {
    let raw = read_onnx(bytes, options, progress)?;
    let mut report = |done: usize, total: usize| {
        progress(Progress {
            stage: Stage::Validating,
            done: done as u64,
            total: total as u64,
        })
    };
    Ok(raw.validate_with_progress(&mut report)?)
}

/// Decodes the tree ensemble of an ONNX model without validating it.
pub fn read_onnx(
    bytes: &[u8],
    options: &ImportOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<RawForest, ImportError> {
    let mut graph = None;
    for field in Fields::new(bytes) {
        let (number, value, offset) = field.map_err(|source| ImportError::Wire {
            context: "ModelProto",
            source,
        })?;
        if let (7, WireValue::Bytes(g)) = (number, value) {
            graph = Some((g, offset));
        }
    }
    let (graph, graph_offset) =
        graph.ok_or_else(|| ImportError::NotOnnx("no graph (is this an ONNX model file?)".into()))?;

    let mut nodes = Vec::new();
    let mut inputs = Vec::new();
    for field in Fields::new(graph) {
        let (number, value, offset) = field.map_err(|source| ImportError::Wire {
            context: "GraphProto",
            source,
        })?;
        match (number, value) {
            (1, WireValue::Bytes(node)) => {
                nodes.push(NodeView::parse(node, graph_offset + offset)?);
            }
            (11, WireValue::Bytes(input)) => {
                inputs.push(ValueInfoProto::decode(input).map_err(|source| ImportError::Decode {
                    context: "graph input",
                    source,
                })?);
            }
            _ => {}
        }
    }

    let ensembles: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.domain == ML_DOMAIN && ensemble_kind(n.op_type).is_some())
        .map(|(i, _)| i)
        .collect();
    let index = match ensembles[..] {
        [] => return Err(ImportError::NoTreeEnsemble),
        [one] => one,
        _ => return Err(ImportError::MultipleTreeEnsembles(ensembles.len())),
    };
    let ensemble = &nodes[index];
    let declared_features = declared_features(ensemble, &nodes, &inputs)?;
    let context = Context {
        declared_features: options.n_features.or(declared_features),
        options: *options,
    };
    let mut tracker = Tracker::new(progress, bytes.len() as u64);
    let raw = match ensemble_kind(ensemble.op_type) {
        Some(Kind::Classifier) => classic::read(ensemble, true, &context, &mut tracker)?,
        Some(Kind::Regressor) => classic::read(ensemble, false, &context, &mut tracker)?,
        Some(Kind::V5) | None => v5::read(ensemble, &context, &mut tracker)?,
    };
    tracker.at(bytes.len());
    Ok(raw)
}

/// The model's `metadata_props` (ModelProto field 14, `StringStringEntryProto` key 1, value 2),
/// for example the `vknf.schema_digest` that `python/train_traffic.py` writes. The graph is
/// skipped unread. A repeated key keeps its last value, as onnxruntime's metadata map does.
pub fn onnx_metadata(bytes: &[u8]) -> Result<std::collections::BTreeMap<String, String>, ImportError> {
    let wire = |context: &'static str| move |source: crate::wire::WireError| ImportError::Wire { context, source };
    let mut metadata = std::collections::BTreeMap::new();
    for field in Fields::new(bytes) {
        let (number, value, _) = field.map_err(wire("ModelProto"))?;
        let (14, WireValue::Bytes(entry)) = (number, value) else {
            continue;
        };
        let (mut key, mut text) = (String::new(), String::new());
        for field in Fields::new(entry) {
            let (number, value, _) = field.map_err(wire("StringStringEntryProto"))?;
            if let (1 | 2, WireValue::Bytes(b)) = (number, value) {
                let s = String::from_utf8_lossy(b).into_owned();
                if number == 1 { key = s } else { text = s }
            }
        }
        metadata.insert(key, text);
    }
    Ok(metadata)
}

/// What the operator-specific readers need from the graph.
pub(crate) struct Context {
    /// Feature count from the options or the graph input shape.
    pub declared_features: Option<u64>,
    pub options: ImportOptions,
}

enum Kind {
    Classifier,
    Regressor,
    V5,
}

fn ensemble_kind(op_type: &str) -> Option<Kind> {
    match op_type {
        "TreeEnsembleClassifier" => Some(Kind::Classifier),
        "TreeEnsembleRegressor" => Some(Kind::Regressor),
        "TreeEnsemble" => Some(Kind::V5),
        _ => None,
    }
}

/// Follows the ensemble's input back to a graph input through Cast/Identity nodes and
/// returns the feature count its shape declares, if any.
fn declared_features(
    ensemble: &NodeView<'_>,
    nodes: &[NodeView<'_>],
    inputs: &[ValueInfoProto],
) -> Result<Option<u64>, ImportError> {
    let [mut name] = ensemble.inputs[..] else {
        return Err(ImportError::Unsupported(format!(
            "{} with {} inputs (expected 1)",
            ensemble.op_type,
            ensemble.inputs.len()
        )));
    };
    for _ in 0..=nodes.len() {
        if let Some(input) = inputs.iter().find(|i| i.name.as_deref() == Some(name)) {
            return input_features(input);
        }
        let producer = nodes.iter().find(|n| n.outputs.contains(&name)).ok_or_else(|| {
            ImportError::NotOnnx(format!(
                "value {name:?} is neither a graph input nor produced by a node"
            ))
        })?;
        if !(producer.domain.is_empty() && matches!(producer.op_type, "Cast" | "Identity")) {
            return Err(ImportError::Unsupported(format!(
                "operator {} before the tree ensemble (only Cast/Identity may precede it; \
                 apply preprocessing before sending rows)",
                producer.op_type
            )));
        }
        name = producer
            .inputs
            .first()
            .copied()
            .ok_or_else(|| ImportError::NotOnnx(format!("{} without input", producer.op_type)))?;
    }
    Err(ImportError::NotOnnx(
        "graph has a cycle before the tree ensemble".into(),
    ))
}

fn input_features(input: &ValueInfoProto) -> Result<Option<u64>, ImportError> {
    let Some(tensor) = input.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()) else {
        return Ok(None);
    };
    match tensor.elem_type {
        Some(data_type::FLOAT | data_type::DOUBLE | data_type::INT32 | data_type::INT64 | data_type::BOOL) | None => {}
        Some(other) => {
            return Err(ImportError::Unsupported(format!(
                "graph input of element type {other} (numeric tensors only)"
            )));
        }
    }
    let Some(shape) = &tensor.shape else {
        return Ok(None);
    };
    match &shape.dim[..] {
        [_, features] => Ok(features.dim_value.and_then(|v| u64::try_from(v).ok())),
        [_] => Ok(None),
        dims => Err(ImportError::Unsupported(format!(
            "graph input of rank {} (expected [rows, features])",
            dims.len()
        ))),
    }
}
