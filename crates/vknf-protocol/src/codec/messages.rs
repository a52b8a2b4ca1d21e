//! Payload layouts of each frame type.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use vknf_runtime::{DType, FunctionInfo, InputInfo, OutputInfo};

use super::{ErrorCode, FrameError, FrameType, HEADER_LEN, Header, INPUT_DTYPE_F32, MAX_ERROR_MESSAGE};

/// The wire code of an element type (docs/protocol.md).
pub const fn dtype_code(dtype: DType) -> u8 {
    match dtype {
        DType::U32 => 1,
        DType::I32 => 2,
        DType::F32 => 3,
    }
}

/// Inverse of [`dtype_code`].
pub const fn dtype_from_code(code: u8) -> Option<DType> {
    match code {
        1 => Some(DType::U32),
        2 => Some(DType::I32),
        3 => Some(DType::F32),
        _ => None,
    }
}

fn need(buf: &[u8], needed: usize) -> Result<(), FrameError> {
    if buf.len() < needed {
        Err(FrameError::Truncated { needed, got: buf.len() })
    } else {
        Ok(())
    }
}

fn payload_len(len: usize) -> Result<u32, FrameError> {
    u32::try_from(len).map_err(|_| FrameError::Malformed(format!("payload of {len} bytes exceeds u32")))
}

fn start_frame(out: &mut BytesMut, frame_type: FrameType, request_id: u64, len: usize) -> Result<(), FrameError> {
    let len32 = payload_len(len)?;
    out.reserve(HEADER_LEN + len);
    Header::new(frame_type, request_id, len32).encode(out);
    Ok(())
}

/// A decoded inference request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferRequest {
    /// Rows in the request (at least one).
    pub n_rows: u32,
    /// Values per row.
    pub n_features: u32,
    /// Element type of the rows (f32 unless the function takes integers).
    pub dtype: DType,
    /// Bit `i` asks for on-request output `i`.
    pub output_mask: u32,
    /// `n_rows * n_features` little-endian elements of `dtype`, row-major.
    pub rows: Bytes,
}

impl InferRequest {
    /// Bytes before the row data.
    pub const HEAD_LEN: usize = 16;

    /// Parses a request payload; checks only that its parts add up (the function checks the
    /// shape).
    pub fn parse(payload: Bytes) -> Result<InferRequest, FrameError> {
        need(&payload, Self::HEAD_LEN)?;
        let mut head = &payload[..Self::HEAD_LEN];
        let n_rows = head.get_u32_le();
        let n_features = head.get_u32_le();
        let dtype_code = head.get_u8();
        let reserved = [head.get_u8(), head.get_u8(), head.get_u8()];
        let output_mask = head.get_u32_le();
        let Some(dtype) = dtype_from_code(dtype_code) else {
            return Err(FrameError::Unsupported(format!(
                "input dtype code {dtype_code} (1 u32, 2 i32 or {INPUT_DTYPE_F32} f32)"
            )));
        };
        if reserved != [0; 3] {
            return Err(FrameError::Malformed("reserved request bytes must be zero".into()));
        }
        // u128: 2^32 rows x 2^32 features x 4 bytes does not fit u64.
        let expected = u128::from(n_rows) * u128::from(n_features) * 4;
        let actual = (payload.len() - Self::HEAD_LEN) as u128;
        if expected != actual {
            return Err(FrameError::Malformed(format!(
                "{n_rows} rows x {n_features} features need {expected} data bytes, frame has {actual}"
            )));
        }
        Ok(InferRequest {
            n_rows,
            n_features,
            dtype,
            output_mask,
            rows: payload.slice(Self::HEAD_LEN..),
        })
    }

    /// The values of rows `first..first + count`, decoded into `dst` (which must hold exactly
    /// `count * n_features` values).
    pub fn decode_rows_into(&self, first: usize, count: usize, dst: &mut [f32]) {
        let width = self.n_features as usize * 4;
        let src = &self.rows[first * width..(first + count) * width];
        if cfg!(target_endian = "little") {
            // The wire's little-endian floats are the host's: one memcpy, whose wide stores also
            // suit write-combined device memory.
            bytemuck::cast_slice_mut::<f32, u8>(dst).copy_from_slice(src);
        } else {
            for (value, bytes) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *value = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }
    }

    /// Position (row, column) of the first NaN or infinity of float rows, if any.
    pub fn first_non_finite(&self) -> Option<(usize, usize)> {
        if !self.dtype.is_float() {
            return None;
        }
        let width = self.n_features.max(1) as usize;
        let index = vknf_runtime::first_non_finite(&self.rows)?;
        Some((index / width, index % width))
    }
}

/// Appends a request frame of integer or float rows given as their little-endian bytes (row-major,
/// `n_features` elements of `dtype` per row) to `out`.
pub fn encode_request_bytes(
    out: &mut BytesMut,
    request_id: u64,
    n_features: u32,
    dtype: DType,
    output_mask: u32,
    rows: &[u8],
) -> Result<(), FrameError> {
    let row_bytes = n_features as usize * dtype.size();
    if row_bytes == 0 || rows.len() % row_bytes != 0 {
        return Err(FrameError::Malformed(format!(
            "{} bytes are not whole rows of {n_features} {dtype} elements",
            rows.len()
        )));
    }
    let n_rows = u32::try_from(rows.len() / row_bytes).map_err(|_| FrameError::Malformed("too many rows".into()))?;
    start_frame(out, FrameType::Request, request_id, InferRequest::HEAD_LEN + rows.len())?;
    out.put_u32_le(n_rows);
    out.put_u32_le(n_features);
    out.put_u8(dtype_code(dtype));
    out.put_slice(&[0; 3]);
    out.put_u32_le(output_mask);
    out.put_slice(rows);
    Ok(())
}

/// Appends a request frame for `rows` (row-major, `n_features` per row) to `out`.
pub fn encode_request(
    out: &mut BytesMut,
    request_id: u64,
    n_features: u32,
    output_mask: u32,
    rows: &[f32],
) -> Result<(), FrameError> {
    if n_features == 0 || rows.len() % n_features as usize != 0 {
        return Err(FrameError::Malformed(format!(
            "{} values are not whole rows of {n_features} features",
            rows.len()
        )));
    }
    let n_rows =
        u32::try_from(rows.len() / n_features as usize).map_err(|_| FrameError::Malformed("too many rows".into()))?;
    start_frame(
        out,
        FrameType::Request,
        request_id,
        InferRequest::HEAD_LEN + rows.len() * 4,
    )?;
    out.put_u32_le(n_rows);
    out.put_u32_le(n_features);
    out.put_u8(INPUT_DTYPE_F32);
    out.put_slice(&[0; 3]);
    out.put_u32_le(output_mask);
    if cfg!(target_endian = "little") {
        out.put_slice(bytemuck::cast_slice(rows));
    } else {
        for value in rows {
            out.put_f32_le(*value);
        }
    }
    Ok(())
}

/// One output in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputBlock {
    /// Index of the output in the function's output list.
    pub index: u8,
    /// Element type.
    pub dtype: DType,
    /// Elements per row.
    pub width: u32,
    /// `n_rows * width` little-endian elements.
    pub data: Bytes,
}

impl OutputBlock {
    /// The data as `u32` (valid for `U32`; raw bits otherwise).
    pub fn to_u32(&self) -> Vec<u32> {
        self.data
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// The data as `i32`.
    pub fn to_i32(&self) -> Vec<i32> {
        self.data
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// The data as `f32`.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

/// A decoded response payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseBody {
    /// Rows answered (equal to the request's).
    pub n_rows: u32,
    /// The outputs, in ascending index order.
    pub outputs: Vec<OutputBlock>,
}

impl ResponseBody {
    const HEAD_LEN: usize = 8;
    const BLOCK_HEAD_LEN: usize = 8;

    /// Parses a response payload.
    pub fn parse(payload: Bytes) -> Result<ResponseBody, FrameError> {
        need(&payload, Self::HEAD_LEN)?;
        let mut head = &payload[..Self::HEAD_LEN];
        let n_rows = head.get_u32_le();
        let n_outputs = head.get_u16_le();
        let mut at = Self::HEAD_LEN;
        let mut outputs = Vec::with_capacity(usize::from(n_outputs).min(64));
        for _ in 0..n_outputs {
            need(&payload[at..], Self::BLOCK_HEAD_LEN)?;
            let mut block = &payload[at..at + Self::BLOCK_HEAD_LEN];
            let index = block.get_u8();
            let dtype_code = block.get_u8();
            block.advance(2);
            let width = block.get_u32_le();
            let dtype = dtype_from_code(dtype_code)
                .ok_or_else(|| FrameError::Unsupported(format!("output dtype code {dtype_code}")))?;
            at += Self::BLOCK_HEAD_LEN;
            let len = u128::from(n_rows) * u128::from(width) * 4;
            let len = usize::try_from(len).map_err(|_| FrameError::Malformed("output too large".into()))?;
            need(&payload[at..], len)?;
            outputs.push(OutputBlock {
                index,
                dtype,
                width,
                data: payload.slice(at..at + len),
            });
            at += len;
        }
        if at != payload.len() {
            return Err(FrameError::Malformed(format!(
                "{} trailing bytes after outputs",
                payload.len() - at
            )));
        }
        Ok(ResponseBody { n_rows, outputs })
    }

    /// The block of output `index`.
    pub fn output(&self, index: usize) -> Option<&OutputBlock> {
        self.outputs.iter().find(|o| usize::from(o.index) == index)
    }
}

/// Appends a response frame to `out`. Each block is (output index, dtype, width, data of
/// `n_rows * width` elements).
pub fn encode_response(
    out: &mut BytesMut,
    request_id: u64,
    n_rows: u32,
    blocks: &[(u8, DType, u32, &[u8])],
) -> Result<(), FrameError> {
    let mut len = ResponseBody::HEAD_LEN;
    for (index, _, width, data) in blocks {
        let expected = u128::from(n_rows) * u128::from(*width) * 4;
        if data.len() as u128 != expected {
            return Err(FrameError::Malformed(format!(
                "output {index}: {} bytes for {n_rows} rows of width {width}",
                data.len()
            )));
        }
        len += ResponseBody::BLOCK_HEAD_LEN + data.len();
    }
    let n_outputs = u16::try_from(blocks.len()).map_err(|_| FrameError::Malformed("too many outputs".into()))?;
    start_frame(out, FrameType::Response, request_id, len)?;
    out.put_u32_le(n_rows);
    out.put_u16_le(n_outputs);
    out.put_u16_le(0);
    for (index, dtype, width, data) in blocks {
        out.put_u8(*index);
        out.put_u8(dtype_code(*dtype));
        out.put_u16_le(0);
        out.put_u32_le(*width);
        out.put_slice(data);
    }
    Ok(())
}

/// Where the parts of a response frame go, so that a server can lay the frame out first and have each
/// output written straight into it (no intermediate buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseLayout {
    /// Total frame length, header included.
    pub frame_len: usize,
    /// Per output of the function: the byte range of its data within the frame, if it is in the answer.
    pub data: Vec<Option<std::ops::Range<usize>>>,
}

impl ResponseLayout {
    /// Lays out the answer of `n_rows` rows with the outputs of `mask`, and writes the frame's headers
    /// into `out` (cleared first), with the data regions zeroed, ready to be filled.
    pub fn write_headers(
        out: &mut BytesMut,
        request_id: u64,
        n_rows: u32,
        mask: u32,
        outputs: &[OutputInfo],
    ) -> Result<ResponseLayout, FrameError> {
        let mut layout = ResponseLayout {
            frame_len: 0,
            data: Vec::with_capacity(outputs.len()),
        };
        layout.rewrite_headers(out, request_id, n_rows, mask, outputs)?;
        Ok(layout)
    }

    /// [`ResponseLayout::write_headers`] into this layout, kept from an earlier response: its memory is
    /// reused, as is `out`'s, so a server that keeps both per connection allocates nothing per
    /// response of a size it has answered before.
    pub fn rewrite_headers(
        &mut self,
        out: &mut BytesMut,
        request_id: u64,
        n_rows: u32,
        mask: u32,
        outputs: &[OutputInfo],
    ) -> Result<(), FrameError> {
        let mut len = ResponseBody::HEAD_LEN;
        let mut count = 0u16;
        for (index, output) in outputs.iter().enumerate() {
            if mask & (1 << index) != 0 {
                len += ResponseBody::BLOCK_HEAD_LEN + n_rows as usize * output.row_bytes();
                count += 1;
            }
        }
        out.clear();
        self.data.clear();
        self.frame_len = 0;
        start_frame(out, FrameType::Response, request_id, len)?;
        out.put_u32_le(n_rows);
        out.put_u16_le(count);
        out.put_u16_le(0);
        for (index, output) in outputs.iter().enumerate() {
            if mask & (1 << index) == 0 {
                self.data.push(None);
                continue;
            }
            out.put_u8(index as u8);
            out.put_u8(dtype_code(output.dtype));
            out.put_u16_le(0);
            out.put_u32_le(output.width as u32);
            let start = out.len();
            out.resize(start + n_rows as usize * output.row_bytes(), 0);
            self.data.push(Some(start..out.len()));
        }
        self.frame_len = out.len();
        Ok(())
    }
}

/// A decoded error payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl ErrorBody {
    /// Parses an error payload (invalid UTF-8 in the message is replaced, not rejected).
    pub fn parse(payload: &[u8]) -> Result<ErrorBody, FrameError> {
        need(payload, 4)?;
        let code = ErrorCode::from_code(u16::from_le_bytes([payload[0], payload[1]]));
        let message = String::from_utf8_lossy(&payload[4..]).into_owned();
        Ok(ErrorBody { code, message })
    }
}

/// Appends an error frame to `out`; messages longer than [`MAX_ERROR_MESSAGE`] are cut.
pub fn encode_error(out: &mut BytesMut, request_id: u64, code: ErrorCode, message: &str) {
    let message = clipped(message, MAX_ERROR_MESSAGE);
    Header::new(FrameType::Error, request_id, (4 + message.len()) as u32).encode(out);
    out.put_u16_le(code.code());
    out.put_u16_le(0);
    out.put_slice(message.as_bytes());
}

/// Appends a describe frame (empty payload) to `out`.
pub fn encode_describe(out: &mut BytesMut, request_id: u64) {
    Header::new(FrameType::Describe, request_id, 0).encode(out);
}

/// The name the binary protocol gives a function's input (it names no input on the wire).
pub const INPUT_NAME: &str = "input";

/// One output in a description.
pub type DescribedOutput = OutputInfo;

/// A decoded description: the function's name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// The function's name.
    pub name: String,
    /// The function's shape.
    pub info: FunctionInfo,
}

impl Description {
    /// Parses a description payload.
    pub fn parse(payload: &[u8]) -> Result<Description, FrameError> {
        let mut buf = payload;
        need(buf, 16)?;
        let name_len = usize::from(buf.get_u16_le());
        let input_dtype = match buf.get_u8() {
            // Servers before typed inputs wrote zero here: their functions take f32.
            0 => DType::F32,
            code => dtype_from_code(code).ok_or_else(|| FrameError::Unsupported(format!("input dtype code {code}")))?,
        };
        buf.advance(1);
        let input_width = buf.get_u32_le() as usize;
        let max_batch_rows = buf.get_u32_le() as usize;
        let accepts_nan = buf.get_u8() != 0;
        let n_outputs = buf.get_u8();
        buf.advance(2);
        let name = take_string(&mut buf, name_len)?;
        let mut outputs = Vec::with_capacity(usize::from(n_outputs));
        for _ in 0..n_outputs {
            need(buf, 8)?;
            let dtype_code = buf.get_u8();
            let on_request = buf.get_u8() != 0;
            let output_name_len = usize::from(buf.get_u16_le());
            let width = buf.get_u32_le() as usize;
            let dtype = dtype_from_code(dtype_code)
                .ok_or_else(|| FrameError::Unsupported(format!("output dtype code {dtype_code}")))?;
            let name = take_string(&mut buf, output_name_len)?;
            outputs.push(OutputInfo {
                name,
                dtype,
                width,
                on_request,
            });
        }
        if !buf.is_empty() {
            return Err(FrameError::Malformed(format!(
                "{} trailing bytes after description",
                buf.len()
            )));
        }
        Ok(Description {
            name,
            info: FunctionInfo {
                input: InputInfo {
                    name: INPUT_NAME.to_owned(),
                    dtype: input_dtype,
                    width: input_width,
                },
                outputs,
                max_batch_rows,
                accepts_non_finite: accepts_nan,
                parameters: Default::default(),
            },
        })
    }
}

fn take_string(buf: &mut &[u8], len: usize) -> Result<String, FrameError> {
    need(buf, len)?;
    let s = std::str::from_utf8(&buf[..len])
        .map_err(|_| FrameError::Malformed("name is not UTF-8".into()))?
        .to_owned();
    buf.advance(len);
    Ok(s)
}

fn clipped(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends a description frame of `name` and `info` to `out` (names are cut at 255 bytes for
/// outputs and 1024 bytes for the function; at most 255 outputs are described).
pub fn encode_description(out: &mut BytesMut, request_id: u64, name: &str, info: &FunctionInfo) {
    let name = clipped(name, 1024);
    let outputs = &info.outputs[..info.outputs.len().min(255)];
    let len = 16 + name.len() + outputs.iter().map(|o| 8 + clipped(&o.name, 255).len()).sum::<usize>();
    Header::new(FrameType::Description, request_id, len as u32).encode(out);
    out.put_u16_le(name.len() as u16);
    // Zero for f32, as before typed inputs, so older clients read f32 functions unchanged.
    out.put_u8(match info.input.dtype {
        DType::F32 => 0,
        dtype => dtype_code(dtype),
    });
    out.put_u8(0);
    out.put_u32_le(u32::try_from(info.input.width).unwrap_or(u32::MAX));
    out.put_u32_le(u32::try_from(info.max_batch_rows).unwrap_or(u32::MAX));
    out.put_u8(u8::from(info.accepts_non_finite));
    out.put_u8(outputs.len() as u8);
    out.put_u16_le(0);
    out.put_slice(name.as_bytes());
    for output in outputs {
        let output_name = clipped(&output.name, 255);
        out.put_u8(dtype_code(output.dtype));
        out.put_u8(u8::from(output.on_request));
        out.put_u16_le(output_name.len() as u16);
        out.put_u32_le(u32::try_from(output.width).unwrap_or(u32::MAX));
        out.put_slice(output_name.as_bytes());
    }
}
