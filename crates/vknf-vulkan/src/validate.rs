//! SPIR-V validation with the Khronos SPIRV-Tools validator (linked statically, see build.rs).

use std::ffi::{CStr, c_char};

use crate::error::{Error, Result};

/// SPIRV-Tools' `spv_target_env` values for Vulkan, as declared in `libspirv.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum TargetEnv {
    /// Vulkan 1.0 (SPIR-V 1.0).
    Vulkan1_0 = 1,
    /// Vulkan 1.1 (SPIR-V 1.3).
    Vulkan1_1 = 18,
    /// Vulkan 1.2 (SPIR-V 1.5).
    Vulkan1_2 = 23,
    /// Vulkan 1.3 (SPIR-V 1.6).
    Vulkan1_3 = 25,
}

impl TargetEnv {
    /// The environment of a device reporting `api_version` ("1.3.230").
    pub fn for_api_version(api_version: &str) -> TargetEnv {
        let mut parts = api_version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        match (parts.next().unwrap_or(1), parts.next().unwrap_or(0)) {
            (1, 0) => TargetEnv::Vulkan1_0,
            (1, 1) => TargetEnv::Vulkan1_1,
            (1, 2) => TargetEnv::Vulkan1_2,
            _ => TargetEnv::Vulkan1_3,
        }
    }
}

#[repr(C)]
struct SpvPosition {
    line: usize,
    column: usize,
    index: usize,
}

#[repr(C)]
struct SpvDiagnostic {
    position: SpvPosition,
    error: *mut c_char,
    is_text_source: bool,
}

#[repr(C)]
struct SpvContextOpaque {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn spvContextCreate(env: i32) -> *mut SpvContextOpaque;
    fn spvContextDestroy(context: *mut SpvContextOpaque);
    fn spvValidateBinary(
        context: *const SpvContextOpaque,
        words: *const u32,
        num_words: usize,
        diagnostic: *mut *mut SpvDiagnostic,
    ) -> i32;
    fn spvDiagnosticDestroy(diagnostic: *mut SpvDiagnostic);
}

/// Checks the SPIR-V header, then runs the Khronos validator for `env`. The error carries the
/// validator's own message.
pub fn validate(words: &[u32], env: TargetEnv) -> Result<()> {
    const MAGIC: u32 = 0x0723_0203;
    if words.len() < 5 {
        return Err(Error::InvalidSpirv(format!(
            "{} words is shorter than the 5-word SPIR-V header (truncated file?)",
            words.len()
        )));
    }
    if words[0] != MAGIC {
        return Err(Error::InvalidSpirv(format!(
            "wrong magic number {:#010x} (expected {MAGIC:#010x}): not a SPIR-V module",
            words[0]
        )));
    }
    // SAFETY: `spvContextCreate` accepts any listed target environment; the context is destroyed below.
    let context = unsafe { spvContextCreate(env as i32) };
    if context.is_null() {
        return Err(Error::InvalidSpirv(
            "SPIRV-Tools could not create a validation context".into(),
        ));
    }
    let mut diagnostic: *mut SpvDiagnostic = std::ptr::null_mut();
    // SAFETY: `words` is a live slice of `words.len()` u32s; `diagnostic` is an out-pointer the library
    // fills with an allocation we release with `spvDiagnosticDestroy`.
    let status = unsafe { spvValidateBinary(context, words.as_ptr(), words.len(), &mut diagnostic) };
    let message = if diagnostic.is_null() {
        None
    } else {
        // SAFETY: a non-null diagnostic from SPIRV-Tools has a NUL-terminated `error` (or null).
        let text = unsafe {
            let error = (*diagnostic).error;
            let text = if error.is_null() {
                String::new()
            } else {
                CStr::from_ptr(error).to_string_lossy().into_owned()
            };
            spvDiagnosticDestroy(diagnostic);
            text
        };
        Some(text)
    };
    // SAFETY: created above and not used afterwards.
    unsafe { spvContextDestroy(context) };
    if status == 0 {
        Ok(())
    } else {
        Err(Error::InvalidSpirv(
            message
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| format!("validator returned code {status}")),
        ))
    }
}

/// Reinterprets bytes as SPIR-V words (little-endian), rejecting lengths that are not a multiple of 4.
pub fn words_from_bytes(bytes: &[u8]) -> Result<Vec<u32>> {
    if bytes.len() % 4 != 0 {
        return Err(Error::InvalidSpirv(format!(
            "{} bytes is not a whole number of 32-bit words (truncated file?)",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}
