//! The `forest` family: random-forest inference over a compiled `.vkf` model, on the GPU with the
//! generic forest kernel ([`crate::forest`]) or on the CPU with vknf-forest's reference predictor.

use std::collections::BTreeMap;
use std::sync::Arc;

use vknf_forest::{FixedPoint, GpuForest, MissingPolicy};

use crate::family::{Family, ParamError};
use crate::function::{ExecError, Function, Lane, LoadError};
use crate::schema::{DType, FunctionInfo, InputInfo, OutputInfo};
use crate::spec::FunctionSpec;

/// Rows per batch when the spec does not say.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 4096;
/// Name of the input tensor.
pub const INPUT: &str = "features";
/// Output name of the predicted class (classifiers).
pub const LABELS: &str = "labels";
/// Output name of the per-output scores (class probabilities, or regression values).
pub const SCORES: &str = "scores";
/// The `.vkf` metadata entry, and the [`FunctionInfo::parameters`] entry a forest function reports
/// it as, of the feature schema digest a traffic model was trained with (`python/train_traffic.py`
/// writes it into the ONNX model, `vknf compile-model` into the `.vkf`).
pub const SCHEMA_DIGEST: &str = "vknf.schema_digest";

/// The parameter choosing how a GPU forest's rows reach the kernel (`vknf.io/input-path`: `direct`,
/// `host-memory` or `staged`, see [`crate::forest::InputPath`]); chosen for the device when absent.
pub const INPUT_PATH_PARAM: &str = "input-path";

/// The values of [`INPUT_PATH_PARAM`].
const INPUT_PATHS: [&str; 3] = ["direct", "host-memory", "staged"];

/// The input path `spec` names, checked (no device needed); `None` leaves the choice to the kernel.
fn input_path_name(spec: &FunctionSpec) -> Result<Option<&'static str>, ParamError> {
    let Some(text) = spec.param(INPUT_PATH_PARAM) else {
        return Ok(None);
    };
    let text = text.trim();
    match INPUT_PATHS.iter().find(|name| **name == text) {
        Some(name) => Ok(Some(*name)),
        None => Err(ParamError::new(
            INPUT_PATH_PARAM,
            format!("{text:?}: the input paths are {}", INPUT_PATHS.join(", ")),
        )),
    }
}

/// The input path `spec` asks for, checked; `None` when it leaves the choice to the kernel.
#[cfg(feature = "gpu")]
pub fn input_path(spec: &FunctionSpec) -> Result<Option<crate::forest::InputPath>, ParamError> {
    use crate::forest::InputPath;
    Ok(input_path_name(spec)?.map(|name| match name {
        "direct" => InputPath::Direct,
        "host-memory" => InputPath::HostMemory,
        _ => InputPath::Staged,
    }))
}

/// The `forest` family.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForestFamily;

impl Family for ForestFamily {
    fn kind(&self) -> &'static str {
        "forest"
    }

    fn params(&self) -> &'static [&'static str] {
        &[INPUT_PATH_PARAM]
    }

    fn needs_model(&self) -> bool {
        true
    }

    fn validate(&self, spec: &FunctionSpec, model_len: Option<usize>) -> Result<(), ParamError> {
        input_path_name(spec)?;
        match model_len {
            Some(_) => Ok(()),
            None => Err(ParamError::missing("model")),
        }
    }

    fn load_cpu(&self, spec: &FunctionSpec, model: Option<&[u8]>) -> Result<Arc<dyn Function>, LoadError> {
        let (forest, parameters) = parse_model(spec, model)?;
        Ok(Arc::new(
            CpuForestFunction::new(forest, spec.max_batch_rows.unwrap_or(DEFAULT_MAX_BATCH_ROWS))?
                .with_parameters(parameters),
        ))
    }

    #[cfg(feature = "gpu")]
    fn load_gpu(
        &self,
        device: &vknf_vulkan::Device,
        devices_serving: usize,
        spec: &FunctionSpec,
        model: Option<&[u8]>,
    ) -> Result<Arc<dyn Function>, LoadError> {
        let (forest, parameters) = parse_model(spec, model)?;
        gpu::load(device, devices_serving, spec, forest, parameters)
    }
}

/// The forest of a `.vkf` model, and what the function reports of it: the feature schema digest its
/// metadata carries, if any ([`SCHEMA_DIGEST`], trimmed and lower-case as manifests declare it).
fn parse_model(spec: &FunctionSpec, model: Option<&[u8]>) -> Result<(GpuForest, BTreeMap<String, String>), LoadError> {
    let model = model.ok_or_else(|| LoadError::MissingModel(spec.name.clone()))?;
    let (forest, metadata) = GpuForest::from_vkf_bytes_with_metadata(model).map_err(|e| LoadError::InvalidModel {
        function: spec.name.clone(),
        reason: e.to_string(),
    })?;
    let parameters = metadata
        .get(SCHEMA_DIGEST)
        .map(|digest| (SCHEMA_DIGEST.to_owned(), digest.trim().to_ascii_lowercase()))
        .into_iter()
        .collect();
    Ok((forest, parameters))
}

/// The schema of a forest function, the same on the CPU and the GPU: a classifier answers `labels`
/// (u32, always) and `scores` (f32 per class, on request); a regressor answers `scores` (f32 per
/// target, always).
pub fn forest_info(forest: &GpuForest, max_batch_rows: usize) -> FunctionInfo {
    let scores = |on_request| OutputInfo {
        name: SCORES.to_owned(),
        dtype: DType::F32,
        width: forest.n_outputs as usize,
        on_request,
    };
    let outputs = if forest.task.is_classifier() {
        vec![
            OutputInfo {
                name: LABELS.to_owned(),
                dtype: DType::U32,
                width: 1,
                on_request: false,
            },
            scores(true),
        ]
    } else {
        vec![scores(false)]
    };
    FunctionInfo {
        input: InputInfo {
            name: INPUT.to_owned(),
            dtype: DType::F32,
            width: forest.n_features as usize,
        },
        outputs,
        max_batch_rows,
        accepts_non_finite: forest.missing == MissingPolicy::Route,
        parameters: BTreeMap::new(),
    }
}

/// Which buffer output `index` of a forest is: the labels, or the scores.
fn is_labels(classifier: bool, index: usize) -> Result<bool, ExecError> {
    match (classifier, index) {
        (true, 0) => Ok(true),
        (true, 1) | (false, 0) => Ok(false),
        _ => Err(ExecError::InvalidBatch(format!("a forest has no output {index}"))),
    }
}

/// A forest predicted on the CPU (the reference semantics of scikit-learn; classifiers' scores are the
/// GPU kernel's bit for bit, `vknf_forest::exact`).
pub struct CpuForestFunction {
    forest: Arc<GpuForest>,
    fixed: Arc<Option<FixedPoint>>,
    info: FunctionInfo,
}

impl CpuForestFunction {
    /// Wraps a compiled forest.
    pub fn new(forest: GpuForest, max_batch_rows: usize) -> Result<CpuForestFunction, LoadError> {
        let info = forest_info(&forest, max_batch_rows);
        if info.input.width == 0 || forest.n_outputs == 0 {
            return Err(LoadError::InvalidModel {
                function: "forest".into(),
                reason: format!("{} features and {} outputs", forest.n_features, forest.n_outputs),
            });
        }
        Ok(CpuForestFunction {
            fixed: Arc::new(forest.fixed_point()),
            forest: Arc::new(forest),
            info,
        })
    }

    /// The same, reporting `parameters` ([`FunctionInfo::parameters`]).
    pub fn with_parameters(mut self, parameters: BTreeMap<String, String>) -> CpuForestFunction {
        self.info.parameters = parameters;
        self
    }
}

impl Function for CpuForestFunction {
    fn info(&self) -> &FunctionInfo {
        &self.info
    }

    fn new_lane(&self) -> Result<Box<dyn Lane>, ExecError> {
        Ok(Box::new(CpuForestLane {
            forest: self.forest.clone(),
            fixed: self.fixed.clone(),
            input: vec![0.0; self.info.max_batch_rows * self.info.input.width],
            labels: Vec::new(),
            scores: Vec::new(),
        }))
    }
}

struct CpuForestLane {
    forest: Arc<GpuForest>,
    fixed: Arc<Option<FixedPoint>>,
    input: Vec<f32>,
    labels: Vec<u32>,
    scores: Vec<f32>,
}

impl Lane for CpuForestLane {
    fn capacity_rows(&self) -> usize {
        self.input.len() / (self.forest.n_features as usize).max(1)
    }

    fn write_input(&mut self, write: &mut dyn FnMut(&mut [u8])) -> Result<(), ExecError> {
        write(bytemuck::cast_slice_mut(&mut self.input));
        Ok(())
    }

    fn run(&mut self, n_rows: usize, _mask: u32) -> Result<(), ExecError> {
        let width = self.forest.n_features as usize;
        let rows = self
            .input
            .get(..n_rows * width)
            .ok_or_else(|| ExecError::InvalidBatch(format!("{n_rows} rows exceed the lane")))?;
        let prediction = self
            .forest
            .predict_cpu_with(self.fixed.as_ref().as_ref(), rows, n_rows)
            .map_err(|e| ExecError::InvalidInput(e.to_string()))?;
        self.labels = prediction.labels;
        self.scores = prediction.scores;
        Ok(())
    }

    fn read_output(&self, index: usize, first_row: usize, dst: &mut [u8]) -> Result<(), ExecError> {
        let (src, width): (&[u8], usize) = if is_labels(self.forest.task.is_classifier(), index)? {
            (bytemuck::cast_slice(&self.labels), 1)
        } else {
            (bytemuck::cast_slice(&self.scores), self.forest.n_outputs as usize)
        };
        let from = first_row * width * 4;
        let src = src
            .get(from..from + dst.len())
            .ok_or_else(|| ExecError::InvalidBatch(format!("rows from {first_row} are outside the last batch")))?;
        dst.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(feature = "gpu")]
mod gpu {
    use super::*;
    use crate::forest::{BATCH_DEADLINE, ForestError, ForestKernel, ForestLane, ForestOptions, InputPath};
    use crate::function::vulkan_error;

    pub(super) fn exec_error(err: ForestError) -> ExecError {
        match err {
            ForestError::Gpu(err) => vulkan_error(err),
            ForestError::Input(message) => ExecError::InvalidInput(message),
            err => ExecError::Failed(err.to_string()),
        }
    }

    pub(super) fn load(
        device: &vknf_vulkan::Device,
        devices_serving: usize,
        spec: &FunctionSpec,
        forest: GpuForest,
        parameters: BTreeMap<String, String>,
    ) -> Result<Arc<dyn Function>, LoadError> {
        let asked = super::input_path(spec).map_err(|e| LoadError::Exec {
            function: spec.name.clone(),
            source: ExecError::InvalidInput(e.to_string()),
        })?;
        let options = ForestOptions {
            input_path: asked.or_else(|| default_input_path(devices_serving)),
            ..ForestOptions::default()
        };
        let kernel =
            ForestKernel::with_spirv(device, &forest, &options, &spec.spirv, &spec.entry_point).map_err(|e| {
                LoadError::Exec {
                    function: spec.name.clone(),
                    source: exec_error(e),
                }
            })?;
        let info = FunctionInfo {
            parameters,
            ..forest_info(&forest, spec.max_batch_rows.unwrap_or(DEFAULT_MAX_BATCH_ROWS))
        };
        Ok(Arc::new(GpuForestFunction { kernel, info }))
    }

    /// The input path of a function that names none: staged (pinned memory, then DMA) where several
    /// devices serve it, because there the host's cores writing rows into every GPU's BAR memory are
    /// the limit, and the staged path's write costs them a fraction of the time: two GPUs scale much
    /// closer to twice one GPU's rate with it (bench/RESULTS.md, "Two GPUs, staged"); with one device
    /// the kernel's own default (direct, a few microseconds faster per small batch).
    pub fn default_input_path(devices_serving: usize) -> Option<InputPath> {
        (devices_serving > 1).then_some(InputPath::Staged)
    }

    /// A forest resident on the GPU.
    pub struct GpuForestFunction {
        kernel: ForestKernel,
        info: FunctionInfo,
    }

    impl Function for GpuForestFunction {
        fn info(&self) -> &FunctionInfo {
            &self.info
        }

        fn new_lane(&self) -> Result<Box<dyn Lane>, ExecError> {
            let lane = self.kernel.lane(self.info.max_batch_rows).map_err(exec_error)?;
            Ok(Box::new(GpuForestLane {
                lane,
                classifier: self.kernel.is_classifier(),
                rows: 0,
                scores: false,
            }))
        }
    }

    struct GpuForestLane {
        lane: ForestLane,
        classifier: bool,
        /// Rows of the last finished batch.
        rows: usize,
        /// Whether the last batch computed scores.
        scores: bool,
    }

    impl Lane for GpuForestLane {
        fn capacity_rows(&self) -> usize {
            self.lane.max_rows()
        }

        fn write_input(&mut self, write: &mut dyn FnMut(&mut [u8])) -> Result<(), ExecError> {
            let mut input = self.lane.input().map_err(exec_error)?;
            write(bytemuck::cast_slice_mut(&mut input));
            Ok(())
        }

        fn input_read_by_device(&self) -> bool {
            true
        }

        fn run(&mut self, n_rows: usize, mask: u32) -> Result<(), ExecError> {
            // A classifier's scores (output 1) are on request; a regressor's (output 0) always wanted.
            let scores = !self.classifier || mask & 0b10 != 0;
            self.rows = 0;
            self.lane.submit(n_rows, scores).map_err(exec_error)?;
            self.rows = self.lane.finish_in_place(BATCH_DEADLINE).map_err(exec_error)?;
            self.scores = scores;
            Ok(())
        }

        fn read_output(&self, index: usize, first_row: usize, dst: &mut [u8]) -> Result<(), ExecError> {
            if is_labels(self.classifier, index)? {
                if first_row + dst.len() / 4 > self.rows {
                    return Err(ExecError::InvalidBatch(format!(
                        "rows from {first_row} are outside the last batch"
                    )));
                }
                self.lane.read_labels_at(first_row, dst).map_err(exec_error)
            } else if self.scores {
                self.lane.read_scores_at(first_row, dst).map_err(exec_error)
            } else {
                Err(ExecError::InvalidBatch(
                    "scores were not computed for the last batch".into(),
                ))
            }
        }
    }
}

#[cfg(feature = "gpu")]
pub use gpu::{GpuForestFunction, default_input_path};
