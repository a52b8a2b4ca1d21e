//! Reassembly and flow-table behaviour on real traffic made hostile: the segments of real TLS
//! connections (gopacket's test301.pcapng, and the loopback capture when it can be made) are
//! split with overlaps, reordered, duplicated or dropped, and the record sequences must stay
//! those of the untouched capture (which tshark agrees with, see capture_parity.rs), or be
//! flagged and stop, never be misaligned.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use vknf_flow::{
    EndReason, FlowConfig, FlowEvent, FlowKey, FlowRecord, FlowTable, PacketSource, PcapFile, Stats, TcpSegment, decode,
};

#[derive(Clone, Debug)]
struct Seg {
    ts: u64,
    src: IpAddr,
    dst: IpAddr,
    sp: u16,
    dp: u16,
    seq: u32,
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
    ip_len: u32,
    payload_len: u32,
    payload: Vec<u8>,
}

impl Seg {
    fn view(&self) -> TcpSegment<'_> {
        TcpSegment {
            src: self.src,
            dst: self.dst,
            src_port: self.sp,
            dst_port: self.dp,
            seq: self.seq,
            syn: self.syn,
            ack: self.ack,
            fin: self.fin,
            rst: self.rst,
            ip_len: self.ip_len,
            payload_len: self.payload_len,
            payload: &self.payload,
        }
    }
    fn stream(&self) -> (IpAddr, u16, IpAddr, u16) {
        (self.src, self.sp, self.dst, self.dp)
    }
    fn movable(&self) -> bool {
        !(self.payload.is_empty() || self.syn || self.fin || self.rst)
    }
}

fn segments(path: &Path) -> Vec<Seg> {
    let mut source = PcapFile::open(path).unwrap();
    let mut out = Vec::new();
    while let Some(packet) = source.next_packet().unwrap() {
        if let Ok(s) = decode(packet.link.unwrap(), packet.data) {
            out.push(Seg {
                ts: packet.ts_ns,
                src: s.src,
                dst: s.dst,
                sp: s.src_port,
                dp: s.dst_port,
                seq: s.seq,
                syn: s.syn,
                ack: s.ack,
                fin: s.fin,
                rst: s.rst,
                ip_len: s.ip_len,
                payload_len: s.payload_len,
                payload: s.payload.to_vec(),
            });
        }
    }
    out
}

fn run(segs: &[Seg], config: FlowConfig) -> (Vec<FlowRecord>, Vec<FlowRecord>, Stats) {
    let mut table = FlowTable::new(config);
    let mut events = Vec::new();
    for s in segs {
        table.process(s.ts, &s.view(), &mut events);
        assert!(table.buffered_bytes() <= table.config().max_buffered_bytes + 65536);
    }
    table.finish(&mut events);
    let (mut early, mut finished) = (Vec::new(), Vec::new());
    for e in events {
        match e {
            FlowEvent::Early(r) => early.push(r),
            FlowEvent::Finished(r) => finished.push(r),
        }
    }
    finished.sort_by_key(|f| FlowKey::new(f.client, f.server));
    (early, finished, table.stats().clone())
}

fn direction(flow: &FlowRecord, sign: i32) -> Vec<i32> {
    flow.records
        .iter()
        .copied()
        .filter(|r| r.signum() == sign || (sign == 1 && *r == 0))
        .collect()
}

fn inputs() -> Vec<PathBuf> {
    let mut files = common::gopacket_files().unwrap_or_default();
    files.truncate(2);
    files.retain(|f| f.ends_with("test301.pcapng"));
    if let Some(capture) = common::capture() {
        files.push(capture.dir.join("lo.pcap"));
    }
    files
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: a reproducible stream from the proptest seed, no extra dependency.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Splits data segments into two overlapping pieces, reorders each stream's data segments
/// within windows of `window`, and inserts retransmitted copies.
fn mangle(segs: &[Seg], seed: u64, window: usize) -> (Vec<Seg>, usize) {
    let mut rng = Rng(seed | 1);
    let mut split = Vec::with_capacity(segs.len() * 2);
    for s in segs {
        if s.movable() && s.payload.len() >= 8 && rng.below(3) == 0 && s.payload_len as usize == s.payload.len() {
            let cut = 1 + rng.below(s.payload.len() as u64 - 2) as usize;
            let overlap = rng.below(cut as u64 + 1) as usize; // the second piece re-sends some bytes
            let mut first = s.clone();
            first.payload.truncate(cut);
            first.payload_len = cut as u32;
            let mut second = s.clone();
            let start = cut - overlap;
            second.payload = s.payload[start..].to_vec();
            second.payload_len = second.payload.len() as u32;
            second.seq = s.seq.wrapping_add(start as u32);
            split.push(first);
            split.push(second);
        } else {
            split.push(s.clone());
        }
    }
    // Reorder: within each stream, permute the data segments among their own slots.
    let mut streams: std::collections::HashMap<_, Vec<usize>> = std::collections::HashMap::new();
    for (i, s) in split.iter().enumerate() {
        if s.movable() {
            streams.entry(s.stream()).or_default().push(i);
        }
    }
    let mut out = split.clone();
    for slots in streams.values() {
        for chunk in slots.chunks(window.max(1)) {
            let mut order: Vec<usize> = chunk.to_vec();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            for (&slot, &from) in chunk.iter().zip(&order) {
                let ts = out[slot].ts;
                out[slot] = split[from].clone();
                out[slot].ts = ts;
            }
        }
    }
    // Retransmissions: copies a few packets later.
    let mut dups = 0;
    let mut i = 0;
    while i < out.len() {
        if out[i].movable() && rng.below(5) == 0 {
            let at = (i + 1 + rng.below(4) as usize).min(out.len());
            let mut copy = out[i].clone();
            copy.ts = out[at - 1].ts;
            out.insert(at, copy);
            dups += 1;
            i += 1;
        }
        i += 1;
    }
    (out, dups)
}

fn check_same_records(baseline: &[FlowRecord], mangled: &[FlowRecord]) {
    assert_eq!(baseline.len(), mangled.len());
    for (a, b) in baseline.iter().zip(mangled) {
        assert_eq!(FlowKey::new(a.client, a.server), FlowKey::new(b.client, b.server));
        for sign in [1, -1] {
            assert_eq!(direction(a, sign), direction(b, sign), "{} -> {}", a.client, a.server);
        }
        assert_eq!(a.flags, b.flags);
        assert_eq!(
            (a.sni.as_ref(), &a.alpn, a.tls_version.as_ref()),
            (b.sni.as_ref(), &b.alpn, b.tls_version.as_ref())
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn overlaps_reordering_and_retransmissions_keep_records(seed in any::<u64>(), window in 2usize..5) {
        for file in inputs() {
            let segs = segments(&file);
            let (_, baseline, _) = run(&segs, FlowConfig::default());
            let (mangled_segs, dups) = mangle(&segs, seed, window);
            let (_, mangled, _) = run(&mangled_segs, FlowConfig::default());
            check_same_records(&baseline, &mangled);
            let retransmissions: u64 = mangled.iter().map(|f| f.counters.retransmissions).sum();
            prop_assert!(dups == 0 || retransmissions > 0);
        }
    }

    #[test]
    fn a_missing_segment_is_a_flagged_gap_never_a_wrong_length(seed in any::<u64>()) {
        for file in inputs() {
            let segs = segments(&file);
            let (_, baseline, _) = run(&segs, FlowConfig::default());
            // Drop one server data segment of the largest flow (not its last one).
            let biggest = baseline.iter().max_by_key(|f| f.records.len()).unwrap();
            // Only a segment whose bytes no other segment carries (a retransmission would fill it).
            let from_server = |s: &Seg| s.movable() && (s.src, s.sp, s.dst, s.dp) == (biggest.server.addr, biggest.server.port, biggest.client.addr, biggest.client.port);
            let overlaps = |a: &Seg, b: &Seg| {
                let start = i64::from(b.seq.wrapping_sub(a.seq) as i32);
                start < i64::from(a.payload_len) && start + i64::from(b.payload_len) > 0
            };
            let server_data: Vec<usize> = segs.iter().enumerate()
                .filter(|&(i, s)| from_server(s)
                    && !segs.iter().enumerate().any(|(j, o)| j != i && from_server(o) && overlaps(s, o)))
                .map(|(i, _)| i).collect();
            prop_assume!(server_data.len() >= 3);
            let victim = server_data[Rng(seed | 1).below(server_data.len() as u64 - 1) as usize];
            let mut holed = segs.clone();
            holed.remove(victim);
            let (_, flows, _) = run(&holed, FlowConfig::default());
            let key = FlowKey::new(biggest.client, biggest.server);
            let flow = flows.iter().find(|f| FlowKey::new(f.client, f.server) == key).unwrap();
            prop_assert!(flow.flags.gap, "{} victim {:?} flow {:?}", file.display(), (holed.len(), segs[victim].seq, segs[victim].payload_len, segs[victim].ts), flow);
            let (whole, part) = (direction(biggest, 1), direction(flow, 1));
            prop_assert!(part.len() < whole.len() && whole.starts_with(&part));
            prop_assert_eq!(direction(biggest, -1), direction(flow, -1));
        }
    }

    #[test]
    fn a_small_memory_budget_gives_up_holes_with_flags(seed in any::<u64>()) {
        for file in inputs() {
            let segs = segments(&file);
            let (_, baseline, _) = run(&segs, FlowConfig::default());
            let (mangled_segs, _) = mangle(&segs, seed, 6);
            let config = FlowConfig { max_buffered_bytes: 2048, ..FlowConfig::default() };
            let (_, flows, stats) = run(&mangled_segs, config);
            for (a, b) in baseline.iter().zip(&flows) {
                for sign in [1, -1] {
                    let (whole, part) = (direction(a, sign), direction(b, sign));
                    prop_assert!(whole.starts_with(&part));
                    prop_assert!(part == whole || b.flags.gap);
                }
            }
            prop_assert!(stats.budget_gaps == 0 || flows.iter().any(|f| f.flags.gap));
        }
    }
}

#[test]
fn early_events_are_prefixes_of_the_final_sequence() {
    for file in inputs() {
        let segs = segments(&file);
        let config = FlowConfig {
            early_records: Some(10),
            ..FlowConfig::default()
        };
        let (early, finished, stats) = run(&segs, config);
        assert!(!early.is_empty());
        assert_eq!(stats.early_events as usize, early.len());
        for e in &early {
            assert!(e.end.is_none() && e.records.len() >= 10);
            let f = finished.iter().find(|f| f.id == e.id).unwrap();
            assert!(f.records.starts_with(&e.records));
        }
        let eligible = finished.iter().filter(|f| f.records.len() >= 10).count();
        assert_eq!(eligible, early.len());
    }
}

#[test]
fn a_full_table_evicts_and_counts() {
    let Some(capture) = common::capture() else { return };
    let segs = segments(&capture.dir.join("lo.pcap"));
    let (_, all, _) = run(&segs, FlowConfig::default());
    let config = FlowConfig {
        max_flows: 1,
        ..FlowConfig::default()
    };
    let (_, flows, stats) = run(&segs, config);
    assert!(stats.flows_evicted > 0);
    assert_eq!(stats.flows_created, stats.flows_finished);
    assert_eq!(
        flows.iter().filter(|f| f.end == Some(EndReason::Evicted)).count() as u64,
        stats.flows_evicted
    );
    // Lingering closed flows are what gets evicted here: their records are already whole.
    let total = |fs: &[FlowRecord]| fs.iter().map(|f| f.records.len()).sum::<usize>();
    assert!(total(&flows) <= total(&all));
}

#[test]
fn idle_timeout_ends_flows_and_later_packets_start_flagged_ones() {
    for file in inputs() {
        let segs = segments(&file);
        let config = FlowConfig {
            idle_timeout_ns: 1_000,
            ..FlowConfig::default()
        };
        let (_, flows, stats) = run(&segs, config);
        assert_eq!(stats.flows_created, stats.flows_finished);
        if flows.iter().any(|f| f.end == Some(EndReason::Idle)) {
            assert!(flows.iter().any(|f| f.flags.mid_stream));
        }
        let packets: u64 = flows.iter().map(|f| f.counters.packets()).sum();
        assert_eq!(packets, segs.len() as u64);
    }
}
