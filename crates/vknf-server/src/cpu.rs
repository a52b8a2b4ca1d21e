//! The CPU loader: runs `forest` functions with vknf-forest's reference predictor. It serves
//! `vknf serve --cpu` and the tests; the GPU loader lives in vknf-functions.

use std::sync::Arc;

use vknf_forest::{GpuForest, MissingPolicy};

use crate::exec::{DType, ExecError, Function, FunctionInfo, FunctionLoader, Lane, LaneOutputs, LoadError, OutputInfo};
use crate::manifest::{FunctionKind, FunctionSpec};

/// Rows per batch when the manifest does not say.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 4096;

/// Output name of the predicted class (classifiers).
pub const LABELS: &str = "labels";
/// Output name of the per-output scores (class probabilities, or regression values).
pub const SCORES: &str = "scores";

/// The outputs a forest function offers, shared by the CPU and GPU loaders so clients see the
/// same shape either way: a classifier answers `labels` (u32, always) and `scores` (f32 per
/// class, on request); a regressor answers `scores` (f32 per target, always).
pub fn forest_outputs(forest: &GpuForest) -> Vec<OutputInfo> {
    let scores = |on_request| OutputInfo {
        name: SCORES.to_owned(),
        dtype: DType::F32,
        width: forest.n_outputs as usize,
        on_request,
    };
    if forest.task.is_classifier() {
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
    }
}

/// Loads `forest` functions onto the CPU; refuses `generic` ones, which need the GPU.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuLoader;

impl FunctionLoader for CpuLoader {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn load(&self, spec: &FunctionSpec, model: Option<&[u8]>) -> Result<Arc<dyn Function>, LoadError> {
        let function = spec.key.to_string();
        if spec.kind != FunctionKind::Forest {
            return Err(LoadError::UnsupportedKind {
                function,
                kind: spec.kind.to_string(),
                loader: "cpu",
            });
        }
        let model = model.ok_or_else(|| LoadError::MissingModel(function.clone()))?;
        let forest = GpuForest::from_vkf_bytes(model).map_err(|e| LoadError::InvalidModel {
            function: function.clone(),
            reason: e.to_string(),
        })?;
        Ok(Arc::new(CpuForestFunction::new(
            forest,
            spec.max_batch_rows.unwrap_or(DEFAULT_MAX_BATCH_ROWS),
        )?))
    }
}

/// A forest predicted on the CPU.
pub struct CpuForestFunction {
    forest: Arc<GpuForest>,
    info: FunctionInfo,
}

impl CpuForestFunction {
    /// Wraps a compiled forest.
    pub fn new(forest: GpuForest, max_batch_rows: usize) -> Result<CpuForestFunction, LoadError> {
        let info = FunctionInfo {
            input_width: forest.n_features as usize,
            outputs: forest_outputs(&forest),
            max_batch_rows,
            accepts_nan: forest.missing == MissingPolicy::Route,
        };
        if info.input_width == 0 || forest.n_outputs == 0 {
            return Err(LoadError::InvalidModel {
                function: "forest".into(),
                reason: format!("{} features and {} outputs", forest.n_features, forest.n_outputs),
            });
        }
        Ok(CpuForestFunction {
            forest: Arc::new(forest),
            info,
        })
    }
}

impl Function for CpuForestFunction {
    fn info(&self) -> &FunctionInfo {
        &self.info
    }

    fn new_lane(&self) -> Result<Box<dyn Lane>, ExecError> {
        Ok(Box::new(CpuForestLane {
            forest: self.forest.clone(),
            input: vec![0.0; self.info.max_batch_rows * self.info.input_width],
            labels: Vec::new(),
            scores: Vec::new(),
            classifier: self.forest.task.is_classifier(),
        }))
    }
}

struct CpuForestLane {
    forest: Arc<GpuForest>,
    input: Vec<f32>,
    labels: Vec<u8>,
    scores: Vec<u8>,
    classifier: bool,
}

impl Lane for CpuForestLane {
    fn capacity_rows(&self) -> usize {
        self.input.len() / (self.forest.n_features as usize).max(1)
    }

    fn write_input(&mut self, write: &mut dyn FnMut(&mut [f32])) -> Result<(), ExecError> {
        write(&mut self.input);
        Ok(())
    }

    fn run(&mut self, n_rows: usize, want: &[bool]) -> Result<LaneOutputs<'_>, ExecError> {
        let width = self.forest.n_features as usize;
        let rows = self
            .input
            .get(..n_rows * width)
            .ok_or_else(|| ExecError::InvalidBatch(format!("{n_rows} rows exceed the lane")))?;
        let prediction = self
            .forest
            .predict_cpu(rows, n_rows)
            .map_err(|e| ExecError::Failed(e.to_string()))?;
        self.scores.clear();
        self.scores
            .extend(prediction.scores.iter().flat_map(|s| s.to_le_bytes()));
        if self.classifier {
            self.labels.clear();
            self.labels
                .extend(prediction.labels.iter().flat_map(|l| l.to_le_bytes()));
            let want_scores = want.get(1).copied().unwrap_or(false);
            Ok(LaneOutputs {
                outputs: vec![Some(&self.labels), want_scores.then_some(self.scores.as_slice())],
            })
        } else {
            Ok(LaneOutputs {
                outputs: vec![Some(&self.scores)],
            })
        }
    }
}
