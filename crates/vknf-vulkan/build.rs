//! Links SPIRV-Tools' validator, statically, from the system's `spirv-tools` package, so that every
//! kernel is checked by the Khronos validator before it reaches a driver, and so that the binary carries
//! the validator with it to GPU hosts that lack the package.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=SPIRV_TOOLS_LIB_DIR");
    let candidates = [
        std::env::var("SPIRV_TOOLS_LIB_DIR").unwrap_or_default(),
        "/usr/lib/x86_64-linux-gnu".to_string(),
        "/usr/lib/aarch64-linux-gnu".to_string(),
        "/usr/lib64".to_string(),
        "/usr/lib".to_string(),
        "/usr/local/lib".to_string(),
        "/opt/homebrew/lib".to_string(),
    ];
    let dir = candidates
        .iter()
        .filter(|dir| !dir.is_empty())
        .find(|dir| Path::new(dir).join("libSPIRV-Tools.a").exists())
        .unwrap_or_else(|| {
            panic!(
                "libSPIRV-Tools.a not found (looked in {candidates:?}). Install SPIRV-Tools \
                 (Debian: `sudo apt-get install spirv-tools`, or run `make deps`) or set SPIRV_TOOLS_LIB_DIR."
            )
        });
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-lib=static=SPIRV-Tools");
    let cxx = if cfg!(target_os = "macos") { "c++" } else { "stdc++" };
    println!("cargo:rustc-link-lib=dylib={cxx}");
}
