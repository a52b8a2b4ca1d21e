//! Input tensors into rows: the tensor's header checked against the function's schema, its elements
//! taken from raw little-endian bytes (gRPC `raw_input_contents`, REST binary extension) or from
//! typed values (JSON `data`, gRPC `contents`).

use std::fmt;

use bytes::Bytes;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use vknf_runtime::{DType, FunctionInfo, Rows};

use crate::schema::datatype;

/// Checks an input tensor's name, data type and shape against the schema; returns its rows.
pub fn check_header(info: &FunctionInfo, name: &str, datatype_name: &str, shape: &[i64]) -> Result<usize, String> {
    let input = &info.input;
    if name != input.name {
        return Err(format!("the model's input is '{}', not '{name}'", input.name));
    }
    let expected = datatype(input.dtype);
    if datatype_name != expected {
        return Err(format!(
            "input '{name}' has datatype {expected}, the request says {datatype_name}"
        ));
    }
    match shape {
        [rows, width] if *rows > 0 && *width == input.width as i64 => Ok(*rows as usize),
        _ => Err(format!(
            "input '{name}' has shape [-1, {}] (rows of {} features), the request says {shape:?}",
            input.width, input.width
        )),
    }
}

/// Rows from raw little-endian bytes (shared, not copied).
pub fn rows_from_raw(info: &FunctionInfo, n_rows: usize, data: Bytes) -> Result<Rows, String> {
    Rows::from_le_bytes(data, n_rows, info.input.width, info.input.dtype).map_err(|e| e.to_string())
}

/// Rows from typed values already decoded, checked for count.
fn rows_from_values(info: &FunctionInfo, n_rows: usize, values: Values) -> Result<Rows, String> {
    let expected = n_rows * info.input.width;
    if values.len() != expected {
        return Err(format!(
            "input '{}' of shape [{n_rows}, {}] needs {expected} elements, the request has {}",
            info.input.name,
            info.input.width,
            values.len()
        ));
    }
    let width = info.input.width;
    match values {
        Values::F32(v) => Rows::f32(v, width),
        Values::U32(v) => Rows::u32(v, width),
        Values::I32(v) => Rows::i32(v, width),
    }
    .map_err(|e| e.to_string())
}

/// Rows from gRPC typed contents: `fp32_contents`, `uint_contents` or `int_contents` by data type.
pub fn rows_from_contents(
    info: &FunctionInfo,
    n_rows: usize,
    fp32: Vec<f32>,
    uint: Vec<u32>,
    int: Vec<i32>,
) -> Result<Rows, String> {
    let values = match info.input.dtype {
        DType::F32 => Values::F32(fp32),
        DType::U32 => Values::U32(uint),
        DType::I32 => Values::I32(int),
    };
    rows_from_values(info, n_rows, values)
}

/// Rows from a JSON `data` value: a flat or nested array of numbers (the specification allows both),
/// decoded straight into elements of the input's type without building a JSON tree.
pub fn rows_from_json(info: &FunctionInfo, n_rows: usize, data: &serde_json::value::RawValue) -> Result<Rows, String> {
    let mut values = match info.input.dtype {
        DType::F32 => Values::F32(Vec::new()),
        DType::U32 => Values::U32(Vec::new()),
        DType::I32 => Values::I32(Vec::new()),
    };
    // Reserving what the shape promises is bounded by the body limit: a larger claim fails the count
    // check below, so the reservation is capped by what the text can hold (at least two bytes a value).
    values.reserve((n_rows * info.input.width).min(data.get().len() / 2 + 1));
    let mut deserializer = serde_json::Deserializer::from_str(data.get());
    Flatten {
        values: &mut values,
        depth: 0,
    }
    .deserialize(&mut deserializer)
    .map_err(|e| format!("input '{}': {e}", info.input.name))?;
    rows_from_values(info, n_rows, values)
}

/// Typed elements of one tensor.
enum Values {
    F32(Vec<f32>),
    U32(Vec<u32>),
    I32(Vec<i32>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::U32(v) => v.len(),
            Values::I32(v) => v.len(),
        }
    }

    fn reserve(&mut self, n: usize) {
        match self {
            Values::F32(v) => v.reserve(n),
            Values::U32(v) => v.reserve(n),
            Values::I32(v) => v.reserve(n),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Values::F32(_) => "FP32",
            Values::U32(_) => "UINT32",
            Values::I32(_) => "INT32",
        }
    }

    fn push_i128(&mut self, value: i128) -> Result<(), String> {
        let type_name = self.type_name();
        let out_of_range = || format!("{value} is out of range for {type_name}");
        match self {
            // Integers are exact in f32 only up to 2^24; the specification's JSON carries FP32 values as
            // numbers, so an integer written for a float input is taken as the nearest f32.
            Values::F32(v) => v.push(value as f32),
            Values::U32(v) => v.push(u32::try_from(value).map_err(|_| out_of_range())?),
            Values::I32(v) => v.push(i32::try_from(value).map_err(|_| out_of_range())?),
        }
        Ok(())
    }

    fn push_f64(&mut self, value: f64) -> Result<(), String> {
        match self {
            Values::F32(v) => {
                v.push(value as f32);
                Ok(())
            }
            _ => Err(format!(
                "{value} is not an integer, and the input is {}",
                self.type_name()
            )),
        }
    }
}

/// Nesting deeper than a tensor of this many dimensions is refused (a deeply nested body must not
/// exhaust the stack).
const MAX_DEPTH: usize = 8;

struct Flatten<'v> {
    values: &'v mut Values,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} numbers, flat or in nested arrays", self.values.type_name())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.values.push_i128(v.into()).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.values.push_i128(v.into()).map_err(E::custom)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.values.push_f64(v).map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(serde::de::Error::custom(format!(
                "arrays nested deeper than {MAX_DEPTH} levels"
            )));
        }
        while seq
            .next_element_seed(Flatten {
                values: &mut *self.values,
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use vknf_runtime::{InputInfo, OutputInfo};

    use super::*;

    fn info(dtype: DType) -> FunctionInfo {
        FunctionInfo {
            input: InputInfo {
                name: "features".into(),
                dtype,
                width: 2,
            },
            outputs: vec![OutputInfo {
                name: "labels".into(),
                dtype: DType::U32,
                width: 1,
                on_request: false,
            }],
            max_batch_rows: 64,
            accepts_non_finite: false,
            parameters: Default::default(),
        }
    }

    fn json(text: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn flat_and_nested_json_give_the_same_rows() {
        let info = info(DType::F32);
        let flat = rows_from_json(&info, 2, &json("[1, 2.5, 3, 4]")).unwrap();
        let nested = rows_from_json(&info, 2, &json("[[1, 2.5], [3, 4]]")).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat.as_bytes(), bytemuck::cast_slice::<_, u8>(&[1f32, 2.5, 3.0, 4.0]));
    }

    #[test]
    fn values_that_do_not_fit_the_input_are_refused_with_a_reason() {
        let u32_info = info(DType::U32);
        assert!(
            rows_from_json(&u32_info, 1, &json("[1, -1]"))
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            rows_from_json(&u32_info, 1, &json("[1, 1.5]"))
                .unwrap_err()
                .contains("not an integer")
        );
        assert!(rows_from_json(&u32_info, 1, &json("[1, \"a\"]")).is_err());
        assert!(
            rows_from_json(&u32_info, 2, &json("[1, 2, 3]"))
                .unwrap_err()
                .contains("needs 4")
        );
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(
            rows_from_json(&u32_info, 1, &json(&deep))
                .unwrap_err()
                .contains("nested")
        );
        let i32_info = info(DType::I32);
        assert_eq!(
            rows_from_json(&i32_info, 1, &json("[-5, 7]")).unwrap().as_bytes(),
            bytemuck::cast_slice::<_, u8>(&[-5i32, 7])
        );
    }

    #[test]
    fn headers_are_checked_against_the_schema() {
        let info = info(DType::F32);
        assert_eq!(check_header(&info, "features", "FP32", &[3, 2]), Ok(3));
        assert!(check_header(&info, "x", "FP32", &[3, 2]).is_err());
        assert!(check_header(&info, "features", "INT32", &[3, 2]).is_err());
        assert!(check_header(&info, "features", "FP32", &[3, 5]).is_err());
        assert!(check_header(&info, "features", "FP32", &[6]).is_err());
        assert!(check_header(&info, "features", "FP32", &[0, 2]).is_err());
    }
}
