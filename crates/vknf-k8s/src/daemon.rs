//! The `vknf agent` process: a kube client from a kubeconfig (or the in-cluster environment),
//! the agent or the watchdog, the operations endpoint, and a graceful stop on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::watch;
use vknf_functions::FunctionLoader;

use crate::agent::{Agent, AgentConfig, AgentError};
use crate::ops::OpsSource;
use crate::watchdog::{Watchdog, WatchdogConfig};
use vknf_server::ops::{OpsLimits, serve_ops_tls};
use vknf_tls::ServerTls;

/// What the process runs.
pub enum Role {
    /// The node agent of a GPU host.
    Agent {
        /// How it runs.
        config: Box<AgentConfig>,
        /// What loads functions (the GPU loader, or vknf-server's CPU loader).
        loader: Arc<dyn FunctionLoader>,
    },
    /// The watchdog (any number of replicas; one leads).
    Watchdog(WatchdogConfig),
}

/// Everything `vknf agent` runs with.
pub struct DaemonOptions {
    /// Kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, then the in-cluster environment.
    pub kubeconfig: Option<PathBuf>,
    /// Address of `/metrics`, `/livez` and `/readyz`, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// TLS on the operations endpoint, if set.
    pub ops_tls: Option<ServerTls>,
    /// Address of the host's Open Inference Protocol port (the agent only), if any.
    pub oip_addr: Option<SocketAddr>,
    /// Agent or watchdog.
    pub role: Role,
}

/// Why the process could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The async runtime did not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The kubeconfig cannot be read or used.
    #[error("cannot use the kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was found and the process is not in a cluster.
    #[error("no Kubernetes configuration found (pass --kubeconfig or set KUBECONFIG): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    /// The client cannot be built from the configuration.
    #[error("cannot create the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The agent did not start.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The Open Inference Protocol port cannot listen.
    #[error("cannot listen on {addr} for the Open Inference Protocol: {source}")]
    Oip {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The operations endpoint cannot listen.
    #[error("cannot listen on {addr} for /metrics: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A client for the cluster named by `kubeconfig`, or the inferred one.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, DaemonError> {
    let config = match kubeconfig {
        Some(path) => {
            let failed = |source| DaemonError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(failed)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(failed)?
        }
        None => kube::Config::infer().await.map_err(DaemonError::Infer)?,
    };
    Client::try_from(config).map_err(DaemonError::Client)
}

/// Runs until `shutdown` resolves, then stops gracefully.
pub async fn run(options: DaemonOptions, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let client = client(options.kubeconfig.as_deref()).await?;
    let mut listener = match options.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Metrics { addr, source })?,
        ),
        None => None,
    };
    let (ops_stop, ops_stopped) = watch::channel(false);
    let mut serve = |source: OpsSource| {
        let listener = listener.take()?;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "operations endpoint: /metrics /livez /readyz");
        }
        let mut stopped = ops_stopped.clone();
        let tls = options.ops_tls.clone();
        Some(tokio::spawn(serve_ops_tls(
            listener,
            source,
            OpsLimits::default(),
            tls,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        )))
    };
    let ops = match options.role {
        Role::Agent { config, loader } => {
            tracing::info!(host = %config.host.name, address = %config.host.advertise, "starting the node agent");
            let agent = Agent::start(client, *config, loader)?;
            if let Some(addr) = options.oip_addr {
                let bound = agent
                    .server()
                    .serve_oip(addr)
                    .await
                    .map_err(|source| DaemonError::Oip { addr, source })?;
                tracing::info!(addr = %bound, "Open Inference Protocol: /v2 (REST) and inference.GRPCInferenceService");
            }
            let ops = serve(agent.ops_source());
            shutdown.await;
            tracing::info!("stopping: endpoints go terminating, in-flight requests are answered");
            agent.shutdown().await;
            ops
        }
        Role::Watchdog(config) => {
            tracing::info!(identity = %config.identity, "starting the watchdog");
            let watchdog = Watchdog::start(client, config);
            let ops = serve(watchdog.ops_source());
            shutdown.await;
            watchdog.shutdown().await;
            ops
        }
    };
    let _ = ops_stop.send(true);
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// [`run`] on a fresh multi-threaded runtime until SIGTERM or SIGINT.
pub fn run_blocking(options: DaemonOptions) -> Result<(), DaemonError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vknf-agent")
        .build()
        .map_err(DaemonError::Runtime)?
        .block_on(run(options, vknf_server::daemon::shutdown_signal()))
}
