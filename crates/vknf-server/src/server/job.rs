//! One admitted request: its rows, where its answer goes, and the outputs gathered from the
//! batches it was split across.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::mpsc::OwnedPermit;

use super::outbox::Outbox;
use crate::exec::{DType, FunctionInfo};
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, InferRequest, encode_error, encode_response};

/// A reserved slot in a connection's outgoing queue: the answer to one request.
///
/// Reserving the slot before admitting the request means an answer can always be queued
/// without waiting, and a connection never holds more answers than its in-flight limit.
/// Dropping an unanswered responder answers `INTERNAL`, so no request is ever left unanswered.
pub(crate) struct Responder {
    permit: Option<OwnedPermit<Bytes>>,
    outbox: Arc<Outbox>,
    request_id: u64,
    in_flight: Arc<AtomicUsize>,
    function: Arc<str>,
    metrics: Metrics,
}

impl Responder {
    pub(crate) fn new(
        permit: OwnedPermit<Bytes>,
        outbox: Arc<Outbox>,
        request_id: u64,
        in_flight: Arc<AtomicUsize>,
        function: Arc<str>,
        metrics: Metrics,
    ) -> Responder {
        in_flight.fetch_add(1, Ordering::AcqRel);
        Responder {
            permit: Some(permit),
            outbox,
            request_id,
            in_flight,
            function,
            metrics,
        }
    }

    pub(crate) fn request_id(&self) -> u64 {
        self.request_id
    }

    fn release(&mut self) -> Option<OwnedPermit<Bytes>> {
        let permit = self.permit.take();
        if permit.is_some() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        permit
    }

    /// Sends an encoded frame as the answer: straight to the socket when it can, else through the
    /// connection's writer task (the reserved slot guarantees room there).
    pub(crate) fn send(mut self, frame: Bytes) {
        if let Some(permit) = self.release() {
            self.deliver(permit, frame);
        }
    }

    fn deliver(&self, permit: OwnedPermit<Bytes>, frame: Bytes) {
        if let Some(queued) = self.outbox.write_or_queue(frame) {
            permit.send(queued);
        }
    }

    /// Answers with an error frame.
    pub(crate) fn send_error(mut self, code: ErrorCode, message: &str) {
        self.send_error_in_place(code, message);
    }

    fn send_error_in_place(&mut self, code: ErrorCode, message: &str) {
        self.metrics.error(&self.function, code);
        if let Some(permit) = self.release() {
            let mut frame = BytesMut::new();
            encode_error(&mut frame, self.request_id, code, message);
            self.deliver(permit, frame.freeze());
        }
    }

    /// Gives the slot back without answering (the client is gone).
    pub(crate) fn discard(mut self) {
        drop(self.release());
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if self.permit.is_some() {
            self.send_error_in_place(ErrorCode::Internal, "request dropped before it was answered");
        }
    }
}

/// Input bytes counted against a function's queue limit until the request is answered.
pub(crate) struct Admission {
    bytes: usize,
    counter: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    metrics: Metrics,
    function: Arc<str>,
}

impl Admission {
    /// Admits `bytes` if the total stays within `limit`.
    pub(crate) fn try_admit(
        counter: &Arc<AtomicUsize>,
        requests: &Arc<AtomicUsize>,
        bytes: usize,
        limit: usize,
        metrics: &Metrics,
        function: &Arc<str>,
    ) -> Option<Admission> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                queued.checked_add(bytes).filter(|total| *total <= limit)
            })
            .ok()?;
        requests.fetch_add(1, Ordering::AcqRel);
        let admission = Admission {
            bytes,
            counter: counter.clone(),
            requests: requests.clone(),
            metrics: metrics.clone(),
            function: function.clone(),
        };
        admission.publish();
        Some(admission)
    }

    fn publish(&self) {
        let labels = Metrics::function(&self.function);
        self.metrics
            .queued_bytes
            .get_or_create(&labels)
            .set(self.counter.load(Ordering::Acquire) as i64);
        self.metrics
            .queued_requests
            .get_or_create(&labels)
            .set(self.requests.load(Ordering::Acquire) as i64);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::AcqRel);
        self.requests.fetch_sub(1, Ordering::AcqRel);
        self.publish();
    }
}

struct JobState {
    /// `None` once answered.
    responder: Option<Responder>,
    /// Per output: `n_rows * width` elements, allocated when the first batch delivers.
    outputs: Vec<Vec<u8>>,
    rows_left: usize,
    admission: Option<Admission>,
}

/// A request admitted into a function's queue.
pub(crate) struct Job {
    pub(crate) request: InferRequest,
    pub(crate) n_rows: usize,
    /// Outputs to compute and return (mandatory ones included).
    pub(crate) mask: u32,
    admitted_at: Instant,
    connection_closed: Arc<AtomicBool>,
    state: Mutex<JobState>,
}

/// The rows of one job that went into one batch.
pub(crate) struct Segment {
    pub(crate) job: Arc<Job>,
    /// First row within the job.
    pub(crate) job_row: usize,
    /// First row within the batch.
    pub(crate) batch_row: usize,
    pub(crate) rows: usize,
}

impl Job {
    pub(crate) fn new(
        request: InferRequest,
        mask: u32,
        responder: Responder,
        admission: Admission,
        connection_closed: Arc<AtomicBool>,
    ) -> Job {
        let n_rows = request.n_rows as usize;
        Job {
            request,
            n_rows,
            mask,
            admitted_at: Instant::now(),
            connection_closed,
            state: Mutex::new(JobState {
                responder: Some(responder),
                outputs: Vec::new(),
                rows_left: n_rows,
                admission: Some(admission),
            }),
        }
    }

    /// Whether the job needs no more work: answered, failed, or its client has gone (in which
    /// case its queue slot is released now).
    pub(crate) fn is_settled(&self) -> bool {
        let mut state = self.state.lock();
        if state.responder.is_none() {
            return true;
        }
        if self.connection_closed.load(Ordering::Acquire) {
            if let Some(responder) = state.responder.take() {
                responder.discard();
            }
            state.admission = None;
            state.outputs = Vec::new();
            return true;
        }
        false
    }

    /// Answers with an error unless already answered.
    pub(crate) fn fail(&self, code: ErrorCode, message: &str) {
        let mut state = self.state.lock();
        if let Some(responder) = state.responder.take() {
            responder.send_error(code, message);
        }
        state.admission = None;
        state.outputs = Vec::new();
    }

    /// Copies one batch's share of the outputs; answers once every row is in.
    pub(crate) fn deliver(
        &self,
        segment: &Segment,
        outputs: &[Option<&[u8]>],
        info: &FunctionInfo,
        function: &str,
        metrics: &Metrics,
    ) {
        let mut state = self.state.lock();
        if state.responder.is_none() {
            return;
        }
        if state.outputs.is_empty() {
            state.outputs = info
                .outputs
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    if self.mask & (1 << i) != 0 {
                        vec![0u8; self.n_rows * o.width * 4]
                    } else {
                        Vec::new()
                    }
                })
                .collect();
        }
        for (i, output) in info.outputs.iter().enumerate() {
            if self.mask & (1 << i) == 0 {
                continue;
            }
            let (Some(Some(src)), row_bytes) = (outputs.get(i), output.width * output.dtype.size()) else {
                continue;
            };
            let from = segment.batch_row * row_bytes..(segment.batch_row + segment.rows) * row_bytes;
            let to = segment.job_row * row_bytes..(segment.job_row + segment.rows) * row_bytes;
            state.outputs[i][to].copy_from_slice(&src[from]);
        }
        state.rows_left -= segment.rows;
        if state.rows_left > 0 {
            return;
        }
        let blocks: Vec<(u8, DType, u32, &[u8])> = info
            .outputs
            .iter()
            .enumerate()
            .filter(|(i, _)| self.mask & (1 << i) != 0)
            .map(|(i, o)| (i as u8, o.dtype, o.width as u32, state.outputs[i].as_slice()))
            .collect();
        let mut frame = BytesMut::new();
        let encoded = state
            .responder
            .as_ref()
            .map(|r| encode_response(&mut frame, r.request_id(), self.n_rows as u32, &blocks));
        drop(blocks);
        let Some(responder) = state.responder.take() else {
            return;
        };
        match encoded {
            Some(Ok(())) => {
                responder.send(frame.freeze());
                let labels = Metrics::function(function);
                metrics.requests.get_or_create(&labels).inc();
                metrics.rows.get_or_create(&labels).inc_by(self.n_rows as u64);
                metrics
                    .request_latency
                    .get_or_create(&labels)
                    .observe(self.admitted_at.elapsed().as_secs_f64());
            }
            _ => responder.send_error(ErrorCode::Internal, "cannot encode the response"),
        }
        state.admission = None;
        state.outputs = Vec::new();
    }
}
