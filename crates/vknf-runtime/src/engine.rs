//! One loaded version of a function at work: its bounded queue and the batcher that packs queued
//! calls into lanes. A hot reload starts a new engine beside the old one; the old one finishes what it
//! admitted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rayon::prelude::*;
use tokio::sync::{mpsc, watch};
use vknf_functions::{ExecError, Function, FunctionInfo, Lane};

use crate::budget::MemoryBudget;
use crate::call::{Call, CallError, Reply};
use crate::job::{Admission, Job, JobOwner, QueueCounters, Segment};
use crate::lane_worker::{BatchRunner, LaneWorker, WorkerEvent};
use crate::metrics::{FunctionMetrics, Metrics};

/// A lane counted in the `live_lanes` gauge for as long as it exists.
struct CountedLane {
    lane: Box<dyn Lane>,
    metrics: Metrics,
}

impl CountedLane {
    fn new(lane: Box<dyn Lane>, metrics: &Metrics) -> CountedLane {
        metrics.live_lanes.inc();
        CountedLane {
            lane,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for CountedLane {
    fn drop(&mut self) {
        self.metrics.live_lanes.dec();
    }
}

/// Queue and batching settings of one engine.
#[derive(Debug, Clone)]
pub(crate) struct EngineSettings {
    pub(crate) max_wait: Duration,
    pub(crate) max_queued_bytes: usize,
    /// How long an idle lane thread polls for its next batch before it sleeps.
    pub(crate) lane_spin: Duration,
    /// The process's memory budget, charged for what the queue admits.
    pub(crate) budget: MemoryBudget,
}

/// A call handed back because the engine closed meanwhile, so the caller can retry on its successor.
pub(crate) struct Returned {
    pub(crate) call: Call,
    pub(crate) reply: Box<dyn Reply>,
}

/// A loaded function with its queue and batcher.
pub(crate) struct Engine {
    pub(crate) label: Arc<str>,
    pub(crate) info: FunctionInfo,
    queue: Mutex<Option<mpsc::UnboundedSender<Arc<Job>>>>,
    counters: Arc<QueueCounters>,
    owner: Arc<JobOwner>,
    finished: watch::Receiver<bool>,
}

/// Creates the lanes of a freshly loaded function. Blocking (lanes allocate device memory).
pub(crate) fn create_lanes(function: &dyn Function, count: usize) -> Result<Vec<Box<dyn Lane>>, ExecError> {
    (0..count.max(1)).map(|_| function.new_lane()).collect()
}

impl Engine {
    /// Starts the batcher of `function` over `lanes`; device losses are reported on `device_lost`.
    pub(crate) fn start(
        label: Arc<str>,
        function: Arc<dyn Function>,
        lanes: Vec<Box<dyn Lane>>,
        settings: &EngineSettings,
        metrics: &Metrics,
        device_lost: mpsc::UnboundedSender<Arc<str>>,
    ) -> Result<Arc<Engine>, ExecError> {
        let info = function.info().clone();
        if info.input.width == 0 || info.max_batch_rows == 0 || info.outputs.len() > 32 {
            return Err(ExecError::InvalidBatch(format!(
                "function reports input width {}, {} rows per batch and {} outputs",
                info.input.width,
                info.max_batch_rows,
                info.outputs.len()
            )));
        }
        let counted: Vec<CountedLane> = lanes.into_iter().map(|lane| CountedLane::new(lane, metrics)).collect();
        let lane_rows = counted
            .iter()
            .map(|l| l.lane.capacity_rows())
            .min()
            .unwrap_or(0)
            .min(info.max_batch_rows);
        if lane_rows == 0 {
            return Err(ExecError::InvalidBatch("lanes hold no whole input row".into()));
        }
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let (finished_tx, finished_rx) = watch::channel(false);
        let function_metrics = FunctionMetrics::of(metrics, &label);
        let engine = Arc::new(Engine {
            label: label.clone(),
            info: info.clone(),
            queue: Mutex::new(Some(queue_tx)),
            counters: Arc::new(QueueCounters {
                bytes: AtomicUsize::new(0),
                requests: AtomicUsize::new(0),
                limit: settings.max_queued_bytes,
                budget: settings.budget.clone(),
                metrics: function_metrics.clone(),
            }),
            owner: Arc::new(JobOwner {
                function: label.clone(),
                metrics: metrics.clone(),
                function_metrics: function_metrics.clone(),
            }),
            finished: finished_rx,
        });
        let batcher = Arc::new(Batcher {
            function_metrics,
            label,
            info,
            lane_rows,
            max_wait: settings.max_wait,
            metrics: metrics.clone(),
            device_lost,
        });
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut workers = Vec::with_capacity(counted.len());
        for (index, lane) in counted.into_iter().enumerate() {
            let runner: Arc<dyn BatchRunner<CountedLane, Batch>> = batcher.clone();
            let worker = LaneWorker::spawn(
                format!("vknf-lane-{index}"),
                index,
                lane,
                runner,
                events_tx.clone(),
                settings.lane_spin,
            )
            .map_err(|e| ExecError::Failed(format!("cannot start a lane thread: {e}")))?;
            workers.push(worker);
        }
        drop(events_tx);
        tokio::spawn(async move {
            batcher.run(queue_rx, workers, events_rx).await;
            let _ = finished_tx.send(true);
        });
        Ok(engine)
    }

    /// Checks and admits a call, or answers it with an error (`BUSY`, `TOO_LARGE`, a shape error).
    /// Hands the call back when the engine has closed, so the caller can retry on its successor.
    pub(crate) fn submit(&self, call: Call, reply: Box<dyn Reply>) -> Result<(), Box<Returned>> {
        // Checks and admission run on the caller's thread, outside the queue's lock: scanning a large
        // call for NaN takes a while, and callers on other connections must not wait for it.
        let fail = |reply: Box<dyn Reply>, error: CallError| {
            self.owner.metrics.error(&self.label, error.code_name());
            reply.fail(error);
            Ok(())
        };
        if let Err(error) = call.rows.check(&self.info) {
            return fail(reply, error);
        }
        let unknown = call.outputs & !self.info.full_mask();
        if unknown != 0 {
            let error = CallError::Shape(format!(
                "output mask {:#x} names outputs the function lacks (it has {})",
                call.outputs,
                self.info.outputs.len()
            ));
            return fail(reply, error);
        }
        let bytes = call.rows.as_bytes().len();
        if bytes > self.counters.limit {
            let error = CallError::TooLarge(format!(
                "{bytes} bytes of rows exceed this function's queue of {} bytes",
                self.counters.limit
            ));
            return fail(reply, error);
        }
        let admission = match Admission::try_admit(&self.counters, bytes) {
            Ok(admission) => admission,
            Err(error) => return fail(reply, error),
        };
        let queue = self.queue.lock();
        let Some(queue_tx) = queue.as_ref() else {
            // Closed meanwhile (a reload or removal): the caller retries on the successor.
            drop(admission);
            return Err(Box::new(Returned { call, reply }));
        };
        let job = Job::new(
            call.rows,
            call.outputs | self.info.mandatory_mask(),
            call.deadline,
            reply,
            admission,
            self.owner.clone(),
        );
        // The receiver lives until the queue closes, and closing happens under this lock.
        let _ = queue_tx.send(Arc::new(job));
        Ok(())
    }

    /// Stops admitting calls; queued ones still run.
    pub(crate) fn close(&self) {
        self.queue.lock().take();
    }

    /// Waits until every admitted call is answered and every lane released.
    pub(crate) async fn drained(&self) {
        let mut finished = self.finished.clone();
        let _ = finished.wait_for(|done| *done).await;
    }

    /// Input bytes admitted and not yet answered.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.counters.bytes.load(Ordering::Acquire)
    }

    /// Calls admitted and not yet answered.
    pub(crate) fn queued_requests(&self) -> usize {
        self.counters.requests.load(Ordering::Acquire)
    }
}

/// Waits shorter than this are polled rather than timed (tokio's timer resolution is 1 ms).
const SHORT_WAIT: Duration = Duration::from_millis(2);

/// Takes the next job before `deadline`, yielding to the runtime between looks.
async fn poll_until(
    queue: &mut mpsc::UnboundedReceiver<Arc<Job>>,
    deadline: tokio::time::Instant,
) -> Option<(Arc<Job>, usize)> {
    loop {
        match queue.try_recv() {
            Ok(job) => return Some((job, 0)),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if tokio::time::Instant::now() >= deadline => return None,
            Err(mpsc::error::TryRecvError::Empty) => tokio::task::yield_now().await,
        }
    }
}

/// Which lane threads are idle, busy or gone.
struct LaneCounts {
    free: Vec<usize>,
    running: usize,
    live: usize,
}

impl LaneCounts {
    fn settle(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Done(index) => {
                self.running -= 1;
                self.free.push(index);
            }
            WorkerEvent::Lost(_) => {
                self.running -= 1;
                self.live -= 1;
            }
            WorkerEvent::Stopped(_) => self.live -= 1,
        }
    }
}

struct Batcher {
    label: Arc<str>,
    function_metrics: FunctionMetrics,
    info: FunctionInfo,
    lane_rows: usize,
    max_wait: Duration,
    metrics: Metrics,
    device_lost: mpsc::UnboundedSender<Arc<str>>,
}

impl BatchRunner<CountedLane, Batch> for Batcher {
    fn run_batch(&self, lane: &mut CountedLane, batch: Batch) -> bool {
        self.execute(lane, batch)
    }
}

impl Batcher {
    async fn run(
        self: Arc<Self>,
        mut queue: mpsc::UnboundedReceiver<Arc<Job>>,
        workers: Vec<LaneWorker<Batch>>,
        mut events: mpsc::UnboundedReceiver<WorkerEvent>,
    ) {
        let mut lanes = LaneCounts {
            free: (0..workers.len()).collect(),
            running: 0,
            live: workers.len(),
        };
        // A job split across batches: its remaining rows start at this row.
        let mut carry: Option<(Arc<Job>, usize)> = None;
        loop {
            while let Ok(event) = events.try_recv() {
                lanes.settle(event);
            }
            if lanes.free.is_empty() {
                if lanes.running == 0 {
                    // Every lane died with the device; the server is reloading the function.
                    // Answer what arrives until this runtime is closed and replaced.
                    self.fail_until_closed(&mut queue, carry.take()).await;
                    break;
                }
                if let Some(event) = events.recv().await {
                    lanes.settle(event);
                }
                continue;
            }
            let first = match carry.take() {
                Some(split) => split,
                None => match queue.recv().await {
                    Some(job) => (job, 0),
                    None => break,
                },
            };
            // Batches may have finished while this task waited for the job.
            while let Ok(event) = events.try_recv() {
                lanes.settle(event);
            }
            let Some(worker) = lanes.free.pop() else {
                carry = Some(first);
                continue;
            };
            // With nothing running, the device is idle: waiting for more rows would only add latency.
            let wait = if lanes.running == 0 {
                Duration::ZERO
            } else {
                self.max_wait
            };
            let batch = self.fill(first, &mut queue, &mut carry, wait).await;
            if batch.segments.is_empty() {
                lanes.free.push(worker);
                continue;
            }
            lanes.running += 1;
            workers[worker].hand(batch);
        }
        for worker in &workers {
            worker.stop();
        }
        // Every lane is released before the runtime reports itself drained.
        while lanes.live > 0 {
            match events.recv().await {
                Some(event) => lanes.settle(event),
                None => break,
            }
        }
    }

    async fn fail_until_closed(&self, queue: &mut mpsc::UnboundedReceiver<Arc<Job>>, carry: Option<(Arc<Job>, usize)>) {
        let lost = || CallError::DeviceLost("the device was lost; the function is being reloaded".into());
        if let Some((job, _)) = carry {
            job.fail(lost());
        }
        while let Some(job) = queue.recv().await {
            job.fail(lost());
        }
    }

    /// Plans a batch: takes rows until a lane is full or `wait` has passed since the first row. The
    /// rows are copied later, by the lane's thread, straight into the lane's input memory.
    async fn fill(
        &self,
        first: (Arc<Job>, usize),
        queue: &mut mpsc::UnboundedReceiver<Arc<Job>>,
        carry: &mut Option<(Arc<Job>, usize)>,
        wait: Duration,
    ) -> Batch {
        let deadline = tokio::time::Instant::now() + wait;
        let mut batch = Batch {
            segments: Vec::new(),
            rows: 0,
            mask: 0,
        };
        let mut next = Some(first);
        while let Some((job, start)) = next.take() {
            if start == 0
                && let Some(deadline) = job.deadline
                && Instant::now() >= deadline
            {
                job.fail(CallError::DeadlineExceeded(format!(
                    "the call waited {:?} in the queue, past its deadline",
                    job.waited()
                )));
            } else if !job.is_settled() {
                let take = (job.n_rows - start).min(self.lane_rows - batch.rows);
                batch.mask |= job.mask;
                batch.segments.push(Segment {
                    job: job.clone(),
                    job_row: start,
                    batch_row: batch.rows,
                    rows: take,
                });
                batch.rows += take;
                if start + take < job.n_rows {
                    *carry = Some((job, start + take));
                    break;
                }
            }
            if batch.rows == self.lane_rows {
                break;
            }
            next = match queue.try_recv() {
                Ok(job) => Some((job, 0)),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) if wait.is_zero() => None,
                // Tokio's timers tick in milliseconds: sub-millisecond waits poll instead.
                Err(mpsc::error::TryRecvError::Empty) if wait < SHORT_WAIT => poll_until(queue, deadline).await,
                Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(job)) => Some((job, 0)),
                    _ => None,
                },
            };
        }
        batch
    }

    /// Runs one batch on its lane's thread and answers its requests; false when the lane is lost.
    fn execute(&self, lane: &mut CountedLane, batch: Batch) -> bool {
        self.function_metrics.batch_rows.observe(batch.rows as f64);
        let started = Instant::now();
        let row_bytes = self.info.input.width * self.info.input.dtype.size();
        let written = lane.lane.write_input(&mut |input: &mut [u8]| {
            let input = &mut input[..batch.rows * row_bytes];
            if input.len() < PARALLEL_COPY_BYTES {
                copy_rows(&batch.segments, input, 0, row_bytes);
                return;
            }
            // One core cannot fill device memory at the bus's rate: large batches are copied by several.
            let chunk_rows = (PARALLEL_COPY_BYTES / row_bytes).max(1);
            input
                .par_chunks_mut(chunk_rows * row_bytes)
                .enumerate()
                .for_each(|(index, chunk)| copy_rows(&batch.segments, chunk, index * chunk_rows, row_bytes));
        });
        let ran = written.and_then(|()| lane.lane.run(batch.rows, batch.mask));
        let failure = match ran {
            Ok(()) => {
                self.function_metrics
                    .execution_time
                    .observe(started.elapsed().as_secs_f64());
                let mut failure = None;
                for segment in &batch.segments {
                    if let Err(error) = segment.job.deliver(segment, lane.lane.as_ref(), &self.info) {
                        segment
                            .job
                            .fail(CallError::Internal(format!("cannot read the results: {error}")));
                        failure = Some(error);
                    }
                }
                failure.filter(ExecError::is_device_lost)
            }
            Err(error) => Some(error),
        };
        let Some(error) = failure else { return true };
        let lost = error.is_device_lost();
        tracing::error!(function = %self.label, %error, "batch of {} rows failed", batch.rows);
        for segment in &batch.segments {
            segment.job.fail(match &error {
                ExecError::DeviceLost(_) => CallError::DeviceLost(error.to_string()),
                ExecError::InvalidInput(message) => CallError::InvalidInput(message.clone()),
                _ => CallError::Internal(error.to_string()),
            });
        }
        if lost {
            self.metrics.device_losses.inc();
            let _ = self.device_lost.send(self.label.clone());
            return false;
        }
        true
    }
}

/// Batches at least this large are copied into the lane by several threads, in chunks of this size.
const PARALLEL_COPY_BYTES: usize = 1 << 20;

/// Copies the rows of `segments` (ordered by batch row) that fall into `dst`, which holds the
/// batch's rows from `first_row` on, `width` bytes each.
fn copy_rows(segments: &[Segment], dst: &mut [u8], first_row: usize, width: usize) {
    let end_row = first_row + dst.len() / width;
    let first_segment = segments.partition_point(|s| s.batch_row + s.rows <= first_row);
    for segment in &segments[first_segment..] {
        if segment.batch_row >= end_row {
            break;
        }
        let from = segment.batch_row.max(first_row);
        let to = (segment.batch_row + segment.rows).min(end_row);
        segment.job.rows.copy_into(
            segment.job_row + (from - segment.batch_row),
            to - from,
            &mut dst[(from - first_row) * width..(to - first_row) * width],
        );
    }
}

struct Batch {
    segments: Vec<Segment>,
    rows: usize,
    mask: u32,
}
