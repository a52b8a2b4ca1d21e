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
//!
//! `PcapFile::open` reads a classic pcap file a block ahead on a second thread, so the file
//! pipeline's CPU time is the process's, both threads (`/proc/self/stat`, which keeps the time of
//! threads that have ended, in ticks of 10 ms); the parsing thread's own time is shown beside it.
//! `--direct` reads the file on the parsing thread instead (`PcapFile::from_reader`), as before.
//!
//! `--shards N` also times the pipeline spread over N worker threads the way
//! `vknf_flow::source::live::ShardedCapture` spreads live capture: one thread reads and decodes
//! each frame to find its flow's shard (`FlowKey::shard_hash`) and hands frames to the shard's
//! thread in batches of 256; each shard has its own flow table and computes its flows' rows.

use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::time::Instant;

use vknf_flow::features::RowScratch;
use vknf_flow::{
    Endpoint, FeatureSchema, FlowConfig, FlowEvent, FlowKey, FlowReader, FlowTable, LinkType, PacketSource, PcapFile,
    decode, read_flows,
};

/// Time this thread spent on a CPU, from the scheduler (`/proc/thread-self/schedstat`, ns): on
/// a machine shared with other work, packets per CPU-second is the per-core rate, where wall time
/// also counts the time other processes held the core.
fn thread_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

/// CPU time of this process, all threads, those that ended included (`/proc/self/stat` utime +
/// stime, in clock ticks of 1/100 s).
fn process_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

struct Run {
    seconds: f64,
    /// The process's CPU time (all threads).
    cpu_seconds: f64,
    /// The calling thread's.
    thread_cpu_seconds: f64,
    packets: u64,
    flows: u64,
    checksum: f64,
}

/// Feature rows of finished flows, as the classifier's feed makes them: their count and a checksum (so
/// that the work is not optimised away, and runs can be compared).
struct RowSink<'a> {
    schema: &'a FeatureSchema,
    scratch: RowScratch,
    row: Vec<f32>,
    flows: u64,
    checksum: f64,
}

impl<'a> RowSink<'a> {
    fn new(schema: &'a FeatureSchema) -> Self {
        RowSink {
            schema,
            scratch: RowScratch::default(),
            row: Vec::with_capacity(schema.len()),
            flows: 0,
            checksum: 0.0,
        }
    }

    fn event(&mut self, event: FlowEvent) {
        if let FlowEvent::Finished(flow) = event {
            self.schema.row_into(&flow.records, &mut self.scratch, &mut self.row);
            self.checksum += f64::from(self.row.first().copied().unwrap_or(0.0));
            self.flows += 1;
        }
    }
}

/// A flow table fed frames, its events turned into rows.
struct FrameSink<'a> {
    table: FlowTable,
    events: Vec<FlowEvent>,
    rows: RowSink<'a>,
}

impl<'a> FrameSink<'a> {
    fn new(schema: &'a FeatureSchema) -> Self {
        FrameSink {
            table: FlowTable::new(FlowConfig::default()),
            events: Vec::new(),
            rows: RowSink::new(schema),
        }
    }

    fn frame(&mut self, ts_ns: u64, link: LinkType, bytes: &[u8]) {
        if let Ok(segment) = decode(link, bytes) {
            self.table.process(ts_ns, &segment, &mut self.events);
            for event in self.events.drain(..) {
                self.rows.event(event);
            }
        }
    }

    /// Ends every flow still open; (flows, checksum).
    fn finish(mut self) -> (u64, f64) {
        self.table.finish(&mut self.events);
        for event in self.events.drain(..) {
            self.rows.event(event);
        }
        (self.rows.flows, self.rows.checksum)
    }
}

fn pipeline(path: &str, schema: &FeatureSchema, direct: bool) -> Result<Run, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let cpu_start = thread_cpu_seconds();
    let process_start = process_cpu_seconds();
    let source = if direct {
        PcapFile::from_reader(path, std::fs::File::open(path)?)?
    } else {
        PcapFile::open(path)?
    };
    let mut reader = FlowReader::new(source, FlowConfig::default());
    let mut rows = RowSink::new(schema);
    for event in reader.by_ref() {
        rows.event(event?);
    }
    let RowSink { flows, checksum, .. } = rows;
    let seconds = start.elapsed().as_secs_f64();
    let thread_cpu_seconds = cpu_since(cpu_start, seconds);
    let cpu_seconds = match (process_start, process_cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => thread_cpu_seconds,
    };
    Ok(Run {
        seconds,
        cpu_seconds,
        thread_cpu_seconds,
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
    // On this thread: the cost of the reads themselves.
    let mut source = PcapFile::from_reader(path, std::fs::File::open(path)?)?;
    let (mut packets, mut bytes) = (0u64, 0u64);
    while let Some(packet) = source.next_packet()? {
        packets += 1;
        bytes += packet.data.len() as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = cpu_since(cpu_start, seconds);
    Ok(Run {
        seconds,
        cpu_seconds,
        thread_cpu_seconds: cpu_seconds,
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
    let mut sink = FrameSink::new(schema);
    for (ts_ns, link, range) in &frames.index {
        sink.frame(*ts_ns, *link, &frames.bytes[range.clone()]);
    }
    let (flows, checksum) = sink.finish();
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = cpu_since(cpu_start, seconds);
    Run {
        seconds,
        cpu_seconds,
        thread_cpu_seconds: cpu_seconds,
        packets: frames.index.len() as u64,
        flows,
        checksum,
    }
}

/// Frames of one shard: (time, link, range of `bytes`).
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    frames: Vec<(u64, LinkType, std::ops::Range<usize>)>,
}

/// Frames a batch carries to its shard.
const BATCH: usize = 256;

/// One shard: its own table, its flows' rows; batches go back to the dispatcher for reuse.
fn shard_worker(batches: Receiver<Batch>, spare: Sender<Batch>, schema: &FeatureSchema) -> (u64, f64) {
    let mut sink = FrameSink::new(schema);
    for mut batch in batches {
        for (ts_ns, link, range) in &batch.frames {
            sink.frame(*ts_ns, *link, &batch.bytes[range.clone()]);
        }
        batch.bytes.clear();
        batch.frames.clear();
        let _ = spare.send(batch);
    }
    sink.finish()
}

/// The pipeline over `shards` worker threads, fed by this thread (see the file's comment).
fn sharded(path: &str, schema: &FeatureSchema, shards: usize) -> Result<Run, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let process_start = process_cpu_seconds();
    let (mut packets, mut flows, mut checksum) = (0u64, 0u64, 0f64);
    std::thread::scope(|scope| -> Result<(), Box<dyn std::error::Error>> {
        let (spare_tx, spare) = channel::<Batch>();
        let mut senders: Vec<SyncSender<Batch>> = Vec::new();
        let mut workers = Vec::new();
        for _ in 0..shards {
            let (tx, rx) = sync_channel::<Batch>(8);
            senders.push(tx);
            let spare_tx = spare_tx.clone();
            workers.push(scope.spawn(move || shard_worker(rx, spare_tx, schema)));
        }
        let mut filling: Vec<Batch> = (0..shards).map(|_| Batch::default()).collect();
        let mut source = PcapFile::open(path)?;
        while let Some(packet) = source.next_packet()? {
            packets += 1;
            let Some(link) = packet.link else { continue };
            // A flow's shard is the same both ways; frames that are not TCP are dropped by shard 0.
            let shard = match decode(link, packet.data) {
                Ok(seg) => {
                    let (src, dst) = Endpoint::ends_of(&seg);
                    (FlowKey::new(src, dst).shard_hash() % shards as u64) as usize
                }
                Err(_) => 0,
            };
            let batch = &mut filling[shard];
            let at = batch.bytes.len();
            batch.bytes.extend_from_slice(packet.data);
            batch.frames.push((packet.ts_ns, link, at..batch.bytes.len()));
            if batch.frames.len() == BATCH {
                let next = spare.try_recv().unwrap_or_default();
                senders[shard]
                    .send(std::mem::replace(batch, next))
                    .map_err(|_| "a shard ended early")?;
            }
        }
        for (shard, batch) in filling.into_iter().enumerate() {
            senders[shard].send(batch).map_err(|_| "a shard ended early")?;
        }
        drop(senders);
        for worker in workers {
            let (f, c) = worker.join().map_err(|_| "a shard panicked")?;
            flows += f;
            checksum += c;
        }
        Ok(())
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = match (process_start, process_cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => seconds,
    };
    Ok(Run {
        seconds,
        cpu_seconds,
        thread_cpu_seconds: cpu_seconds,
        packets,
        flows,
        checksum,
    })
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
    let mut direct = false;
    let mut shards: Vec<usize> = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--reps" => reps = args.next().ok_or("--reps N")?.parse()?,
            "--read-only" => with_read_only = true,
            "--in-memory" => with_memory = true,
            "--direct" => direct = true,
            "--shards" => {
                let list = args.next().ok_or("--shards N[,N...]")?;
                for n in list.split(',') {
                    shards.push(n.parse::<usize>()?.max(1));
                }
            }
            _ => path = Some(arg),
        }
    }
    let path =
        path.ok_or("usage: bench_pcap CAPTURE [--reps N] [--read-only] [--in-memory] [--direct] [--shards N[,N...]]")?;
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
    let (mut wall, mut cpu, mut thread_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let run = pipeline(&path, &schema, direct)?;
        println!(
            "run {rep}: {} packets, {} flows -> rows in {:.3} s wall, {:.3} s on CPU ({:.3} s the parsing thread): {:.3} M packets/s per CPU-second, {:.3} M wall (checksum {})",
            run.packets,
            run.flows,
            run.seconds,
            run.cpu_seconds,
            run.thread_cpu_seconds,
            run.packets as f64 / run.cpu_seconds / 1e6,
            run.packets as f64 / run.seconds / 1e6,
            run.checksum
        );
        wall.push(run.packets as f64 / run.seconds);
        cpu.push(run.packets as f64 / run.cpu_seconds);
        thread_cpu.push(run.packets as f64 / run.thread_cpu_seconds);
    }
    let how = if direct {
        "one thread"
    } else {
        "reads a block ahead on a second thread"
    };
    println!(
        "pcap to features ({how}): median {:.3} M packets/s per CPU-second (all threads; {:.3} M per CPU-second of the parsing thread), {:.3} M packets/s wall, over {reps} runs",
        median(cpu) / 1e6,
        median(thread_cpu) / 1e6,
        median(wall) / 1e6
    );
    for &n in &shards {
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            let run = sharded(&path, &schema, n)?;
            println!(
                "sharded {n} run {rep}: {} packets, {} flows -> rows in {:.3} s wall, {:.3} s on CPU (checksum {})",
                run.packets, run.flows, run.seconds, run.cpu_seconds, run.checksum
            );
            wall.push(run.packets as f64 / run.seconds);
            cpu.push(run.packets as f64 / run.cpu_seconds);
        }
        println!(
            "pcap to features, sharded over {n} worker threads (+ reader and dispatcher): median {:.3} M packets/s per CPU-second (all threads), {:.3} M packets/s wall, over {reps} runs",
            median(cpu) / 1e6,
            median(wall) / 1e6
        );
    }
    Ok(())
}
