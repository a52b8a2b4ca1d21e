//! The GPU forest kernel against scikit-learn, on the same cases and with the same comparison as the
//! CPU reference (`vknf_testkit::parity`), with the Khronos validation layer on; classifiers' scores
//! must also be the CPU reference's bit for bit.

use std::path::PathBuf;

use vknf_forest::{FLAG_BIT, GpuForest, LEAF_BIT, LOW30_MASK, NodeOrder, Prediction, Rows};
use vknf_functions::{BatchPlan, ForestKernel, ForestOptions, InputPath, candidate_plans};
use vknf_testkit::parity::{self, ParityCase};
use vknf_vulkan::{Device, DeviceSelector, Instance, InstanceOptions};

struct Gpu {
    instance: Instance,
    device: Device,
}

impl Gpu {
    /// Fails the test if the validation layer reported errors since the last check.
    fn assert_no_validation_errors(&self) {
        let errors = self.instance.take_validation_errors();
        assert!(errors.is_empty(), "validation errors: {errors:#?}");
    }
}

fn gpu() -> Gpu {
    let instance = Instance::new(&InstanceOptions {
        validation: true,
        application_name: "vknf-parity".into(),
        ..InstanceOptions::default()
    })
    .unwrap();
    let device = Device::select(&instance, &DeviceSelector::from_env().unwrap()).unwrap();
    Gpu { instance, device }
}

fn gpu_predictor(
    device: &Device,
    options: ForestOptions,
    lane_rows: usize,
) -> impl FnMut(&GpuForest, &Rows) -> anyhow::Result<Prediction> + '_ {
    move |forest, rows| {
        let kernel = ForestKernel::new(device, forest, &options)?;
        let mut lane = kernel.lane(lane_rows)?;
        let prediction = lane.predict(&rows.data, true)?;
        same_bits_as_the_cpu_reference(forest, rows, &prediction);
        Ok(prediction)
    }
}

/// Classifiers (fixed point) give the CPU reference's scores bit for bit; regressors accumulate in float.
fn same_bits_as_the_cpu_reference(forest: &GpuForest, rows: &Rows, gpu: &Prediction) {
    if forest.fixed_point().is_none() {
        assert!(
            !forest.task.is_classifier(),
            "scikit-learn classifiers accumulate in fixed point"
        );
        return;
    }
    let cpu = forest.predict_cpu(&rows.data, rows.n_rows).unwrap();
    let bits = |p: &Prediction| p.scores.iter().map(|s| s.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(gpu), bits(&cpu), "GPU scores differ from the CPU reference's bits");
    assert_eq!(gpu.labels, cpu.labels);
}

fn check_all(gpu: &Gpu, cases: &[ParityCase], options: ForestOptions, lane_rows: usize) {
    assert!(!cases.is_empty());
    for case in cases {
        let forest = case.import().unwrap();
        let mut predict = gpu_predictor(&gpu.device, options, lane_rows);
        let report = case
            .check(&forest, &mut predict)
            .unwrap_or_else(|err| panic!("{options:?}: {err}"));
        assert!(report.rows_compared > 0, "{}: nothing compared", case.meta.name);
    }
    gpu.assert_no_validation_errors();
}

fn fixture_dir() -> PathBuf {
    parity::workspace_root().join("crates/vknf-forest/tests/fixtures")
}

#[test]
fn committed_fixtures_match_scikit_learn_in_every_kernel_configuration() {
    let gpu = gpu();
    let cases = parity::load_cases(&fixture_dir()).unwrap();
    let configurations = [
        ForestOptions::default(),
        ForestOptions {
            input_path: Some(InputPath::Staged),
            node_blocks: Some(false),
            node_order: Some(NodeOrder::BreadthFirst),
            ..Default::default()
        },
        // Node blocks (two levels a load), on the bulk pipeline and on the small-batch one; each
        // tree's blocks level by level on the bulk one.
        ForestOptions {
            node_blocks: Some(true),
            small_batch_rows: Some(0),
            node_order: Some(NodeOrder::BreadthFirst),
            ..Default::default()
        },
        ForestOptions {
            tree_lanes: Some(4),
            small_batch_rows: Some(usize::MAX),
            node_blocks: Some(true),
            ..Default::default()
        },
        // The kernel pulls rows from host memory, in one dispatch and in pipelined chunks.
        ForestOptions {
            input_path: Some(InputPath::HostMemory),
            ..Default::default()
        },
        ForestOptions {
            input_path: Some(InputPath::HostMemory),
            rows_per_group: Some(4),
            pipeline_chunks: Some(4),
            small_batch_rows: Some(0),
            ..Default::default()
        },
        // Staged input in pipelined chunks: each chunk's dispatch after the DMA of its own rows.
        ForestOptions {
            input_path: Some(InputPath::Staged),
            rows_per_group: Some(3),
            pipeline_chunks: Some(5),
            small_batch_rows: Some(0),
            ..Default::default()
        },
        ForestOptions {
            stage_input: Some(false),
            tree_lanes: Some(3),
            rows_per_group: Some(5),
            node_blocks: Some(false),
            ..Default::default()
        },
        ForestOptions {
            tree_lanes: Some(1),
            rows_per_group: Some(1),
            node_blocks: Some(true),
            ..Default::default()
        },
        // Every batch on the small-batch pipeline (a thread per tree; the bulk one has 4 per row).
        ForestOptions {
            tree_lanes: Some(4),
            small_batch_rows: Some(usize::MAX),
            ..Default::default()
        },
        // `predict` splits each batch into pipelined dispatches on the bulk pipeline ...
        ForestOptions {
            rows_per_group: Some(4),
            pipeline_chunks: Some(5),
            small_batch_rows: Some(0),
            ..Default::default()
        },
        // ... and on the small-batch one (chunks of at most 1024 rows take it).
        ForestOptions {
            tree_lanes: Some(1),
            rows_per_group: Some(4),
            pipeline_chunks: Some(3),
            ..Default::default()
        },
    ];
    let small = ForestKernel::new(&gpu.device, &cases[0].import().unwrap(), &configurations[9]).unwrap();
    assert!(
        small.config().small_batch.is_some_and(|s| s.tree_lanes >= 12),
        "the forced configuration must build the small-batch pipeline: {:?}",
        small.config()
    );
    for options in configurations {
        // Lanes of 37 rows: inputs span several batches, and batches end inside a workgroup.
        check_all(&gpu, &cases, options, 37);
    }
}

#[test]
fn pipelined_batches_match_scikit_learn() {
    let gpu = gpu();
    let cases = parity::load_cases(&fixture_dir()).unwrap();
    // Staged with and without a direct share configured (the fixtures are far below the 1 MiB from
    // which batches split: the split itself is checked by the large-batch test below).
    // On a transfer stream of its own (a second stream of lavapipe's one family) each chunk's dispatch
    // waits for its copy.
    for (chunks, input_path, direct_share, transfer_stream) in [
        (2usize, InputPath::Direct, None, None),
        (3, InputPath::Direct, None, None),
        (7, InputPath::Direct, None, None),
        (3, InputPath::HostMemory, None, None),
        (2, InputPath::Staged, Some(0.0), None),
        (7, InputPath::Staged, None, None),
        (1, InputPath::Staged, None, None),
        (3, InputPath::Staged, Some(1.0), None),
        (1, InputPath::Staged, None, Some(true)),
        (3, InputPath::Staged, Some(0.0), Some(true)),
        (7, InputPath::Staged, Some(0.5), Some(true)),
    ] {
        let options = ForestOptions {
            input_path: Some(input_path),
            direct_share,
            transfer_stream,
            ..ForestOptions::default()
        };
        for case in &cases {
            let forest = case.import().unwrap();
            let mut predict = |forest: &GpuForest, rows: &Rows| -> anyhow::Result<Prediction> {
                let kernel = ForestKernel::new(&gpu.device, forest, &options)?;
                assert_eq!(kernel.config().input_path, input_path);
                let mut lane = kernel.lane(rows.n_rows.max(1))?;
                // A share is in effect where one is configured on the staged path with a transfer stream
                // (asked for, or the device's dedicated transfer queue by default) and the allocator finds
                // host-visible device memory for the lane to write into (all of lavapipe's memory; a
                // discrete GPU's BAR).
                let with_transfer_stream = transfer_stream.unwrap_or_else(|| gpu.device.has_dedicated_transfer());
                let expected = direct_share.filter(|share| {
                    *share > 0.0
                        && input_path == InputPath::Staged
                        && with_transfer_stream
                        && upload_memory_is_device_memory(&gpu.device, rows.data.len() * 4)
                });
                assert_eq!(lane.direct_share(), expected);
                let result = lane.run_pipelined(&rows.data, chunks, true)?;
                let prediction = prediction_of(result, forest.n_outputs as usize);
                same_bits_as_the_cpu_reference(forest, rows, &prediction);
                Ok(prediction)
            };
            case.check(&forest, &mut predict)
                .unwrap_or_else(|err| panic!("{chunks} chunks, {input_path:?}, {direct_share:?}: {err}"));
        }
    }
    gpu.assert_no_validation_errors();
}

#[test]
fn host_memory_input_without_staging_falls_back_to_the_staged_path() {
    let gpu = gpu();
    let cases = parity::load_cases(&fixture_dir()).unwrap();
    let forest = cases[0].import().unwrap();
    let options = ForestOptions {
        input_path: Some(InputPath::HostMemory),
        stage_input: Some(false),
        ..ForestOptions::default()
    };
    let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
    assert_eq!(kernel.config().input_path, InputPath::Staged);
    assert!(!kernel.config().stage_input);
}

#[test]
fn random_scikit_learn_forests_match_on_the_gpu() {
    let gpu = gpu();
    let dir = tempfile::tempdir().unwrap();
    let cases = parity::generate_cases(dir.path(), 24, 20261127).unwrap();
    check_all(&gpu, &cases, ForestOptions::default(), 500);
}

#[test]
fn predict_splits_only_large_batches_into_pipelined_dispatches() {
    let gpu = gpu();
    let cases = parity::load_cases(&fixture_dir()).unwrap();
    let forest = cases[0].import().unwrap();
    let row_bytes = forest.n_features as usize * 4;
    let kernel = ForestKernel::new(&gpu.device, &forest, &ForestOptions::default()).unwrap();
    let rows_for = |mib: usize| (mib << 20).div_ceil(row_bytes);
    assert_eq!(kernel.pipeline_chunks(1), 1);
    assert_eq!(kernel.pipeline_chunks(rows_for(7)), 1, "7 MiB of rows: one dispatch");
    assert_eq!(kernel.pipeline_chunks(rows_for(11)), 1, "11 MiB: still one");
    assert_eq!(
        kernel.pipeline_chunks(rows_for(13)),
        2,
        "13 MiB: one dispatch per 8 MiB, rounded"
    );
    assert_eq!(kernel.pipeline_chunks(rows_for(30)), 4, "the wide forest's 32 MB");
    assert_eq!(kernel.pipeline_chunks(rows_for(400)), 4, "at most 4 by default");
    let fixed = ForestOptions {
        pipeline_chunks: Some(3),
        ..ForestOptions::default()
    };
    let kernel = ForestKernel::new(&gpu.device, &forest, &fixed).unwrap();
    assert_eq!(kernel.pipeline_chunks(rows_for(1)), 3, "a configured count is kept");
    assert_eq!(kernel.pipeline_chunks(2), 1, "never more chunks than workgroups");
}

#[test]
fn forests_served_on_several_devices_default_to_the_staged_path() {
    use vknf_functions::families::forest::default_input_path;
    assert_eq!(default_input_path(1), None, "one device: the kernel's own default");
    assert_eq!(default_input_path(2), Some(InputPath::Staged));
    assert_eq!(default_input_path(8), Some(InputPath::Staged));
}

/// A lane's result as a [`Prediction`] of `n_outputs` scores a row, for comparing with the CPU reference.
fn prediction_of(result: vknf_functions::forest::LaneResult, n_outputs: usize) -> Prediction {
    Prediction {
        n_rows: result.n_rows,
        n_outputs,
        scores: result.scores.unwrap_or_default(),
        labels: result.labels,
    }
}

/// The first fixture whose forest has fixed-point scores (a classifier whose scores the GPU must match
/// bit for bit).
fn fixed_point_classifier() -> GpuForest {
    let cases = parity::load_cases(&fixture_dir()).unwrap();
    cases
        .iter()
        .map(|case| case.import().unwrap())
        .find(|forest| forest.fixed_point().is_some())
        .expect("a classifier fixture")
}

/// Whether an upload buffer of `bytes` the allocator gives `device` lies in device memory (where a lane
/// writes its direct share), as it gives the lane's own.
fn upload_memory_is_device_memory(device: &vknf_vulkan::Device, bytes: usize) -> bool {
    device
        .create_buffer("probe", bytes.max(4) as u64, vknf_vulkan::MemoryKind::Upload)
        .unwrap()
        .is_device_local()
}

/// About `bytes` of pseudo-random rows in [-4, 4) for `forest` (xorshift, fixed seed).
fn random_rows(forest: &GpuForest, bytes: usize) -> Rows {
    let n_features = forest.n_features as usize;
    let n_rows = bytes.div_ceil(n_features * 4);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<f32> = (0..n_rows * n_features)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
        })
        .collect();
    Rows {
        n_rows,
        n_features,
        data,
    }
}

/// A batch of several MiB (large enough for the direct share) on the staged path with its own transfer
/// stream: each chunk's first rows written by the host into device memory, the rest copied there on
/// the transfer stream while the next chunk is written. Scores must be the CPU reference's bits for
/// every share and chunk count (a copy of the wrong range, or a dispatch before its copy, would not),
/// with each dispatch's direct share written before or after the previous dispatch's copy.
#[test]
fn large_staged_batches_on_a_transfer_stream_match_the_cpu_reference() {
    let gpu = gpu();
    let forest = fixed_point_classifier();
    // About 5 MiB of rows: the transfer stream's copies take longer than a tiny batch's.
    let rows = random_rows(&forest, 5 << 20);
    let n_rows = rows.n_rows;
    // Other rows, written through the unsplit path first, so that a copy that misses rows leaves
    // stale values the kernel would read (a fresh lane's memory may still hold the previous lane's).
    let poison: Vec<f32> = rows.data.iter().map(|v| -v - 1.0).collect();
    // Then each dispatch's direct share written after the previous dispatch's copy; last, each
    // dispatch's directly written rows dispatched on their own, before the copied ones.
    for (chunks, direct_share, transfer_stream, after_copy, direct_first) in [
        (1usize, 0.0f32, true, false, false),
        (1, 0.4, true, false, false),
        (3, 0.0, true, false, false),
        (3, 0.4, true, false, false),
        (2, 1.0, true, false, false),
        (3, 0.4, false, false, false),
        (3, 0.4, true, true, false),
        (4, 0.5, true, true, false),
        (1, 0.4, true, false, true),
        (3, 0.4, true, false, true),
        (2, 1.0, true, false, true),
    ] {
        // The pool kept awake between batches, as `ForestOptions::for_whole_batches` has it.
        let options = ForestOptions {
            input_path: Some(InputPath::Staged),
            direct_share: Some(direct_share),
            transfer_stream: Some(transfer_stream),
            small_batch_rows: Some(0),
            keep_writers_awake: Some(std::time::Duration::from_micros(500)),
            direct_rows_first: Some(direct_first),
            direct_after_copy: Some(after_copy),
            ..ForestOptions::default()
        };
        let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
        assert_eq!(kernel.config().transfer_stream, transfer_stream);
        assert_eq!(
            kernel.config().direct_after_copy,
            after_copy && transfer_stream && direct_share > 0.0
        );
        assert_eq!(
            kernel.config().direct_rows_first,
            direct_first && transfer_stream && direct_share > 0.0
        );
        let mut lane = kernel.lane(n_rows).unwrap();
        // No split without a transfer stream (the copy is then part of the dispatch's own list).
        let split = (transfer_stream && direct_share > 0.0).then_some(direct_share);
        assert_eq!(lane.direct_share(), split);
        for round in 0..2 {
            lane.write_rows(0, &poison).unwrap();
            lane.run(n_rows, false).unwrap();
            let result = lane.run_pipelined(&rows.data, chunks, true).unwrap();
            // A batch in one dispatch with a direct share runs its directly written rows first, as a
            // dispatch of their own; several dispatches are not split so.
            // (One dispatch without a split takes the unpipelined path: no chunks.)
            if chunks > 1 || split.is_some() {
                let rows_dispatched: Vec<usize> = lane.pipelined_dispatches().iter().map(|(rows, _)| *rows).collect();
                match (direct_first && chunks == 1, split) {
                    // The directly written rows (the share, rounded, leaving at least one row to copy),
                    // then the copied ones.
                    (true, Some(share)) => {
                        let direct = ((n_rows as f32 * share).round() as usize).min(n_rows - 1);
                        assert_eq!(rows_dispatched, [direct, n_rows - direct]);
                    }
                    _ => {
                        assert_eq!(rows_dispatched.len(), chunks, "{rows_dispatched:?}");
                        assert_eq!(rows_dispatched.iter().sum::<usize>(), n_rows);
                    }
                }
            }
            let prediction = prediction_of(result, forest.n_outputs as usize);
            same_bits_as_the_cpu_reference(&forest, &rows, &prediction);
            assert_eq!(
                prediction.n_rows, n_rows,
                "{chunks} chunks, share {direct_share}, after copy {after_copy}, direct rows first {direct_first}, round {round}"
            );
        }
    }
    gpu.assert_no_validation_errors();
}

/// A lane tuned for a batch size times every plan that applies to it, the rule's first, and runs
/// batches of that size in the plan of the lowest median from then on (other sizes keep the rule),
/// with the CPU reference's bits whatever it chose; each plan's results are checked against the
/// first's during the tuning (once with scores after other values were written whole), so a plan
/// that missed rows, or wrote its direct share into the wrong rows, would fail it.
#[test]
fn a_tuned_lane_runs_each_batch_size_in_the_plan_it_measured_fastest() {
    let gpu = gpu();
    let forest = fixed_point_classifier();
    let rows = random_rows(&forest, 5 << 20);
    let n_rows = rows.n_rows;
    let options = ForestOptions {
        input_path: Some(InputPath::Staged),
        transfer_stream: Some(true),
        small_batch_rows: Some(0),
        ..ForestOptions::for_whole_batches()
    };
    let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
    let mut lane = kernel.lane(n_rows).unwrap();
    let splits = lane.direct_share().is_some();
    assert_eq!(splits, upload_memory_is_device_memory(&gpu.device, rows.data.len() * 4));
    let groups = |n_rows: usize| n_rows.div_ceil(kernel.config().rows_per_group as usize);
    let rule = kernel.batch_plan(n_rows).as_run(groups(n_rows), splits);
    assert_eq!(lane.plan_for(n_rows), rule, "an untuned lane follows the rule");
    let tuning = lane.tune_plans(&rows.data, 2, true).unwrap();
    let timed: Vec<BatchPlan> = tuning.trials.iter().map(|trial| trial.plan).collect();
    assert_eq!(timed, candidate_plans(rule, groups(n_rows), splits));
    // Split batches: 1 and 1s, then d and do for 2-6 dispatches.
    assert_eq!(timed.len(), if splits { 12 } else { 6 }, "{timed:?}");
    // Each plan alone gives the CPU reference's bits after other rows written whole (through the
    // unsplit path), so that a plan that missed rows, or read them before they arrived, would read
    // those. (Whether an `o` plan's direct share waited for the previous copy leaves no trace in the
    // results: only the timelines show it.)
    let poison: Vec<f32> = rows.data.iter().map(|v| -v - 1.0).collect();
    for plan in &timed {
        lane.write_rows(0, &poison).unwrap();
        lane.run(n_rows, false).unwrap();
        let result = lane.run_planned(&rows.data, *plan, true).unwrap();
        same_bits_as_the_cpu_reference(&forest, &rows, &prediction_of(result, forest.n_outputs as usize));
    }
    // Every plan twice; the finalists (within 5% of the best) four times more.
    let finalists = tuning.trials.iter().filter(|trial| trial.finalist).count();
    assert!(finalists >= 1, "{tuning:?}");
    for trial in &tuning.trials {
        let runs = if trial.finalist && finalists > 1 { 6 } else { 2 };
        assert_eq!(trial.runs_us.len(), runs, "{trial:?}");
        assert!(trial.runs_us.iter().all(|us| *us > 0.0), "{trial:?}");
        assert!(trial.runs_us.iter().any(|us| *us <= trial.median_us), "{trial:?}");
    }
    let best = tuning
        .trials
        .iter()
        .filter(|trial| trial.finalist)
        .map(|trial| trial.median_us)
        .fold(f64::INFINITY, f64::min);
    let chosen = tuning
        .trials
        .iter()
        .find(|trial| trial.finalist && trial.median_us == best)
        .unwrap()
        .plan;
    assert_eq!(tuning.chosen, chosen, "the first finalist of the lowest median");
    assert_eq!(lane.plan_for(n_rows), chosen);
    assert_eq!(
        lane.plan_for(n_rows - 1),
        kernel.batch_plan(n_rows - 1).as_run(groups(n_rows - 1), splits),
        "other sizes keep the rule"
    );

    // `predict` runs the batch in the chosen plan: its dispatches (the directly written rows first
    // make two of one) and the CPU reference's bits.
    let prediction = lane.predict(&rows.data, true).unwrap();
    same_bits_as_the_cpu_reference(&forest, &rows, &prediction);
    let dispatched = lane.pipelined_dispatches().len();
    let expected = if chosen.direct_rows_first { 2 } else { chosen.dispatches };
    if chosen.dispatches > 1 || splits {
        assert_eq!(dispatched, expected, "{chosen}: {:?}", lane.pipelined_dispatches());
    }
    lane.forget_tuned_plans();
    assert_eq!(lane.plan_for(n_rows), rule);

    // A tuning needs a batch the lane holds.
    for bad in [&rows.data[..0], &rows.data[..rows.n_features + 1]] {
        let err = lane.tune_plans(bad, 1, false).unwrap_err().to_string();
        assert!(err.contains("tuning needs a batch"), "{err}");
    }
    let mut small = kernel.lane(n_rows / 2).unwrap();
    let err = small.tune_plans(&rows.data, 1, false).unwrap_err().to_string();
    assert!(err.contains("tuning needs a batch"), "{err}");
    gpu.assert_no_validation_errors();
}

/// Without a layout asked for, a kernel walks node blocks as `node_blocks_by_default` says for its
/// forest: blocks for the classifier fixture (12 trees, 5 classes), single nodes for its trees
/// repeated to 64 with two outputs (the few-outputs workgroup); as asked otherwise.
#[test]
fn kernels_take_the_node_layout_their_forest_calls_for() {
    let gpu = gpu();
    let forest = fixed_point_classifier();
    assert!(forest.n_trees < 64, "the fixture has {} trees", forest.n_trees);
    assert!(vknf_functions::forest::node_blocks_by_default(&forest));
    let layout = |options: ForestOptions, forest: &GpuForest| {
        ForestKernel::new(&gpu.device, forest, &options)
            .unwrap()
            .config()
            .node_blocks
    };
    assert!(layout(ForestOptions::default(), &forest));
    let single = ForestOptions {
        node_blocks: Some(false),
        ..ForestOptions::default()
    };
    assert!(!layout(single, &forest));
    // The fixture's trees copied (each copy with its own nodes, so that they can be reordered, and its
    // own leaf entries) to 64, its leaves' weights all on two outputs: the few-outputs shape, single
    // nodes.
    let n_nodes = forest.n_nodes() as u32;
    let copies = 64usize.div_ceil(forest.tree_roots.len());
    let roots: Vec<u32> = (0..copies as u32)
        .flat_map(|c| forest.tree_roots.iter().map(move |root| root + c * n_nodes))
        .collect();
    let end = roots.get(64).map_or(copies * n_nodes as usize, |&root| root as usize);
    let words = forest.node_format.words();
    let mut many = forest.clone();
    many.n_trees = 64;
    many.tree_roots = roots[..64].to_vec();
    many.nodes = forest.nodes.iter().copied().cycle().take(end * words).collect();
    let n_pairs = (forest.leaf_entries.len() / 2) as u32;
    many.leaf_entries = forest.leaf_entries.repeat(copies);
    for (index, node) in many.nodes.chunks_mut(words).enumerate() {
        if node[0] & LEAF_BIT != 0 && node[0] & FLAG_BIT == 0 {
            node[1] += (index / n_nodes as usize) as u32 * n_pairs;
        }
    }
    many.n_outputs = 2;
    many.base_values.truncate(0);
    for pair in many.leaf_entries.chunks_mut(2) {
        pair[0] %= 2;
    }
    for node in many.nodes.chunks_mut(words) {
        if node[0] & LEAF_BIT == 0 {
            continue;
        }
        if node[0] & FLAG_BIT != 0 {
            node[0] = LEAF_BIT | FLAG_BIT | ((node[0] & LOW30_MASK) % 2);
        } else {
            // At most two entries a leaf, outputs 0 and 1.
            let count = (node[0] & LOW30_MASK).min(2);
            node[0] = LEAF_BIT | count;
            for k in 0..count {
                many.leaf_entries[2 * (node[1] + k) as usize] = k;
            }
        }
    }
    many.check_layout().unwrap();
    assert!(!vknf_functions::forest::node_blocks_by_default(&many));
    let config =
        |options: ForestOptions, forest: &GpuForest| ForestKernel::new(&gpu.device, forest, &options).unwrap().config();
    // Served functions keep the .vkf order; whole batches lay each tree out level by level, in
    // either node layout.
    for forest in [&many, &forest] {
        assert!(!config(ForestOptions::default(), forest).breadth_first);
        let whole = config(ForestOptions::for_whole_batches(), forest);
        assert!(whole.breadth_first, "{whole:?}");
    }
    assert!(!config(ForestOptions::for_whole_batches(), &many).node_blocks);
    assert!(config(ForestOptions::for_whole_batches(), &forest).node_blocks);
    // Labels equal the CPU reference's in both orders.
    let rows: Vec<f32> = (0..40 * forest.n_features as usize)
        .map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0)
        .collect();
    let reference = many.predict_cpu(&rows, 40).unwrap();
    for order in [NodeOrder::DepthFirst, NodeOrder::BreadthFirst] {
        let options = ForestOptions {
            node_order: Some(order),
            ..ForestOptions::default()
        };
        let kernel = ForestKernel::new(&gpu.device, &many, &options).unwrap();
        let mut lane = kernel.lane(40).unwrap();
        let got = lane.predict(&rows, true).unwrap();
        assert_eq!(
            (got.labels, got.scores),
            (reference.labels.clone(), reference.scores.clone()),
            "{order:?}"
        );
    }
    gpu.assert_no_validation_errors();
}

/// A pipelined batch's timeline, where the lane records one: a dispatch per chunk, the chunks' rows adding
/// up to the batch, host moments in the order the lane goes through them, and on the GPU each chunk's copy
/// before its dispatch (the dispatch waits for the copy's semaphore; compared across the two streams only
/// where they are one queue family, as on lavapipe, whose timestamps read one clock). Where the device
/// reads its clock beside the host's, the GPU's moments placed on the host's clock fall after the host
/// wrote what they wait for and before the batch ended. Off again, the lane records none.
#[test]
fn pipelined_batches_record_their_timeline_when_asked() {
    let gpu = gpu();
    let forest = fixed_point_classifier();
    let rows = random_rows(&forest, 3 << 20);
    let n_rows = rows.n_rows;
    let options = ForestOptions {
        input_path: Some(InputPath::Staged),
        direct_share: Some(0.4),
        transfer_stream: Some(true),
        ..ForestOptions::default()
    };
    let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
    let mut lane = kernel.lane(n_rows).unwrap();
    lane.record_timeline(true).unwrap();
    for _ in 0..2 {
        let result = lane.run_pipelined(&rows.data, 3, true).unwrap();
        let prediction = prediction_of(result, forest.n_outputs as usize);
        same_bits_as_the_cpu_reference(&forest, &rows, &prediction);
        let timeline = lane.last_timeline().expect("a timeline").clone();
        assert_eq!(timeline.chunks.len(), 3, "{timeline:#?}");
        assert_eq!(timeline.chunks.iter().map(|c| c.rows).sum::<usize>(), n_rows);
        let mut host_before = 0.0;
        for chunk in &timeline.chunks {
            let host = [
                chunk.write_start_us,
                chunk.staged_written_us,
                chunk.written_us,
                chunk.dispatch_submitted_us,
            ];
            assert!(host[0] >= host_before, "{timeline:#?}");
            assert!(host.windows(2).all(|w| w[0] <= w[1]), "{timeline:#?}");
            host_before = chunk.written_us;
            let (copy_start, copy_end) = chunk.copy_gpu_us.expect("copied on the transfer stream");
            let (kernel_start, kernel_end) = chunk.kernel_gpu_us;
            assert!(copy_start >= 0.0 && copy_start <= copy_end, "{timeline:#?}");
            if !gpu.device.has_dedicated_transfer() {
                assert!(
                    copy_end <= chunk.list_start_gpu_us,
                    "dispatch list before its copy: {timeline:#?}"
                );
            }
            assert!(
                chunk.list_start_gpu_us <= kernel_start && kernel_start < kernel_end,
                "{timeline:#?}"
            );
        }
        assert!(timeline.total_us >= timeline.chunks[2].dispatch_submitted_us);
        let Some(origin) = timeline.gpu_origin_us else {
            // lavapipe, CI's driver, reads its clock beside the host's: there a missing origin fails.
            assert!(
                !gpu.device.info().name.contains("llvmpipe"),
                "no clock reading on lavapipe"
            );
            eprintln!("no calibrated timestamps: GPU moments not placed on the host's clock");
            continue;
        };
        // The clock reading's uncertainty, and room for the two clocks' rounding.
        let slack = timeline.gpu_origin_uncertainty_us.expect("with the origin") + 5.0;
        for chunk in &timeline.chunks {
            let (copy_start, _) = chunk.copy_gpu_us.expect("copied on the transfer stream");
            assert!(chunk.copy_submitted_us >= chunk.staged_written_us, "{timeline:#?}");
            assert!(
                origin + copy_start + slack >= chunk.staged_written_us,
                "a copy started before its rows were written: {timeline:#?}"
            );
            assert!(
                origin + chunk.list_start_gpu_us + slack >= chunk.written_us,
                "a dispatch started before its rows were written: {timeline:#?}"
            );
            assert!(
                origin + chunk.kernel_gpu_us.1 <= timeline.total_us + slack,
                "a dispatch ended after the batch: {timeline:#?}"
            );
        }
    }
    // A batch without chunks (one dispatch, written whole) leaves no timeline behind it.
    lane.run_pipelined(&rows.data[..rows.n_features * 2], 1, false).unwrap();
    assert!(lane.last_timeline().is_none(), "a stale timeline");
    lane.record_timeline(false).unwrap();
    lane.run_pipelined(&rows.data, 3, false).unwrap();
    assert!(lane.last_timeline().is_none());
    gpu.assert_no_validation_errors();
}

/// A lane that writes a share of large batches into device memory writes a small batch (below 1 MiB)
/// there whole, with no copy: the results are the CPU reference's bits, and the pinned memory the DMA
/// would read keeps what was there (a copy from it would have fed the kernel the poison).
#[test]
fn small_batches_on_a_direct_share_lane_are_written_into_device_memory_whole() {
    let gpu = gpu();
    let cases = parity::load_cases(&fixture_dir()).unwrap();
    let mut checked = 0;
    for case in &cases {
        let forest = case.import().unwrap();
        // Fixed-point classifiers (their scores are compared bit for bit) whose rows all predict.
        if forest.fixed_point().is_none() || (!case.meta.nan_rows.is_empty() && !case.meta.nan_routing) {
            continue;
        }
        let rows = &case.x;
        let nf = rows.n_features;
        let options = ForestOptions {
            input_path: Some(InputPath::Staged),
            transfer_stream: Some(true),
            ..ForestOptions::for_whole_batches()
        };
        let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
        let mut lane = kernel.lane(rows.n_rows).unwrap();
        if lane.direct_share().is_none() {
            // No host-visible device memory on this driver: every row takes the DMA.
            continue;
        }
        let poison: Vec<f32> = rows.data.iter().map(|v| -v - 1.0).collect();
        for n_rows in [1, 2, rows.n_rows.min(100), rows.n_rows] {
            assert!(n_rows * nf * 4 < 1 << 20, "{}: a small batch", case.meta.name);
            lane.write_rows(0, &poison[..n_rows * nf]).unwrap();
            let batch = Rows {
                n_rows,
                n_features: nf,
                data: rows.data[..n_rows * nf].to_vec(),
            };
            let prediction = lane.predict(&batch.data, true).unwrap();
            same_bits_as_the_cpu_reference(&forest, &batch, &prediction);
            {
                let pinned = lane.input().unwrap();
                let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
                assert_eq!(
                    bits(&pinned[..n_rows * nf]),
                    bits(&poison[..n_rows * nf]),
                    "{}: {n_rows} rows went through the pinned memory",
                    case.meta.name
                );
            }
            // The other way on the same lane and row count: rows written into pinned memory and run
            // must be copied over what `predict` left in device memory (a command list recorded for
            // the one way and reused for the other would run the poison).
            lane.predict(&poison[..n_rows * nf], true).unwrap();
            lane.write_rows(0, &batch.data).unwrap();
            let result = lane.run(n_rows, true).unwrap();
            let run = Prediction {
                n_rows,
                n_outputs: forest.n_outputs as usize,
                scores: result.scores.unwrap_or_default(),
                labels: result.labels,
            };
            same_bits_as_the_cpu_reference(&forest, &batch, &run);
            checked += 1;
        }
    }
    if checked == 0 {
        eprintln!("no host-visible device memory on this driver: nothing to check");
    }
    gpu.assert_no_validation_errors();
}

/// A classifier fixture's forest without its missing-value routing (the kernel rejects rows with NaN),
/// its name, and up to `max_rows` of its rows with every NaN replaced by zero.
fn rejecting_classifier(max_rows: usize) -> (String, GpuForest, Vec<f32>) {
    let cases = parity::load_cases(&fixture_dir()).unwrap();
    let case = cases
        .iter()
        .find(|case| case.import().unwrap().fixed_point().is_some())
        .expect("a classifier fixture");
    let mut forest = case.import().unwrap();
    forest.missing = vknf_forest::MissingPolicy::Reject;
    let nf = case.x.n_features;
    let n_rows = case.x.n_rows.min(max_rows);
    let clean = case.x.data[..n_rows * nf]
        .iter()
        .map(|v| if v.is_nan() { 0.0 } else { *v })
        .collect();
    (case.meta.name.clone(), forest, clean)
}

/// A model without missing-value routing rejects a NaN row of a small batch written into device memory
/// whole, naming the row and feature the kernel read there.
#[test]
fn a_nan_in_a_small_batch_on_a_direct_share_lane_is_named() {
    let gpu = gpu();
    let (name, forest, clean) = rejecting_classifier(50);
    let nf = forest.n_features as usize;
    let n_rows = clean.len() / nf;
    let mut data = clean.clone();
    let (row, feature) = (n_rows / 2, nf - 1);
    data[row * nf + feature] = f32::NAN;
    let options = ForestOptions {
        input_path: Some(InputPath::Staged),
        transfer_stream: Some(true),
        ..ForestOptions::for_whole_batches()
    };
    let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
    let mut lane = kernel.lane(n_rows).unwrap();
    if lane.direct_share().is_none() {
        eprintln!("no host-visible device memory on this driver: nothing to check");
        return;
    }
    // Pinned memory holds clean rows: a report read from there would name no NaN.
    lane.write_rows(0, &clean).unwrap();
    let err = lane.predict(&data, false).unwrap_err().to_string();
    assert!(
        err.contains(&format!("row {row} feature {feature} is NaN")),
        "{name}: {err}"
    );
    gpu.assert_no_validation_errors();
}

/// A pipelined batch reads each earlier chunk's labels while later chunks run: a NaN row in the first
/// chunk, and one in the last, is named (the first one when there are several), and the lane then
/// answers the next batch as before.
#[test]
fn a_nan_in_any_chunk_of_a_pipelined_batch_is_named() {
    let gpu = gpu();
    let (name, forest, clean) = rejecting_classifier(60);
    let nf = forest.n_features as usize;
    let n_rows = clean.len() / nf;
    let reference = forest.predict_cpu(&clean, n_rows).unwrap();
    let options = ForestOptions {
        rows_per_group: Some(4),
        pipeline_chunks: Some(4),
        small_batch_rows: Some(0),
        ..ForestOptions::for_whole_batches()
    };
    let kernel = ForestKernel::new(&gpu.device, &forest, &options).unwrap();
    let mut lane = kernel.lane(n_rows).unwrap();
    for nan_rows in [vec![2, n_rows / 2], vec![n_rows - 1]] {
        let mut data = clean.clone();
        for &row in &nan_rows {
            data[row * nf + nf - 1] = f32::NAN;
        }
        let err = lane.predict(&data, false).unwrap_err().to_string();
        let expected = format!("row {} feature {} is NaN", nan_rows[0], nf - 1);
        assert!(err.contains(&expected), "{name}: {err}");
        assert_eq!(lane.predict(&clean, false).unwrap().labels, reference.labels);
    }
    gpu.assert_no_validation_errors();
}

/// `for_whole_batches` takes the staged path with the default share only where batches can be split (a
/// transfer queue for the DMA's part, resizable BAR for the host's); elsewhere (lavapipe: no transfer
/// queue) the direct path.
#[test]
fn whole_batches_take_the_staged_path_only_where_they_can_be_split() {
    let gpu = gpu();
    let cases = parity::load_cases(&fixture_dir()).unwrap();
    let forest = cases[0].import().unwrap();
    let kernel = ForestKernel::new(&gpu.device, &forest, &ForestOptions::for_whole_batches()).unwrap();
    let config = kernel.config();
    let splits = vknf_functions::forest::splits_whole_batches(&gpu.device);
    assert!(!splits || gpu.device.has_dedicated_transfer());
    if splits {
        assert_eq!(config.input_path, InputPath::Staged);
        assert_eq!(config.direct_share, vknf_functions::forest::DEFAULT_DIRECT_SHARE);
    } else {
        assert_eq!(config.input_path, InputPath::Direct);
    }
    let served = ForestKernel::new(&gpu.device, &forest, &ForestOptions::default()).unwrap();
    assert_eq!(
        served.config().input_path,
        InputPath::Direct,
        "served functions keep the direct path"
    );
}
