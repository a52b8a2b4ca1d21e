//! `vknf serve` and `vknf load` over TLS end to end: the shipped classifier served with the CPU loader
//! behind TLS with client certificates (certificates from `openssl`), driven by `vknf load`; bad TLS
//! files and plaintext beyond loopback refused at start-up.

mod common;

use common::{Server, classifier_manifests, free_port, succeed, vknf, workspace};

use std::net::TcpStream;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use vknf_testkit::pki::TestPki;

fn tls_flags(pki: &TestPki) -> Vec<String> {
    [
        ("--tls-cert", pki.cert("server")),
        ("--tls-key", pki.key("server")),
        ("--tls-client-ca", pki.cert("ca")),
    ]
    .into_iter()
    .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
    .collect()
}

fn load(addr: &str, extra: &[String]) -> Output {
    vknf()
        .args(["load", "--addr", addr, "--count", "200", "--rows", "4"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn vknf_load_drives_a_function_served_over_tls_with_client_certificates() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let manifests = classifier_manifests(dir.path(), port, &[]);
    // No --bind: the port binds the function's endpoint address on this host, 127.0.0.1.
    let log = dir.path().join("serve.log");
    let oip = free_port();
    let _server = Server(
        vknf()
            .args(["serve", "--cpu", "--host-address", "127.0.0.1"])
            .args(["--oip-addr", &format!("127.0.0.1:{oip}")])
            .args(tls_flags(&pki))
            .arg("--manifests")
            .arg(&manifests)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the function's port never opened:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let ca = pki.cert("ca").display().to_string();
    let identity = [
        "--tls-ca".to_owned(),
        ca.clone(),
        "--tls-cert".to_owned(),
        pki.cert("client").display().to_string(),
        "--tls-key".to_owned(),
        pki.key("client").display().to_string(),
    ];
    let addr = format!("localhost:{port}");
    // Blocking clients (depth 1) and pipelined async ones (depth 8), the name checked: localhost.
    for depth in ["1", "8"] {
        let mut flags = identity.to_vec();
        flags.extend(["--connections".into(), "2".into(), "--depth".into(), depth.into()]);
        let output = succeed(load(&addr, &flags), &format!("vknf load over TLS, depth {depth}"));
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(report.contains("requests   200 ok, 0 failed"), "{report}");
    }
    // The server's certificate names localhost and 127.0.0.1, not this.
    let mut wrong_name = identity.to_vec();
    wrong_name.extend(["--tls-server-name".into(), "gpu-9.example".into()]);
    let output = load(&addr, &wrong_name);
    assert!(!output.status.success(), "a certificate for another name was accepted");
    // No client certificate: the server refuses the handshake.
    let output = load(&format!("127.0.0.1:{port}"), &["--tls-ca".into(), ca]);
    assert!(!output.status.success(), "served without a client certificate");
    // gRPC over TLS on the Open Inference Protocol port, from the KServe SDK (grpcio), against the CPU
    // reference's labels; without a client certificate the call fails.
    let kserve = std::env::var_os("VKNF_KSERVE_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv-kserve/bin/python"));
    assert!(
        kserve.is_file(),
        "no KServe venv at {} (set VKNF_KSERVE_PYTHON; make test makes it)",
        kserve.display()
    );
    let inputs = workspace().join("examples/traffic-classifier/inputs.csv");
    let output = succeed(
        std::process::Command::new(&kserve)
            .arg(workspace().join("crates/vknf-oip/tests/python/grpc_tls_client.py"))
            .args(["--grpc", &format!("localhost:{oip}"), "--model", "tc", "--rows", "5"])
            .arg("--ca")
            .arg(pki.cert("ca"))
            .arg("--cert")
            .arg(pki.cert("client"))
            .arg("--key")
            .arg(pki.key("client"))
            .arg("--input")
            .arg(&inputs)
            .output()
            .unwrap(),
        "the KServe SDK over gRPC and TLS",
    );
    let said: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    assert_eq!(said["ready"], true, "{said}");
    assert_ne!(
        said["uncertified"], "OK",
        "gRPC answered a client without a certificate: {said}"
    );
    let reference = succeed(
        vknf()
            .args(["predict", "--cpu", "--proba", "--model"])
            .arg(dir.path().join("model.vkf"))
            .arg("--input")
            .arg(&inputs)
            .output()
            .unwrap(),
        "predict --cpu",
    );
    let reference = String::from_utf8(reference.stdout).unwrap();
    let mut lines = reference.lines();
    let classes: Vec<&str> = lines.next().unwrap().split(',').skip(1).collect();
    let expected: Vec<usize> = lines
        .take(5)
        .map(|line| {
            classes
                .iter()
                .position(|c| *c == line.split(',').next().unwrap())
                .unwrap()
        })
        .collect();
    let labels: Vec<usize> = said["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(labels, expected, "{said}");

    // The open loop cannot run over TLS, and says so.
    let mut open = identity.to_vec();
    open.extend(["--rate".into(), "100".into()]);
    let output = load(&addr, &open);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && said.contains("plain TCP only"), "{said}");
}

/// Runs `vknf serve` with `flags`, expecting it to stop at start-up; returns what it said.
fn refused_at_start(dir: &Path, flags: &[String]) -> String {
    let output = vknf()
        .args(["serve", "--cpu", "--host-address", "127.0.0.1", "--manifests"])
        .arg(dir)
        .args(flags)
        .output()
        .unwrap();
    assert!(!output.status.success(), "serve started with {flags:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_tls_files_and_plaintext_beyond_loopback_stop_serve_at_start() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let mut flags = tls_flags(&pki);
    // Another identity's key.
    flags[3] = pki.key("client").display().to_string();
    let said = refused_at_start(dir.path(), &flags);
    assert!(said.contains("server.crt") && said.contains("client.key"), "{said}");
    let mut flags = tls_flags(&pki);
    flags[1] = dir.path().join("missing.crt").display().to_string();
    let said = refused_at_start(dir.path(), &flags);
    assert!(said.contains("missing.crt") && said.contains("cannot read"), "{said}");

    let metrics = format!("0.0.0.0:{}", free_port());
    let said = refused_at_start(dir.path(), &["--metrics-addr".into(), metrics]);
    assert!(said.contains("--allow-plaintext"), "{said}");
    let oip = format!("0.0.0.0:{}", free_port());
    let said = refused_at_start(dir.path(), &["--oip-addr".into(), oip]);
    assert!(said.contains("--allow-plaintext"), "{said}");
}
