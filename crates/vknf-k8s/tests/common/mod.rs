//! Fixtures of the agent's end-to-end tests: forests, function objects, agents on loopback
//! addresses against one fake API server, and bounded waits.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use rand::{Rng as _, SeedableRng as _};
use vknf_forest::GpuForest;
use vknf_functions::CpuLoader;
use vknf_functions::FunctionLoader;
use vknf_k8s::host::parse_labels;
use vknf_k8s::{Agent, AgentConfig, FunctionPhase, HostFunctionStatus, HostIdentity, keys};
use vknf_k8s_fake::{FakeApiServer, ResourceType, UserInfo};
use vknf_manifest::{ManifestRequest, build_objects};
use vknf_protocol::client::Client;
use vknf_server::{BindAddress, ServerConfig};

pub const NAMESPACE: &str = "default";
pub const LEASE_NAMESPACE: &str = "vknf-system";
/// The function namespaces of the tests' cluster: the agents watch these, and
/// deploy/rbac-function-namespace.yaml grants the hosts and the watchdog access to each.
pub const FUNCTION_NAMESPACES: [&str; 2] = [NAMESPACE, "vknf-functions"];
/// The watchdog's bearer token in [`cluster`].
pub const WATCHDOG_TOKEN: &str = "vknf-watchdog-token";
pub const FEATURES: usize = 6;
pub const CLASSES: usize = 4;

/// A random classifier of `n_trees` full trees of `depth` splits, of the tests' shape.
pub fn forest(seed: u64, n_trees: usize, depth: u32) -> GpuForest {
    vknf_testkit::synthetic::random_classifier(FEATURES, CLASSES, n_trees, depth, seed)
}

pub fn rows(seed: u64, n_rows: usize) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n_rows * FEATURES).map(|_| rng.random_range(-1.2f32..1.2)).collect()
}

pub fn expected_labels(forest: &GpuForest, rows: &[f32]) -> Vec<u32> {
    forest
        .predict_cpu(rows, rows.len() / FEATURES)
        .expect("cpu prediction")
        .labels
}

/// A free TCP port (on every loopback address, in practice).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// The Service and model ConfigMaps of a forest function, as `vknf manifest` writes them;
/// `model_suffix` names the ConfigMaps (a new model gets new ConfigMaps).
pub fn function(name: &str, port: u16, forest: &GpuForest, model_suffix: &str) -> (Service, Vec<ConfigMap>) {
    let model = forest.to_vkf_bytes();
    let spirv = vknf_kernels::by_name("forest").expect("forest kernel");
    let values = build_objects(&ManifestRequest {
        name: name.to_owned(),
        namespace: NAMESPACE.to_owned(),
        port,
        oip_port: None,
        kind: "forest".to_owned(),
        spirv,
        entry_point: None,
        model: Some(&model),
        spec_constants: None,
        params: Default::default(),
        max_batch_rows: Some(256),
        max_wait_us: Some(100),
        node_addresses: Vec::new(),
        part_bytes: model.len() / 2 + 1,
    })
    .expect("manifest builds");
    let mut service = None;
    let mut configmaps = Vec::new();
    for value in values {
        match value["kind"].as_str() {
            Some("Service") => service = Some(serde_norway::from_value::<Service>(value).expect("service")),
            Some("ConfigMap") => {
                let mut configmap: ConfigMap = serde_norway::from_value(value).expect("configmap");
                let name = configmap.metadata.name.clone().expect("named");
                configmap.metadata.name = Some(format!("{name}-{model_suffix}"));
                configmaps.push(configmap);
            }
            _ => {}
        }
    }
    let mut service = service.expect("a service");
    let names: Vec<String> = configmaps.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
    annotate(&mut service, keys::MODEL_CONFIGMAPS, &names.join(","));
    (service, configmaps)
}

pub fn annotate(service: &mut Service, key: &str, value: &str) {
    service
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
}

/// Writes a function's ConfigMaps, then its Service, as `kubectl apply` of the manifest would.
pub fn apply(fake: &FakeApiServer, service: &Service, configmaps: &[ConfigMap]) {
    for configmap in configmaps {
        fake.insert(configmap).expect("insert configmap");
    }
    fake.insert(service).expect("insert service");
}

pub struct Host {
    pub name: &'static str,
    pub ip: IpAddr,
    pub labels: &'static [&'static str],
}

pub const GPU_A: Host = Host {
    name: "gpu-a",
    ip: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)),
    labels: &["gpu=h100"],
};
pub const GPU_B: Host = Host {
    name: "gpu-b",
    ip: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3)),
    labels: &["gpu=h100"],
};
pub const NO_GPU: Host = Host {
    name: "cpu-only",
    ip: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 5)),
    labels: &["zone=a"],
};
pub const GPU_C: Host = Host {
    name: "gpu-c",
    ip: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 4)),
    labels: &["gpu=a100"],
};

pub const ALL_HOSTS: [&Host; 4] = [&GPU_A, &GPU_B, &GPU_C, &NO_GPU];

/// The bearer token of a host's ServiceAccount `vknf-hosts/<name>` in [`cluster`].
pub fn host_token(host: &Host) -> String {
    format!("{}-token", host.name)
}

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

pub fn deploy_file(name: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(name)).unwrap_or_else(|e| panic!("read deploy/{name}: {e}"))
}

/// What `deploy/render.sh KIND NAME` prints (the script itself runs).
pub fn render(kind: &str, name: &str) -> String {
    let output = std::process::Command::new("sh")
        .arg(deploy_dir().join("render.sh"))
        .args([kind, name])
        .output()
        .expect("run deploy/render.sh");
    assert!(
        output.status.success(),
        "deploy/render.sh {kind} {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 YAML")
}

/// A fake API server secured the way deploy/ secures a cluster: RBAC enforced from
/// deploy/rbac.yaml and the rendered per-namespace and per-host templates, the admission
/// policies of deploy/admission.yaml enforced, every test host registered with its address,
/// and bearer tokens for the hosts' and the watchdog's ServiceAccounts. Tests write their
/// objects as an administrator (`fake.insert`); agents and the watchdog use their own identity.
pub async fn cluster() -> FakeApiServer {
    let fake = FakeApiServer::builder()
        .authorize_rbac()
        .admission_policies()
        .resource(ResourceType::of::<Namespace>())
        .resource(ResourceType::of::<ServiceAccount>())
        .resource(ResourceType::of::<Secret>())
        .start()
        .await
        .expect("fake API server starts");
    fake.insert_yaml(&deploy_file("rbac.yaml")).expect("deploy/rbac.yaml");
    fake.insert_yaml(&deploy_file("admission.yaml"))
        .expect("deploy/admission.yaml");
    for namespace in FUNCTION_NAMESPACES {
        fake.insert_yaml(&render("namespace", namespace))
            .expect("namespace RBAC");
    }
    let mut addresses = BTreeMap::new();
    for host in ALL_HOSTS {
        fake.insert_yaml(&render("host", host.name)).expect("host RBAC");
        fake.add_token(&host_token(host), UserInfo::service_account("vknf-hosts", host.name));
        addresses.insert(host.name.to_owned(), host.ip.to_string());
    }
    let mut registry = fake
        .get::<ConfigMap>(LEASE_NAMESPACE, "vknf-host-addresses")
        .expect("get")
        .expect("deploy/rbac.yaml creates vknf-host-addresses");
    registry.data = Some(addresses);
    fake.insert(&registry).expect("host addresses");
    fake.add_token(
        WATCHDOG_TOKEN,
        UserInfo::service_account("vknf-system", "vknf-watchdog"),
    );
    fake
}

/// Asserts that the API server refused none of the agents' and the watchdog's requests (401 or
/// 403): whatever they did, `deploy/` permits.
pub fn assert_never_refused(fake: &FakeApiServer) {
    let refused: Vec<_> = fake
        .request_log()
        .into_iter()
        .filter(|r| r.status == 401 || r.status == 403)
        .collect();
    assert!(refused.is_empty(), "refused by RBAC or admission: {refused:#?}");
}

/// A client acting as `host`'s own identity.
pub fn host_client(fake: &FakeApiServer, host: &Host) -> kube::Client {
    fake.client_with_token(&host_token(host)).expect("kube client")
}

/// Agent settings for tests: short Leases, quick retries, a drain delay long enough to observe.
pub fn agent_config(host: &Host) -> AgentConfig {
    let identity = HostIdentity::new(
        host.name,
        vec![host.ip],
        parse_labels(host.labels.iter().copied()).unwrap(),
    )
    .expect("host identity");
    let mut config = AgentConfig::new(identity);
    config.namespaces = FUNCTION_NAMESPACES.iter().map(|n| (*n).to_owned()).collect();
    config.lease_namespace = LEASE_NAMESPACE.to_owned();
    config.lease_duration = Duration::from_secs(1);
    config.resync_interval = Duration::from_millis(500);
    config.drain_delay = Duration::from_millis(300);
    config.server = ServerConfig {
        bind: BindAddress::Fixed(host.ip),
        lanes_per_function: 2,
        drain_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    config
}

/// Logs to the test output when `VKNF_LOG` is set (e.g. `VKNF_LOG=vknf_k8s=debug`).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("VKNF_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

pub fn start_agent(fake: &FakeApiServer, host: &Host) -> Agent {
    start_agent_with_loader(fake, host, Arc::new(CpuLoader::default()))
}

/// Like [`start_agent`], loading functions with `loader`. The agent uses the host's own
/// identity: `fake` must come from [`cluster`].
pub fn start_agent_with_loader(fake: &FakeApiServer, host: &Host, loader: Arc<dyn FunctionLoader>) -> Agent {
    init_logs();
    Agent::start(host_client(fake, host), agent_config(host), loader).expect("agent starts")
}

/// Polls `condition` every 20 ms for up to 20 s.
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Like [`wait_for`], with an async condition.
pub async fn wait_for_async<F: Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    for _ in 0..1000 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

pub fn slice(fake: &FakeApiServer, service: &str, host: &Host) -> Option<EndpointSlice> {
    fake.get::<EndpointSlice>(NAMESPACE, &keys::slice_name(service, host.name))
        .expect("get slice")
}

pub fn slice_ready(fake: &FakeApiServer, service: &str, host: &Host) -> Option<bool> {
    let slice = slice(fake, service, host)?;
    Some(
        slice
            .endpoints
            .iter()
            .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)),
    )
}

/// The status annotation `host` wrote on the Service.
pub fn host_status(fake: &FakeApiServer, service: &str, host: &Host) -> Option<HostFunctionStatus> {
    let service = fake.get::<Service>(NAMESPACE, service).expect("get service")?;
    let text = service
        .metadata
        .annotations?
        .get(&keys::status_annotation(host.name))?
        .clone();
    Some(serde_json::from_str(&text).expect("status annotation is JSON"))
}

pub fn phase(fake: &FakeApiServer, service: &str, host: &Host) -> Option<FunctionPhase> {
    host_status(fake, service, host).map(|s| s.phase)
}

/// Events recorded about a Service, as (reason, reporting instance, note).
pub fn events(fake: &FakeApiServer, service: &str) -> Vec<(String, String, String)> {
    fake.list::<Event>(Some(NAMESPACE))
        .expect("list events")
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(service))
        .map(|e| {
            (
                e.reason.unwrap_or_default(),
                e.reporting_instance.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Asks the function at `addr` for `rows`; returns its labels.
pub async fn classify(addr: SocketAddr, rows: &[f32]) -> Result<Vec<u32>, String> {
    let client = Client::connect(addr).await.map_err(|e| e.to_string())?;
    let answer = client
        .infer(FEATURES as u32, rows, 0)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer.output(0).ok_or("no labels output")?.to_u32())
}

/// Whether something accepts connections at `addr`.
pub async fn accepts(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

/// Inserts every Service, ConfigMap, Endpoints and EndpointSlice of a multi-document YAML file
/// into the fake, as `kubectl apply -f` would; returns how many objects were written.
pub fn apply_yaml(fake: &FakeApiServer, path: &std::path::Path) -> usize {
    use k8s_openapi::api::core::v1::Endpoints;
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut written = 0;
    for document in serde_norway::Deserializer::from_str(&text) {
        let value = serde_norway::Value::deserialize(document).expect("valid YAML");
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("Service") => fake
                .insert(&serde_norway::from_value::<Service>(value).unwrap())
                .map(drop),
            Some("ConfigMap") => fake
                .insert(&serde_norway::from_value::<ConfigMap>(value).unwrap())
                .map(drop),
            Some("Endpoints") => fake
                .insert(&serde_norway::from_value::<Endpoints>(value).unwrap())
                .map(drop),
            Some("EndpointSlice") => fake
                .insert(&serde_norway::from_value::<EndpointSlice>(value).unwrap())
                .map(drop),
            _ => continue,
        }
        .expect("the fake accepts the object");
        written += 1;
    }
    written
}

/// The workspace root (for files under deploy/).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
