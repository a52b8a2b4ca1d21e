//! The generic family on a Vulkan device.

use vknf_vulkan::Device;

use super::{ABI_PARAM, DEFAULT_MAX_BATCH_ROWS, GenericAbi, kernel_deadline};
use crate::function::vulkan_error;
use crate::function::{ExecError, Function, Lane, LoadError};
use crate::schema::{FunctionInfo, InputInfo, OutputInfo};
use crate::spec::{FunctionSpec, SpecConstantKey, SpecConstantValue};

/// A generic kernel wired by its manifest's ABI (`vknf.io/abi`): the request rows go to the input
/// binding, resident buffers come from byte ranges of the model, outputs are read back per row, the
/// row count goes to a push-constant field, and the kernel runs one invocation per row along x.
pub struct GpuGenericFunction {
    device: Device,
    pipeline: vknf_vulkan::Pipeline,
    abi: GenericAbi,
    resident: Vec<(u32, u32, vknf_vulkan::Buffer)>,
    info: FunctionInfo,
    /// Longest a batch may run before the device is treated as lost.
    deadline: std::time::Duration,
}

fn spec_error(function: &str, reason: impl Into<String>) -> LoadError {
    LoadError::InvalidSpec {
        function: function.to_string(),
        reason: reason.into(),
    }
}

impl GpuGenericFunction {
    pub(super) fn load(
        device: &Device,
        spec: &FunctionSpec,
        model: Option<&[u8]>,
    ) -> Result<GpuGenericFunction, LoadError> {
        use vknf_vulkan::{BindingKind, Kernel, MemoryKind, SpecType, SpecValue, Specialization};

        let function = spec.name.clone();
        let json = spec
            .param(ABI_PARAM)
            .ok_or_else(|| spec_error(&function, "kind generic needs vknf.io/abi"))?;
        let abi =
            GenericAbi::parse(json, model.map_or(0, <[u8]>::len)).map_err(|e| spec_error(&function, e.to_string()))?;
        let deadline = kernel_deadline(spec)
            .map_err(|e| spec_error(&function, e.to_string()))?
            .unwrap_or(crate::forest::BATCH_DEADLINE);
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
            .map(|o| OutputInfo {
                name: o.name.clone(),
                dtype: o.dtype,
                width: o.width,
                on_request: o.on_request,
            })
            .collect();
        let info = FunctionInfo {
            input: InputInfo {
                name: "input".to_owned(),
                dtype: abi.input.dtype,
                width: abi.input.width,
            },
            outputs,
            max_batch_rows: spec.max_batch_rows.unwrap_or(DEFAULT_MAX_BATCH_ROWS),
            accepts_non_finite: abi.accepts_nan,
            parameters: Default::default(),
        };
        Ok(GpuGenericFunction {
            device: device.clone(),
            pipeline,
            abi,
            resident,
            info,
            deadline,
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
                (rows * self.info.input.width.max(1) * 4) as u64,
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
            rows: 0,
            widths: self.abi.outputs.iter().map(|o| o.width * o.dtype.size()).collect(),
            bind_group,
            pipeline: self.pipeline.clone(),
            stream,
            list: None,
            recorded_rows: None,
            push_size: self.pipeline.info().push_constant_size as usize,
            row_count_offset: self.abi.row_count.push_constant_offset as usize,
            deadline: self.deadline,
        }))
    }
}

struct GpuGenericLane {
    capacity_rows: usize,
    deadline: std::time::Duration,
    input: vknf_vulkan::Buffer,
    outputs: Vec<vknf_vulkan::Buffer>,
    /// Bytes per row of each output.
    widths: Vec<usize>,
    /// Rows of the last finished batch.
    rows: usize,
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

    fn write_input(&mut self, write: &mut dyn FnMut(&mut [u8])) -> Result<(), ExecError> {
        let mut input = self.input.map::<u8>().map_err(vulkan_error)?;
        write(&mut input);
        Ok(())
    }

    fn input_read_by_device(&self) -> bool {
        true
    }

    fn run(&mut self, n_rows: usize, _mask: u32) -> Result<(), ExecError> {
        if n_rows == 0 || n_rows > self.capacity_rows {
            return Err(ExecError::InvalidBatch(format!(
                "{n_rows} rows: a lane takes 1 to {}",
                self.capacity_rows
            )));
        }
        self.rows = 0;
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
        self.stream.run(list, self.deadline).map_err(vulkan_error)?;
        self.rows = n_rows;
        Ok(())
    }

    fn read_output(&self, index: usize, first_row: usize, dst: &mut [u8]) -> Result<(), ExecError> {
        let (Some(buffer), Some(width)) = (self.outputs.get(index), self.widths.get(index)) else {
            return Err(ExecError::InvalidBatch(format!("the kernel has no output {index}")));
        };
        if dst.len() % width != 0 || first_row + dst.len() / width > self.rows {
            return Err(ExecError::InvalidBatch(format!(
                "{} bytes from row {first_row} are outside the last batch of {} rows",
                dst.len(),
                self.rows
            )));
        }
        buffer.read((first_row * width) as u64, dst).map_err(vulkan_error)
    }
}
