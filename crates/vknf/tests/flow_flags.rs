//! The flow-table flags of `vknf flows` and `vknf classify` (`--server-ports`, `--idle-timeout`,
//! `--active-timeout`, `--max-flows`, and `--shards` of a live capture), through the `vknf` binary
//! on real captures: the Debian package golang-github-gopacket-gopacket-dev's `test301.pcapng` (one
//! real TLS 1.2 connection of 276 packets over 1.06 s, with one 0.54 s pause) and `test300.pcapng`
//! (another, 32 packets), and its `test_loopback.pcap` (two concurrent HTTP connections on port
//! 8080, one seen from its SYN, one picked up mid-stream). Every test compares with the defaults
//! on the same file, so that an ignored flag fails it; bad values must be refused, naming the
//! flag, before anything runs.
//!
//! The classify tests need `.venv` (scikit-learn, skl2onnx: `make python-deps`) to train a model on
//! the gopacket flows; the live one needs root (libpcap on `lo`). They skip with `SKIPPED`
//! otherwise, and fail under `CI`.

mod common;

use common::{Server, skip, succeed, train_traffic, training_python, vknf, wait_until_capturing};

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

/// The gopacket package's file `name` (under its `pcapgo/tests/le` or `pcap`), if installed.
fn gopacket(name: &str) -> Option<PathBuf> {
    let root = Path::new("/usr/share/gocode/src/github.com/gopacket/gopacket");
    let path = [root.join("pcapgo/tests/le").join(name), root.join("pcap").join(name)]
        .into_iter()
        .find(|p| p.exists());
    if path.is_none() {
        skip(&format!(
            "golang-github-gopacket-gopacket-dev is not installed (its {name})"
        ));
    }
    path
}

/// What `vknf flows` wrote: the flows (dataset lines) and the flow table's counters.
struct Flows {
    lines: Vec<Value>,
    counters: Value,
}

impl Flows {
    fn ends(&self) -> Vec<&str> {
        self.lines.iter().map(|l| l["end"].as_str().unwrap()).collect()
    }
    fn packets(&self) -> u64 {
        self.lines.iter().map(|l| l["packets"].as_u64().unwrap()).sum()
    }
    /// The flow whose client or server uses `port`.
    fn with_port(&self, port: u64) -> &Value {
        self.lines
            .iter()
            .find(|l| l["client_port"] == port || l["server_port"] == port)
            .unwrap_or_else(|| panic!("no flow with port {port}: {:?}", self.lines))
    }
}

/// Runs `vknf flows --pcap file extra...`, which must succeed.
fn flows(file: &Path, extra: &[&str]) -> Flows {
    let output = succeed(
        vknf()
            .args(["flows", "--quiet", "--pcap"])
            .arg(file)
            .args(extra)
            .output()
            .unwrap(),
        "vknf flows",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let counters = stderr
        .lines()
        .find_map(|l| l.split_once("counters: ").map(|(_, json)| json))
        .unwrap_or_else(|| panic!("no counters in {stderr}"));
    Flows {
        lines: json_lines(&String::from_utf8_lossy(&output.stdout)),
        counters: serde_json::from_str(counters).unwrap(),
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Duration of a flow (or decision) line, in nanoseconds.
fn span(line: &Value) -> u64 {
    line["last_ns"].as_u64().unwrap() - line["first_ns"].as_u64().unwrap()
}

/// The standard error of a command that must fail before doing anything (clap's exit status 2).
fn refused(output: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{what}: expected a usage error, got {stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "{what}: wrote {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

#[test]
fn max_flows_evicts_and_counts() {
    let Some(file) = gopacket("test_loopback.pcap") else {
        return;
    };
    let all = flows(&file, &[]);
    assert_eq!(all.lines.len(), 2);
    assert_eq!(all.counters["flows_evicted"], 0);
    assert!(!all.ends().contains(&"evicted"));

    // One flow at a time: the second connection's SYN evicts the first, whose next packet evicts
    // the second in turn and starts a third flow.
    let one = flows(&file, &["--max-flows", "1"]);
    assert_eq!(one.counters["flows_evicted"], 2, "{}", one.counters);
    assert_eq!(one.ends(), ["evicted", "evicted", "end_of_input"]);
    assert_eq!(one.packets(), all.packets());
}

#[test]
fn active_timeout_splits_a_long_flow() {
    let Some(file) = gopacket("test301.pcapng") else { return };
    let whole = flows(&file, &[]);
    assert_eq!(whole.ends(), ["fin"]);
    assert!(span(&whole.lines[0]) > 1_000_000_000);

    // Cut at the first packet 0.25 s or more after each piece's first: three pieces.
    let split = flows(&file, &["--active-timeout", "0.25"]);
    assert_eq!(split.ends(), ["active", "active", "fin"]);
    for line in &split.lines {
        assert!(span(line) < 250_000_000, "{line}");
    }
    // The later pieces start without their SYN.
    assert!(split.lines[1..].iter().all(|l| l["flags"]["mid_stream"] == true));
    assert_eq!(split.packets(), whole.packets());
}

#[test]
fn idle_timeout_ends_a_flow_at_its_pause() {
    let Some(file) = gopacket("test301.pcapng") else { return };
    let whole = flows(&file, &[]);
    assert_eq!(whole.ends(), ["fin"]);
    // The capture's one pause longer than 0.3 s (0.54 s) ends the flow there.
    let split = flows(&file, &["--idle-timeout", "0.3"]);
    assert_eq!(split.ends(), ["idle", "fin"]);
    let gap = split.lines[1]["first_ns"].as_u64().unwrap() - split.lines[0]["last_ns"].as_u64().unwrap();
    assert!(gap > 300_000_000, "{gap}");
    assert_eq!(split.packets(), whole.packets());
}

#[test]
fn server_ports_decide_the_server_of_a_flow_seen_mid_stream() {
    let Some(file) = gopacket("test_loopback.pcap") else {
        return;
    };
    // 58799 -> 8080 was picked up mid-stream: without a listed port the lower port (8080) is the
    // server's. 58806 -> 8080 is seen from its SYN.
    let guessed = flows(&file, &[]);
    let (mid, syn) = (guessed.with_port(58799), guessed.with_port(58806));
    assert_eq!(mid["flags"]["mid_stream"], true);
    assert_eq!(
        (mid["client_port"].as_u64(), mid["server_port"].as_u64()),
        (Some(58799), Some(8080))
    );
    assert_eq!(syn["server_port"], 8080);

    // Listing 58799 makes it the server's side of the mid-stream flow; the SYN still decides the other.
    let listed = flows(&file, &["--server-ports", "443,58799"]);
    let (mid2, syn2) = (listed.with_port(58799), listed.with_port(58806));
    assert_eq!(
        (mid2["client_port"].as_u64(), mid2["server_port"].as_u64()),
        (Some(8080), Some(58799))
    );
    assert_eq!(mid2["packets_c2s"], mid["packets_s2c"]);
    assert_eq!(syn2["server_port"], 8080);
}

#[test]
fn bad_values_are_refused_naming_the_flag() {
    let file = "capture-that-is-never-opened.pcap";
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--max-flows", "0"], "--max-flows", "not in 1..="),
        (&["--max-flows", "1000000000000"], "--max-flows", "not in 1..="),
        (&["--max-flows=-3"], "--max-flows", "-3"),
        (&["--idle-timeout", "0"], "--idle-timeout", "more than 0 seconds"),
        (&["--idle-timeout", "NaN"], "--idle-timeout", "finite"),
        (&["--idle-timeout", "1e9"], "--idle-timeout", "at most"),
        (&["--idle-timeout", "soon"], "--idle-timeout", "number of seconds"),
        (&["--active-timeout=-5"], "--active-timeout", "more than 0 seconds"),
        (&["--active-timeout", "inf"], "--active-timeout", "finite"),
        (
            &["--active-timeout", "1e-12"],
            "--active-timeout",
            "at least 1 nanosecond",
        ),
        (&["--server-ports", "0"], "--server-ports", "not in 1..="),
        (&["--server-ports", "443,https"], "--server-ports", "https"),
        (&["--server-ports", "70000"], "--server-ports", "70000"),
    ];
    for (args, flag, message) in cases {
        let stderr = refused(
            vknf()
                .args(["flows", "--quiet", "--pcap", file])
                .args(*args)
                .output()
                .unwrap(),
            &format!("flows {args:?}"),
        );
        assert!(
            stderr.contains(flag) && stderr.contains(message),
            "flows {args:?}: {stderr}"
        );
    }
    // The same flags, and the live capture's, on `vknf classify` (nothing is loaded: the model and
    // schema need not exist).
    let classify = ["classify", "--cpu", "--model", "m.onnx", "--schema", "s.json"];
    let live = ["--interface", "lo"];
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--pcap", file, "--max-flows", "0"], "--max-flows", "not in 1..="),
        (&["--pcap", file, "--idle-timeout", "nan"], "--idle-timeout", "finite"),
        (
            &["--pcap", file, "--active-timeout", "0"],
            "--active-timeout",
            "more than 0 seconds",
        ),
        (
            &["--pcap", file, "--server-ports", "0"],
            "--server-ports",
            "not in 1..=",
        ),
        (&["--pcap", file, "--shards", "2"], "--shards", "cannot be used with"),
        (
            &["--pcap", file, "--duration", "5"],
            "--duration",
            "cannot be used with",
        ),
        (&[live[0], live[1], "--shards", "0"], "--shards", "not in 1..=256"),
        (&[live[0], live[1], "--shards", "100000"], "--shards", "not in 1..=256"),
        (&[live[0], live[1], "--duration", "NaN"], "--duration", "finite"),
        (
            &[live[0], live[1], "--duration", "1e30"],
            "--duration",
            "at most 31536000 seconds (a year)",
        ),
        (
            &[live[0], live[1], "--duration=-1"],
            "--duration",
            "number of seconds from 0",
        ),
    ];
    for (args, flag, message) in cases {
        let stderr = refused(
            vknf().args(classify).args(*args).output().unwrap(),
            &format!("classify {args:?}"),
        );
        assert!(
            stderr.contains(flag) && stderr.contains(message),
            "classify {args:?}: {stderr}"
        );
    }
    // The defaults are the library's, and --help says so.
    let help = succeed(vknf().args(["classify", "--help"]).output().unwrap(), "classify --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for default in [
        "[default: 443 8443]",
        "[default: 120]",
        "[default: 1800]",
        "[default: 65536]",
        "--shards <N>",
    ] {
        assert!(help.contains(default), "{default} in {help}");
    }
}

/// A model and schema trained on the two gopacket TLS flows, labelled apart by client port, in
/// `dir`: enough for `vknf classify` to run (what it predicts does not matter here).
fn trained(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let files = [gopacket("test300.pcapng")?, gopacket("test301.pcapng")?];
    let python = training_python()?;
    let labels = dir.join("labels.csv");
    std::fs::write(&labels, "*,*,*,46920,short\n*,*,*,*,long\n").unwrap();
    let dataset = dir.join("flows.jsonl");
    succeed(
        vknf()
            .args(["flows", "--quiet", "--labels"])
            .arg(&labels)
            .arg("--pcap")
            .args(files)
            .arg("-o")
            .arg(&dataset)
            .output()
            .unwrap(),
        "vknf flows",
    );
    Some(train_traffic(
        &python,
        dir,
        &dataset,
        "model",
        &["--n-estimators", "3", "--max-samples", "1.0"],
    ))
}

/// `vknf classify --cpu` of `file` with `extra` flags: its final decisions.
fn classify(model: &Path, schema: &Path, file: &Path, extra: &[&str]) -> Vec<Value> {
    let output = succeed(
        vknf()
            .args(["classify", "--cpu", "--quiet", "--model"])
            .arg(model)
            .arg("--schema")
            .arg(schema)
            .arg("--pcap")
            .arg(file)
            .args(extra)
            .output()
            .unwrap(),
        "vknf classify",
    );
    let lines = json_lines(&String::from_utf8_lossy(&output.stdout));
    assert!(lines.iter().all(|l| l["decision"] == "final"), "{lines:?}");
    lines
}

#[test]
fn classify_takes_the_same_flow_table_flags() {
    let dir = tempfile::tempdir().unwrap();
    let Some((model, schema)) = trained(dir.path()) else {
        return;
    };
    let (Some(long), Some(loopback)) = (gopacket("test301.pcapng"), gopacket("test_loopback.pcap")) else {
        return;
    };
    let ends =
        |lines: &[Value]| -> Vec<String> { lines.iter().map(|l| l["end"].as_str().unwrap().to_owned()).collect() };

    assert_eq!(ends(&classify(&model, &schema, &long, &[])), ["fin"]);
    let split = classify(&model, &schema, &long, &["--active-timeout", "0.25"]);
    assert_eq!(ends(&split), ["active", "active", "fin"]);
    assert!(split.iter().all(|l| span(l) < 250_000_000));
    assert_eq!(
        ends(&classify(&model, &schema, &long, &["--idle-timeout", "0.3"])),
        ["idle", "fin"]
    );

    assert_eq!(classify(&model, &schema, &loopback, &[]).len(), 2);
    let evicted = classify(&model, &schema, &loopback, &["--max-flows", "1"]);
    assert_eq!(ends(&evicted), ["evicted", "evicted", "end_of_input"]);

    let server_ports = |extra: &[&str]| -> Vec<u64> {
        let mut ports: Vec<u64> = classify(&model, &schema, &loopback, extra)
            .iter()
            .map(|l| l["server_port"].as_u64().unwrap())
            .collect();
        ports.sort_unstable();
        ports
    };
    assert_eq!(server_ports(&[]), [8080, 8080]);
    assert_eq!(server_ports(&["--server-ports", "58799"]), [8080, 58799]);
}

/// The threads of process `pid` now.
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Runs `vknf classify --interface lo --shards N` over TCP connections to a listener of this test
/// (each sends, is answered, closes); returns the process's threads once capturing, and the final
/// decisions of those connections by client port.
fn live(dir: &Path, model: &Path, schema: &Path, shards: usize) -> (usize, BTreeMap<u64, usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (out, log) = (
        dir.join(format!("live-{shards}.jsonl")),
        dir.join(format!("live-{shards}.log")),
    );
    let mut child = Server(
        vknf()
            .args(["classify", "--cpu", "--interface", "lo", "--duration", "60"])
            .args(["--shards", &shards.to_string()])
            .args([
                "--filter",
                &format!("tcp port {port}"),
                "--max-wait-ms",
                "10",
                "--model",
            ])
            .arg(model)
            .arg("--schema")
            .arg(schema)
            .arg("-o")
            .arg(&out)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until_capturing(&mut child.0, &log);
    // The shards' threads start right after the message: let them.
    std::thread::sleep(Duration::from_secs(1));
    let count = threads(child.0.id());

    let server = std::thread::spawn(move || {
        for _ in 0..8 {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 64];
            stream.read_exact(&mut request).unwrap();
            stream.write_all(&[7u8; 1000]).unwrap();
        }
    });
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        clients.push(u64::from(stream.local_addr().unwrap().port()));
        stream.write_all(&[1u8; 64]).unwrap();
        let mut answer = [0u8; 1000];
        stream.read_exact(&mut answer).unwrap();
    }
    server.join().unwrap();
    // Closed connections linger 2 s in the table; SIGTERM ends whatever is still open.
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{}", std::fs::read_to_string(&log).unwrap());

    let mut decided: BTreeMap<u64, usize> = BTreeMap::new();
    for line in json_lines(&std::fs::read_to_string(&out).unwrap()) {
        assert_eq!(line["server_port"], u64::from(port), "{line}");
        *decided.entry(line["client_port"].as_u64().unwrap()).or_default() += 1;
    }
    let expected: BTreeMap<u64, usize> = clients.into_iter().map(|p| (p, 1)).collect();
    assert_eq!(decided, expected, "one final decision per connection");
    (count, decided)
}

#[test]
fn shards_run_a_live_capture_on_that_many_flow_threads() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        skip("capturing on lo needs root (libpcap)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some((model, schema)) = trained(dir.path()) else {
        return;
    };
    let (one, flows_one) = live(dir.path(), &model, &schema, 1);
    let (four, flows_four) = live(dir.path(), &model, &schema, 4);
    eprintln!("threads: {one} with 1 shard, {four} with 4");
    // Three more flow-table threads, and every connection still decided once (both directions of
    // a flow meet in one shard).
    assert!(four >= one + 3, "threads: {one} with 1 shard, {four} with 4");
    assert_eq!(flows_one.len(), flows_four.len());
}
