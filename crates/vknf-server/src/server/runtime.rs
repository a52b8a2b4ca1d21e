//! A loaded function at work: its bounded request queue and the batcher that packs queued
//! requests into lanes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rayon::prelude::*;
use tokio::sync::{mpsc, watch};

use super::job::{Admission, Job, Responder, Segment};
use super::lane_worker::{BatchRunner, LaneWorker, WorkerEvent};
use crate::exec::{ExecError, Function, FunctionInfo, Lane};
use crate::manifest::{FunctionKey, FunctionSpec};
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, InferRequest};

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

/// Queue and batching settings of one runtime.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeSettings {
    pub(crate) max_wait: Duration,
    pub(crate) max_queued_bytes: usize,
    /// How long an idle lane thread polls for its next batch before it sleeps.
    pub(crate) lane_spin: Duration,
}

/// A request on its way into a runtime, handed back if the runtime has closed meanwhile.
pub(crate) struct Submission {
    pub(crate) request: InferRequest,
    pub(crate) mask: u32,
    pub(crate) responder: Responder,
    pub(crate) connection_closed: Arc<AtomicBool>,
}

/// A loaded function with its queue and batcher.
pub(crate) struct FunctionRuntime {
    pub(crate) label: Arc<str>,
    pub(crate) info: FunctionInfo,
    queue: Mutex<Option<mpsc::UnboundedSender<Arc<Job>>>>,
    queued_bytes: Arc<AtomicUsize>,
    queued_requests: Arc<AtomicUsize>,
    max_queued_bytes: usize,
    metrics: Metrics,
    finished: watch::Receiver<bool>,
}

/// Creates the lanes of a freshly loaded function. Blocking (lanes allocate device memory).
pub(crate) fn create_lanes(function: &dyn Function, count: usize) -> Result<Vec<Box<dyn Lane>>, ExecError> {
    (0..count.max(1)).map(|_| function.new_lane()).collect()
}

impl FunctionRuntime {
    /// Starts the batcher of `function` over `lanes`.
    pub(crate) fn start(
        spec: FunctionSpec,
        function: Arc<dyn Function>,
        lanes: Vec<Box<dyn Lane>>,
        settings: &RuntimeSettings,
        metrics: &Metrics,
        device_lost: mpsc::UnboundedSender<FunctionKey>,
    ) -> Result<Arc<FunctionRuntime>, ExecError> {
        let info = function.info().clone();
        if info.input_width == 0 || info.max_batch_rows == 0 || info.outputs.len() > 32 {
            return Err(ExecError::InvalidBatch(format!(
                "function reports input width {}, {} rows per batch and {} outputs",
                info.input_width,
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
        let label: Arc<str> = spec.key.to_string().into();
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let (finished_tx, finished_rx) = watch::channel(false);
        let runtime = Arc::new(FunctionRuntime {
            label: label.clone(),
            info: info.clone(),
            queue: Mutex::new(Some(queue_tx)),
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            queued_requests: Arc::new(AtomicUsize::new(0)),
            max_queued_bytes: settings.max_queued_bytes,
            metrics: metrics.clone(),
            finished: finished_rx,
        });
        let batcher = Batcher {
            key: spec.key,
            label,
            info,
            lane_rows,
            max_wait: spec.max_wait.unwrap_or(settings.max_wait),
            metrics: metrics.clone(),
            device_lost,
        };
        let batcher = Arc::new(batcher);
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
        Ok(runtime)
    }

    /// Admits a request into the queue, or answers it with `BUSY` / `TOO_LARGE`. Hands the
    /// submission back when the runtime has closed, so the caller can retry on its successor.
    pub(crate) fn submit(&self, submission: Submission) -> Result<(), Box<Submission>> {
        let queue = self.queue.lock();
        let Some(queue_tx) = queue.as_ref() else {
            return Err(Box::new(submission));
        };
        let bytes = submission.request.rows.len();
        if bytes > self.max_queued_bytes {
            submission.responder.send_error(
                ErrorCode::TooLarge,
                &format!(
                    "{bytes} bytes of rows exceed this function's queue of {} bytes",
                    self.max_queued_bytes
                ),
            );
            return Ok(());
        }
        let Some(admission) = Admission::try_admit(
            &self.queued_bytes,
            &self.queued_requests,
            bytes,
            self.max_queued_bytes,
            &self.metrics,
            &self.label,
        ) else {
            submission.responder.send_error(
                ErrorCode::Busy,
                &format!(
                    "queue of {} is full ({} bytes queued); retry later",
                    self.label,
                    self.queued_bytes()
                ),
            );
            return Ok(());
        };
        let job = Job::new(
            submission.request,
            submission.mask,
            submission.responder,
            admission,
            submission.connection_closed,
        );
        // The receiver lives until the queue closes, and closing happens under this lock.
        let _ = queue_tx.send(Arc::new(job));
        Ok(())
    }

    /// Stops admitting requests; queued ones still run.
    pub(crate) fn close(&self) {
        self.queue.lock().take();
    }

    /// Waits until every admitted request is answered and every lane released.
    pub(crate) async fn drained(&self) {
        let mut finished = self.finished.clone();
        let _ = finished.wait_for(|done| *done).await;
    }

    /// Input bytes admitted and not yet answered.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }

    /// Requests admitted and not yet answered.
    pub(crate) fn queued_requests(&self) -> usize {
        self.queued_requests.load(Ordering::Acquire)
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
    key: FunctionKey,
    label: Arc<str>,
    info: FunctionInfo,
    lane_rows: usize,
    max_wait: Duration,
    metrics: Metrics,
    device_lost: mpsc::UnboundedSender<FunctionKey>,
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
        let message = "the device was lost; the function is being reloaded";
        if let Some((job, _)) = carry {
            job.fail(ErrorCode::DeviceLost, message);
        }
        while let Some(job) = queue.recv().await {
            job.fail(ErrorCode::DeviceLost, message);
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
            if !job.is_settled() {
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
        let labels = Metrics::function(&self.label);
        self.metrics
            .batch_rows
            .get_or_create(&labels)
            .observe(batch.rows as f64);
        let want: Vec<bool> = (0..self.info.outputs.len())
            .map(|i| batch.mask & (1 << i) != 0)
            .collect();
        let started = Instant::now();
        let width = self.info.input_width;
        let written = lane.lane.write_input(&mut |input: &mut [f32]| {
            let input = &mut input[..batch.rows * width];
            if input.len() * 4 < PARALLEL_COPY_BYTES {
                copy_rows(&batch.segments, input, 0, width);
                return;
            }
            // One core cannot fill device memory at the bus's rate: large batches are copied by several.
            let chunk_rows = (PARALLEL_COPY_BYTES / 4 / width).max(1);
            input
                .par_chunks_mut(chunk_rows * width)
                .enumerate()
                .for_each(|(index, chunk)| copy_rows(&batch.segments, chunk, index * chunk_rows, width));
        });
        let ran = written.and_then(|()| lane.lane.run(batch.rows, &want));
        let failure = match ran {
            Ok(outputs) => {
                self.metrics
                    .execution_time
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64());
                match self.check_outputs(&outputs.outputs, batch.rows, &want) {
                    Ok(()) => {
                        for segment in &batch.segments {
                            segment
                                .job
                                .deliver(segment, &outputs.outputs, &self.info, &self.label, &self.metrics);
                        }
                        None
                    }
                    Err(reason) => Some(ExecError::Failed(reason)),
                }
            }
            Err(error) => Some(error),
        };
        let Some(error) = failure else { return true };
        let lost = error.is_device_lost();
        let code = if lost {
            ErrorCode::DeviceLost
        } else {
            ErrorCode::Internal
        };
        tracing::error!(function = %self.label, %error, "batch of {} rows failed", batch.rows);
        for segment in &batch.segments {
            segment.job.fail(code, &error.to_string());
        }
        if lost {
            self.metrics.device_losses.inc();
            let _ = self.device_lost.send(self.key.clone());
            return false;
        }
        true
    }

    fn check_outputs(&self, outputs: &[Option<&[u8]>], rows: usize, want: &[bool]) -> Result<(), String> {
        if outputs.len() != self.info.outputs.len() {
            return Err(format!(
                "function returned {} outputs, declared {}",
                outputs.len(),
                self.info.outputs.len()
            ));
        }
        for ((output, info), wanted) in outputs.iter().zip(&self.info.outputs).zip(want) {
            let needed = rows * info.width * info.dtype.size();
            match output {
                Some(data) if data.len() >= needed => {}
                Some(data) => {
                    return Err(format!(
                        "output {} has {} bytes, {rows} rows need {needed}",
                        info.name,
                        data.len()
                    ));
                }
                None if *wanted => return Err(format!("output {} was asked for but not returned", info.name)),
                None => {}
            }
        }
        Ok(())
    }
}

/// Batches at least this large are copied into the lane by several threads, in chunks of this size.
const PARALLEL_COPY_BYTES: usize = 1 << 20;

/// Copies the rows of `segments` (ordered by batch row) that fall into `dst`, which holds the
/// batch's rows from `first_row` on.
fn copy_rows(segments: &[Segment], dst: &mut [f32], first_row: usize, width: usize) {
    let end_row = first_row + dst.len() / width;
    let first_segment = segments.partition_point(|s| s.batch_row + s.rows <= first_row);
    for segment in &segments[first_segment..] {
        if segment.batch_row >= end_row {
            break;
        }
        let from = segment.batch_row.max(first_row);
        let to = (segment.batch_row + segment.rows).min(end_row);
        segment.job.request.decode_rows_into(
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
