//! # vknf-oip
//!
//! The Open Inference Protocol (KServe predict protocol v2, which Triton, MLServer and KServe speak) as
//! a front end over the function runtime: one port per host, HTTP/1.1 and HTTP/2 (h2c), REST with JSON
//! and binary tensors and gRPC (`inference.GRPCInferenceService`) on the same socket, every function
//! of the host a model by name. docs/oip.md describes the endpoints, names, data types and errors.
//!
//! ```text
//! client --h1/h2c--> server (port, limits) --> rest | grpc (protocols) --> json, input (codec)
//!                                                    |
//!                                                    +--> service (Inference) --> FunctionHandle::submit
//!                                                          reply: outputs written into response buffers
//! ```
//!
//! - [`OipServer`]: the port.
//! - [`Inference`]: what both protocols serve (health, metadata, model lookup, inference).
//! - [`names`], [`schema`]: model names and model metadata from a function's schema.
//! - [`client`]: a model's metadata asked of another host's port.
//! - [`OipError`]: errors, and their HTTP statuses and gRPC codes.

mod body;
pub mod client;
mod config;
mod error;
pub mod grpc;
mod input;
mod json;
pub mod names;
mod reply;
mod rest;
pub mod schema;
mod server;
mod service;

pub use config::OipConfig;
pub use error::OipError;
pub use reply::Outputs;
pub use server::{OipServer, tls_connection_budget};
pub use service::{BINARY_TENSOR_DATA, Inference, Model, Protocol, Readiness, ServerMetadata};
