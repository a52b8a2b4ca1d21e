//! The agent's operations endpoint: `GET /metrics` (the server's and the agent's metrics in one
//! OpenMetrics document), `/livez` and `/readyz`.

use std::convert::Infallible;
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

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// What the endpoint reports.
#[derive(Clone)]
pub struct OpsSource {
    /// The metrics document.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// `Ok(text)` when ready, `Err(problems)` when not.
    pub readiness: Arc<dyn Fn() -> Result<String, String> + Send + Sync>,
}

/// Serves the endpoint on `listener` until `shutdown` resolves.
pub async fn serve_ops(listener: TcpListener, source: OpsSource, shutdown: impl Future<Output = ()>) {
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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn metrics_liveness_and_readiness_are_served() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ready.clone();
        let source = OpsSource {
            metrics: Arc::new(|| "vknf_agent_reconciles_total 2\n# EOF\n".to_owned()),
            readiness: Arc::new(move || {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok("ready\n".into())
                } else {
                    Err("not ready\nx\n".into())
                }
            }),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_ops(listener, source, async move {
            let _ = stopped.await;
        }));
        let metrics = get(addr, "/metrics").await;
        assert!(
            metrics.starts_with("HTTP/1.1 200") && metrics.contains("vknf_agent_reconciles_total 2"),
            "{metrics}"
        );
        assert!(get(addr, "/livez").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        let _ = stop.send(());
        server.await.unwrap();
    }
}
