//! The server side: a rustls configuration from PEM files, and handshakes bounded in time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::pem::{certificates, private_key, roots};
use crate::{TlsError, TlsMetrics, provider};

/// A TLS connection accepted by a server.
pub type ServerTlsStream = tokio_rustls::server::TlsStream<TcpStream>;

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
}

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
    /// its outcome under `port` (`binary`, `oip`, `ops`).
    pub async fn accept(&self, port: &'static str, stream: TcpStream) -> Result<ServerTlsStream, HandshakeError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        let result = match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(HandshakeError::Failed(error)),
            Err(_) => Err(HandshakeError::TimedOut(self.handshake_timeout)),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(HandshakeError::TimedOut(_)) => "timeout",
            Err(HandshakeError::Failed(_)) => "failed",
        };
        self.metrics.count(port, outcome);
        if let Err(error) = &result {
            tracing::debug!(port, %error, "TLS connection refused");
        }
        result
    }
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
