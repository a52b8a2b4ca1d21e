//! A zero-copy reader for the protobuf wire format.
//!
//! Large ONNX tree ensembles keep hundreds of megabytes in a few repeated attributes; walking
//! the wire format lets the importer stream those values (dropping zero class weights on the
//! way) instead of materialising whole messages.

use thiserror::Error;

/// A malformed protobuf encoding.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("malformed protobuf at byte {offset}: {problem}")]
pub struct WireError {
    /// Offset within the buffer being walked.
    pub offset: usize,
    /// What is wrong.
    pub problem: &'static str,
}

/// One field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireValue<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2 (sub-message, string, bytes or packed repeated scalars).
    Bytes(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

/// Iterates the fields of one message; yields `(field number, value, value offset)`.
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    /// Walks `buf` as one message.
    pub fn new(buf: &'a [u8]) -> Self {
        Fields {
            buf,
            pos: 0,
            failed: false,
        }
    }

    fn err(&mut self, problem: &'static str) -> WireError {
        self.failed = true;
        WireError {
            offset: self.pos,
            problem,
        }
    }

    fn next_field(&mut self) -> Result<(u32, WireValue<'a>, usize), WireError> {
        let key = read_varint(self.buf, &mut self.pos).map_err(|p| self.err(p))?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(self.err("invalid field number"));
        }
        let start = self.pos;
        let value = match key & 7 {
            0 => WireValue::Varint(read_varint(self.buf, &mut self.pos).map_err(|p| self.err(p))?),
            1 => {
                let bytes = self.take(8)?;
                WireValue::Fixed64(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
            }
            2 => {
                let len = read_varint(self.buf, &mut self.pos).map_err(|p| self.err(p))?;
                let len = usize::try_from(len).map_err(|_| self.err("length too large"))?;
                let start_of_bytes = self.pos;
                let bytes = self.take(len)?;
                return Ok((field as u32, WireValue::Bytes(bytes), start_of_bytes));
            }
            5 => {
                let bytes = self.take(4)?;
                WireValue::Fixed32(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
            }
            _ => return Err(self.err("unsupported wire type (groups are not used by ONNX)")),
        };
        Ok((field as u32, value, start))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.err("declared length runs past the end of the message"))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, WireValue<'a>, usize), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        Some(self.next_field())
    }
}

/// Reads a base-128 varint at `*pos`, advancing it.
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, &'static str> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let Some(&byte) = buf.get(*pos) else {
            return Err("truncated varint");
        };
        *pos += 1;
        if shift == 63 && byte > 1 {
            return Err("varint overflows 64 bits");
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes")
}

/// Calls `f` for each varint of a packed run.
pub fn for_each_packed_varint(bytes: &[u8], mut f: impl FnMut(u64)) -> Result<(), &'static str> {
    let mut pos = 0;
    while pos < bytes.len() {
        f(read_varint(bytes, &mut pos)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_fields_of_all_wire_types() {
        // field 1 varint 150, field 2 bytes "hi", field 3 fixed32, field 4 fixed64
        let mut buf = vec![0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x1d];
        buf.extend_from_slice(&7u32.to_le_bytes());
        buf.push(0x21);
        buf.extend_from_slice(&9u64.to_le_bytes());
        let fields: Vec<_> = Fields::new(&buf).map(|r| r.unwrap()).collect();
        assert_eq!(fields[0].0, 1);
        assert_eq!(fields[0].1, WireValue::Varint(150));
        assert_eq!(fields[1].1, WireValue::Bytes(b"hi"));
        assert_eq!(fields[2].1, WireValue::Fixed32(7));
        assert_eq!(fields[3].1, WireValue::Fixed64(9));
    }

    #[test]
    fn rejects_truncation_and_huge_lengths() {
        let truncated = [0x12, 0x05, b'a'];
        assert!(Fields::new(&truncated).next().unwrap().is_err());
        let huge = [0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(Fields::new(&huge).next().unwrap().is_err());
        let bad_varint = [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(Fields::new(&bad_varint).next().unwrap().is_err());
        let group = [0x0b];
        assert!(Fields::new(&group).next().unwrap().is_err());
        let zero_field = [0x00, 0x00];
        assert!(Fields::new(&zero_field).next().unwrap().is_err());
        // After an error the iterator stops.
        let mut it = Fields::new(&truncated);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }

    #[test]
    fn negative_int64_uses_ten_bytes() {
        let buf = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        let mut pos = 0;
        assert_eq!(read_varint(&buf, &mut pos).unwrap() as i64, -1);
    }
}
