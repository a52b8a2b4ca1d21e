//! The node agent: watches function Services and their placement, feeds the network-function
//! server exactly as `vknf serve` would be fed from a directory, and tells the cluster what it
//! serves (EndpointSlices, a status annotation, Events, a host Lease).

mod publish;
mod reconcile;
mod watch;

pub(crate) use reconcile::stopped;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch as signal};
use tokio::task::JoinHandle;
use vknf_functions::FunctionLoader;
use vknf_manifest::{FunctionKey, ParseOptions};
use vknf_server::{Server, ServerConfig};

use crate::host::HostIdentity;
use crate::keys;
use crate::lease;
use crate::metrics::{AgentMetrics, concat_openmetrics, encode};
use crate::ops::OpsSource;
use crate::status::HostFunctionStatus;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This host.
    pub host: HostIdentity,
    /// Namespaces watched for functions (empty: every namespace, which needs cluster-wide
    /// permissions; deploy/rbac.yaml grants them per namespace).
    pub namespaces: Vec<String>,
    /// Namespace of the host Lease.
    pub lease_namespace: String,
    /// Duration of the host Lease; it is renewed every third of it.
    pub lease_duration: Duration,
    /// Longest time between two reconcile passes (retries, periodic checks).
    pub resync_interval: Duration,
    /// How long a function no longer placed here keeps serving, marked not ready, before its
    /// port closes (time for kube-proxy to stop routing to it).
    pub drain_delay: Duration,
    /// Where a copy of the resolved objects is written as a manifest directory that `vknf serve
    /// --manifests` reads (`None`: no copy). The agent itself never reads it.
    pub state_dir: Option<PathBuf>,
    /// Limits of the manifest reader.
    pub parse_options: ParseOptions,
    /// Limits and timeouts of the server.
    pub server: ServerConfig,
    /// The port of the host's Open Inference Protocol endpoint, listed (named `oip`) in every
    /// EndpointSlice the agent publishes; `None` when the host does not serve it.
    pub oip_port: Option<u16>,
}

impl AgentConfig {
    /// Defaults for `host`: every namespace, Leases in `vknf-system` for 40 s, a 30 s resync and
    /// a 5 s drain delay.
    pub fn new(host: HostIdentity) -> AgentConfig {
        AgentConfig {
            host,
            namespaces: Vec::new(),
            lease_namespace: "vknf-system".to_owned(),
            lease_duration: Duration::from_secs(40),
            resync_interval: Duration::from_secs(30),
            drain_delay: Duration::from_secs(5),
            state_dir: None,
            parse_options: ParseOptions::default(),
            server: ServerConfig::default(),
            oip_port: None,
        }
    }
}

/// Why an agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state directory cannot be created.
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The phases of one cold start: from the event that placed a function here to its port
/// answering.
#[derive(Debug, Clone, PartialEq)]
pub struct ColdStart {
    /// Which function.
    pub function: FunctionKey,
    /// From the watch event's arrival to the reconcile pass that loaded the function.
    pub watch_delay: Duration,
    /// Reading the model ConfigMaps from the API server.
    pub model_fetch: Duration,
    /// Rendering and parsing the manifests (SPIR-V checks, model assembly, digest).
    pub validation: Duration,
    /// The server's reconcile: loading (on the GPU: SPIR-V validation, pipeline creation,
    /// model upload), lanes, binding the port.
    pub load: Duration,
    /// Until the port accepted a connection.
    pub probe: Duration,
    /// From the watch event to the port answering.
    pub total: Duration,
}

/// A snapshot of what the agent does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentStatus {
    /// Whether every watch has listed once.
    pub synced: bool,
    /// Reconcile passes completed.
    pub reconciles: u64,
    /// What this host reports for each function it serves or drains.
    pub functions: BTreeMap<FunctionKey, HostFunctionStatus>,
}

/// Cold starts kept for [`Agent::cold_starts`].
const COLD_STARTS_KEPT: usize = 256;

/// State the reconciler shares with the handle.
pub(crate) struct Shared {
    pub metrics: AgentMetrics,
    pub registry: Registry,
    pub status: parking_lot::Mutex<AgentStatus>,
    pub cold_starts: parking_lot::Mutex<VecDeque<ColdStart>>,
    pub wake: Arc<Notify>,
}

/// A running agent.
pub struct Agent {
    server: Server,
    shared: Arc<Shared>,
    reconciler: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    stop: signal::Sender<bool>,
}

impl Agent {
    /// Starts the server, the watches, the reconciler and the Lease renewal. Must be called
    /// inside a Tokio runtime. `loader` turns functions into executors (the GPU loader, or the
    /// CPU loader of vknf-server).
    pub fn start(client: Client, config: AgentConfig, loader: Arc<dyn FunctionLoader>) -> Result<Agent, AgentError> {
        // A state directory that cannot be created is a configuration error, told at once.
        if let Some(dir) = &config.state_dir {
            std::fs::create_dir_all(dir).map_err(|source| AgentError::StateDir {
                path: dir.clone(),
                source,
            })?;
        }
        let state_dir = config.state_dir.clone();
        let metrics = AgentMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let shared = Arc::new(Shared {
            metrics,
            registry,
            status: parking_lot::Mutex::new(AgentStatus::default()),
            cold_starts: parking_lot::Mutex::new(VecDeque::new()),
            wake: Arc::new(Notify::new()),
        });
        let server = Server::start(config.server.clone(), loader);
        let first_seen = watch::FirstSeen::default();
        let (caches, mut background) =
            watch::start(&client, &config.namespaces, &shared.metrics, &shared.wake, &first_seen);
        background.push(tokio::spawn(renew_host_lease(
            Api::namespaced(client.clone(), &config.lease_namespace),
            config.host.name.clone(),
            config.lease_duration,
            shared.metrics.clone(),
        )));
        let (stop, stopped) = signal::channel(false);
        let reconciler = reconcile::Reconciler::new(
            client,
            Arc::new(config),
            server.clone(),
            caches,
            shared.clone(),
            first_seen,
            state_dir,
        );
        let reconciler = tokio::spawn(reconciler.run(stopped));
        Ok(Agent {
            server,
            shared,
            reconciler,
            background,
            stop,
        })
    }

    /// The network-function server the agent feeds.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The agent's metrics.
    pub fn metrics(&self) -> &AgentMetrics {
        &self.shared.metrics
    }

    /// The server's and the agent's metrics, as one OpenMetrics document.
    pub fn encode_metrics(&self) -> String {
        concat_openmetrics(&self.server.encode_metrics(), &encode(&self.shared.registry))
    }

    /// What the agent does now.
    pub fn status(&self) -> AgentStatus {
        self.shared.status.lock().clone()
    }

    /// The most recent cold starts, oldest first.
    pub fn cold_starts(&self) -> Vec<ColdStart> {
        self.shared.cold_starts.lock().iter().cloned().collect()
    }

    /// Ready when every watch has listed and the server serves everything placed here.
    pub fn readiness(&self) -> Result<String, String> {
        readiness(&self.shared, &self.server)
    }

    /// What the operations endpoint serves for this agent.
    pub fn ops_source(&self) -> OpsSource {
        let (shared, server) = (self.shared.clone(), self.server.clone());
        let (ready_shared, ready_server) = (self.shared.clone(), self.server.clone());
        OpsSource {
            metrics: Arc::new(move || concat_openmetrics(&server.encode_metrics(), &encode(&shared.registry))),
            readiness: Arc::new(move || readiness(&ready_shared, &ready_server)),
        }
    }

    /// Graceful stop: the host's endpoints are marked terminating and its status annotations
    /// removed, in-flight requests are answered, the ports close. The slices stay (not ready)
    /// until the agent comes back or their Service stops naming the host.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.reconciler.await;
        for task in &self.background {
            task.abort();
        }
        self.server.shutdown().await;
    }

    /// Stops abruptly, as a crash would: no Kubernetes writes, the Lease is simply no longer
    /// renewed, the ports close.
    pub async fn kill(self) {
        self.reconciler.abort();
        for task in &self.background {
            task.abort();
        }
        let _ = self.reconciler.await;
        self.server.shutdown().await;
    }
}

fn readiness(shared: &Shared, server: &Server) -> Result<String, String> {
    if !shared.status.lock().synced {
        return Err("watches have not listed yet\n".to_owned());
    }
    let status = server.status();
    if status.is_ready() {
        Ok(format!("ready: {} functions serving\n", status.functions.len()))
    } else {
        Err(status
            .problems()
            .iter()
            .fold("not ready\n".to_owned(), |text, p| text + p + "\n"))
    }
}

async fn renew_host_lease(api: Api<Lease>, host: String, duration: Duration, metrics: AgentMetrics) {
    let name = keys::host_lease_name(&host);
    let period = duration / 3;
    loop {
        let pause = match lease::renew(&api, &name, &host, duration).await {
            Ok(_) => {
                metrics.lease_renewals.inc();
                period
            }
            Err(error) => {
                tracing::warn!(%error, lease = %name, "cannot renew the host Lease; retrying");
                metrics.error("lease");
                period.min(Duration::from_secs(1))
            }
        };
        tokio::time::sleep(pause).await;
    }
}
