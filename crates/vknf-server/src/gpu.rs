//! The GPU loader: runs `forest` functions with the SPIR-V their manifest carries, through
//! vknf-functions on the vknf-vulkan runtime. One device per loader; `reset` re-creates it after a loss.

use std::sync::Arc;

use parking_lot::Mutex;
use vknf_forest::{GpuForest, MissingPolicy};
use vknf_functions::{ForestError, ForestKernel, ForestLane, ForestOptions};
use vknf_vulkan::{Device, DeviceSelector, Instance, InstanceOptions};

use crate::cpu::{DEFAULT_MAX_BATCH_ROWS, forest_outputs};
use crate::exec::{ExecError, Function, FunctionInfo, FunctionLoader, Lane, LaneOutputs, LoadError};
use crate::manifest::{FunctionKind, FunctionSpec};

/// Loads functions onto one Vulkan device.
pub struct GpuLoader {
    instance: Instance,
    selector: DeviceSelector,
    device: Mutex<Device>,
}

impl GpuLoader {
    /// Opens the device chosen by `selector` (validation layer on when `validate`).
    pub fn new(validate: bool, selector: DeviceSelector) -> Result<GpuLoader, vknf_vulkan::Error> {
        let instance = Instance::new(&InstanceOptions {
            validation: validate,
            ..InstanceOptions::default()
        })?;
        let device = Device::select(&instance, &selector)?;
        tracing::info!(device = %device.info().name, "GPU loader ready");
        Ok(GpuLoader {
            instance,
            selector,
            device: Mutex::new(device),
        })
    }

    /// The device functions are loaded onto.
    pub fn device(&self) -> Device {
        self.device.lock().clone()
    }

    /// The Vulkan instance (for validation checks).
    pub fn instance(&self) -> &Instance {
        &self.instance
    }
}

fn exec_error(err: ForestError) -> ExecError {
    match err {
        ForestError::Gpu(vknf_vulkan::Error::OutOfMemory { .. }) => ExecError::OutOfMemory(err.to_string()),
        err if err.is_device_lost() => ExecError::DeviceLost(err.to_string()),
        ForestError::Input(message) => ExecError::InvalidBatch(message),
        err => ExecError::Failed(err.to_string()),
    }
}

impl FunctionLoader for GpuLoader {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn load(&self, spec: &FunctionSpec, model: Option<&[u8]>) -> Result<Arc<dyn Function>, LoadError> {
        let function = spec.key.to_string();
        if spec.kind != FunctionKind::Forest {
            return Err(LoadError::UnsupportedKind {
                function,
                kind: spec.kind.to_string(),
                loader: "gpu",
            });
        }
        let model = model.ok_or_else(|| LoadError::MissingModel(function.clone()))?;
        let forest = GpuForest::from_vkf_bytes(model).map_err(|e| LoadError::InvalidModel {
            function: function.clone(),
            reason: e.to_string(),
        })?;
        let device = self.device();
        let kernel = ForestKernel::with_spirv(
            &device,
            &forest,
            &ForestOptions::default(),
            &spec.spirv,
            &spec.entry_point,
        )
        .map_err(|e| LoadError::Exec {
            function: function.clone(),
            source: exec_error(e),
        })?;
        let info = FunctionInfo {
            input_width: forest.n_features as usize,
            outputs: forest_outputs(&forest),
            max_batch_rows: spec.max_batch_rows.unwrap_or(DEFAULT_MAX_BATCH_ROWS),
            accepts_nan: forest.missing == MissingPolicy::Route,
        };
        Ok(Arc::new(GpuForestFunction { kernel, info }))
    }

    fn reset(&self) -> Result<(), LoadError> {
        let fresh = Device::select(&self.instance, &self.selector).map_err(|e| LoadError::Exec {
            function: "device".into(),
            source: ExecError::DeviceLost(e.to_string()),
        })?;
        *self.device.lock() = fresh;
        Ok(())
    }
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
            input: vec![0.0; self.info.max_batch_rows * self.info.input_width],
            lane,
            labels: Vec::new(),
            scores: Vec::new(),
            classifier: self.kernel.is_classifier(),
        }))
    }
}

struct GpuForestLane {
    lane: ForestLane,
    input: Vec<f32>,
    labels: Vec<u8>,
    scores: Vec<u8>,
    classifier: bool,
}

impl Lane for GpuForestLane {
    fn input_mut(&mut self) -> &mut [f32] {
        &mut self.input
    }

    fn run(&mut self, n_rows: usize, want: &[bool]) -> Result<LaneOutputs<'_>, ExecError> {
        let width = self.lane.n_features();
        let rows = self
            .input
            .get(..n_rows * width)
            .ok_or_else(|| ExecError::InvalidBatch(format!("{n_rows} rows exceed the lane")))?;
        self.lane.write_rows(0, rows).map_err(exec_error)?;
        let want_scores = !self.classifier || want.get(1).copied().unwrap_or(false);
        let result = self.lane.run(n_rows, want_scores).map_err(exec_error)?;
        self.labels.clear();
        self.labels.extend(result.labels.iter().flat_map(|l| l.to_le_bytes()));
        self.scores.clear();
        if let Some(scores) = &result.scores {
            self.scores.extend(scores.iter().flat_map(|s| s.to_le_bytes()));
        }
        if self.classifier {
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
