//! PEM files into DER objects, with errors that name the file.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_owned(),
        error,
    })
}

/// Every certificate of a PEM file, in order; at least one.
pub(crate) fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, what)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            what,
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Missing {
            what,
            label: "CERTIFICATE",
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "private key";
    let pem = read(path, WHAT)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| match error {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            what: WHAT,
            label: "PRIVATE KEY",
            path: path.to_owned(),
        },
        other => TlsError::Pem {
            what: WHAT,
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

/// A store of the certificates of a CA file; every one must parse as a trust anchor.
pub(crate) fn roots(path: &Path, what: &'static str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(path, what)? {
        roots.add(certificate).map_err(|error| TlsError::Rejected {
            what: format!("{what} {}", path.display()),
            error,
        })?;
    }
    Ok(roots)
}
