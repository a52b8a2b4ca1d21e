//! The operations endpoint: `GET /metrics` (Prometheus / OpenMetrics text), `GET /livez`
//! (the process answers) and `GET /readyz` (ready, or 503 with one line per problem).
//!
//! One implementation serves every process: [`OpsSource`] says what to report, so `vknf serve`
//! ([`serve_ops`], from a [`Server`]) and the Kubernetes agent (its own metrics merged in) share
//! the same accept loop and the same responses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::server::Server;

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

/// `Ok` with the number of functions serving, or `Err` with one line per problem.
fn server_readiness(server: &Server) -> Result<String, String> {
    let status = server.status();
    if status.is_ready() {
        Ok(format!("ready: {} functions serving\n", status.functions.len()))
    } else {
        let mut body = String::from("not ready\n");
        for problem in status.problems() {
            body.push_str(&problem);
            body.push('\n');
        }
        Err(body)
    }
}

/// Serves the operations endpoint for `server` on `listener` until `shutdown` resolves.
pub async fn serve_ops(listener: TcpListener, server: Server, shutdown: impl Future<Output = ()>) {
    serve_ops_source(listener, OpsSource::for_server(server), shutdown).await;
}

/// Serves the operations endpoint reporting `source` on `listener` until `shutdown` resolves.
pub async fn serve_ops_source(listener: TcpListener, source: OpsSource, shutdown: impl Future<Output = ()>) {
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let source = source.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| respond(request, source.clone()));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    connections.abort_all();
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
}
