//! The binary protocol's front end: one TCP listener per function (the paper's per-function ports),
//! connections that decode frames (codec in vknf-protocol), submit calls to the function runtime and
//! write the answers.

mod connection;
mod outbox;
mod reply;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use vknf_runtime::{ClientBudget, FunctionHandle, MemoryBudget, Metrics};

use crate::config::ServerConfig;
use crate::metrics::ServerMetrics;

/// The `port` label of the binary protocol's TLS handshakes.
const TLS_PORT: &str = "binary";

/// Decrements the connection gauge however the connection task ends.
struct ConnectionGuard {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: ServerMetrics,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.connections.dec();
    }
}

async fn until_closing(closing: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here rather than in the caller's select.
    let _ = closing.wait_for(|closing| *closing).await.map(|_| ());
}

/// Everything a function's listener shares with its connections.
pub(crate) struct Listener {
    pub(crate) function: FunctionHandle,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) metrics: Metrics,
    pub(crate) server_metrics: ServerMetrics,
    pub(crate) connections: Arc<Semaphore>,
    /// The process's memory budget; each connection gets its own account in it.
    pub(crate) budget: MemoryBudget,
}

/// Accepts connections for one function until it closes, then waits for its connections to finish.
pub(crate) async fn accept_loop(socket: TcpListener, listener: Listener) {
    let Listener {
        function,
        config,
        metrics,
        server_metrics,
        connections,
        budget,
    } = listener;
    let mut closing = function.closing();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, _)) => match connections.clone().try_acquire_owned() {
                    Ok(permit) => {
                        server_metrics.connections.inc();
                        let guard = ConnectionGuard { _permit: permit, metrics: server_metrics.clone() };
                        let (function, config, metrics) = (function.clone(), config.clone(), metrics.clone());
                        let client = budget.client();
                        tasks.spawn(async move {
                            serve(stream, function, config, metrics, client).await;
                            drop(guard);
                        });
                    }
                    Err(_) => {
                        server_metrics.refused_connections.inc();
                        // On TLS the BUSY frame would need a handshake first, which is what the
                        // limit is there to spare: the connection is just closed.
                        if config.tls.is_none() {
                            tasks.spawn(connection::refuse_connection(stream, config.write_timeout));
                        }
                    }
                },
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(function = %function.name(), %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = until_closing(&mut closing) => break,
        }
    }
    drop(socket);
    while tasks.join_next().await.is_some() {}
}

/// Serves one accepted connection, in plain TCP or, when the server has a TLS set-up, after a
/// handshake bounded in time (the connection holds its slot meanwhile, so handshakes count against
/// the connection limit).
async fn serve(
    stream: TcpStream,
    function: FunctionHandle,
    config: Arc<ServerConfig>,
    metrics: Metrics,
    client: ClientBudget,
) {
    let Some(tls) = config.tls.clone() else {
        let (reader, writer) = transport::split_tcp(stream);
        connection::serve_connection(reader, writer, function, config, metrics, client).await;
        return;
    };
    let mut closing = function.closing();
    let stream = tokio::select! {
        accepted = tls.accept(TLS_PORT, stream) => match accepted {
            Ok(stream) => stream,
            // Counted in the TLS metrics; the client sees the alert or the closed socket.
            Err(_) => return,
        },
        () = until_closing(&mut closing) => return,
    };
    let (reader, writer) = transport::split_tls(stream);
    connection::serve_connection(reader, writer, function, config, metrics, client).await;
}
