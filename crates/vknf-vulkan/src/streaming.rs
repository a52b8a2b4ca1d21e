//! Copies into memory a device reads next, with non-temporal stores.
//!
//! An ordinary copy leaves the written lines dirty in the writing core's caches. When the GPU then reads
//! the bytes (a DMA from pinned memory, or a kernel pulling rows over the bus) every line is snooped out
//! of those caches, far slower than reading memory; and write-combined BAR memory takes whole-line
//! non-temporal writes best. Streaming stores send the bytes to memory (or the bus) directly.

/// Copies `src` into `dst` (equal lengths) with non-temporal stores where the CPU has them (x86-64: SSE2,
/// always present), then fences them, so that they are visible before anything this thread does next
/// (such as telling another thread that the copy is done). Elsewhere an ordinary copy.
///
/// # Panics
/// When the lengths differ.
pub fn copy_streaming(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy_streaming: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        x86::copy(dst, src);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};

    /// Bytes moved per loop step: one cache line.
    const LINE: usize = 64;

    pub(super) fn copy(dst: &mut [u8], src: &[u8]) {
        // The head up to a 16-byte boundary of `dst`, and the tail, are copied as usual.
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        let (dst_head, dst_body) = dst.split_at_mut(head);
        let (src_head, src_body) = src.split_at(head);
        dst_head.copy_from_slice(src_head);
        let lines = dst_body.len() / LINE;
        let (dst_lines, dst_tail) = dst_body.split_at_mut(lines * LINE);
        let (src_lines, src_tail) = src_body.split_at(lines * LINE);
        for (d, s) in dst_lines.chunks_exact_mut(LINE).zip(src_lines.chunks_exact(LINE)) {
            let d = d.as_mut_ptr().cast::<__m128i>();
            let s = s.as_ptr().cast::<__m128i>();
            // SAFETY: `d` and `s` each cover LINE = 4 x 16 valid bytes (chunks_exact of live slices);
            // `d` is 16-byte aligned (the head above aligned `dst_body`, and LINE is a multiple of 16);
            // the loads are unaligned loads; SSE2 is part of the x86-64 baseline.
            unsafe {
                let a = _mm_loadu_si128(s);
                let b = _mm_loadu_si128(s.add(1));
                let c = _mm_loadu_si128(s.add(2));
                let e = _mm_loadu_si128(s.add(3));
                _mm_stream_si128(d, a);
                _mm_stream_si128(d.add(1), b);
                _mm_stream_si128(d.add(2), c);
                _mm_stream_si128(d.add(3), e);
            }
        }
        dst_tail.copy_from_slice(src_tail);
        // SAFETY: a store fence has no preconditions; it orders the streaming stores above before this
        // thread's later stores.
        unsafe { _mm_sfence() };
    }
}

#[cfg(test)]
mod tests {
    use super::copy_streaming;

    #[test]
    fn copies_every_byte_whatever_the_alignment_and_length() {
        let src: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for offset in 0..20 {
            for len in [0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 500, 980] {
                let mut dst = vec![0xAAu8; 1000];
                copy_streaming(&mut dst[offset..offset + len], &src[..len]);
                assert_eq!(&dst[offset..offset + len], &src[..len], "offset {offset}, length {len}");
                assert!(dst[..offset].iter().all(|b| *b == 0xAA), "wrote before the range");
                assert!(dst[offset + len..].iter().all(|b| *b == 0xAA), "wrote past the range");
            }
        }
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn refuses_different_lengths() {
        copy_streaming(&mut [0u8; 4], &[0u8; 5]);
    }
}
