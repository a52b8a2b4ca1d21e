use bytes::{Buf, BytesMut};

use super::{Frame, FrameError, HEADER_LEN, Header};

/// What [`FrameDecoder::decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame.
    Frame(Frame),
    /// A frame whose payload exceeds the limit. Its payload is skipped as it arrives, so the
    /// connection stays usable; answer it with `TOO_LARGE`.
    Oversized(Header),
}

/// Incremental, cancel-safe frame decoder over a growing byte buffer.
///
/// Oversized payloads are discarded without being buffered, so a connection never holds more
/// than one header plus `max_payload` bytes of undecoded input.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_payload: u32,
    /// Payload bytes of an oversized frame still to be thrown away.
    discarding: u64,
}

impl FrameDecoder {
    /// A decoder that accepts payloads of at most `max_payload` bytes.
    pub fn new(max_payload: u32) -> FrameDecoder {
        FrameDecoder {
            max_payload,
            discarding: 0,
        }
    }

    /// The payload limit.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// Most bytes worth buffering before the next frame can be decoded.
    pub fn max_buffered(&self) -> usize {
        HEADER_LEN + self.max_payload as usize
    }

    /// Whether the decoder is in the middle of skipping an oversized payload or has buffered part
    /// of a frame (used to tell an idle connection from a stalled one).
    pub fn is_mid_frame(&self, buf: &BytesMut) -> bool {
        self.discarding > 0 || !buf.is_empty()
    }

    /// The header of the frame at the front of `buf` when its header is all there and its payload is
    /// not: the frame that [`FrameDecoder::decode`] would start buffering, reserving room for its
    /// whole payload. `None` for anything else (no whole header yet, a whole frame, an oversized
    /// payload, bytes being skipped, bytes that are no header: `decode` deals with those).
    ///
    /// A server looks here before calling `decode` to decide whether it has room for the frame; if it
    /// has not, [`FrameDecoder::skip_frame`] throws the frame away as it arrives.
    pub fn incomplete_frame(&self, buf: &BytesMut) -> Option<Header> {
        if self.discarding > 0 || buf.len() < HEADER_LEN {
            return None;
        }
        let header = Header::parse(&buf[..HEADER_LEN]).ok()?;
        let incomplete = header.payload_len <= self.max_payload && buf.len() < HEADER_LEN + header.payload_len as usize;
        incomplete.then_some(header)
    }

    /// Skips the frame whose header is at the front of `buf` (one that [`FrameDecoder::incomplete_frame`]
    /// returned): its payload is thrown away as it arrives, like an oversized one's, so the frame costs
    /// no memory and the connection stays usable. Returns the skipped header.
    pub fn skip_frame(&mut self, buf: &mut BytesMut) -> Option<Header> {
        let header = self.incomplete_frame(buf)?;
        buf.advance(HEADER_LEN);
        let skip = (header.payload_len as usize).min(buf.len());
        buf.advance(skip);
        self.discarding = u64::from(header.payload_len) - skip as u64;
        Some(header)
    }

    /// Takes the next frame out of `buf`, or returns `Ok(None)` when more bytes are needed.
    ///
    /// An error means the stream is not a vknf stream (bad magic or version): the connection
    /// must be closed, because frame boundaries can no longer be found.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        if self.discarding > 0 {
            let skip = usize::try_from(self.discarding).unwrap_or(usize::MAX).min(buf.len());
            buf.advance(skip);
            self.discarding -= skip as u64;
            if self.discarding > 0 {
                return Ok(None);
            }
        }
        if buf.len() < HEADER_LEN {
            // Reject garbage as soon as the magic is visibly wrong, without waiting for 20 bytes.
            let seen = buf.len().min(4);
            if buf[..seen] != super::MAGIC[..seen] {
                let mut magic = [0u8; 4];
                magic[..seen].copy_from_slice(&buf[..seen]);
                return Err(FrameError::BadMagic(magic));
            }
            return Ok(None);
        }
        let header = Header::parse(&buf[..HEADER_LEN])?;
        if header.payload_len > self.max_payload {
            buf.advance(HEADER_LEN);
            self.discarding = u64::from(header.payload_len);
            let skip = usize::try_from(self.discarding).unwrap_or(usize::MAX).min(buf.len());
            buf.advance(skip);
            self.discarding -= skip as u64;
            return Ok(Some(Decoded::Oversized(header)));
        }
        let total = HEADER_LEN + header.payload_len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let payload = buf.split_to(header.payload_len as usize).freeze();
        Ok(Some(Decoded::Frame(Frame { header, payload })))
    }
}
