//! Feeds arbitrary bytes, in arbitrary chunk sizes, to the server's frame decoder and to every
//! payload parser. Nothing may panic, and the decoder may never buffer more than one frame. Frames
//! are refused on their header now and then (as a server over its memory budget does) and skipped.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use vknf_protocol::{Decoded, Description, ErrorBody, FrameDecoder, InferRequest, ResponseBody};

/// Small enough that the fuzzer reaches the oversized-frame path.
const MAX_PAYLOAD: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_seed, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk_seed % 64) + 1;
    // The high bits pick which incomplete frames a pretend server refuses on their header.
    let refuse_every = usize::from(chunk_seed >> 6);
    let mut seen_headers = 0usize;
    let mut decoder = FrameDecoder::new(MAX_PAYLOAD);
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            if refuse_every > 0 && decoder.incomplete_frame(&buf).is_some() {
                seen_headers += 1;
                if seen_headers % refuse_every == 0 {
                    let header = decoder.skip_frame(&mut buf).expect("an incomplete frame can be skipped");
                    assert!(header.payload_len <= MAX_PAYLOAD);
                }
            }
            match decoder.decode(&mut buf) {
                Ok(Some(Decoded::Frame(frame))) => {
                    assert!(frame.payload.len() <= MAX_PAYLOAD as usize);
                    if let Ok(request) = InferRequest::parse(frame.payload.clone()) {
                        let _ = request.first_non_finite();
                        let width = request.n_features as usize;
                        if request.n_rows > 0 && width > 0 && width * 4 <= frame.payload.len() {
                            let mut row = vec![0f32; width];
                            request.decode_rows_into(request.n_rows as usize - 1, 1, &mut row);
                        }
                    }
                    let _ = ResponseBody::parse(frame.payload.clone());
                    let _ = ErrorBody::parse(&frame.payload);
                    let _ = Description::parse(&frame.payload);
                }
                Ok(Some(Decoded::Oversized(header))) => assert!(header.payload_len > MAX_PAYLOAD),
                Ok(None) => break,
                Err(_) => return,
            }
            assert!(buf.len() <= decoder.max_buffered() + chunk);
        }
    }
});
