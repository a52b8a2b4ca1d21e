//! The host's writes of a whole batch's rows into the lane's memory, on the thread pool: rows for the
//! DMA into pinned memory in blocks the threads claim in order, so that each piece of the DMA can be
//! submitted as soon as its blocks are written rather than after the whole share (a fork and join per
//! piece left each piece to a few threads and made the writes 1.3-3.5x slower: bench/RESULTS.md), and
//! at the same time a direct share into device memory on at most [`BAR_WRITERS`] threads. Optionally
//! the pool's threads are then kept awake for the next batch ([`keep_awake`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vknf_vulkan::{Buffer, copy_streaming};

use super::ForestError;

/// Floats a writer claims at a time: 64 KiB, small enough that a piece's last block follows its first
/// closely and that threads finish together, large enough that claiming costs nothing.
pub(super) const BLOCK_FLOATS: usize = 16 << 10;

/// Most pieces one dispatch's DMA is split into (pieces written are tracked in one 64-bit mask).
pub(super) const MAX_PIECES: usize = 64;

/// Most threads writing rows into device-local memory at once (through the BAR on a discrete GPU; on a
/// device whose memory is all host memory, e.g. lavapipe, every copy): on the H200 such writes peaked at
/// 4 threads, 25.7 GB/s for W1a's 6.9 MB, and fell to 20 GB/s with 16; for 32 MB, 16 threads gained
/// nothing over 4 (bench/RESULTS.md, `bench-runtime --links`).
pub(super) const BAR_WRITERS: usize = 4;

/// Rows to write: `values` into `target` from float `offset` on.
pub(super) struct Rows<'a> {
    pub target: &'a Buffer,
    pub offset: usize,
    pub values: &'a [f32],
}

/// The float ranges, relative to the first staged value, of the `pieces` pieces of a DMA carrying `len`
/// floats, into `out` (its capacity reused): whole blocks each, as equal as whole blocks allow; fewer
/// pieces where there are fewer blocks, at most [`MAX_PIECES`]; the last ends at `len`.
pub(super) fn piece_bounds(len: usize, pieces: usize, out: &mut Vec<(usize, usize)>) {
    out.clear();
    let blocks = len.div_ceil(BLOCK_FLOATS).max(1);
    let pieces = pieces.clamp(1, MAX_PIECES).min(blocks);
    for k in 0..pieces {
        let (first, end) = (blocks * k / pieces, blocks * (k + 1) / pieces);
        out.push((first * BLOCK_FLOATS, (end * BLOCK_FLOATS).min(len)));
    }
}

/// Bumped as each batch starts ([`batch_starts`]), so that threads kept awake ([`keep_awake`]) return
/// to the pool.
static BATCH_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Writes `staged` (into pinned memory, by every thread of the pool, blocks claimed in order) and
/// `direct` (into device memory, by at most [`BAR_WRITERS`] of them) at once. `pieces` are the staged
/// rows' DMA pieces ([`piece_bounds`] of its length); `piece_written(k)` is called once every block of
/// pieces `0..=k` is written, for each k in order, on whichever thread finished the last of them (a
/// submission of the piece's DMA can then overlap the writes of the next). The first error stops the
/// writes and is returned (pieces already handed to `piece_written` may be in flight).
pub(super) fn write_batch<F>(
    direct: Option<Rows<'_>>,
    staged: Rows<'_>,
    pieces: &[(usize, usize)],
    piece_written: F,
) -> Result<(), ForestError>
where
    F: FnMut(usize) -> Result<(), ForestError> + Send,
{
    let mut staged_map = staged.target.map::<f32>()?;
    let staged_target = window(&mut staged_map, &staged)?;
    let mut direct_map = direct.as_ref().map(|rows| rows.target.map::<f32>()).transpose()?;
    let direct_target = match (&mut direct_map, &direct) {
        (Some(map), Some(rows)) => Some(window(map, rows)?),
        _ => None,
    };
    // Below a MiB one thread writes everything: a hand-off to others would cost more than it saves.
    let bytes = 4 * (staged.values.len() + direct.as_ref().map_or(0, |rows| rows.values.len()));
    let threads = match bytes < super::PARALLEL_COPY_BYTES {
        true => 1,
        false => rayon::current_num_threads().max(1),
    };

    let remaining: [AtomicUsize; MAX_PIECES] = std::array::from_fn(|k| {
        AtomicUsize::new(
            pieces
                .get(k)
                .map_or(0, |(first, end)| (end - first).div_ceil(BLOCK_FLOATS)),
        )
    });
    let progress = Mutex::new(Progress {
        written: 0,
        next: 0,
        piece_written,
    });
    let failure: Mutex<Option<ForestError>> = Mutex::new(None);
    let staged_blocks = Mutex::new(
        staged_target
            .chunks_mut(BLOCK_FLOATS)
            .zip(staged.values.chunks(BLOCK_FLOATS))
            .enumerate(),
    );
    // The direct share in one contiguous range per writer: the same bytes claimed in interleaved blocks
    // by four threads took the H200's BAR 2.5x as long (bench/RESULTS.md).
    let direct_values = direct.as_ref().map_or(&[][..], |rows| rows.values);
    let direct_writers = threads.min(BAR_WRITERS);
    let direct_range = direct_values.len().div_ceil(direct_writers).max(1);
    let direct_ranges =
        direct_target.map(|target| target.chunks_mut(direct_range).zip(direct_values.chunks(direct_range)));
    let stop = || lock(&failure).is_some();
    let write_staged = || {
        loop {
            let claimed = lock(&staged_blocks).next();
            let Some((block, (dst, src))) = claimed else { return };
            if stop() {
                return;
            }
            copy_streaming(bytemuck::cast_slice_mut(dst), bytemuck::cast_slice(src));
            let piece = piece_of(pieces, block * BLOCK_FLOATS);
            if remaining[piece].fetch_sub(1, Ordering::AcqRel) == 1
                && let Err(err) = lock(&progress).piece_done(piece)
            {
                lock(&failure).get_or_insert(err);
                return;
            }
        }
    };
    rayon::scope(|scope| {
        for (dst, src) in direct_ranges.into_iter().flatten() {
            scope.spawn(|_| {
                if !stop() {
                    copy_streaming(bytemuck::cast_slice_mut(dst), bytemuck::cast_slice(src));
                }
            });
        }
        for _ in 1..threads {
            scope.spawn(|_| write_staged());
        }
        write_staged();
    });
    match failure.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()) {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Which pieces are written, and which is the next to be handed on.
struct Progress<F> {
    written: u64,
    next: usize,
    piece_written: F,
}

impl<F: FnMut(usize) -> Result<(), ForestError>> Progress<F> {
    /// Notes `piece` written and hands on, in order, every piece up to the first one still unwritten.
    fn piece_done(&mut self, piece: usize) -> Result<(), ForestError> {
        self.written |= 1 << piece;
        while self.next < MAX_PIECES && self.written & (1 << self.next) != 0 {
            (self.piece_written)(self.next)?;
            self.next += 1;
        }
        Ok(())
    }
}

/// The piece holding staged float `at`.
fn piece_of(pieces: &[(usize, usize)], at: usize) -> usize {
    pieces.iter().position(|&(_, end)| at < end).unwrap_or(0)
}

/// The part of a mapped buffer `rows` go to, or an error naming the buffer where they do not fit.
fn window<'m>(map: &'m mut vknf_vulkan::Mapped<'_, f32>, rows: &Rows<'_>) -> Result<&'m mut [f32], ForestError> {
    let available = map.len();
    map.get_mut(rows.offset..rows.offset + rows.values.len())
        .ok_or_else(|| {
            ForestError::Input(format!(
                "{} values at float {} do not fit the {available} of {}",
                rows.values.len(),
                rows.offset,
                rows.target.name()
            ))
        })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps the pool's threads from sleeping for up to `awake` or until the next batch starts
/// ([`batch_starts`]), whichever comes first: a sleeping pool takes ~10 us or more to wake for the next
/// batch's writes (bench/RESULTS.md, the timeline of W1a). They spin, so this spends up to `awake` of
/// CPU time on every thread of the pool after each batch: for callers that send whole batches back to
/// back. Nothing is spawned for a zero `awake`.
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
/// pool before it does (the batch's own jobs would otherwise wait for the spinning threads).
pub(super) fn batch_starts() {
    BATCH_EPOCH.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_whole_blocks_covering_the_staged_rows() {
        let mut bounds = Vec::new();
        for len in [
            1,
            BLOCK_FLOATS - 1,
            BLOCK_FLOATS,
            10 * BLOCK_FLOATS + 7,
            1000 * BLOCK_FLOATS,
        ] {
            for pieces in [0, 1, 2, 3, 8, 100] {
                piece_bounds(len, pieces, &mut bounds);
                let blocks = len.div_ceil(BLOCK_FLOATS);
                assert_eq!(bounds.len(), pieces.clamp(1, MAX_PIECES).min(blocks), "{len} {pieces}");
                assert_eq!(bounds[0].0, 0);
                assert_eq!(bounds.last().unwrap().1, len);
                for pair in bounds.windows(2) {
                    assert_eq!(pair[0].1, pair[1].0);
                }
                for &(first, end) in &bounds {
                    assert!(end > first);
                    assert_eq!(first % BLOCK_FLOATS, 0);
                }
                let sizes: Vec<usize> = bounds
                    .iter()
                    .map(|(f, e)| e.div_ceil(BLOCK_FLOATS) - f / BLOCK_FLOATS)
                    .collect();
                let (least, most) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(most - least <= 1, "{len} {pieces}: {sizes:?}");
            }
        }
    }

    #[test]
    fn pieces_are_handed_on_in_order_once_each() {
        let mut handed = Vec::new();
        let mut progress = Progress {
            written: 0,
            next: 0,
            piece_written: |k| {
                handed.push(k);
                Ok(())
            },
        };
        let mut after_each = Vec::new();
        for piece in [2, 0, 3, 1, 4] {
            progress.piece_done(piece).unwrap();
            after_each.push(progress.next);
        }
        assert_eq!(after_each, vec![0, 1, 1, 4, 5]);
        assert_eq!(handed, vec![0, 1, 2, 3, 4]);
    }

    /// Threads kept awake return to the pool as soon as a batch starts: work handed to the pool then runs
    /// at once rather than after the spin (a minute here, where the test would fail first).
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

    /// Rows written by [`write_batch`] land where they belong, in both buffers, and every piece is handed
    /// on once, in order.
    #[test]
    fn a_batch_is_written_whole_and_its_pieces_handed_on_in_order() {
        let instance = vknf_vulkan::Instance::new(&vknf_vulkan::InstanceOptions {
            validation: true,
            application_name: "vknf-writers".into(),
            ..vknf_vulkan::InstanceOptions::default()
        })
        .unwrap();
        let selector = vknf_vulkan::DeviceSelector::from_env().unwrap();
        let device = vknf_vulkan::Device::select(&instance, &selector).unwrap();
        let floats = 5 * BLOCK_FLOATS + 123;
        let staged_values: Vec<f32> = (0..floats).map(|i| i as f32).collect();
        let direct_values: Vec<f32> = (0..floats / 2).map(|i| -(i as f32)).collect();
        let pinned = device
            .create_buffer("pinned", (floats * 4 + 64) as u64, vknf_vulkan::MemoryKind::Readback)
            .unwrap();
        let upload = device
            .create_buffer("upload", (floats * 4) as u64, vknf_vulkan::MemoryKind::Upload)
            .unwrap();
        let mut pieces = Vec::new();
        piece_bounds(floats, 4, &mut pieces);
        let mut handed = Vec::new();
        write_batch(
            Some(Rows {
                target: &upload,
                offset: 7,
                values: &direct_values,
            }),
            Rows {
                target: &pinned,
                offset: 16,
                values: &staged_values,
            },
            &pieces,
            |piece| {
                handed.push(piece);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(handed, vec![0, 1, 2, 3]);
        assert_eq!(pinned.read_vec::<f32>(16, floats).unwrap(), staged_values);
        assert_eq!(upload.read_vec::<f32>(7, floats / 2).unwrap(), direct_values);
        // Rows past the end of a buffer are refused, naming it.
        let err = write_batch(
            None,
            Rows {
                target: &upload,
                offset: 1,
                values: &staged_values,
            },
            &pieces,
            |_| Ok(()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("upload"), "{err}");
        let errors = instance.take_validation_errors();
        assert!(errors.is_empty(), "validation errors: {errors:#?}");
    }
}
