//! Errors of loading TLS material: which file, and what is wrong with it.

use std::path::PathBuf;

/// Why a TLS configuration could not be made. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {what} {path}: {error}")]
    Read {
        /// What the file should hold (certificate chain, private key, CA certificates).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why (in the message, not a separate cause, so that it is said once).
        error: std::io::Error,
    },
    /// The file is not PEM, or a PEM section in it is broken.
    #[error("{what} {path} is not valid PEM: {reason}")]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        reason: String,
    },
    /// The file holds no PEM section of the kind needed.
    #[error("{path} holds no {what} (expected a PEM \"{label}\" section)")]
    Missing {
        /// What the file should hold.
        what: &'static str,
        /// The PEM label looked for.
        label: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the material: a key that does not match the certificate, a CA certificate it
    /// cannot parse, a key type it does not support.
    #[error("{what}: {}", explain(error))]
    Rejected {
        /// What was being set up, with the files involved.
        what: String,
        /// rustls' reason (in the message, not a separate cause, so that it is said once).
        error: rustls::Error,
    },
    /// The client CA file's certificates do not make a usable verifier.
    #[error("client CA {path}: {reason}")]
    ClientVerifier {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A client certificate was given without its key or the other way round.
    #[error("a client certificate needs both --tls-cert and --tls-key")]
    HalfClientIdentity,
    /// The name the server's certificate is checked against is not a DNS name or an IP address.
    #[error("{0:?} is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName(String),
}

/// rustls' reason, in words where its own are terse.
fn explain(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            "the private key does not belong to the certificate".to_owned()
        }
        other => other.to_string(),
    }
}
