//! The server side: a rustls configuration from PEM files, and handshakes bounded in time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::buffers::{AcceptedTcp, ConnectionBudget, SEND_BUFFER_LIMIT};
use crate::pem::{certificates, private_key, roots};
use crate::{TlsError, TlsMetrics, provider};

/// A TLS connection accepted by a server (its buffers bounded, and reserved while it lives when the
/// server has a [`ConnectionBudget`]).
pub type ServerTlsStream = tokio_rustls::server::TlsStream<AcceptedTcp>;

/// The files of a server's TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The server's certificate chain (PEM), its own certificate first.
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that sign client certificates; when given, every client must present one.
    pub client_ca: Option<PathBuf>,
}

/// A server's TLS set-up: what every listening port of the process accepts with. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    client_certificates_required: bool,
    metrics: TlsMetrics,
    budget: Option<ConnectionBudget>,
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not finish the handshake in time (or never started it).
    #[error("TLS handshake not finished within {0:?}")]
    TimedOut(Duration),
    /// The handshake failed: not TLS, no or a bad client certificate, no common version or cipher.
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
    /// The server's memory budget cannot hold another connection's buffers; the client was sent an
    /// `internal_error` alert before anything else.
    #[error("TLS connection refused: {0}")]
    OverBudget(String),
}

/// A plaintext TLS alert record: fatal `internal_error`, what a client sees of a refusal for want of
/// memory (`openssl s_client`: "tlsv1 alert internal error").
const INTERNAL_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50];

/// How long a refused connection's first bytes are read and dropped after the alert, so that closing
/// it does not reset the connection before the client has read the alert.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

impl ServerTls {
    /// Default bound of a handshake: a client that connects and says nothing is cut after it.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    /// Loads the files: TLS 1.2 and 1.3, client certificates required when `files.client_ca` is set.
    pub fn load(files: &ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let chain = certificates(&files.cert, "certificate chain")?;
        let key = private_key(&files.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Rejected {
                what: "TLS protocol versions".into(),
                error,
            })?;
        let builder = match &files.client_ca {
            Some(path) => builder.with_client_cert_verifier(client_verifier(path)?),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|error| TlsError::Rejected {
                what: format!("certificate {} with key {}", files.cert.display(), files.key.display()),
                error,
            })?;
        // Session tickets and resumption stay rustls' defaults; nothing is written to disk.
        config.alpn_protocols.clear();
        Ok(ServerTls {
            config: Arc::new(config),
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            client_certificates_required: files.client_ca.is_some(),
            metrics: TlsMetrics::default(),
            budget: None,
        })
    }

    /// The same set-up offering these ALPN protocols, most preferred first (a client that offers
    /// none of them is refused; one that offers no ALPN at all is accepted).
    pub fn with_alpn(&self, protocols: &[&[u8]]) -> ServerTls {
        let mut config = (*self.config).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        ServerTls {
            config: Arc::new(config),
            ..self.clone()
        }
    }

    /// The same set-up with another handshake bound.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> ServerTls {
        self.handshake_timeout = timeout;
        self
    }

    /// The same set-up counting its handshakes into `metrics`.
    pub fn with_metrics(mut self, metrics: TlsMetrics) -> ServerTls {
        self.metrics = metrics;
        self
    }

    /// The same set-up reserving [`crate::CONNECTION_BUFFER_BYTES`] from `budget` for every connection,
    /// from before its handshake until it is closed; a connection the budget cannot hold is refused.
    pub fn with_connection_budget(mut self, budget: ConnectionBudget) -> ServerTls {
        self.budget = Some(budget);
        self
    }

    /// The metrics handshakes are counted in.
    pub fn metrics(&self) -> &TlsMetrics {
        &self.metrics
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_certificates_required
    }

    /// The rustls configuration (for front ends that drive the handshake themselves).
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// Runs the server side of a handshake on `stream`, bounded by the handshake timeout, and counts
    /// its outcome under `port` (`binary`, `oip`, `ops`). With a [`ConnectionBudget`], the connection's
    /// buffers are reserved first; without room it is refused (an alert, then closed).
    pub async fn accept(&self, port: &'static str, stream: TcpStream) -> Result<ServerTlsStream, HandshakeError> {
        let reservation = match self.budget.as_ref().map(ConnectionBudget::reserve_connection) {
            None => None,
            Some(Ok(reservation)) => Some(reservation),
            Some(Err(reason)) => {
                self.metrics.count(port, "over_budget");
                tracing::warn!(port, %reason, "TLS connection refused: no memory for its buffers");
                refuse(stream).await;
                return Err(HandshakeError::OverBudget(reason));
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        let accepting = acceptor.accept_with(AcceptedTcp::new(stream, reservation), |connection| {
            connection.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
        });
        let result = match tokio::time::timeout(self.handshake_timeout, accepting).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(HandshakeError::Failed(error)),
            Err(_) => Err(HandshakeError::TimedOut(self.handshake_timeout)),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(HandshakeError::TimedOut(_)) => "timeout",
            Err(HandshakeError::Failed(_)) => "failed",
            Err(HandshakeError::OverBudget(_)) => "over_budget",
        };
        self.metrics.count(port, outcome);
        if let Err(error) = &result {
            tracing::debug!(port, %error, "TLS connection refused");
        }
        result
    }
}

/// Sends a refused connection a fatal alert and closes it, after reading (and dropping) what the client
/// sent meanwhile for a moment, so that the close is not a reset that could discard the alert.
async fn refuse(mut stream: TcpStream) {
    let _ = stream.write_all(&INTERNAL_ERROR_ALERT).await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
}

fn client_verifier(path: &Path) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let roots = roots(path, "client CA certificates")?;
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|error| TlsError::ClientVerifier {
            path: path.to_owned(),
            reason: error.to_string(),
        })
}
