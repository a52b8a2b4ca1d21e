//! What a connection reads from and writes to: a plain TCP socket, or TLS over one.
//!
//! The answer path ([`super::outbox`]) writes without waiting: a lane thread tries the socket once and
//! hands what it could not write to the connection's writer task. A [`Sink`] gives both transports
//! that shape. On TLS the session is shared with the reading side and its records must be flushed by
//! a task that can wait, so a TLS sink takes nothing from lane threads (they always hand over to the
//! writer task) and the writer task polls the TLS stream without blocking, then waits in
//! [`Sink::writable`] (which flushes) like it waits for a TCP socket.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use vknf_tls::ServerTlsStream;

/// The write side of a connection.
pub(crate) enum Sink {
    /// A TCP socket, written from any thread.
    Tcp(OwnedWriteHalf),
    /// A TLS session, written by the connection's writer task only.
    Tls(Mutex<WriteHalf<ServerTlsStream>>),
}

impl From<OwnedWriteHalf> for Sink {
    fn from(half: OwnedWriteHalf) -> Sink {
        Sink::Tcp(half)
    }
}

/// Splits an accepted TCP connection.
pub(crate) fn split_tcp(stream: TcpStream) -> (OwnedReadHalf, Sink) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    (reader, Sink::Tcp(writer))
}

/// Splits an accepted TLS connection.
pub(crate) fn split_tls(stream: ServerTlsStream) -> (ReadHalf<ServerTlsStream>, Sink) {
    let _ = stream.get_ref().0.set_nodelay(true);
    let (reader, writer) = tokio::io::split(stream);
    (reader, Sink::Tls(Mutex::new(writer)))
}

/// Polls `poll` once without a task to wake: `Pending` becomes `WouldBlock`.
fn poll_now<T>(poll: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>) -> io::Result<T> {
    match poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl Sink {
    /// Writes what the transport takes now from the calling thread, without waiting.
    pub(crate) fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Tcp(half) => half.try_write(bytes),
            // Records written here might sit unflushed with no task to flush them: leave it to the
            // writer task.
            Sink::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Writes what the transport takes now, without waiting; the writer task's call.
    pub(crate) fn try_write_vectored(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sink::Tcp(half) => half.try_write_vectored(slices),
            Sink::Tls(half) => {
                let mut half = half.lock();
                // Earlier records first, so that the session's buffer does not grow past its limit.
                poll_now(|cx| Pin::new(&mut *half).poll_flush(cx))?;
                poll_now(|cx| Pin::new(&mut *half).poll_write_vectored(cx, slices))
            }
        }
    }

    /// Waits until the transport can take more (on TLS: until what it holds is flushed).
    pub(crate) async fn writable(&self) -> io::Result<()> {
        match self {
            Sink::Tcp(half) => half.writable().await,
            Sink::Tls(_) => self.flush().await,
        }
    }

    /// Waits until everything written has reached the socket: false when that took longer than
    /// `timeout` or failed. A TCP sink holds nothing back and answers at once.
    pub(crate) async fn flush_within(&self, timeout: Duration) -> bool {
        match self {
            Sink::Tcp(_) => true,
            Sink::Tls(_) => matches!(tokio::time::timeout(timeout, self.flush()).await, Ok(Ok(()))),
        }
    }

    async fn flush(&self) -> io::Result<()> {
        match self {
            Sink::Tcp(_) => Ok(()),
            Sink::Tls(half) => std::future::poll_fn(|cx| Pin::new(&mut *half.lock()).poll_flush(cx)).await,
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // A dropped TCP write half sends FIN. A TLS one says close_notify first, so the client can
        // tell the end of the answers from a cut connection; best effort, as a FIN is.
        if let Sink::Tls(half) = self {
            let _ = poll_now(|cx| Pin::new(&mut *half.lock()).poll_shutdown(cx));
        }
    }
}

/// The read side of a connection.
pub(crate) trait Source: AsyncRead + Unpin + Send {}

impl<T: AsyncRead + Unpin + Send> Source for T {}
