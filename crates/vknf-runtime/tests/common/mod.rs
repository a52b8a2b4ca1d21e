//! A family written for these tests (one module, one registration): an access-control list over
//! IPv4 flows on integer inputs, with the same semantics as the `acl_match` kernel, plus helpers.
#![allow(dead_code)]

use std::sync::Arc;

use vknf_functions::{
    DType, ExecError, Families, Family, Function, FunctionInfo, FunctionSpec, InputInfo, Lane, LoadError, OutputInfo,
    ParamError,
};

/// `(network, netmask, first port, last port)`.
pub type Rule = [u32; 4];

/// Index of the first rule matching `(address, port)`, or -1; and the address's /24 network.
pub fn acl_reference(rules: &[Rule], address: u32, port: u32) -> (i32, u32) {
    let found = rules
        .iter()
        .position(|[network, mask, first, last]| address & mask == *network && (*first..=*last).contains(&port))
        .map_or(-1, |i| i as i32);
    (found, address & 0xFFFF_FF00)
}

/// The rules as model bytes.
pub fn rule_bytes(rules: &[Rule]) -> Vec<u8> {
    rules.iter().flatten().flat_map(|v| v.to_le_bytes()).collect()
}

/// Rows whose values no float holds exactly, and bit patterns that are NaN or infinite as `f32`.
pub fn awkward_rows(n: usize) -> Vec<u32> {
    let specials = [0x7FC0_0000u32, 0x7F80_0000, 0xFF80_0001, u32::MAX, 16_777_217, 0];
    (0..n)
        .flat_map(|i| {
            let address = match i % 4 {
                0 => 0x0A00_0000 | ((i as u32 * 7919) & 0xFFFF),
                1 => specials[i % specials.len()],
                2 => 0xC0A8_0100 | (i as u32 & 0xFF),
                _ => (i as u32).wrapping_mul(2_654_435_761),
            };
            let port = [443u32, 80, 8443, 53, specials[i % specials.len()]][i % 5];
            [address, port]
        })
        .collect()
}

/// Rules that the awkward rows hit in every way.
pub fn some_rules() -> Vec<Rule> {
    vec![
        [0x0A00_0000, 0xFF00_0000, 443, 443],
        [0xC0A8_0100, 0xFFFF_FF00, 0, 1024],
        [0x7F80_0000, 0xFFFF_0000, 0, u32::MAX],
        [0, 0, 8000, 8999],
    ]
}

/// The `acl-cpu` family.
pub struct AclFamily;

impl Family for AclFamily {
    fn kind(&self) -> &'static str {
        "acl-cpu"
    }

    fn needs_model(&self) -> bool {
        true
    }

    fn validate(&self, _spec: &FunctionSpec, model_len: Option<usize>) -> Result<(), ParamError> {
        match model_len {
            Some(len) if len > 0 && len % 16 == 0 => Ok(()),
            _ => Err(ParamError::new("model", "rules are 16 bytes each")),
        }
    }

    fn load_cpu(&self, spec: &FunctionSpec, model: Option<&[u8]>) -> Result<Arc<dyn Function>, LoadError> {
        let model = model.ok_or_else(|| LoadError::MissingModel(spec.name.clone()))?;
        self.validate(spec, Some(model.len()))
            .map_err(|e| LoadError::InvalidModel {
                function: spec.name.clone(),
                reason: e.to_string(),
            })?;
        let rules = model
            .chunks_exact(16)
            .map(|r| std::array::from_fn(|i| u32::from_le_bytes(r[i * 4..i * 4 + 4].try_into().unwrap())))
            .collect();
        Ok(Arc::new(AclFunction {
            rules: Arc::new(rules),
            info: acl_info(spec.max_batch_rows.unwrap_or(256)),
        }))
    }
}

/// The schema of an ACL function (the GPU kernel's ABI declares the same).
pub fn acl_info(max_batch_rows: usize) -> FunctionInfo {
    FunctionInfo {
        input: InputInfo {
            name: "flows".into(),
            dtype: DType::U32,
            width: 2,
        },
        outputs: vec![
            OutputInfo {
                name: "rule".into(),
                dtype: DType::I32,
                width: 1,
                on_request: false,
            },
            OutputInfo {
                name: "network".into(),
                dtype: DType::U32,
                width: 1,
                on_request: true,
            },
        ],
        max_batch_rows,
        accepts_non_finite: false,
        parameters: Default::default(),
    }
}

/// The built-in families plus `acl-cpu`.
pub fn families_with_acl() -> Families {
    let mut families = Families::builtin();
    families.register(Arc::new(AclFamily));
    families
}

struct AclFunction {
    rules: Arc<Vec<Rule>>,
    info: FunctionInfo,
}

impl Function for AclFunction {
    fn info(&self) -> &FunctionInfo {
        &self.info
    }

    fn new_lane(&self) -> Result<Box<dyn Lane>, ExecError> {
        let rows = self.info.max_batch_rows;
        Ok(Box::new(AclLane {
            rules: self.rules.clone(),
            input: vec![0; rows * 2],
            matches: vec![0; rows],
            networks: vec![0; rows],
        }))
    }
}

/// Allocates nothing per batch: its buffers are made once, with the lane.
struct AclLane {
    rules: Arc<Vec<Rule>>,
    input: Vec<u32>,
    matches: Vec<i32>,
    networks: Vec<u32>,
}

impl Lane for AclLane {
    fn capacity_rows(&self) -> usize {
        self.matches.len()
    }

    fn write_input(&mut self, write: &mut dyn FnMut(&mut [u8])) -> Result<(), ExecError> {
        write(bytemuck::cast_slice_mut(&mut self.input));
        Ok(())
    }

    fn run(&mut self, n_rows: usize, _mask: u32) -> Result<(), ExecError> {
        for row in 0..n_rows {
            let (found, network) = acl_reference(&self.rules, self.input[row * 2], self.input[row * 2 + 1]);
            self.matches[row] = found;
            self.networks[row] = network;
        }
        Ok(())
    }

    fn read_output(&self, index: usize, first_row: usize, dst: &mut [u8]) -> Result<(), ExecError> {
        let src: &[u8] = match index {
            0 => bytemuck::cast_slice(&self.matches),
            1 => bytemuck::cast_slice(&self.networks),
            _ => return Err(ExecError::InvalidBatch(format!("no output {index}"))),
        };
        dst.copy_from_slice(&src[first_row * 4..first_row * 4 + dst.len()]);
        Ok(())
    }
}

/// A spec of the `acl-cpu` family.
pub fn acl_spec(name: &str, max_batch_rows: usize) -> FunctionSpec {
    FunctionSpec {
        max_batch_rows: Some(max_batch_rows),
        ..FunctionSpec::new(name, "acl-cpu", Vec::new())
    }
}

/// A spec of the built-in forest family.
pub fn forest_spec(name: &str, max_batch_rows: usize) -> FunctionSpec {
    FunctionSpec {
        max_batch_rows: Some(max_batch_rows),
        ..FunctionSpec::new(
            name,
            "forest",
            vknf_kernels::by_name("forest").expect("the forest kernel").to_vec(),
        )
    }
}

/// The `acl_match` kernel's interface, for the generic family on the GPU loader.
pub fn acl_abi(rules: usize) -> vknf_functions::families::generic::GenericAbi {
    use vknf_functions::families::generic::*;
    let at = |binding| BindingRef { set: 0, binding };
    GenericAbi {
        input: AbiInput {
            at: at(0),
            width: 2,
            dtype: DType::U32,
        },
        resident: vec![AbiResident {
            at: at(1),
            offset: 0,
            length: rules as u64 * 16,
        }],
        outputs: vec![
            AbiOutput {
                at: at(2),
                name: "rule".into(),
                dtype: DType::I32,
                width: 1,
                on_request: false,
            },
            AbiOutput {
                at: at(3),
                name: "network".into(),
                dtype: DType::U32,
                width: 1,
                on_request: true,
            },
        ],
        row_count: AbiRowCount {
            push_constant_offset: 0,
        },
        accepts_nan: false,
    }
}

/// A generic-family function of the `acl_match` kernel over `rules` rules, 64 rows per batch.
pub fn acl_gpu_spec(name: &str, rules: usize) -> FunctionSpec {
    use vknf_functions::{SpecConstantKey, SpecConstantValue};
    let kernel = vknf_kernels::by_name("acl_match").expect("the acl_match kernel");
    let mut spec = FunctionSpec::new(name, "generic", kernel.to_vec());
    spec.params.insert(
        vknf_functions::families::generic::ABI_PARAM.into(),
        acl_abi(rules).to_json(),
    );
    spec.spec_constants.insert(
        SpecConstantKey::Name("N_RULES".into()),
        SpecConstantValue::Int(rules as i128),
    );
    spec.max_batch_rows = Some(64);
    spec
}
