//! One admitted call: its rows, where its answer goes, and how many of its rows are still to come from
//! the batches it was split across.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use vknf_functions::{ExecError, FunctionInfo, Lane};

use crate::budget::{Category, Charge, MemoryBudget};
use crate::call::{AnswerLayout, CallError, Reply, Rows};
use crate::metrics::{FunctionMetrics, Metrics};

/// Input bytes counted against a function's queue limit and the process's memory budget until the
/// call is answered.
pub(crate) struct Admission {
    bytes: usize,
    queue: Arc<QueueCounters>,
    _charge: Charge,
}

/// What a function's queue holds, and the gauges that publish it.
pub(crate) struct QueueCounters {
    pub(crate) bytes: AtomicUsize,
    pub(crate) requests: AtomicUsize,
    pub(crate) limit: usize,
    pub(crate) budget: MemoryBudget,
    pub(crate) metrics: FunctionMetrics,
}

impl QueueCounters {
    fn publish(&self) {
        self.metrics.queued_bytes.set(self.bytes.load(Ordering::Acquire) as i64);
        self.metrics
            .queued_requests
            .set(self.requests.load(Ordering::Acquire) as i64);
    }
}

impl Admission {
    /// Admits `bytes` if the queue stays within its limit and the process's memory budget has room;
    /// otherwise the `BUSY` to answer.
    pub(crate) fn try_admit(queue: &Arc<QueueCounters>, bytes: usize) -> Result<Admission, CallError> {
        queue
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                queued.checked_add(bytes).filter(|total| *total <= queue.limit)
            })
            .map_err(|queued| {
                CallError::Busy(format!(
                    "the function's queue is full ({queued} of {} bytes queued); retry later",
                    queue.limit
                ))
            })?;
        let charge = match queue.budget.try_charge(Category::Queued, bytes) {
            Ok(charge) => charge,
            Err(refusal) => {
                queue.bytes.fetch_sub(bytes, Ordering::AcqRel);
                return Err(CallError::Busy(refusal.to_string()));
            }
        };
        queue.requests.fetch_add(1, Ordering::AcqRel);
        queue.publish();
        Ok(Admission {
            bytes,
            queue: queue.clone(),
            _charge: charge,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.queue.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        self.queue.requests.fetch_sub(1, Ordering::AcqRel);
        self.queue.publish();
    }
}

struct JobState {
    /// `None` once answered.
    reply: Option<Box<dyn Reply>>,
    prepared: bool,
    rows_left: usize,
    admission: Option<Admission>,
}

/// A call admitted into a function's queue.
pub(crate) struct Job {
    /// The call's rows, given back (emptied) as soon as its answer is complete, so that a front end's
    /// buffer is free again before its client can send the next request.
    rows: RwLock<Rows>,
    pub(crate) n_rows: usize,
    /// Outputs to compute and return (mandatory ones included).
    pub(crate) mask: u32,
    /// Whether the rows' values are still to be checked for NaN and infinities (while they are copied
    /// into a lane: one pass over large calls instead of two).
    pub(crate) check_values: bool,
    pub(crate) deadline: Option<Instant>,
    admitted_at: Instant,
    owner: Arc<JobOwner>,
    state: Mutex<JobState>,
}

/// The function a job belongs to, shared by all its jobs: where their outcomes are counted.
pub(crate) struct JobOwner {
    pub(crate) function: Arc<str>,
    pub(crate) metrics: Metrics,
    pub(crate) function_metrics: FunctionMetrics,
}

/// The rows of one job that went into one batch.
pub(crate) struct Segment {
    pub(crate) job: Arc<Job>,
    /// First row within the job.
    pub(crate) job_row: usize,
    /// First row within the batch.
    pub(crate) batch_row: usize,
    pub(crate) rows: usize,
    /// Set by the copy into the lane when the job's values are checked there and hold a NaN or an
    /// infinity.
    pub(crate) non_finite: std::sync::atomic::AtomicBool,
}

impl Job {
    pub(crate) fn new(
        rows: Rows,
        mask: u32,
        check_values: bool,
        deadline: Option<Instant>,
        reply: Box<dyn Reply>,
        admission: Admission,
        owner: Arc<JobOwner>,
    ) -> Job {
        let n_rows = rows.n_rows();
        Job {
            rows: RwLock::new(rows),
            n_rows,
            mask,
            check_values,
            deadline,
            admitted_at: Instant::now(),
            owner,
            state: Mutex::new(JobState {
                reply: Some(reply),
                prepared: false,
                rows_left: n_rows,
                admission: Some(admission),
            }),
        }
    }

    /// How long the job has been queued.
    pub(crate) fn waited(&self) -> std::time::Duration {
        self.admitted_at.elapsed()
    }

    /// Whether the job needs no more work: answered, failed, or its caller has gone (in which case its
    /// queue slot is released now).
    pub(crate) fn is_settled(&self) -> bool {
        let mut state = self.state.lock();
        let Some(reply) = &state.reply else { return true };
        if reply.is_cancelled() {
            // Nobody reads the answer: drop it without a word and give the queue its bytes back.
            state.reply = None;
            state.admission = None;
            return true;
        }
        false
    }

    /// Answers with an error unless already answered.
    pub(crate) fn fail(&self, error: CallError) {
        let mut state = self.state.lock();
        if let Some(reply) = state.reply.take() {
            self.owner.metrics.error(&self.owner.function, error.code_name());
            reply.fail(error);
        }
        state.admission = None;
        // The rows stay: batches planned before the failure may still copy them.
    }

    /// Gives the rows back once the answer is complete (no batch is left to copy them), unless a
    /// lane still holds them (they go with the job then).
    fn release_rows(&self) {
        if let Some(mut rows) = self.rows.try_write() {
            *rows = Rows::empty();
        }
    }

    /// Copies rows `first..first + count` of the call into `dst` (with streaming stores when a device
    /// reads it, `to_device`); with `check`, says whether any of them holds a NaN or an infinity
    /// (checked while copying).
    pub(crate) fn copy_rows(&self, first: usize, count: usize, dst: &mut [u8], check: bool, to_device: bool) -> bool {
        let rows = self.rows.read();
        if first + count > rows.n_rows() {
            // Given back: the call is answered and nothing reads these rows' outputs.
            return false;
        }
        if check {
            return rows.copy_checked_into(first, count, dst, to_device);
        }
        rows.copy_into(first, count, dst, to_device);
        false
    }

    /// The first non-finite value among rows `first..first + count`: (row, feature).
    pub(crate) fn first_non_finite_in(&self, first: usize, count: usize) -> Option<(usize, usize)> {
        let rows = self.rows.read();
        if first + count > rows.n_rows() {
            return None;
        }
        rows.first_non_finite_in(first, count)
    }

    /// Copies one batch's share of the outputs from the lane straight into the answer; completes the
    /// answer once every row is in.
    pub(crate) fn deliver(&self, segment: &Segment, lane: &dyn Lane, info: &FunctionInfo) -> Result<(), ExecError> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let layout = AnswerLayout {
            n_rows: self.n_rows,
            mask: self.mask,
            info,
        };
        let Some(reply) = state.reply.as_mut() else {
            return Ok(());
        };
        if !state.prepared {
            reply.prepare(&layout);
            state.prepared = true;
        }
        for index in layout.outputs() {
            let row_bytes = info.outputs[index].row_bytes();
            let dst =
                &mut reply.output(index)[segment.job_row * row_bytes..(segment.job_row + segment.rows) * row_bytes];
            lane.read_output(index, segment.batch_row, dst)?;
        }
        state.rows_left -= segment.rows;
        if state.rows_left > 0 {
            return Ok(());
        }
        let reply = state.reply.take().expect("checked above");
        state.admission = None;
        drop(guard);
        // Every row is copied (each segment is delivered after its batch's copy): the rows are done.
        self.release_rows();
        reply.complete(&layout);
        self.owner.function_metrics.requests.inc();
        self.owner.function_metrics.rows.inc_by(self.n_rows as u64);
        self.owner
            .function_metrics
            .request_latency
            .observe(self.admitted_at.elapsed().as_secs_f64());
        Ok(())
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // No admitted call goes unanswered, whatever path dropped it.
        if let Some(reply) = self.state.get_mut().reply.take() {
            let error = CallError::Internal("request dropped before it was answered".into());
            self.owner.metrics.error(&self.owner.function, error.code_name());
            reply.fail(error);
        }
    }
}

/// Jobs of answered calls, kept for the next calls so that admitting a call allocates nothing.
pub(crate) struct JobPool {
    jobs: Mutex<Vec<Arc<Job>>>,
}

/// Answered jobs kept for reuse, at most (more than the calls in flight at once is waste).
const JOBS_KEPT: usize = 256;

impl JobPool {
    pub(crate) fn new() -> JobPool {
        JobPool {
            jobs: Mutex::new(Vec::with_capacity(JOBS_KEPT)),
        }
    }

    /// `job`, shared, in the memory of an earlier job when one is free.
    pub(crate) fn share(&self, job: Job) -> Arc<Job> {
        let spare = self.jobs.lock().pop();
        if let Some(mut spare) = spare
            && let Some(inner) = Arc::get_mut(&mut spare)
        {
            *inner = job;
            return spare;
        }
        Arc::new(job)
    }

    /// Takes a job back for reuse if `job` is its last holder and its call is answered; otherwise lets
    /// go of it (a job dropped unanswered answers its caller `INTERNAL`).
    pub(crate) fn recycle(&self, mut job: Arc<Job>) {
        let Some(inner) = Arc::get_mut(&mut job) else { return };
        let state = inner.state.get_mut();
        if state.reply.is_some() {
            return;
        }
        state.admission = None;
        *inner.rows.get_mut() = Rows::empty();
        let mut jobs = self.jobs.lock();
        if jobs.len() < JOBS_KEPT {
            jobs.push(job);
        }
    }
}
