//! Limits and timeouts of a server.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use vknf_protocol::DEFAULT_MAX_PAYLOAD;
use vknf_runtime::RuntimeSettings;
use vknf_tls::ServerTls;

/// Where a function's port listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddress {
    /// Every function port on this address; the unspecified address (`0.0.0.0`, `::`) is every
    /// address of the host.
    Fixed(IpAddr),
    /// Each function port on the host's own address among the function's endpoints (its
    /// EndpointSlices or Endpoints name the hosts that serve it): the first endpoint address that is
    /// in `host` (or, when `host` is empty, that the host can bind). A function whose endpoints name
    /// none binds `otherwise`, or is not served when that is `None`.
    Endpoints {
        /// This host's addresses.
        host: Vec<IpAddr>,
        /// The address for functions whose endpoints name none of the host's (the agent's own
        /// published address, for functions it places itself before their endpoints exist).
        otherwise: Option<IpAddr>,
    },
}

impl BindAddress {
    /// The addresses to try for a function with these endpoints, in order.
    pub fn candidates(&self, endpoints: &[IpAddr]) -> Vec<IpAddr> {
        match self {
            BindAddress::Fixed(ip) => vec![*ip],
            BindAddress::Endpoints { host, otherwise } => {
                let mut candidates: Vec<IpAddr> = endpoints
                    .iter()
                    .filter(|ip| host.is_empty() || host.contains(ip))
                    .copied()
                    .collect();
                if let Some(ip) = otherwise
                    && !candidates.contains(ip)
                {
                    candidates.push(*ip);
                }
                candidates
            }
        }
    }
}

/// Limits and timeouts of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the function ports listen.
    pub bind: BindAddress,
    /// TLS on every port of the server (function ports and the Open Inference Protocol port), if set.
    pub tls: Option<ServerTls>,
    /// Serve without TLS on addresses other than loopback ones. Off by default: a port reachable from
    /// the network without TLS is an explicit choice.
    pub allow_plaintext: bool,
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
            bind: BindAddress::Fixed(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            tls: None,
            allow_plaintext: false,
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
    /// Refuses a plaintext port on `ip` unless it is a loopback address, TLS is set or plaintext was
    /// allowed; the error says what to do.
    pub fn check_plaintext(&self, ip: IpAddr) -> Result<(), String> {
        plaintext_allowed(ip, self.tls.is_some(), self.allow_plaintext)
    }

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

/// Whether a port on `ip` may listen: always with TLS, else on loopback or with `allow_plaintext`.
pub fn plaintext_allowed(ip: IpAddr, tls: bool, allow_plaintext: bool) -> Result<(), String> {
    if tls || allow_plaintext || ip.is_loopback() {
        return Ok(());
    }
    Err(format!(
        "refusing plaintext on a non-loopback address (give --tls-cert and --tls-key, or --allow-plaintext): {ip}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_function_binds_the_host_address_its_endpoints_name() {
        let policy = BindAddress::Endpoints {
            host: vec![ip("127.0.0.1"), ip("10.0.0.7")],
            otherwise: None,
        };
        assert_eq!(
            policy.candidates(&[ip("10.0.0.5"), ip("10.0.0.7")]),
            vec![ip("10.0.0.7")]
        );
        assert!(
            policy.candidates(&[ip("10.0.0.5")]).is_empty(),
            "not this host's: not served"
        );
        let agent = BindAddress::Endpoints {
            host: vec![ip("10.0.0.7")],
            otherwise: Some(ip("10.0.0.7")),
        };
        assert_eq!(agent.candidates(&[]), vec![ip("10.0.0.7")]);
        assert_eq!(agent.candidates(&[ip("10.0.0.7")]), vec![ip("10.0.0.7")]);
        let unknown_host = BindAddress::Endpoints {
            host: vec![],
            otherwise: None,
        };
        assert_eq!(
            unknown_host.candidates(&[ip("10.0.0.5"), ip("::1")]),
            vec![ip("10.0.0.5"), ip("::1")]
        );
        assert_eq!(
            BindAddress::Fixed(ip("0.0.0.0")).candidates(&[ip("10.0.0.7")]),
            vec![ip("0.0.0.0")]
        );
    }

    #[test]
    fn plaintext_beyond_loopback_is_an_explicit_choice() {
        assert!(plaintext_allowed(ip("127.0.0.1"), false, false).is_ok());
        assert!(plaintext_allowed(ip("::1"), false, false).is_ok());
        let refused = plaintext_allowed(ip("0.0.0.0"), false, false).unwrap_err();
        assert!(refused.contains("--allow-plaintext"), "{refused}");
        assert!(plaintext_allowed(ip("10.0.0.7"), false, false).is_err());
        assert!(plaintext_allowed(ip("10.0.0.7"), true, false).is_ok());
        assert!(plaintext_allowed(ip("10.0.0.7"), false, true).is_ok());
    }
}
