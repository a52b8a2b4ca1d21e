//! # vknf-tls
//!
//! TLS for every vknf port and client, on rustls (ring provider): one place that turns PEM files into
//! configurations, so the binary protocol's ports, the Open Inference Protocol port, the operations
//! endpoint and the clients agree on versions, verification and errors.
//!
//! - [`ServerTls`]: a server configuration from `--tls-cert`, `--tls-key` and an optional
//!   `--tls-client-ca` (clients must then present a certificate it signed), and handshakes bounded in
//!   time and counted in [`TlsMetrics`].
//! - [`ClientTls`]: a client configuration from `--tls-ca` and an optional client certificate, for the
//!   async and the blocking clients.
//! - [`TlsError`]: what is wrong with which file, reported at start-up.
//! - [`ConnectionBudget`]: every server connection's buffers are bounded
//!   ([`CONNECTION_BUFFER_BYTES`]) and, with a budget, reserved from it while the connection lives.

mod buffers;
mod client;
mod error;
mod metrics;
mod pem;
mod server;

pub use buffers::{AcceptedTcp, CONNECTION_BUFFER_BYTES, ConnectionBudget, Reservation, SEND_BUFFER_LIMIT};
pub use client::{ClientTls, ClientTlsFiles, ClientTlsStream};
pub use error::TlsError;
pub use metrics::TlsMetrics;
pub use server::{HandshakeError, ServerTls, ServerTlsFiles, ServerTlsStream};

/// ALPN protocol names, for [`ServerTls::with_alpn`].
pub mod alpn {
    /// HTTP/2.
    pub const H2: &[u8] = b"h2";
    /// HTTP/1.1.
    pub const HTTP_1_1: &[u8] = b"http/1.1";
}

use std::sync::Arc;

/// The one crypto provider every configuration is built with: ring, whatever else the process links.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
