//! The thread pool that writes whole batches' rows ([`super::ForestLane::predict`]), kept awake between
//! batches where asked ([`super::ForestOptions::keep_writers_awake`]): once its threads sleep, waking
//! them for the next batch's writes delays the writes (the first write started 12 us after the batch
//! instead of 3-4), and on the H200's 16-core host whole batches sent back to back ran faster end to
//! end with the threads kept awake in 25 of 27 paired runs (W1a by 4-5%, the deep forest by up to 13%;
//! bench/RESULTS.md, "The thread pool kept awake").

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bumped as each whole batch starts ([`batch_starts`]), so that threads kept awake ([`keep_awake`])
/// return to the pool.
static BATCH_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Keeps the pool's threads from sleeping for up to `awake` or until the next batch starts
/// ([`batch_starts`]), whichever comes first. They spin, so this spends up to `awake` of CPU time on every
/// thread of the pool after each batch, and work other than a batch handed to the pool meanwhile waits
/// up to `awake`: for callers sending whole batches back to back. Nothing is spawned for a zero `awake`.
pub(super) fn keep_awake(awake: Duration) {
    if awake.is_zero() {
        return;
    }
    let epoch = BATCH_EPOCH.load(Ordering::Relaxed);
    let since = Instant::now();
    rayon::spawn_broadcast(move |_| {
        while BATCH_EPOCH.load(Ordering::Relaxed) == epoch && since.elapsed() < awake {
            std::hint::spin_loop();
        }
    });
}

/// Returns threads kept awake ([`keep_awake`]) to the pool: called by the thread handing a batch to the
/// pool before it does (the batch's own work would otherwise wait for the spinning threads).
pub(super) fn batch_starts() {
    BATCH_EPOCH.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads kept awake return to the pool as soon as a batch starts: work handed to the pool then runs
    /// at once rather than after the spin (a minute here, where the test fails first).
    #[test]
    fn threads_kept_awake_return_to_the_pool_when_a_batch_starts() {
        keep_awake(Duration::from_secs(60));
        batch_starts();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let threads = rayon::broadcast(|context| context.index()).len();
            let _ = done.send(threads);
        });
        let threads = finished
            .recv_timeout(Duration::from_secs(30))
            .expect("the pool's threads still spin after the batch started");
        assert_eq!(threads, rayon::current_num_threads());
    }
}
