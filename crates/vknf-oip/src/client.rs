//! What another vknf process asks of an Open Inference Protocol port: a model's metadata (`vknf
//! classify --addr` reads from it the feature schema digest the served traffic model was trained
//! with). One HTTP/1.1 request on a fresh plaintext connection, bounded in time and size.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;

use crate::names::model_name;

/// The largest model metadata answer read; a larger one is an error (metadata is a few KB).
pub const MAX_METADATA_BYTES: usize = 1 << 20;

/// Why a model's metadata could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The port did not accept a connection.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The exchange failed (not HTTP: a TLS port?), or the answer was too large.
    #[error("the request failed: {0}")]
    Http(String),
    /// The answer was not 200 OK.
    #[error("HTTP {status}: {body}")]
    Status {
        /// Its status code.
        status: u16,
        /// Its body, as text.
        body: String,
    },
    /// The answer was not JSON.
    #[error("the model metadata is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// No answer within the time given.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// `GET /v2/models/{model}` on the plaintext port at `addr`, for `function` (`namespace/name`, or a
/// name loaded in process), within `timeout`: the model metadata (`name`, `platform`, `inputs`,
/// `outputs`, and vknf's `parameters`).
pub async fn model_metadata(
    addr: SocketAddr,
    function: &str,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    tokio::time::timeout(timeout, ask(addr, function))
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

async fn ask(addr: SocketAddr, function: &str) -> Result<serde_json::Value, ClientError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(ClientError::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    // The connection is driven beside the request; it ends with it (the sender is dropped).
    let driver = tokio::spawn(connection);
    let request = http::Request::get(format!("/v2/models/{}", model_name(function)))
        .header(http::header::HOST, addr.to_string())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = answer.status();
    let body = Limited::new(answer.into_body(), MAX_METADATA_BYTES)
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    drop(sender);
    driver.abort();
    if status != http::StatusCode::OK {
        return Err(ClientError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }
    Ok(serde_json::from_slice(&body)?)
}
