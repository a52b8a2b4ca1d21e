//! The feature schema bound to a served traffic model, through the `vknf` binary: real `vknf serve`
//! processes on loopback (CPU loader) and `vknf classify --addr` against them. A manifest whose
//! schema annotation is not the digest its model carries is never served (at start or on a hot
//! reload), and `vknf classify --addr` refuses a manifest whose model was trained with another
//! schema than its own.
//!
//! The models are synthetic forests whose `.vkf` metadata carries the digest of a schema built here
//! (as `vknf compile-model` keeps the one `python/train_traffic.py` writes), so nothing needs Python,
//! captures or root.

mod common;

use common::{Server, free_port, succeed, vknf};

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use vknf_flow::FeatureSchema;

const ANNOTATION: &str = "vknf.io/feature-schema-sha256";
/// Features the models take (the first ones of every schema).
const WIDTH: usize = 8;
const CLASSES: [&str; 3] = ["0", "1", "2"];

/// A schema with the model trained with it.
struct Trained {
    schema: PathBuf,
    model: PathBuf,
    digest: String,
}

/// A schema built from `sequences` (signed TLS record sizes) and a model bound to it, in `dir`.
fn trained(dir: &Path, stem: &str, sequences: &[&[i32]], seed: u64) -> Trained {
    let mut schema = FeatureSchema::from_training(sequences.iter().copied(), CLASSES.map(String::from).to_vec());
    schema.select((0..WIDTH).collect()).unwrap();
    let mut metadata = vknf_forest::VkfMetadata::new();
    metadata.insert("vknf.schema_digest".to_owned(), schema.digest.clone());
    let forest = vknf_testkit::synthetic::random_classifier(WIDTH, CLASSES.len(), 4, 3, seed);
    let trained = Trained {
        schema: dir.join(format!("{stem}.schema.json")),
        model: dir.join(format!("{stem}.vkf")),
        digest: schema.digest.clone(),
    };
    std::fs::write(&trained.schema, schema.to_json()).unwrap();
    std::fs::write(&trained.model, forest.to_vkf_bytes_with_metadata(&metadata)).unwrap();
    trained
}

/// Two schemas of the same shape and different digests, with their models.
fn two_schemas(dir: &Path) -> (Trained, Trained) {
    let a = trained(dir, "a", &[&[-517, 1400, 1400, -90, 33], &[-300, 1200]], 1);
    let b = trained(dir, "b", &[&[-517, 1500, -80, 900], &[-250, 64, 64]], 2);
    assert_ne!(a.digest, b.digest);
    (a, b)
}

/// `vknf manifest` of the function `name` on `port`, declared with `model`'s schema, placed on
/// 127.0.0.1, into `out`.
fn manifest(name: &str, port: u16, oip_port: Option<u16>, model: &Trained, out: &Path) {
    manifest_at(Some("127.0.0.1"), name, port, oip_port, model, out);
}

/// The same, with the function's endpoints on `node` (none without).
fn manifest_at(node: Option<&str>, name: &str, port: u16, oip_port: Option<u16>, model: &Trained, out: &Path) {
    let mut command = vknf();
    command
        .args(["manifest", "--name", name])
        .args(["--port", &port.to_string()]);
    if let Some(node) = node {
        command.args(["--node-address", node]);
    }
    if let Some(oip_port) = oip_port {
        command.args(["--oip-port", &oip_port.to_string()]);
    }
    succeed(
        command
            .arg("--model")
            .arg(&model.model)
            .arg("--schema")
            .arg(&model.schema)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap(),
        "manifest",
    );
}

/// Rewrites the manifest at `path` to declare the schema `to` where it declared `from`.
fn declare(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let line = format!("{ANNOTATION}: {from}");
    assert!(text.contains(&line), "{}: no {line}", path.display());
    // Write then rename, so that the server never reads half a file.
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text.replace(&line, &format!("{ANNOTATION}: {to}"))).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// `vknf serve` (CPU loader, logs as JSON lines into `log`) of the manifest directory.
fn serve(manifests: &Path, log: &Path, extra: &[&str]) -> Server {
    Server(
        vknf()
            .args([
                "--log-json",
                "serve",
                "--cpu",
                "--bind",
                "127.0.0.1",
                "--host-address",
                "127.0.0.1",
            ])
            .args(["--poll-ms", "100"])
            .args(extra)
            .arg("--manifests")
            .arg(manifests)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Waits until `ready` holds, or fails with the server's log.
fn wait_until(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}; server log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The server's log lines that refuse `function`'s manifest.
fn refusals(log: &Path, function: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("invalid manifest") && line.contains(&format!("\"function\":\"{function}\"")))
        .map(str::to_owned)
        .collect()
}

/// A pcap file without packets: the classification runs, and decides nothing.
fn empty_capture(dir: &Path) -> PathBuf {
    let path = dir.join("empty.pcap");
    let mut header = Vec::new();
    header.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    header.extend_from_slice(&2u16.to_le_bytes());
    header.extend_from_slice(&4u16.to_le_bytes());
    header.extend_from_slice(&[0; 8]);
    header.extend_from_slice(&65535u32.to_le_bytes());
    header.extend_from_slice(&1u32.to_le_bytes());
    std::fs::write(&path, header).unwrap();
    path
}

/// `vknf classify` of `pcap` by the function at `addr`, as `manifest` declares it, with `schema`.
fn classify(pcap: &Path, addr: &str, manifest: &Path, schema: &Path) -> Output {
    vknf()
        .args(["classify", "--quiet", "--addr", addr, "--manifest"])
        .arg(manifest)
        .arg("--schema")
        .arg(schema)
        .arg("--pcap")
        .arg(pcap)
        .output()
        .unwrap()
}

/// The standard error of a command that must fail.
fn fail(output: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "{what} succeeded but must fail:\n{}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

#[test]
fn serve_refuses_a_manifest_whose_schema_annotation_is_not_its_model_s() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = two_schemas(d);
    let manifests = d.join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let (good_port, bad_port) = (free_port(), free_port());
    // "good" declares the schema of its model; "bad" carries model b and declares a (edited by hand,
    // or its model replaced under the same manifest).
    manifest("good", good_port, None, &a, &manifests.join("good.yaml"));
    manifest("bad", bad_port, None, &b, &manifests.join("bad.yaml"));
    declare(&manifests.join("bad.yaml"), &b.digest, &a.digest);
    let log = d.join("serve.log");
    let _server = serve(&manifests, &log, &[]);

    // The server applies the directory in one go and logs refusals before it loads what it serves:
    // once "good" listens, "bad" was refused.
    wait_until("the consistent function to serve", &log, || listening(good_port));
    let refused = refusals(&log, "default/bad");
    assert!(
        refused
            .iter()
            .any(|line| line.contains(&format!("declares feature schema {}", a.digest))
                && line.contains(&format!("trained with feature schema {}", b.digest))),
        "no refusal naming both digests:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(
        !listening(bad_port),
        "the function whose manifest disagrees with its model is served"
    );

    // A hot reload replacing the model of "good" under the same declaration is refused too; the
    // version loaded before serves on.
    manifest("good", good_port, None, &b, &d.join("good-b.yaml"));
    declare(&d.join("good-b.yaml"), &b.digest, &a.digest);
    std::fs::rename(d.join("good-b.yaml"), manifests.join("good.yaml")).unwrap();
    wait_until("the reload to be refused", &log, || {
        !refusals(&log, "default/good").is_empty()
    });
    let refused = refusals(&log, "default/good");
    assert!(
        refused[0].contains(&a.digest) && refused[0].contains(&b.digest),
        "{}",
        refused[0]
    );
    assert!(listening(good_port), "the previous version stopped serving");
}

#[test]
fn classify_addr_refuses_a_manifest_whose_model_was_trained_with_another_schema() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = two_schemas(d);
    let manifests = d.join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let port = free_port();
    manifest("tc", port, None, &a, &manifests.join("tc.yaml"));
    let log = d.join("serve.log");
    let _server = serve(&manifests, &log, &[]);
    wait_until("the function to serve", &log, || listening(port));
    let (pcap, addr) = (empty_capture(d), format!("127.0.0.1:{port}"));

    // The manifest the function is served from, with its schema: classified.
    let output = succeed(classify(&pcap, &addr, &manifests, &a.schema), "classify --addr");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("classified 0 flows"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A copy whose annotation was edited to the schema b: the annotation agrees with the schema
    // given, the model the manifest carries does not. Refused, naming both digests.
    let edited = d.join("edited.yaml");
    std::fs::copy(manifests.join("tc.yaml"), &edited).unwrap();
    declare(&edited, &a.digest, &b.digest);
    let message = fail(
        classify(&pcap, &addr, &edited, &b.schema),
        "classify with an edited manifest",
    );
    assert!(
        message.contains("refused") && message.contains(&a.digest) && message.contains(&b.digest),
        "{message}"
    );

    // The served manifest with the other schema: refused too.
    let message = fail(
        classify(&pcap, &addr, &manifests, &b.schema),
        "classify with another schema",
    );
    assert!(
        message.contains("does not match") && message.contains(&a.digest) && message.contains(&b.digest),
        "{message}"
    );
}

/// `GET path` on the loopback port `port` (HTTP/1.0: the server closes after answering): status and
/// body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// The feature schema digest the Open Inference Protocol port reports for the model `model`.
fn reported(oip_port: u16, model: &str) -> Option<String> {
    let (status, body) = http_get(oip_port, &format!("/v2/models/{model}"));
    assert_eq!(status, 200, "{body}");
    let metadata: serde_json::Value = serde_json::from_str(&body).unwrap();
    metadata["parameters"]["vknf.schema_digest"].as_str().map(str::to_owned)
}

#[test]
fn the_open_inference_protocol_reports_the_served_schema_and_classify_addr_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = two_schemas(d);
    let manifests = d.join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let (port, oip_port) = (free_port(), free_port());
    manifest("tc", port, Some(oip_port), &a, &manifests.join("tc.yaml"));
    let log = d.join("serve.log");
    let _server = serve(&manifests, &log, &["--oip-addr", &format!("127.0.0.1:{oip_port}")]);
    wait_until("the function to serve", &log, || listening(port) && listening(oip_port));

    // The model metadata carries the digest of the schema its model was trained with.
    assert_eq!(reported(oip_port, "tc"), Some(a.digest.clone()));
    let (pcap, addr) = (empty_capture(d), format!("127.0.0.1:{port}"));
    succeed(classify(&pcap, &addr, &manifests, &a.schema), "classify --addr");

    // A client holding the manifest of another version of the function (model b, declared b: a
    // manifest the server would serve, just not the one it serves): the server's report refuses it.
    let other = d.join("other.yaml");
    manifest("tc", port, Some(oip_port), &b, &other);
    let message = fail(
        classify(&pcap, &addr, &other, &b.schema),
        "classify against another version",
    );
    assert!(
        message.contains(&format!("at 127.0.0.1:{oip_port}"))
            && message.contains(&format!(
                "schema digest {} does not match the model's {}",
                b.digest, a.digest
            )),
        "{message}"
    );

    // The same manifest without the function's endpoints (written without --node-address, as for a
    // server bound to all addresses): the host classify sends flows to is asked all the same.
    let unplaced = d.join("unplaced.yaml");
    manifest_at(None, "tc", port, Some(oip_port), &b, &unplaced);
    let message = fail(
        classify(&pcap, &addr, &unplaced, &b.schema),
        "classify against another version, no endpoints declared",
    );
    assert!(
        message.contains(&format!("at 127.0.0.1:{oip_port}")) && message.contains(&b.digest),
        "{message}"
    );

    // Once the server serves that version (a hot reload), it reports its schema, and the client agrees.
    std::fs::rename(&other, manifests.join("tc.yaml")).unwrap();
    wait_until("the reload", &log, || {
        reported(oip_port, "tc") == Some(b.digest.clone())
    });
    succeed(
        classify(&pcap, &addr, &manifests.join("tc.yaml"), &b.schema),
        "classify --addr after the reload",
    );
}
