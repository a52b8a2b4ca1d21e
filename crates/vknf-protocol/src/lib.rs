//! # vknf-protocol
//!
//! vknf's binary wire protocol (docs/protocol.md), apart from any server: the frame codec ([`codec`],
//! re-exported at the root), an async pipelined client ([`client`]), a blocking one
//! ([`blocking_client`]) and the load generator behind `vknf load` ([`loadgen`]). The server side of the
//! protocol is a front end of `vknf-server`.

pub mod blocking_client;
pub mod client;
pub mod codec;
pub mod loadgen;

pub use codec::*;
