//! Where the time of a pipelined batch goes, chunk by chunk: the host's writes and submissions and the
//! GPU's copies and dispatches ([`ForestLane::record_timeline`](super::ForestLane::record_timeline)),
//! for finding what a batch waits for (bench-forest `--timeline`). Off by default: it costs a host reset
//! of the timestamp slots, a read of them and a reading of the device's clock per batch.

use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use vknf_vulkan::{Device, Timestamps};

use super::ForestError;

/// One pipelined batch's timeline: host moments in microseconds from the start of the batch's writes
/// in [`run_pipelined`](super::ForestLane::run_pipelined) (after its lists are recorded and its slots
/// reset), GPU moments in microseconds from the batch's first GPU timestamp (of either queue). Where
/// the device reads its clock beside the host's, [`gpu_origin_us`](Self::gpu_origin_us) places that
/// origin on the host's timeline (with one reading of the device's clock, so for both queues' moments
/// only where the queues share one clock); elsewhere the two clocks are not related: compare durations
/// and gaps within each. GPU moments of the two queues compare only where the device's queues share one
/// clock, which Vulkan does not promise (NVIDIA's and lavapipe's do); elsewhere read the copies and the
/// dispatches each on their own.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchTimeline {
    /// Host: from the start of the batch's writes to its results read.
    pub total_us: f64,
    /// The batch's dispatches in order.
    pub chunks: Vec<ChunkTimeline>,
    /// Host: the moment of the GPU moments' origin (the batch's first GPU timestamp), where the device
    /// reads its clock beside the host's ([`vknf_vulkan::Device::read_clocks`]); add it to a GPU moment
    /// to place it on the host's timeline.
    pub gpu_origin_us: Option<f64>,
    /// How far off `gpu_origin_us` may be, in microseconds (the clock reading's uncertainty).
    pub gpu_origin_uncertainty_us: Option<f64>,
}

/// One dispatch of a pipelined batch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChunkTimeline {
    /// Its rows.
    pub rows: usize,
    /// Host: the host starts writing its rows.
    pub write_start_us: f64,
    /// Host: the rows its DMA carries are written (the DMA is submitted right after).
    pub staged_written_us: f64,
    /// Host: its DMA's submission returned (0 where it has none).
    pub copy_submitted_us: f64,
    /// Host: all its rows are written (the direct share into device memory too).
    pub written_us: f64,
    /// Host: its dispatch is submitted.
    pub dispatch_submitted_us: f64,
    /// GPU: its copy on the transfer queue, start and end (none where the copy is part of the dispatch's
    /// own list or there is no copy).
    pub copy_gpu_us: Option<(f64, f64)>,
    /// GPU: its command list starts (once the semaphore of its copy is signalled).
    pub list_start_gpu_us: f64,
    /// GPU: the dispatch's start (after the copy in its own list, if any) and end.
    pub kernel_gpu_us: (f64, f64),
}

/// Host moments a chunk records.
#[derive(Clone, Copy)]
pub(super) enum HostMoment {
    WriteStart = 0,
    StagedWritten = 1,
    AllWritten = 2,
    DispatchSubmitted = 3,
    CopySubmitted = 4,
}

/// The host moments of the batch in progress.
pub(super) struct HostMarks {
    start: Instant,
    chunks: Mutex<Vec<[f64; 5]>>,
}

/// Notes `moment` of `chunk` in the batch's marks, where a timeline is recorded (`marks` is `Some`).
pub(super) fn mark(marks: Option<&HostMarks>, chunk: usize, moment: HostMoment) {
    let Some(marks) = marks else { return };
    let at = marks.start.elapsed().as_secs_f64() * 1e6;
    let mut chunks = marks.chunks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(times) = chunks.get_mut(chunk) {
        times[moment as usize] = at;
    }
}

/// A lane's timestamp slots per chunk (three on the compute queue: list start, dispatch start, dispatch
/// end; two on the transfer queue: copy start and end) and the last batch's timeline.
#[derive(Default)]
pub(super) struct Timeline {
    compute: Vec<Timestamps>,
    transfer: Vec<Timestamps>,
    last: Option<BatchTimeline>,
}

impl Timeline {
    /// The slots of `chunks` chunks (created once, then reused), for recording the chunks' lists.
    pub(super) fn slots_for(
        &mut self,
        device: &Device,
        chunks: usize,
    ) -> Result<(Vec<Timestamps>, Vec<Timestamps>), ForestError> {
        while self.compute.len() < chunks {
            self.compute.push(device.create_timestamps(3)?);
            self.transfer.push(device.create_timestamps(2)?);
        }
        Ok((self.compute.clone(), self.transfer.clone()))
    }

    /// Resets the slots for a new batch (no list writing them is pending) and starts its host clock.
    pub(super) fn start_batch(&mut self, chunks: usize) -> Result<HostMarks, ForestError> {
        self.last = None;
        for stamps in self.compute.iter().chain(&self.transfer) {
            stamps.reset_on_host()?;
        }
        Ok(HostMarks {
            start: Instant::now(),
            chunks: Mutex::new(vec![[0.0; 5]; chunks]),
        })
    }

    /// Reads the finished batch's slots into its timeline; `copied`: its chunks' copies ran on the
    /// transfer queue.
    pub(super) fn finish_batch(
        &mut self,
        device: &Device,
        marks: &HostMarks,
        bounds: &[(usize, usize)],
        copied: bool,
    ) -> Result<(), ForestError> {
        let total_us = marks.start.elapsed().as_secs_f64() * 1e6;
        // Read after the batch, so that it costs the batch nothing; the clocks drift apart by far less
        // than a microsecond in the milliseconds since.
        let clocks = device.read_clocks()?;
        let host = marks.chunks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut gpu = Vec::with_capacity(bounds.len());
        for (index, _) in bounds.iter().enumerate() {
            let compute = self.compute[index].read_ns()?;
            let transfer = if copied {
                Some(self.transfer[index].read_ns()?)
            } else {
                None
            };
            gpu.push((compute, transfer));
        }
        let origin = gpu
            .iter()
            .flat_map(|(compute, transfer)| compute.iter().chain(transfer.iter().flatten()))
            .copied()
            .fold(f64::INFINITY, f64::min);
        let us = |ns: f64| (ns - origin) / 1e3;
        let chunks = bounds
            .iter()
            .zip(host.iter())
            .zip(&gpu)
            .map(|((&(first, end), host), (compute, transfer))| ChunkTimeline {
                rows: end - first,
                write_start_us: host[HostMoment::WriteStart as usize],
                staged_written_us: host[HostMoment::StagedWritten as usize],
                copy_submitted_us: host[HostMoment::CopySubmitted as usize],
                written_us: host[HostMoment::AllWritten as usize],
                dispatch_submitted_us: host[HostMoment::DispatchSubmitted as usize],
                copy_gpu_us: transfer.as_ref().map(|t| (us(t[0]), us(t[1]))),
                list_start_gpu_us: us(compute[0]),
                kernel_gpu_us: (us(compute[1]), us(compute[2])),
            })
            .collect();
        let gpu_origin_us = clocks.map(|reading| {
            let at = reading.host_moment(origin);
            at.saturating_duration_since(marks.start).as_secs_f64() * 1e6
        });
        self.last = Some(BatchTimeline {
            total_us,
            chunks,
            gpu_origin_us,
            gpu_origin_uncertainty_us: clocks.map(|reading| reading.uncertainty_ns / 1e3),
        });
        Ok(())
    }

    /// Forgets the last batch's timeline (a batch without one follows).
    pub(super) fn forget_last(&mut self) {
        self.last = None;
    }

    /// The last finished batch's timeline.
    pub(super) fn last(&self) -> Option<&BatchTimeline> {
        self.last.as_ref()
    }
}
