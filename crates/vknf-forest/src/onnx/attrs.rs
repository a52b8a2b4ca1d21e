//! Zero-copy views of ONNX nodes and streaming decoders for their attributes.

use std::collections::HashMap;

use super::proto::data_type;
use crate::import::{ImportError, Tracker};
use crate::wire::{Fields, WireValue, for_each_packed_varint, read_varint};

/// Report progress every this many values inside a big attribute.
const TICK: usize = 1 << 16;

/// One `AttributeProto`, undecoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attr<'a> {
    pub name: &'a str,
    pub body: &'a [u8],
    /// Absolute offset of `body` in the model file.
    pub offset: usize,
}

/// One `NodeProto` with its attributes located but not decoded.
#[derive(Debug, Clone)]
pub(crate) struct NodeView<'a> {
    pub op_type: &'a str,
    pub domain: &'a str,
    pub inputs: Vec<&'a str>,
    pub outputs: Vec<&'a str>,
    pub attrs: Vec<Attr<'a>>,
}

fn wire(context: &'static str) -> impl Fn(crate::wire::WireError) -> ImportError {
    move |source| ImportError::Wire { context, source }
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, ImportError> {
    std::str::from_utf8(bytes).map_err(|_| ImportError::NotOnnx(format!("{what} is not valid UTF-8")))
}

impl<'a> NodeView<'a> {
    /// Locates the fields of a `NodeProto` at absolute offset `base`.
    pub(crate) fn parse(body: &'a [u8], base: usize) -> Result<Self, ImportError> {
        let mut node = NodeView {
            op_type: "",
            domain: "",
            inputs: Vec::new(),
            outputs: Vec::new(),
            attrs: Vec::new(),
        };
        for field in Fields::new(body) {
            let (number, value, offset) = field.map_err(wire("NodeProto"))?;
            let WireValue::Bytes(bytes) = value else {
                continue;
            };
            match number {
                1 => node.inputs.push(utf8(bytes, "node input")?),
                2 => node.outputs.push(utf8(bytes, "node output")?),
                4 => node.op_type = utf8(bytes, "op_type")?,
                7 => node.domain = utf8(bytes, "domain")?,
                5 => node.attrs.push(Attr::parse(bytes, base + offset)?),
                _ => {}
            }
        }
        Ok(node)
    }

    /// Attributes by name; a repeated name is an error.
    pub(crate) fn attr_map(&self) -> Result<HashMap<&'a str, Attr<'a>>, ImportError> {
        let mut map = HashMap::with_capacity(self.attrs.len());
        for a in &self.attrs {
            if map.insert(a.name, *a).is_some() {
                return Err(ImportError::attr(a.name, "appears twice"));
            }
        }
        Ok(map)
    }
}

impl<'a> Attr<'a> {
    fn parse(body: &'a [u8], offset: usize) -> Result<Self, ImportError> {
        let mut name = None;
        for field in Fields::new(body) {
            if let (1, WireValue::Bytes(b), _) = field.map_err(wire("AttributeProto"))? {
                name = Some(utf8(b, "attribute name")?);
            }
        }
        Ok(Attr {
            name: name.ok_or_else(|| ImportError::NotOnnx("attribute without a name".into()))?,
            body,
            offset,
        })
    }

    fn fields(&self) -> impl Iterator<Item = Result<(u32, WireValue<'a>, usize), ImportError>> + 'a {
        Fields::new(self.body).map(|f| f.map_err(wire("AttributeProto")))
    }

    /// The single INT value (field `i`).
    pub(crate) fn int(&self) -> Result<i64, ImportError> {
        let mut found = None;
        for f in self.fields() {
            if let (3, WireValue::Varint(v), _) = f? {
                found = Some(v as i64);
            }
        }
        found.ok_or_else(|| ImportError::attr(self.name, "expected an INT value"))
    }

    /// The single STRING value (field `s`).
    pub(crate) fn string(&self) -> Result<&'a str, ImportError> {
        let mut found = None;
        for f in self.fields() {
            if let (4, WireValue::Bytes(b), _) = f? {
                found = Some(b);
            }
        }
        let bytes = found.ok_or_else(|| ImportError::attr(self.name, "expected a STRING value"))?;
        std::str::from_utf8(bytes).map_err(|_| ImportError::attr(self.name, "string is not UTF-8"))
    }

    /// The TENSOR value (field `t`) as a tensor view.
    pub(crate) fn tensor(&self) -> Result<TensorView<'a>, ImportError> {
        let mut found = None;
        for f in self.fields() {
            if let (5, WireValue::Bytes(b), offset) = f? {
                found = Some((b, offset));
            }
        }
        let (bytes, offset) = found.ok_or_else(|| ImportError::attr(self.name, "expected a TENSOR value"))?;
        TensorView::parse(self.name, bytes, self.offset + offset)
    }

    /// Streams the INTS values (field `ints`, packed or not); returns the count.
    pub(crate) fn for_each_int(&self, tracker: &mut Tracker<'_>, mut f: impl FnMut(i64)) -> Result<usize, ImportError> {
        let mut count = 0usize;
        for field in self.fields() {
            match field? {
                (8, WireValue::Varint(v), offset) => {
                    f(v as i64);
                    count += 1;
                    if count % TICK == 0 {
                        tracker.at(self.offset + offset);
                    }
                }
                (8, WireValue::Bytes(packed), offset) => {
                    for_each_packed_varint(packed, |v| {
                        f(v as i64);
                        count += 1;
                    })
                    .map_err(|p| ImportError::attr(self.name, p))?;
                    tracker.at(self.offset + offset + packed.len());
                }
                (8, _, _) => return Err(ImportError::attr(self.name, "ints have a bad wire type")),
                _ => {}
            }
        }
        tracker.at(self.offset + self.body.len());
        Ok(count)
    }

    /// Streams the FLOATS values (field `floats`, packed or not); returns the count.
    pub(crate) fn for_each_float(
        &self,
        tracker: &mut Tracker<'_>,
        mut f: impl FnMut(f32),
    ) -> Result<usize, ImportError> {
        let mut count = 0usize;
        for field in self.fields() {
            match field? {
                (7, WireValue::Fixed32(bits), offset) => {
                    f(f32::from_bits(bits));
                    count += 1;
                    if count % TICK == 0 {
                        tracker.at(self.offset + offset);
                    }
                }
                (7, WireValue::Bytes(packed), offset) => {
                    if packed.len() % 4 != 0 {
                        return Err(ImportError::attr(self.name, "packed floats are truncated"));
                    }
                    for c in packed.chunks_exact(4) {
                        f(f32::from_le_bytes(c.try_into().expect("4 bytes")));
                    }
                    count += packed.len() / 4;
                    tracker.at(self.offset + offset + packed.len());
                }
                (7, _, _) => {
                    return Err(ImportError::attr(self.name, "floats have a bad wire type"));
                }
                _ => {}
            }
        }
        tracker.at(self.offset + self.body.len());
        Ok(count)
    }

    /// Streams the STRINGS values (field `strings`); returns the count.
    pub(crate) fn for_each_string(
        &self,
        mut f: impl FnMut(&'a [u8]) -> Result<(), ImportError>,
    ) -> Result<usize, ImportError> {
        let mut count = 0usize;
        for field in self.fields() {
            if let (9, value, _) = field? {
                let WireValue::Bytes(b) = value else {
                    return Err(ImportError::attr(self.name, "strings have a bad wire type"));
                };
                f(b)?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// All INTS values.
    pub(crate) fn ints(&self, tracker: &mut Tracker<'_>) -> Result<Vec<i64>, ImportError> {
        let mut v = Vec::new();
        self.for_each_int(tracker, |x| v.push(x))?;
        Ok(v)
    }

    /// All STRINGS values as UTF-8.
    pub(crate) fn strings(&self) -> Result<Vec<String>, ImportError> {
        let mut v = Vec::new();
        self.for_each_string(|b| {
            let s = std::str::from_utf8(b).map_err(|_| ImportError::attr(self.name, "string is not UTF-8"))?;
            v.push(s.to_owned());
            Ok(())
        })?;
        Ok(v)
    }

    /// FLOATS values, or the values of the TENSOR form, widened to f64.
    pub(crate) fn numbers(&self, tracker: &mut Tracker<'_>) -> Result<Vec<f64>, ImportError> {
        let mut v = Vec::new();
        if self.has_field(5)? {
            self.tensor()?.for_each_number(tracker, |x| v.push(x))?;
        } else {
            self.for_each_float(tracker, |x| v.push(f64::from(x)))?;
        }
        Ok(v)
    }

    /// Streams FLOATS or the TENSOR form's values, widened to f64; returns the count.
    pub(crate) fn for_each_number(
        &self,
        tracker: &mut Tracker<'_>,
        mut f: impl FnMut(f64),
    ) -> Result<usize, ImportError> {
        if self.has_field(5)? {
            self.tensor()?.for_each_number(tracker, f)
        } else {
            self.for_each_float(tracker, |x| f(f64::from(x)))
        }
    }

    fn has_field(&self, number: u32) -> Result<bool, ImportError> {
        for f in self.fields() {
            if f?.0 == number {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// One `TensorProto`, undecoded.
pub(crate) struct TensorView<'a> {
    name: &'a str,
    body: &'a [u8],
    offset: usize,
    data_type: i32,
}

impl<'a> TensorView<'a> {
    fn parse(name: &'a str, body: &'a [u8], offset: usize) -> Result<Self, ImportError> {
        let mut data_type = None;
        for f in Fields::new(body) {
            match f.map_err(wire("TensorProto"))? {
                (2, WireValue::Varint(v), _) => data_type = Some(v as i32),
                (14, WireValue::Varint(1), _) => {
                    return Err(ImportError::Unsupported(format!(
                        "attribute {name}: tensors stored in external files"
                    )));
                }
                _ => {}
            }
        }
        Ok(TensorView {
            name,
            body,
            offset,
            data_type: data_type.ok_or_else(|| ImportError::attr(name, "tensor without data_type"))?,
        })
    }

    /// Streams numeric values (float, double, int and uint8 tensors) as f64.
    pub(crate) fn for_each_number(
        &self,
        tracker: &mut Tracker<'_>,
        mut f: impl FnMut(f64),
    ) -> Result<usize, ImportError> {
        let (width, field) = match self.data_type {
            data_type::FLOAT => (4, 4),
            data_type::DOUBLE => (8, 10),
            data_type::UINT8 | data_type::INT8 | data_type::INT32 | data_type::BOOL => (0, 5),
            data_type::INT64 => (0, 7),
            other => {
                return Err(ImportError::attr(
                    self.name,
                    format!("tensor element type {other} is not numeric"),
                ));
            }
        };
        let mut count = 0usize;
        for item in Fields::new(self.body) {
            let (number, value, offset) = item.map_err(wire("TensorProto"))?;
            if number == 9 {
                let WireValue::Bytes(raw) = value else {
                    return Err(ImportError::attr(self.name, "raw_data has a bad wire type"));
                };
                count += self.raw(raw, &mut f)?;
                tracker.at(self.offset + offset + raw.len());
                continue;
            }
            if number != field {
                continue;
            }
            let n = match (width, value) {
                (4, WireValue::Fixed32(b)) => {
                    f(f64::from(f32::from_bits(b)));
                    1
                }
                (8, WireValue::Fixed64(b)) => {
                    f(f64::from_bits(b));
                    1
                }
                (0, WireValue::Varint(v)) => {
                    f(self.int_value(v));
                    1
                }
                (4, WireValue::Bytes(p)) if p.len() % 4 == 0 => {
                    p.chunks_exact(4)
                        .for_each(|c| f(f64::from(f32::from_le_bytes(c.try_into().expect("4 bytes")))));
                    p.len() / 4
                }
                (8, WireValue::Bytes(p)) if p.len() % 8 == 0 => {
                    p.chunks_exact(8)
                        .for_each(|c| f(f64::from_le_bytes(c.try_into().expect("8 bytes"))));
                    p.len() / 8
                }
                (0, WireValue::Bytes(p)) => {
                    let mut pos = 0;
                    let mut n = 0usize;
                    while pos < p.len() {
                        let v = read_varint(p, &mut pos).map_err(|e| ImportError::attr(self.name, e))?;
                        f(self.int_value(v));
                        n += 1;
                    }
                    n
                }
                _ => return Err(ImportError::attr(self.name, "tensor data has a bad encoding")),
            };
            count += n;
            tracker.at(self.offset + offset);
        }
        Ok(count)
    }

    fn int_value(&self, v: u64) -> f64 {
        if self.data_type == data_type::INT64 {
            v as i64 as f64
        } else {
            // int32_data holds int32/uint8/int8/bool as (sign-extended) int32.
            v as i64 as i32 as f64
        }
    }

    fn raw(&self, raw: &[u8], f: &mut impl FnMut(f64)) -> Result<usize, ImportError> {
        let size = match self.data_type {
            data_type::FLOAT | data_type::INT32 => 4,
            data_type::DOUBLE | data_type::INT64 => 8,
            data_type::UINT8 | data_type::INT8 | data_type::BOOL => 1,
            _ => 0,
        };
        if size == 0 || raw.len() % size != 0 {
            return Err(ImportError::attr(self.name, "raw_data length does not match its type"));
        }
        for c in raw.chunks_exact(size) {
            f(match self.data_type {
                data_type::FLOAT => f64::from(f32::from_le_bytes(c.try_into().expect("4"))),
                data_type::DOUBLE => f64::from_le_bytes(c.try_into().expect("8")),
                data_type::INT32 => f64::from(i32::from_le_bytes(c.try_into().expect("4"))),
                data_type::INT64 => i64::from_le_bytes(c.try_into().expect("8")) as f64,
                data_type::INT8 => f64::from(c[0] as i8),
                _ => f64::from(c[0]),
            });
        }
        Ok(raw.len() / size)
    }
}
