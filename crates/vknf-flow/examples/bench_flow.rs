//! Packets per second on one core, from capture bytes in memory to feature rows: decode, flow
//! table, reassembly, TLS framing, and one feature row per finished flow.
//!
//! Make a TLS-heavy capture first (root; tcpdump, curl, openssl, python3):
//!
//! ```sh
//! crates/vknf-flow/tests/scripts/capture_tls.sh /tmp/tls 40
//! cargo run --release -p vknf-flow --example bench_flow -- /tmp/tls/lo.pcap --repeat 200
//! ```
//!
//! The capture is replayed `--repeat` times, each pass shifted in time past the idle timeout so
//! that every pass makes new flows.

use std::time::Instant;

use vknf_flow::{FeatureSchema, FlowConfig, FlowEvent, FlowTable, PacketSource, PcapFile, decode, read_flows};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let mut repeat = 100u64;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--repeat" => repeat = args.next().ok_or("--repeat N")?.parse()?,
            _ => path = Some(arg),
        }
    }
    let path = path.ok_or("usage: bench_flow CAPTURE [--repeat N]")?;

    // The vocabulary of the capture's own flows, as a trained schema would have it.
    let (flows, _, _) = read_flows(&path, FlowConfig::default())?;
    let schema = FeatureSchema::from_training(flows.iter().map(|f| f.records.as_slice()), Vec::new());

    let mut source = PcapFile::open(&path)?;
    let mut frames = Vec::new();
    while let Some(packet) = source.next_packet()? {
        if let Some(link) = packet.link {
            frames.push((packet.ts_ns, link, packet.data.to_vec()));
        }
    }
    let first = frames.first().map_or(0, |f| f.0);
    let span = frames.last().map_or(0, |f| f.0) - first;
    let config = FlowConfig::default();
    let shift = span + config.idle_timeout_ns + 10_000_000_000;

    let mut table = FlowTable::new(config);
    let mut events = Vec::new();
    let (mut rows, mut checksum) = (0u64, 0f64);
    let start = Instant::now();
    for pass in 0..repeat {
        for (ts, link, frame) in &frames {
            if let Ok(segment) = decode(*link, frame) {
                table.process(ts + pass * shift, &segment, &mut events);
            }
            for event in events.drain(..) {
                if let FlowEvent::Finished(flow) = event {
                    let row = schema.row(&flow.records);
                    checksum += f64::from(row.first().copied().unwrap_or(0.0));
                    rows += 1;
                }
            }
        }
    }
    table.finish(&mut events);
    rows += events.len() as u64;
    let seconds = start.elapsed().as_secs_f64();
    let packets = frames.len() as u64 * repeat;
    println!(
        "{packets} packets, {rows} flows -> feature rows ({} features) in {seconds:.3} s: {:.0} packets/s, {:.0} flows/s on one core (checksum {checksum})",
        schema.len(),
        packets as f64 / seconds,
        rows as f64 / seconds,
    );
    Ok(())
}
