//! The flow table: segments in, flow events out, in bounded memory.
//!
//! Flows live in a slab (a vector of flows, stored inline, slots reused). An index of slot
//! numbers ([`index::SlotIndex`]) gives a packet its slot: the packet's canonical 5-tuple
//! ([`WireKey`], built straight from the decoded segment) is hashed once with a per-table seeded
//! foldhash, and the candidate slots' own keys are compared, so the index holds 8 bytes a flow and
//! the key compared is on the flow's first cache line, which the packet reads anyway: a lookup is
//! one read of the index and one of the flow, without a pointer between them. The flow's fields
//! that every packet touches come first in it, the rest after.
//!
//! For expiry, flows are ordered by deadline (last packet plus the idle timeout, or plus a short
//! linger once the connection closed) and flow id ([`ExpiryQueue`]). The order is lazy: a packet
//! that only pushes a flow's deadline later leaves its entry where it was, and the entry is moved
//! when it comes first, so the common packet costs no queue work. Expiry and eviction still take
//! flows in exact (deadline, id) order, and the flow closest to its deadline is the one evicted
//! when the table is full. Time is the capture's: a file is replayed by its timestamps, never by
//! the wall clock.

use std::hash::BuildHasher;
use std::net::IpAddr;

use super::{Counters, EndReason, Endpoint, FlowEvent, FlowFlags, FlowRecord, ServerBy};
use crate::decode::TcpSegment;
use crate::reassembly::{ReassemblyLimits, Stream};
use crate::stats::Stats;
use crate::tls::{Stop, parse_client_hello, parse_server_hello_version};

mod expiry;
mod index;

use expiry::{Entry, ExpiryQueue, Lane};
use index::SlotIndex;

const SECOND: u64 = 1_000_000_000;

/// Flow table settings. The timeouts default to NFStream's, so that flow counts compare.
///
/// Memory is bounded by the limits together: at most `max_flows` flows, each with at most
/// `max_records` record lengths (4 bytes each) and its reassembly limits, and all of them with at
/// most `max_buffered_bytes` of out-of-order data. The defaults allow 64 Ki flows of 16 Ki records
/// (4 GiB in the worst case, reached only by 64 Ki simultaneous flows of 16 Ki records each).
#[derive(Clone, Debug)]
pub struct FlowConfig {
    /// A flow without packets for this long ends ([`EndReason::Idle`]).
    pub idle_timeout_ns: u64,
    /// A flow older than this ends at its next packet ([`EndReason::Active`]).
    pub active_timeout_ns: u64,
    /// After both FINs or a RST, how long the flow lingers before it is reported: the last ACK
    /// and the RSTs a closed socket answers with still belong to it (as they do in NFStream and
    /// Wireshark), instead of each opening a one-packet flow. A new SYN ends the linger at once.
    pub fin_linger_ns: u64,
    /// Flows held at once; past it the flow nearest its deadline is evicted (and counted).
    pub max_flows: usize,
    /// Bytes of out-of-order data all flows together may hold.
    pub max_buffered_bytes: usize,
    /// Per-direction reassembly limits.
    pub reassembly: ReassemblyLimits,
    /// Ports that identify the server when no SYN was seen (443, 8443, ...).
    pub server_ports: Vec<u16>,
    /// Emit a [`FlowEvent::Early`] when a flow's record sequence reaches this many records.
    pub early_records: Option<usize>,
    /// Records kept per flow; past it the sequence is cut and flagged.
    pub max_records: usize,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            idle_timeout_ns: 120 * SECOND,
            active_timeout_ns: 1800 * SECOND,
            fin_linger_ns: 2 * SECOND,
            max_flows: 1 << 16,
            max_buffered_bytes: 256 << 20,
            reassembly: ReassemblyLimits::default(),
            server_ports: vec![443, 8443],
            early_records: None,
            max_records: 1 << 14,
        }
    }
}

/// A TCP connection's 5-tuple in the table's form: both addresses as 128-bit numbers (IPv4 in
/// the low 32 bits, with the family kept apart), the lower (address, port) first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct WireKey {
    lo_addr: u128,
    hi_addr: u128,
    /// Low port in the high half, high port in the low half.
    ports: u32,
    v6: bool,
}

impl WireKey {
    /// The key of a segment, and whether its source is the key's lower end.
    #[inline]
    fn of(seg: &TcpSegment<'_>) -> (Self, bool) {
        let (src, dst, v6) = match (seg.src, seg.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (u128::from(u32::from(s)), u128::from(u32::from(d)), false),
            (s, d) => (wide(s), wide(d), true),
        };
        let src_is_lo = (src, seg.src_port) <= (dst, seg.dst_port);
        let ((lo_addr, lo_port), (hi_addr, hi_port)) = if src_is_lo {
            ((src, seg.src_port), (dst, seg.dst_port))
        } else {
            ((dst, seg.dst_port), (src, seg.src_port))
        };
        let ports = (u32::from(lo_port) << 16) | u32::from(hi_port);
        (
            Self {
                lo_addr,
                hi_addr,
                ports,
                v6,
            },
            src_is_lo,
        )
    }
}

fn wide(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// One flow's state. `repr(C)` keeps the declared order: what every packet reads or writes
/// (key, times, counters, flags, records) first, on the first cache lines; the directions'
/// streams next; what only a flow's start and end use last. Aligned to a cache line, so that in
/// the slab every flow starts on one and its key is read with a single line.
#[repr(C, align(64))]
struct Flow {
    key: WireKey,
    /// False while the slot is free.
    live: bool,
    first_ns: u64,
    last_ns: u64,
    counters: Counters,
    deadline: u64,
    /// The deadline of the flow's live expiry entry: never later than `deadline`.
    queued: u64,
    records: Vec<i32>,
    id: u64,
    /// The key's hash in the index.
    hash: u64,
    /// Set once the connection closed (both FINs, or a RST): the flow lingers, then ends so.
    closed: Option<EndReason>,
    /// The client is the key's lower end.
    client_is_lo: bool,
    syn_seen: bool,
    fin_c: bool,
    fin_s: bool,
    records_capped: bool,
    early_sent: bool,
    /// Client to server, and server to client.
    c2s: Stream,
    s2c: Stream,
    client: Endpoint,
    server: Endpoint,
    server_by: ServerBy,
    sni: Option<String>,
    alpn: Vec<String>,
    tls_version: Option<String>,
}

impl Flow {
    fn flags(&self) -> FlowFlags {
        let mut flags = FlowFlags {
            gap: self.c2s.has_gap() || self.s2c.has_gap(),
            mid_stream: !self.syn_seen || self.c2s.mid_stream() || self.s2c.mid_stream(),
            records_capped: self.records_capped,
            ..FlowFlags::default()
        };
        for stream in [&self.c2s, &self.s2c] {
            match stream.tracker.stopped() {
                Some(Stop::NotTls) => flags.not_tls = true,
                Some(Stop::Desync) => flags.desync = true,
                Some(Stop::Gap) => flags.gap = true,
                Some(Stop::Truncated) => flags.truncated = true,
                None => {}
            }
        }
        flags
    }

    /// The record of a flow that ended: its buffers move into the record instead of being copied
    /// (the flow is left without them, to be reused).
    fn take_record(&mut self, end: EndReason) -> FlowRecord {
        let flags = self.flags();
        FlowRecord {
            id: self.id,
            client: self.client,
            server: self.server,
            server_by: self.server_by,
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            counters: self.counters,
            sni: self.sni.take(),
            alpn: std::mem::take(&mut self.alpn),
            tls_version: self.tls_version.take(),
            flags,
            end: Some(end),
            records: std::mem::take(&mut self.records),
        }
    }

    fn snapshot(&self, end: Option<EndReason>) -> FlowRecord {
        FlowRecord {
            id: self.id,
            client: self.client,
            server: self.server,
            server_by: self.server_by,
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            counters: self.counters,
            sni: self.sni.clone(),
            alpn: self.alpn.clone(),
            tls_version: self.tls_version.clone(),
            flags: self.flags(),
            end,
            records: self.records.clone(),
        }
    }
}

/// Builds flows from TCP segments. One table per thread; see [`crate::source::live`] for the
/// sharded live pipeline.
pub struct FlowTable {
    config: FlowConfig,
    index: SlotIndex,
    hasher: foldhash::fast::RandomState,
    /// The flows, inline: a slot's flow is found from its number without reading a pointer.
    /// Free slots (`live` false) are listed in `free`; the slab never holds more than
    /// `max_flows` + 1 slots.
    flows: Vec<Flow>,
    free: Vec<u32>,
    /// Expiry and eviction order; entries whose flow ended or whose `queued` moved are stale and
    /// skipped when they come first.
    expiry: ExpiryQueue,
    next_id: u64,
    buffered: usize,
    now: u64,
    stats: Stats,
    /// Buffers of hellos already parsed, lent to the next streams that start one: a hello is
    /// read within a packet or a few, so a few buffers serve every flow instead of two
    /// allocations a flow.
    spare_hellos: Vec<Vec<u8>>,
}

/// Spare hello buffers a table keeps.
const SPARE_HELLOS: usize = 32;
/// The largest spare hello buffer a table keeps (a ClientHello with a post-quantum key share is
/// under 2 KiB).
const SPARE_HELLO_BYTES: usize = 4096;

/// Keeps a hello buffer among a table's `spares` where there is room and it is not too large.
fn keep_spare_hello(spares: &mut Vec<Vec<u8>>, buf: Vec<u8>) {
    if spares.len() < SPARE_HELLOS && buf.capacity() <= SPARE_HELLO_BYTES {
        spares.push(buf);
    }
}

impl FlowTable {
    /// An empty table.
    pub fn new(config: FlowConfig) -> Self {
        Self {
            config,
            index: SlotIndex::default(),
            hasher: foldhash::fast::RandomState::default(),
            flows: Vec::new(),
            free: Vec::new(),
            expiry: ExpiryQueue::default(),
            next_id: 0,
            buffered: 0,
            now: 0,
            stats: Stats::default(),
            spare_hellos: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &FlowConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counters, for the reader that feeds the table (frames and drops are counted there).
    pub fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }

    /// Flows held now.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no flow is held.
    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    /// Bytes of out-of-order data held now, all flows together.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Ends the flows whose deadline is before `now_ns` (capture time).
    #[inline]
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<FlowEvent>) {
        self.now = self.now.max(now_ns);
        if self.expiry.earliest_deadline() >= self.now {
            return; // nothing is due: the common packet stops here
        }
        while let Some(slot) = self.pop_earliest(Some(self.now)) {
            let reason = self.flow(slot).and_then(|flow| flow.closed).unwrap_or(EndReason::Idle);
            self.end(slot, reason, out);
        }
    }

    /// Ends every flow (end of input), in order of deadline.
    pub fn finish(&mut self, out: &mut Vec<FlowEvent>) {
        let mut order: Vec<(u64, u64, u32)> = self
            .flows
            .iter()
            .enumerate()
            .filter(|(_, flow)| flow.live)
            .map(|(slot, f)| (f.deadline, f.id, slot as u32))
            .collect();
        order.sort_unstable();
        for (_, _, slot) in order {
            let reason = self
                .flow(slot)
                .and_then(|flow| flow.closed)
                .unwrap_or(EndReason::EndOfInput);
            self.end(slot, reason, out);
        }
        self.expiry.clear();
    }

    /// Handles one segment captured at `ts_ns`.
    pub fn process(&mut self, ts_ns: u64, seg: &TcpSegment<'_>, out: &mut Vec<FlowEvent>) {
        self.stats.tcp_segments += 1;
        if seg.is_cut() {
            self.stats.cut_segments += 1;
        }
        self.advance(ts_ns, out);
        let (key, src_is_lo) = WireKey::of(seg);
        let hash = self.hasher.hash_one(key);
        let flows = &self.flows;
        let mut found = self.index.find(hash, |slot| flows[slot as usize].key == key);
        if let Some(slot) = found
            && let Some(flow) = self.flow(slot)
        {
            if let Some(reason) = flow.closed
                && seg.syn
                && !seg.ack
            {
                // The port pair is reused by a new connection.
                self.end(slot, reason, out);
                found = None;
            } else if ts_ns.saturating_sub(flow.first_ns) >= self.config.active_timeout_ns {
                self.end(slot, EndReason::Active, out);
                found = None;
            }
        }
        let slot = match found {
            Some(slot) => slot,
            None => {
                if self.index.len() >= self.config.max_flows.max(1)
                    && let Some(victim) = self.pop_earliest(None)
                {
                    self.stats.flows_evicted += 1;
                    self.end(victim, EndReason::Evicted, out);
                }
                let flow = self.new_flow(ts_ns, seg, key, hash, src_is_lo);
                self.stats.flows_created += 1;
                self.insert(flow)
            }
        };
        let Some(flow) = self.flows.get_mut(slot as usize) else {
            return;
        };
        let from_client = src_is_lo == flow.client_is_lo;
        flow.first_ns = flow.first_ns.min(ts_ns);
        flow.last_ns = flow.last_ns.max(ts_ns);
        if from_client {
            flow.counters.packets_c2s += 1;
            flow.counters.bytes_c2s += u64::from(seg.ip_len);
        } else {
            flow.counters.packets_s2c += 1;
            flow.counters.bytes_s2c += u64::from(seg.ip_len);
        }
        if seg.syn {
            flow.syn_seen = true;
        }

        // Records of both directions go into one sequence, signed by direction.
        let max_records = self.config.max_records;
        let records = &mut flow.records;
        let capped = &mut flow.records_capped;
        let sign = if from_client { -1 } else { 1 };
        let mut on_record = |_content_type: u8, len: u16| {
            if records.len() < max_records {
                records.push(sign * i32::from(len));
            } else {
                *capped = true;
            }
        };
        let stream = if from_client { &mut flow.c2s } else { &mut flow.s2c };
        if !seg.payload.is_empty()
            && stream.tracker.wants_buffer()
            && let Some(buf) = self.spare_hellos.pop()
        {
            stream.tracker.lend_buffer(buf);
        }
        let before = stream.pending_bytes();
        let outcome = stream.segment(
            seg.syn,
            seg.seq,
            seg.payload_len,
            seg.payload,
            &self.config.reassembly,
            &mut on_record,
        );
        let after = stream.pending_bytes();
        if before != 0 || after != 0 {
            self.buffered = self.buffered.saturating_sub(before) + after;
            if self.buffered > self.config.max_buffered_bytes && after > 0 {
                // The table's budget is spent: the newest hole is given up, not older flows' data.
                stream.give_up(&mut on_record);
                self.buffered -= after.min(self.buffered);
                self.stats.budget_gaps += 1;
            }
        }
        if outcome.duplicate {
            flow.counters.retransmissions += 1;
        }
        if outcome.buffered {
            flow.counters.out_of_order += 1;
        }
        // Only the stream fed here can have completed its first handshake record.
        if let Some(body) = stream.tracker.take_first_handshake() {
            if from_client {
                if let Some(hello) = parse_client_hello(&body) {
                    flow.sni = hello.sni;
                    flow.alpn = hello.alpn;
                }
            } else {
                flow.tls_version = parse_server_hello_version(&body);
            }
            keep_spare_hello(&mut self.spare_hellos, body);
        }
        if let Some(buf) = stream.tracker.unused_buffer() {
            keep_spare_hello(&mut self.spare_hellos, buf);
        }

        if let Some(n) = self.config.early_records
            && !flow.early_sent
            && flow.records.len() >= n
        {
            flow.early_sent = true;
            self.stats.early_events += 1;
            out.push(FlowEvent::Early(flow.snapshot(None)));
        }

        if seg.fin {
            if from_client {
                flow.fin_c = true;
            } else {
                flow.fin_s = true;
            }
        }
        if flow.closed.is_none() {
            if seg.rst {
                flow.closed = Some(EndReason::Rst);
            } else if flow.fin_c && flow.fin_s {
                flow.closed = Some(EndReason::Fin);
            }
        }
        let wait = if flow.closed.is_some() {
            self.config.fin_linger_ns
        } else {
            self.config.idle_timeout_ns
        };
        flow.deadline = flow.last_ns.saturating_add(wait);
        if flow.deadline < flow.queued {
            // Earlier than its entry (the connection closed): a new entry; the old one goes stale.
            flow.queued = flow.deadline;
            let lane = if flow.closed.is_some() {
                Lane::Linger
            } else {
                Lane::Idle
            };
            self.expiry.push(Entry::new(flow.deadline, flow.id, slot), lane);
            self.compact_expiry();
        }
    }

    fn flow(&self, slot: u32) -> Option<&Flow> {
        self.flows.get(slot as usize).filter(|flow| flow.live)
    }

    /// Puts a new flow into a free slot and the index, with its heap entry.
    fn insert(&mut self, mut flow: Flow) -> u32 {
        flow.queued = flow.deadline;
        let (deadline, id, hash) = (flow.deadline, flow.id, flow.hash);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.flows[slot as usize] = flow;
                slot
            }
            None => {
                // Slots never outnumber `max_flows` + 1, far below u32::MAX.
                self.flows.push(flow);
                (self.flows.len() - 1) as u32
            }
        };
        self.expiry.push(Entry::new(deadline, id, slot), Lane::Idle);
        self.index.insert(hash, slot);
        self.compact_expiry();
        slot
    }

    /// Removes the heap's earliest live entry whose deadline is the flow's and returns its slot:
    /// the flow with the smallest (deadline, id), if its deadline is before `before`. Entries
    /// that moved later are pushed again on the way.
    #[inline]
    fn pop_earliest(&mut self, before: Option<u64>) -> Option<u32> {
        while let Some(entry) = self.expiry.peek() {
            let (deadline, id, slot) = (entry.deadline(), entry.id(), entry.slot());
            if before.is_some_and(|before| deadline >= before) {
                return None;
            }
            self.expiry.pop();
            let Some(flow) = self.flows.get_mut(slot as usize).filter(|flow| flow.live) else {
                continue;
            };
            if flow.id != id || flow.queued != deadline {
                continue; // stale: the flow ended, or has a newer entry
            }
            if flow.deadline > deadline {
                flow.queued = flow.deadline;
                let lane = if flow.closed.is_some() {
                    Lane::Linger
                } else {
                    Lane::Idle
                };
                self.expiry.push(Entry::new(flow.deadline, id, slot), lane);
                continue;
            }
            return Some(slot);
        }
        None
    }

    /// Keeps the queue's stale entries bounded: rebuilt from the live flows once they are most of it.
    fn compact_expiry(&mut self) {
        if self.expiry.len() > 2 * self.index.len() + 1024 {
            let live = self.flows.iter_mut().enumerate().filter_map(|(slot, flow)| {
                if !flow.live {
                    return None;
                }
                flow.queued = flow.deadline;
                Some(Entry::new(flow.deadline, flow.id, slot as u32))
            });
            self.expiry.rebuild(live);
        }
    }

    fn new_flow(&mut self, ts_ns: u64, seg: &TcpSegment<'_>, key: WireKey, hash: u64, src_is_lo: bool) -> Flow {
        let (src, dst) = Endpoint::ends_of(seg);
        let (client, server, server_by) = if seg.syn {
            // SYN alone comes from the client, SYN-ACK from the server.
            if seg.ack {
                (dst, src, ServerBy::Syn)
            } else {
                (src, dst, ServerBy::Syn)
            }
        } else {
            let src_listed = self.config.server_ports.contains(&src.port);
            let dst_listed = self.config.server_ports.contains(&dst.port);
            match (src_listed, dst_listed) {
                (true, false) => (dst, src, ServerBy::Port),
                (false, true) => (src, dst, ServerBy::Port),
                _ if src.port < dst.port => (dst, src, ServerBy::Guess),
                _ => (src, dst, ServerBy::Guess),
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let deadline = ts_ns.saturating_add(self.config.idle_timeout_ns);
        Flow {
            id,
            key,
            live: true,
            hash,
            client_is_lo: (client == src) == src_is_lo,
            client,
            server,
            server_by,
            first_ns: ts_ns,
            last_ns: ts_ns,
            counters: Counters::default(),
            syn_seen: false,
            c2s: Stream::default(),
            s2c: Stream::default(),
            fin_c: false,
            fin_s: false,
            sni: None,
            alpn: Vec::new(),
            tls_version: None,
            // A TLS connection has a dozen records or more (20 on average in the benchmark's
            // capture): skip the first doublings.
            records: Vec::with_capacity(32),
            records_capped: false,
            early_sent: false,
            deadline,
            queued: deadline,
            closed: None,
        }
    }

    /// Ends the flow in `slot` (its heap entries go stale) and reports it.
    fn end(&mut self, slot: u32, reason: EndReason, out: &mut Vec<FlowEvent>) {
        let Some(flow) = self.flows.get_mut(slot as usize).filter(|flow| flow.live) else {
            return;
        };
        flow.live = false;
        self.index.remove(flow.hash, slot);
        self.free.push(slot);
        let held = flow.c2s.pending_bytes() + flow.s2c.pending_bytes();
        self.buffered -= held.min(self.buffered);
        // Records are complete by now; a hole still open makes the direction's tail a gap.
        let mut ignore = |_: u8, _: u16| {};
        flow.c2s.finish(&mut ignore);
        flow.s2c.finish(&mut ignore);
        self.stats.flows_finished += 1;
        out.push(FlowEvent::Finished(flow.take_record(reason)));
    }
}
