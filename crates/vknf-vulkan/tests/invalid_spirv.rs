//! Invalid SPIR-V is rejected with a clear error before it reaches the driver.

mod common;

use common::Gpu;
use vknf_vulkan::{Error, Kernel};

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn rejected(gpu: &Gpu, spirv: &[u8]) -> String {
    match Kernel::new(&gpu.device, spirv, "main") {
        Err(err @ Error::InvalidSpirv(_)) => err.to_string(),
        Err(other) => panic!("expected InvalidSpirv, got {other}"),
        Ok(_) => panic!("invalid module accepted"),
    }
}

#[test]
fn truncated_modules_are_rejected() {
    let gpu = Gpu::new();
    let good = vknf_kernels::ADD;
    assert!(rejected(&gpu, &good[..good.len() - 2]).contains("whole number of 32-bit words"));
    assert!(rejected(&gpu, &good[..12]).contains("shorter than the 5-word SPIR-V header"));
    let message = rejected(&gpu, &good[..good.len() / 2]);
    assert!(message.starts_with("invalid SPIR-V:"), "{message}");
    assert!(rejected(&gpu, &[]).contains("header"));
}

#[test]
fn wrong_magic_is_rejected() {
    let gpu = Gpu::new();
    let mut w = words(vknf_kernels::ADD);
    w[0] = 0xdead_beef;
    assert!(rejected(&gpu, &bytes(&w)).contains("wrong magic number 0xdeadbeef"));
}

#[test]
fn well_formed_but_invalid_module_reports_the_validator_message() {
    let gpu = Gpu::new();
    // Drop `OpCapability Shader` (the first instruction after the header): the module still parses,
    // but the validator refuses a GLCompute entry point without it.
    let w = words(vknf_kernels::EMPTY);
    let first_len = (w[5] >> 16) as usize;
    assert_eq!(w[5] & 0xffff, 17, "first instruction should be OpCapability");
    let mut broken = w[..5].to_vec();
    broken.extend_from_slice(&w[5 + first_len..]);
    let message = rejected(&gpu, &bytes(&broken));
    assert!(
        message.contains("Shader") || message.contains("capability"),
        "{message}"
    );

    // A type referring to an id that is never defined.
    let mut w = words(vknf_kernels::ADD);
    let mut at = 5;
    while at < w.len() {
        let len = (w[at] >> 16) as usize;
        if w[at] & 0xffff == 32 {
            // OpTypePointer %result StorageClass %type: point it at an undefined id.
            w[at + 3] = 0x00ff_fff0;
            break;
        }
        at += len;
    }
    let message = rejected(&gpu, &bytes(&w));
    assert!(message.len() > "invalid SPIR-V: ".len(), "{message}");
}
