//! Limits and timeouts of a server.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use vknf_protocol::DEFAULT_MAX_PAYLOAD;
use vknf_runtime::RuntimeSettings;

/// Limits and timeouts of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the function ports are bound on.
    pub bind_ip: IpAddr,
    /// Largest frame payload accepted; larger frames are answered `TOO_LARGE`.
    pub max_payload: u32,
    /// Open connections across all functions; more are answered `BUSY` and closed.
    pub max_connections: usize,
    /// Requests one connection may have in flight; past it the server stops reading from it.
    pub max_in_flight_per_connection: usize,
    /// Input bytes a function may have admitted and unanswered; past it requests get `BUSY`.
    pub max_queued_bytes: usize,
    /// Bytes of the process's memory budget: requests being received, queued calls and unsent
    /// answers, across every function and front end. One connection may hold an eighth of it, requests
    /// being received half; past it requests get `BUSY` (docs/protocol.md).
    pub memory_budget: usize,
    /// Lanes (batches in flight) per function.
    pub lanes_per_function: usize,
    /// Longest a batch waits to fill up, unless the manifest says otherwise.
    pub default_max_wait: Duration,
    /// How long a lane thread that has just finished a batch polls for the next one before it sleeps.
    /// Polling spares the next request a thread wake-up (20-30 us of a one-row request's 88 us on the
    /// GPU machine) but takes a core while it lasts; on shared or virtualised hosts the cores it takes
    /// cost more than that (bench/RESULTS.md), so the default is zero.
    pub lane_spin: Duration,
    /// A connection with nothing in flight and nothing received for this long is closed.
    pub idle_timeout: Duration,
    /// A frame that has started must be complete within this.
    pub read_timeout: Duration,
    /// Writing one answer may take at most this; a client that does not read is dropped.
    pub write_timeout: Duration,
    /// How long removal, replacement and shutdown wait for in-flight requests.
    pub drain_timeout: Duration,
    /// First quarantine of a function whose kernel missed its deadline (doubling with each miss).
    pub quarantine_backoff: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_connections: 4096,
            max_in_flight_per_connection: 256,
            max_queued_bytes: 64 << 20,
            memory_budget: 1 << 30,
            lanes_per_function: 3,
            default_max_wait: Duration::from_micros(200),
            lane_spin: Duration::ZERO,
            idle_timeout: Duration::from_secs(300),
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            quarantine_backoff: Duration::from_secs(30),
        }
    }
}

impl ServerConfig {
    /// The function runtime's share of the configuration.
    pub fn runtime_settings(&self) -> RuntimeSettings {
        RuntimeSettings {
            lanes_per_function: self.lanes_per_function,
            default_max_wait: self.default_max_wait,
            max_queued_bytes: self.max_queued_bytes,
            lane_spin: self.lane_spin,
            drain_timeout: self.drain_timeout,
            quarantine_backoff: self.quarantine_backoff,
            memory_budget: self.memory_budget,
        }
    }
}
