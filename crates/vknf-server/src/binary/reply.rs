//! The answer of one binary-protocol request: a reserved slot in its connection's outgoing queue and the
//! response frame, laid out before the first rows arrive so the runtime writes each output straight
//! into it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
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
pub(crate) struct FrameReply {
    permit: Option<OwnedPermit<Bytes>>,
    input: Charge,
    outbox: Arc<Outbox>,
    request_id: u64,
    in_flight: Arc<AtomicUsize>,
    connection_closed: Arc<AtomicBool>,
    frame: BytesMut,
    layout: Option<ResponseLayout>,
    errors: Arc<ErrorCounter>,
}

impl FrameReply {
    pub(crate) fn new(
        permit: OwnedPermit<Bytes>,
        input: Charge,
        outbox: Arc<Outbox>,
        request_id: u64,
        in_flight: Arc<AtomicUsize>,
        connection_closed: Arc<AtomicBool>,
        errors: Arc<ErrorCounter>,
    ) -> FrameReply {
        in_flight.fetch_add(1, Ordering::AcqRel);
        FrameReply {
            permit: Some(permit),
            input,
            outbox,
            request_id,
            in_flight,
            connection_closed,
            frame: BytesMut::new(),
            layout: None,
            errors,
        }
    }

    fn release(&mut self) -> Option<OwnedPermit<Bytes>> {
        let permit = self.permit.take();
        if permit.is_some() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        permit
    }

    /// Sends `frame` straight to the socket when it can, else through the connection's writer task (the
    /// reserved slot guarantees room there).
    fn send(&mut self, frame: Bytes) {
        if let Some(permit) = self.release()
            && let Some(queued) = self.outbox.write_or_queue(frame)
        {
            permit.send(queued);
        }
        // The answer is out, or charged as unsent by the outbox: the request holds nothing more.
        self.input = Charge::none();
    }

    fn send_error(&mut self, code: ErrorCode, message: &str) {
        self.errors.count_protocol(code);
        let mut frame = BytesMut::new();
        encode_error(&mut frame, self.request_id, code, message);
        self.send(frame.freeze());
    }
}

impl Reply for FrameReply {
    fn prepare(&mut self, layout: &AnswerLayout<'_>) {
        self.layout = ResponseLayout::write_headers(
            &mut self.frame,
            self.request_id,
            layout.n_rows as u32,
            layout.mask,
            &layout.info.outputs,
        )
        .ok();
    }

    fn output(&mut self, index: usize) -> &mut [u8] {
        match self.layout.as_ref().and_then(|l| l.data.get(index)?.clone()) {
            Some(range) => &mut self.frame[range],
            None => &mut [],
        }
    }

    fn complete(mut self: Box<Self>, _layout: &AnswerLayout<'_>) {
        if self.layout.is_some() {
            let frame = std::mem::take(&mut self.frame).freeze();
            self.send(frame);
        } else {
            self.send_error(ErrorCode::Internal, "cannot encode the response");
        }
    }

    fn fail(mut self: Box<Self>, error: CallError) {
        self.send_error(error_code(&error), &error.to_string());
    }

    fn is_cancelled(&self) -> bool {
        self.connection_closed.load(Ordering::Acquire)
    }
}

impl Drop for FrameReply {
    fn drop(&mut self) {
        if self.connection_closed.load(Ordering::Acquire) {
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
