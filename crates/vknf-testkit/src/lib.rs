//! # vknf-testkit
//!
//! Test support shared by vknf's crates, kept out of the production libraries: forests of a known shape
//! ([`synthetic`]), scikit-learn parity cases generated and checked through the project's Python
//! ([`parity`]), certificates for TLS tests made by `openssl` ([`pki`]), and where the paper's tree lies
//! ([`paper_tree_dir`]). Only dev-dependencies, examples
//! and benchmarks link it.

use std::path::{Path, PathBuf};

pub mod drill;
pub mod gate;
pub mod parity;
pub mod pki;
pub mod synthetic;

/// Environment variable naming the directory of the paper's tree.
pub const PAPER_TREE_ENV: &str = "VKNF_PAPER_TREE";

/// The directory of the paper's tree: `$VKNF_PAPER_TREE`, else `shared/paper-rf-tree` beside the
/// workspace (where the project's machines keep it; it is never committed).
pub fn paper_tree_dir() -> PathBuf {
    match std::env::var_os(PAPER_TREE_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("../shared/paper-rf-tree"),
    }
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
