//! A blocking client of the vknf protocol: one request at a time on the calling thread, no async
//! runtime. For scripts, for callers that are threads already, and for measuring a server's latency
//! without an async client's task hand-offs in the figure.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::BytesMut;
use vknf_tls::ClientTls;

use crate::client::{Answer, ClientError, parse_answer};
use crate::codec::{Decoded, Description, FrameDecoder, FrameError, ResponseBody, encode_describe, encode_request};

/// A connection to one function, used by one thread.
pub struct BlockingClient {
    stream: Transport,
    answers: AnswerReader,
    write_buf: BytesMut,
    next_id: u64,
}

/// A blocking connection: TCP, or TLS over TCP.
enum Transport {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Transport::Tcp(stream) => stream.read(buf),
            Transport::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Transport::Tcp(stream) => stream.write(buf),
            Transport::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Tcp(stream) => stream.flush(),
            Transport::Tls(stream) => stream.flush(),
        }
    }
}

/// Reads answer frames from a blocking socket.
pub(crate) struct AnswerReader {
    decoder: FrameDecoder,
    buf: BytesMut,
    scratch: Box<[u8]>,
}

impl AnswerReader {
    pub(crate) fn new() -> AnswerReader {
        AnswerReader {
            decoder: FrameDecoder::new(crate::client::ClientConfig::default().max_payload),
            buf: BytesMut::with_capacity(64 * 1024),
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
        }
    }

    /// The next answer and the request id it names, reading from `stream` as needed. Fails when the
    /// connection closes or breaks, or the server sends something that is not an answer frame.
    pub(crate) fn next(&mut self, mut stream: impl Read) -> Result<(u64, Result<Answer, ClientError>), ClientError> {
        loop {
            if let Some(decoded) = self.decoder.decode(&mut self.buf)? {
                let Decoded::Frame(frame) = decoded else {
                    return Err(FrameError::Malformed("answer too large".into()).into());
                };
                return Ok((frame.header.request_id, parse_answer(frame)));
            }
            match stream.read(&mut self.scratch) {
                Ok(0) => return Err(ClientError::Closed(None)),
                Ok(n) => self.buf.extend_from_slice(&self.scratch[..n]),
                Err(error) => return Err(ClientError::Io(error.to_string())),
            }
        }
    }
}

impl BlockingClient {
    /// Connects; `timeout` bounds the connect and every later read or write.
    pub fn connect(addr: impl ToSocketAddrs, timeout: Duration) -> Result<BlockingClient, ClientError> {
        BlockingClient::connect_with(addr, timeout, None)
    }

    /// Connects, over TLS when `tls` is set (the handshake is done before this returns);
    /// `timeout` bounds the connect, the handshake's reads and writes and every later one.
    pub fn connect_with(
        addr: impl ToSocketAddrs,
        timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<BlockingClient, ClientError> {
        let io = |e: std::io::Error| ClientError::Io(e.to_string());
        let mut last = ClientError::Io("the address resolved to nothing".into());
        for addr in addr.to_socket_addrs().map_err(io)? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true).map_err(io)?;
                    stream.set_read_timeout(Some(timeout)).map_err(io)?;
                    stream.set_write_timeout(Some(timeout)).map_err(io)?;
                    let stream = match tls {
                        None => Transport::Tcp(stream),
                        Some(tls) => Transport::Tls(Box::new(
                            tls.connect_blocking(stream)
                                .map_err(|e| ClientError::Io(format!("TLS handshake: {e}")))?,
                        )),
                    };
                    return Ok(BlockingClient {
                        stream,
                        answers: AnswerReader::new(),
                        write_buf: BytesMut::new(),
                        next_id: 1,
                    });
                }
                Err(error) => last = io(error),
            }
        }
        Err(last)
    }

    /// Runs `rows` (row-major, `n_features` per row) through the function; see
    /// [`crate::client::Client::infer`].
    pub fn infer(&mut self, n_features: u32, rows: &[f32], output_mask: u32) -> Result<ResponseBody, ClientError> {
        let id = self.take_id();
        self.write_buf.clear();
        encode_request(&mut self.write_buf, id, n_features, output_mask, rows)
            .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
        match self.call(id)? {
            Answer::Response(body) => Ok(body),
            Answer::Description(_) => Err(FrameError::Malformed("description sent for a request".into()).into()),
        }
    }

    /// Asks for the function's name and shape.
    pub fn describe(&mut self) -> Result<Description, ClientError> {
        let id = self.take_id();
        self.write_buf.clear();
        encode_describe(&mut self.write_buf, id);
        match self.call(id)? {
            Answer::Description(description) => Ok(description),
            Answer::Response(_) => Err(FrameError::Malformed("response sent for a describe".into()).into()),
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends the frame in `write_buf` and reads until the answer to `id` arrives.
    fn call(&mut self, id: u64) -> Result<Answer, ClientError> {
        self.stream
            .write_all(&self.write_buf)
            .and_then(|()| self.stream.flush())
            .map_err(|e| ClientError::Io(e.to_string()))?;
        loop {
            let (answer_id, answer) = self.answers.next(&mut self.stream)?;
            if answer_id == id {
                return answer;
            }
            // Id 0 is a connection-level error: the server explains why it hangs up.
            if answer_id == 0 {
                return Err(answer.err().unwrap_or(ClientError::Closed(None)));
            }
        }
    }
}
