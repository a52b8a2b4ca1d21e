//! Kernels (validated, reflected SPIR-V), compute pipelines specialised from them, and bind groups
//! (descriptor sets created once and reused for every dispatch).

use std::collections::BTreeMap;
use std::sync::Arc;

use ash::vk;
use serde::Serialize;

use crate::device::{Device, DeviceShared};
use crate::error::{Error, Result, VkResultExt};
use crate::memory::Buffer;
use crate::reflect::{BindingKind, KernelInfo, SpecValue, WorkgroupDim};
use crate::validate;

/// A compute kernel: SPIR-V that passed the Khronos validator for the device's environment, with its
/// reflected interface.
#[derive(Clone)]
pub struct Kernel {
    words: Arc<Vec<u32>>,
    info: Arc<KernelInfo>,
}

impl Kernel {
    /// Validates `spirv` for `device`'s Vulkan version and reflects `entry_point`.
    pub fn new(device: &Device, spirv: &[u8], entry_point: &str) -> Result<Kernel> {
        let words = validate::words_from_bytes(spirv)?;
        validate::validate(&words, device.shared.spirv_env)?;
        let info = crate::reflect::reflect(&words, entry_point)?;
        Ok(Kernel {
            words: Arc::new(words),
            info: Arc::new(info),
        })
    }

    /// The reflected interface.
    pub fn info(&self) -> &KernelInfo {
        &self.info
    }
}

/// Specialization-constant values, set by id or by name.
#[derive(Debug, Clone, Default)]
pub struct Specialization {
    by_id: BTreeMap<u32, SpecValue>,
    by_name: BTreeMap<String, SpecValue>,
}

impl Specialization {
    /// No overrides: the module's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the constant with `constant_id = id`.
    pub fn id(mut self, id: u32, value: impl Into<SpecValue>) -> Self {
        self.by_id.insert(id, value.into());
        self
    }

    /// Sets the constant called `name` in the source.
    pub fn name(mut self, name: &str, value: impl Into<SpecValue>) -> Self {
        self.by_name.insert(name.to_string(), value.into());
        self
    }

    /// Resolves names and types against a kernel: every constant must exist and the value must convert
    /// to its type without loss.
    fn resolve(&self, info: &KernelInfo) -> Result<BTreeMap<u32, SpecValue>> {
        let declared = || {
            info.spec_constants
                .iter()
                .map(|s| format!("{}={}", s.id, s.name.as_deref().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Every constant is passed explicitly, defaults included: some drivers (lavapipe) otherwise
        // reuse a pipeline specialised differently by another device of the process.
        let mut resolved: BTreeMap<u32, SpecValue> = info.spec_constants.iter().map(|s| (s.id, s.default)).collect();
        let named = self.by_name.iter().map(|(name, value)| {
            info.spec_constant(name)
                .map(|s| (s, *value))
                .ok_or_else(|| Error::SpecConstant {
                    name: name.clone(),
                    problem: format!("not declared by the kernel (declared: {})", declared()),
                })
        });
        let by_id = self.by_id.iter().map(|(id, value)| {
            info.spec_constants
                .iter()
                .find(|s| s.id == *id)
                .map(|s| (s, *value))
                .ok_or_else(|| Error::SpecConstant {
                    name: id.to_string(),
                    problem: format!("not declared by the kernel (declared: {})", declared()),
                })
        });
        for entry in named.chain(by_id) {
            let (spec, value) = entry?;
            let value = value.coerce(spec.ty).ok_or_else(|| Error::SpecConstant {
                name: spec.name.clone().unwrap_or_else(|| spec.id.to_string()),
                problem: format!("value {value:?} does not fit its type {:?}", spec.ty),
            })?;
            resolved.insert(spec.id, value);
        }
        Ok(resolved)
    }
}

/// A compute pipeline: a kernel specialised for one device.
#[derive(Clone)]
pub struct Pipeline {
    pub(crate) inner: Arc<PipelineInner>,
}

pub(crate) struct PipelineInner {
    pub(crate) device: Arc<DeviceShared>,
    pub(crate) raw: vk::Pipeline,
    pub(crate) layout: vk::PipelineLayout,
    set_layouts: Vec<vk::DescriptorSetLayout>,
    info: Arc<KernelInfo>,
    workgroup_size: [u32; 3],
    specialization: BTreeMap<u32, SpecValue>,
}

impl Device {
    /// Builds a compute pipeline from `kernel` with `specialization` applied. Uses (and fills) the
    /// device's on-disk pipeline cache.
    pub fn create_pipeline(&self, kernel: &Kernel, specialization: &Specialization) -> Result<Pipeline> {
        let shared = &self.shared;
        shared.check_lost()?;
        let info = kernel.info.clone();
        let specialization = specialization.resolve(&info)?;
        let workgroup_size = info.workgroup_size.map(|WorkgroupDim { size, spec_id }| {
            spec_id
                .and_then(|id| specialization.get(&id))
                .map_or(size, |v| v.bits())
        });
        let limits = &shared.info;
        let invocations = workgroup_size.iter().map(|&d| d as u64).product::<u64>();
        if workgroup_size.contains(&0)
            || invocations > limits.max_workgroup_invocations as u64
            || workgroup_size
                .iter()
                .zip(limits.max_workgroup_size)
                .any(|(&d, max)| d > max)
        {
            return Err(Error::Reflection(format!(
                "workgroup size {workgroup_size:?} exceeds the device's limits ({:?}, {} invocations)",
                limits.max_workgroup_size, limits.max_workgroup_invocations
            )));
        }
        if info.push_constant_size > limits.max_push_constants_size {
            return Err(Error::PushConstants(format!(
                "{} bytes exceed the device's {} bytes",
                info.push_constant_size, limits.max_push_constants_size
            )));
        }

        let mut created = Created::new(shared);
        let max_set = info.bindings.iter().map(|b| b.set + 1).max().unwrap_or(0);
        for set in 0..max_set {
            let bindings: Vec<vk::DescriptorSetLayoutBinding> = info
                .bindings
                .iter()
                .filter(|b| b.set == set)
                .map(|b| {
                    vk::DescriptorSetLayoutBinding::default()
                        .binding(b.binding)
                        .descriptor_type(descriptor_type(b.kind))
                        .descriptor_count(1)
                        .stage_flags(vk::ShaderStageFlags::COMPUTE)
                })
                .collect();
            let create_info = vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings);
            // SAFETY: valid create info; destroyed with the pipeline or on failure by `Created`.
            let layout = unsafe { shared.raw.create_descriptor_set_layout(&create_info, None) }
                .call("vkCreateDescriptorSetLayout")?;
            created.set_layouts.push(layout);
        }
        let push_ranges = [vk::PushConstantRange::default()
            .stage_flags(vk::ShaderStageFlags::COMPUTE)
            .offset(0)
            .size(info.push_constant_size)];
        let layout_info = vk::PipelineLayoutCreateInfo::default()
            .set_layouts(&created.set_layouts)
            .push_constant_ranges(if info.push_constant_size > 0 {
                &push_ranges[..]
            } else {
                &[]
            });
        // SAFETY: the set layouts are live.
        created.layout =
            unsafe { shared.raw.create_pipeline_layout(&layout_info, None) }.call("vkCreatePipelineLayout")?;

        let module_info = vk::ShaderModuleCreateInfo::default().code(&kernel.words);
        // SAFETY: the words passed the Khronos validator for this device's environment.
        let module = unsafe { shared.raw.create_shader_module(&module_info, None) }.call("vkCreateShaderModule")?;
        let entries: Vec<vk::SpecializationMapEntry> = specialization
            .keys()
            .enumerate()
            .map(|(i, id)| {
                vk::SpecializationMapEntry::default()
                    .constant_id(*id)
                    .offset(4 * i as u32)
                    .size(4)
            })
            .collect();
        let data: Vec<u8> = specialization.values().flat_map(|v| v.bits().to_le_bytes()).collect();
        let spec_info = vk::SpecializationInfo::default().map_entries(&entries).data(&data);
        let entry_name = std::ffi::CString::new(info.entry_point.as_str())
            .map_err(|_| Error::Reflection("entry point name contains NUL".into()))?;
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(&entry_name)
            .specialization_info(&spec_info);
        let flags = match shared.pipeline_statistics {
            Some(_) => vk::PipelineCreateFlags::CAPTURE_STATISTICS_KHR,
            None => vk::PipelineCreateFlags::empty(),
        };
        let pipeline_info = vk::ComputePipelineCreateInfo::default()
            .flags(flags)
            .stage(stage)
            .layout(created.layout);
        // SAFETY: module, layout and cache are live; the specialization data outlives the call.
        let result = unsafe {
            shared
                .raw
                .create_compute_pipelines(shared.pipeline_cache.raw, &[pipeline_info], None)
        };
        // SAFETY: a shader module may be destroyed once pipelines are created from it.
        unsafe { shared.raw.destroy_shader_module(module, None) };
        let raw = result.map_err(|(_, r)| Error::vk("vkCreateComputePipelines", r))?[0];
        let (set_layouts, layout) = created.release();
        Ok(Pipeline {
            inner: Arc::new(PipelineInner {
                device: shared.clone(),
                raw,
                layout,
                set_layouts,
                info,
                workgroup_size,
                specialization,
            }),
        })
    }
}

/// Objects created on the way to a pipeline, destroyed again if a later step fails.
struct Created<'a> {
    device: &'a DeviceShared,
    set_layouts: Vec<vk::DescriptorSetLayout>,
    layout: vk::PipelineLayout,
}

impl<'a> Created<'a> {
    fn new(device: &'a DeviceShared) -> Self {
        Created {
            device,
            set_layouts: Vec::new(),
            layout: vk::PipelineLayout::null(),
        }
    }

    fn release(mut self) -> (Vec<vk::DescriptorSetLayout>, vk::PipelineLayout) {
        let layouts = std::mem::take(&mut self.set_layouts);
        let layout = std::mem::replace(&mut self.layout, vk::PipelineLayout::null());
        (layouts, layout)
    }
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        // SAFETY: these objects were created here and nothing uses them yet.
        unsafe {
            if self.layout != vk::PipelineLayout::null() {
                self.device.raw.destroy_pipeline_layout(self.layout, None);
            }
            for layout in &self.set_layouts {
                self.device.raw.destroy_descriptor_set_layout(*layout, None);
            }
        }
    }
}

fn descriptor_type(kind: BindingKind) -> vk::DescriptorType {
    match kind {
        BindingKind::StorageBuffer => vk::DescriptorType::STORAGE_BUFFER,
        BindingKind::UniformBuffer => vk::DescriptorType::UNIFORM_BUFFER,
    }
}

/// One figure a driver reports about a compiled pipeline (`VK_KHR_pipeline_executable_properties`):
/// NVIDIA's "Register Count", for one, sets how many threads a multiprocessor holds at once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineStatistic {
    /// The compiled executable it describes, as the driver names it (a compute pipeline has one).
    pub executable: String,
    /// The statistic's name, as the driver gives it.
    pub name: String,
    /// What the driver says it counts.
    pub description: String,
    /// Its value.
    pub value: StatisticValue,
}

/// The value of a [`PipelineStatistic`], in the format the driver gives it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StatisticValue {
    /// A yes or no.
    Bool(bool),
    /// A signed count.
    Int(i64),
    /// An unsigned count.
    Uint(u64),
    /// A measure.
    Float(f64),
}

impl std::fmt::Display for StatisticValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatisticValue::Bool(value) => write!(f, "{value}"),
            StatisticValue::Int(value) => write!(f, "{value}"),
            StatisticValue::Uint(value) => write!(f, "{value}"),
            StatisticValue::Float(value) => write!(f, "{value}"),
        }
    }
}

/// A statistic's value read as its `format` says, or `None` for a format this runtime does not know.
fn statistic_value(
    format: vk::PipelineExecutableStatisticFormatKHR,
    value: vk::PipelineExecutableStatisticValueKHR,
) -> Option<StatisticValue> {
    // SAFETY: each arm reads the union member its format names, as the extension specifies the driver
    // fills it; every member is plain data of at most 8 bytes.
    unsafe {
        match format {
            vk::PipelineExecutableStatisticFormatKHR::BOOL32 => Some(StatisticValue::Bool(value.b32 != vk::FALSE)),
            vk::PipelineExecutableStatisticFormatKHR::INT64 => Some(StatisticValue::Int(value.i64)),
            vk::PipelineExecutableStatisticFormatKHR::UINT64 => Some(StatisticValue::Uint(value.u64)),
            vk::PipelineExecutableStatisticFormatKHR::FLOAT64 => Some(StatisticValue::Float(value.f64)),
            _ => None,
        }
    }
}

/// A fixed-size, NUL-terminated string of the driver's, up to its NUL (lossy).
fn driver_text(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Pipeline {
    /// What the driver reports about this pipeline's compiled code (registers a thread, ...), where the
    /// instance asked for it ([`crate::InstanceOptions::pipeline_statistics`]) and the driver offers
    /// it; empty otherwise.
    pub fn statistics(&self) -> Result<Vec<PipelineStatistic>> {
        let inner = &self.inner;
        let Some(reader) = &inner.device.pipeline_statistics else {
            return Ok(Vec::new());
        };
        let pipeline_info = vk::PipelineInfoKHR::default().pipeline(inner.raw);
        // SAFETY: the pipeline is live (this handle keeps it) and was created with
        // CAPTURE_STATISTICS on a device with pipelineExecutableInfo enabled (`reader` exists only then).
        let executables = unsafe { reader.get_pipeline_executable_properties(&pipeline_info) }
            .call("vkGetPipelineExecutablePropertiesKHR")?;
        let mut statistics = Vec::new();
        for (index, executable) in executables.iter().enumerate() {
            let executable_name = driver_text(&executable.name);
            let executable_info = vk::PipelineExecutableInfoKHR::default()
                .pipeline(inner.raw)
                .executable_index(index as u32);
            // SAFETY: as above; `index` is below the executable count the driver just returned.
            let found = unsafe { reader.get_pipeline_executable_statistics(&executable_info) }
                .call("vkGetPipelineExecutableStatisticsKHR")?;
            for statistic in found {
                // A format this runtime does not know is left out rather than guessed at.
                let Some(value) = statistic_value(statistic.format, statistic.value) else {
                    continue;
                };
                statistics.push(PipelineStatistic {
                    executable: executable_name.clone(),
                    name: driver_text(&statistic.name),
                    description: driver_text(&statistic.description),
                    value,
                });
            }
        }
        Ok(statistics)
    }

    /// The kernel's reflected interface.
    pub fn info(&self) -> &KernelInfo {
        &self.inner.info
    }

    /// Workgroup size after specialization.
    pub fn workgroup_size(&self) -> [u32; 3] {
        self.inner.workgroup_size
    }

    /// The value a specialization constant has in this pipeline (override or default).
    pub fn spec_value(&self, id: u32) -> Option<SpecValue> {
        self.inner.specialization.get(&id).copied().or_else(|| {
            self.inner
                .info
                .spec_constants
                .iter()
                .find(|s| s.id == id)
                .map(|s| s.default)
        })
    }

    /// Workgroups needed to cover `invocations` along x (rounding up).
    pub fn groups_for(&self, invocations: u64) -> u32 {
        invocations.div_ceil(self.inner.workgroup_size[0] as u64).max(1) as u32
    }

    /// Creates the descriptor sets binding `buffers` (`(binding, buffer)` pairs for set 0; use
    /// [`Pipeline::bind_sets`] for several sets). Every declared binding must be given exactly once.
    pub fn bind(&self, buffers: &[(u32, &Buffer)]) -> Result<BindGroup> {
        let with_set: Vec<(u32, u32, &Buffer)> = buffers.iter().map(|(b, buf)| (0, *b, *buf)).collect();
        self.bind_sets(&with_set)
    }

    /// Creates descriptor sets from `(set, binding, buffer)` triples.
    pub fn bind_sets(&self, buffers: &[(u32, u32, &Buffer)]) -> Result<BindGroup> {
        let inner = &self.inner;
        let device = &inner.device;
        device.check_lost()?;
        for (set, binding, buffer) in buffers {
            let declared = inner
                .info
                .bindings
                .iter()
                .find(|b| b.set == *set && b.binding == *binding);
            let Some(declared) = declared else {
                return Err(Error::Binding(format!(
                    "the kernel declares no binding {set}.{binding} (declared: {})",
                    self.declared_bindings()
                )));
            };
            if buffer.size() < declared.min_size {
                return Err(Error::Binding(format!(
                    "buffer {:?} ({} bytes) is smaller than binding {set}.{binding} needs ({} bytes)",
                    buffer.name(),
                    buffer.size(),
                    declared.min_size
                )));
            }
            if !Arc::ptr_eq(&buffer.inner.device, device) {
                return Err(Error::Binding(format!(
                    "buffer {:?} belongs to another device",
                    buffer.name()
                )));
            }
        }
        for declared in &inner.info.bindings {
            let count = buffers
                .iter()
                .filter(|(s, b, _)| *s == declared.set && *b == declared.binding)
                .count();
            if count != 1 {
                return Err(Error::Binding(format!(
                    "binding {}.{} ({}) must be given exactly once, got {count}",
                    declared.set,
                    declared.binding,
                    declared.name.as_deref().unwrap_or("unnamed")
                )));
            }
        }

        let storage = inner
            .info
            .bindings
            .iter()
            .filter(|b| b.kind == BindingKind::StorageBuffer)
            .count() as u32;
        let uniform = inner.info.bindings.len() as u32 - storage;
        let mut sizes = Vec::new();
        if storage > 0 {
            sizes.push(vk::DescriptorPoolSize {
                ty: vk::DescriptorType::STORAGE_BUFFER,
                descriptor_count: storage,
            });
        }
        if uniform > 0 {
            sizes.push(vk::DescriptorPoolSize {
                ty: vk::DescriptorType::UNIFORM_BUFFER,
                descriptor_count: uniform,
            });
        }
        let set_count = inner.set_layouts.len() as u32;
        let pool_info = vk::DescriptorPoolCreateInfo::default()
            .max_sets(set_count.max(1))
            .pool_sizes(&sizes);
        let pool = if set_count == 0 {
            vk::DescriptorPool::null()
        } else {
            // SAFETY: valid create info; destroyed with the bind group.
            unsafe { device.raw.create_descriptor_pool(&pool_info, None) }.call("vkCreateDescriptorPool")?
        };
        let sets = if set_count == 0 {
            Vec::new()
        } else {
            let alloc_info = vk::DescriptorSetAllocateInfo::default()
                .descriptor_pool(pool)
                .set_layouts(&inner.set_layouts);
            // SAFETY: the pool was sized for exactly these sets.
            match unsafe { device.raw.allocate_descriptor_sets(&alloc_info) } {
                Ok(sets) => sets,
                Err(result) => {
                    // SAFETY: nothing was allocated from the pool.
                    unsafe { device.raw.destroy_descriptor_pool(pool, None) };
                    return Err(Error::vk("vkAllocateDescriptorSets", result));
                }
            }
        };
        let buffer_infos: Vec<vk::DescriptorBufferInfo> = buffers
            .iter()
            .map(|(_, _, buffer)| {
                vk::DescriptorBufferInfo::default()
                    .buffer(buffer.inner.raw)
                    .offset(0)
                    .range(vk::WHOLE_SIZE)
            })
            .collect();
        let writes: Vec<vk::WriteDescriptorSet> = buffers
            .iter()
            .zip(&buffer_infos)
            .map(|((set, binding, _), info)| {
                let declared = inner
                    .info
                    .bindings
                    .iter()
                    .find(|b| b.set == *set && b.binding == *binding);
                let kind = declared.map_or(BindingKind::StorageBuffer, |b| b.kind);
                vk::WriteDescriptorSet::default()
                    .dst_set(sets[*set as usize])
                    .dst_binding(*binding)
                    .descriptor_type(descriptor_type(kind))
                    .buffer_info(std::slice::from_ref(info))
            })
            .collect();
        // SAFETY: sets and buffers are live; each write names a binding declared in the set's layout.
        unsafe { device.raw.update_descriptor_sets(&writes, &[]) };
        Ok(BindGroup {
            inner: Arc::new(BindGroupInner {
                device: device.clone(),
                pool,
                sets,
                _buffers: buffers.iter().map(|(_, _, b)| (*b).clone()).collect(),
                pipeline: self.clone(),
            }),
        })
    }

    fn declared_bindings(&self) -> String {
        self.inner
            .info
            .bindings
            .iter()
            .map(|b| format!("{}.{}", b.set, b.binding))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Drop for PipelineInner {
    fn drop(&mut self) {
        // SAFETY: the last handle is gone; command lists hold pipeline clones while they may run.
        unsafe {
            self.device.raw.destroy_pipeline(self.raw, None);
            self.device.raw.destroy_pipeline_layout(self.layout, None);
            for layout in &self.set_layouts {
                self.device.raw.destroy_descriptor_set_layout(*layout, None);
            }
        }
    }
}

/// Buffers bound to a pipeline's bindings: descriptor sets created once, reused by every dispatch.
#[derive(Clone)]
pub struct BindGroup {
    pub(crate) inner: Arc<BindGroupInner>,
}

pub(crate) struct BindGroupInner {
    device: Arc<DeviceShared>,
    pool: vk::DescriptorPool,
    pub(crate) sets: Vec<vk::DescriptorSet>,
    _buffers: Vec<Buffer>,
    pub(crate) pipeline: Pipeline,
}

impl Drop for BindGroupInner {
    fn drop(&mut self) {
        if self.pool != vk::DescriptorPool::null() {
            // SAFETY: the last handle is gone; command lists hold bind-group clones while they may run.
            unsafe { self.device.raw.destroy_descriptor_pool(self.pool, None) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistic_values_are_read_as_their_format_says() {
        let format = vk::PipelineExecutableStatisticFormatKHR::from_raw;
        let value = |u64: u64| vk::PipelineExecutableStatisticValueKHR { u64 };
        assert_eq!(statistic_value(format(0), value(1)), Some(StatisticValue::Bool(true)));
        assert_eq!(statistic_value(format(0), value(0)), Some(StatisticValue::Bool(false)));
        assert_eq!(
            statistic_value(format(1), value((-27i64) as u64)),
            Some(StatisticValue::Int(-27))
        );
        assert_eq!(statistic_value(format(2), value(27)), Some(StatisticValue::Uint(27)));
        assert_eq!(
            statistic_value(format(3), value(2.5f64.to_bits())),
            Some(StatisticValue::Float(2.5))
        );
        // A format from a later version of the extension is left out.
        assert_eq!(statistic_value(format(4), value(27)), None);
    }

    #[test]
    fn driver_text_ends_at_its_nul_or_its_array() {
        let text = |s: &[u8], len: usize| {
            let mut chars = vec![0 as std::ffi::c_char; len];
            for (c, b) in chars.iter_mut().zip(s) {
                *c = *b as std::ffi::c_char;
            }
            driver_text(&chars)
        };
        assert_eq!(text(b"Register Count", 256), "Register Count");
        assert_eq!(text(b"", 8), "");
        // No NUL: the whole array.
        assert_eq!(text(b"CSCSCSCS", 8), "CSCSCSCS");
        // Not UTF-8: replaced, not refused.
        assert_eq!(text(&[0x43, 0xff, 0x53], 4), "C\u{fffd}S");
    }
}
