//! Runtime benchmark: dispatch round trip (empty kernel, submit to host-visible completion) and
//! upload / readback bandwidth of a 7 MB buffer (the paper workload's input size), and with `--links`
//! every way of moving such a buffer into device memory at once: the DMA split over several queues, host
//! threads writing device memory through the BAR or pinned memory, and both together (how close each
//! gets to the bus).

use std::time::Duration;

use clap::Parser;
use serde_json::json;
use vknf_bench::{Stats, open_device, time_runs};
use vknf_vulkan::{Kernel, MemoryKind, QueueKind, Specialization};

#[derive(Parser)]
struct Args {
    /// Device selector (index, UUID, name part).
    #[arg(long)]
    device: Option<String>,
    /// Round trips to measure.
    #[arg(long, default_value_t = 2000)]
    round_trips: usize,
    /// Transfers to measure per direction.
    #[arg(long, default_value_t = 50)]
    transfers: usize,
    /// Bytes per transfer (default: 5788 rows x 300 float32 features).
    #[arg(long, default_value_t = 5788 * 300 * 4)]
    bytes: u64,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Also time the ways into device memory at once (queues, threads writing the BAR or pinned memory,
    /// both).
    #[arg(long)]
    links: bool,
    /// Host threads to write the BAR and pinned memory with in `--links`.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8, 16])]
    threads: Vec<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (_instance, device) = open_device(args.device.as_deref())?;
    let deadline = Duration::from_secs(10);

    let kernel = Kernel::new(&device, vknf_kernels::EMPTY, "main")?;
    let pipeline = device.create_pipeline(&kernel, &Specialization::new())?;
    let group = pipeline.bind(&[])?;
    let mut stream = device.stream(QueueKind::Compute)?;
    let mut list = stream.record(|rec| rec.dispatch_bytes(&group, &[], [1, 1, 1]))?;
    let round_trip = Stats::of(time_runs(100, args.round_trips, || {
        Ok(stream.run(&mut list, deadline)?)
    })?);

    let pinned = device.create_buffer("pinned", args.bytes, MemoryKind::Readback)?;
    pinned.write(0, &vec![1u8; args.bytes as usize])?;
    let on_device = device.create_buffer("device", args.bytes, MemoryKind::DeviceLocal)?;
    let mut results = serde_json::Map::new();
    for kind in [QueueKind::Transfer, QueueKind::Compute] {
        let mut stream = device.stream(kind)?;
        let mut upload = stream.record(|rec| rec.copy(&pinned, 0, &on_device, 0, args.bytes))?;
        let mut readback = stream.record(|rec| rec.copy(&on_device, 0, &pinned, 0, args.bytes))?;
        let up = Stats::of(time_runs(5, args.transfers, || Ok(stream.run(&mut upload, deadline)?))?);
        let down = Stats::of(time_runs(5, args.transfers, || {
            Ok(stream.run(&mut readback, deadline)?)
        })?);
        let rate = |s: &Stats| args.bytes as f64 / (s.median_us * 1e-6) / 1e9;
        let name = format!("{kind:?}").to_lowercase();
        println!(
            "{name} queue: upload {:.1} us ({:.1} GB/s), readback {:.1} us ({:.1} GB/s)",
            up.median_us,
            rate(&up),
            down.median_us,
            rate(&down)
        );
        results.insert(
            name,
            json!({"upload": up, "upload_gbps": rate(&up), "readback": down, "readback_gbps": rate(&down)}),
        );
    }
    // Host writes into BAR (device-local, host-visible) memory, when the driver offers it.
    let upload_buffer = device.create_buffer("upload", args.bytes, MemoryKind::Upload)?;
    let host_data = vec![1u8; args.bytes as usize];
    let host_write = Stats::of(time_runs(
        5,
        args.transfers,
        || Ok(upload_buffer.write(0, &host_data)?),
    )?);
    println!(
        "dispatch round trip: median {:.1} us, p99 {:.1} us; host write into upload memory (device-local: {}): {:.1} us",
        round_trip.median_us,
        round_trip.p99_us,
        upload_buffer.is_device_local(),
        host_write.median_us
    );
    let links = if args.links {
        Some(links(&device, &pinned, &upload_buffer, &host_data, &args)?)
    } else {
        None
    };
    let report = json!({
        "device": device.info().name,
        "driver": device.info().driver_info,
        "dedicated_transfer_queue": device.has_dedicated_transfer(),
        "bytes": args.bytes,
        "round_trip": round_trip,
        "queues": results,
        "host_write_upload_memory": host_write,
        "upload_memory_device_local": upload_buffer.is_device_local(),
        "links": links,
    });
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// Times the ways into device memory for `args.bytes`, each alone and together: the DMA from pinned memory
/// split evenly over 1..=N transfer queues (and over a transfer and a compute queue), `threads` host
/// threads writing the BAR with streaming stores, and a share written through the BAR while the DMA
/// carries the rest. Medians in us and GB/s of the whole buffer.
fn links(
    device: &vknf_vulkan::Device,
    pinned: &vknf_vulkan::Buffer,
    bar: &vknf_vulkan::Buffer,
    host_data: &[u8],
    args: &Args,
) -> anyhow::Result<serde_json::Value> {
    use rayon::prelude::*;
    let deadline = Duration::from_secs(10);
    let bytes = args.bytes;
    let gbps = |us: f64| bytes as f64 / (us * 1e-6) / 1e9;
    let on_device = device.create_buffer("device (links)", bytes, MemoryKind::DeviceLocal)?;
    let mut out = serde_json::Map::new();
    // The DMA of [from, to) of the buffer split evenly over `kinds`' queues, one stream each.
    let dma = |kinds: &[QueueKind],
               from: u64,
               to: u64|
     -> anyhow::Result<Vec<(vknf_vulkan::Stream, vknf_vulkan::CommandList)>> {
        let n = kinds.len() as u64;
        let piece = (to - from).div_ceil(n).next_multiple_of(256);
        let mut lanes = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            let start = (from + i as u64 * piece).min(to);
            let end = (start + piece).min(to);
            if end <= start {
                // Rounding the pieces up left nothing for this queue (a copy may not be empty).
                continue;
            }
            let stream = device.stream(*kind)?;
            let list = stream.record(|rec| rec.copy(pinned, start, &on_device, start, end - start))?;
            lanes.push((stream, list));
        }
        Ok(lanes)
    };
    // Submits every lane's copy, runs `meanwhile` on the host, then waits for the copies.
    let run_dma = |lanes: &mut Vec<(vknf_vulkan::Stream, vknf_vulkan::CommandList)>,
                   meanwhile: &dyn Fn() -> anyhow::Result<()>|
     -> anyhow::Result<()> {
        let tickets = lanes
            .iter_mut()
            .map(|(stream, list)| stream.submit(list))
            .collect::<Result<Vec<_>, _>>()?;
        meanwhile()?;
        for ticket in tickets {
            ticket.wait(deadline)?;
        }
        Ok(())
    };
    let mut report = |name: String, stats: Stats| {
        println!(
            "links: {name}: {:.1} us ({:.1} GB/s)",
            stats.median_us,
            gbps(stats.median_us)
        );
        out.insert(name, json!({"stats": stats, "gbps": gbps(stats.median_us)}));
    };
    let transfer_queues = if device.has_dedicated_transfer() {
        device.queue_count(QueueKind::Transfer)
    } else {
        0
    };
    let mut queue_sets: Vec<(String, Vec<QueueKind>)> = (1..=transfer_queues.min(4))
        .map(|n| (format!("dma on {n} transfer queue(s)"), vec![QueueKind::Transfer; n]))
        .collect();
    queue_sets.push(("dma on 1 compute queue".into(), vec![QueueKind::Compute]));
    if transfer_queues > 0 {
        queue_sets.push((
            "dma on 1 transfer + 1 compute queue".into(),
            vec![QueueKind::Transfer, QueueKind::Compute],
        ));
    }
    for (name, kinds) in &queue_sets {
        let mut lanes = dma(kinds, 0, bytes)?;
        let stats = Stats::of(time_runs(5, args.transfers, || run_dma(&mut lanes, &|| Ok(())))?);
        report(name.clone(), stats);
    }
    // Host threads writing [from, to) of a mapped buffer with streaming stores (as lanes write rows).
    let write =
        |buffer: &vknf_vulkan::Buffer, pool: &rayon::ThreadPool, from: usize, to: usize| -> anyhow::Result<()> {
            if to <= from {
                return Ok(());
            }
            let mut mapped = buffer.map::<u8>()?;
            let share = (to - from).div_ceil(pool.current_num_threads()).next_multiple_of(64);
            let target: &mut [u8] = &mut mapped[from..to];
            pool.install(|| {
                target
                    .par_chunks_mut(share)
                    .zip(host_data[from..to].par_chunks(share))
                    .for_each(|(dst, src)| vknf_vulkan::copy_streaming(dst, src))
            });
            Ok(())
        };
    let write_bar = |pool: &rayon::ThreadPool, to: usize| write(bar, pool, 0, to);
    for &threads in &args.threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        let stats = Stats::of(time_runs(5, args.transfers, || write_bar(&pool, bytes as usize))?);
        report(format!("bar writes, {threads} thread(s)"), stats);
        // The staged path's host side: rows written into the pinned memory the DMA reads.
        let stats = Stats::of(time_runs(5, args.transfers, || {
            write(pinned, &pool, 0, bytes as usize)
        })?);
        report(format!("pinned writes, {threads} thread(s)"), stats);
        // Its steady state: the host writes the next half of the pinned memory while the DMA carries the
        // first (GB/s of the whole buffer: each half moves once).
        if transfer_queues > 0 {
            let half = (bytes / 2).next_multiple_of(256);
            let mut lanes = dma(&[QueueKind::Transfer], 0, half)?;
            let stats = Stats::of(time_runs(5, args.transfers, || {
                run_dma(&mut lanes, &|| write(pinned, &pool, half as usize, bytes as usize))
            })?);
            report(
                format!("dma of one half while {threads} thread(s) write the other into pinned memory"),
                stats,
            );
        }
    }
    // Both at once: threads write `share` of the buffer through the BAR while the DMA carries the rest.
    let both_threads = args.threads.iter().copied().filter(|&t| t <= 8).max().unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(both_threads).build()?;
    for (name, kinds) in queue_sets
        .iter()
        .filter(|(_, kinds)| kinds.iter().all(|k| *k == QueueKind::Transfer))
    {
        for share in [0.3f64, 0.4, 0.5] {
            let split = ((bytes as f64 * share) as u64).next_multiple_of(256).min(bytes);
            let mut lanes = dma(kinds, split, bytes)?;
            let stats = Stats::of(time_runs(5, args.transfers, || {
                run_dma(&mut lanes, &|| write_bar(&pool, split as usize))
            })?);
            report(format!("{name} + bar share {share} by {both_threads} thread(s)"), stats);
        }
    }
    Ok(serde_json::Value::Object(out))
}
