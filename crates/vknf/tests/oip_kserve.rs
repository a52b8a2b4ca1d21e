//! The Open Inference Protocol against a client nobody here wrote: a scikit-learn forest, trained in
//! the project venv, compiled and served by `vknf serve --oip-addr` (GPU loader, validation layer on),
//! asked by the KServe Python SDK (`InferenceRESTClient` with JSON and binary tensors,
//! `InferenceGRPCClient` with raw and typed tensors) and by curl. The SDK's answers must equal
//! scikit-learn's `predict` and `predict_proba`, and its errors be the specification's.
//!
//! Needs the project venv (`VKNF_PYTHON`, default `.venv`) and the KServe venv (`VKNF_KSERVE_PYTHON`,
//! default `.venv-kserve`); `make test` creates both.

mod common;

use common::{Server, free_port, succeed, vknf, workspace};

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The interpreter named by `variable`, else the venv's under the workspace.
fn python(variable: &str, venv: &str, install: &str) -> PathBuf {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(venv).join("bin/python"));
    assert!(
        path.is_file(),
        "no Python at {} (set {variable}, or: {install}; make test does it)",
        path.display()
    );
    path
}

fn curl(url: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs (apt-get install curl; make test does it)");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.parse().unwrap_or(0), body.to_owned())
}

#[test]
fn the_kserve_sdk_gets_scikit_learn_s_answers_from_vknf_serve() {
    let trainer = python(
        "VKNF_PYTHON",
        ".venv",
        "python3 -m venv .venv && .venv/bin/pip install -r python/requirements.txt",
    );
    let kserve = python(
        "VKNF_KSERVE_PYTHON",
        ".venv-kserve",
        "python3 -m venv .venv-kserve && .venv-kserve/bin/pip install -r python/requirements-kserve.txt",
    );
    let scripts = workspace().join("crates/vknf-oip/tests/python");
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("case");
    succeed(
        Command::new(&trainer)
            .arg(scripts.join("train_forest.py"))
            .arg(&case)
            .output()
            .unwrap(),
        "train_forest.py",
    );
    let model = dir.path().join("model.vkf");
    let spirv = dir.path().join("forest.spv");
    std::fs::write(&spirv, vknf_kernels::FOREST).unwrap();
    succeed(
        vknf()
            .args(["compile-model", "--quiet"])
            .arg(case.join("model.onnx"))
            .arg("-o")
            .arg(&model)
            .output()
            .unwrap(),
        "compile-model",
    );
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let (port, oip_port) = (free_port(), free_port());
    succeed(
        vknf()
            .args([
                "manifest",
                "--name",
                "forest",
                "--kind",
                "forest",
                "--node-address",
                "127.0.0.1",
            ])
            .args([
                "--port",
                &port.to_string(),
                "--oip-port",
                &oip_port.to_string(),
                "--spirv",
            ])
            .arg(&spirv)
            .arg("--model")
            .arg(&model)
            .arg("-o")
            .arg(manifests.join("forest.yaml"))
            .output()
            .unwrap(),
        "manifest",
    );
    let oip = format!("127.0.0.1:{oip_port}");
    let log = dir.path().join("serve.log");
    let _server = Server(
        vknf()
            .args([
                "--validate",
                "serve",
                "--bind",
                "127.0.0.1",
                "--host-address",
                "127.0.0.1",
            ])
            .args(["--oip-addr", &oip, "--max-frame-mib", "1", "--manifests"])
            .arg(&manifests)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://{oip}");
    let started = Instant::now();
    while curl(&format!("{base}/v2/health/ready")).0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the server never got ready:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // curl: health and metadata.
    assert_eq!(
        curl(&format!("{base}/v2/health/live")),
        (200, r#"{"live":true}"#.to_owned())
    );
    let (status, server) = curl(&format!("{base}/v2"));
    assert_eq!(status, 200);
    assert!(
        server.contains(r#""name":"vknf""#) && server.contains("binary_tensor_data"),
        "{server}"
    );
    let (status, metadata) = curl(&format!("{base}/v2/models/forest"));
    assert_eq!(status, 200);
    assert!(
        metadata.contains(r#""inputs":[{"name":"features","datatype":"FP32","shape":[-1,6]}]"#)
            && metadata.contains(r#"{"name":"scores","datatype":"FP32","shape":[-1,4]}"#),
        "{metadata}"
    );
    assert_eq!(curl(&format!("{base}/v2/models/default%2Fforest/ready")).0, 200);
    assert_eq!(curl(&format!("{base}/v2/models/nope")).0, 404);

    // The KServe SDK, REST and gRPC.
    let output = Command::new(&kserve)
        .arg(scripts.join("kserve_client.py"))
        .args(["--rest", &base, "--grpc", &oip, "--model", "forest"])
        .arg(&case)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the KServe SDK's checks failed:\n{report}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(report.contains(r#""failures": []"#), "{report}");
}
