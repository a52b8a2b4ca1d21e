//! The port's use of the process's memory budget with real HTTP/2 and TLS clients on loopback: gRPC
//! answers held for a client that never reads them are charged until written, and past the
//! connection's share its new calls are refused while other clients keep being served; every TLS
//! connection's buffers are charged while it lives, and a connection the budget cannot hold is refused
//! with an alert.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use tokio::net::TcpStream;
use vknf_oip::grpc::proto::model_infer_request::InferInputTensor;
use vknf_oip::grpc::proto::{ModelInferRequest, ModelInferResponse};
use vknf_oip::{OipConfig, OipServer};
use vknf_runtime::{Category, MemoryBudget, Runtime, RuntimeSettings};
use vknf_testkit::gate::Gate;
use vknf_testkit::pki::TestPki;
use vknf_tls::{CONNECTION_BUFFER_BYTES, ClientTls, ClientTlsFiles, ServerTls, ServerTlsFiles};

mod common;

use common::{CLASSES, FEATURES, in_process, rows, serve_forest};
/// Rows of one call: its answer (a label and three scores a row) is 32,000 bytes.
const ROWS: usize = 2000;
const ANSWER_BYTES: usize = ROWS * (4 + 4 * CLASSES);

async fn start(memory_budget: usize, config: OipConfig) -> (Runtime, OipServer) {
    let settings = RuntimeSettings {
        memory_budget,
        ..RuntimeSettings::default()
    };
    serve_forest(Gate::new(), settings, config, None).await
}

/// A `ModelInfer` call as gRPC puts it on the wire: a length-prefixed message.
fn infer_request(data: &[f32]) -> Bytes {
    let message = ModelInferRequest {
        model_name: "forest".into(),
        inputs: vec![InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![(data.len() / FEATURES) as i64, FEATURES as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![Bytes::copy_from_slice(bytemuck::cast_slice(data))],
        ..Default::default()
    };
    let encoded = message.encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + encoded.len());
    framed.put_u8(0);
    framed.put_u32(encoded.len() as u32);
    framed.put_slice(&encoded);
    framed.freeze()
}

fn grpc_post(body: Bytes) -> http::Request<Full<Bytes>> {
    http::Request::post("http://x/inference.GRPCInferenceService/ModelInfer")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body))
        .unwrap()
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An HTTP/2 connection (h2c) whose client grants the server `stream_window` bytes per stream and
/// never more than the protocol's initial 64 KiB for the connection unless it reads.
async fn h2(addr: SocketAddr, stream_window: u32) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(65_535)
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2c with prior knowledge");
    tokio::spawn(connection);
    sender
}

/// Sends `data` and reads the whole answer: its `grpc-status` and, when 0, labels and scores.
async fn read_call(sender: &mut Sender, data: &[f32]) -> (String, Option<(Vec<u32>, Vec<f32>)>) {
    let response = sender.send_request(grpc_post(infer_request(data))).await.unwrap();
    let header_status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let collected = response.into_body().collect().await.unwrap();
    let status = header_status.unwrap_or_else(|| {
        collected.trailers().expect("trailers")["grpc-status"]
            .to_str()
            .unwrap()
            .to_owned()
    });
    if status != "0" {
        return (status, None);
    }
    let body = collected.to_bytes();
    let answer = ModelInferResponse::decode(&body[5..]).unwrap();
    let labels = words(&answer.raw_output_contents[0]).collect();
    let scores = words(&answer.raw_output_contents[1]).map(f32::from_bits).collect();
    (status, Some((labels, scores)))
}

/// Little-endian 4-byte words of a raw tensor.
fn words(raw: &[u8]) -> impl Iterator<Item = u32> + '_ {
    raw.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap()))
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_answers_a_client_does_not_read_stay_charged_and_bounded_by_its_share() {
    // 4 MiB: one connection may hold 512 KiB, sixteen answers' worth.
    let (runtime, server) = start(4 << 20, OipConfig::default()).await;
    let budget: MemoryBudget = runtime.budget().clone();
    let share = budget.client_share();
    let addr = server.local_addr();

    // The slow client grants 1 KiB a stream and never reads: its answers stay with the server.
    let mut slow = h2(addr, 1024).await;
    let (mut held, mut refused) = (Vec::new(), 0);
    for call in 0..40 {
        let response = slow
            .send_request(grpc_post(infer_request(&rows(ROWS, call))))
            .await
            .unwrap();
        match response.headers().get("grpc-status") {
            // A trailers-only answer: refused before anything was computed.
            Some(status) => {
                assert_eq!(status, "8", "RESOURCE_EXHAUSTED");
                let message = response.headers()["grpc-message"].to_str().unwrap();
                let message = percent_encoding::percent_decode_str(message).decode_utf8_lossy();
                assert!(message.contains("read the answers or retry later"), "{message}");
                refused += 1;
            }
            None => held.push(response),
        }
        assert!(
            budget.used() <= share + ANSWER_BYTES + 4096,
            "{budget:?} after call {call}"
        );
    }
    assert!(held.len() >= 8, "{} answers held", held.len());
    assert!(refused >= 20, "{refused} calls refused");
    assert_eq!(
        budget.refusals(Category::Unsent, "share_full") + budget.refusals(Category::Receiving, "share_full"),
        refused
    );
    // What the server holds for it is charged: at most 64 KiB could be written before the windows shut.
    let unsent = budget.used_by(Category::Unsent);
    assert!(
        unsent + (80 << 10) >= held.len() * ANSWER_BYTES,
        "{unsent} bytes charged"
    );
    assert!(budget.peak() <= share + ANSWER_BYTES + 4096, "peak {}", budget.peak());

    // Another client is served meanwhile, answers equal to the in-process API.
    let mut good = h2(addr, 1 << 20).await;
    for call in 0..5 {
        let data = rows(ROWS, 100 + call);
        let (status, answer) = read_call(&mut good, &data).await;
        assert_eq!(status, "0");
        assert_eq!(answer.unwrap(), in_process(&runtime, data).await);
    }

    // The slow client goes: everything it held is given back.
    drop((held, slow));
    eventually("the slow connection's charges given back", || budget.used() == 0).await;
    assert_eq!(budget.used_by(Category::Unsent), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_charged_until_its_client_reads_it() {
    let (runtime, server) = start(64 << 20, OipConfig::default()).await;
    let budget = runtime.budget().clone();
    let mut slow = h2(server.local_addr(), 1024).await;
    let data = rows(ROWS, 7);
    let response = slow.send_request(grpc_post(infer_request(&data))).await.unwrap();
    assert!(response.headers().get("grpc-status").is_none());
    // Nothing but 1 KiB of it can be written: the rest is charged as unsent.
    eventually("the answer charged", || {
        budget.used_by(Category::Unsent) >= ANSWER_BYTES - 2048
    })
    .await;
    // Reading it opens the window; once written it is given back.
    let collected = response.into_body().collect().await.unwrap();
    let answer = ModelInferResponse::decode(&collected.to_bytes()[5..]).unwrap();
    let labels: Vec<u32> = words(&answer.raw_output_contents[0]).collect();
    assert_eq!(labels, in_process(&runtime, data).await.0);
    eventually("the answer given back", || budget.used() == 0).await;
    drop(slow);
    server.shutdown().await;
}

fn tls_pair(pki: &TestPki) -> (ServerTls, ClientTls) {
    let server = ServerTls::load(&ServerTlsFiles {
        cert: pki.cert("server"),
        key: pki.key("server"),
        client_ca: None,
    })
    .unwrap()
    .with_alpn(&[vknf_tls::alpn::H2, vknf_tls::alpn::HTTP_1_1]);
    let client = ClientTls::load(&ClientTlsFiles {
        ca: pki.cert("ca"),
        cert: None,
        key: None,
        server_name: Some("localhost".into()),
    })
    .unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_are_charged_while_open_and_refused_past_the_budget() {
    let pki = TestPki::generate();
    let (server_tls, client_tls) = tls_pair(&pki);
    let metrics = server_tls.metrics().clone();
    // Room for three connections' buffers beside nothing else.
    let limit = 3 * CONNECTION_BUFFER_BYTES + CONNECTION_BUFFER_BYTES / 2;
    let config = OipConfig {
        tls: Some(server_tls),
        ..OipConfig::default()
    };
    let (runtime, server) = start(limit, config).await;
    let budget = runtime.budget().clone();
    let addr = server.local_addr();

    let mut open = Vec::new();
    for n in 1..=3 {
        let stream = client_tls
            .connect(TcpStream::connect(addr).await.unwrap())
            .await
            .expect("the handshake completes");
        open.push(stream);
        eventually("the connection charged", || {
            budget.used_by(Category::Tls) == n * CONNECTION_BUFFER_BYTES
        })
        .await;
    }
    // A fourth does not fit: refused with an alert before the handshake, counted.
    let refused = client_tls.connect(TcpStream::connect(addr).await.unwrap()).await;
    let error = refused.expect_err("refused").to_string();
    assert!(error.contains("InternalError"), "{error}");
    assert_eq!(metrics.handshakes("oip", "over_budget"), 1);
    assert_eq!(budget.refusals(Category::Tls, "budget_full"), 1);
    // OpenSSL's client sees the same alert.
    let ca = pki.cert("ca");
    let openssl = tokio::task::spawn_blocking(move || {
        std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                "localhost",
                "-CAfile",
            ])
            .arg(ca)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs")
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&openssl.stderr).into_owned() + &String::from_utf8_lossy(&openssl.stdout);
    assert!(!openssl.status.success(), "{said}");
    assert!(said.contains("alert internal error"), "{said}");
    assert_eq!(metrics.handshakes("oip", "over_budget"), 2);
    assert_eq!(budget.used_by(Category::Tls), 3 * CONNECTION_BUFFER_BYTES);

    // Closing one gives its part back, and a new connection fits again.
    drop(open.pop());
    eventually("a closed connection given back", || {
        budget.used_by(Category::Tls) == 2 * CONNECTION_BUFFER_BYTES
    })
    .await;
    let again = client_tls
        .connect(TcpStream::connect(addr).await.unwrap())
        .await
        .expect("room again");
    open.push(again);
    eventually("four handshakes", || metrics.handshakes("oip", "ok") == 4).await;
    drop(open);
    eventually("every connection given back", || budget.used() == 0).await;
    server.shutdown().await;
}
