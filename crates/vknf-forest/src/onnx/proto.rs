//! A hand-written subset of the ONNX protobuf schema (`onnx.proto`), only the fields the
//! importer needs. Field numbers follow `onnx.proto`. The importer decodes small messages
//! (graph inputs, opsets) with these types and streams the big tree attributes with
//! [`super::wire`]; tests use them to build models, including hostile ones.

/// `ModelProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// IR version.
    #[prost(int64, optional, tag = "1")]
    pub ir_version: Option<i64>,
    /// Operator sets used.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Producing tool.
    #[prost(string, optional, tag = "2")]
    pub producer_name: Option<String>,
    /// Producing tool version.
    #[prost(string, optional, tag = "3")]
    pub producer_version: Option<String>,
    /// The graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

/// `OperatorSetIdProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// Domain ("" is the default ONNX domain).
    #[prost(string, optional, tag = "1")]
    pub domain: Option<String>,
    /// Opset version.
    #[prost(int64, optional, tag = "2")]
    pub version: Option<i64>,
}

/// `GraphProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// Nodes in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Graph name.
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    /// Constant tensors.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Graph inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Graph outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `NodeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// Input value names.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output value names.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Node name.
    #[prost(string, optional, tag = "3")]
    pub name: Option<String>,
    /// Operator type.
    #[prost(string, optional, tag = "4")]
    pub op_type: Option<String>,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Operator domain.
    #[prost(string, optional, tag = "7")]
    pub domain: Option<String>,
}

/// `AttributeProto.AttributeType` values.
pub mod attribute_type {
    /// FLOAT
    pub const FLOAT: i32 = 1;
    /// INT
    pub const INT: i32 = 2;
    /// STRING
    pub const STRING: i32 = 3;
    /// TENSOR
    pub const TENSOR: i32 = 4;
    /// FLOATS
    pub const FLOATS: i32 = 6;
    /// INTS
    pub const INTS: i32 = 7;
    /// STRINGS
    pub const STRINGS: i32 = 8;
}

/// `AttributeProto`. Repeated scalars are unpacked, as onnx (proto2) writes them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// Attribute name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Single float.
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    /// Single int.
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    /// Single string.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: Option<Vec<u8>>,
    /// Single tensor.
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    /// Floats.
    #[prost(float, repeated, packed = "false", tag = "7")]
    pub floats: Vec<f32>,
    /// Ints.
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    /// Strings.
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
    /// Declared type ([`attribute_type`]).
    #[prost(int32, optional, tag = "20")]
    pub r#type: Option<i32>,
}

/// `TensorProto.DataType` values.
pub mod data_type {
    /// float32
    pub const FLOAT: i32 = 1;
    /// uint8
    pub const UINT8: i32 = 2;
    /// int8
    pub const INT8: i32 = 3;
    /// int32
    pub const INT32: i32 = 6;
    /// int64
    pub const INT64: i32 = 7;
    /// string
    pub const STRING: i32 = 8;
    /// bool
    pub const BOOL: i32 = 9;
    /// float64
    pub const DOUBLE: i32 = 11;
}

/// `TensorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// Shape.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// Element type ([`data_type`]).
    #[prost(int32, optional, tag = "2")]
    pub data_type: Option<i32>,
    /// float32 values.
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    /// int32/uint8/int8/bool values.
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    /// int64 values.
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    /// Tensor name.
    #[prost(string, optional, tag = "8")]
    pub name: Option<String>,
    /// Little-endian raw values.
    #[prost(bytes = "vec", optional, tag = "9")]
    pub raw_data: Option<Vec<u8>>,
    /// float64 values.
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    /// 0 = inline, 1 = external file (not supported by the importer).
    #[prost(int32, optional, tag = "14")]
    pub data_location: Option<i32>,
}

/// `ValueInfoProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// Value name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Value type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `TypeProto` (only the tensor case).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// Tensor type.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorTypeProto {
    /// Element type ([`data_type`]).
    #[prost(int32, optional, tag = "1")]
    pub elem_type: Option<i32>,
    /// Shape, when known.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// Dimensions.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    /// A fixed size.
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    /// A symbolic size.
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

impl AttributeProto {
    /// An INTS attribute.
    pub fn ints(name: &str, values: impl IntoIterator<Item = i64>) -> Self {
        AttributeProto {
            name: Some(name.into()),
            ints: values.into_iter().collect(),
            r#type: Some(attribute_type::INTS),
            ..Default::default()
        }
    }
    /// A FLOATS attribute.
    pub fn floats(name: &str, values: impl IntoIterator<Item = f32>) -> Self {
        AttributeProto {
            name: Some(name.into()),
            floats: values.into_iter().collect(),
            r#type: Some(attribute_type::FLOATS),
            ..Default::default()
        }
    }
    /// A STRINGS attribute.
    pub fn strings<S: AsRef<str>>(name: &str, values: impl IntoIterator<Item = S>) -> Self {
        AttributeProto {
            name: Some(name.into()),
            strings: values.into_iter().map(|s| s.as_ref().as_bytes().to_vec()).collect(),
            r#type: Some(attribute_type::STRINGS),
            ..Default::default()
        }
    }
    /// A STRING attribute.
    pub fn string(name: &str, value: &str) -> Self {
        AttributeProto {
            name: Some(name.into()),
            s: Some(value.as_bytes().to_vec()),
            r#type: Some(attribute_type::STRING),
            ..Default::default()
        }
    }
    /// An INT attribute.
    pub fn int(name: &str, value: i64) -> Self {
        AttributeProto {
            name: Some(name.into()),
            i: Some(value),
            r#type: Some(attribute_type::INT),
            ..Default::default()
        }
    }
    /// A TENSOR attribute.
    pub fn tensor(name: &str, value: TensorProto) -> Self {
        AttributeProto {
            name: Some(name.into()),
            t: Some(value),
            r#type: Some(attribute_type::TENSOR),
            ..Default::default()
        }
    }
}

impl ValueInfoProto {
    /// A `[None, n_features]` tensor input of `elem_type`.
    pub fn matrix(name: &str, elem_type: i32, n_features: Option<i64>) -> Self {
        ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorTypeProto {
                    elem_type: Some(elem_type),
                    shape: Some(TensorShapeProto {
                        dim: vec![
                            Dimension {
                                dim_value: None,
                                dim_param: Some("N".into()),
                            },
                            Dimension {
                                dim_value: n_features,
                                dim_param: None,
                            },
                        ],
                    }),
                }),
            }),
        }
    }
}
