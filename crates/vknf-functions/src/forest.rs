//! The random-forest classifier on the GPU: resident model buffers, a pipeline specialised for the
//! forest's shape, and lanes (one batch in flight each) with their own staging buffers and command lists.

use std::sync::Arc;
use std::time::Duration;

use rayon::prelude::*;
use serde::Serialize;
use vknf_forest::{
    Aggregate, BLOCK_WORDS, FixedPoint, GpuForest, MissingPolicy, NodeOrder, PostTransform, Prediction,
    apply_post_transform, apply_post_transform_le,
};
use vknf_vulkan::{
    BindGroup, Buffer, CommandList, ComputeUnits, Device, Kernel, KernelInfo, MemoryKind, Pipeline, PipelineStatistic,
    QueueKind, Specialization, Stream, Ticket, Timestamps, copy_streaming,
};

mod plan;
mod pool;
mod timeline;

pub use plan::{
    BatchPlan, FINAL_ROUNDS_FACTOR, FINALIST_MARGIN, MAX_TUNED_DISPATCHES, MAX_TUNING_ROUNDS, PlanTrial, PlanTuning,
    candidate_plans,
};
use timeline::HostMoment;
pub use timeline::{BatchTimeline, ChunkTimeline};

/// Errors of the GPU forest.
#[derive(Debug, thiserror::Error)]
pub enum ForestError {
    /// The runtime failed (device lost, timeout, out of memory ...).
    #[error(transparent)]
    Gpu(#[from] vknf_vulkan::Error),
    /// The input does not fit the model or the lane.
    #[error("bad input: {0}")]
    Input(String),
    /// The model cannot run on this device.
    #[error("model not supported on this device: {0}")]
    Unsupported(String),
}

impl ForestError {
    /// True when the device must be re-created.
    pub fn is_device_lost(&self) -> bool {
        matches!(self, ForestError::Gpu(err) if err.is_device_lost())
    }
}

/// How input rows reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputPath {
    /// Rows are written into pinned host memory and copied to device memory by DMA (on the dedicated
    /// transfer queue where there is one) before the kernel runs.
    Staged,
    /// The kernel reads rows straight from the upload buffer (device-local host-visible memory when the
    /// driver offers it, else host memory over the bus), with no separate copy.
    Direct,
    /// Rows are written into pinned, host-cached system memory and the kernel pulls them over the bus
    /// while it stages each workgroup's rows: the host writes at memory speed instead of the slower
    /// write-combined stores into the GPU's BAR, and no separate copy runs. Needs rows staged in shared
    /// memory (else every tree step would cross the bus): without staging the staged path is used.
    HostMemory,
}

/// Tuning of the kernel; `None` fields are chosen for the device.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForestOptions {
    /// Rows per workgroup.
    pub rows_per_group: Option<u32>,
    /// Threads per row, each walking a share of the trees (of the bulk pipeline; asking for them leaves
    /// out the [`lane_steps`](Self::lane_steps)).
    pub tree_lanes: Option<u32>,
    /// Stage each workgroup's rows in shared memory.
    pub stage_input: Option<bool>,
    /// How rows reach the GPU (default: direct, the fastest for served requests; with a
    /// [`direct_share`](Self::direct_share), staged where the device [`splits_whole_batches`]).
    pub input_path: Option<InputPath>,
    /// Batches of at most this many rows run on a second pipeline with one row per workgroup and one
    /// thread per tree (up to the device's workgroup limit), so that a lone row's tree walks run side by
    /// side instead of a few after one another. `Some(0)` disables it.
    pub small_batch_rows: Option<usize>,
    /// Dispatches a [`ForestLane::predict`] batch is split into, each submitted as soon as its rows are
    /// written, so that the host's writes overlap the GPU's work. `None` chooses per batch from its
    /// input bytes ([`ForestKernel::pipeline_chunks`]).
    pub pipeline_chunks: Option<usize>,
    /// Staged path, whole batches of at least 1 MiB handed to [`ForestLane::predict`] (or
    /// [`ForestLane::run_pipelined`]) with a transfer stream: the share (0 to 1) of each dispatch's rows the
    /// host writes straight into the GPU's memory while the rest is copied there by DMA, so that both ways
    /// into the GPU carry rows at once. Such lanes keep their device buffer in host-visible device memory
    /// where the allocator finds it (resizable BAR, or a classic 256 MiB BAR window while it has room;
    /// elsewhere every row takes the DMA), and write smaller
    /// `predict` batches there whole. `None` or 0: no split, and the device buffer stays ordinary device
    /// memory (as serving lanes want: they write each request's rows into pinned memory and never split).
    /// With no [`input_path`](Self::input_path) named, a share selects the staged path where
    /// [`splits_whole_batches`] holds, else the direct path. [`DEFAULT_DIRECT_SHARE`] is the measured choice.
    pub direct_share: Option<f32>,
    /// Staged path: copy rows on a transfer stream of their own (`None`: where the device has a
    /// dedicated transfer queue family; elsewhere the copy is part of the kernel's command list, which
    /// saves a semaphore between queues). `Some(true)` on a device without one uses a second stream of
    /// the compute family, e.g. to exercise the transfer-queue path on a CPU driver.
    pub transfer_stream: Option<bool>,
    /// Walk node blocks ([`vknf_forest::NodeBlocks`]: a node and both its children in one 32-byte
    /// sector, two levels a load) instead of one node a load. `None`: [`node_blocks_by_default`] where the
    /// kernel declares their binding. `Some(true)` with a kernel that does not is an error.
    pub node_blocks: Option<bool>,
    /// The order of each tree's nodes (or node blocks) in device memory ([`NodeOrder`]). `None`: depth
    /// first, the `.vkf` file's own; [`ForestOptions::for_whole_batches`] takes breadth first. Breadth
    /// first falls back to depth first (logged) for a compact forest whose levels are too wide for a
    /// node's child delta.
    pub node_order: Option<NodeOrder>,
    /// After each whole batch's writes by the thread pool ([`ForestLane::predict`],
    /// [`ForestLane::run_pipelined`]: split batches, and unsplit ones of at least 1 MiB), keep the pool's
    /// threads spinning for up to this long, or until the next batch starts, so that its writes start
    /// without waking them: for callers sending whole batches back to back (it costs up to that much CPU
    /// time on every thread of the pool per batch; not while another lane's batch is being written).
    /// `None` or zero: they sleep as the pool has them; [`ForestOptions::for_whole_batches`] takes
    /// [`WHOLE_BATCH_WRITERS_AWAKE`]. Measured on the H200's host only, not with CPU devices.
    pub keep_writers_awake: Option<Duration>,
    /// Build lane steps ([`KernelConfig::lane_steps`]: more tree lanes for dispatches of fewer rows),
    /// sized from the device's [`compute_units`](Self::compute_units). `None`: no steps (served
    /// functions: several of their lanes run at once, which the steps' sizing does not count, and that
    /// was not measured); [`ForestOptions::for_whole_batches`] takes them. Asking for
    /// [`tree_lanes`](Self::tree_lanes) leaves them out.
    pub lane_steps: Option<bool>,
    /// The multiprocessors lane steps are sized for. `None`: what the device reports
    /// ([`vknf_vulkan::AdapterInfo::compute_units`]; a device that reports none gets no steps).
    pub compute_units: Option<ComputeUnits>,
    /// Whole batches split by a [`direct_share`](Self::direct_share) and run in one dispatch: the rows
    /// the host writes into device memory run as a dispatch of their own, submitted once the batch's
    /// writes are done (and its DMA submitted), while the DMA still carries the rest, which a second
    /// dispatch takes once copied (each half with the lanes its rows call for,
    /// [`lane_steps`](Self::lane_steps)). A timeline ([`ForestLane::record_timeline`]) stamps the second
    /// dispatch only, and its stamps wait for the first. `None`: off;
    /// [`ForestOptions::for_whole_batches`] takes it: on the H200 it shortened W1a's and the deep
    /// forest's batches in every round, where batches in several dispatches, each split so, lost
    /// (bench/RESULTS.md, "Lane steps").
    pub direct_rows_first: Option<bool>,
    /// Whole batches split by a [`direct_share`](Self::direct_share) into several dispatches: each
    /// dispatch's rows are written into device memory only once the previous dispatch's copy has
    /// ended (its DMA's rows, into pinned memory, are written at once and their copy queued behind
    /// it), so that the bus carries one dispatch's rows after another's instead of the next one's
    /// beside the last one's copy, and each dispatch's rows are all there sooner. `None`: off.
    pub direct_after_copy: Option<bool>,
}

/// Whether whole batches on `device` can be split between the DMA and the host's writes into device
/// memory: a dedicated transfer queue to carry the DMA's part, and host-visible device memory beyond the
/// classic 256 MiB BAR window (resizable BAR) for the host's part. Without the second, a staged lane
/// would copy every row once more than the direct path does.
pub fn splits_whole_batches(device: &Device) -> bool {
    const CLASSIC_BAR_BYTES: u64 = 256 << 20;
    device.has_dedicated_transfer()
        && device.info().memory_heaps.iter().any(|heap| {
            heap.device_local
                && heap.size > CLASSIC_BAR_BYTES
                && heap
                    .memory_types
                    .iter()
                    .any(|flags| flags.contains(&"device-local") && flags.contains(&"host-visible"))
        })
}

impl ForestOptions {
    /// For whole batches handed to [`ForestLane::predict`] (what `vknf predict` uses): the staged path
    /// with the [`DEFAULT_DIRECT_SHARE`] where the device [`splits_whole_batches`], so that a large
    /// batch reaches the GPU both by DMA and by the host's writes into its memory, and a small one (below
    /// 1 MiB) is written there whole; elsewhere the direct path. On the H200 this took W1a's and the deep
    /// forest's 6.9 MB batches 10-15% faster end to end than the direct path (bench/RESULTS.md, "Both
    /// ways into the GPU"). Served functions keep the default (their lanes write requests' rows into
    /// pinned memory and never split).
    ///
    /// Each tree's nodes lie level by level ([`NodeOrder::BreadthFirst`]): a bulk dispatch's lanes walk
    /// one tree in lock step, so a level's loads then touch fewer cache lines. On the H200 (three
    /// alternating rounds; bench/RESULTS.md, "Each tree's levels one after another") it took the wide
    /// binary forest's kernel from 613 to 540 us, W1a's from 53.0 to 52.2-52.5, and left the deep
    /// forest's (152.3 us) and the tiny one's (7.2) as they were. Served functions keep depth first:
    /// their small batches run on the small-batch pipeline, whose lanes walk different trees of one row,
    /// and lost 1-3 us of kernel there with breadth first on the wide forest (256-1024 rows).
    ///
    /// Dispatches of fewer rows take more tree lanes ([`lane_steps`](Self::lane_steps)), and a batch
    /// in one dispatch runs its directly written rows first ([`direct_rows_first`](Self::direct_rows_first)).
    pub fn for_whole_batches() -> ForestOptions {
        ForestOptions {
            direct_share: Some(DEFAULT_DIRECT_SHARE),
            keep_writers_awake: Some(WHOLE_BATCH_WRITERS_AWAKE),
            node_order: Some(NodeOrder::BreadthFirst),
            lane_steps: Some(true),
            direct_rows_first: Some(true),
            ..ForestOptions::default()
        }
    }
}

/// The direct share that measured best for whole batches on the H200 (with BAR writes on at most four
/// threads: 0.5 faster than 0.4 on W1a, deep and the wide forest in both rounds;
/// bench/RESULTS.md, "Where a pipelined batch's time goes"); what [`ForestOptions::for_whole_batches`]
/// (so `vknf predict`) uses.
pub const DEFAULT_DIRECT_SHARE: f32 = 0.5;

/// Whether a kernel for `forest` walks node blocks by default ([`ForestOptions::node_blocks`]): yes, but
/// for forests that take the few-outputs workgroup ([`FEW_OUTPUTS_TREE_LANES`]: at least 64 trees, at
/// most two outputs). Measured on the H200 with both layouts in the same calls, blocks shortened W1a's
/// kernel (61 -> 55 us; end to end 1-11 us in seven of eight runs), kept the deep forest's and the tiny
/// one's (within 2-4 us of kernel, end to end within the spread), and lengthened the wide binary
/// forest's by half (614 -> 912 us), in every call since they exist (bench/RESULTS.md, "Node blocks
/// against single nodes" and "The thread pool kept awake"). Served functions take it too: batches of 1 to
/// 64 rows ran as fast or faster with blocks on W1a, deep and tiny (bench/RESULTS.md, "small batches
/// with node blocks").
pub fn node_blocks_by_default(forest: &GpuForest) -> bool {
    !takes_few_outputs_shape(forest.n_outputs as usize, forest.n_trees as usize)
}

/// Whether a forest of `n_outputs` and `n_trees` takes the few-outputs workgroup shape.
fn takes_few_outputs_shape(n_outputs: usize, n_trees: usize) -> bool {
    n_outputs <= FEW_OUTPUTS && n_trees >= FEW_OUTPUTS_MIN_TREES
}

/// How long [`ForestOptions::for_whole_batches`] keeps the pool's threads awake after each batch's writes:
/// longer than what is left of a batch after its last write on the named shapes (its last copy, kernel
/// and completion: at most ~0.4 ms on the H200), so that the next batch of a caller sending them back to
/// back finds them awake (bench/RESULTS.md, "The thread pool kept awake").
pub const WHOLE_BATCH_WRITERS_AWAKE: Duration = Duration::from_micros(500);

/// The kernel's binding of the node buffer read as node blocks.
const NODE_BLOCKS_BINDING: u32 = 7;

/// Default of [`ForestOptions::small_batch_rows`].
pub const DEFAULT_SMALL_BATCH_ROWS: usize = 1024;

/// Up to this many tree lanes a row, a workgroup aims at [`DEFAULT_GROUP_THREADS`] threads (24 rows x
/// 32 lanes, the W1 sweep's best).
const DEFAULT_TREE_LANES: usize = 32;
const DEFAULT_GROUP_THREADS: usize = 768;
/// Tree lanes a row at most by default (a lane a tree below that; the few-outputs shape excepted), and
/// threads a workgroup with more than [`DEFAULT_TREE_LANES`] lanes (22 rows x 45 lanes). A workgroup
/// lasts as long as its threads' longest chain of tree walks (a thread walks its trees one after
/// another): on the H200 a lone workgroup of the deep forest took 148 us with 32 lanes (at most 5 of its
/// 150 trees a thread), 122 us with 45 (at most 4), and its whole 5788-row batch 166.7 against 155.6 us
/// in every round (end to end 2-4% faster); W1a's kernel took 0.5 us more (56 against 55.4 us). 45 lanes
/// and 22 rows still fit such a batch's workgroups on the GPU at once, where 48 or 50 lanes needed a
/// second wave (bench/RESULTS.md, "What sets the kernel's time").
const MANY_TREES_TREE_LANES: usize = 45;
const MANY_TREES_GROUP_THREADS: usize = 990;
/// Tree lanes per row, and threads per workgroup, of a large forest with at most two outputs: 16 rows x
/// 8 lanes measured fastest on the wide binary forest (bench/RESULTS.md, the node-block sweep: 625
/// against 822 us at 24 x 32), likely because every lane of a row adds its leaves to the same one or
/// two accumulators, where the W1 forest's 198 classes spread the adds out.
const FEW_OUTPUTS_TREE_LANES: usize = 8;
const FEW_OUTPUTS_GROUP_THREADS: usize = 128;
/// Outputs at most, and trees at least, for which [`FEW_OUTPUTS_TREE_LANES`] applies (small forests keep
/// one lane per tree: their batches are latency-bound).
const FEW_OUTPUTS: usize = 2;
const FEW_OUTPUTS_MIN_TREES: usize = 64;
/// Most rows per workgroup chosen by default.
const MAX_DEFAULT_ROWS: usize = 128;
/// Most dispatches one batch is split into.
const MAX_PIPELINE_CHUNKS: usize = 32;
/// Input bytes per pipelined dispatch chosen by default (to the nearest count): below 1.5 times this a
/// batch runs as one dispatch, because each extra dispatch costs a submission and a hand-off between the
/// copying threads, and a 6.9 MB batch (W1a, the deep forest: ~240 workgroups) split in two fills only
/// half of a large GPU's cores per dispatch, which the overlap of its writes with its kernel does not
/// pay back (bench/RESULTS.md, "Input paths" and "The chunk rule refitted").
const PIPELINE_CHUNK_BYTES: usize = 8 << 20;
/// Most dispatches chosen by default: the wide forest's 32 MB batches ran fastest in 3-4 (each dispatch
/// costs a submission; more only help while the host's writes are much longer than the kernel).
const MAX_DEFAULT_PIPELINE_CHUNKS: usize = 4;

/// The configuration a kernel was built with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KernelConfig {
    /// Rows per workgroup.
    pub rows_per_group: u32,
    /// Threads per row.
    pub tree_lanes: u32,
    /// Rows staged in shared memory.
    pub stage_input: bool,
    /// Fixed-point scale of the accumulators (a leaf weight counts as `round(weight * 2^scale_log2)`);
    /// `None` when the forest accumulates in float ([`vknf_forest::GpuForest::fixed_point`]).
    pub fixed_scale_log2: Option<i32>,
    /// Accumulate in float instead of fixed point: scores then depend on the order of the additions.
    pub float_accumulate: bool,
    /// How rows reach the GPU.
    pub input_path: InputPath,
    /// Threads per row of the small-batch pipeline, and the most rows a batch may have to use it; `None`
    /// when there is no small-batch pipeline (disabled, or the bulk one already gives every tree a thread).
    pub small_batch: Option<SmallBatchConfig>,
    /// Pipelines with more tree lanes for dispatches of fewer rows (above the small-batch pipeline's),
    /// fewest lanes first ([`ForestOptions::lane_steps`]).
    pub lane_steps: [Option<LaneStep>; MAX_LANE_STEPS],
    /// Fixed number of pipelined dispatches per `predict` batch; `None` when chosen per batch.
    pub pipeline_chunks: Option<u32>,
    /// Staged path with a transfer stream: the share of a large `predict` batch's rows written straight
    /// into device memory (0 otherwise; a lane whose device buffer is not host-visible device memory
    /// copies every row: [`ForestLane::direct_share`]).
    pub direct_share: f32,
    /// Staged path: rows are copied on a transfer stream of their own rather than in the kernel's list.
    pub transfer_stream: bool,
    /// A split one-dispatch batch's directly written rows run as a dispatch of their own
    /// ([`ForestOptions::direct_rows_first`]).
    pub direct_rows_first: bool,
    /// A split batch's dispatches write their direct share once the previous dispatch's copy has
    /// ended ([`ForestOptions::direct_after_copy`]).
    pub direct_after_copy: bool,
    /// The kernel walks node blocks ([`ForestOptions::node_blocks`]).
    pub node_blocks: bool,
    /// Each tree's nodes (or blocks) lie level by level in device memory ([`ForestOptions::node_order`]).
    pub breadth_first: bool,
    /// How long the pool's threads are kept awake after a whole batch's writes, in microseconds
    /// ([`ForestOptions::keep_writers_awake`]).
    pub writers_awake_us: u32,
}

impl KernelConfig {
    /// Whether a batch of `n_rows` runs on the small-batch pipeline.
    pub fn uses_small_batch(&self, n_rows: usize) -> bool {
        self.small_batch.is_some_and(|small| n_rows <= small.max_rows as usize)
    }

    /// The pipeline a dispatch of `n_rows` takes: the small-batch one where it has it, else the lane
    /// step of most lanes that holds its rows, else the bulk one.
    pub fn dispatch_pipeline(&self, n_rows: usize) -> DispatchPipeline {
        if self.uses_small_batch(n_rows) {
            return DispatchPipeline::SmallBatch;
        }
        match self
            .lane_steps
            .iter()
            .rposition(|step| step.is_some_and(|step| n_rows <= step.max_rows as usize))
        {
            Some(index) => DispatchPipeline::LaneStep(index),
            None => DispatchPipeline::Bulk,
        }
    }
}

/// Which of a kernel's pipelines a dispatch takes ([`KernelConfig::dispatch_pipeline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DispatchPipeline {
    /// One row a workgroup, a thread a tree ([`KernelConfig::small_batch`]).
    SmallBatch,
    /// The lane step of this index in [`KernelConfig::lane_steps`].
    LaneStep(usize),
    /// The bulk pipeline ([`KernelConfig::rows_per_group`] x [`KernelConfig::tree_lanes`]).
    Bulk,
}

/// A pipeline with more tree lanes than the bulk one, for dispatches of fewer rows
/// ([`KernelConfig::lane_steps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LaneStep {
    /// Dispatches of at most this many rows take it (the step of most lanes that still holds them):
    /// the rows of the workgroups the device runs at once.
    pub max_rows: u32,
    /// Rows per workgroup.
    pub rows_per_group: u32,
    /// Threads per row.
    pub tree_lanes: u32,
}

/// At most this many lane steps (each doubles the lanes of the one before).
pub const MAX_LANE_STEPS: usize = 3;

/// What lane steps are built from: the bulk pipeline's shape and the device's.
struct StepBasis {
    n_trees: usize,
    /// The bulk pipeline's lanes and rows per workgroup, and the threads its workgroups were sized to.
    tree_lanes: usize,
    rows: usize,
    group_threads: usize,
    max_invocations: usize,
    subgroup_size: u32,
    units: ComputeUnits,
    /// The most rows the small-batch pipeline takes (0 without one).
    small_max_rows: usize,
}

/// The lane steps of a kernel: each doubles the lanes of the one before (at most one a tree, within the
/// workgroup's invocations) in workgroups of about as many threads and no more rows than the bulk
/// pipeline's (whose count the shared memory may have bounded), for dispatches of at most the rows whose
/// workgroups the device runs at once; none holding no more rows than the small-batch pipeline takes.
/// While a dispatch's workgroups all run at once, its time is its longest chain of tree walks, which more
/// lanes a row shorten; a second wave of workgroups doubles it (bench/RESULTS.md, "Lane steps").
fn lane_steps(basis: &StepBasis) -> [Option<LaneStep>; MAX_LANE_STEPS] {
    let mut steps = [None; MAX_LANE_STEPS];
    let mut lanes = basis.tree_lanes;
    for step in &mut steps {
        let more = (lanes * 2).min(basis.n_trees).min(basis.max_invocations);
        if more <= lanes {
            break;
        }
        lanes = more;
        let rows = (basis.group_threads.min(basis.max_invocations) / lanes).clamp(1, basis.rows.max(1));
        let groups = basis
            .units
            .resident_workgroups((rows * lanes) as u32, basis.subgroup_size);
        let max_rows = (groups as usize).saturating_mul(rows);
        if max_rows <= basis.small_max_rows {
            break;
        }
        *step = Some(LaneStep {
            max_rows: max_rows.min(u32::MAX as usize) as u32,
            rows_per_group: rows as u32,
            tree_lanes: lanes as u32,
        });
    }
    steps
}

/// The one-row-per-workgroup pipeline used for small batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SmallBatchConfig {
    /// Batches of at most this many rows use it.
    pub max_rows: u32,
    /// Threads per row.
    pub tree_lanes: u32,
}
struct Resident {
    device: Device,
    pipeline: Pipeline,
    small_pipeline: Option<Pipeline>,
    // One per `config.lane_steps` entry, in order.
    step_pipelines: Vec<Pipeline>,
    nodes: Buffer,
    roots: Buffer,
    entries: Buffer,
    base_values: Buffer,
    n_features: usize,
    n_outputs: usize,
    n_trees: u32,
    n_nodes: u32,
    n_entries: u32,
    missing: MissingPolicy,
    classifier: bool,
    /// Applied by the host to the kernel's aggregated values as scores are read.
    post_transform: PostTransform,
    config: KernelConfig,
}

/// A forest resident on one device, ready to serve lanes.
#[derive(Clone)]
pub struct ForestKernel {
    resident: Arc<Resident>,
}

/// What the kernel's specialization constants are derived from, besides the workgroup shape.
struct ShaderShape<'a> {
    forest: &'a GpuForest,
    fixed: Option<&'a FixedPoint>,
    /// Words per node as the kernel reads them: the forest's node format, or a node block.
    node_words: u32,
}

impl ShaderShape<'_> {
    /// The constants for workgroups of `rows` rows x `tree_lanes` threads per row.
    fn specialization(&self, rows: usize, tree_lanes: usize, stage_input: bool) -> Specialization {
        let forest = self.forest;
        let n_features = forest.n_features as usize;
        let n_outputs = forest.n_outputs as usize;
        Specialization::new()
            .name("GROUP_SIZE", (rows * tree_lanes) as u32)
            .name("ROWS_PER_GROUP", rows as u32)
            .name("TREE_LANES", tree_lanes as u32)
            .name("N_FEATURES", n_features as u32)
            .name("N_OUTPUTS", n_outputs as u32)
            .name("NODE_WORDS", self.node_words)
            .name("MAX_DEPTH", forest.max_depth)
            .name("STAGE_INPUT", stage_input)
            .name("AGGREGATE", u32::from(forest.aggregate == Aggregate::Average))
            .name("BINARY_COMPLEMENT", forest.binary_complement)
            .name("FIXED_SCALE_LOG2", self.fixed.map_or(0, |f| f.scale_log2))
            .name("DIVISOR", self.fixed.map_or(1, |f| f.divisor))
            .name("FIXED_ONE", self.fixed.map_or(1, |f| f.one))
            .name(
                "STAGED_FLOATS",
                if stage_input { (rows * n_features) as u32 } else { 1 },
            )
            .name("ACCUMULATORS", (rows * n_outputs) as u32)
            .name("REJECT_NAN", forest.missing == MissingPolicy::Reject)
            .name("FLOAT_ACCUMULATE", self.fixed.is_none())
    }
}

impl ForestKernel {
    /// Uploads `forest` to `device` and builds vknf's forest kernel for its shape.
    pub fn new(device: &Device, forest: &GpuForest, options: &ForestOptions) -> Result<ForestKernel, ForestError> {
        Self::with_spirv(device, forest, options, vknf_kernels::FOREST, "main")
    }

    /// Like [`ForestKernel::new`] with the kernel's SPIR-V supplied (as a function manifest carries it):
    /// it is validated, and must declare the forest ABI (bindings 0-6 and the named specialization
    /// constants of `forest.comp`), or loading fails with the mismatch. A forest kernel built before
    /// scores became exact (it declares `FIXED_SCALE` and `POST_TRANSFORM` instead of
    /// `FIXED_SCALE_LOG2`, `DIVISOR` and `FIXED_ONE`) is refused that way rather than run with weights
    /// it would misread.
    pub fn with_spirv(
        device: &Device,
        forest: &GpuForest,
        options: &ForestOptions,
        spirv: &[u8],
        entry_point: &str,
    ) -> Result<ForestKernel, ForestError> {
        let info = device.info();
        let n_features = forest.n_features as usize;
        let n_outputs = forest.n_outputs as usize;
        if n_features == 0 || n_outputs == 0 {
            return Err(ForestError::Unsupported(
                "a forest needs at least one feature and one output".into(),
            ));
        }
        if forest.binary_complement && n_outputs != 2 {
            return Err(ForestError::Unsupported(
                "binary complement needs exactly two outputs".into(),
            ));
        }
        let shared_budget = info.max_shared_memory as usize;
        let accumulator_bytes = n_outputs * 4;
        let row_bytes = n_features * 4;
        let stage_wanted = options.stage_input.unwrap_or(true);
        let max_invocations = info.max_workgroup_invocations.min(info.max_workgroup_size[0]) as usize;
        let n_trees = forest.n_trees.max(1) as usize;
        // Tree lanes are the lever for latency (a row's tree walks are a chain of dependent loads; the W1
        // sweep in bench/RESULTS.md), but lanes beyond the tree count only idle: a forest of 10 trees gets
        // 10 lanes, and the threads go to more rows.
        let few_outputs = takes_few_outputs_shape(n_outputs, n_trees);
        let lane_cap = if few_outputs {
            FEW_OUTPUTS_TREE_LANES
        } else {
            MANY_TREES_TREE_LANES
        };
        let default_lanes = n_trees.min(lane_cap);
        let tree_lanes_wanted = options.tree_lanes.map_or(default_lanes, |lanes| lanes.max(1) as usize);
        // The workgroup's threads follow its lanes (asked for or not): more than 32 lanes take the larger
        // workgroup they were measured with.
        let group_threads = if few_outputs {
            FEW_OUTPUTS_GROUP_THREADS
        } else if tree_lanes_wanted > DEFAULT_TREE_LANES {
            MANY_TREES_GROUP_THREADS
        } else {
            DEFAULT_GROUP_THREADS
        };
        // Rows per workgroup: 24 with 32 lanes (768 threads), 22 with 45 (990); narrower lane counts take
        // more rows so that a workgroup keeps about as many threads, up to 128 rows.
        let default_rows = (group_threads / tree_lanes_wanted).clamp(1, MAX_DEFAULT_ROWS);
        let preferred_rows = options.rows_per_group.map_or(default_rows, |rows| rows.max(1) as usize);
        // As many rows as fit (accumulators are needed; staging only if asked), capped by preference.
        let unstaged_row = accumulator_bytes + ROW_SCRATCH_BYTES;
        let per_row = unstaged_row + if stage_wanted { row_bytes } else { 0 };
        let mut rows = preferred_rows.min(shared_budget / per_row);
        let mut stage_input = stage_wanted;
        if rows == 0 && stage_wanted {
            stage_input = false;
            rows = preferred_rows.min(shared_budget / unstaged_row);
        }
        if rows == 0 {
            return Err(ForestError::Unsupported(format!(
                "{n_outputs} outputs need {accumulator_bytes} bytes of shared memory per row; the device has {shared_budget}"
            )));
        }
        let tree_lanes = tree_lanes_wanted.min((max_invocations / rows).max(1));
        let rows = rows.min(max_invocations / tree_lanes);
        // Fixed point is exact and order-independent (the same bits as the CPU reference), but needs a
        // scale that keeps ~2^-16 resolution; regressors (and unusual weight ranges) accumulate in float.
        let fixed = forest.fixed_point();
        let small_max_rows = options.small_batch_rows.unwrap_or(DEFAULT_SMALL_BATCH_ROWS);
        // One thread per tree, in whole subgroups of 32, within the workgroup limit; only worth a second
        // pipeline when some bulk lane walks more than one tree.
        let small_lanes = n_trees.next_multiple_of(32).min(max_invocations);
        let small_batch =
            (small_max_rows > 0 && small_lanes > tree_lanes && tree_lanes < n_trees).then_some(SmallBatchConfig {
                max_rows: small_max_rows.min(u32::MAX as usize) as u32,
                tree_lanes: small_lanes as u32,
            });
        let lane_steps = match (options.lane_steps, options.tree_lanes) {
            (Some(true), None) => options.compute_units.or(info.compute_units),
            _ => None,
        }
        .map_or([None; MAX_LANE_STEPS], |units| {
            lane_steps(&StepBasis {
                n_trees,
                tree_lanes,
                rows,
                group_threads,
                max_invocations,
                subgroup_size: info.subgroup_size,
                units,
                small_max_rows: small_batch.map_or(0, |small| small.max_rows as usize),
            })
        });
        let input_path = match options.input_path {
            Some(InputPath::HostMemory) if !stage_input => InputPath::Staged,
            Some(path) => path,
            // A direct share without a path named: the staged path, where it can split batches
            // ([`ForestOptions::for_whole_batches`]).
            None if options.direct_share.is_some_and(|share| share > 0.0) && splits_whole_batches(device) => {
                InputPath::Staged
            }
            None => InputPath::Direct,
        };
        let transfer_stream = input_path == InputPath::Staged
            && options
                .transfer_stream
                .unwrap_or_else(|| device.has_dedicated_transfer());
        // Only lanes copying on a transfer stream split (the measured configuration; bench/RESULTS.md).
        let direct_share = match options.direct_share {
            Some(share) if transfer_stream && share.is_finite() => share.clamp(0.0, 1.0),
            _ => 0.0,
        };
        let kernel = Kernel::new(device, spirv, entry_point)?;
        let node_blocks = choose_node_blocks(
            options.node_blocks,
            declares_node_blocks(kernel.info()),
            node_blocks_by_default(forest),
        )?;
        let mut config = KernelConfig {
            rows_per_group: rows as u32,
            tree_lanes: tree_lanes as u32,
            stage_input,
            fixed_scale_log2: fixed.as_ref().map(|f| f.scale_log2),
            float_accumulate: fixed.is_none(),
            input_path,
            small_batch,
            lane_steps,
            pipeline_chunks: options.pipeline_chunks.map(|c| c.clamp(1, MAX_PIPELINE_CHUNKS) as u32),
            direct_share,
            transfer_stream,
            direct_rows_first: options.direct_rows_first.unwrap_or(false) && direct_share > 0.0,
            direct_after_copy: options.direct_after_copy.unwrap_or(false) && direct_share > 0.0,
            node_blocks,
            breadth_first: false,
            writers_awake_us: options
                .keep_writers_awake
                .unwrap_or_default()
                .as_micros()
                .min(u32::MAX as u128) as u32,
        };

        let shape = ShaderShape {
            forest,
            fixed: fixed.as_ref(),
            node_words: if node_blocks {
                BLOCK_WORDS as u32
            } else {
                forest.node_format.words() as u32
            },
        };
        let pipeline = device.create_pipeline(&kernel, &shape.specialization(rows, tree_lanes, stage_input))?;
        let small_pipeline = small_batch
            .map(|small| {
                device.create_pipeline(
                    &kernel,
                    &shape.specialization(1, small.tree_lanes as usize, stage_input),
                )
            })
            .transpose()?;
        let step_pipelines = lane_steps
            .iter()
            .flatten()
            .map(|step| {
                device.create_pipeline(
                    &kernel,
                    &shape.specialization(step.rows_per_group as usize, step.tree_lanes as usize, stage_input),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;

        if !forest.base_values.is_empty() && forest.base_values.len() != n_outputs {
            return Err(ForestError::Unsupported(
                "base values do not match the output count".into(),
            ));
        }
        // Fixed point: leaf weights and base values are uploaded as i32 totals' units, converted once here.
        let (node_words, entry_words, base) = match &fixed {
            Some(fixed) => {
                let (nodes, entries) = forest.fixed_point_words(fixed);
                let base: Vec<u32> = fixed.base.iter().map(|b| *b as u32).collect();
                (std::borrow::Cow::Owned(nodes), std::borrow::Cow::Owned(entries), base)
            }
            None => {
                let base = if forest.base_values.is_empty() {
                    vec![0; n_outputs]
                } else {
                    forest.base_values.iter().map(|b| b.to_bits()).collect()
                };
                (
                    std::borrow::Cow::Borrowed(&forest.nodes[..]),
                    std::borrow::Cow::Borrowed(&forest.leaf_entries[..]),
                    base,
                )
            }
        };
        let order = options.node_order.unwrap_or_default();
        let (mut node_words, roots, n_nodes) = if node_blocks {
            let blocks = forest
                .node_blocks(&node_words, order)
                .map_err(|err| ForestError::Unsupported(err.to_string()))?;
            config.breadth_first = order == NodeOrder::BreadthFirst;
            let n_blocks = blocks.n_blocks();
            (blocks.words, blocks.tree_roots, n_blocks)
        } else {
            let words = match order {
                NodeOrder::DepthFirst => node_words.into_owned(),
                NodeOrder::BreadthFirst => match forest.breadth_first_nodes(&node_words) {
                    Ok(words) => {
                        config.breadth_first = true;
                        words
                    }
                    Err(err @ vknf_forest::CompileError::ChildTooFar { .. }) => {
                        tracing::warn!(%err, "levels too wide for compact nodes: nodes kept depth first");
                        node_words.into_owned()
                    }
                    Err(err) => return Err(ForestError::Unsupported(err.to_string())),
                },
            };
            (words, forest.tree_roots.clone(), forest.n_nodes())
        };
        // Whole blocks, so that the node-block binding (16-byte elements) covers every node format.
        node_words.resize(node_words.len().next_multiple_of(BLOCK_WORDS).max(BLOCK_WORDS), 0);
        let nodes = device.create_buffer_with("forest nodes", &node_words, MemoryKind::DeviceLocal)?;
        let roots = device.create_buffer_with("forest roots", &roots, MemoryKind::DeviceLocal)?;
        let entries = if entry_words.is_empty() {
            device.create_buffer_with("forest leaf entries", &[0u32, 0u32], MemoryKind::DeviceLocal)?
        } else {
            device.create_buffer_with("forest leaf entries", &entry_words, MemoryKind::DeviceLocal)?
        };
        let base_values = device.create_buffer_with("forest base values", &base, MemoryKind::DeviceLocal)?;
        tracing::info!(
            device = %info.name, trees = forest.n_trees, nodes = forest.n_nodes(), node_blocks = node_blocks.then_some(n_nodes),
            ?config, "forest resident on the GPU"
        );
        Ok(ForestKernel {
            resident: Arc::new(Resident {
                device: device.clone(),
                pipeline,
                small_pipeline,
                step_pipelines,
                nodes,
                roots,
                entries,
                base_values,
                n_features,
                n_outputs,
                n_trees: forest.n_trees,
                n_nodes: n_nodes as u32,
                n_entries: (forest.leaf_entries.len() / 2) as u32,
                missing: forest.missing,
                classifier: forest.task.is_classifier(),
                post_transform: forest.post_transform,
                config,
            }),
        })
    }

    /// The kernel configuration chosen.
    pub fn config(&self) -> KernelConfig {
        self.resident.config
    }

    /// What the driver reports about each of the kernel's pipelines (registers a thread, ...), named:
    /// the bulk pipeline, the small-batch one and each lane step. Each pipeline's list is empty unless
    /// the device keeps them ([`vknf_vulkan::Device::keeps_pipeline_statistics`]).
    pub fn pipeline_statistics(&self) -> Result<Vec<(String, Vec<PipelineStatistic>)>, ForestError> {
        let r = &self.resident;
        let mut named = vec![("bulk".to_string(), r.pipeline.statistics()?)];
        if let (Some(small), Some(pipeline)) = (r.config.small_batch, &r.small_pipeline) {
            named.push((
                format!("small batch ({} lanes)", small.tree_lanes),
                pipeline.statistics()?,
            ));
        }
        for (step, pipeline) in r.config.lane_steps.iter().flatten().zip(&r.step_pipelines) {
            named.push((
                format!("step {} x {} lanes", step.rows_per_group, step.tree_lanes),
                pipeline.statistics()?,
            ));
        }
        Ok(named)
    }

    /// How many pipelined dispatches [`ForestLane::predict`] splits a batch of `n_rows` rows into: the
    /// configured count, else one per 8 MiB of input (rounded), at most 4: on the H200 the wide forest's 32 MB
    /// batches ran end to end much faster in 3-4 dispatches than in one (the host's writes of chunk i+1
    /// overlap the kernel on chunk i) or in 8, while W1a's and the deep forest's 6.9 MB batches were
    /// fastest in one (bench/RESULTS.md, "Input paths and pipelined dispatches").
    pub fn pipeline_chunks(&self, n_rows: usize) -> usize {
        let config = &self.resident.config;
        if n_rows < 2 {
            return 1;
        }
        let chunks = match config.pipeline_chunks {
            Some(chunks) => chunks as usize,
            None => {
                let bytes = n_rows * self.resident.n_features * 4;
                ((bytes + PIPELINE_CHUNK_BYTES / 2) / PIPELINE_CHUNK_BYTES).clamp(1, MAX_DEFAULT_PIPELINE_CHUNKS)
            }
        };
        chunks.min(n_rows.div_ceil(config.rows_per_group as usize)).max(1)
    }

    /// The device the forest lives on.
    pub fn device(&self) -> &Device {
        &self.resident.device
    }

    /// Features per row.
    pub fn n_features(&self) -> usize {
        self.resident.n_features
    }

    /// Outputs (classes or targets) per row.
    pub fn n_outputs(&self) -> usize {
        self.resident.n_outputs
    }

    /// True for classifiers (labels are meaningful).
    pub fn is_classifier(&self) -> bool {
        self.resident.classifier
    }

    /// True when NaN inputs are routed by the model; false when they are rejected.
    pub fn accepts_nan(&self) -> bool {
        self.resident.missing == MissingPolicy::Route
    }

    /// Creates a lane for batches of up to `max_rows` rows: its buffers and command lists are allocated
    /// here, once.
    pub fn lane(&self, max_rows: usize) -> Result<ForestLane, ForestError> {
        ForestLane::new(self.clone(), max_rows)
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    n_trees: u32,
    n_nodes: u32,
    n_entries: u32,
    write_scores: u32,
    first_row: u32,
}

/// One batch in flight: staging and result buffers, streams and command lists, all reused.
pub struct ForestLane {
    kernel: ForestKernel,
    max_rows: usize,
    input: Buffer,
    device_input: Option<Buffer>,
    labels: Buffer,
    scores: Buffer,
    bind_group: BindGroup,
    small_bind_group: Option<BindGroup>,
    // One per lane step of the kernel, in order.
    step_bind_groups: Vec<BindGroup>,
    compute: Stream,
    transfer: Option<Stream>,
    work: Option<CommandList>,
    upload: Option<CommandList>,
    recorded: Option<(usize, bool, bool)>,
    timestamps: Option<Timestamps>,
    pending: Option<(Ticket, usize, bool)>,
    // One command list per chunk of a pipelined batch, recorded for (rows, chunks, scores).
    chunk_lists: Vec<CommandList>,
    // With `direct_rows_first`: per chunk, the dispatch of the rows the host wrote into device memory
    // (none where a chunk has no such rows); `chunk_lists` then dispatch the DMA's rows.
    chunk_direct_lists: Vec<Option<CommandList>>,
    // The rows and pipeline of each dispatch those lists record, in submission order.
    chunk_dispatches: Vec<(usize, DispatchPipeline)>,
    // Staged input with a transfer queue: each chunk's copy, on that queue, ahead of its dispatch.
    chunk_uploads: Vec<CommandList>,
    chunks_recorded: Option<(usize, BatchPlan, bool)>,
    // Plans `tune_plans` chose, by batch rows.
    tuned_plans: Vec<(usize, BatchPlan)>,
    // The row ranges of the recorded chunks.
    chunk_bounds: Vec<(usize, usize)>,
    // Per-chunk timestamps and host moments, when asked for (`record_timeline`).
    timeline: Option<timeline::Timeline>,
    // The batch in flight is a whole batch of `run_pipelined`: only its last dispatch is left when
    // finish() starts, so it polls for it (`WHOLE_BATCH_POLL`).
    poll_finish: bool,
}

/// What a finished batch produced, borrowed from the lane's readback buffers.
pub struct LaneResult {
    /// Rows in the batch.
    pub n_rows: usize,
    /// Argmax label per row (classifiers).
    pub labels: Vec<u32>,
    /// `n_rows * n_outputs` scores, when asked for.
    pub scores: Option<Vec<f32>>,
}

/// The label the kernel gives rows it rejects for NaN features (models without missing-value routing).
const NAN_ROW: u32 = u32::MAX;

/// Staged batches of at least this many input bytes are copied on the dedicated transfer queue.
const TRANSFER_QUEUE_BYTES: u64 = 1 << 20;

/// Inputs at least this large are copied into staging memory by several threads.
const PARALLEL_COPY_BYTES: usize = 1 << 20;

/// Whether [`copy_rows`] hands a copy of `values` floats to the thread pool rather than doing it on the
/// calling thread.
fn copied_by_pool(values: usize) -> bool {
    values * 4 >= PARALLEL_COPY_BYTES
}
/// Most threads writing rows into device-local memory at once (through the BAR on a discrete GPU; on a
/// device whose memory is all host memory, e.g. lavapipe, every copy): on the H200 such writes peaked at
/// 4 threads, 25.7 GB/s for W1a's 6.9 MB, and fell to 20 GB/s with 16; for 32 MB, 16 threads gained
/// nothing over 4 (bench/RESULTS.md, `bench-runtime --links`).
const BAR_WRITERS: usize = 4;
/// Least bytes one thread of a parallel copy takes: a few threads already fill the bus when the
/// staging memory is across PCIe, and smaller shares cost more in hand-offs than they save.
const PARALLEL_COPY_SHARE: usize = 256 << 10;

/// Copies `rows` into `buffer` at float `offset`, with streaming stores ([`vknf_vulkan::copy_streaming`]:
/// the GPU reads these bytes next, from memory rather than out of the writing cores' caches). One core
/// cannot fill staging memory at the bus's rate, so copies of a MiB or more are split over the pool.
fn copy_rows(buffer: &Buffer, offset: usize, rows: &[f32]) -> Result<(), ForestError> {
    let mut staging = buffer.map::<f32>()?;
    let available = staging.len();
    let target = staging.get_mut(offset..offset + rows.len()).ok_or_else(|| {
        ForestError::Input(format!(
            "{} values at float {offset} do not fit the {available} of {}",
            rows.len(),
            buffer.name()
        ))
    })?;
    if !copied_by_pool(rows.len()) {
        copy_streaming(bytemuck::cast_slice_mut(target), bytemuck::cast_slice(rows));
        return Ok(());
    }
    // Writes into device memory through the BAR take fewer threads: they peak at a few and slow down with
    // more, which also leaves the rest of the pool to a concurrent write into pinned memory.
    let threads = match buffer.is_device_local() {
        true => rayon::current_num_threads().min(BAR_WRITERS),
        false => rayon::current_num_threads(),
    };
    let chunk = rows.len().div_ceil(threads.max(1)).max(PARALLEL_COPY_SHARE / 4);
    target
        .par_chunks_mut(chunk)
        .zip(rows.par_chunks(chunk))
        .for_each(|(dst, src)| copy_streaming(bytemuck::cast_slice_mut(dst), bytemuck::cast_slice(src)));
    Ok(())
}

/// Appends one batch's results to a prediction's: the first batch's are moved, not copied, with room
/// reserved for the `total` (a 100,000-row batch's labels copied again cost a second 400 KB buffer's
/// page faults and a copy).
fn append_batch<T: Copy>(all: &mut Vec<T>, batch: Vec<T>, total: usize) {
    if all.is_empty() {
        *all = batch;
        all.reserve_exact(total.saturating_sub(all.len()));
    } else {
        all.extend_from_slice(&batch);
    }
}

/// Rows of a dispatch of `n_rows` written straight into device memory with a direct `share`: at least one
/// row is left to the DMA, whose copy may not be empty.
fn direct_rows(share: Option<f32>, n_rows: usize) -> usize {
    share.map_or(0, |share| {
        ((n_rows as f32 * share).round() as usize).min(n_rows.saturating_sub(1))
    })
}

/// The device buffer staged rows are copied into: host-visible device memory where the lane writes a
/// share of each batch there itself, and where the allocator finds it (resizable BAR, or a classic BAR
/// window while it has room); else device memory.
fn staged_target(device: &Device, bytes: u64, direct_share: f32) -> Result<Buffer, ForestError> {
    if direct_share > 0.0 {
        let upload = device.create_buffer("forest input", bytes, MemoryKind::Upload)?;
        if upload.is_device_local() {
            return Ok(upload);
        }
    }
    Ok(device.create_buffer("forest input", bytes, MemoryKind::DeviceLocal)?)
}

/// How long a lane polls for the completion of a batch on the small-batch pipeline before it blocks
/// (bulk batches poll for the runtime's default, then sleep in the driver).
const SMALL_BATCH_POLL: Duration = Duration::from_micros(250);

/// How long a whole batch handed to [`ForestLane::predict`] (or [`ForestLane::run_pipelined`]) polls for
/// its completion, once its last rows are written, before it blocks in the driver: a caller that hands
/// over a whole batch waits for it anyway, and a blocked wait wakes up later than a poll sees the end
/// (what is left then is at most the last dispatch's copy and kernel, a few hundred microseconds on the
/// named shapes).
const WHOLE_BATCH_POLL: Duration = Duration::from_millis(5);

/// The row ranges of a batch's pipelined dispatches, into `bounds` (its capacity reused): `chunks`
/// dispatches of whole workgroups (no workgroup straddles two), as equal as whole workgroups allow; fewer
/// where the batch has fewer workgroups.
fn chunk_bounds(n_rows: usize, chunks: usize, rows_per_group: usize, bounds: &mut Vec<(usize, usize)>) {
    bounds.clear();
    let groups = n_rows.div_ceil(rows_per_group.max(1));
    let chunks = chunks.clamp(1, groups.max(1));
    for i in 0..chunks {
        let (first, end) = (groups * i / chunks, groups * (i + 1) / chunks);
        bounds.push((first * rows_per_group, (end * rows_per_group).min(n_rows)));
    }
}

/// Shared memory a workgroup row takes besides its accumulators and staged features: its NaN flag, and
/// the largest total and label of the integer argmax (`forest.comp`).
const ROW_SCRATCH_BYTES: usize = 12;

/// Whether a kernel declares the node-block binding: kernels from before node blocks (a manifest may
/// carry one) do not.
fn declares_node_blocks(info: &KernelInfo) -> bool {
    info.bindings
        .iter()
        .any(|b| b.set == 0 && b.binding == NODE_BLOCKS_BINDING)
}

/// Whether a kernel walks node blocks: as asked, else `by_default` where the kernel declares their binding
/// (kernels from before them keep single nodes); asking for them with such a kernel is an error.
fn choose_node_blocks(asked: Option<bool>, kernel_has_blocks: bool, by_default: bool) -> Result<bool, ForestError> {
    match asked {
        Some(true) if !kernel_has_blocks => Err(ForestError::Unsupported(format!(
            "node blocks were asked for, but the kernel declares no node-block binding {NODE_BLOCKS_BINDING}"
        ))),
        Some(wanted) => Ok(wanted),
        None => Ok(by_default && kernel_has_blocks),
    }
}

/// How long one batch may take before the device is declared lost.
pub const BATCH_DEADLINE: Duration = Duration::from_secs(10);

impl ForestLane {
    fn new(kernel: ForestKernel, max_rows: usize) -> Result<ForestLane, ForestError> {
        let r = &kernel.resident;
        let device = &r.device;
        let max_rows = max_rows.max(1);
        let rows_per_group = r.config.rows_per_group as usize;
        // Whole workgroups of rows, so that staging never reads past the buffer.
        let padded_rows = max_rows.next_multiple_of(rows_per_group);
        let input_bytes = (padded_rows * r.n_features * 4) as u64;
        let (input, device_input) = match r.config.input_path {
            InputPath::Staged => (
                device.create_buffer("forest input (pinned)", input_bytes, MemoryKind::Readback)?,
                Some(staged_target(device, input_bytes, r.config.direct_share)?),
            ),
            InputPath::Direct => (
                device.create_buffer("forest input (upload)", input_bytes, MemoryKind::Upload)?,
                None,
            ),
            InputPath::HostMemory => (
                device.create_buffer("forest input (host memory)", input_bytes, MemoryKind::Readback)?,
                None,
            ),
        };
        let labels = device.create_buffer("forest labels", (padded_rows * 4) as u64, MemoryKind::Readback)?;
        let scores = device.create_buffer(
            "forest scores",
            (padded_rows * r.n_outputs * 4) as u64,
            MemoryKind::Readback,
        )?;
        let rows_buffer = device_input.as_ref().unwrap_or(&input);
        let mut bindings = vec![
            (0, rows_buffer),
            (1, &r.nodes),
            (2, &r.roots),
            (3, &r.entries),
            (4, &r.base_values),
            (5, &labels),
            (6, &scores),
        ];
        // The node buffer is bound there too, wherever the kernel declares the binding.
        if declares_node_blocks(r.pipeline.info()) {
            bindings.push((NODE_BLOCKS_BINDING, &r.nodes));
        }
        let bind_group = r.pipeline.bind(&bindings)?;
        let small_bind_group = r.small_pipeline.as_ref().map(|p| p.bind(&bindings)).transpose()?;
        let step_bind_groups = r
            .step_pipelines
            .iter()
            .map(|p| p.bind(&bindings))
            .collect::<Result<Vec<_>, _>>()?;
        let compute = device.stream(QueueKind::Compute)?;
        let transfer = (device_input.is_some() && r.config.transfer_stream)
            .then(|| device.stream(QueueKind::Transfer))
            .transpose()?;
        let timestamps = device.create_timestamps(2).ok();
        Ok(ForestLane {
            kernel,
            max_rows,
            input,
            device_input,
            labels,
            scores,
            bind_group,
            small_bind_group,
            step_bind_groups,
            compute,
            transfer,
            work: None,
            upload: None,
            recorded: None,
            timestamps,
            pending: None,
            chunk_lists: Vec::new(),
            chunk_direct_lists: Vec::new(),
            chunk_dispatches: Vec::new(),
            chunk_uploads: Vec::new(),
            chunks_recorded: None,
            tuned_plans: Vec::new(),
            chunk_bounds: Vec::new(),
            timeline: None,
            poll_finish: false,
        })
    }

    /// The share of each `predict` dispatch's rows this lane writes straight into device memory (staged
    /// path with host-visible device memory), if any: [`ForestOptions::direct_share`].
    pub fn direct_share(&self) -> Option<f32> {
        let share = self.kernel.config().direct_share;
        // `staged_target` gives the device buffer host-visible memory only where the share can be used.
        self.device_input
            .as_ref()
            .filter(|target| target.kind() == MemoryKind::Upload && share > 0.0)
            .map(|_| share)
    }

    /// Largest batch this lane takes.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// Features per row.
    pub fn n_features(&self) -> usize {
        self.kernel.resident.n_features
    }

    /// The staging memory rows are written into (row-major, `max_rows * n_features` floats and a few
    /// padding rows). Zero-copy: this is the memory the GPU reads or copies from on [`submit`](Self::submit).
    /// (`predict` on a lane with a direct share writes its rows, or a share of them, into device memory
    /// instead, so this memory does not hold a `predict` batch afterwards.)
    pub fn input(&self) -> Result<vknf_vulkan::Mapped<'_, f32>, ForestError> {
        Ok(self.input.map::<f32>()?)
    }

    /// Copies `rows` into the staging memory at row `first_row`.
    pub fn write_rows(&self, first_row: usize, rows: &[f32]) -> Result<(), ForestError> {
        self.check_fits(first_row, rows)?;
        copy_rows(&self.input, first_row * self.n_features(), rows)
    }

    fn check_fits(&self, first_row: usize, rows: &[f32]) -> Result<(), ForestError> {
        let nf = self.n_features();
        if rows.len() % nf != 0 || first_row + rows.len() / nf > self.max_rows {
            return Err(ForestError::Input(format!(
                "{} values at row {first_row} do not fit a lane of {} rows x {nf} features",
                rows.len(),
                self.max_rows
            )));
        }
        Ok(())
    }

    /// The device buffer the host writes rows into itself, on a lane with a direct share.
    fn direct_target(&self) -> Option<Buffer> {
        self.direct_share().and(self.device_input.clone())
    }

    /// The pipeline (bound to this lane's buffers) a dispatch of `n_rows` takes
    /// ([`KernelConfig::dispatch_pipeline`]), its workgroups, and which pipeline that is.
    fn dispatch_shape(&self, n_rows: usize) -> (BindGroup, u32, DispatchPipeline) {
        let config = self.kernel.config();
        let bulk = (&self.bind_group, config.rows_per_group, DispatchPipeline::Bulk);
        let wanted = config.dispatch_pipeline(n_rows);
        let (bind_group, rows_per_group, pipeline) = match wanted {
            DispatchPipeline::SmallBatch => match &self.small_bind_group {
                Some(small) => (small, 1, wanted),
                None => bulk,
            },
            // A step's bind group is the one built with its pipeline (steps are a prefix of the array).
            DispatchPipeline::LaneStep(index) => match (config.lane_steps[index], self.step_bind_groups.get(index)) {
                (Some(step), Some(group)) => (group, step.rows_per_group, wanted),
                _ => bulk,
            },
            DispatchPipeline::Bulk => bulk,
        };
        (
            bind_group.clone(),
            n_rows.div_ceil(rows_per_group as usize).max(1) as u32,
            pipeline,
        )
    }

    /// Records the batch's command lists; `rows_on_device`: the host wrote the rows into the device buffer
    /// itself, so nothing is copied.
    fn record(&mut self, n_rows: usize, want_scores: bool, rows_on_device: bool) -> Result<(), ForestError> {
        if self.recorded == Some((n_rows, want_scores, rows_on_device)) {
            return Ok(());
        }
        // Until both lists are recorded again, none matches a key (a failure below may leave one of them
        // recorded for this batch and the other for the previous one).
        self.recorded = None;
        let r = self.kernel.resident.clone();
        let bytes = self.input_bytes(n_rows);
        let (bind_group, groups, _) = self.dispatch_shape(n_rows);
        let params = Params {
            n_rows: n_rows as u32,
            n_trees: r.n_trees,
            n_nodes: r.n_nodes,
            n_entries: r.n_entries,
            write_scores: want_scores as u32,
            first_row: 0,
        };
        let input = self.input.clone();
        let device_input = self.device_input.clone();
        let on_transfer_queue = self.copies_on_transfer_queue(n_rows, rows_on_device);
        let timestamps = self.timestamps.clone();
        let record_work = |rec: &mut vknf_vulkan::Recorder<'_>| -> vknf_vulkan::Result<()> {
            if let Some(ts) = &timestamps {
                rec.reset_timestamps(ts)?;
            }
            if let (Some(device_input), false, false) = (&device_input, on_transfer_queue, rows_on_device) {
                rec.copy(&input, 0, device_input, 0, bytes)?;
                rec.barrier();
            }
            if let Some(ts) = &timestamps {
                rec.write_timestamp(ts, 0)?;
            }
            rec.dispatch(&bind_group, &params, [groups, 1, 1])?;
            if let Some(ts) = &timestamps {
                rec.write_timestamp(ts, 1)?;
            }
            Ok(())
        };
        match &mut self.work {
            Some(list) => list.rerecord(record_work)?,
            None => self.work = Some(self.compute.record(record_work)?),
        }
        if let (Some(transfer), Some(device_input), true) = (&self.transfer, &self.device_input, on_transfer_queue) {
            let copy = |rec: &mut vknf_vulkan::Recorder<'_>| rec.copy(&input, 0, device_input, 0, bytes);
            match &mut self.upload {
                Some(list) => list.rerecord(copy)?,
                None => self.upload = Some(transfer.record(copy)?),
            }
        }
        self.recorded = Some((n_rows, want_scores, rows_on_device));
        Ok(())
    }

    /// Whether a staged batch of `n_rows` is copied on the dedicated transfer queue (where the device has
    /// one) rather than in the kernel's own command list: only large copies, which then run beside other
    /// lanes' kernels (a small batch's copy in its own command list costs it no semaphore between two
    /// queues), and none where the host wrote the rows into the device buffer itself.
    fn copies_on_transfer_queue(&self, n_rows: usize, rows_on_device: bool) -> bool {
        self.transfer.is_some() && self.input_bytes(n_rows) >= TRANSFER_QUEUE_BYTES && !rows_on_device
    }

    /// Input bytes a batch of `n_rows` occupies: whole workgroups of rows, as the kernel stages them.
    fn input_bytes(&self, n_rows: usize) -> u64 {
        let rows = n_rows
            .next_multiple_of(self.kernel.config().rows_per_group as usize)
            .max(1);
        (rows * self.n_features() * 4) as u64
    }

    /// The direct share a `predict` batch of `n_rows` takes: only batches of at least 1 MiB (the lane has
    /// a share only with a transfer stream). A smaller batch is written into device memory whole: a copy
    /// on a second queue would cost it more than it saves (the tiny forest's 68 KB batch took 63-115 us
    /// with a split instead of 35 us without, on the H200; bench/RESULTS.md).
    fn batch_direct_share(&self, n_rows: usize) -> Option<f32> {
        self.direct_share()
            .filter(|_| self.input_bytes(n_rows) >= TRANSFER_QUEUE_BYTES)
    }

    /// Starts the first `n_rows` staged rows on the GPU. Wait with [`ForestLane::finish`].
    pub fn submit(&mut self, n_rows: usize, want_scores: bool) -> Result<(), ForestError> {
        self.submit_batch(n_rows, want_scores, false)
    }

    fn submit_batch(&mut self, n_rows: usize, want_scores: bool, rows_on_device: bool) -> Result<(), ForestError> {
        if self.pending.is_some() {
            return Err(ForestError::Input(
                "the lane already has a batch in flight; finish it first".into(),
            ));
        }
        if n_rows == 0 || n_rows > self.max_rows {
            return Err(ForestError::Input(format!(
                "{n_rows} rows: a lane takes 1 to {} rows",
                self.max_rows
            )));
        }
        self.record(n_rows, want_scores, rows_on_device)?;
        let on_transfer_queue = self.copies_on_transfer_queue(n_rows, rows_on_device);
        let work = self.work.as_mut().expect("recorded above");
        let ticket = match (&mut self.transfer, &mut self.upload) {
            (Some(transfer), Some(upload)) if on_transfer_queue => {
                let uploaded = transfer.submit(upload)?;
                match self.compute.submit_after(work, &[&uploaded]) {
                    Ok(ticket) => ticket,
                    Err(err) => {
                        // The copy writes the lane's device buffer: let it end before the lane is reused.
                        let _ = uploaded.wait(BATCH_DEADLINE);
                        return Err(err.into());
                    }
                }
            }
            _ => self.compute.submit(work)?,
        };
        self.pending = Some((ticket, n_rows, want_scores));
        Ok(())
    }

    /// Waits for the batch in flight and reads its results.
    pub fn finish(&mut self, deadline: Duration) -> Result<LaneResult, ForestError> {
        self.finish_after(deadline, Vec::new())
    }

    /// [`ForestLane::finish`] for a batch whose first `labels.len()` labels were already read and checked
    /// (the chunks of a pipelined batch whose dispatches ended before the last).
    fn finish_after(&mut self, deadline: Duration, mut labels: Vec<u32>) -> Result<LaneResult, ForestError> {
        let (ticket, n_rows, want_scores) = self
            .pending
            .take()
            .ok_or_else(|| ForestError::Input("no batch in flight".into()))?;
        if std::mem::take(&mut self.poll_finish) {
            ticket.wait_polling(deadline, WHOLE_BATCH_POLL)?;
        } else if self.kernel.config().uses_small_batch(n_rows) {
            ticket.wait_polling(deadline, SMALL_BATCH_POLL)?;
        } else {
            ticket.wait(deadline)?;
        }
        if self.reads_labels() {
            self.read_checked_labels(&mut labels, n_rows)?;
            if !self.kernel.is_classifier() {
                labels.clear();
            }
        }
        let scores = if want_scores {
            let mut scores: Vec<f32> = self.scores.read_vec(0, n_rows * self.kernel.n_outputs())?;
            let post = self.kernel.resident.post_transform;
            if post != PostTransform::None {
                scores
                    .chunks_mut(self.kernel.n_outputs())
                    .for_each(|row| apply_post_transform(post, row));
            }
            Some(scores)
        } else {
            None
        };
        Ok(LaneResult { n_rows, labels, scores })
    }

    /// Whether a batch's labels are read: a classifier's answer, or a regressor's NaN marks.
    fn reads_labels(&self) -> bool {
        self.kernel.is_classifier() || !self.kernel.accepts_nan()
    }

    /// Appends the labels of rows `labels.len()..end` of the finished dispatches to `labels`, and fails
    /// with the row and feature where the kernel marked a row with a NaN feature (models without
    /// missing-value routing).
    fn read_checked_labels(&self, labels: &mut Vec<u32>, end: usize) -> Result<(), ForestError> {
        let first = labels.len();
        if end < first {
            return Err(ForestError::Input(format!("labels of rows {first}..{end} asked for")));
        }
        labels.resize(end, 0);
        self.labels.read((first * 4) as u64, &mut labels[first..])?;
        if self.kernel.accepts_nan() {
            return Ok(());
        }
        // A branch-free pass the compiler vectorises first: a batch of 100,000 rows is scanned on the
        // critical path of every whole batch, and a NaN row is rare.
        let marked = labels[first..]
            .iter()
            .fold(false, |seen, &label| seen | (label == NAN_ROW));
        if !marked {
            return Ok(());
        }
        let offset = labels[first..].iter().position(|&label| label == NAN_ROW).unwrap_or(0);
        // The rows the kernel read: in the device buffer where the host wrote a share there.
        let source = match &self.device_input {
            Some(target) if self.direct_share().is_some() => target,
            _ => &self.input,
        };
        Err(self.nan_row_error(first + offset, source)?)
    }

    /// The error for row `row` of the last batch, which the kernel marked for a NaN feature; `source`
    /// holds the rows the kernel read.
    fn nan_row_error(&self, row: usize, source: &Buffer) -> Result<ForestError, ForestError> {
        let nf = self.n_features();
        let values: Vec<f32> = source.read_vec(row * nf, nf)?;
        let feature = values.iter().position(|v| v.is_nan()).unwrap_or(0);
        Ok(ForestError::Input(format!(
            "row {row} feature {feature} is NaN, and this model has no missing-value routing"
        )))
    }

    /// Reads the results of the last finished batch into caller-owned memory, without allocating.
    pub fn read_labels(&self, out: &mut [u32]) -> Result<(), ForestError> {
        self.labels.read(0, out)?;
        Ok(())
    }

    /// GPU time of the last finished batch's kernel, in nanoseconds, where the device has timestamps.
    pub fn last_kernel_ns(&self) -> Option<f64> {
        let ts = self.timestamps.as_ref()?.read_ns().ok()?;
        Some(ts[1] - ts[0])
    }

    /// Records (or stops recording) a timeline of each pipelined batch ([`run_pipelined`](Self::run_pipelined),
    /// so `predict`'s large batches): host moments and GPU timestamps per dispatch, read with
    /// [`last_timeline`](Self::last_timeline). For measurement: it adds a reset and a read of the
    /// timestamps and a reading of the device's clock (where it has one beside the host's) to every
    /// batch. Fails where the device cannot reset timestamps from the host or has
    /// none on a queue the lane uses.
    pub fn record_timeline(&mut self, on: bool) -> Result<(), ForestError> {
        if on {
            let device = &self.kernel.resident.device;
            let probe = device.create_timestamps(1)?;
            probe.reset_on_host()?;
            let transfer_bits = device.info().transfer_family().map(|f| f.timestamp_valid_bits);
            if self.transfer.is_some() && transfer_bits == Some(0) {
                return Err(ForestError::Unsupported(
                    "the transfer queue has no timestamps: no timeline of its copies".into(),
                ));
            }
        }
        self.timeline = on.then(timeline::Timeline::default);
        self.chunks_recorded = None;
        Ok(())
    }

    /// The timeline of the last pipelined batch, when [`record_timeline`](Self::record_timeline) is on
    /// (`None` after a batch written whole into device memory in one dispatch, which has no chunks, or
    /// whose timestamps could not be read).
    pub fn last_timeline(&self) -> Option<&BatchTimeline> {
        self.timeline.as_ref()?.last()
    }

    /// The dispatches of the last pipelined batch ([`run_pipelined`](Self::run_pipelined), and
    /// [`predict`](Self::predict)'s batches that take it), in submission order: each one's rows and the
    /// pipeline they took ([`KernelConfig::dispatch_pipeline`]).
    pub fn pipelined_dispatches(&self) -> &[(usize, DispatchPipeline)] {
        &self.chunk_dispatches
    }

    /// Runs one batch of staged rows: submit, then finish.
    pub fn run(&mut self, n_rows: usize, want_scores: bool) -> Result<LaneResult, ForestError> {
        self.submit(n_rows, want_scores)?;
        self.finish(BATCH_DEADLINE)
    }

    fn record_chunks(&mut self, n_rows: usize, plan: BatchPlan, want_scores: bool) -> Result<(), ForestError> {
        if self.chunks_recorded == Some((n_rows, plan, want_scores)) {
            return Ok(());
        }
        // Until every list is recorded again, none matches a key (a failure below leaves them empty).
        self.chunks_recorded = None;
        let r = self.kernel.resident.clone();
        let rows_per_group = r.config.rows_per_group as usize;
        let mut bounds = std::mem::take(&mut self.chunk_bounds);
        chunk_bounds(n_rows, plan.dispatches, rows_per_group, &mut bounds);
        let mut lists = std::mem::take(&mut self.chunk_lists);
        let mut direct_lists = std::mem::take(&mut self.chunk_direct_lists);
        let mut dispatches = std::mem::take(&mut self.chunk_dispatches);
        dispatches.clear();
        let mut uploads = std::mem::take(&mut self.chunk_uploads);
        // Staged input copies each chunk on the transfer queue where there is one, so that the copies
        // run back to back beside the kernels; otherwise in the chunk's own command list.
        let on_transfer_queue = self.device_input.is_some() && self.transfer.is_some();
        let stamps = match &mut self.timeline {
            Some(timeline) => Some(timeline.slots_for(&r.device, bounds.len())?),
            None => None,
        };
        let one_dispatch = bounds.len() == 1;
        let mut index = 0;
        for &(first, end) in &bounds {
            // Staged input: each chunk copies its own rows (whole workgroups of them, as the kernel stages)
            // to device memory before its dispatch, but for its direct share, which the host writes there.
            let staged_from = first + direct_rows(self.batch_direct_share(n_rows), end - first);
            // A batch in one dispatch: its directly written rows as a dispatch of their own, which waits
            // for no copy.
            let direct_first =
                plan.direct_rows_first && on_transfer_queue && one_dispatch && first < staged_from && staged_from < end;
            let params = |first: usize, end: usize| Params {
                n_rows: end as u32,
                n_trees: r.n_trees,
                n_nodes: r.n_nodes,
                n_entries: r.n_entries,
                write_scores: want_scores as u32,
                first_row: first as u32,
            };
            let dispatched_from = if direct_first { staged_from } else { first };
            // Each dispatch takes the pipeline its rows call for (small-batch, a lane step or the bulk
            // one): the last chunk's kernel is what the host waits for after its last write, and fewer
            // rows finish sooner with more lanes a row.
            let (bind_group, groups, pipeline) = self.dispatch_shape(end - dispatched_from);
            let params_here = params(dispatched_from, end);
            let direct_list = if direct_first {
                let (direct_group, direct_groups, direct_pipeline) = self.dispatch_shape(staged_from - first);
                dispatches.push((staged_from - first, direct_pipeline));
                let direct_params = params(first, staged_from);
                let record = |rec: &mut vknf_vulkan::Recorder<'_>| {
                    rec.dispatch(&direct_group, &direct_params, [direct_groups, 1, 1])
                };
                Some(match direct_lists.get_mut(index).and_then(Option::take) {
                    Some(mut list) => {
                        list.rerecord(record)?;
                        list
                    }
                    None => self.compute.record(record)?,
                })
            } else {
                None
            };
            match direct_lists.get_mut(index) {
                Some(slot) => *slot = direct_list,
                None => direct_lists.push(direct_list),
            }
            dispatches.push((end - dispatched_from, pipeline));
            let copy = self.device_input.as_ref().map(|device_input| {
                let start = (staged_from * r.n_features * 4) as u64;
                (device_input, start, self.input_bytes(end) - start)
            });
            let input = &self.input;
            let stamps = stamps
                .as_ref()
                .map(|(compute, transfer)| (&compute[index], &transfer[index]));
            let record = |rec: &mut vknf_vulkan::Recorder<'_>| {
                if let Some((compute, _)) = stamps {
                    rec.write_start_timestamp(compute, 0)?;
                }
                if let (Some((device_input, offset, bytes)), false) = (copy, on_transfer_queue) {
                    rec.copy(input, offset, device_input, offset, bytes)?;
                    rec.barrier();
                }
                if let Some((compute, _)) = stamps {
                    rec.write_timestamp(compute, 1)?;
                }
                rec.dispatch(&bind_group, &params_here, [groups, 1, 1])?;
                if let Some((compute, _)) = stamps {
                    rec.write_timestamp(compute, 2)?;
                }
                Ok(())
            };
            match lists.get_mut(index) {
                Some(list) => list.rerecord(record)?,
                None => lists.push(self.compute.record(record)?),
            }
            if let (Some((device_input, offset, bytes)), Some(transfer), true) =
                (copy, &self.transfer, on_transfer_queue)
            {
                let upload = |rec: &mut vknf_vulkan::Recorder<'_>| {
                    if let Some((_, transfer)) = stamps {
                        rec.write_start_timestamp(transfer, 0)?;
                    }
                    rec.copy(input, offset, device_input, offset, bytes)?;
                    if let Some((_, transfer)) = stamps {
                        rec.write_timestamp(transfer, 1)?;
                    }
                    Ok(())
                };
                match uploads.get_mut(index) {
                    Some(list) => list.rerecord(upload)?,
                    None => uploads.push(transfer.record(upload)?),
                }
            }
            index += 1;
        }
        self.chunk_bounds = bounds;
        lists.truncate(index);
        direct_lists.truncate(index);
        self.chunk_direct_lists = direct_lists;
        self.chunk_dispatches = dispatches;
        uploads.truncate(if on_transfer_queue { index } else { 0 });
        self.chunk_lists = lists;
        self.chunk_uploads = uploads;
        self.chunks_recorded = Some((n_rows, plan, want_scores));
        Ok(())
    }

    /// Runs `rows` (at most the lane's size) as `chunks` dispatches, each submitted as soon as its rows
    /// are written, so that the host's copy of chunk i+1 overlaps the GPU's work on chunk i (and the
    /// submission of chunk i overlaps the copy of chunk i+1). On the staged input path each chunk's
    /// dispatch is preceded by the DMA of its own rows. The dispatches are ordered as the kernel's
    /// options ask ([`ForestKernel::batch_plan`]); [`run_planned`](Self::run_planned) takes any plan.
    pub fn run_pipelined(&mut self, rows: &[f32], chunks: usize, want_scores: bool) -> Result<LaneResult, ForestError> {
        let plan = BatchPlan {
            dispatches: chunks,
            ..self.kernel.batch_plan(rows.len() / self.n_features())
        };
        self.run_planned(rows, plan, want_scores)
    }

    /// Runs `rows` (at most the lane's size) as `plan` has it ([`run_pipelined`](Self::run_pipelined)
    /// with the plan's orderings; those that do not apply to the batch are left out,
    /// [`BatchPlan::as_run`]).
    pub fn run_planned(&mut self, rows: &[f32], plan: BatchPlan, want_scores: bool) -> Result<LaneResult, ForestError> {
        let chunks = plan.dispatches;
        let nf = self.n_features();
        let n_rows = rows.len() / nf;
        if self.pending.is_some() {
            return Err(ForestError::Input(
                "the lane already has a batch in flight; finish it first".into(),
            ));
        }
        if (chunks <= 1 && self.batch_direct_share(n_rows).is_none()) || n_rows < 2 {
            // A lane that writes shares of large batches into device memory writes a small batch there
            // whole: no copy to wait for (as on the direct path). It has no chunks to time.
            if let Some(timeline) = &mut self.timeline {
                timeline.forget_last();
            }
            let on_device = self.direct_target();
            self.check_fits(0, rows)?;
            let writing = pool::batch_starts();
            copy_rows(on_device.as_ref().unwrap_or(&self.input), 0, rows)?;
            self.submit_batch(n_rows, want_scores, on_device.is_some())?;
            drop(writing);
            if copied_by_pool(rows.len()) {
                pool::keep_awake(self.writers_awake());
            }
            self.poll_finish = true;
            return self.finish(BATCH_DEADLINE);
        }
        if rows.len() % nf != 0 || n_rows > self.max_rows {
            return Err(ForestError::Input(format!(
                "{} values do not fit a lane of {} rows x {nf} features",
                rows.len(),
                self.max_rows
            )));
        }
        // (A batch of fewer workgroups than dispatches asked for still takes this path, in as many
        // dispatches as it has workgroups, and lists them.)
        let (groups, splits) = self.plan_shape(n_rows);
        let plan = plan.as_run(groups, splits);
        self.record_chunks(n_rows, plan, want_scores)?;
        let bounds = &self.chunk_bounds;
        let n_chunks = bounds.len();
        let marks = match &mut self.timeline {
            Some(timeline) => Some(timeline.start_batch(n_chunks)?),
            None => None,
        };
        let marks = marks.as_ref();
        let input = self.input.clone();
        let share = self.batch_direct_share(n_rows);
        let direct = self.device_input.clone().filter(|_| share.is_some());
        let compute = &mut self.compute;
        let transfer = &mut self.transfer;
        let writing = pool::batch_starts();
        let lists = &mut self.chunk_lists;
        let direct_lists = &mut self.chunk_direct_lists;
        let uploads = &mut self.chunk_uploads;
        // A chunk's rows: its direct share written into device memory while the rest goes to the pinned
        // memory its DMA reads (both at once, each copy split over threads); the chunk's DMA is submitted
        // as soon as its own rows are written, so that it runs while the host still writes the direct
        // share. Returns the DMA's ticket where the copy runs on the transfer queue.
        let after_copy = plan.direct_after_copy;
        let write_and_upload = |index: usize,
                                transfer: &mut Option<Stream>,
                                upload: Option<&mut CommandList>,
                                previous_copy: Option<&Ticket>|
         -> Result<Option<Ticket>, ForestError> {
            let (first_row, end_row) = bounds[index];
            let staged_from = first_row + direct_rows(share, end_row - first_row);
            let values = |from: usize, to: usize| &rows[from * nf..to * nf];
            let mark = |moment: HostMoment| timeline::mark(marks, index, moment);
            mark(HostMoment::WriteStart);
            let write_then_upload = || -> Result<Option<Ticket>, ForestError> {
                copy_rows(&input, staged_from * nf, values(staged_from, end_row))?;
                mark(HostMoment::StagedWritten);
                match (upload, transfer.as_mut()) {
                    (Some(upload), Some(transfer)) => {
                        let ticket = transfer.submit(upload)?;
                        mark(HostMoment::CopySubmitted);
                        Ok(Some(ticket))
                    }
                    _ => Ok(None),
                }
            };
            match &direct {
                Some(target) if staged_from > first_row => {
                    let write_direct = || {
                        // The previous dispatch's rows first, where asked (`direct_after_copy`): its
                        // copy would share the bus with these writes.
                        if let Some(previous) = previous_copy.filter(|_| after_copy) {
                            previous.wait_polling(BATCH_DEADLINE, WHOLE_BATCH_POLL)?;
                        }
                        copy_rows(target, first_row * nf, values(first_row, staged_from))
                    };
                    let (written, uploaded) = rayon::join(write_direct, write_then_upload);
                    mark(HostMoment::AllWritten);
                    match (written, uploaded) {
                        (Ok(()), uploaded) => uploaded,
                        (Err(err), uploaded) => {
                            // The copy writes the lane's buffer: let it end before the lane is reused.
                            if let Ok(Some(ticket)) = uploaded {
                                let _ = ticket.wait(BATCH_DEADLINE);
                            }
                            Err(err)
                        }
                    }
                }
                _ => {
                    let uploaded = write_then_upload();
                    mark(HostMoment::AllWritten);
                    uploaded
                }
            }
        };
        // Each chunk's dispatch is submitted once its rows are written (after its DMA, if any), while the
        // next chunk's rows are written. (Queueing every chunk ahead behind a semaphore the host signals
        // was measured slower on the H200: the driver holds such submissions back, bench/RESULTS.md.)
        // The loop runs on a worker of the pool, so that each join below costs a push to its local queue
        // rather than a hand-off from an outside thread.
        let mut dispatched = rayon::scope(|_| -> Result<Vec<Ticket>, ForestError> {
            let mut uploaded = write_and_upload(0, transfer, uploads.get_mut(0), None)?;
            let mut dispatched: Vec<Ticket> = Vec::with_capacity(n_chunks);
            for (index, list) in lists.iter_mut().enumerate().take(n_chunks) {
                let next_upload = uploads.get_mut(index + 1);
                let (submitted, next) = rayon::join(
                    || {
                        // The rows written into device memory first, waiting for no copy. Waiting for
                        // the later submission waits for it too: a semaphore signal operation of
                        // vkQueueSubmit includes every command earlier in submission order on its queue.
                        let direct = match direct_lists.get_mut(index).and_then(Option::as_mut) {
                            Some(direct_list) => Some(compute.submit(direct_list)?),
                            None => None,
                        };
                        let submitted = match &uploaded {
                            Some(uploaded) => compute.submit_after(list, &[uploaded]),
                            None => compute.submit(list),
                        };
                        if let (Err(_), Some(direct)) = (&submitted, direct) {
                            let _ = direct.wait(BATCH_DEADLINE);
                        }
                        timeline::mark(marks, index, HostMoment::DispatchSubmitted);
                        submitted
                    },
                    || {
                        if index + 1 < n_chunks {
                            write_and_upload(index + 1, transfer, next_upload, uploaded.as_ref())
                        } else {
                            Ok(None)
                        }
                    },
                );
                // On an error, work already submitted (this chunk's, the next chunk's copy) reads or
                // writes the lane's buffers: let it finish before the lane can be reused.
                match (submitted, next) {
                    (Ok(ticket), Ok(next)) => {
                        dispatched.push(ticket);
                        uploaded = next;
                    }
                    (Ok(ticket), Err(err)) => {
                        let _ = ticket.wait(BATCH_DEADLINE);
                        return Err(err);
                    }
                    (Err(err), next) => {
                        for ticket in [uploaded, next.ok().flatten(), dispatched.pop()].into_iter().flatten() {
                            let _ = ticket.wait(BATCH_DEADLINE);
                        }
                        return Err(err.into());
                    }
                }
            }
            Ok(dispatched)
        })?;
        let last = dispatched.pop();
        self.pending = last.map(|ticket| (ticket, n_rows, want_scores));
        drop(writing);
        pool::keep_awake(self.writers_awake());
        // Each earlier chunk's labels are read and checked while the later kernels run, so that only the
        // last chunk's are left after its kernel (reading and checking a whole 100,000-row batch's
        // labels after it was most of the time from the last kernel's end to the answer on the H200:
        // bench/RESULTS.md, "Each tree's levels one after another").
        let mut labels = Vec::new();
        if self.reads_labels() {
            labels.reserve(n_rows);
            for (ticket, &(_, end)) in dispatched.iter().zip(&self.chunk_bounds) {
                let read = ticket
                    .wait_polling(BATCH_DEADLINE, WHOLE_BATCH_POLL)
                    .map_err(ForestError::from)
                    .and_then(|()| self.read_checked_labels(&mut labels, end));
                if let Err(err) = read {
                    // The last dispatch still uses the lane's buffers: let it end first.
                    if let Some((ticket, ..)) = self.pending.take() {
                        let _ = ticket.wait(BATCH_DEADLINE);
                    }
                    return Err(err);
                }
            }
        }
        // After the last write only the last chunk's copy and kernel are left: poll rather than sleep.
        self.poll_finish = true;
        let result = self.finish_after(BATCH_DEADLINE, labels)?;
        if let (Some(marks), Some(timeline)) = (marks, &mut self.timeline) {
            // Chunks whose copies ran on the transfer queue have upload lists (and their timestamps).
            let copied = !self.chunk_uploads.is_empty();
            // A measurement that fails costs the batch its timeline, not its results.
            if let Err(err) = timeline.finish_batch(&self.kernel.resident.device, marks, &self.chunk_bounds, copied) {
                tracing::warn!(%err, "no timeline for this batch");
            }
        }
        Ok(result)
    }

    /// How long the pool's threads are kept awake after a whole batch's writes.
    fn writers_awake(&self) -> Duration {
        Duration::from_micros(self.kernel.config().writers_awake_us.into())
    }

    /// Predicts any number of rows (in batches of the lane's size), like the CPU reference does.
    pub fn predict(&mut self, rows: &[f32], want_scores: bool) -> Result<Prediction, ForestError> {
        let nf = self.n_features();
        if rows.len() % nf != 0 {
            return Err(ForestError::Input(format!(
                "{} values is not a whole number of {nf}-feature rows",
                rows.len()
            )));
        }
        let n_rows = rows.len() / nf;
        let n_outputs = self.kernel.n_outputs();
        let mut labels: Vec<u32> = Vec::new();
        let mut scores: Vec<f32> = Vec::new();
        for (index, chunk) in rows.chunks(self.max_rows * nf).enumerate() {
            // One dispatch where that is best: `run_planned` then writes the rows and runs them.
            let plan = self.plan_for(chunk.len() / nf);
            let result = self.run_planned(chunk, plan, want_scores).map_err(|err| match err {
                ForestError::Input(message) if message.starts_with("row ") => {
                    ForestError::Input(format!("batch {index}: {message}"))
                }
                other => other,
            })?;
            append_batch(&mut labels, result.labels, n_rows);
            if let Some(batch) = result.scores {
                append_batch(&mut scores, batch, n_rows * n_outputs);
            }
        }
        Ok(Prediction {
            n_rows,
            n_outputs,
            scores,
            labels,
        })
    }
}

/// Results read in place: the serving path waits for a batch without reading it, then copies each
/// request's share of the results straight from the readback memory into that request's answer.
impl ForestLane {
    /// Waits for the batch in flight without reading its results, and returns its row count. Rows
    /// the kernel rejected for NaN features (models without missing-value routing) fail the batch.
    pub fn finish_in_place(&mut self, deadline: Duration) -> Result<usize, ForestError> {
        let (ticket, n_rows, _) = self
            .pending
            .take()
            .ok_or_else(|| ForestError::Input("no batch in flight".into()))?;
        if self.kernel.config().uses_small_batch(n_rows) {
            ticket.wait_polling(deadline, SMALL_BATCH_POLL)?;
        } else {
            ticket.wait(deadline)?;
        }
        if !self.kernel.accepts_nan() {
            let labels = self.labels.map::<u32>()?;
            if let Some(row) = labels[..n_rows].iter().position(|l| *l == NAN_ROW) {
                drop(labels);
                return Err(self.nan_row_error(row, &self.input)?);
            }
        }
        Ok(n_rows)
    }

    /// Copies the labels of rows `first_row..` of the last finished batch into `out` (little-endian
    /// `u32`, four bytes a row), without allocating.
    pub fn read_labels_at(&self, first_row: usize, out: &mut [u8]) -> Result<(), ForestError> {
        self.labels.read((first_row * 4) as u64, out)?;
        Ok(())
    }

    /// Copies the scores of rows `first_row..` of the last finished batch into `out` (little-endian
    /// `f32`, `n_outputs` a row, whole rows), without allocating, applying the post transform (logistic,
    /// softmax) to each row as the CPU reference does. Valid only when the batch was run with scores.
    pub fn read_scores_at(&self, first_row: usize, out: &mut [u8]) -> Result<(), ForestError> {
        let n_outputs = self.kernel.n_outputs();
        self.scores.read((first_row * n_outputs * 4) as u64, out)?;
        let post = self.kernel.resident.post_transform;
        if post != PostTransform::None {
            out.chunks_mut(n_outputs * 4)
                .for_each(|row| apply_post_transform_le(post, row));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_bounds_cover_the_batch_in_equal_whole_workgroups() {
        let mut bounds = Vec::new();
        for (n_rows, chunks, group) in [
            (100_000usize, 4usize, 16usize),
            (100_000, 3, 16),
            (5788, 2, 24),
            (5788, 7, 24),
            (50, 8, 16),
            (1, 4, 16),
            (97, 1, 8),
        ] {
            chunk_bounds(n_rows, chunks, group, &mut bounds);
            let case = format!("{n_rows} rows, {chunks} chunks of groups of {group}: {bounds:?}");
            assert_eq!(bounds.len(), chunks.min(n_rows.div_ceil(group)), "{case}");
            assert_eq!(bounds.first().unwrap().0, 0, "{case}");
            assert_eq!(bounds.last().unwrap().1, n_rows, "{case}");
            for pair in bounds.windows(2) {
                assert_eq!(pair[0].1, pair[1].0, "contiguous: {case}");
                assert_eq!(pair[0].1 % group, 0, "whole workgroups: {case}");
            }
            let groups: Vec<usize> = bounds.iter().map(|(a, b)| (b - a).div_ceil(group)).collect();
            let (least, most) = (groups.iter().min().unwrap(), groups.iter().max().unwrap());
            assert!(*least >= 1 && most - least <= 1, "equal within a workgroup: {case}");
        }
    }

    #[test]
    fn lane_steps_double_the_lanes_while_the_rows_fit_the_device() {
        let step = |max_rows, rows_per_group, tree_lanes| {
            Some(LaneStep {
                max_rows,
                rows_per_group,
                tree_lanes,
            })
        };
        // The H200: 132 SMs of 64 warps.
        let h200 = ComputeUnits {
            count: 132,
            invocations_each: 2048,
        };
        let basis = |n_trees, tree_lanes, rows, group_threads, units| StepBasis {
            n_trees,
            tree_lanes,
            rows,
            group_threads,
            max_invocations: 1024,
            subgroup_size: 32,
            units,
            small_max_rows: 1024,
        };
        // The deep forest's 150 trees from 45 lanes in 990 threads: 90 lanes x 11 rows (31 warps, two
        // workgroups an SM: 2 x 132 x 11 rows), then 150 x 6 (29 warps, two an SM).
        assert_eq!(
            lane_steps(&basis(150, 45, 22, 990, h200)),
            [step(2904, 11, 90), step(1584, 6, 150), None]
        );
        // The wide forest's 300 trees from 8 lanes in 128 threads (16 workgroups an SM): three steps.
        assert_eq!(
            lane_steps(&basis(300, 8, 16, 128, h200)),
            [step(16896, 8, 16), step(8448, 4, 32), step(4224, 2, 64)]
        );
        // No more rows a workgroup than the bulk pipeline's, which shared memory may have bounded:
        // 90 x 4 = 360 threads (12 warps, five an SM), 150 x 4 = 600 (19 warps, three an SM).
        assert_eq!(
            lane_steps(&basis(150, 45, 4, 990, h200)),
            [step(2640, 4, 90), step(1584, 4, 150), None]
        );
        // None where the bulk lanes already walk a tree each, where a step would hold no more rows than
        // the small-batch pipeline takes, or beyond the workgroup's invocations.
        assert_eq!(lane_steps(&basis(40, 40, 24, 990, h200)), [None; MAX_LANE_STEPS]);
        let small_gpu = ComputeUnits {
            count: 40,
            invocations_each: 1024,
        };
        assert_eq!(lane_steps(&basis(150, 45, 22, 990, small_gpu)), [None; MAX_LANE_STEPS]);
        let huge = ComputeUnits {
            count: 1 << 20,
            invocations_each: 2048,
        };
        assert_eq!(
            lane_steps(&basis(5000, 512, 2, 1024, huge)),
            [step(2 << 20, 1, 1024), None, None]
        );
        let config = KernelConfig {
            rows_per_group: 22,
            tree_lanes: 45,
            stage_input: true,
            fixed_scale_log2: None,
            float_accumulate: false,
            input_path: InputPath::Direct,
            small_batch: Some(SmallBatchConfig {
                max_rows: 1024,
                tree_lanes: 160,
            }),
            lane_steps: lane_steps(&basis(150, 45, 22, 990, h200)),
            pipeline_chunks: None,
            direct_share: 0.0,
            transfer_stream: false,
            direct_rows_first: false,
            direct_after_copy: false,
            node_blocks: true,
            breadth_first: false,
            writers_awake_us: 0,
        };
        // The small-batch pipeline up to its rows, then the step of most lanes that still holds the
        // dispatch's rows, then the bulk pipeline.
        use DispatchPipeline::{Bulk, LaneStep as Step, SmallBatch};
        for (n_rows, pipeline) in [
            (1, SmallBatch),
            (1024, SmallBatch),
            (1025, Step(1)),
            (1584, Step(1)),
            (1585, Step(0)),
            (2904, Step(0)),
            (2905, Bulk),
        ] {
            assert_eq!(config.dispatch_pipeline(n_rows), pipeline, "{n_rows} rows");
        }
    }

    #[test]
    fn forests_of_many_trees_and_few_outputs_take_their_own_shape_and_single_nodes() {
        assert!(takes_few_outputs_shape(2, 300), "the wide binary forest");
        assert!(takes_few_outputs_shape(1, FEW_OUTPUTS_MIN_TREES));
        assert!(!takes_few_outputs_shape(198, 150), "W1");
        assert!(!takes_few_outputs_shape(2, 10), "the tiny forest");
        assert!(!takes_few_outputs_shape(3, 300));
    }

    #[test]
    fn kernels_without_the_node_block_binding_keep_single_nodes() {
        // A kernel from before node blocks: single nodes unless blocks are asked for, which is refused.
        for by_default in [false, true] {
            assert!(!choose_node_blocks(None, false, by_default).unwrap());
            assert!(!choose_node_blocks(Some(false), false, by_default).unwrap());
            let refusal = choose_node_blocks(Some(true), false, by_default).unwrap_err();
            assert!(matches!(refusal, ForestError::Unsupported(_)), "{refusal}");
            assert!(refusal.to_string().contains("binding 7"), "{refusal}");
            // Today's kernel: as asked, else the forest's default.
            assert!(choose_node_blocks(Some(true), true, by_default).unwrap());
            assert!(!choose_node_blocks(Some(false), true, by_default).unwrap());
            assert_eq!(choose_node_blocks(None, true, by_default).unwrap(), by_default);
        }
    }
}
