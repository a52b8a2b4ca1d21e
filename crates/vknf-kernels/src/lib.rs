//! SPIR-V compute kernels of vknf, compiled from the GLSL in `shaders/` by `glslc` at build time.
//!
//! Each kernel is exposed as a `&'static [u8]` of SPIR-V; [`ALL`] lists them by name. The runtime
//! (`vknf-vulkan`) validates and reflects them at load time, so nothing here describes layouts by hand.

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Looks a kernel up by its file stem (for example `"forest"`).
pub fn by_name(name: &str) -> Option<&'static [u8]> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, spv)| *spv)
}
