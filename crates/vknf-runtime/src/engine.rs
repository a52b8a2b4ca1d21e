//! One loaded version of a function at work: its bounded queue and the batcher that packs queued
//! calls into lanes. A hot reload starts a new engine beside the old one; the old one finishes what it
//! admitted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use rayon::prelude::*;
use tokio::sync::{mpsc, watch};
use vknf_functions::{ExecError, Function, FunctionInfo, Lane};

use crate::budget::MemoryBudget;
use crate::call::{Call, CallError, Reply};
use crate::job::{Admission, Job, JobOwner, JobPool, QueueCounters, Segment};
use crate::lane_worker::{BatchRunner, LaneWorker, WorkerEvent};
use crate::metrics::{FunctionMetrics, Metrics};

/// The lanes one load of a function made on one device.
pub(crate) struct DeviceLanes {
    /// The device's index in the loader's order.
    pub(crate) device: usize,
    /// The device's generation when the lanes were made. It grows with every reset of the device, so
    /// that a loss reported late by a lane of an earlier generation retires none of their successors.
    pub(crate) generation: u64,
    pub(crate) lanes: Vec<Box<dyn Lane>>,
}

/// A change of an engine's devices, for its batcher.
pub(crate) enum LaneChange {
    /// Lanes of a device (freshly reset) to take on.
    Add(DeviceLanes),
    /// The device's lanes up to this generation are lost: retire them, idle or once idle.
    Lost { device: usize, generation: u64 },
}

/// A device loss, as a lane reports it to the runtime's recovery.
#[derive(Debug, Clone)]
pub(crate) struct DeviceLoss {
    pub(crate) device: usize,
    pub(crate) generation: u64,
    pub(crate) function: Arc<str>,
    /// The reporting function's own batch missed its kernel deadline (it caused the loss).
    pub(crate) deadline_missed: bool,
}

/// A lane counted in the `live_lanes` and per-device gauges for as long as it exists.
struct CountedLane {
    lane: Box<dyn Lane>,
    device: usize,
    generation: u64,
    metrics: Metrics,
    /// The device's batch and row counters, looked up once (a look-up allocates its labels).
    device_batches: Counter,
    device_rows: Counter,
}

impl CountedLane {
    fn new(lane: Box<dyn Lane>, device: usize, generation: u64, metrics: &Metrics) -> CountedLane {
        metrics.live_lanes.inc();
        metrics
            .device_lanes
            .get_or_create(&Metrics::device_labels(device))
            .inc();
        let labels = Metrics::device_labels(device);
        CountedLane {
            lane,
            device,
            generation,
            metrics: metrics.clone(),
            device_batches: metrics.device_batches.get_or_create(&labels).clone(),
            device_rows: metrics.device_rows.get_or_create(&labels).clone(),
        }
    }
}

impl Drop for CountedLane {
    fn drop(&mut self) {
        self.metrics.live_lanes.dec();
        self.metrics
            .device_lanes
            .get_or_create(&Metrics::device_labels(self.device))
            .dec();
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

/// A loaded function with its queue and batcher, running on the lanes of one or more devices.
pub(crate) struct Engine {
    pub(crate) label: Arc<str>,
    pub(crate) info: FunctionInfo,
    queue: Mutex<Option<mpsc::UnboundedSender<Arc<Job>>>>,
    /// Changes of the engine's devices for the batcher: lanes of a recovered device, a device lost.
    additions: mpsc::UnboundedSender<LaneChange>,
    /// Rows of the largest batch; lanes added later must hold at least this many.
    lane_rows: usize,
    /// Set when the function is quarantined: queued calls are answered `QUARANTINED`, none runs.
    quarantine: Arc<Mutex<Option<String>>>,
    counters: Arc<QueueCounters>,
    owner: Arc<JobOwner>,
    /// Jobs of answered calls, for the next calls (shared with the batcher, which gives them back).
    jobs: Arc<JobPool>,
    finished: watch::Receiver<bool>,
}

/// Creates `count` lanes of a freshly loaded function. Blocking (lanes allocate device memory).
pub(crate) fn create_lanes(function: &dyn Function, count: usize) -> Result<Vec<Box<dyn Lane>>, ExecError> {
    (0..count.max(1)).map(|_| function.new_lane()).collect()
}

impl Engine {
    /// Starts the batcher of a function described by `info` over the lanes of its devices; device
    /// losses are reported on `device_lost`.
    pub(crate) fn start(
        label: Arc<str>,
        info: FunctionInfo,
        devices: Vec<DeviceLanes>,
        settings: &EngineSettings,
        metrics: &Metrics,
        device_lost: mpsc::UnboundedSender<DeviceLoss>,
    ) -> Result<Arc<Engine>, ExecError> {
        if info.input.width == 0 || info.max_batch_rows == 0 || info.outputs.len() > 32 {
            return Err(ExecError::InvalidBatch(format!(
                "function reports input width {}, {} rows per batch and {} outputs",
                info.input.width,
                info.max_batch_rows,
                info.outputs.len()
            )));
        }
        let lane_rows = devices
            .iter()
            .flat_map(|d| d.lanes.iter())
            .map(|lane| lane.capacity_rows())
            .min()
            .unwrap_or(0)
            .min(info.max_batch_rows);
        if lane_rows == 0 {
            return Err(ExecError::InvalidBatch("lanes hold no whole input row".into()));
        }
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let (additions_tx, additions_rx) = mpsc::unbounded_channel();
        let (finished_tx, finished_rx) = watch::channel(false);
        let function_metrics = FunctionMetrics::of(metrics, &label);
        let quarantine = Arc::new(Mutex::new(None));
        let jobs = Arc::new(JobPool::new());
        let engine = Arc::new(Engine {
            label: label.clone(),
            info: info.clone(),
            queue: Mutex::new(Some(queue_tx)),
            additions: additions_tx,
            lane_rows,
            quarantine: quarantine.clone(),
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
            jobs: jobs.clone(),
            finished: finished_rx,
        });
        let batcher = Arc::new(Batcher {
            function_metrics,
            label,
            info,
            lane_rows,
            quarantine,
            segment_lists: Mutex::new(Vec::new()),
            jobs,
            max_wait: settings.max_wait,
            metrics: metrics.clone(),
            device_lost,
        });
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut lanes = LaneSet::new(batcher.clone(), events_tx, settings.lane_spin);
        for device in devices {
            lanes.add(device);
        }
        if lanes.live == 0 {
            return Err(ExecError::Failed("cannot start any lane thread".into()));
        }
        tokio::spawn(async move {
            batcher.run(queue_rx, lanes, events_rx, additions_rx).await;
            let _ = finished_tx.send(true);
        });
        Ok(engine)
    }

    /// Hands the batcher the lanes of a device that came back (after its loss and reset).
    pub(crate) fn add_lanes(&self, device: DeviceLanes) -> Result<(), ExecError> {
        if let Some(small) = device.lanes.iter().find(|lane| lane.capacity_rows() < self.lane_rows) {
            return Err(ExecError::InvalidBatch(format!(
                "device {}'s lanes hold {} rows, the function's batches {}",
                device.device,
                small.capacity_rows(),
                self.lane_rows
            )));
        }
        // A send fails only once the batcher has ended (the engine drained): the lanes are dropped.
        let _ = self.additions.send(LaneChange::Add(device));
        Ok(())
    }

    /// Tells the batcher that `device` is lost up to `generation`, so that it stops handing batches to
    /// its lanes before they fail one each (another function's lane found the loss).
    pub(crate) fn device_lost(&self, device: usize, generation: u64) {
        let _ = self.additions.send(LaneChange::Lost { device, generation });
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
        // Large calls have their values checked while the lane copies them (one pass over the rows
        // instead of two); small ones here, so that their error comes at once.
        let defer_values = self.info.rejects_non_finite() && call.rows.as_bytes().len() >= DEFERRED_CHECK_BYTES;
        if let Err(error) = call.rows.check_shape(&self.info, !defer_values) {
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
            defer_values,
            call.deadline,
            reply,
            admission,
            self.owner.clone(),
        );
        // The receiver lives until the queue closes, and closing happens under this lock.
        let _ = queue_tx.send(self.jobs.share(job));
        Ok(())
    }

    /// Stops admitting calls; queued ones still run.
    pub(crate) fn close(&self) {
        self.queue.lock().take();
    }

    /// Stops admitting calls and answers the queued ones with `QUARANTINED` (`why`) instead of
    /// running them: the function's kernels are not trusted to finish.
    pub(crate) fn quarantine(&self, why: String) {
        *self.quarantine.lock() = Some(why);
        self.close();
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

/// The next message already in `queue`, without waiting (`Pending` when there is none yet).
///
/// Not `try_recv`: when it meets a message whose sender is still writing it, tokio's `try_recv` parks
/// the thread on a waker it allocates, so a busy host would allocate per request there; `poll_recv`
/// registers the task's own waker and answers `Pending` instead.
async fn ready_message<T>(queue: &mut mpsc::UnboundedReceiver<T>) -> Poll<Option<T>> {
    std::future::poll_fn(|cx| Poll::Ready(queue.poll_recv(cx))).await
}

/// Takes the next job before `deadline`, yielding to the runtime between looks.
async fn poll_until(
    queue: &mut mpsc::UnboundedReceiver<Arc<Job>>,
    deadline: tokio::time::Instant,
) -> Option<(Arc<Job>, usize)> {
    loop {
        match ready_message(queue).await {
            Poll::Ready(Some(job)) => return Some((job, 0)),
            Poll::Ready(None) => return None,
            Poll::Pending if tokio::time::Instant::now() >= deadline => return None,
            Poll::Pending => tokio::task::yield_now().await,
        }
    }
}

/// The lane threads of an engine, across its devices: which are idle, busy or gone, and which
/// devices are down.
struct LaneSet {
    workers: Vec<Option<LaneWorker<Batch>>>,
    /// Device and generation of each lane, by lane index.
    origin: Vec<(usize, u64)>,
    free: Vec<usize>,
    running: usize,
    live: usize,
    /// Devices whose lanes up to this generation are lost: their idle lanes are retired, not used.
    down: BTreeMap<usize, u64>,
    runner: Arc<Batcher>,
    events: mpsc::UnboundedSender<WorkerEvent>,
    spin: Duration,
}

impl LaneSet {
    fn new(runner: Arc<Batcher>, events: mpsc::UnboundedSender<WorkerEvent>, spin: Duration) -> LaneSet {
        LaneSet {
            workers: Vec::new(),
            origin: Vec::new(),
            free: Vec::new(),
            running: 0,
            live: 0,
            down: BTreeMap::new(),
            runner,
            events,
            spin,
        }
    }

    fn change(&mut self, change: LaneChange) {
        match change {
            LaneChange::Add(device) => self.add(device),
            LaneChange::Lost { device, generation } => self.mark_down(device, generation),
        }
    }

    /// Lanes of `device` up to `generation` are lost: idle ones are retired now, busy ones when done.
    fn mark_down(&mut self, device: usize, generation: u64) {
        let lost = self.down.entry(device).or_insert(generation);
        *lost = (*lost).max(generation);
        let (retired, kept): (Vec<usize>, Vec<usize>) = self.free.iter().partition(|&&free| self.is_down(free));
        self.free = kept;
        for index in retired {
            self.retire(index);
        }
    }

    /// Starts a thread for each lane of `device`. Lanes of the device's earlier generations are lost.
    fn add(&mut self, device: DeviceLanes) {
        if device.generation > 0 {
            self.mark_down(device.device, device.generation - 1);
        }
        for lane in device.lanes {
            let index = self.workers.len();
            let lane = CountedLane::new(lane, device.device, device.generation, &self.runner.metrics);
            let runner: Arc<dyn BatchRunner<CountedLane, Batch>> = self.runner.clone();
            match LaneWorker::spawn(
                format!("vknf-lane-{}-{index}", device.device),
                index,
                lane,
                runner,
                self.events.clone(),
                self.spin,
            ) {
                Ok(worker) => {
                    self.workers.push(Some(worker));
                    self.origin.push((device.device, device.generation));
                    self.free.push(index);
                    self.live += 1;
                }
                Err(error) => {
                    tracing::error!(function = %self.runner.label, %error, "cannot start a lane thread");
                }
            }
        }
    }

    fn is_down(&self, index: usize) -> bool {
        let (device, generation) = self.origin[index];
        self.down.get(&device).is_some_and(|lost| generation <= *lost)
    }

    /// Stops the thread of lane `index` (it reports `Stopped` once its lane is released).
    fn retire(&mut self, index: usize) {
        self.workers[index].take();
    }

    fn settle(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Done(index) => {
                self.running -= 1;
                if self.is_down(index) {
                    self.retire(index);
                } else {
                    self.free.push(index);
                }
            }
            WorkerEvent::Lost(index) => {
                self.running -= 1;
                self.live -= 1;
                self.workers[index] = None;
                // The device is gone for every lane of this generation and earlier: retire the idle ones
                // now rather than fail one more batch on each.
                let (device, generation) = self.origin[index];
                self.mark_down(device, generation);
            }
            WorkerEvent::Stopped(index) => {
                self.live -= 1;
                self.workers[index] = None;
            }
        }
    }

    fn hand(&mut self, index: usize, batch: Batch) {
        self.running += 1;
        if let Some(worker) = &self.workers[index] {
            worker.hand(batch);
        }
    }

    fn stop_all(&mut self) {
        for worker in self.workers.iter().flatten() {
            worker.stop();
        }
    }
}

struct Batcher {
    label: Arc<str>,
    function_metrics: FunctionMetrics,
    info: FunctionInfo,
    lane_rows: usize,
    quarantine: Arc<Mutex<Option<String>>>,
    /// Emptied segment lists of finished batches, for the next ones.
    segment_lists: Mutex<Vec<Vec<Segment>>>,
    /// Where answered jobs go back for reuse.
    jobs: Arc<JobPool>,
    max_wait: Duration,
    metrics: Metrics,
    device_lost: mpsc::UnboundedSender<DeviceLoss>,
}

impl BatchRunner<CountedLane, Batch> for Batcher {
    fn run_batch(&self, lane: &mut CountedLane, mut batch: Batch) -> bool {
        let kept = self.execute(lane, &batch);
        // The segment list goes back to the batcher for a later batch, and jobs whose last rows ran
        // here go back to the engine for later calls: no allocation per batch or per call.
        for segment in batch.segments.drain(..) {
            self.jobs.recycle(segment.job);
        }
        let mut pool = self.segment_lists.lock();
        if pool.len() < SEGMENT_LISTS_KEPT {
            pool.push(std::mem::take(&mut batch.segments));
        }
        kept
    }
}

fn device_lost_error() -> CallError {
    CallError::DeviceLost("every device of the function was lost; it is being recovered".into())
}

impl Batcher {
    async fn run(
        self: Arc<Self>,
        mut queue: mpsc::UnboundedReceiver<Arc<Job>>,
        mut lanes: LaneSet,
        mut events: mpsc::UnboundedReceiver<WorkerEvent>,
        mut additions: mpsc::UnboundedReceiver<LaneChange>,
    ) {
        // A job split across batches: its remaining rows start at this row.
        let mut carry: Option<(Arc<Job>, usize)> = None;
        loop {
            while let Poll::Ready(Some(event)) = ready_message(&mut events).await {
                lanes.settle(event);
            }
            while let Poll::Ready(Some(change)) = ready_message(&mut additions).await {
                lanes.change(change);
            }
            if lanes.free.is_empty() {
                if lanes.running == 0 {
                    // No lane can run: every device of the function is lost. Answer calls with
                    // DEVICE_LOST until a recovered device brings lanes or the engine closes.
                    if let Some((job, _)) = carry.take() {
                        job.fail(device_lost_error());
                    }
                    tokio::select! {
                        Some(change) = additions.recv() => lanes.change(change),
                        job = queue.recv() => match job {
                            Some(job) => job.fail(device_lost_error()),
                            None => break,
                        },
                    }
                    continue;
                }
                tokio::select! {
                    Some(event) = events.recv() => lanes.settle(event),
                    Some(change) = additions.recv() => lanes.change(change),
                    // The lane set holds a sender of `events`: it cannot end while lanes run.
                    else => break,
                }
                continue;
            }
            let first = match carry.take() {
                Some(split) => split,
                None => tokio::select! {
                    job = queue.recv() => match job {
                        Some(job) => (job, 0),
                        None => break,
                    },
                    // A recovered device's lanes start at once, not with the next call.
                    Some(change) = additions.recv() => {
                        lanes.change(change);
                        continue;
                    }
                },
            };
            // Batches may have finished while this task waited for the job.
            while let Poll::Ready(Some(event)) = ready_message(&mut events).await {
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
            lanes.hand(worker, batch);
        }
        lanes.stop_all();
        // Every lane is released before the runtime reports itself drained.
        while lanes.live > 0 {
            match events.recv().await {
                Some(event) => lanes.settle(event),
                None => break,
            }
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
            segments: self.segment_lists.lock().pop().unwrap_or_default(),
            rows: 0,
            mask: 0,
        };
        let mut next = Some(first);
        while let Some((job, start)) = next.take() {
            let quarantined = self.quarantine.lock().clone();
            if let Some(why) = quarantined {
                job.fail(CallError::Quarantined(why));
            } else if start == 0
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
                    non_finite: AtomicBool::new(false),
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
    fn execute(&self, lane: &mut CountedLane, batch: &Batch) -> bool {
        self.function_metrics.batch_rows.observe(batch.rows as f64);
        lane.device_batches.inc();
        lane.device_rows.inc_by(batch.rows as u64);
        let started = Instant::now();
        let row_bytes = self.info.input.width * self.info.input.dtype.size();
        let to_device = lane.lane.input_read_by_device();
        let written = lane.lane.write_input(&mut |input: &mut [u8]| {
            let input = &mut input[..batch.rows * row_bytes];
            if input.len() < PARALLEL_COPY_BYTES {
                copy_rows(&batch.segments, input, 0, row_bytes, to_device);
                return;
            }
            // One core cannot fill device memory at the bus's rate: large batches are copied by several.
            let chunk_rows = (PARALLEL_COPY_BYTES / row_bytes).max(1);
            input
                .par_chunks_mut(chunk_rows * row_bytes)
                .enumerate()
                .for_each(|(index, chunk)| copy_rows(&batch.segments, chunk, index * chunk_rows, row_bytes, to_device));
        });
        // Calls whose values were checked during the copy and hold a NaN or an infinity are answered
        // now; their rows still run with the batch, their outputs are not read.
        for segment in batch.segments.iter().filter(|s| s.non_finite.load(Ordering::Relaxed)) {
            let job = &segment.job;
            if let Some((row, feature)) = job.first_non_finite_in(segment.job_row, segment.rows) {
                job.fail(CallError::NonFinite { row, feature });
            }
        }
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
                ExecError::DeviceLost(_) | ExecError::DeadlineMissed(_) => CallError::DeviceLost(error.to_string()),
                ExecError::InvalidInput(message) => CallError::InvalidInput(message.clone()),
                _ => CallError::Internal(error.to_string()),
            });
        }
        if lost {
            let _ = self.device_lost.send(DeviceLoss {
                device: lane.device,
                generation: lane.generation,
                function: self.label.clone(),
                deadline_missed: matches!(error, ExecError::DeadlineMissed(_)),
            });
            return false;
        }
        true
    }
}

/// Batches at least this large are copied into the lane by several threads, in chunks of this size.
const PARALLEL_COPY_BYTES: usize = 1 << 20;

/// Emptied segment lists kept for reuse (more than the lanes that can hold one at a time is waste).
const SEGMENT_LISTS_KEPT: usize = 64;

/// Calls at least this large have their values checked for NaN while they are copied into a lane.
const DEFERRED_CHECK_BYTES: usize = 1 << 20;

/// Copies the rows of `segments` (ordered by batch row) that fall into `dst`, which holds the
/// batch's rows from `first_row` on, `width` bytes each; `to_device`: with streaming stores.
fn copy_rows(segments: &[Segment], dst: &mut [u8], first_row: usize, width: usize, to_device: bool) {
    let end_row = first_row + dst.len() / width;
    let first_segment = segments.partition_point(|s| s.batch_row + s.rows <= first_row);
    for segment in &segments[first_segment..] {
        if segment.batch_row >= end_row {
            break;
        }
        let from = segment.batch_row.max(first_row);
        let to = (segment.batch_row + segment.rows).min(end_row);
        let (job_row, count) = (segment.job_row + (from - segment.batch_row), to - from);
        let dst = &mut dst[(from - first_row) * width..(to - first_row) * width];
        if segment
            .job
            .copy_rows(job_row, count, dst, segment.job.check_values, to_device)
        {
            segment.non_finite.store(true, Ordering::Relaxed);
        }
    }
}

struct Batch {
    segments: Vec<Segment>,
    rows: usize,
    mask: u32,
}
