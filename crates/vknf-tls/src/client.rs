//! The client side: a rustls configuration from PEM files, for async and blocking connections.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::ServerName;

use crate::pem::{certificates, private_key, roots};
use crate::{TlsError, provider};

/// An async TLS connection made by a client.
pub type ClientTlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// The files of a client's TLS set-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// CA certificates (PEM) the server's certificate must chain to.
    pub ca: PathBuf,
    /// The client's certificate chain (PEM), for servers that require client certificates.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// The name the server's certificate must hold (default: the host of the address connected to).
    pub server_name: Option<String>,
}

/// A client's TLS set-up. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl ClientTls {
    /// Loads the files: TLS 1.2 and 1.3, the server verified against `files.ca` only (not the
    /// system's roots: a function's certificate comes from the operator's own CA).
    pub fn load(files: &ClientTlsFiles) -> Result<ClientTls, TlsError> {
        let roots = roots(&files.ca, "CA certificates")?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Rejected {
                what: "TLS protocol versions".into(),
                error,
            })?
            .with_root_certificates(roots);
        let config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert, "client certificate chain")?;
                let private = private_key(key)?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|error| TlsError::Rejected {
                        what: format!("client certificate {} with key {}", cert.display(), key.display()),
                        error,
                    })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsError::HalfClientIdentity),
        };
        let server_name = files.server_name.as_deref().map(parse_server_name).transpose()?;
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The same set-up checking the server's certificate for `host` (a DNS name or an IP address,
    /// brackets of an IPv6 address allowed) unless a server name was given.
    pub fn with_default_server_name(mut self, host: &str) -> Result<ClientTls, TlsError> {
        if self.server_name.is_none() {
            self.server_name = Some(parse_server_name(host.trim_start_matches('[').trim_end_matches(']'))?);
        }
        Ok(self)
    }

    /// The host part of `addr` (`host:port`, `[v6]:port`).
    pub fn host_of(addr: &str) -> &str {
        addr.rsplit_once(':').map_or(addr, |(host, _)| host)
    }

    /// The name a connection to `peer` checks the server's certificate for: the server name given,
    /// else the IP address connected to.
    fn name_for(&self, peer: std::io::Result<std::net::SocketAddr>) -> std::io::Result<ServerName<'static>> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => Ok(ServerName::IpAddress(peer?.ip().into())),
        }
    }

    /// Runs the client side of a handshake on `stream`.
    pub async fn connect(&self, stream: tokio::net::TcpStream) -> std::io::Result<ClientTlsStream> {
        let name = self.name_for(stream.peer_addr())?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
    }

    /// A blocking TLS connection over `stream`, its handshake completed (within the stream's
    /// timeouts).
    pub fn connect_blocking(
        &self,
        mut stream: std::net::TcpStream,
    ) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
        let name = self.name_for(stream.peer_addr())?;
        let mut connection = rustls::ClientConnection::new(self.config.clone(), name).map_err(std::io::Error::other)?;
        while connection.is_handshaking() {
            connection.complete_io(&mut stream)?;
        }
        Ok(rustls::StreamOwned::new(connection, stream))
    }
}

fn parse_server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}
