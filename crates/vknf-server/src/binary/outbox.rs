//! A connection's outgoing side. Answers are written straight to the socket by whichever thread
//! produced them (usually a lane thread) when the connection has nothing queued and the socket
//! takes the whole frame; otherwise they go through the connection's writer task, which waits
//! for the socket. The direct path spares a lightly loaded server the wake-up of the writer task,
//! which on an idle host costs tens of microseconds per answer.
//!
//! Ordering: a thread writes directly only while no frame is queued and it holds the lock; the
//! writer task writes only while holding the same lock; a direct write that the socket takes only
//! in part leaves its tail under the lock, and the writer sends that tail before anything else.
//!
//! Every byte that does not go out at once (queued frames, a direct write's tail) is charged to the
//! connection's account in the process's memory budget as an unsent answer until it is written.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use vknf_runtime::Account;

use super::transport::Sink;

/// A frame on its way out: its bytes, and what is left of it from an offset on, taken out to wait.
pub(crate) trait Outgoing {
    /// The frame.
    fn bytes(&self) -> &[u8];
    /// The frame's bytes from `offset` on, taken out of their holder.
    fn take_from(&mut self, offset: usize) -> Bytes;
}

impl Outgoing for Option<Bytes> {
    fn bytes(&self) -> &[u8] {
        self.as_deref().unwrap_or_default()
    }

    fn take_from(&mut self, offset: usize) -> Bytes {
        let mut frame = self.take().unwrap_or_default();
        frame.advance(offset);
        frame
    }
}

impl Outgoing for BytesMut {
    fn bytes(&self) -> &[u8] {
        self
    }

    fn take_from(&mut self, offset: usize) -> Bytes {
        self.advance(offset);
        std::mem::take(self).freeze()
    }
}

/// Frames the writer task writes with one call, at most.
const MAX_GATHER: usize = 64;

/// The write half of a connection, shared by its writer task and every answer in flight.
pub(crate) struct Outbox {
    half: Sink,
    /// The unwritten tail of a frame that a direct write started.
    leftover: Mutex<Option<Bytes>>,
    /// Frames handed to the writer task and not yet written.
    queued: AtomicUsize,
    /// Bytes waiting to be written, charged to the memory budget (category `unsent`).
    unsent: Account,
}

impl Outbox {
    pub(crate) fn new(half: impl Into<Sink>, unsent: Account) -> Arc<Outbox> {
        Arc::new(Outbox {
            half: half.into(),
            leftover: Mutex::new(None),
            queued: AtomicUsize::new(0),
            unsent,
        })
    }

    /// Bytes waiting to be written.
    #[cfg(test)]
    pub(crate) fn unsent_bytes(&self) -> usize {
        self.unsent.bytes()
    }

    /// Writes `frame` from the calling thread if it can go out at once. Otherwise returns what must
    /// be handed to the writer task (the frame, or an empty frame that wakes the writer for a tail),
    /// already counted as queued.
    pub(crate) fn write_or_queue(&self, frame: Bytes) -> Option<Bytes> {
        self.write_or_queue_from(&mut Some(frame))
    }

    /// [`Outbox::write_or_queue`] for a frame in a buffer that its owner keeps between frames: a frame
    /// that goes out at once leaves the buffer where it is, for the next; only a frame that must wait
    /// is taken out of it.
    pub(crate) fn write_or_queue_from(&self, frame: &mut impl Outgoing) -> Option<Bytes> {
        if self.queued.load(Ordering::Acquire) == 0
            && let Some(mut leftover) = self.leftover.try_lock()
            && leftover.is_none()
            && self.queued.load(Ordering::Acquire) == 0
        {
            let len = frame.bytes().len();
            match self.half.try_write(frame.bytes()) {
                Ok(written) if written == len => return None,
                Ok(written) => {
                    self.unsent.add(len - written);
                    *leftover = Some(frame.take_from(written));
                    // Counted before the lock is released, so no other thread writes directly
                    // until the writer task has sent the tail.
                    self.queued.fetch_add(1, Ordering::AcqRel);
                    return Some(Bytes::new());
                }
                // The socket is full (or broken): the writer task waits for it (or ends).
                Err(_) => {}
            }
        }
        let frame = frame.take_from(0);
        self.unsent.add(frame.len());
        self.queued.fetch_add(1, Ordering::AcqRel);
        Some(frame)
    }

    /// Undoes the count of a frame that could not be handed to the writer task.
    pub(crate) fn unqueue(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Writes as much of `frames` as the socket takes now, a direct write's tail first. When that is
    /// all of them, the `received` frames they came as stop counting as queued before the lock is
    /// released, so the next answer may go out directly: counted down any later (after an await),
    /// a thread answering the client's next request could find them still counted and queue its
    /// answer too, and on a busy host every answer after one queued one would take the writer task.
    fn try_write_some(&self, frames: &mut VecDeque<Bytes>, received: usize) -> io::Result<bool> {
        let mut leftover = self.leftover.lock();
        if let Some(tail) = leftover.take() {
            frames.push_front(tail);
        }
        let slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
        let mut written = self.half.try_write_vectored(&slices)?;
        self.unsent.sub(written);
        while written > 0 {
            let Some(front) = frames.front_mut() else { break };
            if written >= front.len() {
                written -= front.len();
                frames.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
        if frames.iter().any(|f| !f.is_empty()) {
            return Ok(false);
        }
        frames.clear();
        self.queued.fetch_sub(received, Ordering::AcqRel);
        drop(leftover);
        Ok(true)
    }
}

/// The writer task: writes what the direct path could not, until every sender is gone or the
/// client stops reading for longer than `timeout`.
pub(crate) async fn write_loop(outbox: Arc<Outbox>, mut rx: mpsc::Receiver<Bytes>, timeout: Duration) {
    let mut frames: VecDeque<Bytes> = VecDeque::new();
    while let Some(frame) = rx.recv().await {
        frames.push_back(frame);
        let mut received = 1;
        // `poll_recv`, not `try_recv`: the latter allocates a waker to park on when it meets a frame
        // still being sent.
        while received < MAX_GATHER
            && let Poll::Ready(Some(frame)) = std::future::poll_fn(|cx| Poll::Ready(rx.poll_recv(cx))).await
        {
            frames.push_back(frame);
            received += 1;
        }
        loop {
            match outbox.try_write_some(&mut frames, received) {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            if !matches!(tokio::time::timeout(timeout, outbox.half.writable()).await, Ok(Ok(()))) {
                return;
            }
        }
        // TLS may hold the last records until flushed (its answers always come through here); TCP
        // holds nothing.
        if !outbox.half.flush_within(timeout).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A frame that says how long it is and whose bytes all carry its number.
    fn frame(number: u32, len: usize) -> Bytes {
        let mut bytes = Vec::with_capacity(8 + len);
        bytes.extend_from_slice(&(len as u32).to_le_bytes());
        bytes.extend_from_slice(&number.to_le_bytes());
        bytes.extend(std::iter::repeat_n(number as u8, len));
        bytes.into()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_from_many_threads_arrive_whole_when_the_socket_fills() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        let budget = vknf_runtime::MemoryBudget::new(1 << 30);
        let outbox = Outbox::new(write, budget.client().account(vknf_runtime::Category::Unsent));
        let (tx, rx) = mpsc::channel::<Bytes>(1024);
        let writer = tokio::spawn(write_loop(outbox.clone(), rx, Duration::from_secs(20)));

        // Four threads send 200 frames each, of sizes up to 300 KB: far more than the socket
        // buffers hold while the reader below starts late, so direct writes end part way.
        let mut threads = Vec::new();
        for t in 0..4u32 {
            let (outbox, tx) = (outbox.clone(), tx.clone());
            threads.push(std::thread::spawn(move || {
                for i in 0..200u32 {
                    let number = t * 1000 + i;
                    let len = [10usize, 3_000, 70_000, 300_000][(number % 4) as usize];
                    if let Some(queued) = outbox.write_or_queue(frame(number, len)) {
                        tx.blocking_send(queued).unwrap();
                    }
                }
            }));
        }
        drop(tx);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut client = client;
        let mut seen = std::collections::HashSet::new();
        let mut head = [0u8; 8];
        while seen.len() < 800 {
            client.read_exact(&mut head).await.unwrap();
            let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
            let number = u32::from_le_bytes(head[4..].try_into().unwrap());
            let mut body = vec![0u8; len];
            client.read_exact(&mut body).await.unwrap();
            assert!(body.iter().all(|b| *b == number as u8), "frame {number} is interleaved");
            assert!(seen.insert(number), "frame {number} arrived twice");
        }
        for thread in threads {
            thread.join().unwrap();
        }
        writer.await.unwrap();
        assert_eq!(outbox.unsent_bytes(), 0, "every byte written is given back");
        drop(outbox);
        assert_eq!(budget.used(), 0);
        assert!(budget.peak() > 0, "frames waited, charged, for the late reader");
        // Every sender gone and every frame written: the socket is shut for writing.
        assert_eq!(client.read(&mut head).await.unwrap(), 0);
    }
}
