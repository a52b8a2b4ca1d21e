//! Bidirectional flow keys: the same key for both directions of a TCP connection.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::decode::TcpSegment;

/// One end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    /// IP address.
    pub addr: IpAddr,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// A segment's source and destination ends.
    pub fn ends_of(seg: &TcpSegment<'_>) -> (Endpoint, Endpoint) {
        (
            Endpoint {
                addr: seg.src,
                port: seg.src_port,
            },
            Endpoint {
                addr: seg.dst,
                port: seg.dst_port,
            },
        )
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// A TCP connection's 5-tuple (the protocol is always TCP), with the lower endpoint first so
/// that both directions map to one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// The lower endpoint.
    pub lo: Endpoint,
    /// The higher endpoint.
    pub hi: Endpoint,
}

impl FlowKey {
    /// The key of a packet from `src` to `dst`.
    pub fn new(src: Endpoint, dst: Endpoint) -> Self {
        if src <= dst {
            Self { lo: src, hi: dst }
        } else {
            Self { lo: dst, hi: src }
        }
    }

    /// A hash that is the same for both directions and across runs (std's `DefaultHasher` with
    /// its fixed keys), used to spread flows over shards.
    pub fn shard_hash(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }
}
