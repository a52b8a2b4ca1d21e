//! The REST inference request and response: JSON tensors, and the binary tensor data extension (the
//! JSON header followed by raw tensors, `Inference-Header-Content-Length` giving the header's length).

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use vknf_runtime::{DType, FunctionInfo, Rows};

use crate::input::{check_header, rows_from_json, rows_from_raw};
use crate::reply::Outputs;
use crate::schema::{datatype, output_shape, select_outputs};

/// The header of the binary tensor data extension: bytes of JSON before the binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The parameters this server reads (others are accepted and ignored, as the specification allows).
#[derive(Debug, Default, Deserialize)]
struct Parameters {
    binary_data: Option<bool>,
    binary_data_size: Option<u64>,
    binary_data_output: Option<bool>,
    #[serde(flatten)]
    _others: std::collections::HashMap<String, IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct RequestInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Debug, Deserialize)]
struct InferenceRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow)]
    inputs: Vec<RequestInput<'a>>,
    #[serde(default)]
    outputs: Vec<RequestOutput>,
}

/// A REST inference request, decoded against the model's schema.
#[derive(Debug)]
pub struct Decoded {
    /// The request's id, echoed in the response.
    pub id: Option<String>,
    /// The input rows.
    pub rows: Rows,
    /// The outputs to return, in order.
    pub selected: Vec<usize>,
    /// Per selected output: returned as a binary tensor instead of JSON.
    pub binary: Vec<bool>,
}

/// Decodes a request body: `header_length` is the value of `Inference-Header-Content-Length`, if the
/// request had it. Binary inputs are slices of `body`, not copies.
pub fn decode_request(info: &FunctionInfo, body: Bytes, header_length: Option<usize>) -> Result<Decoded, String> {
    let json_length = header_length.unwrap_or(body.len());
    if json_length > body.len() {
        return Err(format!(
            "{HEADER_LENGTH} is {json_length}, but the body has only {} bytes",
            body.len()
        ));
    }
    let request: InferenceRequest<'_> =
        serde_json::from_slice(&body[..json_length]).map_err(|e| format!("malformed inference request: {e}"))?;
    let [input] = request.inputs.as_slice() else {
        return Err(format!(
            "the model takes one input ('{}'), the request has {}",
            info.input.name,
            request.inputs.len()
        ));
    };
    let n_rows = check_header(info, &input.name, &input.datatype, &input.shape)?;
    let binary_size = input.parameters.as_ref().and_then(|p| p.binary_data_size);
    let rows = match (binary_size, input.data) {
        (Some(size), None) => {
            let available = (body.len() - json_length) as u64;
            if size != available {
                return Err(format!(
                    "input '{}' has binary_data_size {size}, the body has {available} bytes after the JSON",
                    input.name
                ));
            }
            rows_from_raw(info, n_rows, body.slice(json_length..))?
        }
        (None, Some(data)) => {
            if json_length != body.len() {
                return Err("binary data follows the JSON, but no input has binary_data_size".into());
            }
            rows_from_json(info, n_rows, data)?
        }
        (Some(_), Some(_)) => {
            return Err(format!("input '{}' has both data and binary_data_size", input.name));
        }
        (None, None) => return Err(format!("input '{}' has no data", input.name)),
    };
    let selected = select_outputs(info, request.outputs.iter().map(|o| o.name.as_str()))?;
    let all_binary = request
        .parameters
        .as_ref()
        .and_then(|p| p.binary_data_output)
        .unwrap_or(false);
    let binary = if request.outputs.is_empty() {
        vec![all_binary; selected.len()]
    } else {
        request
            .outputs
            .iter()
            .map(|o| o.parameters.as_ref().and_then(|p| p.binary_data).unwrap_or(all_binary))
            .collect()
    };
    Ok(Decoded {
        id: request.id,
        rows,
        selected,
        binary,
    })
}

/// Elements of an output as a JSON array, read from its little-endian bytes.
struct Elements<'a> {
    dtype: DType,
    bytes: &'a [u8],
}

impl Serialize for Elements<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.bytes.len() / 4))?;
        for word in self.bytes.chunks_exact(4) {
            let word = [word[0], word[1], word[2], word[3]];
            match self.dtype {
                DType::F32 => seq.serialize_element(&f32::from_le_bytes(word))?,
                DType::U32 => seq.serialize_element(&u32::from_le_bytes(word))?,
                DType::I32 => seq.serialize_element(&i32::from_le_bytes(word))?,
            }
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct ResponseOutput<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Elements<'a>>,
}

#[derive(Serialize)]
struct InferenceResponse<'a> {
    model_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<ResponseOutput<'a>>,
}

/// An encoded response: the JSON, then the binary tensors (their buffers, as the runtime wrote them).
pub struct Encoded {
    /// The JSON header.
    pub json: Vec<u8>,
    /// The binary tensors, in the order of the outputs that have `binary_data_size`.
    pub binary: Vec<Bytes>,
}

/// Encodes the response to `decoded` from the call's outputs.
pub fn encode_response(model_name: &str, info: &FunctionInfo, decoded: &Decoded, mut outputs: Outputs) -> Encoded {
    let n_rows = outputs.n_rows as i64;
    let mut binary = Vec::new();
    for (&index, &is_binary) in decoded.selected.iter().zip(&decoded.binary) {
        if is_binary {
            binary.push(Bytes::from(outputs.take(index)));
        }
    }
    let mut sizes = binary.iter().map(Bytes::len);
    let response = InferenceResponse {
        model_name,
        id: decoded.id.as_deref(),
        outputs: decoded
            .selected
            .iter()
            .zip(&decoded.binary)
            .map(|(&index, &is_binary)| {
                let output = &info.outputs[index];
                ResponseOutput {
                    name: &output.name,
                    datatype: datatype(output.dtype),
                    shape: output_shape(output, n_rows),
                    parameters: is_binary.then(|| BinaryParameters {
                        binary_data_size: sizes.next().unwrap_or(0),
                    }),
                    data: (!is_binary).then(|| Elements {
                        dtype: output.dtype,
                        bytes: outputs.bytes(index),
                    }),
                }
            })
            .collect(),
    };
    // Serialising plain structs of strings and numbers into memory cannot fail.
    let json = serde_json::to_vec(&response).unwrap_or_default();
    Encoded { json, binary }
}

#[cfg(test)]
mod tests {
    use vknf_runtime::{InputInfo, OutputInfo};

    use super::*;

    fn info() -> FunctionInfo {
        FunctionInfo {
            input: InputInfo {
                name: "features".into(),
                dtype: DType::F32,
                width: 2,
            },
            outputs: vec![
                OutputInfo {
                    name: "labels".into(),
                    dtype: DType::U32,
                    width: 1,
                    on_request: false,
                },
                OutputInfo {
                    name: "scores".into(),
                    dtype: DType::F32,
                    width: 3,
                    on_request: true,
                },
            ],
            max_batch_rows: 64,
            accepts_non_finite: false,
            parameters: Default::default(),
        }
    }

    #[test]
    fn a_binary_input_is_the_slice_after_the_json_header() {
        let json =
            br#"{"inputs":[{"name":"features","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}],
            "outputs":[{"name":"scores","parameters":{"binary_data":true}},{"name":"labels"}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(bytemuck::cast_slice::<_, u8>(&[1.5f32, -2.0]));
        let decoded = decode_request(&info(), Bytes::from(body), Some(json.len())).unwrap();
        assert_eq!(decoded.rows.as_bytes(), bytemuck::cast_slice::<_, u8>(&[1.5f32, -2.0]));
        assert_eq!(decoded.selected, [1, 0]);
        assert_eq!(decoded.binary, [true, false]);
    }

    #[test]
    fn inconsistent_binary_sizes_are_refused() {
        let json =
            br#"{"inputs":[{"name":"features","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":12}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&[0; 8]);
        let error = decode_request(&info(), Bytes::from(body), Some(json.len())).unwrap_err();
        assert!(error.contains("binary_data_size 12"), "{error}");
        assert!(decode_request(&info(), Bytes::from_static(b"{}"), Some(100)).is_err());
    }

    #[test]
    fn without_named_outputs_every_output_is_returned() {
        let body = br#"{"id":"7","inputs":[{"name":"features","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}],
            "parameters":{"binary_data_output":true,"other":[1]}}"#;
        let decoded = decode_request(&info(), Bytes::from_static(body), None).unwrap();
        assert_eq!(decoded.selected, [0, 1]);
        assert_eq!(decoded.binary, [true, true]);
        assert_eq!(decoded.id.as_deref(), Some("7"));
    }
}
