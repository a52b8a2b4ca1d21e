//! Runtime benchmark: dispatch round trip (empty kernel, submit to host-visible completion) and
//! upload / readback bandwidth of a 7 MB buffer (the paper workload's input size).

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
    let report = json!({
        "device": device.info().name,
        "driver": device.info().driver_info,
        "dedicated_transfer_queue": device.has_dedicated_transfer(),
        "bytes": args.bytes,
        "round_trip": round_trip,
        "queues": results,
        "host_write_upload_memory": host_write,
        "upload_memory_device_local": upload_buffer.is_device_local(),
    });
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
