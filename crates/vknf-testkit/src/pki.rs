//! A throw-away public-key infrastructure for TLS tests, made by the `openssl` command (a TLS stack
//! nobody here wrote): a CA, a server certificate for `localhost` and `127.0.0.1`, a client
//! certificate the CA signed, and a second CA with a client certificate of its own (a stranger).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of a test PKI, in a temporary directory that lives as long as the value.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// Generates every key and certificate (EC P-256, valid for a day).
    pub fn generate() -> TestPki {
        let dir = tempfile::tempdir().expect("temporary directory");
        let pki = TestPki { dir };
        pki.authority("ca");
        pki.authority("stranger-ca");
        pki.leaf(
            "server",
            "ca",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        );
        pki.leaf("client", "ca", "vknf-test-client", "extendedKeyUsage=clientAuth");
        pki.leaf("stranger", "stranger-ca", "stranger", "extendedKeyUsage=clientAuth");
        pki
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `NAME.crt` (PEM).
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir().join(format!("{name}.crt"))
    }

    /// `NAME.key` (PEM, PKCS#8).
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir().join(format!("{name}.key"))
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir())
            .output()
            .expect("openssl runs (the Makefile's APT list installs it)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn new_key(&self, name: &str) {
        let key = format!("{name}.key");
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ]);
    }

    fn authority(&self, name: &str) {
        self.new_key(name);
        let (key, cert, subject) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("/CN=vknf test {name}"),
        );
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-out",
            &cert,
            "-days",
            "1",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    fn leaf(&self, name: &str, ca: &str, common_name: &str, extensions: &str) {
        self.new_key(name);
        let (key, csr, cert) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
        let subject = format!("/CN={common_name}");
        self.openssl(&["req", "-new", "-key", &key, "-out", &csr, "-subj", &subject]);
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir().join(&ext),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{extensions}\n"),
        )
        .expect("write extensions");
        let (ca_cert, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "1",
            "-extfile",
            &ext,
        ]);
    }
}
