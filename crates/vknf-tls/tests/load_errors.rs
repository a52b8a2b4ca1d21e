//! Bad TLS files are refused at start-up with an error naming the file and what is wrong with it.
//! Certificates and keys come from `openssl`.

use std::path::{Path, PathBuf};

use vknf_testkit::pki::TestPki;
use vknf_tls::{ClientTls, ClientTlsFiles, ServerTls, ServerTlsFiles};

fn server_files(cert: PathBuf, key: PathBuf, client_ca: Option<PathBuf>) -> ServerTlsFiles {
    ServerTlsFiles { cert, key, client_ca }
}

fn server_error(files: &ServerTlsFiles) -> String {
    ServerTls::load(files).expect_err("refused").to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn good_files_load_with_and_without_client_certificates() {
    let pki = TestPki::generate();
    let mutual = ServerTls::load(&server_files(
        pki.cert("server"),
        pki.key("server"),
        Some(pki.cert("ca")),
    ))
    .unwrap();
    assert!(mutual.requires_client_certificates());
    let server_only = ServerTls::load(&server_files(pki.cert("server"), pki.key("server"), None)).unwrap();
    assert!(!server_only.requires_client_certificates());
    ClientTls::load(&ClientTlsFiles {
        ca: pki.cert("ca"),
        cert: Some(pki.cert("client")),
        key: Some(pki.key("client")),
        server_name: Some("localhost".into()),
    })
    .unwrap();
}

#[test]
fn each_bad_file_is_named_with_what_is_wrong() {
    let pki = TestPki::generate();
    let dir = pki.dir();
    let missing = dir.join("no-such.crt");
    let error = server_error(&server_files(missing.clone(), pki.key("server"), None));
    assert!(
        error.contains("cannot read certificate chain") && error.contains(&missing.display().to_string()),
        "{error}"
    );

    let garbage = write(dir, "garbage.crt", "this is not a certificate\n");
    let error = server_error(&server_files(garbage.clone(), pki.key("server"), None));
    assert!(
        error.contains(&garbage.display().to_string()) && error.contains("CERTIFICATE"),
        "{error}"
    );

    let broken = write(
        dir,
        "broken.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    let error = server_error(&server_files(broken.clone(), pki.key("server"), None));
    assert!(
        error.contains(&broken.display().to_string()) && error.contains("not valid PEM"),
        "{error}"
    );

    // A certificate where the key should be.
    let error = server_error(&server_files(pki.cert("server"), pki.cert("server"), None));
    assert!(
        error.contains("holds no private key") && error.contains("server.crt"),
        "{error}"
    );

    // Another identity's key: rustls sees that it does not match the certificate.
    let error = server_error(&server_files(pki.cert("server"), pki.key("client"), None));
    assert!(error.contains("server.crt") && error.contains("client.key"), "{error}");

    let error = server_error(&server_files(
        pki.cert("server"),
        pki.key("server"),
        Some(dir.join("no-ca.crt")),
    ));
    assert!(
        error.contains("client CA certificates") && error.contains("no-ca.crt"),
        "{error}"
    );

    let half = ClientTls::load(&ClientTlsFiles {
        ca: pki.cert("ca"),
        cert: Some(pki.cert("client")),
        key: None,
        server_name: None,
    })
    .expect_err("a certificate without its key");
    assert!(half.to_string().contains("--tls-key"), "{half}");

    let bad_name = ClientTls::load(&ClientTlsFiles {
        ca: pki.cert("ca"),
        server_name: Some("not a name!".into()),
        ..ClientTlsFiles::default()
    })
    .expect_err("an invalid server name");
    assert!(bad_name.to_string().contains("not a name!"), "{bad_name}");
}
