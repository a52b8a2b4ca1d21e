//! What a kernel declares, read from its SPIR-V: descriptor bindings, the push-constant block,
//! specialization constants (with their defaults) and the workgroup size. Callers never describe a
//! layout by hand.

use std::collections::HashMap;

use serde::Serialize;
use spirq::prelude::{ReflectConfig, Variable};
use spirq::ty::{AccessType, DescriptorType, ScalarType, Type};

use crate::error::{Error, Result};

/// How a kernel accesses a buffer binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Declared `readonly`.
    ReadOnly,
    /// Declared `writeonly`.
    WriteOnly,
    /// Read and written.
    ReadWrite,
}

/// The descriptor type of a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BindingKind {
    /// A storage buffer (SSBO).
    StorageBuffer,
    /// A uniform buffer (UBO).
    UniformBuffer,
}

/// One descriptor binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindingInfo {
    /// Descriptor set.
    pub set: u32,
    /// Binding number.
    pub binding: u32,
    /// Variable name in the source, when the module kept debug names.
    pub name: Option<String>,
    /// Descriptor type.
    pub kind: BindingKind,
    /// Access as declared.
    pub access: Access,
    /// Bytes of the fixed part of the block (a runtime array adds nothing).
    pub min_size: u64,
}

/// One member of the push-constant block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushConstantField {
    /// Member name, when the module kept debug names.
    pub name: Option<String>,
    /// Byte offset in the block.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// The scalar type of a specialization constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpecType {
    /// `bool`.
    Bool,
    /// 32-bit unsigned.
    U32,
    /// 32-bit signed.
    I32,
    /// 32-bit float.
    F32,
}

/// A specialization-constant value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SpecValue {
    /// Boolean.
    Bool(bool),
    /// Unsigned.
    U32(u32),
    /// Signed.
    I32(i32),
    /// Float.
    F32(f32),
}

impl SpecValue {
    /// The 32 bits Vulkan expects for this value.
    pub(crate) fn bits(self) -> u32 {
        match self {
            SpecValue::Bool(b) => b as u32,
            SpecValue::U32(v) => v,
            SpecValue::I32(v) => v as u32,
            SpecValue::F32(v) => v.to_bits(),
        }
    }

    fn from_bits(ty: SpecType, bits: u32) -> SpecValue {
        match ty {
            SpecType::Bool => SpecValue::Bool(bits != 0),
            SpecType::U32 => SpecValue::U32(bits),
            SpecType::I32 => SpecValue::I32(bits as i32),
            SpecType::F32 => SpecValue::F32(f32::from_bits(bits)),
        }
    }

    /// Converts to `ty`, refusing lossy conversions.
    pub(crate) fn coerce(self, ty: SpecType) -> Option<SpecValue> {
        match (self, ty) {
            (SpecValue::Bool(b), SpecType::Bool) => Some(SpecValue::Bool(b)),
            (SpecValue::U32(v), SpecType::U32) => Some(SpecValue::U32(v)),
            (SpecValue::U32(v), SpecType::I32) => i32::try_from(v).ok().map(SpecValue::I32),
            (SpecValue::U32(v), SpecType::F32) => Some(SpecValue::F32(v as f32)),
            (SpecValue::I32(v), SpecType::I32) => Some(SpecValue::I32(v)),
            (SpecValue::I32(v), SpecType::U32) => u32::try_from(v).ok().map(SpecValue::U32),
            (SpecValue::I32(v), SpecType::F32) => Some(SpecValue::F32(v as f32)),
            (SpecValue::F32(v), SpecType::F32) => Some(SpecValue::F32(v)),
            _ => None,
        }
    }
}

impl From<u32> for SpecValue {
    fn from(v: u32) -> Self {
        SpecValue::U32(v)
    }
}
impl From<i32> for SpecValue {
    fn from(v: i32) -> Self {
        SpecValue::I32(v)
    }
}
impl From<f32> for SpecValue {
    fn from(v: f32) -> Self {
        SpecValue::F32(v)
    }
}
impl From<bool> for SpecValue {
    fn from(v: bool) -> Self {
        SpecValue::Bool(v)
    }
}

/// One specialization constant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpecConstantInfo {
    /// `constant_id`.
    pub id: u32,
    /// Name in the source, when the module kept debug names.
    pub name: Option<String>,
    /// Type.
    pub ty: SpecType,
    /// Default value from the module.
    pub default: SpecValue,
}

/// One axis of the workgroup size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WorkgroupDim {
    /// Size with default specialization.
    pub size: u32,
    /// The specialization constant that sets it, if any (`local_size_x_id`).
    pub spec_id: Option<u32>,
}

/// Everything reflected from one entry point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelInfo {
    /// Entry point name.
    pub entry_point: String,
    /// Workgroup size per axis.
    pub workgroup_size: [WorkgroupDim; 3],
    /// Descriptor bindings, sorted by (set, binding).
    pub bindings: Vec<BindingInfo>,
    /// Size of the push-constant block in bytes (0: none).
    pub push_constant_size: u32,
    /// Members of the push-constant block.
    pub push_constant_fields: Vec<PushConstantField>,
    /// Specialization constants, sorted by id.
    pub spec_constants: Vec<SpecConstantInfo>,
}

impl KernelInfo {
    /// Looks a specialization constant up by name.
    pub fn spec_constant(&self, name: &str) -> Option<&SpecConstantInfo> {
        self.spec_constants.iter().find(|s| s.name.as_deref() == Some(name))
    }

    /// Looks a push-constant member up by name.
    pub fn push_constant_field(&self, name: &str) -> Option<&PushConstantField> {
        self.push_constant_fields
            .iter()
            .find(|f| f.name.as_deref() == Some(name))
    }

    /// Looks a binding up by its variable or block name.
    pub fn binding_named(&self, name: &str) -> Option<&BindingInfo> {
        self.bindings.iter().find(|b| b.name.as_deref() == Some(name))
    }
}

fn scalar_spec_type(ty: &Type) -> Option<SpecType> {
    match ty {
        Type::Scalar(ScalarType::Boolean) => Some(SpecType::Bool),
        Type::Scalar(ScalarType::Integer {
            bits: 32,
            is_signed: false,
        }) => Some(SpecType::U32),
        Type::Scalar(ScalarType::Integer {
            bits: 32,
            is_signed: true,
        }) => Some(SpecType::I32),
        Type::Scalar(ScalarType::Float { bits: 32 }) => Some(SpecType::F32),
        _ => None,
    }
}

/// Reflects `entry_point` of a module (already validated).
pub fn reflect(words: &[u32], entry_point: &str) -> Result<KernelInfo> {
    let entry_points = ReflectConfig::new()
        .spv(words)
        .ref_all_rscs(false)
        .reflect()
        .map_err(|err| Error::Reflection(err.to_string()))?;
    let entry = entry_points.iter().find(|e| e.name == entry_point).ok_or_else(|| {
        let names: Vec<&str> = entry_points.iter().map(|e| e.name.as_str()).collect();
        Error::Reflection(format!(
            "entry point {entry_point:?} not found; the module has {names:?}"
        ))
    })?;
    if entry.exec_model != spirq::spirv::ExecutionModel::GLCompute {
        return Err(Error::Reflection(format!(
            "entry point {entry_point:?} is a {:?} shader, not a compute kernel",
            entry.exec_model
        )));
    }
    let module = ModuleScan::new(words)?;

    let mut bindings = Vec::new();
    let mut push_constant_size = 0;
    let mut push_constant_fields = Vec::new();
    let mut spec_constants = Vec::new();
    for var in &entry.vars {
        match var {
            Variable::Descriptor {
                name,
                desc_bind,
                desc_ty,
                ty,
                nbind,
            } => {
                let (kind, access) = match desc_ty {
                    DescriptorType::StorageBuffer(access) => (
                        BindingKind::StorageBuffer,
                        match access {
                            AccessType::ReadOnly => Access::ReadOnly,
                            AccessType::WriteOnly => Access::WriteOnly,
                            AccessType::ReadWrite => Access::ReadWrite,
                        },
                    ),
                    DescriptorType::UniformBuffer() => (BindingKind::UniformBuffer, Access::ReadOnly),
                    other => {
                        return Err(Error::Reflection(format!(
                            "binding {}.{} is a {other:?}; vknf kernels use storage and uniform buffers only",
                            desc_bind.set(),
                            desc_bind.bind()
                        )));
                    }
                };
                if *nbind != 1 {
                    return Err(Error::Reflection(format!(
                        "binding {}.{} is an array of descriptors; not supported",
                        desc_bind.set(),
                        desc_bind.bind()
                    )));
                }
                bindings.push(BindingInfo {
                    set: desc_bind.set(),
                    binding: desc_bind.bind(),
                    name: name.clone().or_else(|| match ty {
                        Type::Struct(block) => block.name().map(str::to_string),
                        _ => None,
                    }),
                    kind,
                    access,
                    min_size: ty.nbyte().unwrap_or(0) as u64,
                });
            }
            Variable::PushConstant { ty, .. } => {
                if let Type::Struct(block) = ty {
                    for member in &block.members {
                        let size = member.ty.nbyte().unwrap_or(0) as u32;
                        let offset = member.offset.unwrap_or(0) as u32;
                        push_constant_size = push_constant_size.max(offset + size);
                        push_constant_fields.push(PushConstantField {
                            name: member.name.clone(),
                            offset,
                            size,
                        });
                    }
                } else {
                    push_constant_size = ty.nbyte().unwrap_or(0) as u32;
                }
            }
            Variable::SpecConstant { spec_id, .. }
                if spec_constants.iter().any(|s: &SpecConstantInfo| s.id == *spec_id) => {}
            Variable::SpecConstant { name, spec_id, ty } => {
                let spec_ty = scalar_spec_type(ty).ok_or_else(|| {
                    Error::Reflection(format!("specialization constant {spec_id} has unsupported type {ty:?}"))
                })?;
                let bits = module.spec_defaults.get(spec_id).copied().unwrap_or(0);
                spec_constants.push(SpecConstantInfo {
                    id: *spec_id,
                    name: module.spec_names.get(spec_id).cloned().or_else(|| name.clone()),
                    ty: spec_ty,
                    default: SpecValue::from_bits(spec_ty, bits),
                });
            }
            Variable::Input { .. } | Variable::Output { .. } => {}
        }
    }
    // Workgroup-size constants are folded into the WorkgroupSize built-in and may not be listed as
    // variables; add them from the scan so that they can be set by id.
    for (id, (ty, bits)) in &module.spec_typed_defaults {
        if !spec_constants.iter().any(|s| s.id == *id) {
            spec_constants.push(SpecConstantInfo {
                id: *id,
                name: module.spec_names.get(id).cloned(),
                ty: *ty,
                default: SpecValue::from_bits(*ty, *bits),
            });
        }
    }
    bindings.sort_by_key(|b| (b.set, b.binding));
    spec_constants.sort_by_key(|s| s.id);
    push_constant_fields.sort_by_key(|f| f.offset);
    let workgroup_size = module.workgroup_size(entry_point)?;
    Ok(KernelInfo {
        entry_point: entry_point.to_string(),
        workgroup_size,
        bindings,
        push_constant_size,
        push_constant_fields,
        spec_constants,
    })
}

/// A direct scan of the instructions spirq does not summarise: specialization-constant defaults and the
/// workgroup size (literal, `LocalSizeId`, or the `WorkgroupSize` built-in made of spec constants).
struct ModuleScan {
    spec_defaults: HashMap<u32, u32>,
    spec_typed_defaults: HashMap<u32, (SpecType, u32)>,
    spec_names: HashMap<u32, String>,
    local_size: HashMap<u32, [u32; 3]>,
    local_size_id: HashMap<u32, [u32; 3]>,
    entry_ids: HashMap<String, u32>,
    workgroup_builtin: Option<[u32; 3]>,
    // result id -> (spec id if decorated, type, bits)
    constants: HashMap<u32, (Option<u32>, SpecType, u32)>,
    // result ids of spec constants in module order, so that merging duplicates is deterministic
    spec_order: Vec<u32>,
}

impl ModuleScan {
    fn new(words: &[u32]) -> Result<ModuleScan> {
        const OP_NAME: u32 = 5;
        const OP_ENTRY_POINT: u32 = 15;
        const OP_EXECUTION_MODE: u32 = 16;
        const OP_TYPE_BOOL: u32 = 20;
        const OP_TYPE_INT: u32 = 21;
        const OP_TYPE_FLOAT: u32 = 22;
        const OP_CONSTANT: u32 = 43;
        const OP_SPEC_CONSTANT_TRUE: u32 = 48;
        const OP_SPEC_CONSTANT_FALSE: u32 = 49;
        const OP_SPEC_CONSTANT: u32 = 50;
        const OP_SPEC_CONSTANT_COMPOSITE: u32 = 51;
        const OP_DECORATE: u32 = 71;
        const OP_EXECUTION_MODE_ID: u32 = 331;
        const DECORATION_SPEC_ID: u32 = 1;
        const DECORATION_BUILTIN: u32 = 11;
        const BUILTIN_WORKGROUP_SIZE: u32 = 25;
        const MODE_LOCAL_SIZE: u32 = 17;
        const MODE_LOCAL_SIZE_ID: u32 = 38;

        let mut types: HashMap<u32, SpecType> = HashMap::new();
        let mut spec_ids: HashMap<u32, u32> = HashMap::new();
        let mut names: HashMap<u32, String> = HashMap::new();
        let mut builtin_target = None;
        let mut composites: HashMap<u32, [u32; 3]> = HashMap::new();
        let mut scan = ModuleScan {
            spec_defaults: HashMap::new(),
            spec_typed_defaults: HashMap::new(),
            spec_names: HashMap::new(),
            local_size: HashMap::new(),
            local_size_id: HashMap::new(),
            entry_ids: HashMap::new(),
            workgroup_builtin: None,
            constants: HashMap::new(),
            spec_order: Vec::new(),
        };
        let mut at = 5;
        while at < words.len() {
            let count = (words[at] >> 16) as usize;
            let opcode = words[at] & 0xffff;
            if count == 0 || at + count > words.len() {
                return Err(Error::InvalidSpirv(format!(
                    "instruction at word {at} overruns the module"
                )));
            }
            let ops = &words[at + 1..at + count];
            let string_at = |from: usize| -> String {
                let bytes: Vec<u8> = ops[from..]
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .take_while(|b| *b != 0)
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            };
            match opcode {
                OP_NAME if ops.len() >= 2 => {
                    names.insert(ops[0], string_at(1));
                }
                OP_ENTRY_POINT if ops.len() >= 3 => {
                    scan.entry_ids.insert(string_at(2), ops[1]);
                }
                OP_EXECUTION_MODE if ops.len() >= 5 && ops[1] == MODE_LOCAL_SIZE => {
                    scan.local_size.insert(ops[0], [ops[2], ops[3], ops[4]]);
                }
                OP_EXECUTION_MODE_ID if ops.len() >= 5 && ops[1] == MODE_LOCAL_SIZE_ID => {
                    scan.local_size_id.insert(ops[0], [ops[2], ops[3], ops[4]]);
                }
                OP_TYPE_BOOL if !ops.is_empty() => {
                    types.insert(ops[0], SpecType::Bool);
                }
                OP_TYPE_INT if ops.len() >= 3 && ops[1] == 32 => {
                    types.insert(ops[0], if ops[2] == 1 { SpecType::I32 } else { SpecType::U32 });
                }
                OP_TYPE_FLOAT if ops.len() >= 2 && ops[1] == 32 => {
                    types.insert(ops[0], SpecType::F32);
                }
                OP_DECORATE if ops.len() >= 3 && ops[1] == DECORATION_SPEC_ID => {
                    spec_ids.insert(ops[0], ops[2]);
                }
                OP_DECORATE if ops.len() >= 3 && ops[1] == DECORATION_BUILTIN && ops[2] == BUILTIN_WORKGROUP_SIZE => {
                    builtin_target = Some(ops[0]);
                }
                OP_CONSTANT | OP_SPEC_CONSTANT if ops.len() >= 3 => {
                    if let Some(ty) = types.get(&ops[0]) {
                        let spec_id = if opcode == OP_SPEC_CONSTANT {
                            spec_ids.get(&ops[1]).copied()
                        } else {
                            None
                        };
                        scan.constants.insert(ops[1], (spec_id, *ty, ops[2]));
                        if spec_id.is_some() {
                            scan.spec_order.push(ops[1]);
                        }
                    }
                }
                OP_SPEC_CONSTANT_TRUE | OP_SPEC_CONSTANT_FALSE if ops.len() >= 2 => {
                    let bits = (opcode == OP_SPEC_CONSTANT_TRUE) as u32;
                    scan.constants
                        .insert(ops[1], (spec_ids.get(&ops[1]).copied(), SpecType::Bool, bits));
                    if spec_ids.contains_key(&ops[1]) {
                        scan.spec_order.push(ops[1]);
                    }
                }
                OP_SPEC_CONSTANT_COMPOSITE if ops.len() >= 5 => {
                    composites.insert(ops[1], [ops[2], ops[3], ops[4]]);
                }
                _ => {}
            }
            at += count;
        }
        // glslang gives `local_size_x_id = N` its own constant (default 1) beside a declared
        // `constant_id = N` one (e.g. `WORKGROUP_SIZE = 64`). Both take the same value once specialised;
        // the runtime always specialises every id, so the declared (named) default is the one in force.
        for result_id in &scan.spec_order {
            let (Some(spec_id), ty, bits) = scan.constants[result_id] else {
                continue;
            };
            let name = names.get(result_id);
            if name.is_some() || !scan.spec_defaults.contains_key(&spec_id) {
                scan.spec_defaults.insert(spec_id, bits);
                scan.spec_typed_defaults.insert(spec_id, (ty, bits));
                if let Some(name) = name {
                    scan.spec_names.insert(spec_id, name.clone());
                }
            }
        }
        scan.workgroup_builtin = builtin_target.and_then(|id| composites.get(&id).copied());
        Ok(scan)
    }

    fn dim_of_constant(&self, id: u32) -> Option<WorkgroupDim> {
        self.constants.get(&id).map(|(spec_id, _, bits)| WorkgroupDim {
            size: spec_id
                .and_then(|s| self.spec_defaults.get(&s).copied())
                .unwrap_or(*bits),
            spec_id: *spec_id,
        })
    }

    fn workgroup_size(&self, entry_point: &str) -> Result<[WorkgroupDim; 3]> {
        let missing = || Error::Reflection(format!("entry point {entry_point:?} declares no workgroup size"));
        // The WorkgroupSize built-in overrides any LocalSize execution mode.
        if let Some(ids) = self.workgroup_builtin {
            let dims: Option<Vec<WorkgroupDim>> = ids.iter().map(|id| self.dim_of_constant(*id)).collect();
            if let Some(dims) = dims {
                return Ok([dims[0], dims[1], dims[2]]);
            }
        }
        let function = *self.entry_ids.get(entry_point).ok_or_else(missing)?;
        if let Some(ids) = self.local_size_id.get(&function) {
            let dims: Option<Vec<WorkgroupDim>> = ids.iter().map(|id| self.dim_of_constant(*id)).collect();
            let dims = dims.ok_or_else(missing)?;
            return Ok([dims[0], dims[1], dims[2]]);
        }
        let sizes = self.local_size.get(&function).ok_or_else(missing)?;
        Ok(sizes.map(|size| WorkgroupDim { size, spec_id: None }))
    }
}
