//! The `vknf` binary end to end: the shipped scikit-learn classifier compiled, declared in a
//! manifest, served by `vknf serve` (GPU loader, validation layer on), and asked through
//! `vknf predict --addr`, whose answers must equal those computed in process. The server runs the
//! function on two logical devices (`--devices D,D`), as a host with two GPUs would, with its rows
//! pulled by the kernel from host memory (`vknf.io/input-path: host-memory`).

mod common;

use common::{Server, classifier_manifests, free_port, succeed, vknf, workspace};

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Equal texts, or the first line that differs.
fn same_lines(got: &str, want: &str, what: &str) {
    let difference = got.lines().zip(want.lines()).enumerate().find(|(_, (g, w))| g != w);
    assert!(difference.is_none(), "{what}: line {:?} differs", difference);
    assert_eq!(got.lines().count(), want.lines().count(), "{what}: line counts differ");
}

/// `GET path` on the ops port, the whole response.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: vknf\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn predictions_through_the_served_function_equal_those_made_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let example = workspace().join("examples/traffic-classifier");
    let port = free_port();
    let ops_port = free_port();
    let device = std::env::var("VKNF_DEVICE").unwrap_or_else(|_| "0".into());
    // The kernel pulls the rows from host memory (the path chosen per shape may be another one).
    let manifests = classifier_manifests(dir.path(), port, &["--param", "input-path=host-memory"]);
    let manifest = std::fs::read_to_string(manifests.join("tc.yaml")).unwrap();
    assert!(manifest.contains("vknf.io/input-path: host-memory"), "{manifest}");
    let model = dir.path().join("model.vkf");
    let _server = Server(
        vknf()
            .args([
                "--validate",
                "serve",
                "--bind",
                "127.0.0.1",
                "--host-address",
                "127.0.0.1",
                "--devices",
                &format!("{device},{device}"),
                "--metrics-addr",
                &format!("127.0.0.1:{ops_port}"),
            ])
            .arg("--manifests")
            .arg(&manifests)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the function's port never opened:\n{}",
            std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let predict = |extra: &[&str]| -> String {
        let output = succeed(
            vknf()
                .arg("predict")
                .arg("--model")
                .arg(&model)
                .arg("--input")
                .arg(example.join("inputs.csv"))
                .args(extra)
                .output()
                .unwrap(),
            &format!("predict {extra:?}"),
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let addr = format!("127.0.0.1:{port}");
    let remote = predict(&["--addr", &addr]);
    same_lines(&remote, &predict(&["--cpu"]), "served labels vs the CPU reference");
    let expected = std::fs::read_to_string(example.join("expected.csv")).unwrap();
    same_lines(&remote, &expected, "served labels vs scikit-learn");
    // Scores: the same kernel in process gives the same bits, and so does the CPU reference (scores are
    // written in Rust's shortest round-trip form, so equal text is equal bits).
    let served_scores = predict(&["--addr", &addr, "--proba"]);
    same_lines(
        &served_scores,
        &predict(&["--proba"]),
        "served scores vs the GPU in process",
    );
    same_lines(
        &served_scores,
        &predict(&["--cpu", "--proba"]),
        "served scores vs the CPU reference",
    );
    // A lane tuned first (every plan timed on the first batch) answers alike.
    same_lines(
        &served_scores,
        &predict(&["--tune-plans", "--proba"]),
        "served scores vs the GPU in process after tuning",
    );
    same_lines(
        &remote,
        &predict(&["--tune-plans=2", "--batch-rows", "7"]),
        "served labels vs the GPU in process in tuned batches of 7 rows",
    );
    // The other node layout than the default (blocks, for this forest), both ways of asking.
    same_lines(
        &served_scores,
        &predict(&["--node-blocks=false", "--proba"]),
        "served scores vs the GPU in process walking single nodes",
    );
    same_lines(
        &served_scores,
        &predict(&["--node-blocks", "--proba"]),
        "served scores vs the GPU in process walking node blocks",
    );
    // Whole batches lay each tree out breadth first by default; the .vkf order on request.
    same_lines(
        &served_scores,
        &predict(&["--node-blocks=false", "--node-order", "depth-first", "--proba"]),
        "served scores vs the GPU in process walking single nodes depth first",
    );

    // A model of another shape is refused with the function's shape, not answered.
    let other = workspace().join("crates/vknf-forest/tests/fixtures/rf12_5classes");
    let output = vknf()
        .args(["predict", "--addr", &addr, "--model"])
        .arg(other.join("model.onnx"))
        .arg("--input")
        .arg(other.join("X.npy"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("default/tc") && message.contains("features"),
        "{message}"
    );

    // Both devices serve: listed, up, and holding the function's lanes.
    let metrics = http_get(ops_port, "/metrics");
    for device in ["0", "1"] {
        assert!(
            metrics.contains(&format!("vknf_device_info{{device=\"{device}\",")),
            "device {device} listed:\n{metrics}"
        );
        assert!(
            metrics.contains(&format!("vknf_device_up{{device=\"{device}\"}} 1")),
            "{metrics}"
        );
        let lanes = format!("vknf_device_lanes{{device=\"{device}\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&lanes)).expect("device lanes");
        assert!(line[lanes.len()..].parse::<i64>().unwrap() > 0, "{line}");
    }
    assert!(http_get(ops_port, "/readyz").starts_with("HTTP/1.1 200"));
}

#[test]
fn manifest_parameters_are_checked_against_the_family() {
    let dir = tempfile::tempdir().unwrap();
    let spirv = dir.path().join("forest.spv");
    std::fs::write(&spirv, vknf_kernels::FOREST).unwrap();
    let model = dir.path().join("model.vkf");
    succeed(
        vknf()
            .args(["compile-model", "--quiet"])
            .arg(workspace().join("examples/traffic-classifier/model.onnx"))
            .arg("-o")
            .arg(&model)
            .output()
            .unwrap(),
        "compile-model",
    );
    let manifest = |param: &str| {
        vknf()
            .args([
                "manifest", "--name", "tc", "--kind", "forest", "--port", "9000", "--param", param,
            ])
            .arg("--spirv")
            .arg(&spirv)
            .arg("--model")
            .arg(&model)
            .output()
            .unwrap()
    };
    let written = manifest("input-path=staged");
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    assert!(String::from_utf8_lossy(&written.stdout).contains("vknf.io/input-path: staged"));
    for (param, says) in [
        ("input-path=fastest", "the input paths are direct, host-memory, staged"),
        ("deadline-ms=500", "kind forest takes input-path"),
        ("input-path", "expected NAME=VALUE"),
    ] {
        let refused = manifest(param);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{param} was accepted");
        assert!(stderr.contains(says), "{param}: {stderr}");
    }
}
