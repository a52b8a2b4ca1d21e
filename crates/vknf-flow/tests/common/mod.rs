//! Shared helpers of the integration tests: the loopback capture, the external tools (tshark,
//! NFStream, the training script) and their outputs in comparable form.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use vknf_flow::{Endpoint, FlowConfig, FlowKey, FlowRecord, read_flows};

/// True when a test must not skip for a missing tool (CI sets `CI`).
pub fn required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("VKNF_FLOW_REQUIRE_TOOLS").is_some()
}

/// Skips (returns `None`) with a message, or fails under CI.
pub fn skip<T>(why: &str) -> Option<T> {
    if required() {
        panic!("required tool missing under CI: {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

pub fn has_tool(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The loopback capture: real TLS traffic (Python ssl and openssl s_server serving, curl
/// fetching) captured by tcpdump, generated once per test binary.
pub struct Capture {
    pub dir: PathBuf,
    /// Server ports (for tshark's "decode as TLS").
    pub ports: Vec<u16>,
}

/// True when loopback traffic can be made and captured here: root and the tools; otherwise
/// prints why (and fails under CI).
pub fn can_capture() -> bool {
    if !is_root() {
        return skip::<()>("capturing on lo needs root (tcpdump -i lo, libpcap)").is_some();
    }
    for tool in ["tcpdump", "tshark", "editcap", "curl", "openssl", "python3"] {
        if !has_tool(tool) {
            return skip::<()>(&format!("{tool} is not installed (make apt-deps)")).is_some();
        }
    }
    true
}

pub fn capture() -> Option<&'static Capture> {
    static CAPTURE: OnceLock<Option<Capture>> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            if !can_capture() {
                return None;
            }
            // One directory per test binary, replaced on each run: disk use stays bounded.
            let exe = std::env::current_exe().unwrap();
            let name = exe.file_stem().unwrap().to_string_lossy().into_owned();
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("capture-{name}"));
            let _ = std::fs::remove_dir_all(&dir);
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/capture_tls.sh");
            let status = Command::new("timeout")
                .arg("150")
                .arg("bash")
                .arg(&script)
                .arg(&dir)
                .status()
                .expect("run capture_tls.sh");
            assert!(status.success(), "capture_tls.sh failed: {status}");
            let text = std::fs::read_to_string(dir.join("ports")).unwrap();
            let v: Vec<u16> = text.split_whitespace().map(|s| s.parse().unwrap()).collect();
            let (base, sites, v6, www) = (v[0], v[1], v[2], v[3]);
            let mut ports: Vec<u16> = (base..base + sites).collect();
            ports.extend([v6, www]);
            Some(Capture { dir, ports })
        })
        .as_ref()
}

/// The Debian package golang-github-gopacket-gopacket-dev's real TLS 1.2 captures.
pub fn gopacket_files() -> Option<Vec<PathBuf>> {
    let dir = Path::new("/usr/share/gocode/src/github.com/gopacket/gopacket/pcapgo/tests/le");
    let files: Vec<PathBuf> = ["test300.pcapng", "test301.pcapng"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    if files.iter().all(|f| f.exists()) {
        Some(files)
    } else {
        skip("golang-github-gopacket-gopacket-dev is not installed (its test300/301.pcapng)")
    }
}

pub fn flows_of(path: &Path) -> Vec<FlowRecord> {
    let (flows, _stats, error) = read_flows(path, FlowConfig::default()).expect("open capture");
    assert!(error.is_none(), "{}: {error:?}", path.display());
    flows
}

pub fn key_of(flow: &FlowRecord) -> FlowKey {
    FlowKey::new(flow.client, flow.server)
}

/// Per TCP connection, what tshark's TLS dissector reports: the connection's two endpoints and,
/// in frame order, (source endpoint, record length) for every TLS record.
pub fn tshark_records(path: &Path, tls_ports: &[u16]) -> HashMap<FlowKey, Vec<(Endpoint, i32)>> {
    let mut command = Command::new("tshark");
    // Out-of-order segments (test301.pcapng has some) are reassembled only with this preference,
    // off by default in Wireshark 4.0; without it tshark loses the records they complete.
    command
        .args(["-o", "tcp.reassemble_out_of_order:TRUE"])
        .arg("-r")
        .arg(path);
    for port in tls_ports {
        command.arg("-d").arg(format!("tcp.port=={port},tls"));
    }
    command.args([
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=,",
    ]);
    for field in [
        "tcp.stream",
        "ip.src",
        "ipv6.src",
        "tcp.srcport",
        "ip.dst",
        "ipv6.dst",
        "tcp.dstport",
        "tls.record.length",
    ] {
        command.args(["-e", field]);
    }
    let output = command.output().expect("run tshark");
    assert!(
        output.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut streams: BTreeMap<u64, (FlowKey, Vec<(Endpoint, i32)>)> = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 8 || f[0].is_empty() {
            continue;
        }
        let stream: u64 = f[0].parse().unwrap();
        let ip = |v4: &str, v6: &str| -> IpAddr {
            if v4.is_empty() {
                v6.parse().unwrap()
            } else {
                v4.parse().unwrap()
            }
        };
        let src = Endpoint {
            addr: ip(f[1], f[2]),
            port: f[3].parse().unwrap(),
        };
        let dst = Endpoint {
            addr: ip(f[4], f[5]),
            port: f[6].parse().unwrap(),
        };
        let entry = streams
            .entry(stream)
            .or_insert_with(|| (FlowKey::new(src, dst), Vec::new()));
        for len in f[7].split(',').filter(|s| !s.is_empty()) {
            entry.1.push((src, len.parse().unwrap()));
        }
    }
    streams.into_values().collect()
}

/// tshark's records of a flow, signed by vknf's idea of the server.
pub fn signed(records: &[(Endpoint, i32)], server: Endpoint) -> Vec<i32> {
    records
        .iter()
        .map(|&(src, len)| if src == server { len } else { -len })
        .collect()
}

/// The Python of the NFStream venv, if NFStream is installed.
pub fn nfstream_python() -> Option<PathBuf> {
    let python = std::env::var_os("VKNF_NFSTREAM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv-nfstream/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import nfstream"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(python)
    } else {
        skip(&format!(
            "NFStream is not installed at {} (make python-deps)",
            python.display()
        ))
    }
}

/// NFStream's TCP flows of a file: key -> (packets, IP bytes).
pub fn nfstream_flows(python: &Path, path: &Path) -> HashMap<FlowKey, (u64, u64)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/nfstream_flows.py");
    let output = Command::new(python)
        .arg(script)
        .arg(path)
        .output()
        .expect("run nfstream");
    assert!(
        output.status.success(),
        "nfstream: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut flows = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let end = |ip: &str, port: &str| Endpoint {
            addr: v[ip].as_str().unwrap().parse().unwrap(),
            port: v[port].as_u64().unwrap() as u16,
        };
        let key = FlowKey::new(end("src_ip", "src_port"), end("dst_ip", "dst_port"));
        let previous = flows.insert(key, (v["packets"].as_u64().unwrap(), v["bytes"].as_u64().unwrap()));
        assert!(previous.is_none(), "NFStream reported {key:?} twice");
    }
    flows
}

/// The Python of the project venv (scikit-learn, skl2onnx), if set up.
pub fn project_python() -> Option<PathBuf> {
    let python = std::env::var_os("VKNF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import sklearn, skl2onnx"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(python)
    } else {
        skip(&format!(
            "no scikit-learn venv at {} (make python-deps)",
            python.display()
        ))
    }
}
