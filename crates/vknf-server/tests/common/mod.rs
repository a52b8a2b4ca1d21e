//! Shared test fixtures: random forests, manifest directories, servers on loopback ports.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vknf_forest::GpuForest;
use vknf_functions::CpuLoader;
use vknf_manifest::{DEFAULT_PART_BYTES, FunctionKey, ManifestRequest, ParseOptions, Placement, build_objects};
use vknf_server::{BindAddress, DirectorySource, Server, ServerConfig};

pub use vknf_testkit::synthetic::random_classifier as random_forest;

/// The forest kernel's SPIR-V (the CPU loader does not run it, but manifests must carry it).
pub fn forest_spirv() -> &'static [u8] {
    vknf_kernels::by_name("forest").expect("vknf-kernels has the forest kernel")
}

/// Writes `NAME.yaml` holding a forest function on an ephemeral port.
pub fn write_forest_manifest(dir: &Path, name: &str, forest: &GpuForest, max_batch_rows: usize, max_wait_us: u64) {
    write_model_manifest(dir, name, &forest.to_vkf_bytes(), max_batch_rows, max_wait_us, &[]);
}

/// Writes `NAME.yaml` holding a forest function of `model` (`.vkf` bytes) on an ephemeral port, with
/// `annotations` added to its Service.
pub fn write_model_manifest(
    dir: &Path,
    name: &str,
    model: &[u8],
    max_batch_rows: usize,
    max_wait_us: u64,
    annotations: &[(&str, &str)],
) {
    // Kubernetes (and so the generator) refuses port 0; tests then switch the Service to an
    // ephemeral port, which the server accepts when parsing with `allow_ephemeral_ports`.
    let values = build_objects(&ManifestRequest {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        port: 1,
        oip_port: None,
        kind: "forest".to_owned(),
        spirv: forest_spirv(),
        entry_point: None,
        model: Some(model),
        spec_constants: None,
        params: Default::default(),
        max_batch_rows: Some(max_batch_rows),
        max_wait_us: Some(max_wait_us),
        node_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        part_bytes: DEFAULT_PART_BYTES,
    });
    let mut yaml = String::new();
    for mut value in values.expect("manifest generates") {
        if value["kind"] == "Service" {
            value["spec"]["ports"][0]["port"] = 0.into();
            let added = value["metadata"]["annotations"].as_mapping_mut().expect("annotations");
            for (key, annotation) in annotations {
                added.insert((*key).into(), (*annotation).into());
            }
        }
        yaml.push_str("---\n");
        yaml.push_str(&serde_norway::to_string(&value).expect("YAML"));
    }
    // Write then rename, as a deploy tool would, so the watcher never reads half a file.
    let tmp = dir.join(format!(".{name}.yaml.tmp"));
    std::fs::write(&tmp, yaml).expect("write manifest");
    std::fs::rename(&tmp, dir.join(format!("{name}.yaml"))).expect("rename manifest");
}

pub fn key(name: &str) -> FunctionKey {
    FunctionKey {
        namespace: "default".to_owned(),
        name: name.to_owned(),
    }
}

/// Small limits so tests exercise them quickly.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        bind: BindAddress::Fixed(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        max_in_flight_per_connection: 64,
        lanes_per_function: 2,
        default_max_wait: Duration::from_micros(200),
        // Exercises lane threads polling for work (the default sleeps at once).
        lane_spin: Duration::from_micros(100),
        idle_timeout: Duration::from_secs(30),
        read_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(20),
        ..ServerConfig::default()
    }
}

pub fn source(dir: &Path) -> DirectorySource {
    DirectorySource {
        dir: dir.to_owned(),
        placement: Placement::Addresses(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]),
        options: ParseOptions {
            allow_ephemeral_ports: true,
            ..ParseOptions::default()
        },
        poll_interval: Duration::from_millis(50),
    }
}

/// Starts a CPU server watching `dir` and waits until it has applied the directory.
pub async fn start_server(dir: &Path, config: ServerConfig) -> Server {
    let server = Server::start(config, Arc::new(CpuLoader::default()));
    server.watch_directory(source(dir));
    wait_for(|| server.status().generation > 0, "first reconcile").await;
    server
}

/// Runs a test body with a 60 s bound, so a regression fails instead of hanging.
pub async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("test finished within 60 s");
}

/// Polls `condition` every 20 ms for up to 20 s.
pub async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

pub fn addr(server: &Server, name: &str) -> SocketAddr {
    server
        .local_addr(&key(name))
        .unwrap_or_else(|| panic!("{name} is not serving: {:?}", server.status()))
}

pub fn random_rows(n_rows: usize, n_features: usize, rng: &mut impl rand::Rng) -> Vec<f32> {
    (0..n_rows * n_features)
        .map(|_| rng.random_range(-1.2f32..1.2))
        .collect()
}

pub async fn start_server_with(dir: &Path, config: ServerConfig, loader: Arc<dyn FunctionLoader>) -> Server {
    let server = Server::start(config, loader);
    server.watch_directory(source(dir));
    wait_for(|| server.status().generation > 0, "first reconcile").await;
    server
}

use vknf_functions::FunctionLoader;
#[allow(unused_imports)]
pub use vknf_testkit::gate::{Gate, GatedLoader};
