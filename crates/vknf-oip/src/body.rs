//! HTTP bodies of the front end: a gRPC request body that must arrive by a deadline (a slow client
//! cannot hold a request open) and whose bytes are charged to the server's budget, and a response body
//! of several buffers sent as they are. Request bytes count against the port's own bound and the
//! process's memory budget (as requests being received); a response's buffers count as unsent answers
//! until hyper has sent them. The gRPC bodies fail with a `tonic::Status`, which tonic finds
//! in the error and answers as it is.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use vknf_runtime::{Account, Category, Charge, ClientBudget, MemoryBudget};

/// A request body that fails (`DEADLINE_EXCEEDED`) once `timeout` has passed since the request arrived.
pub struct Deadline<B> {
    inner: Pin<Box<B>>,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl<B> Deadline<B> {
    /// Wraps `inner`; its last frame must arrive within `timeout`.
    pub fn new(inner: B, timeout: Duration) -> Deadline<B> {
        Deadline {
            inner: Box::pin(inner),
            sleep: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)),
            timeout,
        }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(tonic::Status::deadline_exceeded(format!(
                "the request body did not arrive within {} s",
                this.timeout.as_secs()
            )))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body of whole buffers: the JSON header and the binary tensors the runtime wrote, charged
/// to the process's memory budget as an unsent answer until the body is dropped (sent, or the client
/// gone).
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    _charge: Charge,
}

impl Chunks {
    /// The buffers, sent in order; `budget` is charged for them (unconditionally: they exist already).
    pub fn new(chunks: impl IntoIterator<Item = Bytes>, budget: &MemoryBudget) -> Chunks {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let bytes = chunks.iter().map(Bytes::len).sum();
        Chunks {
            _charge: budget.charge(Category::Unsent, bytes),
            chunks,
        }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().chunks.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum())
    }
}

/// The error of a body refused because the port already buffers as many request bytes as it may, or
/// the process's memory budget has no room.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OverBudget(String);

/// Request bytes buffered across every connection, bounded: with many connections and many streams
/// each, the per-body limit alone would not bound memory. The bytes are charged to the process's
/// memory budget too, which the binary ports and the runtime's queues share.
#[derive(Clone)]
pub struct Budget {
    semaphore: std::sync::Arc<tokio::sync::Semaphore>,
    bytes: usize,
    process: MemoryBudget,
}

impl Budget {
    /// A bound of `bytes` (at most what a semaphore counts) inside the process's `process` budget.
    pub fn new(bytes: usize, process: MemoryBudget) -> Budget {
        let bytes = bytes.min(tokio::sync::Semaphore::MAX_PERMITS);
        Budget {
            semaphore: std::sync::Arc::new(tokio::sync::Semaphore::new(bytes)),
            bytes,
            process,
        }
    }

    /// Takes `n` bytes of the budget, charged to `client` (one connection) too within its share,
    /// until the returned holder is dropped, or fails at once.
    pub fn take(&self, client: &ClientBudget, n: usize) -> Result<Held, OverBudget> {
        let full = || {
            OverBudget(format!(
                "the server is buffering {} bytes of requests already; retry later",
                self.bytes
            ))
        };
        let count = u32::try_from(n).map_err(|_| full())?;
        let permit = self
            .semaphore
            .clone()
            .try_acquire_many_owned(count)
            .map_err(|_| full())?;
        let charge = client
            .try_charge_in_share(Category::Receiving, n)
            .map_err(|refusal| OverBudget(refusal.to_string()))?;
        Ok(Held(Some(permit), charge))
    }

    /// The process's budget.
    pub fn process(&self) -> &MemoryBudget {
        &self.process
    }

    /// Bytes of the budget in use.
    pub fn in_use(&self) -> usize {
        self.bytes - self.semaphore.available_permits()
    }
}

/// Bytes taken from a [`Budget`], given back on drop.
pub struct Held(Option<tokio::sync::OwnedSemaphorePermit>, Charge);

impl Default for Held {
    fn default() -> Held {
        Held(None, Charge::none())
    }
}

impl Held {
    /// Adds `other`'s bytes to these.
    pub fn merge(&mut self, other: Held) {
        match (&mut self.0, other.0) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (_, None) => {}
        }
        self.1.absorb(other.1);
    }
}

/// A request body whose data frames are charged to a [`Budget`] while the body lives (until the message
/// is decoded; the runtime's queue accounts for the rows from then on). Over the budget it fails
/// (`RESOURCE_EXHAUSTED`).
pub struct Budgeted<B> {
    inner: Pin<Box<B>>,
    budget: Budget,
    client: ClientBudget,
    held: Held,
}

impl<B> Budgeted<B> {
    /// Charges `inner`'s frames to `budget` and to `client` (the connection), within its share.
    pub fn new(inner: B, budget: Budget, client: ClientBudget) -> Budgeted<B> {
        Budgeted {
            inner: Box::pin(inner),
            budget,
            client,
            held: Held::default(),
        }
    }
}

impl<B> Body for Budgeted<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    match this.budget.take(&this.client, data.len()) {
                        Ok(held) => this.held.merge(held),
                        Err(over) => {
                            return Poll::Ready(Some(Err(Box::new(tonic::Status::resource_exhausted(
                                over.to_string(),
                            )))));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What one connection has handed to hyper of its responses and hyper has not yet written to the
/// socket: response bytes enter as their body yields them and leave as the connection's writes
/// succeed. Writes count headers and framing too, so the figure is the unsent answer bytes less at
/// most that overhead. A client that never reads leaves its answers here, charged as unsent answers
/// to the process's budget and to the connection's share, until it reads them or goes.
#[derive(Clone)]
pub struct Unwritten(std::sync::Arc<Account>);

impl Unwritten {
    /// The account of `client`'s connection.
    pub fn new(client: &ClientBudget) -> Unwritten {
        Unwritten(std::sync::Arc::new(client.account(Category::Unsent)))
    }
}

/// A connection's socket (or TLS session) whose successful writes are taken off its [`Unwritten`].
pub struct Written<S> {
    inner: S,
    unwritten: Unwritten,
}

impl<S> Written<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, unwritten: Unwritten) -> Written<S> {
        Written { inner, unwritten }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Written<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Written<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            this.unwritten.0.sub(*n);
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &written {
            this.unwritten.0.sub(*n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The charge of a gRPC answer from when it is made until its encoded message is handed to hyper:
/// the service puts it into the response's extensions, the port moves it into the response body.
#[derive(Clone, Default)]
pub struct AnswerCharge(std::sync::Arc<parking_lot::Mutex<Option<Charge>>>);

impl AnswerCharge {
    /// Holds `charge`.
    pub fn new(charge: Charge) -> AnswerCharge {
        AnswerCharge(std::sync::Arc::new(parking_lot::Mutex::new(Some(charge))))
    }

    fn take(&self) -> Option<Charge> {
        self.0.lock().take()
    }
}

/// A response body whose data frames move into the connection's [`Unwritten`] as hyper takes them;
/// the answer's own charge (if any) is given back once its bytes are there.
pub struct Metered<B> {
    inner: Pin<Box<B>>,
    unwritten: Unwritten,
    answer: Option<Charge>,
}

impl<B> Metered<B> {
    /// Meters `inner` into `unwritten`, holding `answer` until the first data frame.
    pub fn new(inner: B, unwritten: Unwritten, answer: Option<&AnswerCharge>) -> Metered<B> {
        Metered {
            inner: Box::pin(inner),
            unwritten,
            answer: answer.and_then(AnswerCharge::take),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Metered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.unwritten.0.add(data.len());
            // The message is encoded whole: what the answer held is now in the bytes just added.
            this.answer = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
