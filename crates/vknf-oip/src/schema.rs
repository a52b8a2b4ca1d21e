//! The v2 view of a function's schema: data types, tensor shapes, model metadata.

use std::collections::BTreeMap;

use serde::Serialize;
use vknf_runtime::{DType, FunctionInfo, OutputInfo};

use crate::names::model_name;

/// The platform a model reports.
pub const PLATFORM: &str = "vknf";

/// The v2 name of a data type.
pub fn datatype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "FP32",
        DType::U32 => "UINT32",
        DType::I32 => "INT32",
    }
}

/// Metadata of one tensor, as the specification lays it out (REST JSON and gRPC alike).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorMetadata {
    /// The tensor name.
    pub name: String,
    /// The v2 data type.
    pub datatype: &'static str,
    /// The shape; `-1` is the number of rows.
    pub shape: Vec<i64>,
}

/// Metadata of a model: its function's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelMetadata {
    /// The model name.
    pub name: String,
    /// Versions served: none, a function has one version at a time.
    pub versions: Vec<String>,
    /// Always [`PLATFORM`].
    pub platform: &'static str,
    /// The one input: `[-1, width]`.
    pub inputs: Vec<TensorMetadata>,
    /// Every output, those computed on request included.
    pub outputs: Vec<TensorMetadata>,
    /// What the function says of its model ([`FunctionInfo::parameters`]), as a v2 `$parameters`
    /// object (REST only: the gRPC message has no such field): for a traffic model, the digest of the
    /// feature schema it was trained with (`vknf.schema_digest`). Left out when empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
}

/// The shape of an output for `n_rows` rows: one element per row is a vector (as scikit-learn's
/// `predict` returns), more is a matrix (as `predict_proba`).
pub fn output_shape(output: &OutputInfo, n_rows: i64) -> Vec<i64> {
    if output.width == 1 {
        vec![n_rows]
    } else {
        vec![n_rows, output.width as i64]
    }
}

impl ModelMetadata {
    /// The metadata of the function `function` with schema `info`.
    pub fn of(function: &str, info: &FunctionInfo) -> ModelMetadata {
        ModelMetadata {
            name: model_name(function),
            versions: Vec::new(),
            platform: PLATFORM,
            inputs: vec![TensorMetadata {
                name: info.input.name.clone(),
                datatype: datatype(info.input.dtype),
                shape: vec![-1, info.input.width as i64],
            }],
            outputs: info
                .outputs
                .iter()
                .map(|output| TensorMetadata {
                    name: output.name.clone(),
                    datatype: datatype(output.dtype),
                    shape: output_shape(output, -1),
                })
                .collect(),
            parameters: info.parameters.clone(),
        }
    }
}

/// Which outputs a request gets back: all of them when it names none (as the specification says),
/// else those it names, in its order.
pub fn select_outputs<'a>(
    info: &FunctionInfo,
    requested: impl ExactSizeIterator<Item = &'a str>,
) -> Result<Vec<usize>, String> {
    if requested.len() == 0 {
        return Ok((0..info.outputs.len()).collect());
    }
    let mut selected = Vec::with_capacity(requested.len());
    for name in requested {
        let index = info.output_index(name).ok_or_else(|| {
            let known: Vec<&str> = info.outputs.iter().map(|o| o.name.as_str()).collect();
            format!("the model has no output '{name}' (outputs: {})", known.join(", "))
        })?;
        if selected.contains(&index) {
            return Err(format!("output '{name}' is requested twice"));
        }
        selected.push(index);
    }
    Ok(selected)
}

/// The output mask of a selection.
pub fn output_mask(selected: &[usize]) -> u32 {
    selected.iter().fold(0, |mask, index| mask | (1 << index))
}
