//! Feeds arbitrary bytes to vknf-flow's packet path: as a capture file (pcap/pcapng reader), and
//! as a series of frames of an arbitrary link type through the decoder, the flow table, TCP
//! reassembly and TLS record framing. Nothing may panic, the table holds at most its flow limit
//! and its reassembly budget (plus one segment), and every flow created is finished. The
//! decoder's fast path answers what etherparse's path answers, frame for frame.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use vknf_flow::decode::decode_with_etherparse;
use vknf_flow::{FeatureSchema, FlowConfig, FlowReader, FlowTable, LinkType, PcapFile, decode};

const MAX_FLOWS: usize = 8;
const BUDGET: usize = 16 << 10;

fn config() -> FlowConfig {
    FlowConfig {
        max_flows: MAX_FLOWS,
        max_buffered_bytes: BUDGET,
        early_records: Some(4),
        max_records: 64,
        ..FlowConfig::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        // The whole input as a capture file.
        if let Ok(source) = PcapFile::from_reader("fuzz", Cursor::new(rest.to_vec())) {
            let mut reader = FlowReader::new(source, config());
            let mut errors = 0;
            for event in reader.by_ref() {
                if let Ok(event) = event {
                    let schema = FeatureSchema::from_training([event.record().records.as_slice()], Vec::new());
                    assert_eq!(schema.row(&event.record().records).len(), schema.feature_names.len());
                } else {
                    errors += 1;
                }
            }
            assert!(errors <= 1);
            let stats = reader.stats();
            assert_eq!(stats.flows_created, stats.flows_finished);
        }
        return;
    }
    // Frames: [link selector] then (u16 length, bytes)*, each stamped 1 ms after the last.
    let links = [
        LinkType::Ethernet,
        LinkType::Raw,
        LinkType::Null,
        LinkType::Loop,
        LinkType::LinuxSll,
        LinkType::LinuxSll2,
        LinkType::Ipv4,
        LinkType::Ipv6,
    ];
    let link = links[usize::from(mode >> 1) % links.len()];
    let mut table = FlowTable::new(config());
    let mut events = Vec::new();
    let mut input = rest;
    let mut ts = 0u64;
    while input.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([input[0], input[1]])).min(input.len() - 2);
        let frame = &input[2..2 + len];
        input = &input[2 + len..];
        ts += 1_000_000;
        let decoded = decode(link, frame);
        assert_eq!(decoded, decode_with_etherparse(link, frame));
        if let Ok(segment) = decoded {
            assert!(segment.payload.len() <= frame.len());
            assert!(segment.payload.len() <= segment.payload_len as usize);
            table.process(ts, &segment, &mut events);
        }
        assert!(table.len() <= MAX_FLOWS);
        assert!(table.buffered_bytes() <= BUDGET + 65536);
    }
    table.finish(&mut events);
    assert!(table.is_empty());
    assert_eq!(table.stats().flows_created, table.stats().flows_finished);
});
