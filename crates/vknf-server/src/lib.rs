//! # vknf-server
//!
//! vknf's network-function server: the functions of a manifest directory (or of the Kubernetes agent),
//! loaded into the function runtime and served by its front ends.
//!
//! - [`server`]: reconciles the running functions with the manifests: ports, hot reload, removal.
//! - The binary protocol's front end (one port per function, codec in `vknf-protocol`).
//! - [`ops`]: `/metrics`, `/livez`, `/readyz`.
//! - [`daemon`]: `vknf serve` as a process: manifests, ops endpoint, signals.

mod binary;
mod config;
pub mod daemon;
pub mod metrics;
pub mod ops;
pub mod server;

pub use config::{BindAddress, ServerConfig, plaintext_allowed};
pub use server::{DirectorySource, FunctionStatus, HostStatus, Server};
pub use vknf_runtime::{DeviceHealth, DeviceStatus};
