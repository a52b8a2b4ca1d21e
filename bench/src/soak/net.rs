//! Connections of the soak's clients: plain TCP or TLS, raw frames of the binary protocol read back
//! with the project's decoder, and a minimal HTTP/1.1 client for the ops and Open Inference ports.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use vknf_protocol::{Decoded, ErrorBody, ErrorCode, Frame, FrameDecoder, FrameType};
use vknf_tls::ClientTls;

/// A byte stream to the server, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Pin<Box<dyn Stream>>;

/// Opens connections the way every client of one run must: over TLS when the server speaks it.
#[derive(Clone)]
pub struct Dialer {
    /// The TLS set-up, when the server's ports speak TLS.
    pub tls: Option<ClientTls>,
}

impl Dialer {
    /// Connects to `addr` (TLS handshake included), within `timeout`.
    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<BoxStream> {
        let connect = async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, io::Error>(match &self.tls {
                None => Box::pin(stream) as BoxStream,
                Some(tls) => Box::pin(tls.connect(stream).await?) as BoxStream,
            })
        };
        tokio::time::timeout(timeout, connect)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))
    }

    /// Connects over plain TCP only (for clients whose attack is the TCP connection itself).
    pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))
    }
}

/// What waiting for the server's next frame gave.
#[derive(Debug)]
pub enum Incoming {
    /// A frame.
    Frame(Frame),
    /// The server closed the connection (end of stream or reset).
    Closed,
    /// Nothing came in time.
    TimedOut,
}

impl Incoming {
    /// The error code when this is an error frame.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Incoming::Frame(frame) if frame.header.frame_type == FrameType::Error => {
                ErrorBody::parse(&frame.payload).ok().map(|body| body.code)
            }
            _ => None,
        }
    }
}

/// A connection that writes whatever bytes a client chooses and reads the server's frames.
pub struct RawConn {
    stream: BoxStream,
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl RawConn {
    /// Wraps a connected stream.
    pub fn new(stream: BoxStream) -> RawConn {
        RawConn {
            stream,
            decoder: FrameDecoder::new(256 << 20),
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// Writes `bytes`, within `timeout`.
    pub async fn send(&mut self, bytes: &[u8], timeout: Duration) -> io::Result<()> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(timeout, write)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")))
    }

    /// The server's next frame, within `timeout`.
    pub async fn next_frame(&mut self, timeout: Duration) -> Incoming {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Decoded::Frame(frame))) => return Incoming::Frame(frame),
                Ok(Some(Decoded::Oversized(_))) | Err(_) => return Incoming::Closed,
                Ok(None) => {}
            }
            self.buf.reserve(64 * 1024);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Incoming::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => return Incoming::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Waits for the answer to `request_id` (frames for other ids are skipped), within `timeout`.
    pub async fn answer_to(&mut self, request_id: u64, timeout: Duration) -> Incoming {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Incoming::Frame(frame) if frame.header.request_id != request_id && frame.header.request_id != 0 => {}
                other => return other,
            }
        }
    }

    /// Reads and throws away what the server sends until it closes the connection or sends nothing
    /// for `idle`: the bytes read, and whether the connection ended.
    pub async fn drain(&mut self, idle: Duration) -> (u64, bool) {
        let mut total = self.buf.len() as u64;
        self.buf.clear();
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            match tokio::time::timeout(idle, self.stream.read(&mut chunk)).await {
                Err(_) => return (total, false),
                Ok(Ok(0)) | Ok(Err(_)) => return (total, true),
                Ok(Ok(n)) => total += n as u64,
            }
        }
    }

    /// Shuts the writing side down (end of stream to the server).
    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

/// An HTTP/1.1 response: status and body.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// Why an HTTP request got no response.
#[derive(Debug)]
pub enum HttpError {
    /// The request could not be written (the server had closed the connection): nothing was asked.
    NotSent(io::Error),
    /// The request was written and no response came.
    NoResponse(io::Error),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::NotSent(error) => write!(f, "request not sent: {error}"),
            HttpError::NoResponse(error) => write!(f, "no response: {error}"),
        }
    }
}

/// One HTTP/1.1 keep-alive connection.
pub struct HttpConn {
    stream: BoxStream,
    buf: Vec<u8>,
    host: String,
    /// The server said `Connection: close` (or the connection broke): open another for the next request.
    pub finished: bool,
}

impl HttpConn {
    /// Connects to `addr`.
    pub async fn connect(dialer: &Dialer, addr: SocketAddr, timeout: Duration) -> io::Result<HttpConn> {
        Ok(HttpConn {
            stream: dialer.connect(addr, timeout).await?,
            buf: Vec::new(),
            host: addr.to_string(),
            finished: false,
        })
    }

    /// Sends a request and reads its response, within `timeout`.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "HTTP request timed out");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let write = async {
            self.stream.write_all(head.as_bytes()).await?;
            self.stream.write_all(body).await?;
            self.stream.flush().await
        };
        let written = tokio::time::timeout_at(deadline, write)
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        if let Err(error) = written {
            self.finished = true;
            return Err(HttpError::NotSent(error));
        }
        let response = tokio::time::timeout_at(deadline, self.read_response())
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        response.map_err(|error| {
            self.finished = true;
            HttpError::NoResponse(error)
        })
    }

    async fn read_response(&mut self) -> io::Result<HttpResponse> {
        let header_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..header_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no HTTP status line"))?;
        let header = |name: &str| {
            head.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
            })
        };
        if header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            self.finished = true;
        }
        self.buf.drain(..header_end);
        let body = if let Some(length) = header("content-length") {
            let length: usize = length.parse().map_err(|_| bad("bad Content-Length"))?;
            while self.buf.len() < length {
                self.fill().await?;
            }
            self.buf.drain(..length).collect()
        } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            self.read_chunked().await?
        } else {
            // No length: the body runs to the end of the stream.
            self.finished = true;
            while self.fill().await.is_ok() {}
            std::mem::take(&mut self.buf)
        };
        Ok(HttpResponse { status, body })
    }

    async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = find(&self.buf, b"\r\n") {
                    break at;
                }
                self.fill().await?;
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// One request on a fresh connection (the ops port's probes and scrapes).
pub async fn http_once(dialer: &Dialer, addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<HttpResponse> {
    let started = tokio::time::Instant::now();
    let mut conn = HttpConn::connect(dialer, addr, timeout).await?;
    let left = timeout.saturating_sub(started.elapsed());
    conn.request("GET", path, b"", left)
        .await
        .map_err(|error| io::Error::other(error.to_string()))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}
