//! Live capture on the loopback interface (libpcap), flows spread over two shards, while curl
//! fetches from a Python ssl server; tcpdump captures the same traffic into a file, and the
//! flows of the live pipeline must equal the flows read from that file (which capture_parity.rs
//! checks against tshark). Needs root; skipped with a message otherwise (required under CI).
#![cfg(feature = "live")]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vknf_flow::source::live::{LiveCapture, LiveOptions, ShardedCapture};
use vknf_flow::{FlowConfig, FlowEvent, FlowRecord, read_flows};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &std::path::Path, needle: &str) {
    assert!(said(path, needle, None), "{} never said {needle:?}", path.display());
}

/// Whether the file at `path` comes to contain `needle` within 15 s (false at once when `process`
/// has exited).
fn said(path: &std::path::Path, needle: &str, mut process: Option<&mut Child>) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return true;
        }
        if let Some(child) = process.as_deref_mut()
            && child.try_wait().is_ok_and(|status| status.is_some())
        {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// What must agree between two readings of the same traffic.
type Summary = (String, Vec<i32>, u64, u64, Option<String>);

fn summary(flows: &[FlowRecord]) -> Vec<Summary> {
    let mut out: Vec<_> = flows
        .iter()
        .map(|f| {
            (
                f.client.to_string(),
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
fn live_sharded_capture_equals_tcpdump_file() {
    if !common::can_capture() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Below Linux's ephemeral range (32768 up), so no client connection of another test holds it.
    let mut port = 20000 + (std::process::id() % 12000) as u16;
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=site0.test",
        ])
        .args(["-addext", "subjectAltName=DNS:site0.test"])
        .arg("-keyout")
        .arg(d.join("key.pem"))
        .arg("-out")
        .arg(d.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/tls_sites.py");
    // A port some other program holds makes the server exit at once: try a few.
    let mut attempts = 0;
    let _server = loop {
        let mut server = Killed(
            Command::new("python3")
                .arg(&script)
                .args([
                    "--cert",
                    "cert.pem",
                    "--key",
                    "key.pem",
                    "--sites",
                    "1",
                    "--lifetime",
                    "60",
                    "--port",
                ])
                .arg(port.to_string())
                .current_dir(d)
                .stdout(std::fs::File::create(d.join("server.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        if said(&d.join("server.log"), "ready", Some(&mut server.0)) {
            break server;
        }
        attempts += 1;
        assert!(attempts < 5, "the TLS server never started (last port {port})");
        port = 20000 + (port - 20000 + 997) % 12000;
    };
    let tcpdump = Killed(
        Command::new("tcpdump")
            .args(["-i", "lo", "-U", "--immediate-mode", "-w"])
            .arg(d.join("live.pcap"))
            .arg(format!("tcp port {port}"))
            .stderr(std::fs::File::create(d.join("tcpdump.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&d.join("tcpdump.log"), "listening");

    let stop = Arc::new(AtomicBool::new(false));
    let options = LiveOptions {
        filter: Some(format!("tcp port {port}")),
        ..LiveOptions::default()
    };
    let capture = LiveCapture::open("lo", &options, stop.clone()).unwrap();
    let sharded = ShardedCapture::start(capture, FlowConfig::default(), 2);
    for n in 0..4 {
        let url = |page: u32| format!("https://site0.test:{port}/page{page}");
        let status = Command::new("curl")
            .args(["-sk", "--max-time", "10", "--http1.1", "--resolve"])
            .arg(format!("site0.test:{port}:127.0.0.1"))
            .args([url(n), url(n + 1)])
            .args(["-o", "/dev/null", "-o", "/dev/null"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(tcpdump.0.id().to_string())
        .status();
    stop.store(true, Ordering::Relaxed);
    let mut live = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match sharded.events().recv_timeout(Duration::from_millis(200)) {
            Ok(FlowEvent::Finished(flow)) => live.push(flow),
            Ok(FlowEvent::Early(_)) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let stats = sharded.join().unwrap();
    drop(tcpdump);
    let (from_file, _, _) = read_flows(d.join("live.pcap"), FlowConfig::default()).unwrap();
    let log = std::fs::read_to_string(d.join("tcpdump.log")).unwrap();
    if stats.capture_dropped > 0 || !log.lines().any(|l| l.trim() == "0 packets dropped by kernel") {
        // A loaded machine lost packets in one of the two captures: they cannot agree.
        eprintln!("note: packets dropped by the kernel ({stats:?}, {log}); only checking flags");
        assert!(live.iter().all(|f| f.flags.complete() || f.flags.gap));
        return;
    }
    assert_eq!(live.len(), 4, "{stats:?}");
    assert!(
        live.iter()
            .all(|f| f.flags.complete() && f.records.len() >= 8 && f.sni.as_deref() == Some("site0.test"))
    );
    assert_eq!(summary(&live), summary(&from_file));
}
