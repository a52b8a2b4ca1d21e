//! The answer of one binary-protocol request: a reserved slot in its connection's outgoing queue and the
//! response frame, laid out before the first rows arrive so the runtime writes each output straight
//! into it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::mpsc::OwnedPermit;
use vknf_protocol::{ErrorCode, ResponseLayout, encode_error};
use vknf_runtime::{AnswerLayout, CallError, Charge, Metrics, Reply};

use super::outbox::Outbox;

/// The protocol's code for a runtime error.
pub(crate) fn error_code(error: &CallError) -> ErrorCode {
    match error {
        CallError::Shape(_) => ErrorCode::Shape,
        CallError::NonFinite { .. } | CallError::InvalidInput(_) => ErrorCode::Nan,
        CallError::TooLarge(_) => ErrorCode::TooLarge,
        CallError::Busy(_) => ErrorCode::Busy,
        CallError::ShuttingDown(_) => ErrorCode::ShuttingDown,
        // The wire has no code of its own for it: like a lost device, the function cannot run now and a
        // retry later may succeed; the message says why.
        CallError::DeviceLost(_) | CallError::Quarantined(_) => ErrorCode::DeviceLost,
        CallError::DeadlineExceeded(_) | CallError::Internal(_) => ErrorCode::Internal,
    }
}

/// A reserved slot in a connection's outgoing queue: the answer to one request.
///
/// Reserving the slot before admitting the request means an answer can always be queued without
/// waiting, and a connection never holds more answers than its in-flight limit. A reply dropped
/// unanswered answers `INTERNAL`, so no request is ever left unanswered.
///
/// The request's bytes count against the connection's share of the memory budget until its answer
/// is written or queued (where the outbox charges it as unsent).
///
/// Once answered, the reply goes back to its connection's [`Replies`] with its frame buffer and
/// layout, for a later request: a connection serving requests of sizes it has seen allocates no
/// reply and no frame.
pub(crate) struct FrameReply {
    replies: Arc<Replies>,
    permit: Option<OwnedPermit<Bytes>>,
    input: Charge,
    request_id: u64,
    frame: BytesMut,
    layout: ResponseLayout,
    laid_out: bool,
}

/// The replies of one connection: what they share, and the answered ones kept for reuse.
pub(crate) struct Replies {
    outbox: Arc<Outbox>,
    in_flight: Arc<AtomicUsize>,
    connection_closed: Arc<AtomicBool>,
    errors: Arc<ErrorCounter>,
    spare: Mutex<SpareReplies>,
    /// Spare replies kept, at most.
    keep: usize,
}

struct SpareReplies {
    /// Kept boxed: the runtime takes a reply as a box, and reusing the box is what spares the
    /// allocation.
    #[allow(clippy::vec_box)]
    replies: Vec<Box<FrameReply>>,
    /// The connection has ended: replies finishing now are dropped, not kept (a kept reply holds
    /// the connection's shared state, which would then never be freed).
    closed: bool,
}

/// Frame buffers larger than this are not kept with a spare reply: a rare large answer does not pin
/// its memory for the connection's life.
const KEEP_FRAME_BYTES: usize = 256 * 1024;

impl Replies {
    /// The replies of a connection with at most `in_flight` requests in flight.
    pub(crate) fn new(
        outbox: Arc<Outbox>,
        in_flight: Arc<AtomicUsize>,
        connection_closed: Arc<AtomicBool>,
        errors: Arc<ErrorCounter>,
        keep: usize,
    ) -> Arc<Replies> {
        Arc::new(Replies {
            outbox,
            in_flight,
            connection_closed,
            errors,
            spare: Mutex::new(SpareReplies {
                replies: Vec::with_capacity(keep),
                closed: false,
            }),
            keep,
        })
    }

    /// The reply to request `request_id`, in the slot `permit` reserved, holding `input` until
    /// answered: a spare one when there is one.
    pub(crate) fn reply(
        self: &Arc<Self>,
        permit: OwnedPermit<Bytes>,
        input: Charge,
        request_id: u64,
    ) -> Box<FrameReply> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let spare = self.spare.lock().replies.pop();
        match spare {
            Some(mut reply) => {
                reply.permit = Some(permit);
                reply.input = input;
                reply.request_id = request_id;
                reply.laid_out = false;
                reply
            }
            None => Box::new(FrameReply {
                replies: self.clone(),
                permit: Some(permit),
                input,
                request_id,
                frame: BytesMut::new(),
                layout: ResponseLayout {
                    frame_len: 0,
                    data: Vec::new(),
                },
                laid_out: false,
            }),
        }
    }

    /// The connection has ended: drops the spare replies and keeps no more.
    pub(crate) fn close(&self) {
        let spare = {
            let mut spare = self.spare.lock();
            spare.closed = true;
            std::mem::take(&mut spare.replies)
        };
        drop(spare);
    }

    fn keep(&self, mut reply: Box<FrameReply>) {
        if reply.frame.capacity() > KEEP_FRAME_BYTES {
            reply.frame = BytesMut::new();
        }
        let mut spare = self.spare.lock();
        if !spare.closed && spare.replies.len() < self.keep {
            spare.replies.push(reply);
            return;
        }
        drop(spare);
        drop(reply);
    }
}

impl FrameReply {
    fn release(&mut self) -> Option<OwnedPermit<Bytes>> {
        let permit = self.permit.take();
        if permit.is_some() {
            self.replies.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        permit
    }

    /// Sends the response in `self.frame` straight to the socket when it can (keeping the buffer for
    /// the next answer), else through the connection's writer task (the reserved slot guarantees room
    /// there).
    fn send_frame(&mut self) {
        if let Some(permit) = self.release()
            && let Some(queued) = self.replies.outbox.write_or_queue_from(&mut self.frame)
        {
            permit.send(queued);
        }
        // The answer is out, or charged as unsent by the outbox: the request holds nothing more.
        self.input = Charge::none();
    }

    fn send_error(&mut self, code: ErrorCode, message: &str) {
        self.replies.errors.count_protocol(code);
        let mut frame = BytesMut::new();
        encode_error(&mut frame, self.request_id, code, message);
        if let Some(permit) = self.release()
            && let Some(queued) = self.replies.outbox.write_or_queue(frame.freeze())
        {
            permit.send(queued);
        }
        self.input = Charge::none();
    }

    /// Answered: back to the connection's spare replies.
    fn recycle(self: Box<Self>) {
        let replies = self.replies.clone();
        replies.keep(self);
    }
}

impl Reply for FrameReply {
    fn prepare(&mut self, layout: &AnswerLayout<'_>) {
        self.laid_out = self
            .layout
            .rewrite_headers(
                &mut self.frame,
                self.request_id,
                layout.n_rows as u32,
                layout.mask,
                &layout.info.outputs,
            )
            .is_ok();
    }

    fn output(&mut self, index: usize) -> &mut [u8] {
        let range = match self.layout.data.get(index) {
            Some(Some(range)) if self.laid_out => range.clone(),
            _ => return &mut [],
        };
        &mut self.frame[range]
    }

    fn complete(mut self: Box<Self>, _layout: &AnswerLayout<'_>) {
        if self.laid_out {
            self.send_frame();
        } else {
            self.send_error(ErrorCode::Internal, "cannot encode the response");
        }
        self.recycle();
    }

    fn fail(mut self: Box<Self>, error: CallError) {
        self.send_error(error_code(&error), &error.to_string());
        self.recycle();
    }

    fn is_cancelled(&self) -> bool {
        self.replies.connection_closed.load(Ordering::Acquire)
    }
}

impl Drop for FrameReply {
    fn drop(&mut self) {
        if self.replies.connection_closed.load(Ordering::Acquire) {
            // Nobody reads this connection any more: give the slot back without a word.
            drop(self.release());
        } else if self.permit.is_some() {
            self.send_error(ErrorCode::Internal, "request dropped before it was answered");
        }
    }
}

/// The protocol's name in the metrics' `protocol` label.
pub(crate) const PROTOCOL: &str = "binary";

/// Counts the error answers of one function's connections.
pub(crate) struct ErrorCounter {
    pub(crate) metrics: Metrics,
    pub(crate) function: Arc<str>,
}

impl ErrorCounter {
    /// Counts an error the front end answered itself (before or outside the runtime): in the
    /// runtime's errors and in the front end's.
    pub(crate) fn count(&self, code: ErrorCode) {
        self.metrics.error(&self.function, code.name());
        self.count_protocol(code);
    }

    /// Counts an error answer in the front end's errors only (the runtime counted its own).
    pub(crate) fn count_protocol(&self, code: ErrorCode) {
        self.metrics.front_end_error(PROTOCOL, &self.function, code.name());
    }
}
