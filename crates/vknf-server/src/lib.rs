//! vknf's network-function server.
//!
//! - [`protocol`]: the versioned binary wire protocol (docs/protocol.md).
//! - [`exec`]: the traits a function executor implements (GPU runtime, or [`cpu`]).
//! - [`manifest`]: functions described as Kubernetes objects (docs/functions.md).
//! - [`server`]: the data plane: connections, dynamic batching, backpressure, hot reload.
//! - [`ops`]: `/metrics`, `/livez`, `/readyz`.
//! - [`client`], [`blocking_client`] and [`loadgen`]: an async pipelined client, a blocking one, and
//!   the load generator behind `vknf load`.

pub mod blocking_client;
pub mod client;
pub mod cpu;
pub mod daemon;
pub mod exec;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod loadgen;
pub mod manifest;
pub mod metrics;
pub mod ops;
pub mod protocol;
pub mod server;

pub use exec::{DType, ExecError, Function, FunctionInfo, FunctionLoader, Lane, LaneOutputs, LoadError, OutputInfo};
pub use manifest::FunctionSpec;
pub use server::{DirectorySource, FunctionStatus, HostStatus, Server, ServerConfig};
