//! TLS on every port of a server, checked with TLS stacks nobody here wrote: `openssl s_client` and
//! `curl` (OpenSSL) against the binary, operations and Open Inference Protocol ports, and the
//! project's own clients (rustls). Certificates come from `openssl` ([`TestPki`]).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output};
use std::time::Duration;

use common::{addr, random_forest, random_rows, wait_for, write_forest_manifest};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use vknf_forest::GpuForest;
use vknf_protocol::blocking_client::BlockingClient;
use vknf_protocol::client::{Client, ClientConfig};
use vknf_server::{BindAddress, FunctionStatus, Server, ServerConfig};
use vknf_testkit::pki::TestPki;
use vknf_tls::{ClientTls, ClientTlsFiles, ServerTls, ServerTlsFiles};

const FEATURES: usize = 6;
const CLASSES: usize = 4;
const SCORES: u32 = 1 << 1;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(400);

fn server_tls(pki: &TestPki, require_client_certificates: bool) -> ServerTls {
    ServerTls::load(&ServerTlsFiles {
        cert: pki.cert("server"),
        key: pki.key("server"),
        client_ca: require_client_certificates.then(|| pki.cert("ca")),
    })
    .expect("the test PKI loads")
    .with_handshake_timeout(HANDSHAKE_TIMEOUT)
}

/// A client set-up trusting the test CA, presenting `identity`'s certificate if given.
fn client_tls(pki: &TestPki, identity: Option<&str>) -> ClientTls {
    ClientTls::load(&ClientTlsFiles {
        ca: pki.cert("ca"),
        cert: identity.map(|name| pki.cert(name)),
        key: identity.map(|name| pki.key(name)),
        server_name: None,
    })
    .expect("the client's files load")
}

fn client_config(tls: ClientTls) -> ClientConfig {
    ClientConfig {
        tls: Some(tls),
        ..ClientConfig::default()
    }
}

/// A server over TLS serving one forest function on loopback.
async fn tls_server(
    dir: &std::path::Path,
    pki: &TestPki,
    require_client_certificates: bool,
    max_connections: usize,
) -> (Server, GpuForest) {
    let model = random_forest(FEATURES, CLASSES, 8, 5, 3);
    write_forest_manifest(dir, "iris", &model, 64, 200);
    let config = ServerConfig {
        tls: Some(server_tls(pki, require_client_certificates)),
        max_connections,
        ..common::test_config()
    };
    let server = common::start_server(dir, config).await;
    assert!(server.status().is_ready(), "{:?}", server.status());
    (server, model)
}

/// One row through `client`; panics unless the labels and scores are the CPU reference's.
async fn assert_one_row_answered(client: &Client, model: &GpuForest, seed: u64) {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let rows = random_rows(1, FEATURES, &mut rng);
    let answer = client
        .infer(FEATURES as u32, &rows, SCORES)
        .await
        .expect("answered over TLS");
    let expected = model.predict_cpu(&rows, 1).unwrap();
    assert_eq!(answer.output(0).expect("labels").to_u32(), expected.labels);
    let scores: Vec<u32> = answer
        .output(1)
        .expect("scores")
        .to_f32()
        .iter()
        .map(|s| s.to_bits())
        .collect();
    assert_eq!(scores, expected.scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>());
}

/// How many handshakes of `port` ended with `result`, as `/metrics` reports them.
fn handshakes(server: &Server, port: &str, result: &str) -> u64 {
    let metrics = server.encode_metrics();
    let prefix = format!("vknf_tls_handshakes_total{{port=\"{port}\",result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |count| count.trim().parse().expect("a count"))
}

/// Runs a command line on a blocking thread (it talks to the server on this runtime).
async fn run(program: &'static str, args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(program)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"))
    })
    .await
    .unwrap()
}

/// Waits until the peer closes `stream` (EOF or reset) and says whether it did within 10 s.
async fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut scratch = [0u8; 4096];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    ended.await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_port_answers_over_tls_and_only_to_certified_clients() {
    common::bounded(binary_port_body()).await;
}

async fn binary_port_body() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let (server, model) = tls_server(dir.path(), &pki, true, 4096).await;
    let target = addr(&server, "iris");

    // The project's async client with the right certificate: the reference answer.
    let client = Client::connect_with(target, client_config(client_tls(&pki, Some("client"))))
        .await
        .expect("TLS connection with a client certificate");
    assert_one_row_answered(&client, &model, 1).await;
    // Many frames at once, so that answers also take the writer task's path and its TLS flush.
    let client = std::sync::Arc::new(client);
    let rows = random_rows(
        2000,
        FEATURES,
        &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(2),
    );
    let calls: Vec<_> = rows
        .chunks(FEATURES * 50)
        .map(|chunk| {
            let (client, chunk) = (client.clone(), chunk.to_vec());
            tokio::spawn(async move { client.infer(FEATURES as u32, &chunk, SCORES).await })
        })
        .collect();
    for (chunk, call) in rows.chunks(FEATURES * 50).zip(calls) {
        let answer = call.await.unwrap().expect("answered over TLS");
        assert_eq!(
            answer.output(0).unwrap().to_u32(),
            model.predict_cpu(chunk, 50).unwrap().labels
        );
    }

    // The blocking client (the load generator's depth-1 connections) too, checking the name.
    let tls = client_tls(&pki, Some("client"))
        .with_default_server_name("localhost")
        .unwrap();
    let description = tokio::task::spawn_blocking(move || {
        BlockingClient::connect_with(target, Duration::from_secs(10), Some(&tls))
            .and_then(|mut client| client.describe())
    })
    .await
    .unwrap()
    .expect("blocking TLS client");
    assert_eq!(description.name, "default/iris");

    // OpenSSL's client verifies the chain and completes the handshake with the client certificate.
    let s_client = run(
        "openssl",
        vec![
            "s_client".into(),
            "-connect".into(),
            target.to_string(),
            "-CAfile".into(),
            pki.cert("ca").display().to_string(),
            "-cert".into(),
            pki.cert("client").display().to_string(),
            "-key".into(),
            pki.key("client").display().to_string(),
            "-verify_return_error".into(),
            "-verify_ip".into(),
            "127.0.0.1".into(),
            "-brief".into(),
        ],
    )
    .await;
    let said = String::from_utf8_lossy(&s_client.stderr);
    assert!(said.contains("Verification: OK") && said.contains("TLSv1.3"), "{said}");

    // No client certificate, or one from another CA: refused, however the client learns it.
    let failed_before = handshakes(&server, "binary", "failed");
    for identity in [None, Some("stranger")] {
        let refused = match Client::connect_with(target, client_config(client_tls(&pki, identity))).await {
            Err(_) => true,
            Ok(client) => client.describe().await.is_err(),
        };
        assert!(refused, "a client with identity {identity:?} was served");
    }
    // Counted once the server has seen each handshake fail.
    wait_for(
        || handshakes(&server, "binary", "failed") >= failed_before + 2,
        "two failed handshakes",
    )
    .await;

    // A plaintext client against the TLS port is cut cleanly; a raw one too.
    let plain = Client::connect(target).await.expect("TCP connects");
    assert!(plain.describe().await.is_err(), "plaintext was answered on a TLS port");
    let mut raw = TcpStream::connect(target).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_by_peer(&mut raw).await,
        "the server kept a plaintext connection open"
    );

    // A client that connects and never says hello is cut after the handshake timeout and counted.
    let mut silent = TcpStream::connect(target).await.unwrap();
    assert!(closed_by_peer(&mut silent).await, "a stalled handshake was kept open");
    wait_for(
        || handshakes(&server, "binary", "timeout") >= 1,
        "the timed-out handshake counted",
    )
    .await;

    // None of that disturbed the certified client.
    assert_one_row_answered(&client, &model, 3).await;
    drop(client);
    wait_for(|| server.open_connections() == 0, "every connection closed").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_hold_connection_slots_and_stalled_ones_give_them_back() {
    common::bounded(slots_body()).await;
}

async fn slots_body() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let (server, model) = tls_server(dir.path(), &pki, false, 2).await;
    let target = addr(&server, "iris");

    // Two silent connections take both slots while their handshakes are pending.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(target).await.unwrap());
    }
    wait_for(|| server.open_connections() == 2, "two connections in their handshakes").await;
    // A third is refused at the limit: closed without a handshake.
    let mut third = TcpStream::connect(target).await.unwrap();
    assert!(closed_by_peer(&mut third).await);
    assert_eq!(server.server_metrics().refused_connections.get(), 1);
    // The stalled ones are cut at the handshake timeout and give their slots back.
    for stream in &mut silent {
        assert!(closed_by_peer(stream).await, "a stalled handshake was kept open");
    }
    wait_for(|| server.open_connections() == 0, "slots given back").await;
    assert_eq!(handshakes(&server, "binary", "timeout"), 2);

    // Server-only TLS: a client without a certificate is served.
    let client = Client::connect_with(target, client_config(client_tls(&pki, None)))
        .await
        .unwrap();
    assert_one_row_answered(&client, &model, 4).await;
    drop(client);
    server.shutdown().await;
}

/// Runs curl against `url` with the test CA (and the client certificate when `certified`); returns
/// its output (`-i`: status line and headers, then the body; `-v` to stderr).
async fn curl(pki: &TestPki, url: String, certified: bool, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec!["-sS".into(), "-i".into(), "-v".into(), "--max-time".into(), "10".into()];
    args.extend(["--cacert".into(), pki.cert("ca").display().to_string()]);
    if certified {
        args.extend(["--cert".into(), pki.cert("client").display().to_string()]);
        args.extend(["--key".into(), pki.key("client").display().to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url);
    run("curl", args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_the_operations_and_inference_ports_over_tls() {
    common::bounded(curl_body()).await;
}

async fn curl_body() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let (server, model) = tls_server(dir.path(), &pki, true, 4096).await;

    // The operations endpoint.
    let listener = vknf_server::ops::bind_ops("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ops: SocketAddr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let ops_task = tokio::spawn(vknf_server::ops::serve_ops(listener, server.clone(), async move {
        let _ = stopped.await;
    }));
    let livez = curl(&pki, format!("https://localhost:{}/livez", ops.port()), true, &[]).await;
    let text = String::from_utf8_lossy(&livez.stdout);
    assert!(
        livez.status.success() && text.starts_with("HTTP/1.1 200") && text.ends_with("ok\n"),
        "{text}"
    );
    let refused = curl(&pki, format!("https://127.0.0.1:{}/livez", ops.port()), false, &[]).await;
    assert!(
        !refused.status.success(),
        "served without a client certificate: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    // A plaintext request on the TLS port gets no HTTP answer.
    let plain = run(
        "curl",
        vec![
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            format!("http://127.0.0.1:{}/livez", ops.port()),
        ],
    )
    .await;
    assert!(!plain.status.success());
    let metrics = curl(&pki, format!("https://127.0.0.1:{}/metrics", ops.port()), true, &[]).await;
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.contains("vknf_tls_handshakes_total{port=\"ops\",result=\"ok\"}"),
        "{text}"
    );
    assert!(
        text.contains("vknf_tls_handshakes_total{port=\"ops\",result=\"failed\"}"),
        "{text}"
    );

    // The Open Inference Protocol port: h2 by ALPN, and HTTP/1.1.
    let oip = server.serve_oip("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let ready = curl(
        &pki,
        format!("https://localhost:{}/v2/health/ready", oip.port()),
        true,
        &["--http2"],
    )
    .await;
    let (out, err) = (
        String::from_utf8_lossy(&ready.stdout),
        String::from_utf8_lossy(&ready.stderr),
    );
    assert!(ready.status.success() && out.starts_with("HTTP/2 200"), "{out}\n{err}");
    assert!(err.contains("ALPN: server accepted h2"), "{err}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
    let rows = random_rows(3, FEATURES, &mut rng);
    let body = serde_json::json!({
        "inputs": [{"name": "features", "shape": [3, FEATURES], "datatype": "FP32", "data": rows}],
        "outputs": [{"name": "labels"}]
    })
    .to_string();
    let infer = curl(
        &pki,
        format!("https://localhost:{}/v2/models/iris/infer", oip.port()),
        true,
        &[
            "--http1.1",
            "-H",
            "content-type: application/json",
            "--data-binary",
            &body,
        ],
    )
    .await;
    let out = String::from_utf8_lossy(&infer.stdout);
    assert!(infer.status.success() && out.starts_with("HTTP/1.1 200"), "{out}");
    let json: serde_json::Value = serde_json::from_str(out.split("\r\n\r\n").nth(1).expect("a body")).unwrap();
    let labels: Vec<u32> = json["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(labels, model.predict_cpu(&rows, 3).unwrap().labels);
    let refused = curl(
        &pki,
        format!("https://127.0.0.1:{}/v2/health/live", oip.port()),
        false,
        &[],
    )
    .await;
    assert!(!refused.status.success());
    assert!(handshakes(&server, "oip", "failed") >= 1);

    let _ = stop.send(());
    ops_task.await.unwrap();
    server.shutdown().await;
}

/// A server without TLS whose function (endpoint 127.0.0.1) binds as `bind` says.
async fn status_with(bind: BindAddress, allow_plaintext: bool) -> (Server, FunctionStatus) {
    let dir = tempfile::tempdir().unwrap();
    write_forest_manifest(dir.path(), "iris", &random_forest(FEATURES, CLASSES, 4, 4, 9), 64, 200);
    let config = ServerConfig {
        bind,
        allow_plaintext,
        ..common::test_config()
    };
    let server = common::start_server(dir.path(), config).await;
    let status = server.status().functions[&common::key("iris")].clone();
    (server, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_ports_bind_their_endpoint_address_and_plaintext_stays_on_loopback() {
    common::bounded(bind_body()).await;
}

async fn bind_body() {
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    // The host's address among the endpoints: 127.0.0.1, not every address.
    let (server, status) = status_with(
        BindAddress::Endpoints {
            host: vec!["10.9.9.9".parse().unwrap(), loopback],
            otherwise: None,
        },
        false,
    )
    .await;
    let FunctionStatus::Serving { addr } = status else {
        panic!("{status:?}")
    };
    assert_eq!(addr.ip(), loopback);
    server.shutdown().await;

    // Endpoints that name another host only: not served, and readiness says why.
    let (server, status) = status_with(
        BindAddress::Endpoints {
            host: vec!["10.9.9.9".parse().unwrap()],
            otherwise: None,
        },
        false,
    )
    .await;
    assert!(
        matches!(&status, FunctionStatus::Failed { reason, .. } if reason.contains("endpoint addresses")),
        "{status:?}"
    );
    assert!(!server.status().is_ready());
    server.shutdown().await;

    // Every address without TLS: refused unless plaintext is allowed.
    let all = BindAddress::Fixed("0.0.0.0".parse().unwrap());
    let (server, status) = status_with(all.clone(), false).await;
    assert!(
        matches!(&status, FunctionStatus::Failed { reason, .. } if reason.contains("--allow-plaintext")),
        "{status:?}"
    );
    server.shutdown().await;
    let (server, status) = status_with(all, true).await;
    let FunctionStatus::Serving { addr } = status else {
        panic!("{status:?}")
    };
    assert!(addr.ip().is_unspecified());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_held_back_by_a_full_socket_all_arrive_over_tls() {
    common::bounded(full_socket_body()).await;
}

/// A client that pipelines requests whose answers overflow the socket buffers before it reads any:
/// the server's TLS session holds encrypted records it could not write, and they must still go out
/// when the client reads (nothing else will come to push them).
async fn full_socket_body() {
    use bytes::BytesMut;
    use tokio::io::AsyncWriteExt as _;
    use vknf_protocol::{Decoded, FrameDecoder, ResponseBody, encode_request};

    const REQUESTS: u64 = 32;
    const ROWS: usize = 12_000;
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let (server, model) = tls_server(dir.path(), &pki, true, 4096).await;
    let target = addr(&server, "iris");
    // A small receive window, so that the server's socket fills long before the client reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(32 * 1024).unwrap();
    let tcp = socket.connect(target).await.unwrap();
    let mut stream = client_tls(&pki, Some("client")).connect(tcp).await.expect("handshake");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(6);
    let mut sent = Vec::new();
    for id in 1..=REQUESTS {
        let rows = random_rows(ROWS, FEATURES, &mut rng);
        let mut frame = BytesMut::new();
        encode_request(&mut frame, id, FEATURES as u32, SCORES, &rows).unwrap();
        stream.write_all(&frame).await.unwrap();
        sent.push(rows);
    }
    stream.flush().await.unwrap();
    // About 7.7 MB of answers, more than the socket buffers hold, wait while the client reads nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut decoder = FrameDecoder::new(64 << 20);
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut answered = std::collections::BTreeSet::new();
    let reading = async {
        while answered.len() < REQUESTS as usize {
            while let Some(Decoded::Frame(frame)) = decoder.decode(&mut buf).unwrap() {
                let id = frame.header.request_id;
                let answer = ResponseBody::parse(frame.payload).expect("a response");
                let expected = model.predict_cpu(&sent[id as usize - 1], ROWS).unwrap();
                assert_eq!(answer.output(0).unwrap().to_u32(), expected.labels, "answer {id}");
                assert!(answered.insert(id), "answer {id} twice");
            }
            if answered.len() < REQUESTS as usize {
                assert_ne!(stream.read_buf(&mut buf).await.unwrap(), 0, "closed early");
            }
        }
    };
    let complete = tokio::time::timeout(Duration::from_secs(20), reading).await;
    assert!(
        complete.is_ok(),
        "only {} of {REQUESTS} answers arrived",
        answered.len()
    );
    drop(stream);
    server.shutdown().await;
}
