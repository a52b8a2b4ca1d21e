//! Answers for in-process callers: typed outputs whose buffers a caller can hand back for the next
//! call.

use vknf_functions::DType;

use crate::call::AnswerLayout;

/// One output of an answer: `n_rows * width` elements of `dtype`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tensor {
    /// Element type.
    pub dtype: Option<DType>,
    /// Elements per row.
    pub width: usize,
    /// The elements, as 32-bit words (so that every view is aligned).
    words: Vec<u32>,
}

impl Tensor {
    /// The elements as `f32` (meaningful for [`DType::F32`]).
    pub fn as_f32(&self) -> &[f32] {
        bytemuck::cast_slice(&self.words)
    }

    /// The elements as `u32` (meaningful for [`DType::U32`]).
    pub fn as_u32(&self) -> &[u32] {
        &self.words
    }

    /// The elements as `i32` (meaningful for [`DType::I32`]).
    pub fn as_i32(&self) -> &[i32] {
        bytemuck::cast_slice(&self.words)
    }

    /// The little-endian bytes (on little-endian hosts, which are the only ones vknf runs on).
    pub fn as_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.words)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}

/// The outputs of one call, indexed like the function's outputs; `None` for outputs not computed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// Rows answered.
    pub n_rows: usize,
    /// Per output of the function.
    pub outputs: Vec<Option<Tensor>>,
}

impl Answer {
    /// The output at `index`, if it was computed.
    pub fn output(&self, index: usize) -> Option<&Tensor> {
        self.outputs.get(index)?.as_ref()
    }

    /// Lays the answer out, keeping the buffers it already has (so a caller that hands its last answer
    /// back allocates nothing for the next one of the same size or smaller).
    pub(crate) fn lay_out(&mut self, layout: &AnswerLayout<'_>) {
        self.n_rows = layout.n_rows;
        self.outputs.resize_with(layout.info.outputs.len(), || None);
        for (index, info) in layout.info.outputs.iter().enumerate() {
            let slot = &mut self.outputs[index];
            if layout.mask & (1 << index) == 0 {
                *slot = None;
                continue;
            }
            let tensor = slot.get_or_insert_with(Tensor::default);
            tensor.dtype = Some(info.dtype);
            tensor.width = info.width;
            tensor.words.clear();
            tensor.words.resize(layout.n_rows * info.width, 0);
        }
    }

    /// The bytes of output `index` (empty when it is not in the answer), for the runtime to fill.
    pub(crate) fn output_bytes_mut(&mut self, index: usize) -> &mut [u8] {
        match self.outputs.get_mut(index) {
            Some(Some(tensor)) => bytemuck::cast_slice_mut(&mut tensor.words),
            _ => &mut [],
        }
    }
}
