//! Packets per second on one thread, from a capture file to feature rows, as `vknf classify
//! --pcap` reads it: the file read in blocks, each frame decoded, the flow table, TCP reassembly,
//! TLS framing, and one model input row per finished flow. Run by `bench/flows/run_pcap_bench.sh`
//! on the capture `bench/flows/make_capture.sh` makes; not a test.
//!
//! ```sh
//! cargo run --release -p vknf-flow --example bench_pcap -- tls-bench.pcap --reps 5
//! ```
//!
//! The schema (the vocabulary of record sizes) is learnt from the capture's own flows in a first
//! pass that is not timed, as a model trained on such traffic would carry it. Each repetition
//! then reads the file from the start; the figure is the median. `--read-only` also times reading
//! the frames alone (no decoding), the floor the file source sets; `--in-memory` times the same
//! pipeline on frames already in memory (one contiguous buffer), without the file's reads.

use std::time::Instant;

use vknf_flow::features::RowScratch;
use vknf_flow::{
    FeatureSchema, FlowConfig, FlowEvent, FlowReader, FlowTable, LinkType, PacketSource, PcapFile, decode, read_flows,
};

/// Time this thread spent on a CPU, from the scheduler (`/proc/thread-self/schedstat`, ns): on
/// a machine shared with other work, packets per CPU-second is the per-core rate, where wall time
/// also counts the time other processes held the core.
fn thread_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

struct Run {
    seconds: f64,
    cpu_seconds: f64,
    packets: u64,
    flows: u64,
    checksum: f64,
}

fn pipeline(path: &str, schema: &FeatureSchema) -> Result<Run, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let cpu_start = thread_cpu_seconds();
    let mut reader = FlowReader::new(PcapFile::open(path)?, FlowConfig::default());
    let mut scratch = RowScratch::default();
    let mut row = Vec::with_capacity(schema.len());
    let (mut flows, mut checksum) = (0u64, 0f64);
    for event in reader.by_ref() {
        if let FlowEvent::Finished(flow) = event? {
            schema.row_into(&flow.records, &mut scratch, &mut row);
            checksum += f64::from(row.first().copied().unwrap_or(0.0));
            flows += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Run {
        seconds,
        cpu_seconds: cpu_since(cpu_start, seconds),
        packets: reader.stats().frames,
        flows,
        checksum,
    })
}

fn cpu_since(start: Option<f64>, wall: f64) -> f64 {
    match (start, thread_cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => wall,
    }
}

fn read_only(path: &str) -> Result<Run, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let cpu_start = thread_cpu_seconds();
    let mut source = PcapFile::open(path)?;
    let (mut packets, mut bytes) = (0u64, 0u64);
    while let Some(packet) = source.next_packet()? {
        packets += 1;
        bytes += packet.data.len() as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Run {
        seconds,
        cpu_seconds: cpu_since(cpu_start, seconds),
        packets,
        flows: 0,
        checksum: bytes as f64,
    })
}

/// The capture's frames in one buffer: (timestamp, link, range of `bytes`).
struct Frames {
    bytes: Vec<u8>,
    index: Vec<(u64, LinkType, std::ops::Range<usize>)>,
}

fn load(path: &str) -> Result<Frames, Box<dyn std::error::Error>> {
    let mut source = PcapFile::open(path)?;
    let mut frames = Frames {
        bytes: Vec::new(),
        index: Vec::new(),
    };
    while let Some(packet) = source.next_packet()? {
        if let Some(link) = packet.link {
            let start = frames.bytes.len();
            frames.bytes.extend_from_slice(packet.data);
            frames.index.push((packet.ts_ns, link, start..frames.bytes.len()));
        }
    }
    Ok(frames)
}

fn in_memory(frames: &Frames, schema: &FeatureSchema) -> Run {
    let start = Instant::now();
    let cpu_start = thread_cpu_seconds();
    let mut table = FlowTable::new(FlowConfig::default());
    let mut events = Vec::new();
    let mut scratch = RowScratch::default();
    let mut row = Vec::with_capacity(schema.len());
    let (mut flows, mut checksum) = (0u64, 0f64);
    let mut rows = |events: &mut Vec<FlowEvent>| {
        for event in events.drain(..) {
            if let FlowEvent::Finished(flow) = event {
                schema.row_into(&flow.records, &mut scratch, &mut row);
                checksum += f64::from(row.first().copied().unwrap_or(0.0));
                flows += 1;
            }
        }
    };
    for (ts_ns, link, range) in &frames.index {
        if let Ok(segment) = decode(*link, &frames.bytes[range.clone()]) {
            table.process(*ts_ns, &segment, &mut events);
            if !events.is_empty() {
                rows(&mut events);
            }
        }
    }
    table.finish(&mut events);
    rows(&mut events);
    let seconds = start.elapsed().as_secs_f64();
    Run {
        seconds,
        cpu_seconds: cpu_since(cpu_start, seconds),
        packets: frames.index.len() as u64,
        flows,
        checksum,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut path, mut reps, mut with_read_only, mut with_memory) = (None, 5usize, false, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--reps" => reps = args.next().ok_or("--reps N")?.parse()?,
            "--read-only" => with_read_only = true,
            "--in-memory" => with_memory = true,
            _ => path = Some(arg),
        }
    }
    let path = path.ok_or("usage: bench_pcap CAPTURE [--reps N] [--read-only] [--in-memory]")?;
    let reps = reps.max(1);

    let (flows, stats, error) = read_flows(&path, FlowConfig::default())?;
    if let Some(error) = error {
        return Err(error.into());
    }
    let schema = FeatureSchema::from_training(flows.iter().map(|f| f.records.as_slice()), Vec::new());
    let complete = flows.iter().filter(|f| f.flags.complete()).count();
    let records: usize = flows.iter().map(|f| f.records.len()).sum();
    println!(
        "capture: {} frames, {} TCP segments, {} flows ({complete} complete), {records} TLS records, {} features",
        stats.frames,
        stats.tcp_segments,
        flows.len(),
        schema.len()
    );

    if with_read_only {
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let run = read_only(&path)?;
            wall.push(run.packets as f64 / run.seconds);
            cpu.push(run.packets as f64 / run.cpu_seconds);
        }
        println!(
            "read only: median {:.3} M packets/s per CPU-second, {:.3} M packets/s wall, over {reps} runs",
            median(cpu) / 1e6,
            median(wall) / 1e6
        );
    }
    if with_memory {
        let frames = load(&path)?;
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let run = in_memory(&frames, &schema);
            wall.push(run.packets as f64 / run.seconds);
            cpu.push(run.packets as f64 / run.cpu_seconds);
        }
        println!(
            "frames in memory to features: median {:.3} M packets/s per CPU-second, {:.3} M packets/s wall, over {reps} runs",
            median(cpu) / 1e6,
            median(wall) / 1e6
        );
    }
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let run = pipeline(&path, &schema)?;
        println!(
            "run {rep}: {} packets, {} flows -> rows in {:.3} s wall, {:.3} s on CPU: {:.3} M packets/s per CPU-second, {:.3} M wall (checksum {})",
            run.packets,
            run.flows,
            run.seconds,
            run.cpu_seconds,
            run.packets as f64 / run.cpu_seconds / 1e6,
            run.packets as f64 / run.seconds / 1e6,
            run.checksum
        );
        wall.push(run.packets as f64 / run.seconds);
        cpu.push(run.packets as f64 / run.cpu_seconds);
    }
    println!(
        "pcap to features, one thread: median {:.3} M packets/s per CPU-second, {:.3} M packets/s wall, over {reps} runs",
        median(cpu) / 1e6,
        median(wall) / 1e6
    );
    Ok(())
}
