//! The vknf wire protocol, version 1 (specified in docs/protocol.md).
//!
//! Every message is a frame: a fixed 20-byte little-endian [`Header`] followed by `payload_len`
//! bytes of payload whose layout depends on the [`FrameType`]. Requests carry a client-chosen id
//! that the matching response or error repeats, so many requests can be in flight on one
//! connection and answered in any order.

mod decoder;
mod error_code;
mod messages;

pub use decoder::{Decoded, FrameDecoder};
pub use error_code::ErrorCode;
pub use messages::{
    DescribedOutput, Description, ErrorBody, INPUT_NAME, InferRequest, OutputBlock, ResponseBody, ResponseLayout,
    dtype_code, dtype_from_code, encode_describe, encode_description, encode_error, encode_request,
    encode_request_bytes, encode_response,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"VKNF";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 20;
/// Default largest payload a server accepts (16 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 16 << 20;
/// Longest error message sent; longer ones are cut at a character boundary.
pub const MAX_ERROR_MESSAGE: usize = 1024;
/// Element type code of `f32` input rows (the default input type; `u32` is 1 and `i32` is 2).
pub const INPUT_DTYPE_F32: u8 = 3;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Client to server: rows to run through the function.
    Request,
    /// Server to client: outputs of a request.
    Response,
    /// Server to client: why a request (or the connection) failed.
    Error,
    /// Client to server: asks for the function's shape.
    Describe,
    /// Server to client: the function's shape.
    Description,
    /// A type this version does not know (kept so the receiver can answer it).
    Unknown(u8),
}

impl FrameType {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            FrameType::Request => 1,
            FrameType::Response => 2,
            FrameType::Error => 3,
            FrameType::Describe => 4,
            FrameType::Description => 5,
            FrameType::Unknown(code) => code,
        }
    }

    /// Inverse of [`FrameType::code`].
    pub const fn from_code(code: u8) -> FrameType {
        match code {
            1 => FrameType::Request,
            2 => FrameType::Response,
            3 => FrameType::Error,
            4 => FrameType::Describe,
            5 => FrameType::Description,
            other => FrameType::Unknown(other),
        }
    }
}

/// The fixed part of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol version of the sender.
    pub version: u8,
    /// What the payload is.
    pub frame_type: FrameType,
    /// Reserved in version 1: sent as zero, ignored on receipt.
    pub flags: u16,
    /// Chosen by the client; repeated in the answer.
    pub request_id: u64,
    /// Bytes of payload after the header.
    pub payload_len: u32,
}

impl Header {
    /// A version-1 header.
    pub fn new(frame_type: FrameType, request_id: u64, payload_len: u32) -> Header {
        Header {
            version: VERSION,
            frame_type,
            flags: 0,
            request_id,
            payload_len,
        }
    }

    /// Appends the encoded header to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&MAGIC);
        out.put_u8(self.version);
        out.put_u8(self.frame_type.code());
        out.put_u16_le(self.flags);
        out.put_u64_le(self.request_id);
        out.put_u32_le(self.payload_len);
    }

    /// Parses a header. Fails on a wrong magic or version, after which the stream cannot be
    /// resynchronised.
    pub fn parse(mut bytes: &[u8]) -> Result<Header, FrameError> {
        if bytes.len() < HEADER_LEN {
            return Err(FrameError::Truncated {
                needed: HEADER_LEN,
                got: bytes.len(),
            });
        }
        let mut magic = [0u8; 4];
        bytes.copy_to_slice(&mut magic);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = bytes.get_u8();
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        Ok(Header {
            version,
            frame_type: FrameType::from_code(bytes.get_u8()),
            flags: bytes.get_u16_le(),
            request_id: bytes.get_u64_le(),
            payload_len: bytes.get_u32_le(),
        })
    }
}

/// A whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub header: Header,
    /// Exactly `header.payload_len` bytes.
    pub payload: Bytes,
}

/// A frame or payload that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first four bytes are not `VKNF`.
    #[error("bad magic {0:02x?}, expected \"VKNF\"")]
    BadMagic([u8; 4]),
    /// A protocol version this server does not speak.
    #[error("unsupported protocol version {0} (this server speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// Fewer bytes than the layout needs.
    #[error("truncated: needed {needed} bytes, got {got}")]
    Truncated {
        /// Bytes the layout needs.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// A payload whose parts do not add up.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// A value this version does not know.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl FrameError {
    /// The error code a server answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::BadMagic(_) | FrameError::Truncated { .. } | FrameError::Malformed(_) => ErrorCode::BadFrame,
            FrameError::UnsupportedVersion(_) | FrameError::Unsupported(_) => ErrorCode::Unsupported,
        }
    }
}
