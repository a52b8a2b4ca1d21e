//! The GPU forest kernel's class scores equal the CPU reference's bit for bit, whatever kernel
//! configuration runs them (tree threads per row, rows per workgroup, shared-memory staging, the
//! small-batch pipeline, pipelined chunks): random forests and inputs, lavapipe with validation on.

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use vknf_forest::{
    Aggregate, ClassLabels, GpuForest, MissingPolicy, NodeFormat, NodeOrder, PostTransform, RawEntry, RawForest,
    RawNode, RawTree, SplitMode, Task,
};
use vknf_functions::families::forest::ForestFamily;
use vknf_functions::{Family, ForestKernel, ForestOptions, FunctionSpec};
use vknf_vulkan::{ComputeUnits, Device, DeviceSelector, Instance, InstanceOptions};

struct Gpu {
    instance: Instance,
    device: Device,
}

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let instance = Instance::new(&InstanceOptions {
            validation: true,
            application_name: "vknf-exact-scores".into(),
            ..InstanceOptions::default()
        })
        .unwrap();
        let device = Device::select(&instance, &DeviceSelector::from_env().unwrap()).unwrap();
        Gpu { instance, device }
    })
}

/// Kernel configurations that split a row's trees and a batch's rows differently.
fn configurations() -> Vec<ForestOptions> {
    vec![
        ForestOptions::default(),
        // One thread walks every tree of its row, one row per workgroup.
        ForestOptions {
            tree_lanes: Some(1),
            rows_per_group: Some(1),
            small_batch_rows: Some(0),
            node_blocks: Some(true),
            ..Default::default()
        },
        ForestOptions {
            tree_lanes: Some(3),
            rows_per_group: Some(5),
            stage_input: Some(false),
            small_batch_rows: Some(0),
            node_blocks: Some(false),
            node_order: Some(NodeOrder::BreadthFirst),
            ..Default::default()
        },
        // Every batch on the small-batch pipeline: a thread per tree.
        ForestOptions {
            tree_lanes: Some(2),
            small_batch_rows: Some(usize::MAX),
            node_blocks: Some(true),
            ..Default::default()
        },
        // Batches split into pipelined dispatches.
        ForestOptions {
            tree_lanes: Some(7),
            rows_per_group: Some(3),
            pipeline_chunks: Some(3),
            small_batch_rows: Some(0),
            node_blocks: Some(false),
            ..Default::default()
        },
        // More tree lanes than a subgroup (48 threads per row); the small-batch pipeline takes the
        // batches of up to 16 rows.
        ForestOptions {
            tree_lanes: Some(48),
            rows_per_group: Some(2),
            small_batch_rows: Some(16),
            node_blocks: Some(true),
            node_order: Some(NodeOrder::BreadthFirst),
            ..Default::default()
        },
    ]
}

/// The kernel runs the tree lanes asked for (rows per workgroup may be fewer, where shared memory runs
/// out).
fn check_config(kernel: &ForestKernel, options: &ForestOptions) {
    if let Some(lanes) = options.tree_lanes {
        assert_eq!(kernel.config().tree_lanes, lanes, "{options:?}");
    }
    if let Some(blocks) = options.node_blocks {
        assert_eq!(kernel.config().node_blocks, blocks, "{options:?}");
    }
    if let Some(order) = options.node_order {
        assert_eq!(
            kernel.config().breadth_first,
            order == NodeOrder::BreadthFirst,
            "{options:?}"
        );
    }
}

/// SplitMix64: the forest and rows of a case follow from its seeds.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform f32 in `[low, high)`.
    fn uniform(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
}

/// A random tree of at most `depth` splits; leaves carry 0 to `n_outputs` entries of either sign.
fn grow(tree: &mut RawTree, depth: u32, shape: &ForestShape, rng: &mut Rng) -> i64 {
    let id = tree.nodes.len() as i64;
    tree.nodes.push(RawNode::Leaf);
    if depth == 0 || rng.below(4) == 0 {
        // One entry (stored inline) half the time, else a sparse set of outputs.
        let n_entries = if rng.below(2) == 0 {
            1
        } else {
            rng.below(shape.n_outputs + 1)
        };
        let first = rng.below(shape.n_outputs);
        for k in 0..n_entries {
            let weight: f64 = if shape.weights_in_eighths {
                (rng.below(17) as f64 - 8.0) / 8.0
            } else {
                match rng.below(4) {
                    0 => f64::from(rng.uniform(-1.0, 1.0)) * 1e-3,
                    1 => (1 + rng.below(7)) as f64 / 8.0,
                    _ => f64::from(rng.uniform(-1.0, 1.0)),
                }
            };
            if weight != 0.0 {
                tree.entries.push(RawEntry {
                    node: id,
                    output: ((first + k) % shape.n_outputs) as i64,
                    weight,
                });
            }
        }
        return id;
    }
    let feature = rng.below(shape.n_features) as i64;
    let threshold = f64::from(shape.thresholds[rng.below(shape.thresholds.len())]);
    let true_child = grow(tree, depth - 1, shape, rng);
    let false_child = grow(tree, depth - 1, shape, rng);
    tree.nodes[id as usize] = RawNode::Branch {
        mode: SplitMode::Leq,
        feature,
        threshold,
        true_child,
        false_child,
        missing_tracks_true: rng.below(2) == 0,
    };
    id
}

#[derive(Debug, Clone)]
struct ForestShape {
    n_features: usize,
    n_outputs: usize,
    n_trees: usize,
    depth: u32,
    average: bool,
    base_values: bool,
    binary_complement: bool,
    post_transform: PostTransform,
    /// A regressor (accumulated in float) instead of a classifier.
    regressor: bool,
    /// Leaf weights and base values are multiples of 1/8 in [-1, 1]: float sums of them are exact in
    /// any order, so float accumulation gives the CPU reference's bits too.
    weights_in_eighths: bool,
    /// Thresholds are drawn from these, and so are inputs, so that rows hit `x == threshold` often.
    thresholds: Vec<f32>,
    seed: u64,
}

fn forest_shapes() -> impl Strategy<Value = ForestShape> {
    (
        1usize..6,
        1usize..6,
        1usize..70,
        0u32..8,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0u8..3,
        prop::collection::vec(-1.0f32..1.0, 1..12),
        any::<u64>(),
    )
        .prop_map(
            |(n_features, n_outputs, n_trees, depth, average, base_values, complement, post, thresholds, seed)| {
                // The binary complement only comes without a post transform (ONNX's binary encoding).
                let post_transform = match post {
                    _ if complement => PostTransform::None,
                    0 => PostTransform::None,
                    1 => PostTransform::Logistic,
                    _ => PostTransform::Softmax,
                };
                ForestShape {
                    n_features,
                    n_outputs: if complement { 2 } else { n_outputs },
                    n_trees,
                    depth,
                    average,
                    base_values,
                    binary_complement: complement,
                    post_transform,
                    regressor: false,
                    weights_in_eighths: false,
                    thresholds,
                    seed,
                }
            },
        )
}

fn build(shape: &ForestShape) -> GpuForest {
    let mut rng = Rng(shape.seed);
    let trees = (0..shape.n_trees)
        .map(|id| {
            let mut tree = RawTree {
                id: id as i64,
                ..Default::default()
            };
            grow(&mut tree, shape.depth, shape, &mut rng);
            tree
        })
        .collect();
    let base_values = if shape.base_values {
        (0..shape.n_outputs)
            .map(|_| match shape.weights_in_eighths {
                true => (rng.below(17) as f64 - 8.0) / 8.0,
                false => f64::from(rng.uniform(-2.0, 2.0)),
            })
            .collect()
    } else {
        Vec::new()
    };
    RawForest {
        task: if shape.regressor {
            Task::Regressor
        } else {
            Task::Classifier {
                labels: ClassLabels::Int64((0..shape.n_outputs as i64).collect()),
            }
        },
        n_features: shape.n_features as u64,
        n_outputs: shape.n_outputs as u64,
        trees,
        aggregate: if shape.average {
            Aggregate::Average
        } else {
            Aggregate::Sum
        },
        post_transform: shape.post_transform,
        base_values,
        binary_complement: shape.binary_complement,
        missing: MissingPolicy::Route,
        max_depth_limit: 64,
    }
    .validate()
    .unwrap_or_else(|err| panic!("{shape:?}: {err}"))
    .compile()
    .unwrap()
}

fn rows_for(shape: &ForestShape, n_rows: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    (0..n_rows * shape.n_features)
        .map(|_| match rng.below(8) {
            0 => f32::NAN,
            1..=3 => shape.thresholds[rng.below(shape.thresholds.len())],
            _ => rng.uniform(-1.2, 1.2),
        })
        .collect()
}

fn bits(scores: &[f32]) -> Vec<u32> {
    scores.iter().map(|s| s.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn gpu_scores_are_the_cpu_reference_bit_for_bit(
        shape in forest_shapes(),
        n_rows in 1usize..90,
        row_seed in any::<u64>(),
    ) {
        let gpu = gpu();
        let forest = build(&shape);
        prop_assert!(forest.fixed_point().is_some(), "{shape:?}: must accumulate in fixed point");
        let rows = rows_for(&shape, n_rows, row_seed);
        let cpu = forest.predict_cpu(&rows, n_rows).unwrap();
        for options in configurations() {
            let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
            check_config(&kernel, &options);
            prop_assert!(!kernel.config().float_accumulate);
            // Lanes of 37 rows: inputs span several batches, and batches end inside a workgroup.
            let mut lane = kernel.lane(37).unwrap();
            let got = lane.predict(&rows, true).unwrap();
            prop_assert_eq!(bits(&got.scores), bits(&cpu.scores), "{:?} {:?}", options, kernel.config());
            prop_assert_eq!(&got.labels, &cpu.labels, "{:?}", options);
            // Labels alone: many-output rows take their argmax from the integer totals.
            let labels = lane.predict(&rows, false).unwrap().labels;
            prop_assert_eq!(&labels, &cpu.labels, "labels only, {:?}", options);
        }
        let errors = gpu.instance.take_validation_errors();
        prop_assert!(errors.is_empty(), "validation errors: {:#?}", errors);
    }
}

/// Forests with more features than compact nodes address (4100): wide nodes, whose left child is a
/// second load per step, in every kernel configuration.
#[test]
fn wide_nodes_match_bit_for_bit_in_every_configuration() {
    let gpu = gpu();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    // Odd and even depths: a node-block walk ends on a block's top or on one of its children.
    for (n_trees, depth) in [(37, 7), (64, 5), (29, 6)] {
        let mut shape = forest_shapes().new_tree(&mut runner).unwrap().current();
        shape.n_features = 4100;
        shape.n_trees = n_trees;
        shape.depth = depth;
        let forest = build(&shape);
        assert_eq!(forest.node_format, NodeFormat::Wide, "{shape:?}");
        let n_rows = 41;
        let rows = rows_for(&shape, n_rows, n_trees as u64);
        let cpu = forest.predict_cpu(&rows, n_rows).unwrap();
        for options in configurations() {
            let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
            check_config(&kernel, &options);
            let got = kernel.lane(37).unwrap().predict(&rows, true).unwrap();
            assert_eq!(
                bits(&got.scores),
                bits(&cpu.scores),
                "{options:?} {:?}",
                kernel.config()
            );
            assert_eq!(got.labels, cpu.labels, "{options:?}");
        }
    }
    let errors = gpu.instance.take_validation_errors();
    assert!(errors.is_empty(), "validation errors: {errors:#?}");
}

/// A large forest of at most two outputs takes its own default shape (8 tree lanes, 16 rows a
/// workgroup); a forest of more outputs, or of fewer trees, takes a lane a tree up to 45 lanes, with
/// about 990 threads a workgroup beyond 32 lanes (768 up to 32), and asking for 32 lanes gives 24 rows.
/// Scores stay the CPU reference's bits on the small-batch pipeline (where built) and the bulk one.
#[test]
fn large_forests_of_few_outputs_default_to_fewer_tree_lanes() {
    let gpu = gpu();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let asked = |lanes: u32| ForestOptions {
        tree_lanes: Some(lanes),
        ..ForestOptions::default()
    };
    for (n_trees, n_outputs, options, lanes, rows) in [
        (64, 2, ForestOptions::default(), 8, 16),
        (64, 1, ForestOptions::default(), 8, 16),
        (64, 3, ForestOptions::default(), 45, 22),
        (150, 5, ForestOptions::default(), 45, 22),
        (150, 5, asked(32), 32, 24),
        (40, 2, ForestOptions::default(), 40, 24),
        (20, 3, ForestOptions::default(), 20, 38),
    ] {
        let mut shape = forest_shapes().new_tree(&mut runner).unwrap().current();
        shape.n_trees = n_trees;
        shape.n_outputs = n_outputs;
        shape.binary_complement = false;
        shape.depth = 5;
        let forest = build(&shape);
        let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
        let config = kernel.config();
        assert_eq!(
            (config.tree_lanes, config.rows_per_group),
            (lanes, rows),
            "{n_trees} trees, {n_outputs} outputs, {options:?}"
        );
        // Batches of 37 and 16 rows, then one of 1100 (past the small-batch pipeline's 1024).
        for (n_rows, lane_rows) in [(53, 37), (1100, 1100)] {
            let rows = rows_for(&shape, n_rows, n_trees as u64);
            let cpu = forest.predict_cpu(&rows, n_rows).unwrap();
            let got = kernel.lane(lane_rows).unwrap().predict(&rows, true).unwrap();
            assert_eq!(bits(&got.scores), bits(&cpu.scores), "{config:?}, {n_rows} rows");
        }
    }
    let errors = gpu.instance.take_validation_errors();
    assert!(errors.is_empty(), "validation errors: {errors:#?}");
}

/// Lane steps (more tree lanes for dispatches of fewer rows, sized from the device's multiprocessors:
/// here made-up ones, since a CPU device reports none): every dispatch size, alone and as a pipelined
/// batch's chunks, takes the pipeline its rows call for and gives the CPU reference's bits.
#[test]
fn lane_steps_match_bit_for_bit_for_every_dispatch_size() {
    use vknf_functions::forest::{DispatchPipeline, MAX_LANE_STEPS};
    let gpu = gpu();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let units = ComputeUnits {
        count: 2,
        invocations_each: 1024,
    };
    // 150 trees and five outputs (45 bulk lanes) and 64 binary trees (the few-outputs shape, 8 lanes).
    for (n_trees, n_outputs) in [(150, 5), (64, 2)] {
        let mut shape = forest_shapes().new_tree(&mut runner).unwrap().current();
        shape.n_trees = n_trees;
        shape.n_outputs = n_outputs;
        shape.binary_complement = false;
        shape.depth = 6;
        let forest = build(&shape);
        let options = ForestOptions {
            lane_steps: Some(true),
            compute_units: Some(units),
            small_batch_rows: Some(8),
            ..ForestOptions::default()
        };
        let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
        let config = kernel.config();
        let steps: Vec<_> = config.lane_steps.iter().flatten().copied().collect();
        assert!(steps.len() >= 2, "{config:?}");
        for pair in steps.windows(2) {
            assert_eq!(
                pair[1].tree_lanes,
                (pair[0].tree_lanes * 2).min(n_trees as u32),
                "{config:?}"
            );
            assert!(pair[1].max_rows < pair[0].max_rows, "{config:?}");
        }
        // Not asked for, or with lanes asked for: no steps.
        for options in [
            ForestOptions {
                compute_units: Some(units),
                ..ForestOptions::default()
            },
            ForestOptions {
                tree_lanes: Some(8),
                ..options
            },
        ] {
            let plain = ForestKernel::new(&gpu.device, &forest, &options).unwrap().config();
            assert_eq!(plain.lane_steps, [None; MAX_LANE_STEPS], "{options:?}");
        }
        // Which pipeline a dispatch of `rows` should take, worked out here from the steps' limits.
        let expected = |rows: usize| match rows <= 8 {
            true => DispatchPipeline::SmallBatch,
            false => steps
                .iter()
                .rposition(|step| rows <= step.max_rows as usize)
                .map_or(DispatchPipeline::Bulk, DispatchPipeline::LaneStep),
        };
        // A dispatch for each pipeline: small-batch, every step (at its most rows and one past them),
        // and the bulk one.
        let mut sizes = vec![5];
        for step in &steps {
            sizes.extend([step.max_rows as usize, step.max_rows as usize + 1]);
        }
        let mut taken = std::collections::BTreeSet::new();
        for n_rows in sizes {
            assert_eq!(config.dispatch_pipeline(n_rows), expected(n_rows), "{n_rows} rows");
            taken.insert(expected(n_rows));
            let rows = rows_for(&shape, n_rows, n_rows as u64);
            let cpu = forest.predict_cpu(&rows, n_rows).unwrap();
            let got = kernel.lane(n_rows).unwrap().predict(&rows, true).unwrap();
            assert_eq!(bits(&got.scores), bits(&cpu.scores), "{config:?}, {n_rows} rows");
            assert_eq!(got.labels, cpu.labels, "{config:?}, {n_rows} rows");
            // The same rows as pipelined dispatches, whose chunks take smaller steps, on a lane whose
            // results hold another batch's first (a chunk that skipped rows would leave them).
            let mut lane = kernel.lane(n_rows).unwrap();
            let poison: Vec<f32> = rows.iter().map(|v| -v - 1.0).collect();
            lane.write_rows(0, &poison).unwrap();
            lane.run(n_rows, true).unwrap();
            let got = lane.run_pipelined(&rows, 3, true).unwrap();
            let dispatches = lane.pipelined_dispatches();
            assert_eq!(
                dispatches.iter().map(|(rows, _)| rows).sum::<usize>(),
                n_rows,
                "{dispatches:?}"
            );
            for &(rows, pipeline) in dispatches {
                assert_eq!(pipeline, expected(rows), "{n_rows} rows: {dispatches:?}");
                taken.insert(pipeline);
            }
            let scores = got.scores.clone().unwrap();
            assert_eq!(
                bits(&scores),
                bits(&cpu.scores),
                "{config:?}, {n_rows} rows in 3 dispatches"
            );
            assert_eq!(got.labels, cpu.labels, "{config:?}, {n_rows} rows in 3 dispatches");
        }
        let every: std::collections::BTreeSet<_> = [DispatchPipeline::SmallBatch, DispatchPipeline::Bulk]
            .into_iter()
            .chain((0..steps.len()).map(DispatchPipeline::LaneStep))
            .collect();
        assert_eq!(taken, every, "{config:?}");
    }
    let errors = gpu.instance.take_validation_errors();
    assert!(errors.is_empty(), "validation errors: {errors:#?}");
}

/// Regressors accumulate in float (compare-and-swap on the accumulator's bits). With weights whose sums
/// are exact in any order, every configuration gives the CPU reference's
/// bits: a tree walked twice, skipped or stopped early would change them.
#[test]
fn float_accumulation_matches_the_cpu_reference_in_every_configuration() {
    let gpu = gpu();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for (n_trees, n_outputs) in [(1, 1), (29, 3), (69, 2)] {
        let mut shape = forest_shapes().new_tree(&mut runner).unwrap().current();
        shape.regressor = true;
        shape.weights_in_eighths = true;
        shape.average = false;
        shape.binary_complement = false;
        shape.post_transform = PostTransform::None;
        shape.n_trees = n_trees;
        shape.n_outputs = n_outputs;
        shape.depth = 7;
        let forest = build(&shape);
        assert!(forest.fixed_point().is_none(), "regressors accumulate in float");
        let n_rows = 53;
        let rows = rows_for(&shape, n_rows, 11);
        let cpu = forest.predict_cpu(&rows, n_rows).unwrap();
        for options in configurations() {
            let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
            check_config(&kernel, &options);
            assert!(kernel.config().float_accumulate);
            let got = kernel.lane(37).unwrap().predict(&rows, true).unwrap();
            assert_eq!(
                bits(&got.scores),
                bits(&cpu.scores),
                "{shape:?} {options:?} {:?}",
                kernel.config()
            );
        }
    }
    let errors = gpu.instance.take_validation_errors();
    assert!(errors.is_empty(), "validation errors: {errors:#?}");
}

/// A classifier of one feature, classes `0..n_outputs` and `trees` (each a lone leaf whose entries set the
/// weights).
fn one_leaf_classifier(trees: Vec<RawTree>, n_outputs: u32, aggregate: Aggregate) -> GpuForest {
    RawForest {
        task: Task::Classifier {
            labels: ClassLabels::Int64((0..i64::from(n_outputs)).collect()),
        },
        n_features: 1,
        n_outputs: n_outputs.into(),
        trees,
        aggregate,
        post_transform: PostTransform::None,
        base_values: vec![],
        binary_complement: false,
        missing: MissingPolicy::Reject,
        max_depth_limit: 4,
    }
    .validate()
    .unwrap()
    .compile()
    .unwrap()
}

/// The sums whose f32 conversion used to round differently on the GPU: a 3-tree average of weights
/// that are not multiples of any power of two (1/3, 0.1) lands between f32 values.
#[test]
fn averages_of_inexact_weights_match_bit_for_bit() {
    let gpu = gpu();
    let weights = [1.0 / 3.0, 0.1, 0.7, 0.2, 0.9, 1.0 / 7.0];
    let trees = (0..3)
        .map(|t| RawTree {
            id: t,
            nodes: vec![RawNode::Leaf],
            entries: vec![
                RawEntry {
                    node: 0,
                    output: 0,
                    weight: weights[t as usize * 2],
                },
                RawEntry {
                    node: 0,
                    output: 1,
                    weight: weights[t as usize * 2 + 1],
                },
            ],
        })
        .collect();
    let forest = one_leaf_classifier(trees, 2, Aggregate::Average);
    assert!(forest.fixed_point().is_some());
    let cpu = forest.predict_cpu(&[0.0], 1).unwrap();
    let exact_mean = (1.0f64 / 3.0 + 0.7 + 0.9) / 3.0;
    assert!((f64::from(cpu.scores[0]) - exact_mean).abs() < 1e-7, "{:?}", cpu.scores);
    for options in configurations() {
        let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
        let got = kernel.lane(4).unwrap().predict(&[0.0], true).unwrap();
        assert_eq!(bits(&got.scores), bits(&cpu.scores), "{options:?}");
        assert_eq!(got.labels, cpu.labels);
    }
    assert!(gpu.instance.take_validation_errors().is_empty());
}

/// A leaf naming an output twice counts both weights (the validator keeps such entries), also when it
/// holds more entries than the forest has outputs.
#[test]
fn a_leaf_naming_an_output_twice_counts_every_entry() {
    let gpu = gpu();
    let entry = |output, weight| RawEntry {
        node: 0,
        output,
        weight,
    };
    let trees = vec![RawTree {
        id: 0,
        nodes: vec![RawNode::Leaf],
        entries: vec![entry(1, 0.25), entry(1, 0.5), entry(0, 0.5)],
    }];
    let forest = one_leaf_classifier(trees, 2, Aggregate::Sum);
    let cpu = forest.predict_cpu(&[0.0], 1).unwrap();
    assert_eq!((cpu.labels.clone(), cpu.scores.clone()), (vec![1], vec![0.5, 0.75]));
    for options in configurations() {
        let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
        let got = kernel.lane(4).unwrap().predict(&[0.0], true).unwrap();
        assert_eq!(bits(&got.scores), bits(&cpu.scores), "{options:?}");
        assert_eq!(got.labels, cpu.labels, "{options:?}");
    }
    assert!(gpu.instance.take_validation_errors().is_empty());
}

/// Two outputs whose fixed-point totals differ by one unit but round to the same f32: the label is the
/// lower output, as the CPU reference's argmax of the scores has it, also when only labels are asked for
/// and the kernel takes the argmax from the totals (more outputs than tree lanes).
#[test]
fn labels_only_break_ties_of_equal_scores_as_the_scores_do() {
    let gpu = gpu();
    let entry = |output, weight| RawEntry {
        node: 0,
        output,
        weight,
    };
    let trees = vec![
        RawTree {
            id: 0,
            nodes: vec![RawNode::Leaf],
            entries: vec![entry(0, 0.75), entry(1, 0.75), entry(2, 0.25)],
        },
        RawTree {
            id: 1,
            nodes: vec![RawNode::Leaf],
            // 2^-7 and 2^-7 + 2^-30: the second total is one unit larger, and both sums round to
            // 0.7578125 in f32.
            entries: vec![
                entry(0, 1.0 / 128.0),
                entry(1, 1.0 / 128.0 + 1.0 / f64::from(1u32 << 30)),
                entry(2, 0.0),
            ],
        },
    ];
    let forest = one_leaf_classifier(trees, 3, Aggregate::Sum);
    let fixed = forest.fixed_point().expect("fixed point");
    assert_eq!(fixed.scale_log2, 30, "the test needs units of 2^-30");
    let cpu = forest.predict_cpu(&[0.0], 1).unwrap();
    assert_eq!(cpu.scores[0], cpu.scores[1], "{:?}", cpu.scores);
    assert_eq!(cpu.labels, vec![0]);
    for tree_lanes in [1u32, 2] {
        let options = ForestOptions {
            tree_lanes: Some(tree_lanes),
            small_batch_rows: Some(0),
            ..Default::default()
        };
        let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
        let mut lane = kernel.lane(4).unwrap();
        let with_scores = lane.predict(&[0.0, 0.0, 0.0], true).unwrap();
        assert_eq!(with_scores.labels, vec![0, 0, 0], "{options:?}");
        assert_eq!(
            lane.predict(&[0.0, 0.0, 0.0], false).unwrap().labels,
            vec![0, 0, 0],
            "{options:?}"
        );
    }
    assert!(gpu.instance.take_validation_errors().is_empty());
}

/// The serving path (a function's lanes, whose outputs are copied straight into answers, with the post
/// transform applied on the way): the GPU function's bytes equal the CPU function's.
#[test]
fn gpu_and_cpu_functions_answer_the_same_bytes() {
    let gpu = gpu();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for post in [PostTransform::None, PostTransform::Logistic, PostTransform::Softmax] {
        let mut shape = forest_shapes().new_tree(&mut runner).unwrap().current();
        shape.binary_complement = false;
        shape.n_outputs = 4;
        shape.n_trees = 40;
        shape.depth = 6;
        shape.post_transform = post;
        let forest = build(&shape);
        let n_rows = 50;
        let rows = rows_for(&shape, n_rows, 7);
        let mut spec = FunctionSpec::new("exact", "forest", vknf_kernels::FOREST.to_vec());
        spec.max_batch_rows = Some(64);
        let model = forest.to_vkf_bytes();
        let cpu = ForestFamily.load_cpu(&spec, Some(&model)).unwrap();
        let gpu_function = ForestFamily.load_gpu(&gpu.device, 1, &spec, Some(&model)).unwrap();
        let answer = |function: &dyn vknf_functions::Function| {
            let mut lane = function.new_lane().unwrap();
            lane.write_input(&mut |input| input[..rows.len() * 4].copy_from_slice(bytemuck_bytes(&rows)))
                .unwrap();
            lane.run(n_rows, 0b11).unwrap();
            let mut labels = vec![0u8; n_rows * 4];
            let mut scores = vec![0u8; n_rows * 4 * 4];
            // Two reads of the scores from an odd row on, as answers of two jobs of one batch would be.
            lane.read_output(0, 0, &mut labels).unwrap();
            lane.read_output(1, 0, &mut scores[..16 * 7]).unwrap();
            lane.read_output(1, 7, &mut scores[16 * 7..]).unwrap();
            (labels, scores)
        };
        let (cpu_labels, cpu_scores) = answer(cpu.as_ref());
        let (gpu_labels, gpu_scores) = answer(gpu_function.as_ref());
        assert_eq!(gpu_labels, cpu_labels, "{post:?}");
        assert_eq!(gpu_scores, cpu_scores, "{post:?}");
        // And both are the reference predictor's, post transform included.
        let reference = forest.predict_cpu(&rows, n_rows).unwrap();
        let reference_bytes: Vec<u8> = reference.scores.iter().flat_map(|s| s.to_le_bytes()).collect();
        assert_eq!(cpu_scores, reference_bytes, "{post:?}");
        if post == PostTransform::Softmax {
            let first: f32 = reference.row(0).iter().sum();
            assert!((first - 1.0).abs() < 1e-5, "softmax rows sum to 1: {first}");
        }
    }
    assert!(gpu.instance.take_validation_errors().is_empty());
}

fn bytemuck_bytes(values: &[f32]) -> &[u8] {
    bytemuck::cast_slice(values)
}
