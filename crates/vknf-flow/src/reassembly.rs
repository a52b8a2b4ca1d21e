//! TCP reassembly of one direction, as far as TLS record framing needs it.
//!
//! Sequence numbers are unwrapped into 64-bit offsets from the first byte seen (or the byte after
//! the SYN). Bytes at or before the next expected offset are duplicates (retransmissions, or
//! the overlapping head of a segment) and are cut off; segments beyond it wait, copied, in a
//! bounded buffer. When that buffer is full, or the flow ends with data still waiting, the
//! missing bytes are declared a gap: the direction's record framing stops there and the flow is
//! flagged, so a misaligned record length is never reported.

use std::collections::BTreeMap;

use crate::tls::{RecordTracker, Stop};

/// Limits on what one direction may hold while waiting for missing bytes.
#[derive(Clone, Copy, Debug)]
pub struct ReassemblyLimits {
    /// Bytes of out-of-order segments one direction may hold.
    pub max_pending_bytes: usize,
    /// Out-of-order segments one direction may hold.
    pub max_pending_segments: usize,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self {
            max_pending_bytes: 256 * 1024,
            max_pending_segments: 256,
        }
    }
}

#[derive(Clone, Debug)]
struct Pending {
    /// Length on the wire (by the IP header).
    len: u32,
    /// The captured prefix of it (shorter when the snaplen cut the frame).
    data: Vec<u8>,
}

/// What one segment did, for the flow's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentOutcome {
    /// It carried only bytes already delivered (a retransmission or a keep-alive probe).
    pub duplicate: bool,
    /// It arrived ahead of a hole and was buffered.
    pub buffered: bool,
    /// A gap was declared while handling it (buffer full).
    pub gap: bool,
}

/// One direction of a TCP connection.
#[derive(Clone, Debug, Default)]
pub struct Stream {
    /// Sequence number of offset 0.
    base: Option<u32>,
    /// Next offset expected.
    next: u64,
    pending: BTreeMap<u64, Pending>,
    pending_bytes: usize,
    /// True once any byte was declared missing.
    gap: bool,
    /// True when the stream was picked up after its first byte (no SYN seen).
    mid_stream: bool,
    /// The record framer fed by this stream.
    pub tracker: RecordTracker,
}

impl Stream {
    /// Bytes currently buffered out of order.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// True once bytes of this direction were declared missing.
    pub fn has_gap(&self) -> bool {
        self.gap
    }

    /// True when the stream's start was not seen.
    pub fn mid_stream(&self) -> bool {
        self.mid_stream
    }

    /// Handles one segment: `syn` and `seq` from its header, `len` its payload length by the IP
    /// header, `data` the captured part of that payload.
    // This and `deliver` are inlined into the flow table's packet path, where each packet
    // calls them once: left to itself the compiler outlines one of them there (it did once the
    // hello buffers were lent there), for ~20-35 more instructions a packet.
    #[inline(always)]
    pub fn segment(
        &mut self,
        syn: bool,
        seq: u32,
        len: u32,
        data: &[u8],
        limits: &ReassemblyLimits,
        on_record: &mut impl FnMut(u8, u16),
    ) -> SegmentOutcome {
        let mut outcome = SegmentOutcome::default();
        // The SYN occupies one sequence number; data on a SYN (TCP Fast Open) follows it.
        let data_seq = if syn { seq.wrapping_add(1) } else { seq };
        let base = match self.base {
            Some(base) => base,
            None => {
                if syn {
                    self.base = Some(data_seq);
                } else if len == 0 {
                    // A bare ACK says nothing about where data starts.
                    return outcome;
                } else {
                    self.base = Some(data_seq);
                    self.mid_stream = true;
                }
                data_seq
            }
        };
        if len == 0 {
            return outcome;
        }
        let Some(start) = self.offset(base, data_seq) else {
            outcome.duplicate = true;
            return outcome;
        };
        let end = start + u64::from(len);
        if end <= self.next {
            outcome.duplicate = true;
            return outcome;
        }
        if start > self.next {
            outcome.buffered = true;
            self.buffer(start, len, data);
            if self.pending_bytes > limits.max_pending_bytes || self.pending.len() > limits.max_pending_segments {
                // Waiting longer would hold unbounded memory: give the hole up.
                self.declare_gap(on_record);
                outcome.gap = true;
            }
            return outcome;
        }
        self.deliver(start, len, data, on_record);
        self.drain(on_record);
        outcome
    }

    /// Ends the stream: data still waiting means a hole that never filled.
    pub fn finish(&mut self, on_record: &mut impl FnMut(u8, u16)) {
        if !self.pending.is_empty() {
            self.declare_gap(on_record);
        }
    }

    /// Gives up on the hole now (the table's memory budget is spent): as at a flow's end.
    pub fn give_up(&mut self, on_record: &mut impl FnMut(u8, u16)) {
        self.finish(on_record);
    }

    /// The offset of `seq`, unwrapped next to the next expected offset; `None` before offset 0.
    fn offset(&self, base: u32, seq: u32) -> Option<u64> {
        let rel = seq.wrapping_sub(base);
        // Signed distance from `next` modulo 2^32: the closest unwrapping wins.
        let delta = rel.wrapping_sub(self.next as u32) as i32;
        let offset = self.next as i64 + i64::from(delta);
        u64::try_from(offset).ok()
    }

    fn buffer(&mut self, start: u64, len: u32, data: &[u8]) {
        match self.pending.get(&start) {
            Some(existing) if existing.len >= len => {}
            _ => {
                let old = self.pending.insert(
                    start,
                    Pending {
                        len,
                        data: data.to_vec(),
                    },
                );
                self.pending_bytes += data.len();
                if let Some(old) = old {
                    self.pending_bytes -= old.data.len();
                }
            }
        }
    }

    /// Delivers the part of a segment `[start, start+len)` beyond `next` (`start <= next`).
    #[inline(always)]
    fn deliver(&mut self, start: u64, len: u32, data: &[u8], on_record: &mut impl FnMut(u8, u16)) {
        let end = start + u64::from(len);
        if end <= self.next {
            return;
        }
        let skip = (self.next - start) as usize; // < len <= u32::MAX
        if skip < data.len() {
            self.tracker.push(&data[skip..], &mut *on_record);
        }
        let captured_end = start + data.len() as u64;
        let uncaptured = end - captured_end.max(self.next);
        if uncaptured > 0 {
            self.tracker.skip(uncaptured, &mut *on_record);
        }
        self.next = end;
    }

    fn drain(&mut self, on_record: &mut impl FnMut(u8, u16)) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > self.next {
                break;
            }
            let start = *entry.key();
            let segment = entry.remove();
            self.pending_bytes -= segment.data.len();
            self.deliver(start, segment.len, &segment.data, on_record);
        }
    }

    /// Jumps over the hole before the first waiting segment, stops framing, drains what waits.
    fn declare_gap(&mut self, on_record: &mut impl FnMut(u8, u16)) {
        self.gap = true;
        self.tracker.stop(Stop::Gap);
        if let Some((&start, _)) = self.pending.first_key_value() {
            self.next = self.next.max(start);
        }
        self.drain(on_record);
        // Whatever is still waiting lies beyond further holes: framing has stopped, drop it.
        self.pending.clear();
        self.pending_bytes = 0;
    }
}
