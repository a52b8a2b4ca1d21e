//! The drill function: `busy_rows.comp` (vknf-kernels) wired as a generic function whose rows are
//! numbers of generator steps, so that a test or a soak can make a kernel run as long as it likes
//! (and miss its deadline on purpose).

use vknf_functions::DType;
use vknf_functions::families::generic::{AbiInput, AbiOutput, AbiRowCount, BindingRef, GenericAbi};

/// The generic ABI of `busy_rows.comp`: one u32 input (steps) and one u32 output per row.
pub fn busy_abi() -> GenericAbi {
    let at = |binding| BindingRef { set: 0, binding };
    GenericAbi {
        input: AbiInput {
            at: at(0),
            width: 1,
            dtype: DType::U32,
        },
        resident: vec![],
        outputs: vec![AbiOutput {
            at: at(1),
            name: "value".into(),
            dtype: DType::U32,
            width: 1,
            on_request: false,
        }],
        row_count: AbiRowCount {
            push_constant_offset: 0,
        },
        accepts_nan: false,
    }
}

/// What `busy_rows` computes for row `row` of `steps` steps.
pub fn busy_reference(row: u32, steps: u32) -> u32 {
    (0..steps).fold(row, |value, _| {
        value.wrapping_mul(1_664_525).wrapping_add(1_013_904_223)
    })
}
