//! The thread pool that writes whole batches' rows ([`super::ForestLane::predict`]), kept awake between
//! batches where asked ([`super::ForestOptions::keep_writers_awake`]): once its threads sleep, waking
//! them for the next batch's writes delays the writes (the first write started 12 us after the batch
//! instead of 3-4), and on the H200's 16-core host whole batches sent back to back ran faster end to
//! end with the threads kept awake: at the default direct share W1a by 4-5%, the deep forest by up to
//! 13%, the wide forest by up to 6%, and in 25 of 27 paired runs over shares 0.4-0.6 (bench/RESULTS.md,
//! "The thread pool kept awake").

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Bumped as each whole batch starts ([`batch_starts`]), so that threads kept awake ([`keep_awake`])
/// return to the pool.
static BATCH_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Whole batches whose rows are being written (by any lane of the process): while one is, no threads
/// are kept awake, since spinning threads would take the pool from its writes.
static WRITING: AtomicUsize = AtomicUsize::new(0);

/// A whole batch's writes under way, from [`batch_starts`] until dropped.
pub(super) struct Writing(());

impl Drop for Writing {
    fn drop(&mut self) {
        WRITING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Marks a whole batch's writes as under way and returns threads kept awake ([`keep_awake`]) to the
/// pool: called by the thread handing a batch to the pool before it does (the batch's own work would
/// otherwise wait for the spinning threads). Drop the guard once the batch's rows are written.
pub(super) fn batch_starts() -> Writing {
    WRITING.fetch_add(1, Ordering::SeqCst);
    BATCH_EPOCH.fetch_add(1, Ordering::SeqCst);
    Writing(())
}

/// Keeps the pool's threads from sleeping for up to `awake` or until the next batch starts
/// ([`batch_starts`]), whichever comes first; nothing while another batch is being written (another
/// lane's, in another thread), or for a zero `awake`. They spin, so this spends up to `awake` of CPU
/// time on every thread of the pool after each batch, and work other than a batch handed to the pool
/// meanwhile waits up to `awake`: for callers sending whole batches back to back.
pub(super) fn keep_awake(awake: Duration) {
    // The epoch is read before the count: a batch starting in between bumps the epoch the spinning
    // threads watch, one starting before is counted.
    let epoch = BATCH_EPOCH.load(Ordering::SeqCst);
    if awake.is_zero() || WRITING.load(Ordering::SeqCst) > 0 {
        return;
    }
    let since = Instant::now();
    rayon::spawn_broadcast(move |_| {
        while BATCH_EPOCH.load(Ordering::Relaxed) == epoch && since.elapsed() < awake {
            std::hint::spin_loop();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether every thread of the pool takes a job within 30 s (none spins for the minute the tests
    /// keep threads awake for).
    fn pool_is_free() -> bool {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let threads = rayon::broadcast(|context| context.index()).len();
            let _ = done.send(threads);
        });
        finished.recv_timeout(Duration::from_secs(30)) == Ok(rayon::current_num_threads())
    }

    /// Threads kept awake return to the pool as soon as a batch starts: work handed to the pool then runs
    /// at once rather than after the spin.
    #[test]
    fn threads_kept_awake_return_to_the_pool_when_a_batch_starts() {
        keep_awake(Duration::from_secs(60));
        drop(batch_starts());
        assert!(pool_is_free(), "the pool's threads still spin after the batch started");
    }

    /// While another batch is being written, no threads are kept awake: they would take the pool from
    /// its writes.
    #[test]
    fn no_threads_are_kept_awake_while_another_batch_is_written() {
        let writing = batch_starts();
        keep_awake(Duration::from_secs(60));
        assert!(pool_is_free(), "threads were kept awake while a batch was written");
        drop(writing);
    }
}
