//! The operations endpoint: `GET /metrics` (Prometheus / OpenMetrics text), `GET /livez`
//! (the process answers) and `GET /readyz` (every function this host should serve is loaded and
//! listening; otherwise 503 with one line per problem).

use std::convert::Infallible;
use std::net::SocketAddr;

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

/// Serves the operations endpoint on `listener` until `shutdown` resolves.
pub async fn serve_ops(listener: TcpListener, server: Server, shutdown: impl Future<Output = ()>) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let server = server.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| respond(request, server.clone()));
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

async fn respond(request: Request<Incoming>, server: Server) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = if request.method() != Method::GET {
        (StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET is served\n".to_owned())
    } else {
        match request.uri().path() {
            "/metrics" => (StatusCode::OK, OPENMETRICS, server.encode_metrics()),
            "/livez" => (StatusCode::OK, TEXT, "ok\n".to_owned()),
            "/readyz" => {
                let status = server.status();
                if status.is_ready() {
                    (
                        StatusCode::OK,
                        TEXT,
                        format!("ready: {} functions serving\n", status.functions.len()),
                    )
                } else {
                    let mut body = String::from("not ready\n");
                    for problem in status.problems() {
                        body.push_str(&problem);
                        body.push('\n');
                    }
                    (StatusCode::SERVICE_UNAVAILABLE, TEXT, body)
                }
            }
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
