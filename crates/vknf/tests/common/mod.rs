//! What the CLI's end-to-end tests share: the `vknf` binary under test, the workspace, and servers
//! that are killed however a test ends.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The `vknf` binary cargo built for these tests.
pub fn vknf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vknf"))
}

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The output of a command that must succeed (else its output, in the failure).
pub fn succeed(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills the server when the test ends, however it ends.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A manifest directory declaring the shipped classifier (compiled to `dir/model.vkf`) on `port` of
/// 127.0.0.1; `extra` goes to `vknf manifest` as it is (e.g. `--param NAME=VALUE`).
pub fn classifier_manifests(dir: &Path, port: u16, extra: &[&str]) -> PathBuf {
    let example = workspace().join("examples/traffic-classifier");
    let model = dir.join("model.vkf");
    let spirv = dir.join("forest.spv");
    std::fs::write(&spirv, vknf_kernels::FOREST).unwrap();
    let manifests = dir.join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    succeed(
        vknf()
            .args(["compile-model", "--quiet"])
            .arg(example.join("model.onnx"))
            .arg("-o")
            .arg(&model)
            .output()
            .unwrap(),
        "compile-model",
    );
    succeed(
        vknf()
            .args([
                "manifest",
                "--name",
                "tc",
                "--kind",
                "forest",
                "--node-address",
                "127.0.0.1",
            ])
            .args(["--port", &port.to_string()])
            .args(extra)
            .arg("--spirv")
            .arg(&spirv)
            .arg("--model")
            .arg(&model)
            .arg("-o")
            .arg(manifests.join("tc.yaml"))
            .output()
            .unwrap(),
        "manifest",
    );
    manifests
}

/// Skips with a message (a missing tool, privilege or environment), or fails under CI, where every
/// test must run.
pub fn skip(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "required tool missing under CI: {why}"
    );
    eprintln!("SKIPPED: {why}");
}

/// Waits until a live `vknf classify`, writing its standard error to `log`, says it is capturing;
/// fails if it exits first or takes a minute.
pub fn wait_until_capturing(child: &mut Child, log: &Path) {
    let started = Instant::now();
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("capturing on")
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the live capture never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Python that trains traffic models (`VKNF_PYTHON`, else the project's `.venv`), if it has
/// scikit-learn and skl2onnx; otherwise skips (`make python-deps` installs them).
pub fn training_python() -> Option<PathBuf> {
    let python = std::env::var_os("VKNF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"));
    let ready = Command::new(&python)
        .args(["-c", "import sklearn, skl2onnx, onnx"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        skip(&format!(
            "{} lacks scikit-learn/skl2onnx (make python-deps)",
            python.display()
        ));
        return None;
    }
    Some(python)
}

/// Trains a traffic model with `python/train_traffic.py` on `dataset` (`extra` its further
/// arguments), writing `stem.onnx` and `stem.schema.json` into `dir`; returns their paths.
pub fn train_traffic(python: &Path, dir: &Path, dataset: &Path, stem: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (model, schema) = (
        dir.join(format!("{stem}.onnx")),
        dir.join(format!("{stem}.schema.json")),
    );
    succeed(
        Command::new(python)
            .arg(workspace().join("python/train_traffic.py"))
            .arg("train")
            .arg("--dataset")
            .arg(dataset)
            .args(extra)
            .arg("--model")
            .arg(&model)
            .arg("--schema")
            .arg(&schema)
            .output()
            .unwrap(),
        "train_traffic.py",
    );
    (model, schema)
}
