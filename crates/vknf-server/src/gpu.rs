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

fn vulkan_error(err: vknf_vulkan::Error) -> ExecError {
    match err {
        vknf_vulkan::Error::OutOfMemory { .. } => ExecError::OutOfMemory(err.to_string()),
        err if err.is_device_lost() => ExecError::DeviceLost(err.to_string()),
        err => ExecError::Failed(err.to_string()),
    }
}

fn exec_error(err: ForestError) -> ExecError {
    match err {
        ForestError::Gpu(err) => vulkan_error(err),
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
        if spec.kind == FunctionKind::Generic {
            return Ok(Arc::new(GpuGenericFunction::load(&self.device(), spec, model)?));
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
            lane,
            labels: Vec::new(),
            scores: Vec::new(),
            classifier: self.kernel.is_classifier(),
        }))
    }
}

struct GpuForestLane {
    lane: ForestLane,
    labels: Vec<u8>,
    scores: Vec<u8>,
    classifier: bool,
}

impl Lane for GpuForestLane {
    fn capacity_rows(&self) -> usize {
        self.lane.max_rows()
    }

    fn write_input(&mut self, write: &mut dyn FnMut(&mut [f32])) -> Result<(), ExecError> {
        let mut input = self.lane.input().map_err(exec_error)?;
        write(&mut input);
        Ok(())
    }

    fn run(&mut self, n_rows: usize, want: &[bool]) -> Result<LaneOutputs<'_>, ExecError> {
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

/// Rows per batch of a generic function when the manifest does not say.
const GENERIC_DEFAULT_BATCH_ROWS: usize = 4096;

/// A generic kernel wired by its manifest's ABI (`vknf.io/abi`): the request rows go to the input
/// binding, resident buffers come from byte ranges of the model, outputs are read back per row, the
/// row count goes to a push-constant field, and the kernel runs one invocation per row along x.
pub struct GpuGenericFunction {
    device: Device,
    pipeline: vknf_vulkan::Pipeline,
    abi: crate::manifest::GenericAbi,
    resident: Vec<(u32, u32, vknf_vulkan::Buffer)>,
    info: FunctionInfo,
}

fn spec_error(function: &str, reason: impl Into<String>) -> LoadError {
    LoadError::InvalidSpec {
        function: function.to_string(),
        reason: reason.into(),
    }
}

impl GpuGenericFunction {
    fn load(device: &Device, spec: &FunctionSpec, model: Option<&[u8]>) -> Result<GpuGenericFunction, LoadError> {
        use crate::manifest::{SpecConstantKey, SpecConstantValue};
        use vknf_vulkan::{BindingKind, Kernel, MemoryKind, SpecType, SpecValue, Specialization};

        let function = spec.key.to_string();
        let abi = spec
            .abi
            .clone()
            .ok_or_else(|| spec_error(&function, "kind generic needs vknf.io/abi"))?;
        let vulkan = |e: vknf_vulkan::Error| LoadError::Exec {
            function: function.clone(),
            source: vulkan_error(e),
        };
        let kernel = Kernel::new(device, &spec.spirv, &spec.entry_point).map_err(vulkan)?;
        let info = kernel.info().clone();
        let mut specialization = Specialization::new();
        for (key, value) in &spec.spec_constants {
            let declared = match key {
                SpecConstantKey::Id(id) => info.spec_constants.iter().find(|s| s.id == *id),
                SpecConstantKey::Name(name) => info.spec_constant(name),
            }
            .ok_or_else(|| {
                spec_error(
                    &function,
                    format!("the kernel declares no specialization constant {key:?}"),
                )
            })?;
            let value = match (value, declared.ty) {
                (SpecConstantValue::Bool(b), SpecType::Bool) => SpecValue::Bool(*b),
                (SpecConstantValue::Int(v), SpecType::U32) => SpecValue::U32(
                    u32::try_from(*v).map_err(|_| spec_error(&function, format!("{key:?} = {v} does not fit u32")))?,
                ),
                (SpecConstantValue::Int(v), SpecType::I32) => SpecValue::I32(
                    i32::try_from(*v).map_err(|_| spec_error(&function, format!("{key:?} = {v} does not fit i32")))?,
                ),
                (SpecConstantValue::Int(v), SpecType::F32) => SpecValue::F32(*v as f32),
                (SpecConstantValue::Float(v), SpecType::F32) => SpecValue::F32(*v as f32),
                (value, ty) => return Err(spec_error(&function, format!("{key:?} = {value:?} is not a {ty:?}"))),
            };
            specialization = specialization.id(declared.id, value);
        }
        let pipeline = device.create_pipeline(&kernel, &specialization).map_err(vulkan)?;

        // Every declared binding is wired exactly once, and every wired binding exists as a storage buffer.
        let mut wired: Vec<(u32, u32, &str)> = vec![(abi.input.at.set, abi.input.at.binding, "input")];
        wired.extend(abi.resident.iter().map(|r| (r.at.set, r.at.binding, "resident")));
        wired.extend(abi.outputs.iter().map(|o| (o.at.set, o.at.binding, "output")));
        for (set, binding, role) in &wired {
            let declared = info.bindings.iter().find(|b| b.set == *set && b.binding == *binding);
            match declared {
                Some(b) if b.kind == BindingKind::StorageBuffer => {}
                Some(_) => {
                    return Err(spec_error(
                        &function,
                        format!("{role} binding {set}.{binding} is not a storage buffer"),
                    ));
                }
                None => {
                    return Err(spec_error(
                        &function,
                        format!("the kernel declares no binding {set}.{binding} ({role})"),
                    ));
                }
            }
        }
        if let Some(unwired) = info
            .bindings
            .iter()
            .find(|b| !wired.iter().any(|(s, n, _)| *s == b.set && *n == b.binding))
        {
            return Err(spec_error(
                &function,
                format!(
                    "binding {}.{} of the kernel is not wired by vknf.io/abi",
                    unwired.set, unwired.binding
                ),
            ));
        }
        if abi.row_count.push_constant_offset % 4 != 0
            || abi.row_count.push_constant_offset + 4 > info.push_constant_size
        {
            return Err(spec_error(
                &function,
                format!(
                    "row_count push_constant_offset {} is not a 4-byte field inside the kernel's {}-byte push constants",
                    abi.row_count.push_constant_offset, info.push_constant_size
                ),
            ));
        }
        let mut resident = Vec::new();
        for r in &abi.resident {
            let bytes = model
                .and_then(|m| m.get(r.offset as usize..(r.offset + r.length) as usize))
                .ok_or_else(|| {
                    spec_error(
                        &function,
                        format!("resident range {}+{} is outside the model", r.offset, r.length),
                    )
                })?;
            let buffer = device
                .create_buffer_with(
                    &format!("{function} resident {}.{}", r.at.set, r.at.binding),
                    bytes,
                    MemoryKind::DeviceLocal,
                )
                .map_err(vulkan)?;
            resident.push((r.at.set, r.at.binding, buffer));
        }
        let outputs = abi
            .outputs
            .iter()
            .map(|o| crate::exec::OutputInfo {
                name: o.name.clone(),
                dtype: o.dtype,
                width: o.width,
                on_request: o.on_request,
            })
            .collect();
        let info = FunctionInfo {
            input_width: abi.input.width,
            outputs,
            max_batch_rows: spec.max_batch_rows.unwrap_or(GENERIC_DEFAULT_BATCH_ROWS),
            accepts_nan: abi.accepts_nan,
        };
        Ok(GpuGenericFunction {
            device: device.clone(),
            pipeline,
            abi,
            resident,
            info,
        })
    }
}

impl Function for GpuGenericFunction {
    fn info(&self) -> &FunctionInfo {
        &self.info
    }

    fn new_lane(&self) -> Result<Box<dyn Lane>, ExecError> {
        use vknf_vulkan::{MemoryKind, QueueKind};
        let rows = self.info.max_batch_rows.max(1);
        let input = self
            .device
            .create_buffer(
                "generic input",
                (rows * self.info.input_width.max(1) * 4) as u64,
                MemoryKind::Upload,
            )
            .map_err(vulkan_error)?;
        let mut outputs = Vec::new();
        for o in &self.abi.outputs {
            let bytes = (rows * o.width.max(1) * o.dtype.size()) as u64;
            outputs.push(
                self.device
                    .create_buffer(&format!("generic output {}", o.name), bytes, MemoryKind::Readback)
                    .map_err(vulkan_error)?,
            );
        }
        let mut wiring: Vec<(u32, u32, &vknf_vulkan::Buffer)> =
            vec![(self.abi.input.at.set, self.abi.input.at.binding, &input)];
        wiring.extend(self.resident.iter().map(|(s, b, buf)| (*s, *b, buf)));
        wiring.extend(
            self.abi
                .outputs
                .iter()
                .zip(&outputs)
                .map(|(o, buf)| (o.at.set, o.at.binding, buf)),
        );
        let bind_group = self.pipeline.bind_sets(&wiring).map_err(vulkan_error)?;
        let stream = self.device.stream(QueueKind::Compute).map_err(vulkan_error)?;
        Ok(Box::new(GpuGenericLane {
            capacity_rows: rows,
            input,
            outputs,
            results: vec![Vec::new(); self.abi.outputs.len()],
            widths: self.abi.outputs.iter().map(|o| o.width * o.dtype.size()).collect(),
            bind_group,
            pipeline: self.pipeline.clone(),
            stream,
            list: None,
            recorded_rows: None,
            push_size: self.pipeline.info().push_constant_size as usize,
            row_count_offset: self.abi.row_count.push_constant_offset as usize,
        }))
    }
}

struct GpuGenericLane {
    capacity_rows: usize,
    input: vknf_vulkan::Buffer,
    outputs: Vec<vknf_vulkan::Buffer>,
    results: Vec<Vec<u8>>,
    widths: Vec<usize>,
    bind_group: vknf_vulkan::BindGroup,
    pipeline: vknf_vulkan::Pipeline,
    stream: vknf_vulkan::Stream,
    list: Option<vknf_vulkan::CommandList>,
    recorded_rows: Option<usize>,
    push_size: usize,
    row_count_offset: usize,
}

impl Lane for GpuGenericLane {
    fn capacity_rows(&self) -> usize {
        self.capacity_rows
    }

    fn write_input(&mut self, write: &mut dyn FnMut(&mut [f32])) -> Result<(), ExecError> {
        let mut input = self.input.map::<f32>().map_err(vulkan_error)?;
        write(&mut input);
        Ok(())
    }

    fn run(&mut self, n_rows: usize, want: &[bool]) -> Result<LaneOutputs<'_>, ExecError> {
        if n_rows == 0 || n_rows > self.capacity_rows {
            return Err(ExecError::InvalidBatch(format!(
                "{n_rows} rows: a lane takes 1 to {}",
                self.capacity_rows
            )));
        }
        if self.recorded_rows != Some(n_rows) {
            let mut push = vec![0u8; self.push_size];
            push[self.row_count_offset..self.row_count_offset + 4].copy_from_slice(&(n_rows as u32).to_le_bytes());
            let groups = self.pipeline.groups_for(n_rows as u64);
            let bind_group = &self.bind_group;
            let record = |rec: &mut vknf_vulkan::Recorder<'_>| rec.dispatch_bytes(bind_group, &push, [groups, 1, 1]);
            match &mut self.list {
                Some(list) => list.rerecord(record).map_err(vulkan_error)?,
                None => self.list = Some(self.stream.record(record).map_err(vulkan_error)?),
            }
            self.recorded_rows = Some(n_rows);
        }
        let list = self.list.as_mut().expect("recorded above");
        self.stream
            .run(list, vknf_functions::forest::BATCH_DEADLINE)
            .map_err(vulkan_error)?;
        for (index, output) in self.outputs.iter().enumerate() {
            let result = &mut self.results[index];
            result.resize(n_rows * self.widths[index], 0);
            if want.get(index).copied().unwrap_or(true) {
                output.read(0, result).map_err(vulkan_error)?;
            }
        }
        Ok(LaneOutputs {
            outputs: self
                .results
                .iter()
                .enumerate()
                .map(|(index, r)| want.get(index).copied().unwrap_or(true).then_some(r.as_slice()))
                .collect(),
        })
    }
}
