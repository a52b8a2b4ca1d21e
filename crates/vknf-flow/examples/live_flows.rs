//! Live capture into feature rows, as `vknf classify --interface` runs it up to the forest: a
//! libpcap capture on an interface, the sharded flow pipeline (`ShardedCapture`), one model input
//! row per finished flow, until `--duration` seconds have passed or `--stop-file` exists. Prints one JSON line of counters at the end: frames read, TCP segments,
//! frames the kernel dropped (libpcap's count), flows and rows. Used by
//! `bench/flows/run_live_bench.sh` to find the packet rate held without loss; not a test.
//!
//! ```sh
//! cargo run --release -p vknf-flow --example live_flows -- --interface veth1 --duration 10
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use vknf_flow::features::RowScratch;
use vknf_flow::source::live::{LiveCapture, LiveOptions, ShardedCapture};
use vknf_flow::{FeatureSchema, FlowConfig, FlowEvent};

/// CPU time of this process, all threads (`/proc/self/stat` utime + stime, in clock ticks of
/// 1/100 s), which includes the idle-time polling of the capture thread.
fn process_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut interface, mut shards, mut duration) = (None, 1usize, 10.0f64);
    let mut stop_file: Option<std::path::PathBuf> = None;
    let mut options = LiveOptions::default();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--interface" => interface = Some(value()?),
            "--shards" => shards = value()?.parse()?,
            "--duration" => duration = value()?.parse()?,
            "--stop-file" => stop_file = Some(value()?.into()),
            "--filter" => options.filter = Some(value()?),
            "--buffer-mb" => options.buffer_bytes = Some(value()?.parse::<usize>()? << 20),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let interface = interface.ok_or(
        "usage: live_flows --interface IF [--shards N] [--duration S] [--stop-file PATH] [--filter F] [--buffer-mb M]",
    )?;
    // The vocabulary does not change the work per flow much; an empty one keeps the example alone.
    let schema = FeatureSchema::from_training(std::iter::empty::<&[i32]>(), Vec::new());

    let stop = Arc::new(AtomicBool::new(false));
    let capture = LiveCapture::open(&interface, &options, stop.clone())?;
    let pipeline = ShardedCapture::start(capture, FlowConfig::default(), shards);
    eprintln!("capturing on {interface}");
    let end = Instant::now() + Duration::from_secs_f64(duration);
    let (mut flows, mut early) = (0u64, 0u64);
    let mut scratch = RowScratch::default();
    let mut row = Vec::new();
    loop {
        let asked = stop_file.as_ref().is_some_and(|path| path.exists());
        if !stop.load(Ordering::Relaxed) && (asked || Instant::now() >= end) {
            stop.store(true, Ordering::Relaxed);
        }
        match pipeline.events().recv_timeout(Duration::from_millis(50)) {
            Ok(FlowEvent::Finished(flow)) => {
                schema.row_into(&flow.records, &mut scratch, &mut row);
                flows += 1;
            }
            Ok(FlowEvent::Early(_)) => early += 1,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let stats = pipeline.join()?;
    println!(
        "{{\"frames\": {}, \"tcp_segments\": {}, \"capture_dropped\": {}, \"flows_created\": {}, \"flows\": {flows}, \"early\": {early}, \"cpu_s\": {:.2}}}",
        stats.frames,
        stats.tcp_segments,
        stats.capture_dropped,
        stats.flows_created,
        process_cpu_seconds().unwrap_or(f64::NAN)
    );
    Ok(())
}
