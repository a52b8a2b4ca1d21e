//! The port: one listener for every function of the host, HTTP/1.1 and HTTP/2 (h2c, or h2 over TLS)
//! on the same socket, gRPC told from REST by its content type (`application/grpc`), as gRPC servers
//! that share a port with REST do.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tower_service::Service as _;
use vknf_runtime::{Category, ClientBudget, MemoryBudget, Runtime};
use vknf_tls::{ConnectionBudget, Reservation};

use crate::body::{AnswerCharge, Budget, Budgeted, Deadline, Metered, Unwritten, Written};
use crate::config::OipConfig;
use crate::grpc::{GrpcService, proto::grpc_inference_service_server::GrpcInferenceServiceServer, service};
use crate::rest::{ResponseBody, respond};
use crate::service::{Inference, Readiness};

/// A running Open Inference Protocol port.
pub struct OipServer {
    addr: SocketAddr,
    inference: Arc<Inference>,
    budget: Budget,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Shared {
    inference: Arc<Inference>,
    config: OipConfig,
    budget: Budget,
    grpc: GrpcInferenceServiceServer<GrpcService>,
}

impl OipServer {
    /// Listens on `addr` and serves `runtime`'s functions by name; `readiness` answers the server
    /// readiness endpoints. Must be called inside a Tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        runtime: Runtime,
        readiness: Readiness,
        mut config: OipConfig,
    ) -> std::io::Result<OipServer> {
        let listener = TcpListener::bind(addr).await?;
        config.tls = config
            .tls
            .map(|tls| tls.with_connection_budget(tls_connection_budget(runtime.budget())));
        let addr = listener.local_addr()?;
        let budget = Budget::new(config.max_buffered_bytes, runtime.budget().clone());
        let inference = Arc::new(Inference::new(runtime, readiness));
        let shared = Arc::new(Shared {
            grpc: service(inference.clone(), config.max_body_bytes),
            inference: inference.clone(),
            budget: budget.clone(),
            config,
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared, stopped));
        tracing::info!(%addr, "Open Inference Protocol (REST and gRPC) listening");
        Ok(OipServer {
            addr,
            inference,
            budget,
            stop,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The service behind the port.
    pub fn inference(&self) -> &Arc<Inference> {
        &self.inference
    }

    /// Request bytes buffered now, across every connection (for tests of the bound).
    pub fn buffered_bytes(&self) -> usize {
        self.budget.in_use()
    }

    /// Stops accepting, lets requests in flight finish (up to the drain timeout), closes.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Reserves each TLS connection's buffers from the process's memory budget (category `tls`).
pub fn tls_connection_budget(budget: &MemoryBudget) -> ConnectionBudget {
    let budget = budget.clone();
    ConnectionBudget::new(move |bytes| {
        budget
            .try_charge(Category::Tls, bytes)
            .map(|charge| Box::new(charge) as Reservation)
            .map_err(|refusal| refusal.to_string())
    })
}

fn builder(config: &OipConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        // A client that never reads its answers cannot make the server buffer them without bound.
        .max_send_buf_size(1 << 20)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let connections = Arc::new(Semaphore::new(shared.config.max_connections.max(1)));
    let builder = builder(&shared.config);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Past the limit a connection is closed at once: nothing is read from it.
                    let Ok(permit) = connections.clone().try_acquire_owned() else { continue };
                    let _ = stream.set_nodelay(true);
                    let (shared, builder, stopped) = (shared.clone(), builder.clone(), stopped.clone());
                    tasks.spawn(async move {
                        serve_accepted(stream, shared, builder, stopped).await;
                        drop(permit);
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed on the Open Inference Protocol port");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = until_stopped(&mut stopped) => break,
        }
    }
    drop(listener);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(shared.config.drain_timeout, drain).await.is_err() {
        tasks.abort_all();
    }
}

/// The `port` label of this port's TLS handshakes.
const TLS_PORT: &str = "oip";

/// Serves one accepted connection, after a TLS handshake when the port has TLS (bounded in time;
/// the connection holds its slot meanwhile).
async fn serve_accepted(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    builder: auto::Builder<TokioExecutor>,
    mut stopped: watch::Receiver<bool>,
) {
    let Some(tls) = shared.config.tls.clone() else {
        return serve_connection(stream, shared, builder, stopped).await;
    };
    tokio::select! {
        accepted = tls.accept(TLS_PORT, stream) => {
            // A failed handshake is counted in the TLS metrics; the client saw the alert.
            if let Ok(stream) = accepted {
                serve_connection(stream, shared, builder, stopped).await;
            }
        }
        () = until_stopped(&mut stopped) => {}
    }
}

async fn serve_connection(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    shared: Arc<Shared>,
    builder: auto::Builder<TokioExecutor>,
    mut stopped: watch::Receiver<bool>,
) {
    // One account per connection: its share of the budget, and its answers not yet written.
    let client = shared.budget.process().client();
    let unwritten = Unwritten::new(&client);
    let stream = Written::new(stream, unwritten.clone());
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (shared, client, unwritten) = (shared.clone(), client.clone(), unwritten.clone());
        async move { Ok::<_, Infallible>(dispatch(&shared, &client, unwritten, request).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = until_stopped(&mut stopped) => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; it is dropped here, not held across the caller's await.
    let _ = stopped.wait_for(|stop| *stop).await.map(|_| ());
}

fn is_grpc(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Answers one request; its response body's bytes go into the connection's `unwritten` as hyper
/// takes them.
async fn dispatch(
    shared: &Shared,
    client: &ClientBudget,
    unwritten: Unwritten,
    request: Request<Incoming>,
) -> http::Response<ResponseBody> {
    let response = if is_grpc(&request) {
        let timeout = shared.config.body_timeout;
        let budget = shared.budget.clone();
        let mut request = request.map(|body| Budgeted::new(Deadline::new(body, timeout), budget, client.clone()));
        // The service charges the answer to the connection's share (see `grpc`).
        request.extensions_mut().insert(client.clone());
        let mut grpc = shared.grpc.clone();
        match grpc.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    } else {
        respond(&shared.inference, &shared.config, &shared.budget, client, request).await
    };
    let (mut parts, body) = response.into_parts();
    let answer = parts.extensions.remove::<AnswerCharge>();
    http::Response::from_parts(parts, ResponseBody::new(Metered::new(body, unwritten, answer.as_ref())))
}
