//! Every link type on real traffic: the Ethernet frames of real captures (gopacket's
//! test301.pcapng; the loopback capture, IPv4 and IPv6, when it can be made) are re-encapsulated
//! as 802.1Q and QinQ VLAN, Linux SLL and SLL2, BSD NULL and LOOP, raw IP, and LINKTYPE_IPV4/6,
//! written as pcap files, and must give the flows the Ethernet original gives. (tcpdump's own
//! SLL2 capture is compared with tshark in capture_parity.rs.)

mod common;

use std::path::{Path, PathBuf};

use vknf_flow::{FlowConfig, FlowRecord, PacketSource, PcapFile, read_flows};

fn ethernet_frames(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut source = PcapFile::open(path).unwrap();
    let mut out = Vec::new();
    while let Some(p) = source.next_packet().unwrap() {
        out.push((p.ts_ns, p.data.to_vec()));
    }
    out
}

/// A classic pcap file (microsecond timestamps) of `frames` with `linktype`.
fn write_pcap(path: &Path, linktype: u32, frames: &[(u64, Vec<u8>)]) {
    let mut out = Vec::new();
    for v in [
        0xa1b2_c3d4u32.to_le_bytes(),
        [2, 0, 4, 0],
        [0; 4],
        [0; 4],
        262_144u32.to_le_bytes(),
        linktype.to_le_bytes(),
    ] {
        out.extend_from_slice(&v);
    }
    for (ts, frame) in frames {
        out.extend_from_slice(&((ts / 1_000_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((ts % 1_000_000_000 / 1000) as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(frame);
    }
    std::fs::write(path, out).unwrap();
}

fn rewrap(frame: &[u8], link: &str) -> Option<Vec<u8>> {
    let ether_type = [frame[12], frame[13]];
    let ip = &frame[14..];
    let v6 = ether_type == [0x86, 0xdd];
    let mut out = Vec::new();
    match link {
        "vlan" => {
            out.extend_from_slice(&frame[..12]);
            out.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
            out.extend_from_slice(&frame[12..]);
        }
        "qinq" => {
            out.extend_from_slice(&frame[..12]);
            out.extend_from_slice(&[0x88, 0xa8, 0x00, 0x07, 0x81, 0x00, 0x00, 0x2a]);
            out.extend_from_slice(&frame[12..]);
        }
        "sll" => {
            out.extend_from_slice(&[0, 0, 0, 1, 0, 6]);
            out.extend_from_slice(&frame[6..12]);
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&ether_type);
            out.extend_from_slice(ip);
        }
        "sll2" => {
            out.extend_from_slice(&ether_type);
            out.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 1, 0, 6]);
            out.extend_from_slice(&frame[6..12]);
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(ip);
        }
        "null" => {
            out.extend_from_slice(&(if v6 { 10u32 } else { 2 }).to_le_bytes());
            out.extend_from_slice(ip);
        }
        "loop" => {
            out.extend_from_slice(&(if v6 { 30u32 } else { 2 }).to_be_bytes());
            out.extend_from_slice(ip);
        }
        "raw" => out.extend_from_slice(ip),
        "ipv4" if !v6 => out.extend_from_slice(ip),
        "ipv6" if v6 => out.extend_from_slice(ip),
        _ => return None,
    }
    Some(out)
}

/// What must agree between two readings of the same traffic.
type Summary = (String, String, Vec<i32>, u64, u64, Option<String>);

fn summary(flows: &[FlowRecord]) -> Vec<Summary> {
    let mut out: Vec<_> = flows
        .iter()
        .map(|f| {
            (
                f.client.to_string(),
                f.server.to_string(),
                f.records.clone(),
                f.counters.packets(),
                f.counters.bytes(),
                f.sni.clone(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_link_type_gives_the_ethernet_flows() {
    let mut inputs: Vec<PathBuf> = common::gopacket_files().unwrap_or_default();
    if let Some(capture) = common::capture() {
        inputs.push(capture.dir.join("lo.pcap"));
    }
    let dir = tempfile::tempdir().unwrap();
    for input in inputs {
        let frames = ethernet_frames(&input);
        let (expected, _, _) = read_flows(&input, FlowConfig::default()).unwrap();
        assert!(expected.iter().any(|f| !f.records.is_empty()));
        for (link, linktype) in [
            ("vlan", 1),
            ("qinq", 1),
            ("sll", 113),
            ("sll2", 276),
            ("null", 0),
            ("loop", 108),
            ("raw", 101),
            ("ipv4", 228),
            ("ipv6", 229),
        ] {
            let rewrapped: Vec<(u64, Vec<u8>)> = frames
                .iter()
                .filter_map(|(ts, f)| rewrap(f, link).map(|r| (*ts, r)))
                .collect();
            let path = dir.path().join(format!("{link}.pcap"));
            write_pcap(&path, linktype, &rewrapped);
            let (flows, stats, error) = read_flows(&path, FlowConfig::default()).unwrap();
            assert!(error.is_none());
            assert_eq!(
                stats.tcp_segments,
                rewrapped.len() as u64,
                "{link}: every frame decoded"
            );
            // LINKTYPE_IPV4/6 files hold only that family: compare with the same subset.
            let subset: Vec<FlowRecord> = expected
                .iter()
                .filter(|f| match link {
                    "ipv4" => f.server.addr.is_ipv4(),
                    "ipv6" => f.server.addr.is_ipv6(),
                    _ => true,
                })
                .cloned()
                .collect();
            // Timestamps lose their nanoseconds in a microsecond pcap; everything else is equal.
            assert_eq!(summary(&flows), summary(&subset), "{}: {link}", input.display());
        }
    }
}
