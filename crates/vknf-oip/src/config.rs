//! Limits and timeouts of the front end.

use std::time::Duration;

use vknf_tls::ServerTls;

/// Limits and timeouts of the Open Inference Protocol port.
#[derive(Debug, Clone)]
pub struct OipConfig {
    /// Largest request body (REST) or message (gRPC); larger ones are refused before they are read.
    pub max_body_bytes: usize,
    /// Request bytes buffered across every connection and stream; past it requests are answered 503
    /// (gRPC `RESOURCE_EXHAUSTED`) until some are answered.
    pub max_buffered_bytes: usize,
    /// A request body must arrive within this.
    pub body_timeout: Duration,
    /// Open connections; more are closed at once.
    pub max_connections: usize,
    /// Concurrent streams on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// An HTTP/1.1 request's headers must arrive within this.
    pub header_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
    /// TLS on the port (every connection handshakes first, within its timeout and holding its
    /// connection slot); plaintext h1/h2c when `None`. Offer ALPN `h2` and `http/1.1` in it.
    pub tls: Option<ServerTls>,
}

impl Default for OipConfig {
    fn default() -> Self {
        OipConfig {
            max_body_bytes: 16 << 20,
            max_buffered_bytes: 256 << 20,
            body_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_concurrent_streams: 128,
            header_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}
