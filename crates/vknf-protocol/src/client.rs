//! An async, pipelined client of the vknf protocol.
//!
//! Every call gets a fresh request id and may be issued concurrently from many tasks over one
//! connection; answers are matched by id, in whatever order the server sends them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use vknf_tls::ClientTls;

use crate::codec::{
    Decoded, Description, ErrorBody, ErrorCode, FrameDecoder, FrameError, FrameType, ResponseBody, encode_describe,
    encode_request,
};

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Connecting or talking to the server failed.
    #[error("connection failed: {0}")]
    Io(String),
    /// The server answered with an error frame.
    #[error("server error {code}: {message}")]
    Server {
        /// The error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server sent something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] FrameError),
    /// The connection closed before the answer came.
    #[error("connection closed before the answer arrived{}", .0.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Closed(Option<String>),
    /// The call's arguments do not form a valid request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl ClientError {
    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// An answer of the server.
#[derive(Debug)]
pub(crate) enum Answer {
    Response(ResponseBody),
    Description(Description),
}

type Pending = Arc<Mutex<PendingCalls>>;

#[derive(Default)]
struct PendingCalls {
    calls: HashMap<u64, oneshot::Sender<Result<Answer, ClientError>>>,
    /// Set once the connection is finished; later calls fail at once with this.
    closed: Option<ClientError>,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Largest answer payload accepted.
    pub max_payload: u32,
    /// Frames queued for writing before callers wait.
    pub write_queue: usize,
    /// TLS to the server, when set; the server's certificate is checked for the set-up's server name,
    /// else for the IP address connected to ([`ClientTls::with_default_server_name`]).
    pub tls: Option<ClientTls>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            max_payload: 256 << 20,
            write_queue: 1024,
            tls: None,
        }
    }
}

/// A connection to one function.
pub struct Client {
    outgoing: mpsc::Sender<Bytes>,
    pending: Pending,
    next_id: AtomicU64,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Client {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Client {
    /// Connects with default settings.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        Client::connect_with(addr, ClientConfig::default()).await
    }

    /// Connects.
    pub async fn connect_with(addr: impl ToSocketAddrs, config: ClientConfig) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        match &config.tls {
            None => {
                let (reader, writer) = stream.into_split();
                Ok(Client::start(reader, writer, &config))
            }
            Some(tls) => {
                let stream = tls
                    .connect(stream)
                    .await
                    .map_err(|e| ClientError::Io(format!("TLS handshake: {e}")))?;
                let (reader, writer) = tokio::io::split(stream);
                Ok(Client::start(reader, writer, &config))
            }
        }
    }

    fn start(
        reader: impl AsyncRead + Unpin + Send + 'static,
        writer: impl AsyncWrite + Unpin + Send + 'static,
        config: &ClientConfig,
    ) -> Client {
        let pending: Pending = Arc::default();
        let (outgoing, rx) = mpsc::channel(config.write_queue.max(1));
        let write_task = tokio::spawn(write_loop(writer, rx, pending.clone()));
        let read_task = tokio::spawn(read_loop(
            reader,
            FrameDecoder::new(config.max_payload),
            pending.clone(),
        ));
        Client {
            outgoing,
            pending,
            next_id: AtomicU64::new(1),
            tasks: [write_task, read_task],
        }
    }

    /// Runs `rows` (row-major, `n_features` per row) through the function. `output_mask` asks
    /// for on-request outputs (bit `i` = output `i`); outputs that are always computed come
    /// back regardless.
    pub async fn infer(&self, n_features: u32, rows: &[f32], output_mask: u32) -> Result<ResponseBody, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = BytesMut::new();
        encode_request(&mut frame, id, n_features, output_mask, rows)
            .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
        match self.call(id, frame.freeze()).await? {
            Answer::Response(body) => Ok(body),
            Answer::Description(_) => Err(FrameError::Malformed("description sent for a request".into()).into()),
        }
    }

    /// Asks for the function's name and shape.
    pub async fn describe(&self) -> Result<Description, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = BytesMut::new();
        encode_describe(&mut frame, id);
        match self.call(id, frame.freeze()).await? {
            Answer::Description(description) => Ok(description),
            Answer::Response(_) => Err(FrameError::Malformed("response sent for a describe".into()).into()),
        }
    }

    async fn call(&self, id: u64, frame: Bytes) -> Result<Answer, ClientError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock();
            if let Some(error) = &pending.closed {
                return Err(error.clone());
            }
            pending.calls.insert(id, tx);
        }
        if self.outgoing.send(frame).await.is_err() {
            self.pending.lock().calls.remove(&id);
            return Err(ClientError::Closed(None));
        }
        rx.await.unwrap_or(Err(ClientError::Closed(None)))
    }
}

/// What an answer frame says: a response, a description or the server's error.
pub(crate) fn parse_answer(frame: crate::codec::Frame) -> Result<Answer, ClientError> {
    match frame.header.frame_type {
        FrameType::Response => ResponseBody::parse(frame.payload)
            .map(Answer::Response)
            .map_err(Into::into),
        FrameType::Description => Description::parse(&frame.payload)
            .map(Answer::Description)
            .map_err(Into::into),
        FrameType::Error => match ErrorBody::parse(&frame.payload) {
            Ok(body) => Err(ClientError::Server {
                code: body.code,
                message: body.message,
            }),
            Err(error) => Err(error.into()),
        },
        other => Err(FrameError::Unsupported(format!("frame type {} from the server", other.code())).into()),
    }
}

fn finish(pending: &Pending, error: ClientError) {
    let calls = {
        let mut pending = pending.lock();
        pending.closed.get_or_insert(error.clone());
        std::mem::take(&mut pending.calls)
    };
    for (_, call) in calls {
        let _ = call.send(Err(error.clone()));
    }
}

async fn write_loop(mut writer: impl AsyncWrite + Unpin, mut rx: mpsc::Receiver<Bytes>, pending: Pending) {
    while let Some(frame) = rx.recv().await {
        let mut result = writer.write_all(&frame).await;
        while let (Ok(()), Ok(frame)) = (&result, rx.try_recv()) {
            result = writer.write_all(&frame).await;
        }
        if result.is_ok() {
            // TLS may hold the last records back; TCP holds nothing.
            result = writer.flush().await;
        }
        if let Err(error) = result {
            finish(&pending, ClientError::Io(error.to_string()));
            return;
        }
    }
}

async fn read_loop(mut reader: impl AsyncRead + Unpin, mut decoder: FrameDecoder, pending: Pending) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // A connection-level error (request id 0) explains why the server hung up.
    let mut last_word: Option<String> = None;
    loop {
        loop {
            let decoded = match decoder.decode(&mut buf) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(error) => return finish(&pending, error.into()),
            };
            let Decoded::Frame(frame) = decoded else {
                return finish(
                    &pending,
                    ClientError::Protocol(FrameError::Malformed("answer too large".into())),
                );
            };
            let id = frame.header.request_id;
            let answer = parse_answer(frame);
            let call = pending.lock().calls.remove(&id);
            match call {
                Some(call) => {
                    let _ = call.send(answer);
                }
                None => {
                    if let Err(error) = answer {
                        last_word = Some(error.to_string());
                    }
                }
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => return finish(&pending, ClientError::Closed(last_word)),
            Ok(_) => {}
            Err(error) => return finish(&pending, ClientError::Io(error.to_string())),
        }
    }
}
