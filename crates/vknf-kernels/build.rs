//! Compiles every `shaders/*.comp` to SPIR-V with `glslc` (unoptimised: drivers optimise anyway, and the
//! debug names must stay so that kernels can be reflected by name), and generates a table of them, the way
//! llama.cpp's Vulkan backend embeds its shaders: the SPIR-V is produced at build time, never committed.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let shader_dir = Path::new("shaders");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=shaders");
    let glslc = env::var("GLSLC").unwrap_or_else(|_| "glslc".to_string());
    println!("cargo:rerun-if-env-changed=GLSLC");

    let mut shaders: Vec<PathBuf> = fs::read_dir(shader_dir)
        .expect("crates/vknf-kernels/shaders must exist")
        .map(|entry| entry.expect("readable shader directory").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "comp"))
        .collect();
    shaders.sort();

    let mut table =
        String::from("/// Every kernel of this crate: (name, SPIR-V bytes).\npub static ALL: &[(&str, &[u8])] = &[\n");
    let mut consts = String::new();
    for shader in &shaders {
        let stem = shader.file_stem().unwrap().to_string_lossy().to_string();
        let spv = out_dir.join(format!("{stem}.spv"));
        println!("cargo:rerun-if-changed={}", shader.display());
        let output = Command::new(&glslc)
            .args(["--target-env=vulkan1.2", "-Werror", "-Ishaders"])
            .arg(shader)
            .arg("-o")
            .arg(&spv)
            .output()
            .unwrap_or_else(|err| {
                panic!(
                    "could not run `{glslc}` ({err}); install it with `sudo apt-get install glslc` or run `make deps`"
                )
            });
        if !output.status.success() {
            panic!(
                "glslc failed on {}:\n{}",
                shader.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let const_name = stem.to_uppercase().replace('-', "_");
        consts.push_str(&format!(
            "/// SPIR-V of `shaders/{stem}.comp`.\npub static {const_name}: &[u8] = include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{stem}.spv\"));\n"
        ));
        table.push_str(&format!("    (\"{stem}\", {const_name}),\n"));
    }
    table.push_str("];\n");
    fs::write(out_dir.join("kernels.rs"), consts + &table).expect("write kernels.rs");
}
