//! What one TLS connection may buffer, bounded, and the memory reserved for it while it lives.
//!
//! rustls buffers on its own: records waiting for the socket, plaintext written before the handshake
//! completed, received plaintext the application has not read, and a partial record (a whole
//! handshake flight, up to 64 KiB, during the handshake). The send side is bounded with
//! `set_buffer_limit`; the receive side is bounded by rustls (it stops reading the socket past 16 KiB
//! of unread plaintext). [`CONNECTION_BUFFER_BYTES`] adds the bounds up, and a server with a
//! [`ConnectionBudget`] reserves that much for every connection from before its handshake to its close,
//! so that many TLS connections cannot grow the process past its memory budget.

use std::any::Any;
use std::io;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Most bytes of TLS records waiting for the socket, and of plaintext written before the handshake
/// completed (each; rustls' `set_buffer_limit`, 64 KiB by default). A writer past it is told to wait.
pub const SEND_BUFFER_LIMIT: usize = 32 << 10;

/// The largest TLS record on the wire: 16 KiB of plaintext, 2 KiB of expansion, the 5-byte header.
const MAX_RECORD: usize = (16 << 10) + 2048 + 5;

/// Received plaintext rustls holds before it stops reading (16 KiB), plus the records of one read
/// decrypted past it.
const RECEIVED_PLAINTEXT: usize = (16 << 10) + MAX_RECORD;

/// The partial-record buffer: a handshake message may take 64 KiB, a record one [`MAX_RECORD`] after.
const PARTIAL_RECORD: usize = 64 << 10;

/// The handshake's own state and flights (certificate chain, transcript, keys).
const HANDSHAKE_STATE: usize = 16 << 10;

/// The bound of what one TLS connection's buffers hold, which a [`ConnectionBudget`] reserves per
/// connection: both send buffers at [`SEND_BUFFER_LIMIT`] with one record over it, received plaintext,
/// a partial record and the handshake's state.
pub const CONNECTION_BUFFER_BYTES: usize =
    2 * SEND_BUFFER_LIMIT + MAX_RECORD + RECEIVED_PLAINTEXT + PARTIAL_RECORD + HANDSHAKE_STATE;

/// Memory reserved for one connection, given back when dropped.
pub type Reservation = Box<dyn Any + Send + Sync>;

/// Reserves memory for the buffers of new TLS connections (the process's memory budget), or says why
/// it cannot. Cheap to clone.
#[derive(Clone)]
pub struct ConnectionBudget {
    reserve: Arc<dyn Fn(usize) -> Result<Reservation, String> + Send + Sync>,
}

impl std::fmt::Debug for ConnectionBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionBudget")
    }
}

impl ConnectionBudget {
    /// A budget that reserves `bytes` with `reserve`: `Ok` holds them until dropped, `Err` says why
    /// there is no room (the text goes into the server's log).
    pub fn new(reserve: impl Fn(usize) -> Result<Reservation, String> + Send + Sync + 'static) -> ConnectionBudget {
        ConnectionBudget {
            reserve: Arc::new(reserve),
        }
    }

    /// Reserves one connection's [`CONNECTION_BUFFER_BYTES`].
    pub(crate) fn reserve_connection(&self) -> Result<Reservation, String> {
        (self.reserve)(CONNECTION_BUFFER_BYTES)
    }
}

/// An accepted TCP connection under TLS, holding its buffers' reservation until it is dropped. It
/// dereferences to the socket (`set_nodelay`, addresses).
pub struct AcceptedTcp {
    stream: TcpStream,
    /// Given back when the connection is dropped.
    reservation: Option<Reservation>,
}

impl AcceptedTcp {
    pub(crate) fn new(stream: TcpStream, reservation: Option<Reservation>) -> AcceptedTcp {
        AcceptedTcp { stream, reservation }
    }
}

impl std::fmt::Debug for AcceptedTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptedTcp")
            .field("stream", &self.stream)
            .field("reserved", &self.reservation.is_some())
            .finish()
    }
}

impl Deref for AcceptedTcp {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for AcceptedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AcceptedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
