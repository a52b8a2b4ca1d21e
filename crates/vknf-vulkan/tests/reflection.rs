//! Reflection of every test kernel matches what its GLSL declares.

mod common;

use common::Gpu;
use vknf_vulkan::reflect::WorkgroupDim;
use vknf_vulkan::{Access, BindingKind, Kernel, SpecType, SpecValue};

#[test]
fn add_kernel_interface() {
    let gpu = Gpu::new();
    assert!(gpu.instance.validation_enabled());
    let info = Kernel::new(&gpu.device, vknf_kernels::ADD, "main")
        .unwrap()
        .info()
        .clone();
    assert_eq!(info.entry_point, "main");
    assert_eq!(
        info.workgroup_size[0],
        WorkgroupDim {
            size: 64,
            spec_id: Some(0)
        }
    );
    assert_eq!(info.workgroup_size[1].size, 1);
    let summary: Vec<(u32, u32, BindingKind, Access)> = info
        .bindings
        .iter()
        .map(|b| (b.set, b.binding, b.kind, b.access))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, 0, BindingKind::StorageBuffer, Access::ReadOnly),
            (0, 1, BindingKind::StorageBuffer, Access::ReadOnly),
            (0, 2, BindingKind::StorageBuffer, Access::WriteOnly),
        ]
    );
    assert_eq!(info.push_constant_size, 4);
    assert_eq!(info.push_constant_field("n").map(|f| (f.offset, f.size)), Some((0, 4)));
    assert_eq!(info.spec_constants.len(), 1);
    let wg = &info.spec_constants[0];
    assert_eq!(
        (wg.id, wg.name.as_deref(), wg.ty, wg.default),
        (0, Some("WORKGROUP_SIZE"), SpecType::U32, SpecValue::U32(64))
    );
}

#[test]
fn saxpy_kernel_interface() {
    let gpu = Gpu::new();
    let info = Kernel::new(&gpu.device, vknf_kernels::SAXPY_SPEC, "main")
        .unwrap()
        .info()
        .clone();
    assert_eq!(
        info.workgroup_size[0],
        WorkgroupDim {
            size: 32,
            spec_id: Some(0)
        }
    );
    assert_eq!(info.bindings.len(), 2);
    assert_eq!(info.bindings[1].access, Access::ReadWrite);
    assert_eq!(info.push_constant_size, 12);
    let fields: Vec<(Option<&str>, u32)> = info
        .push_constant_fields
        .iter()
        .map(|f| (f.name.as_deref(), f.offset))
        .collect();
    assert_eq!(fields, vec![(Some("alpha"), 0), (Some("n"), 4), (Some("offset"), 8)]);
    let specs: Vec<(u32, Option<&str>, SpecType, SpecValue)> = info
        .spec_constants
        .iter()
        .map(|s| (s.id, s.name.as_deref(), s.ty, s.default))
        .collect();
    assert_eq!(
        specs,
        vec![
            (0, Some("WORKGROUP_SIZE"), SpecType::U32, SpecValue::U32(32)),
            (1, Some("SCALE"), SpecType::F32, SpecValue::F32(1.0)),
            (2, Some("NEGATE"), SpecType::Bool, SpecValue::Bool(false)),
        ]
    );
}

#[test]
fn reduce_and_spin_kernel_interfaces() {
    let gpu = Gpu::new();
    let reduce = Kernel::new(&gpu.device, vknf_kernels::REDUCE_SUM, "main")
        .unwrap()
        .info()
        .clone();
    assert_eq!(reduce.workgroup_size.map(|d| d.size), [128, 1, 1]);
    assert_eq!(reduce.workgroup_size[0].spec_id, None);
    assert!(reduce.spec_constants.is_empty());
    assert_eq!(
        reduce.bindings.iter().map(|b| b.access).collect::<Vec<_>>(),
        vec![Access::ReadOnly, Access::ReadWrite]
    );
    assert_eq!(reduce.bindings[1].min_size, 4);
    let empty = Kernel::new(&gpu.device, vknf_kernels::EMPTY, "main")
        .unwrap()
        .info()
        .clone();
    assert!(empty.bindings.is_empty() && empty.push_constant_size == 0);
    let err = Kernel::new(&gpu.device, vknf_kernels::EMPTY, "other").err().unwrap();
    assert!(err.to_string().contains("\"main\""), "{err}");
}

#[test]
fn duplicate_spec_ids_resolve_to_the_declared_default_every_time() {
    // glslang emits a second constant (default 1) for `local_size_x_id = 0` beside `WORKGROUP_SIZE = 64`;
    // reflection must settle on the declared one deterministically.
    let gpu = Gpu::new();
    for _ in 0..50 {
        let info = Kernel::new(&gpu.device, vknf_kernels::ADD, "main")
            .unwrap()
            .info()
            .clone();
        assert_eq!(
            info.workgroup_size[0],
            WorkgroupDim {
                size: 64,
                spec_id: Some(0)
            }
        );
        assert_eq!(info.spec_constants.len(), 1);
        assert_eq!(info.spec_constants[0].default, SpecValue::U32(64));
    }
}
