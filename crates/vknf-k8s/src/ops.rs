//! The agent's operations endpoint: `GET /metrics` (the server's and the agent's metrics in one
//! OpenMetrics document), `/livez` and `/readyz`. The endpoint itself is vknf-server's; the agent
//! and the watchdog only say what it reports ([`crate::Agent::ops_source`],
//! [`crate::Watchdog::ops_source`]).

pub use vknf_server::ops::{OpsSource, serve_ops_source};
