//! The frame codec: round trips, garbage, oversized frames, chunked delivery.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use vknf_protocol::{
    Decoded, Description, ErrorBody, ErrorCode, Frame, FrameDecoder, FrameError, FrameType, HEADER_LEN, Header,
    INPUT_NAME, InferRequest, MAX_ERROR_MESSAGE, ResponseBody, ResponseLayout, encode_description, encode_error,
    encode_request, encode_request_bytes, encode_response,
};
use vknf_runtime::{DType, FunctionInfo, InputInfo, OutputInfo};

/// Feeds `bytes` to a decoder in chunks of the given sizes; collects frames until an error.
fn decode_chunked(bytes: &[u8], chunks: &[usize], max_payload: u32) -> (Vec<Decoded>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(max_payload);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    let mut sizes = chunks.iter().copied().cycle();
    while at < bytes.len() {
        let n = sizes.next().unwrap_or(1).max(1).min(bytes.len() - at);
        buf.extend_from_slice(&bytes[at..at + n]);
        at += n;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(decoded)) => out.push(decoded),
                Ok(None) => break,
                Err(error) => return (out, Some(error)),
            }
            // Never more buffered than one whole frame.
            assert!(buf.len() <= decoder.max_buffered() + n);
        }
    }
    (out, None)
}

fn frame(decoded: &Decoded) -> &Frame {
    match decoded {
        Decoded::Frame(frame) => frame,
        Decoded::Oversized(header) => panic!("unexpected oversized frame {header:?}"),
    }
}

proptest! {
    #[test]
    fn requests_round_trip_through_chunked_decoding(
        id in any::<u64>(),
        n_features in 1u32..12,
        n_rows in 1usize..40,
        mask in any::<u32>(),
        seed in any::<u64>(),
        chunks in prop::collection::vec(1usize..300, 1..8),
    ) {
        let values: Vec<f32> = (0..n_rows * n_features as usize)
            .map(|i| f32::from_bits((seed as u32).wrapping_mul(2654435761).wrapping_add(i as u32 * 7919)))
            .collect();
        let mut bytes = BytesMut::new();
        encode_request(&mut bytes, id, n_features, mask, &values).unwrap();
        encode_request(&mut bytes, id.wrapping_add(1), n_features, 0, &values[..n_features as usize]).unwrap();
        let (frames, error) = decode_chunked(&bytes, &chunks, 1 << 20);
        prop_assert!(error.is_none());
        prop_assert_eq!(frames.len(), 2);
        let first = frame(&frames[0]);
        prop_assert_eq!(first.header.request_id, id);
        prop_assert_eq!(first.header.frame_type, FrameType::Request);
        let request = InferRequest::parse(first.payload.clone()).unwrap();
        prop_assert_eq!(request.n_rows as usize, n_rows);
        prop_assert_eq!(request.n_features, n_features);
        prop_assert_eq!(request.output_mask, mask);
        let mut decoded = vec![0f32; values.len()];
        request.decode_rows_into(0, n_rows, &mut decoded);
        prop_assert!(decoded.iter().zip(&values).all(|(a, b)| a.to_bits() == b.to_bits()));
        let second = InferRequest::parse(frame(&frames[1]).payload.clone()).unwrap();
        prop_assert_eq!(second.n_rows, 1);
    }

    #[test]
    fn the_first_non_finite_value_is_found_wherever_it_is(
        n_features in 1u32..80,
        n_rows in 1usize..30,
        bad in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3), 0..4),
    ) {
        let mut values: Vec<f32> = (0..n_rows * n_features as usize).map(|i| i as f32 * 0.5 - 3.0).collect();
        let len = values.len();
        for (at, kind) in &bad {
            values[at.index(len)] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][*kind as usize];
        }
        let mut bytes = BytesMut::new();
        encode_request(&mut bytes, 1, n_features, 0, &values).unwrap();
        let request = InferRequest::parse(bytes.split_off(HEADER_LEN).freeze()).unwrap();
        let expected = values
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (i / n_features as usize, i % n_features as usize));
        prop_assert_eq!(request.first_non_finite(), expected);
    }

    #[test]
    fn responses_round_trip(
        id in any::<u64>(),
        n_rows in 0u32..50,
        widths in prop::collection::vec(1u32..6, 0..4),
    ) {
        let data: Vec<Vec<u8>> = widths.iter().enumerate()
            .map(|(i, w)| (0..n_rows * w * 4).map(|b| (b as usize * 31 + i) as u8).collect())
            .collect();
        let blocks: Vec<(u8, DType, u32, &[u8])> = widths.iter().enumerate()
            .map(|(i, w)| (i as u8 * 2, [DType::U32, DType::I32, DType::F32][i % 3], *w, data[i].as_slice()))
            .collect();
        let mut bytes = BytesMut::new();
        encode_response(&mut bytes, id, n_rows, &blocks).unwrap();
        let (frames, error) = decode_chunked(&bytes, &[7], 1 << 20);
        prop_assert!(error.is_none());
        let body = ResponseBody::parse(frame(&frames[0]).payload.clone()).unwrap();
        prop_assert_eq!(body.n_rows, n_rows);
        prop_assert_eq!(body.outputs.len(), widths.len());
        for (i, block) in body.outputs.iter().enumerate() {
            prop_assert_eq!(block.index as usize, i * 2);
            prop_assert_eq!(block.width, widths[i]);
            prop_assert_eq!(&block.data[..], &data[i][..]);
        }
    }

    #[test]
    fn errors_round_trip_and_long_messages_are_cut(id in any::<u64>(), code in 1u16..12, message in ".{0,1500}") {
        let mut bytes = BytesMut::new();
        encode_error(&mut bytes, id, ErrorCode::from_code(code), &message);
        let (frames, _) = decode_chunked(&bytes, &[5], 1 << 20);
        let error = ErrorBody::parse(&frame(&frames[0]).payload).unwrap();
        prop_assert_eq!(error.code.code(), code);
        prop_assert!(error.message.len() <= MAX_ERROR_MESSAGE);
        prop_assert!(message.starts_with(&error.message));
    }

    /// Arbitrary bytes, delivered in arbitrary chunks, never panic the decoder or the payload
    /// parsers, and never make it buffer more than one frame.
    #[test]
    fn garbage_never_panics(
        prefix_valid in any::<bool>(),
        garbage in prop::collection::vec(any::<u8>(), 0..600),
        chunks in prop::collection::vec(1usize..64, 1..6),
    ) {
        let mut bytes = Vec::new();
        if prefix_valid {
            // A plausible header followed by random payload, so parsers see garbage too.
            let mut head = BytesMut::new();
            let kind = FrameType::from_code(garbage.first().copied().unwrap_or(1) % 6);
            Header::new(kind, 9, garbage.len() as u32).encode(&mut head);
            bytes.extend_from_slice(&head);
        }
        bytes.extend_from_slice(&garbage);
        let (frames, _) = decode_chunked(&bytes, &chunks, 512);
        for decoded in &frames {
            if let Decoded::Frame(frame) = decoded {
                let _ = InferRequest::parse(frame.payload.clone()).map(|r| r.first_non_finite());
                let _ = ResponseBody::parse(frame.payload.clone());
                let _ = ErrorBody::parse(&frame.payload);
                let _ = Description::parse(&frame.payload);
            }
        }
    }
}

#[test]
fn oversized_frames_are_reported_and_skipped_without_buffering() {
    let mut bytes = BytesMut::new();
    Header::new(FrameType::Request, 41, 10_000).encode(&mut bytes);
    bytes.put_bytes(0xAB, 10_000);
    encode_request(&mut bytes, 42, 2, 0, &[1.0, 2.0]).unwrap();
    let (frames, error) = decode_chunked(&bytes, &[333], 1024);
    assert!(error.is_none());
    assert_eq!(frames.len(), 2);
    assert!(matches!(&frames[0], Decoded::Oversized(h) if h.request_id == 41 && h.payload_len == 10_000));
    assert_eq!(frame(&frames[1]).header.request_id, 42);
}

#[test]
fn a_frame_refused_on_its_header_is_skipped_as_it_arrives_and_the_next_one_decodes() {
    let mut bytes = BytesMut::new();
    let rows: Vec<f32> = (0..2000).map(|i| i as f32).collect();
    encode_request(&mut bytes, 7, 4, 0, &rows).unwrap();
    let refused_len = bytes.len();
    encode_request(&mut bytes, 8, 2, 0, &[1.0, 2.0]).unwrap();
    let mut decoder = FrameDecoder::new(1 << 20);
    let mut buf = BytesMut::new();
    let mut skipped = Vec::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(1000) {
        buf.extend_from_slice(piece);
        loop {
            if let Some(header) = decoder.incomplete_frame(&buf) {
                // Refused: nothing of its payload is kept.
                assert_eq!(decoder.skip_frame(&mut buf), Some(header));
                skipped.push(header.request_id);
            }
            match decoder.decode(&mut buf).unwrap() {
                Some(decoded) => frames.push(decoded),
                None => break,
            }
            assert!(buf.len() < 1000);
        }
        assert!(buf.capacity() < refused_len, "the refused payload was never reserved");
    }
    assert_eq!(skipped, vec![7]);
    assert_eq!(frames.len(), 1);
    assert_eq!(frame(&frames[0]).header.request_id, 8);
    // A whole frame in the buffer is not "incomplete": it decodes at once.
    let mut whole = BytesMut::new();
    encode_request(&mut whole, 9, 2, 0, &[1.0, 2.0]).unwrap();
    assert_eq!(FrameDecoder::new(1024).incomplete_frame(&whole), None);
}

#[test]
fn bad_magic_is_rejected_before_a_whole_header_arrives() {
    let mut decoder = FrameDecoder::new(1024);
    let mut buf = BytesMut::from(&b"GET "[..]);
    assert_eq!(decoder.decode(&mut buf), Err(FrameError::BadMagic(*b"GET ")));
    let mut buf = BytesMut::from(&b"VK"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
}

#[test]
fn unknown_versions_are_rejected() {
    let mut bytes = BytesMut::new();
    Header::new(FrameType::Request, 1, 0).encode(&mut bytes);
    bytes[4] = 2;
    let mut decoder = FrameDecoder::new(1024);
    assert_eq!(decoder.decode(&mut bytes), Err(FrameError::UnsupportedVersion(2)));
    assert_eq!(FrameError::UnsupportedVersion(2).code(), ErrorCode::Unsupported);
}

#[test]
fn requests_whose_parts_do_not_add_up_are_malformed() {
    let mut bytes = BytesMut::new();
    encode_request(&mut bytes, 1, 3, 0, &[1.0; 6]).unwrap();
    let payload = bytes.split_off(HEADER_LEN).freeze();
    assert!(InferRequest::parse(payload.slice(..payload.len() - 4)).is_err());
    assert!(matches!(
        InferRequest::parse(payload.slice(..10)),
        Err(FrameError::Truncated { .. })
    ));
    let mut wrong_dtype = payload.to_vec();
    wrong_dtype[8] = 9;
    assert!(matches!(
        InferRequest::parse(wrong_dtype.into()),
        Err(FrameError::Unsupported(_))
    ));
    assert!(encode_request(&mut BytesMut::new(), 1, 4, 0, &[1.0; 6]).is_err());
}

#[test]
fn non_finite_values_are_located() {
    let mut bytes = BytesMut::new();
    encode_request(&mut bytes, 1, 3, 0, &[0.0, 1.0, 2.0, 3.0, f32::INFINITY, 5.0]).unwrap();
    let request = InferRequest::parse(bytes.split_off(HEADER_LEN).freeze()).unwrap();
    assert_eq!(request.first_non_finite(), Some((1, 1)));
}

#[test]
fn descriptions_round_trip() {
    let info = FunctionInfo {
        input: InputInfo {
            name: INPUT_NAME.into(),
            dtype: DType::F32,
            width: 12,
        },
        outputs: vec![
            OutputInfo {
                name: "labels".into(),
                dtype: DType::U32,
                width: 1,
                on_request: false,
            },
            OutputInfo {
                name: "scores".into(),
                dtype: DType::F32,
                width: 5,
                on_request: true,
            },
        ],
        max_batch_rows: 4096,
        accepts_non_finite: true,
        parameters: Default::default(),
    };
    let mut bytes = BytesMut::new();
    encode_description(&mut bytes, 7, "default/iris", &info);
    let (frames, _) = decode_chunked(&bytes, &[3], 1024);
    let description = Description::parse(&frame(&frames[0]).payload).unwrap();
    assert_eq!(description.name, "default/iris");
    assert_eq!(description.info, info);
}

#[test]
fn integer_inputs_round_trip_bit_for_bit_and_are_described() {
    // Addresses and ports: values a float cannot hold exactly, and bit patterns that are NaN as f32.
    let values: Vec<u32> = vec![0xC0A8_0001, 443, u32::MAX, 0x7FC0_0000, 0x7F80_0001, 16_777_217];
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut frame_bytes = BytesMut::new();
    encode_request_bytes(&mut frame_bytes, 5, 3, DType::U32, 0, &bytes).unwrap();
    let (frames, _) = decode_chunked(&frame_bytes, &[7], 1024);
    let request = InferRequest::parse(frame(&frames[0]).payload.clone()).unwrap();
    assert_eq!((request.n_rows, request.n_features, request.dtype), (2, 3, DType::U32));
    assert_eq!(&request.rows[..], &bytes[..]);
    assert_eq!(request.first_non_finite(), None, "integers are never checked for NaN");

    let info = FunctionInfo {
        input: InputInfo {
            name: INPUT_NAME.into(),
            dtype: DType::U32,
            width: 3,
        },
        outputs: vec![OutputInfo {
            name: "port_class".into(),
            dtype: DType::I32,
            width: 1,
            on_request: false,
        }],
        max_batch_rows: 64,
        accepts_non_finite: false,
        parameters: Default::default(),
    };
    let mut description = BytesMut::new();
    encode_description(&mut description, 8, "default/ports", &info);
    let (frames, _) = decode_chunked(&description, &[5], 1024);
    assert_eq!(Description::parse(&frame(&frames[0]).payload).unwrap().info, info);
}

#[test]
fn a_response_laid_out_first_and_filled_in_place_parses_like_an_encoded_one() {
    let outputs = vec![
        OutputInfo {
            name: "labels".into(),
            dtype: DType::U32,
            width: 1,
            on_request: false,
        },
        OutputInfo {
            name: "scores".into(),
            dtype: DType::F32,
            width: 3,
            on_request: true,
        },
    ];
    let labels: Vec<u8> = [4u32, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let scores: Vec<u8> = [0.5f32, 0.25, 0.25, 0.0, 1.0, 0.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    for mask in [0b01u32, 0b11] {
        let mut in_place = BytesMut::new();
        let layout = ResponseLayout::write_headers(&mut in_place, 42, 2, mask, &outputs).unwrap();
        assert_eq!(layout.frame_len, in_place.len());
        in_place[layout.data[0].clone().unwrap()].copy_from_slice(&labels);
        if let Some(range) = layout.data[1].clone() {
            in_place[range].copy_from_slice(&scores);
        }
        let mut blocks = vec![(0u8, DType::U32, 1u32, labels.as_slice())];
        if mask & 0b10 != 0 {
            blocks.push((1, DType::F32, 3, scores.as_slice()));
        }
        let mut encoded = BytesMut::new();
        encode_response(&mut encoded, 42, 2, &blocks).unwrap();
        assert_eq!(in_place, encoded);
        let (frames, _) = decode_chunked(&in_place, &[11], 1024);
        let body = ResponseBody::parse(frame(&frames[0]).payload.clone()).unwrap();
        assert_eq!(body.output(0).unwrap().to_u32(), vec![4, 1]);
    }
    // A layout and buffer kept from a larger response lay a smaller one out in the same memory, with
    // the same bytes as a fresh layout, and stale data of the earlier one zeroed.
    let mut buffer = BytesMut::new();
    let mut layout = ResponseLayout::write_headers(&mut buffer, 1, 40, 0b11, &outputs).unwrap();
    buffer[layout.data[1].clone().unwrap()].fill(0xEE);
    let (memory, capacity) = (buffer.as_ptr(), buffer.capacity());
    for (id, mask) in [(2u64, 0b01u32), (3, 0b11)] {
        layout.rewrite_headers(&mut buffer, id, 2, mask, &outputs).unwrap();
        let mut fresh = BytesMut::new();
        assert_eq!(
            layout,
            ResponseLayout::write_headers(&mut fresh, id, 2, mask, &outputs).unwrap()
        );
        assert_eq!(buffer, fresh, "mask {mask:#b}");
        assert_eq!(
            (buffer.as_ptr(), buffer.capacity()),
            (memory, capacity),
            "the same memory"
        );
    }
}
