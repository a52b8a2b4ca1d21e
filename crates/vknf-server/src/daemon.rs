//! The `vknf serve` process: a server fed from a manifest directory, the operations endpoint,
//! and graceful shutdown on SIGTERM / SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::config::ServerConfig;
use crate::ops::{bind_ops, serve_ops};
use crate::server::{DirectorySource, Server};
use vknf_functions::FunctionLoader;

/// Everything `vknf serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where the functions come from.
    pub source: DirectorySource,
    /// Limits and timeouts.
    pub config: ServerConfig,
    /// Address of `/metrics`, `/livez` and `/readyz`, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Address of the Open Inference Protocol port (REST and gRPC for every function), if any.
    pub oip_addr: Option<SocketAddr>,
}

/// A started `vknf serve`: the server, watching its directory, and the operations endpoint.
pub struct Daemon {
    server: Server,
    ops_addr: Option<SocketAddr>,
    ops_stop: watch::Sender<bool>,
    ops_task: Option<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    /// Starts serving (inside a Tokio runtime).
    pub async fn start(options: ServeOptions, loader: Arc<dyn FunctionLoader>) -> anyhow::Result<Daemon> {
        let dir = &options.source.dir;
        anyhow::ensure!(dir.is_dir(), "manifest directory {} does not exist", dir.display());
        let server = Server::start(options.config, loader);
        let (ops_stop, ops_stopped) = watch::channel(false);
        let (ops_addr, ops_task) = match options.metrics_addr {
            Some(addr) => {
                let listener = bind_ops(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} for /metrics"))?;
                let bound = listener.local_addr()?;
                tracing::info!(addr = %bound, "operations endpoint: /metrics /livez /readyz");
                let server = server.clone();
                let mut stopped = ops_stopped;
                let task = tokio::spawn(async move {
                    serve_ops(listener, server, async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    })
                    .await;
                });
                (Some(bound), Some(task))
            }
            None => (None, None),
        };
        if let Some(addr) = options.oip_addr {
            let bound = server
                .serve_oip(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the Open Inference Protocol"))?;
            tracing::info!(addr = %bound, "Open Inference Protocol: /v2 (REST) and inference.GRPCInferenceService");
        }
        server.watch_directory(options.source);
        Ok(Daemon {
            server,
            ops_addr,
            ops_stop,
            ops_task,
        })
    }

    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Where the Open Inference Protocol is served.
    pub fn oip_addr(&self) -> Option<SocketAddr> {
        self.server.oip_addr()
    }

    /// Where `/metrics`, `/livez` and `/readyz` are served.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// Serves until `shutdown` resolves, then stops accepting, answers everything admitted and
    /// returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        tracing::info!("shutting down: no new connections; answering what was admitted");
        self.server.shutdown().await;
        let _ = self.ops_stop.send(true);
        if let Some(task) = self.ops_task {
            let _ = task.await;
        }
        tracing::info!("shut down");
    }
}

/// Serves until `shutdown` resolves (see [`Daemon`]).
pub async fn serve(
    options: ServeOptions,
    loader: Arc<dyn FunctionLoader>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Daemon::start(options, loader).await?.run_until(shutdown).await;
    Ok(())
}

/// Resolves at the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// [`serve`] on a fresh multi-threaded runtime until SIGTERM / SIGINT.
pub fn serve_blocking(options: ServeOptions, loader: Arc<dyn FunctionLoader>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vknf-serve")
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(options, loader, shutdown_signal()))
}
