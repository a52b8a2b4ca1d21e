//! One thread per lane. The batcher hands a worker a planned batch; the worker copies the batch's rows
//! from the requests straight into the lane's input memory (mapped device memory on the GPU, so each row
//! is written once, and the copies of several batches run on several cores), runs it and answers its
//! requests.
//!
//! A worker that has just finished may poll for its next batch for a while before it sleeps
//! (`ServerConfig::lane_spin`, zero by default): that spares the next batch the thread's wake-up, at
//! the cost of a core while it polls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;

/// What a worker reports to its batcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerEvent {
    /// The batch is answered and the lane is free again.
    Done(usize),
    /// The lane is gone (its device was lost) and the worker has ended.
    Lost(usize),
    /// The worker ended on request, its lane released.
    Stopped(usize),
}

/// What a worker does with a batch: true to keep the lane, false when the lane is lost.
pub(crate) trait BatchRunner<L, B>: Send + Sync + 'static {
    fn run_batch(&self, lane: &mut L, batch: B) -> bool;
}

struct Handoff<B> {
    batch: Mutex<Option<B>>,
    pending: AtomicBool,
    stop: AtomicBool,
}

/// The batcher's handle on one worker thread. Dropping it stops the thread once idle (the thread is not joined: that could block an async task).
pub(crate) struct LaneWorker<B> {
    handoff: Arc<Handoff<B>>,
    thread: Thread,
}

impl<B: Send + 'static> LaneWorker<B> {
    /// Starts a worker owning `lane`; it reports on `events`.
    pub(crate) fn spawn<L: Send + 'static>(
        name: String,
        index: usize,
        mut lane: L,
        runner: Arc<dyn BatchRunner<L, B>>,
        events: mpsc::UnboundedSender<WorkerEvent>,
        spin: Duration,
    ) -> std::io::Result<LaneWorker<B>> {
        let handoff = Arc::new(Handoff {
            batch: Mutex::new(None),
            pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let shared = handoff.clone();
        let join = thread::Builder::new().name(name).spawn(move || {
            loop {
                let Some(batch) = next_batch(&shared, spin) else {
                    drop(lane);
                    let _ = events.send(WorkerEvent::Stopped(index));
                    return;
                };
                if !runner.run_batch(&mut lane, batch) {
                    drop(lane);
                    let _ = events.send(WorkerEvent::Lost(index));
                    return;
                }
                let _ = events.send(WorkerEvent::Done(index));
            }
        })?;
        Ok(LaneWorker {
            thread: join.thread().clone(),
            handoff,
        })
    }

    /// Hands the worker its next batch (it must be idle: the batcher tracks that).
    pub(crate) fn hand(&self, batch: B) {
        *self.handoff.batch.lock() = Some(batch);
        self.handoff.pending.store(true, Ordering::Release);
        // Cheap when the worker is polling; wakes it when it sleeps.
        self.thread.unpark();
    }
}

impl<B> LaneWorker<B> {
    /// Asks the worker to end once idle; it reports [`WorkerEvent::Stopped`] after releasing its lane.
    pub(crate) fn stop(&self) {
        self.handoff.stop.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

impl<B> Drop for LaneWorker<B> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for the next batch: polls for `spin`, then sleeps until handed one. `None` on stop.
fn next_batch<B>(handoff: &Handoff<B>, spin: Duration) -> Option<B> {
    let polling_until = Instant::now() + spin;
    loop {
        if handoff.pending.swap(false, Ordering::AcqRel)
            && let Some(batch) = handoff.batch.lock().take()
        {
            return Some(batch);
        }
        if handoff.stop.load(Ordering::Acquire) {
            return None;
        }
        if Instant::now() < polling_until {
            std::hint::spin_loop();
        } else {
            // An unpark between the checks above and this call makes park return at once.
            thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Counting(AtomicUsize);

    impl BatchRunner<Vec<u32>, u32> for Counting {
        fn run_batch(&self, lane: &mut Vec<u32>, batch: u32) -> bool {
            lane.push(batch);
            self.0.fetch_add(batch as usize, Ordering::SeqCst);
            batch != 0
        }
    }

    fn run_worker(spin: Duration) {
        let runner = Arc::new(Counting(AtomicUsize::new(0)));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let worker = LaneWorker::spawn("test-lane".into(), 3, Vec::new(), runner.clone(), tx, spin).unwrap();
        for batch in 1..=200u32 {
            worker.hand(batch);
            assert_eq!(rx.blocking_recv(), Some(WorkerEvent::Done(3)));
            if batch % 50 == 0 {
                // Let the worker fall asleep between batches too.
                thread::sleep(spin + Duration::from_millis(2));
            }
        }
        assert_eq!(runner.0.load(Ordering::SeqCst), 200 * 201 / 2);
        worker.hand(0);
        assert_eq!(rx.blocking_recv(), Some(WorkerEvent::Lost(3)));
        assert_eq!(rx.blocking_recv(), None, "a lost worker ends and drops its sender");
    }

    #[test]
    fn every_batch_runs_once_whether_the_worker_polls_or_sleeps() {
        run_worker(Duration::from_micros(300));
        run_worker(Duration::ZERO);
    }

    #[test]
    fn a_stopped_worker_releases_its_lane_and_says_so() {
        let runner = Arc::new(Counting(AtomicUsize::new(0)));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let worker = LaneWorker::spawn("test-lane".into(), 1, Vec::new(), runner, tx, Duration::ZERO).unwrap();
        worker.stop();
        assert_eq!(rx.blocking_recv(), Some(WorkerEvent::Stopped(1)));
        drop(worker);
    }
}
