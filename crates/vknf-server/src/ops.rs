//! The operations endpoint: `GET /metrics` (Prometheus / OpenMetrics text), `GET /livez`
//! (the process answers) and `GET /readyz` (ready, or 503 with one line per problem).
//!
//! One implementation serves every process: [`OpsSource`] says what to report, so `vknf serve`
//! ([`serve_ops`], from a [`Server`]) and the Kubernetes agent (its own metrics merged in) share
//! the same accept loop and the same responses.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};
use vknf_tls::ServerTls;

use crate::server::Server;

/// The `port` label of this endpoint's TLS handshakes.
const TLS_PORT: &str = "ops";

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// What the operations endpoint reports; each call reads the current state.
#[derive(Clone)]
pub struct OpsSource {
    /// The metrics document (OpenMetrics text).
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// `Ok(text)` when ready, `Err(problems)` when not.
    pub readiness: Arc<dyn Fn() -> Result<String, String> + Send + Sync>,
}

impl OpsSource {
    /// Reports `server`: its metrics, and ready when every function it should serve is loaded
    /// and listening.
    pub fn for_server(server: Server) -> Self {
        let ready_server = server.clone();
        Self {
            metrics: Arc::new(move || server.encode_metrics()),
            readiness: Arc::new(move || server_readiness(&ready_server)),
        }
    }
}

/// `Ok` with the number of functions serving, or `Err` with one line per problem. Anyone who reaches
/// the port reads this, so a problem is named (function, annotation, port, stage) but the values it
/// quotes from manifests are not repeated: the server's log has them.
fn server_readiness(server: &Server) -> Result<String, String> {
    let status = server.status();
    if status.is_ready() {
        let mut body = format!("ready: {} functions serving\n", status.functions.len());
        for problem in status.device_problems() {
            body.push_str(&format!("{}\n", without_values(&problem)));
        }
        return Ok(body);
    }
    let mut body = String::from("not ready\n");
    if status.generation == 0 {
        body.push_str("functions not loaded yet\n");
    }
    if let Some(error) = &status.source_error {
        body.push_str(&format!(
            "manifests: {} (details in the server's log)\n",
            without_values(error)
        ));
    }
    for (key, function) in &status.functions {
        if let crate::FunctionStatus::Failed { reason, .. } = function {
            body.push_str(&format!(
                "{key}: {} (details in the server's log)\n",
                without_values(reason)
            ));
        }
    }
    for problem in status.device_problems() {
        body.push_str(&format!("{}\n", without_values(&problem)));
    }
    Err(body)
}

/// What a problem is about, without the values it quotes: the text before its first ':' (the
/// annotation, port, file or stage at fault).
fn without_values(reason: &str) -> &str {
    reason.split(':').next().unwrap_or(reason).trim()
}

/// Serves the operations endpoint for `server` on `listener` until `shutdown` resolves, over TLS when
/// the server has a TLS set-up.
pub async fn serve_ops(listener: TcpListener, server: Server, shutdown: impl Future<Output = ()>) {
    let tls = server.tls().cloned();
    serve_ops_tls(
        listener,
        OpsSource::for_server(server),
        OpsLimits::default(),
        tls,
        shutdown,
    )
    .await;
}

/// Bounds of the operations endpoint: it is reachable by more than the scraper, so neither many nor
/// slow nor idle connections may take file descriptors or memory without limit.
#[derive(Debug, Clone)]
pub struct OpsLimits {
    /// Open connections at most; at the cap the oldest is closed when another is accepted.
    pub max_connections: usize,
    /// A request's headers must arrive within this, and an idle keep-alive connection is closed after it.
    pub header_timeout: Duration,
    /// Longest a connection may stay open, whatever it does.
    pub max_connection_lifetime: Duration,
}

impl Default for OpsLimits {
    fn default() -> Self {
        OpsLimits {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            max_connection_lifetime: Duration::from_secs(60),
        }
    }
}

/// Serves the operations endpoint reporting `source` on `listener` until `shutdown` resolves, with the
/// default [`OpsLimits`].
pub async fn serve_ops_source(listener: TcpListener, source: OpsSource, shutdown: impl Future<Output = ()>) {
    serve_ops_with_limits(listener, source, OpsLimits::default(), shutdown).await;
}

/// Serves the operations endpoint reporting `source` on `listener` within `limits` until `shutdown`
/// resolves.
pub async fn serve_ops_with_limits(
    listener: TcpListener,
    source: OpsSource,
    limits: OpsLimits,
    shutdown: impl Future<Output = ()>,
) {
    serve_ops_tls(listener, source, limits, None, shutdown).await;
}

/// Serves the operations endpoint reporting `source` on `listener` within `limits`, over TLS when
/// `tls` is set (ALPN `http/1.1`; a handshake is bounded by the TLS set-up's timeout and holds a
/// connection slot meanwhile), until `shutdown` resolves.
pub async fn serve_ops_tls(
    listener: TcpListener,
    source: OpsSource,
    limits: OpsLimits,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()>,
) {
    let tls = tls.map(|tls| tls.with_alpn(&[vknf_tls::alpn::HTTP_1_1]));
    let mut connections = JoinSet::new();
    // Open connections, oldest first. At the cap the oldest is closed to make room for the new one:
    // refusing the newcomer instead would let a flood of connections that never finish a request keep
    // every liveness probe out for their whole header timeout.
    let mut open: VecDeque<AbortHandle> = VecDeque::new();
    let cap = limits.max_connections.max(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning a core.
                        tracing::warn!(%error, "operations endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if open.len() >= cap
                    && let Some(oldest) = open.pop_front()
                {
                    oldest.abort();
                }
                let (source, limits, tls) = (source.clone(), limits.clone(), tls.clone());
                let connection = connections.spawn(async move {
                    // The lifetime bound covers the handshake too.
                    let _ = tokio::time::timeout(limits.max_connection_lifetime, async {
                        match tls {
                            None => serve_http(stream, source, &limits).await,
                            Some(tls) => {
                                if let Ok(stream) = tls.accept(TLS_PORT, stream).await {
                                    serve_http(stream, source, &limits).await;
                                }
                            }
                        }
                    })
                    .await;
                });
                open.push_back(connection);
            }
            Some(ended) = connections.join_next_with_id(), if !connections.is_empty() => {
                let id = match ended {
                    Ok((id, ())) => id,
                    Err(error) => error.id(),
                };
                open.retain(|connection| connection.id() != id);
            }
            () = &mut shutdown => break,
        }
    }
    connections.abort_all();
}

/// Serves HTTP/1.1 requests on one connection until it closes or its headers are late.
async fn serve_http(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    source: OpsSource,
    limits: &OpsLimits,
) {
    let service = service_fn(move |request| respond(request, source.clone()));
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Binds the operations endpoint.
pub async fn bind_ops(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn respond(request: Request<Incoming>, source: OpsSource) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = if request.method() != Method::GET {
        (StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET is served\n".to_owned())
    } else {
        match request.uri().path() {
            "/metrics" => (StatusCode::OK, OPENMETRICS, (source.metrics)()),
            "/livez" => (StatusCode::OK, TEXT, "ok\n".to_owned()),
            "/readyz" => match (source.readiness)() {
                Ok(text) => (StatusCode::OK, TEXT, text),
                Err(problems) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, problems),
            },
            _ => (
                StatusCode::NOT_FOUND,
                TEXT,
                "not found: try /metrics, /livez or /readyz\n".to_owned(),
            ),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn send(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn a_source_is_served_as_metrics_liveness_and_readiness() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let source = OpsSource {
            metrics: Arc::new(|| "vknf_agent_reconciles_total 2\n# EOF\n".to_owned()),
            readiness: Arc::new(move || {
                if flag.load(Ordering::SeqCst) {
                    Ok("ready\n".into())
                } else {
                    Err("not ready\nx\n".into())
                }
            }),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(serve_ops_source(listener, source, async move {
            let _ = stopped.await;
        }));
        let metrics = send(addr, "GET", "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(
            metrics.starts_with("HTTP/1.1 200")
                && metrics.contains(OPENMETRICS)
                && metrics.contains("vknf_agent_reconciles_total 2"),
            "{metrics}"
        );
        assert!(send(addr, "GET", "/livez").await.starts_with("HTTP/1.1 200"));
        let not_ready = send(addr, "GET", "/readyz").await;
        assert!(
            not_ready.starts_with("HTTP/1.1 503") && not_ready.ends_with("not ready\nx\n"),
            "{not_ready}"
        );
        ready.store(true, Ordering::SeqCst);
        assert!(send(addr, "GET", "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(send(addr, "GET", "/nope").await.starts_with("HTTP/1.1 404"));
        assert!(send(addr, "POST", "/metrics").await.starts_with("HTTP/1.1 405"));
        let _ = stop.send(());
        serving.await.unwrap();
    }

    #[test]
    fn problems_are_named_without_the_values_they_quote() {
        assert_eq!(
            without_values("annotation vknf.io/max-batch-rows: \"db-password=hunter2\" is not a non-negative integer"),
            "annotation vknf.io/max-batch-rows"
        );
        assert_eq!(
            without_values("cannot listen on port 7000: Address in use"),
            "cannot listen on port 7000"
        );
        assert_eq!(without_values("functions not loaded yet"), "functions not loaded yet");
    }

    /// An endpoint that is always ready, served within `limits`: its address, how to stop it, and the
    /// task serving it.
    async fn serve_within(
        limits: OpsLimits,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let source = OpsSource {
            metrics: Arc::new(String::new),
            readiness: Arc::new(|| Ok("ready\n".into())),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(serve_ops_with_limits(listener, source, limits, async move {
            let _ = stopped.await;
        }));
        (addr, stop, serving)
    }

    #[tokio::test]
    async fn idle_and_excess_connections_cannot_lock_the_endpoint_out() {
        let (addr, stop, serving) = serve_within(OpsLimits {
            max_connections: 8,
            header_timeout: Duration::from_millis(300),
            max_connection_lifetime: Duration::from_secs(10),
        })
        .await;
        // Forty connections that never send a byte, and one that sends half a request head.
        let mut idle = Vec::new();
        for _ in 0..40 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /livez HTTP/1.1\r\nHo").await.unwrap();
        // The oldest are closed as newer ones arrive past the cap; the others when their headers are late.
        let mut closed = 0;
        for stream in idle.iter_mut().chain(std::iter::once(&mut slow)) {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
            if matches!(read, Ok(Ok(0) | Err(_))) {
                closed += 1;
            }
        }
        assert_eq!(closed, 41, "every idle or slow connection was closed");
        assert!(send(addr, "GET", "/livez").await.starts_with("HTTP/1.1 200"));
        let _ = stop.send(());
        serving.await.unwrap();
    }

    #[tokio::test]
    async fn a_flood_of_silent_connections_cannot_keep_a_probe_out() {
        // Headers may take half a minute: the flood holds every slot for the whole test unless evicted.
        let (addr, stop, serving) = serve_within(OpsLimits {
            max_connections: 8,
            header_timeout: Duration::from_secs(30),
            max_connection_lifetime: Duration::from_secs(60),
        })
        .await;
        let mut flood = Vec::new();
        for _ in 0..40 {
            flood.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Every slot is taken by a silent connection, yet the probe is answered.
        for _ in 0..3 {
            let answer = tokio::time::timeout(Duration::from_secs(10), send(addr, "GET", "/livez"))
                .await
                .expect("the probe is answered while the flood holds the slots");
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        // The oldest of the flood were closed to make room; at most the cap stay open.
        let mut closed = 0;
        for stream in flood.iter_mut() {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await;
            if matches!(read, Ok(Ok(0) | Err(_))) {
                closed += 1;
            }
        }
        assert!(closed >= 40 - 8, "{closed} of 40 silent connections closed");
        let _ = stop.send(());
        serving.await.unwrap();
    }
}
