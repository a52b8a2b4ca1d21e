//! The flow table: segments in, flow events out, in bounded memory.
//!
//! Flows are kept in a hash map and, for expiry, in an ordered index by deadline (last packet
//! plus the idle timeout, or plus a short linger once both FINs are seen). The flow closest to
//! its deadline is the one evicted when the table is full, so eviction costs a log, not a scan.
//! Time is the capture's: a file is replayed by its timestamps, never by the wall clock.

use std::collections::{BTreeMap, HashMap};

use super::{Counters, EndReason, Endpoint, FlowEvent, FlowFlags, FlowKey, FlowRecord, ServerBy};
use crate::decode::TcpSegment;
use crate::reassembly::{ReassemblyLimits, Stream};
use crate::stats::Stats;
use crate::tls::{Stop, parse_client_hello, parse_server_hello_version};

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

struct Flow {
    id: u64,
    client: Endpoint,
    server: Endpoint,
    server_by: ServerBy,
    first_ns: u64,
    last_ns: u64,
    counters: Counters,
    syn_seen: bool,
    /// Client to server, and server to client.
    c2s: Stream,
    s2c: Stream,
    fin_c: bool,
    fin_s: bool,
    sni: Option<String>,
    alpn: Vec<String>,
    tls_version: Option<String>,
    records: Vec<i32>,
    records_capped: bool,
    early_sent: bool,
    deadline: u64,
    /// Set once the connection closed (both FINs, or a RST): the flow lingers, then ends so.
    closed: Option<EndReason>,
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
    flows: HashMap<FlowKey, Flow>,
    /// (deadline, id) -> key: expiry and eviction order.
    deadlines: BTreeMap<(u64, u64), FlowKey>,
    next_id: u64,
    buffered: usize,
    now: u64,
    stats: Stats,
}

impl FlowTable {
    /// An empty table.
    pub fn new(config: FlowConfig) -> Self {
        Self {
            config,
            flows: HashMap::new(),
            deadlines: BTreeMap::new(),
            next_id: 0,
            buffered: 0,
            now: 0,
            stats: Stats::default(),
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
        self.flows.len()
    }

    /// True when no flow is held.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Bytes of out-of-order data held now, all flows together.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Ends the flows whose deadline is before `now_ns` (capture time).
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<FlowEvent>) {
        self.now = self.now.max(now_ns);
        while let Some((&(deadline, _), &key)) = self.deadlines.first_key_value() {
            if deadline >= self.now {
                break;
            }
            let reason = self
                .flows
                .get(&key)
                .and_then(|flow| flow.closed)
                .unwrap_or(EndReason::Idle);
            self.end(&key, reason, out);
        }
    }

    /// Ends every flow (end of input).
    pub fn finish(&mut self, out: &mut Vec<FlowEvent>) {
        let keys: Vec<FlowKey> = self.deadlines.values().copied().collect();
        for key in keys {
            let reason = self
                .flows
                .get(&key)
                .and_then(|flow| flow.closed)
                .unwrap_or(EndReason::EndOfInput);
            self.end(&key, reason, out);
        }
    }

    /// Handles one segment captured at `ts_ns`.
    pub fn process(&mut self, ts_ns: u64, seg: &TcpSegment<'_>, out: &mut Vec<FlowEvent>) {
        self.stats.tcp_segments += 1;
        if seg.is_cut() {
            self.stats.cut_segments += 1;
        }
        self.advance(ts_ns, out);
        let src = Endpoint {
            addr: seg.src,
            port: seg.src_port,
        };
        let dst = Endpoint {
            addr: seg.dst,
            port: seg.dst_port,
        };
        let key = FlowKey::new(src, dst);
        if let Some(flow) = self.flows.get(&key) {
            if let Some(reason) = flow.closed
                && seg.syn
                && !seg.ack
            {
                // The port pair is reused by a new connection.
                self.end(&key, reason, out);
            } else if ts_ns.saturating_sub(flow.first_ns) >= self.config.active_timeout_ns {
                self.end(&key, EndReason::Active, out);
            }
        }
        if !self.flows.contains_key(&key) {
            if self.flows.len() >= self.config.max_flows.max(1) {
                if let Some((_, &victim)) = self.deadlines.first_key_value() {
                    self.stats.flows_evicted += 1;
                    self.end(&victim, EndReason::Evicted, out);
                }
            }
            let flow = self.new_flow(ts_ns, seg, src, dst);
            self.deadlines.insert((flow.deadline, flow.id), key);
            self.flows.insert(key, flow);
            self.stats.flows_created += 1;
        }
        let Some(flow) = self.flows.get_mut(&key) else { return };
        let from_client = src == flow.client;
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
        self.buffered = self.buffered.saturating_sub(before) + after;
        if self.buffered > self.config.max_buffered_bytes && after > 0 {
            // The table's budget is spent: the newest hole is given up, not older flows' data.
            stream.give_up(&mut on_record);
            self.buffered -= after.min(self.buffered);
            self.stats.budget_gaps += 1;
        }
        if outcome.duplicate {
            flow.counters.retransmissions += 1;
        }
        if outcome.buffered {
            flow.counters.out_of_order += 1;
        }
        if let Some(body) = flow.c2s.tracker.take_first_handshake()
            && let Some(hello) = parse_client_hello(&body)
        {
            flow.sni = hello.sni;
            flow.alpn = hello.alpn;
        }
        if let Some(body) = flow.s2c.tracker.take_first_handshake() {
            flow.tls_version = parse_server_hello_version(&body);
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
        let deadline = flow.last_ns.saturating_add(wait);
        if deadline != flow.deadline {
            self.deadlines.remove(&(flow.deadline, flow.id));
            flow.deadline = deadline;
            self.deadlines.insert((deadline, flow.id), key);
        }
    }

    fn new_flow(&mut self, ts_ns: u64, seg: &TcpSegment<'_>, src: Endpoint, dst: Endpoint) -> Flow {
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
        Flow {
            id,
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
            records: Vec::new(),
            records_capped: false,
            early_sent: false,
            deadline: ts_ns.saturating_add(self.config.idle_timeout_ns),
            closed: None,
        }
    }

    fn end(&mut self, key: &FlowKey, reason: EndReason, out: &mut Vec<FlowEvent>) {
        let Some(mut flow) = self.flows.remove(key) else { return };
        self.deadlines.remove(&(flow.deadline, flow.id));
        let held = flow.c2s.pending_bytes() + flow.s2c.pending_bytes();
        self.buffered -= held.min(self.buffered);
        // Records are complete by now; a hole still open makes the direction's tail a gap.
        let mut ignore = |_: u8, _: u16| {};
        flow.c2s.finish(&mut ignore);
        flow.s2c.finish(&mut ignore);
        self.stats.flows_finished += 1;
        out.push(FlowEvent::Finished(flow.snapshot(Some(reason))));
    }
}
