//! vknf's Kubernetes GPU node agent (`vknf agent`).
//!
//! GPU hosts run no container runtime. A function is a selector-less Service carrying SPIR-V in
//! its annotations (docs/functions.md); the agent on each GPU host watches those Services, their
//! EndpointSlices and legacy Endpoints, and the model ConfigMaps, decides which functions the
//! host serves ([`plan`]), and feeds the very same resolver and server as `vknf serve`
//! ([`render`], [`vknf_server::Server::reconcile`]). It tells the cluster what it serves:
//! EndpointSlices for managed placement ([`slices`]), a status annotation and Events per
//! function ([`status`]), and a host Lease that the [`watchdog`] checks. docs/kubernetes.md
//! describes deployment and operation.
//!
//! - [`Agent`]: the running agent; [`AgentConfig`] says how it runs.
//! - [`Watchdog`]: marks the endpoints of hosts whose Lease expired not ready.
//! - [`daemon`]: the `vknf agent` process (kube client, signals, `/metrics`).

pub mod agent;
pub mod daemon;
pub mod host;
pub mod keys;
pub mod lease;
pub mod metrics;
pub mod models;
pub mod ops;
pub mod plan;
pub mod render;
pub mod selector;
pub mod slices;
pub mod status;
pub mod watchdog;

pub use agent::{Agent, AgentConfig, AgentError, AgentStatus, ColdStart};
pub use host::{HostError, HostIdentity};
pub use plan::{PlacementMode, Plan};
pub use status::{FailureReason, FunctionPhase, HostDevice, HostFunctionStatus};
pub use watchdog::{Watchdog, WatchdogConfig};
