//! What a function takes and gives: typed tensors of 32-bit elements, one row per item.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Element type of a function's input or output. Every element is four bytes, little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// IEEE-754 single precision float.
    F32,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        4
    }

    /// Whether the type has non-finite values (NaN, infinities) that a function may reject.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32)
    }

    /// The lower-case name used in manifests and schemas.
    pub const fn name(self) -> &'static str {
        match self {
            DType::U32 => "u32",
            DType::I32 => "i32",
            DType::F32 => "f32",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The input of a function: `width` elements of `dtype` per row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputInfo {
    /// Name of the input tensor, for protocols that name tensors.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Elements per row.
    pub width: usize,
}

/// One output of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputInfo {
    /// Name of the output, for example `"labels"` or `"scores"`.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Elements per input row.
    pub width: usize,
    /// Computed only when a call asks for it (bit `i` of the call's output mask).
    pub on_request: bool,
}

impl OutputInfo {
    /// Bytes of this output per input row.
    pub fn row_bytes(&self) -> usize {
        self.width * self.dtype.size()
    }
}

/// What a loaded function takes and gives: the schema front ends publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionInfo {
    /// The input rows.
    pub input: InputInfo,
    /// The outputs; an output mask indexes this list (at most 32).
    pub outputs: Vec<OutputInfo>,
    /// Most rows one lane runs at once; larger calls are split across batches.
    pub max_batch_rows: usize,
    /// Whether NaN and infinities are valid float input; when false they are refused per call.
    /// Integer inputs are taken bit for bit and never checked.
    pub accepts_non_finite: bool,
    /// What the function says of its model beyond its shape, by name (the Open Inference Protocol
    /// reports them as the model metadata's `parameters`): a traffic forest's feature schema digest
    /// ([`crate::families::forest::SCHEMA_DIGEST`]); empty for most functions. Part of the loaded
    /// version, so that it changes with the model it describes.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub parameters: std::collections::BTreeMap<String, String>,
}

impl FunctionInfo {
    /// Elements per input row.
    pub fn input_width(&self) -> usize {
        self.input.width
    }

    /// Output mask with a bit for every output that is always computed.
    pub fn mandatory_mask(&self) -> u32 {
        self.outputs
            .iter()
            .enumerate()
            .filter(|(_, o)| !o.on_request)
            .fold(0, |mask, (i, _)| mask | (1 << i))
    }

    /// Output mask with a bit for every output.
    pub fn full_mask(&self) -> u32 {
        if self.outputs.len() >= 32 {
            u32::MAX
        } else {
            (1u32 << self.outputs.len()) - 1
        }
    }

    /// Index of the output called `name`.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|o| o.name == name)
    }

    /// Whether input values must be checked for NaN and infinities before they run.
    pub fn rejects_non_finite(&self) -> bool {
        self.input.dtype.is_float() && !self.accepts_non_finite
    }
}

/// Inputs at least this large are scanned by several threads.
const PARALLEL_SCAN_BYTES: usize = 1 << 20;

/// Position (element index) of the first NaN or infinity among little-endian `f32` elements. Large
/// inputs are scanned by several threads: one core reads far slower than a large call arrives.
pub fn first_non_finite(data: &[u8]) -> Option<usize> {
    use rayon::prelude::*;
    if data.len() < PARALLEL_SCAN_BYTES {
        return first_non_finite_serial(data);
    }
    let chunk = PARALLEL_SCAN_BYTES / 4;
    data.par_chunks(chunk)
        .enumerate()
        .filter_map(|(index, part)| first_non_finite_serial(part).map(|within| index * chunk / 4 + within))
        .min()
}

/// Bytes of the blocks that [`any_non_finite`] is meant for: a block is checked without an early exit
/// (which vectorises), and only a block that fails is searched element by element.
pub const NON_FINITE_BLOCK: usize = 256;

const EXPONENT: u32 = 0x7f80_0000;

fn is_non_finite(element: &[u8]) -> bool {
    u32::from_le_bytes([element[0], element[1], element[2], element[3]]) & EXPONENT == EXPONENT
}

/// Whether any little-endian `f32` element of `block` is a NaN or an infinity. Branch-free over the
/// block (it vectorises), so callers check data in blocks of [`NON_FINITE_BLOCK`] bytes, for example
/// each block right after copying it while it is still in cache. Trailing bytes short of an element
/// are ignored.
#[inline]
pub fn any_non_finite(block: &[u8]) -> bool {
    block
        .chunks_exact(4)
        .fold(false, |seen, element| seen | is_non_finite(element))
}

fn first_non_finite_serial(data: &[u8]) -> Option<usize> {
    let block = data.chunks(NON_FINITE_BLOCK).position(any_non_finite)?;
    let within = data[block * NON_FINITE_BLOCK..]
        .chunks_exact(4)
        .position(is_non_finite)?;
    Some(block * NON_FINITE_BLOCK / 4 + within)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_with_any_nan_or_infinity_is_flagged_and_only_such_a_block() {
        let mut block = [1.5f32; NON_FINITE_BLOCK / 4];
        assert!(!any_non_finite(bytemuck::cast_slice(&block)));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, block.len() / 2, block.len() - 1] {
                block[at] = bad;
                assert!(any_non_finite(bytemuck::cast_slice(&block)), "{bad} at {at}");
                block[at] = 1.5;
            }
        }
        // Large finite values and subnormals are finite; a partial trailing element is ignored.
        block[0] = f32::MAX;
        block[1] = f32::MIN_POSITIVE / 2.0;
        assert!(!any_non_finite(bytemuck::cast_slice(&block)));
        assert!(!any_non_finite(&[0xff, 0xff, 0x80]));
    }

    #[test]
    fn the_first_non_finite_value_is_found_in_small_and_large_inputs() {
        for len in [0usize, 1, 255, 256, 257, 70_000, 600_000] {
            let mut values = vec![1.5f32; len];
            assert_eq!(
                first_non_finite(bytemuck::cast_slice(&values)),
                None,
                "{len} finite values"
            );
            for (at, bad) in [
                (len / 2, f32::NAN),
                (len.saturating_sub(1), f32::INFINITY),
                (len / 3, f32::NEG_INFINITY),
            ] {
                if len == 0 {
                    continue;
                }
                values[at] = bad;
                // A later non-finite value never hides an earlier one, whichever thread finds it.
                if at + 1 < len {
                    values[len - 1] = f32::NAN;
                }
                let expected = values.iter().position(|v| !v.is_finite());
                assert_eq!(
                    first_non_finite(bytemuck::cast_slice(&values)),
                    expected,
                    "{len} values, bad at {at}"
                );
                values.iter_mut().for_each(|v| *v = 1.5);
            }
        }
    }
}
