//! A server with a connection budget reserves every TLS connection's buffers before its handshake and
//! gives them back when the connection closes; a connection the budget cannot hold gets a fatal
//! `internal_error` alert and nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use vknf_testkit::pki::TestPki;
use vknf_tls::{
    CONNECTION_BUFFER_BYTES, ClientTls, ClientTlsFiles, ConnectionBudget, HandshakeError, Reservation, ServerTls,
    ServerTlsFiles,
};

/// Bytes reserved, given back when the reservation is dropped.
struct Reserved(Arc<AtomicUsize>, usize);

impl Drop for Reserved {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::SeqCst);
    }
}

/// A budget of `limit` bytes counted in `used`.
fn budget(limit: usize, used: Arc<AtomicUsize>) -> ConnectionBudget {
    ConnectionBudget::new(move |bytes| {
        used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
            (u + bytes <= limit).then_some(u + bytes)
        })
        .map(|_| Box::new(Reserved(used.clone(), bytes)) as Reservation)
        .map_err(|u| format!("{u} of {limit} bytes in use"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reserve_their_buffers_and_are_refused_past_the_budget() {
    let pki = TestPki::generate();
    let used = Arc::new(AtomicUsize::new(0));
    let server = ServerTls::load(&ServerTlsFiles {
        cert: pki.cert("server"),
        key: pki.key("server"),
        client_ca: None,
    })
    .unwrap()
    .with_connection_budget(budget(CONNECTION_BUFFER_BYTES, used.clone()));
    let client = ClientTls::load(&ClientTlsFiles {
        ca: pki.cert("ca"),
        cert: None,
        key: None,
        server_name: Some("localhost".into()),
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = tokio::spawn({
        let server = server.clone();
        async move {
            let mut results = Vec::new();
            for _ in 0..2 {
                let (stream, _) = listener.accept().await.unwrap();
                results.push(server.accept("binary", stream).await);
            }
            results
        }
    });

    let mut first = client.connect(TcpStream::connect(addr).await.unwrap()).await.unwrap();
    let refused = client.connect(TcpStream::connect(addr).await.unwrap()).await;
    let error = refused.expect_err("no room for a second connection").to_string();
    assert!(error.contains("InternalError"), "{error}");

    let mut results = accepting.await.unwrap();
    let refusal = results.pop().unwrap().expect_err("refused");
    assert!(matches!(refusal, HandshakeError::OverBudget(_)), "{refusal}");
    assert!(refusal.to_string().contains("bytes in use"), "{refusal}");
    let mut accepted = results.pop().unwrap().expect("the first handshake");
    assert_eq!(used.load(Ordering::SeqCst), CONNECTION_BUFFER_BYTES);
    assert_eq!(server.metrics().handshakes("binary", "over_budget"), 1);
    assert_eq!(server.metrics().handshakes("binary", "ok"), 1);

    // The connection works, and the socket under it is still reachable.
    assert!(accepted.get_ref().0.set_nodelay(true).is_ok());
    first.write_all(b"ping").await.unwrap();
    let mut word = [0u8; 4];
    accepted.read_exact(&mut word).await.unwrap();
    assert_eq!(&word, b"ping");

    drop(accepted);
    assert_eq!(used.load(Ordering::SeqCst), 0, "closing gives the buffers back");
    let _ = tokio::time::timeout(Duration::from_secs(1), first.read(&mut word)).await;
}
