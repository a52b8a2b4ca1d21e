//! A call of a function as every caller makes it: typed rows in, the outputs it asks for out, or a typed
//! error. Front ends (the binary protocol, the Open Inference Protocol, the traffic path) translate their
//! own messages into these.

use std::time::Instant;

use bytes::Bytes;
use vknf_functions::{DType, FunctionInfo};

/// Bytes a streaming copy into device-read memory moves between fences (a multiple of the
/// non-finite check's block).
const DEVICE_COPY_BLOCK: usize = 64 << 10;

/// Rows of a call: `n_rows * width` little-endian 4-byte elements of `dtype`, row-major. The bytes are
/// shared, never copied: a front end hands in the slice of its request frame, an in-process caller its
/// own vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows {
    data: Bytes,
    n_rows: usize,
    width: usize,
    dtype: DType,
}

/// Copies `src` into `dst` in blocks of `block` bytes with `copy`, scanning each block for a NaN or an
/// infinity right after copying it; says whether it found one.
fn copy_checked_in_blocks(dst: &mut [u8], src: &[u8], block: usize, copy: impl Fn(&mut [u8], &[u8])) -> bool {
    dst.chunks_mut(block)
        .zip(src.chunks(block))
        .fold(false, |seen, (to, from)| {
            copy(to, from);
            seen | from
                .chunks(vknf_functions::NON_FINITE_BLOCK)
                .any(vknf_functions::any_non_finite)
        })
}

/// Owns a vector of 4-byte elements and lends it as bytes, so that `Bytes` can share it without a copy.
struct ElementBytes<T: bytemuck::Pod>(Vec<T>);

impl<T: bytemuck::Pod> AsRef<[u8]> for ElementBytes<T> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

impl Rows {
    /// Rows from little-endian bytes (for example a slice of a request frame).
    pub fn from_le_bytes(data: Bytes, n_rows: usize, width: usize, dtype: DType) -> Result<Rows, CallError> {
        let expected = (n_rows as u128) * (width as u128) * dtype.size() as u128;
        if expected != data.len() as u128 {
            return Err(CallError::Shape(format!(
                "{n_rows} rows x {width} elements need {expected} bytes, got {}",
                data.len()
            )));
        }
        Ok(Rows {
            data,
            n_rows,
            width,
            dtype,
        })
    }

    fn from_vec<T: bytemuck::Pod + Send + Sync>(values: Vec<T>, width: usize, dtype: DType) -> Result<Rows, CallError> {
        if width == 0 || values.len() % width != 0 {
            return Err(CallError::Shape(format!(
                "{} values are not whole rows of {width} elements",
                values.len()
            )));
        }
        let n_rows = values.len() / width;
        let data = if cfg!(target_endian = "little") {
            Bytes::from_owner(ElementBytes(values))
        } else {
            Bytes::from(
                bytemuck::cast_slice::<T, [u8; 4]>(&values)
                    .iter()
                    .flat_map(|b| [b[3], b[2], b[1], b[0]])
                    .collect::<Vec<u8>>(),
            )
        };
        Ok(Rows {
            data,
            n_rows,
            width,
            dtype,
        })
    }

    /// No rows (what a recycled job holds).
    pub(crate) fn empty() -> Rows {
        Rows {
            data: Bytes::new(),
            n_rows: 0,
            width: 0,
            dtype: DType::F32,
        }
    }

    /// `f32` rows, row-major, `width` per row (the vector is shared, not copied).
    pub fn f32(values: Vec<f32>, width: usize) -> Result<Rows, CallError> {
        Rows::from_vec(values, width, DType::F32)
    }

    /// `u32` rows (addresses, ports, counters: taken bit for bit).
    pub fn u32(values: Vec<u32>, width: usize) -> Result<Rows, CallError> {
        Rows::from_vec(values, width, DType::U32)
    }

    /// `i32` rows.
    pub fn i32(values: Vec<i32>, width: usize) -> Result<Rows, CallError> {
        Rows::from_vec(values, width, DType::I32)
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Elements per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The little-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// Copies rows `first..first + count` into `dst` (exactly their bytes).
    pub(crate) fn copy_into(&self, first: usize, count: usize, dst: &mut [u8], to_device: bool) {
        let row_bytes = self.width * self.dtype.size();
        let src = &self.data[first * row_bytes..(first + count) * row_bytes];
        if to_device {
            vknf_functions::copy_to_device(dst, src);
        } else {
            dst.copy_from_slice(src);
        }
    }

    /// Copies rows `first..first + count` into `dst` and says whether any of them holds a NaN or an
    /// infinity (as f32), in one pass over the rows: each block is checked while it is still in cache
    /// from being copied.
    pub(crate) fn copy_checked_into(&self, first: usize, count: usize, dst: &mut [u8], to_device: bool) -> bool {
        let row_bytes = self.width * self.dtype.size();
        let src = &self.data[first * row_bytes..(first + count) * row_bytes];
        if to_device {
            // Streaming copies end with a store fence: in blocks large enough to make it cheap, and still
            // in the core's cache (they were just read) when they are scanned.
            copy_checked_in_blocks(dst, src, DEVICE_COPY_BLOCK, vknf_functions::copy_to_device)
        } else {
            copy_checked_in_blocks(dst, src, vknf_functions::NON_FINITE_BLOCK, <[u8]>::copy_from_slice)
        }
    }

    /// The first non-finite value among rows `first..first + count`: (row, feature), rows counted from 0.
    pub(crate) fn first_non_finite_in(&self, first: usize, count: usize) -> Option<(usize, usize)> {
        let row_bytes = self.width * self.dtype.size();
        let index = vknf_functions::first_non_finite(&self.data[first * row_bytes..(first + count) * row_bytes])?;
        Some((first + index / self.width.max(1), index % self.width.max(1)))
    }

    /// Checks the rows' shape against a function's schema, and their values unless `values` is false
    /// (large calls have their values checked while they are copied into a lane instead).
    pub(crate) fn check_shape(&self, info: &FunctionInfo, values: bool) -> Result<(), CallError> {
        if values {
            return self.check(info);
        }
        self.check_shape_only(info)
    }

    /// Checks the rows against a function's schema.
    pub fn check(&self, info: &FunctionInfo) -> Result<(), CallError> {
        self.check_shape_only(info)?;
        if info.rejects_non_finite()
            && let Some(index) = vknf_functions::first_non_finite(&self.data)
        {
            return Err(CallError::NonFinite {
                row: index / self.width.max(1),
                feature: index % self.width.max(1),
            });
        }
        Ok(())
    }

    fn check_shape_only(&self, info: &FunctionInfo) -> Result<(), CallError> {
        if self.n_rows == 0 {
            return Err(CallError::Shape("the request has no rows".into()));
        }
        if self.width != info.input.width {
            return Err(CallError::Shape(format!(
                "the function takes {} features per row, the request has {}",
                info.input.width, self.width
            )));
        }
        if self.dtype != info.input.dtype {
            return Err(CallError::Shape(format!(
                "the function takes {} input, the request has {}",
                info.input.dtype, self.dtype
            )));
        }
        Ok(())
    }
}

/// One call: rows, which on-request outputs to compute, and how long the caller waits for it to start.
#[derive(Debug, Clone)]
pub struct Call {
    /// The input.
    pub rows: Rows,
    /// Bit `i` asks for on-request output `i`; outputs that are always computed need no bit.
    pub outputs: u32,
    /// A call still waiting in the queue at this instant is answered [`CallError::DeadlineExceeded`]
    /// instead of running.
    pub deadline: Option<Instant>,
}

impl Call {
    /// A call of `rows` for the mandatory outputs and those in `outputs`, without a deadline.
    pub fn new(rows: Rows, outputs: u32) -> Call {
        Call {
            rows,
            outputs,
            deadline: None,
        }
    }

    /// The same call with a deadline.
    pub fn with_deadline(mut self, deadline: Instant) -> Call {
        self.deadline = Some(deadline);
        self
    }
}

/// Why a call was not answered with outputs. Every caller sees these same errors; front ends map them
/// onto their protocol's codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The rows or the output mask do not fit the function's schema.
    #[error("{0}")]
    Shape(String),
    /// A float input holds NaN or an infinity and the function rejects them.
    #[error("row {row}, feature {feature} is NaN or infinite, which this function rejects")]
    NonFinite {
        /// Row of the first such value.
        row: usize,
        /// Element within the row.
        feature: usize,
    },
    /// The call alone is larger than the function's queue.
    #[error("{0}")]
    TooLarge(String),
    /// The function's queue is full: retry later.
    #[error("{0}")]
    Busy(String),
    /// The function is being removed or the process is stopping.
    #[error("{0}")]
    ShuttingDown(String),
    /// The call's deadline passed before it ran.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The device was lost while (or before) running the call; the function is being reloaded.
    #[error("{0}")]
    DeviceLost(String),
    /// The function is quarantined: its kernel missed its deadline, so it does not run until its
    /// back-off ends (the message says when). Retry later.
    #[error("{0}")]
    Quarantined(String),
    /// The function refused a value of the input while running it.
    #[error("{0}")]
    InvalidInput(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl CallError {
    /// The upper-case name of the error, as metrics label it (and the binary protocol names its codes).
    pub fn code_name(&self) -> &'static str {
        match self {
            CallError::Shape(_) => "SHAPE",
            CallError::NonFinite { .. } => "NAN",
            CallError::TooLarge(_) => "TOO_LARGE",
            CallError::Busy(_) => "BUSY",
            CallError::ShuttingDown(_) => "SHUTTING_DOWN",
            CallError::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
            CallError::DeviceLost(_) => "DEVICE_LOST",
            CallError::Quarantined(_) => "QUARANTINED",
            CallError::InvalidInput(_) => "INVALID_INPUT",
            CallError::Internal(_) => "INTERNAL",
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CallError::Busy(_) | CallError::DeviceLost(_) | CallError::DeadlineExceeded(_) | CallError::Quarantined(_)
        )
    }
}

/// The shape of an answer, given to [`Reply::prepare`].
#[derive(Debug, Clone, Copy)]
pub struct AnswerLayout<'a> {
    /// Rows answered.
    pub n_rows: usize,
    /// The outputs computed (bit `i`: output `i`), mandatory ones included.
    pub mask: u32,
    /// The function's schema; output `i` has `n_rows * info.outputs[i].row_bytes()` bytes.
    pub info: &'a FunctionInfo,
}

impl AnswerLayout<'_> {
    /// Indices of the outputs in the answer, ascending.
    pub fn outputs(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.info.outputs.len()).filter(|i| self.mask & (1 << i) != 0)
    }

    /// Bytes of output `index` in the answer.
    pub fn output_bytes(&self, index: usize) -> usize {
        self.n_rows * self.info.outputs[index].row_bytes()
    }
}

/// Where the answer of one call goes. The runtime writes each output straight into the buffers the
/// reply lends (the one host copy of a result), then completes it; or fails it. Exactly one of
/// [`Reply::complete`] and [`Reply::fail`] is called, on whatever thread finishes the call (usually a
/// lane thread), so both must be quick.
pub trait Reply: Send + 'static {
    /// Lays out the answer; called once, before the first rows are written.
    fn prepare(&mut self, layout: &AnswerLayout<'_>);

    /// The buffer of output `index` (one of the layout's outputs): exactly its bytes.
    fn output(&mut self, index: usize) -> &mut [u8];

    /// Every row is written.
    fn complete(self: Box<Self>, layout: &AnswerLayout<'_>);

    /// The call failed.
    fn fail(self: Box<Self>, error: CallError);

    /// Whether the caller has gone away, so that queued work for it can be skipped.
    fn is_cancelled(&self) -> bool {
        false
    }
}
