//! The Open Inference Protocol port under hostile and heavy use, on loopback: malformed JSON, wrong
//! shapes and datatypes, unknown models and paths, oversized and slow bodies, a full queue, many
//! streams on one HTTP/2 connection. Every request gets the specification's answer, nothing crashes,
//! buffered bytes return to zero, and the port keeps serving. Answers are checked against the
//! in-process API of the same runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use vknf_oip::{OipConfig, OipServer};
use vknf_runtime::{Runtime, RuntimeSettings};
use vknf_testkit::gate::Gate;

mod common;

use common::{CLASSES, FEATURES, FUNCTION, in_process, rows, serve_forest};

struct Fixture {
    runtime: Runtime,
    server: OipServer,
    gate: Arc<Gate>,
}

impl Fixture {
    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

async fn start(settings: RuntimeSettings, config: OipConfig) -> Fixture {
    let gate = Gate::new();
    let (runtime, server) = serve_forest(gate.clone(), settings, config, Some(64)).await;
    Fixture { runtime, server, gate }
}

/// One HTTP/1.1 exchange on a fresh connection; the server closes it after answering.
async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    read_response(stream).await
}

async fn read_response(mut stream: TcpStream) -> (u16, String, Vec<u8>) {
    let mut response = Vec::new();
    // A bound, not a measurement: a server that never answers fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response))
        .await
        .expect("the server answers")
        .unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head[9..12].parse().unwrap();
    (status, head, response[split + 4..].to_vec())
}

async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, Value) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (status, _, body) = exchange(addr, &head, body).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn infer_body(data: &[f32], n_rows: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "inputs": [{"name": "features", "shape": [n_rows, FEATURES], "datatype": "FP32", "data": data}],
        "outputs": [{"name": "labels"}, {"name": "scores"}]
    }))
    .unwrap()
}

/// The labels and scores of a JSON answer.
fn outputs(answer: &Value) -> (Vec<u32>, Vec<f32>) {
    let output = |name: &str| {
        answer["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("no output {name} in {answer}"))
            .clone()
    };
    let labels = output("labels")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let scores = output("scores")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    (labels, scores)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_binary_answers_equal_the_in_process_api() {
    let fixture = start(RuntimeSettings::default(), OipConfig::default()).await;
    let data = rows(9, 1);
    let expected = in_process(&fixture.runtime, data.clone()).await;
    assert_eq!(expected.0.len(), 9);

    // JSON in, JSON out; the model by its short name.
    let (status, answer) = post(fixture.addr(), "/v2/models/forest/infer", &infer_body(&data, 9)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(outputs(&answer), expected);
    assert_eq!(answer["model_name"], "forest");
    assert_eq!(answer["outputs"][0]["shape"], json!([9]));
    assert_eq!(answer["outputs"][1]["shape"], json!([9, CLASSES]));
    // The full name, URL-encoded, names the same model.
    let (status, same) = post(
        fixture.addr(),
        "/v2/models/default%2Fforest/infer",
        &infer_body(&data, 9),
    )
    .await;
    assert_eq!((status, outputs(&same)), (200, expected.clone()));

    // Binary in, binary out: the JSON header, then the tensors in the order of the outputs.
    let header = serde_json::to_vec(&json!({
        "inputs": [{"name": "features", "shape": [9, FEATURES], "datatype": "FP32",
                    "parameters": {"binary_data_size": data.len() * 4}}],
        "outputs": [{"name": "scores", "parameters": {"binary_data": true}},
                    {"name": "labels", "parameters": {"binary_data": true}}]
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend_from_slice(bytemuck::cast_slice(&data));
    let head = format!(
        "POST /v2/models/forest/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Inference-Header-Content-Length: {}\r\nContent-Length: {}\r\n\r\n",
        header.len(),
        body.len()
    );
    let (status, response_head, response) = exchange(fixture.addr(), &head, &body).await;
    assert_eq!(status, 200, "{response_head}");
    let json_length: usize = response_head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("inference-header-content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("the binary answer says where its JSON ends");
    let answer: Value = serde_json::from_slice(&response[..json_length]).unwrap();
    let scores_size = answer["outputs"][0]["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
    let labels_size = answer["outputs"][1]["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
    assert_eq!((scores_size, labels_size), (9 * CLASSES * 4, 9 * 4));
    let tensors = &response[json_length..];
    assert_eq!(tensors.len(), scores_size + labels_size);
    let words = |bytes: &[u8]| -> Vec<[u8; 4]> { bytes.chunks_exact(4).map(|w| [w[0], w[1], w[2], w[3]]).collect() };
    let scores: Vec<f32> = words(&tensors[..scores_size])
        .into_iter()
        .map(f32::from_le_bytes)
        .collect();
    let labels: Vec<u32> = words(&tensors[scores_size..])
        .into_iter()
        .map(u32::from_le_bytes)
        .collect();
    assert_eq!((labels, scores), expected);

    // Metadata from the schema.
    let (status, _, body) = exchange(
        fixture.addr(),
        "GET /v2/models/forest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    let metadata: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        metadata["inputs"],
        json!([{"name": "features", "datatype": "FP32", "shape": [-1, FEATURES]}])
    );
    assert_eq!(
        metadata["outputs"][0],
        json!({"name": "labels", "datatype": "UINT32", "shape": [-1]})
    );
    assert_eq!(
        metadata["outputs"][1],
        json!({"name": "scores", "datatype": "FP32", "shape": [-1, CLASSES]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_the_specification_s_errors_and_the_port_keeps_serving() {
    let fixture = start(RuntimeSettings::default(), OipConfig::default()).await;
    let addr = fixture.addr();
    let infer = "/v2/models/forest/infer";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", b"{\"inputs\": [".to_vec(), 400, "malformed"),
        ("not an object", b"[1, 2, 3]".to_vec(), 400, "malformed"),
        (
            "wrong shape",
            serde_json::to_vec(&json!({"inputs": [{"name": "features", "shape": [2, FEATURES + 1],
                "datatype": "FP32", "data": vec![0.5; 2 * (FEATURES + 1)]}]}))
            .unwrap(),
            400,
            "shape",
        ),
        (
            "shape and data disagree",
            serde_json::to_vec(&json!({"inputs": [{"name": "features", "shape": [3, FEATURES],
                "datatype": "FP32", "data": vec![0.5; 2 * FEATURES]}]}))
            .unwrap(),
            400,
            "elements",
        ),
        (
            "wrong datatype",
            serde_json::to_vec(&json!({"inputs": [{"name": "features", "shape": [1, FEATURES],
                "datatype": "INT32", "data": vec![1; FEATURES]}]}))
            .unwrap(),
            400,
            "datatype",
        ),
        (
            "strings for numbers",
            serde_json::to_vec(&json!({"inputs": [{"name": "features", "shape": [1, FEATURES],
                "datatype": "FP32", "data": vec!["a"; FEATURES]}]}))
            .unwrap(),
            400,
            "features",
        ),
        (
            "NaN is not JSON",
            format!(
                "{{\"inputs\": [{{\"name\": \"features\", \"shape\": [1, {FEATURES}], \"datatype\": \"FP32\", \"data\": [NaN, 1, 2, 3]}}]}}"
            )
            .into_bytes(),
            400,
            "malformed",
        ),
        (
            "an unknown output",
            serde_json::to_vec(&json!({"inputs": [{"name": "features", "shape": [1, FEATURES],
                "datatype": "FP32", "data": vec![0.5; FEATURES]}], "outputs": [{"name": "explanation"}]}))
            .unwrap(),
            400,
            "explanation",
        ),
        (
            "two inputs",
            serde_json::to_vec(&json!({"inputs": [
                {"name": "features", "shape": [1, FEATURES], "datatype": "FP32", "data": vec![0.5; FEATURES]},
                {"name": "features", "shape": [1, FEATURES], "datatype": "FP32", "data": vec![0.5; FEATURES]}]}))
            .unwrap(),
            400,
            "one input",
        ),
    ];
    for (what, body, want, mentions) in &cases {
        let (status, answer) = post(addr, infer, body).await;
        assert_eq!(status, *want, "{what}: {answer}");
        let message = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error object: {answer}"));
        assert!(message.contains(mentions), "{what}: {message}");
    }
    let (status, answer) = post(addr, "/v2/models/no-such-model/infer", &infer_body(&rows(1, 0), 1)).await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("no-such-model"));
    let (status, _) = post(addr, "/v2/models/forest/versions/7/infer", &infer_body(&rows(1, 0), 1)).await;
    assert_eq!(status, 404);
    let (status, _) = post(addr, "/v2/models/forest/explain", b"{}").await;
    assert_eq!(status, 404);
    let (status, _, _) = exchange(
        addr,
        "GET /v2/models/forest/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 405);
    let head = "POST /v2/models/forest/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\nInference-Header-Content-Length: x\r\nContent-Length: 2\r\n\r\n";
    assert_eq!(exchange(addr, head, b"{}").await.0, 400);

    let metrics = fixture.runtime.metrics();
    assert_eq!(
        metrics.front_end_error_count("rest", FUNCTION, "BAD_REQUEST"),
        cases.len() as u64 + 1
    );
    assert_eq!(metrics.front_end_error_count("rest", "-", "UNKNOWN_MODEL"), 2);
    // Still serving, with right answers.
    let data = rows(3, 5);
    let (status, answer) = post(addr, infer, &infer_body(&data, 3)).await;
    assert_eq!(status, 200);
    assert_eq!(outputs(&answer), in_process(&fixture.runtime, data).await);
    assert_eq!(fixture.server.buffered_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_bodies_are_refused_and_never_held() {
    let config = OipConfig {
        max_body_bytes: 64 << 10,
        body_timeout: Duration::from_secs(1),
        ..OipConfig::default()
    };
    let fixture = start(RuntimeSettings::default(), config).await;
    let addr = fixture.addr();

    // A declared gigabyte: answered 413 from the headers alone, without a byte of body sent.
    let head =
        "POST /v2/models/forest/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1073741824\r\n\r\n";
    let (status, _, body) = exchange(addr, head, b"").await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));

    // A chunked body that never says its length: cut off at the limit.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /v2/models/forest/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b' '; 16 << 10];
    for _ in 0..5 {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let (status, _, _) = read_response(stream).await;
    assert_eq!(status, 413);

    // A body that stops arriving: answered 408 once the body timeout passes.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /v2/models/forest/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100\r\n\r\n{\"inputs\"")
        .await
        .unwrap();
    let (status, _, _) = read_response(stream).await;
    assert_eq!(status, 408);

    let metrics = fixture.runtime.metrics();
    assert_eq!(metrics.front_end_error_count("rest", FUNCTION, "PAYLOAD_TOO_LARGE"), 2);
    assert_eq!(metrics.front_end_error_count("rest", FUNCTION, "BODY_TIMEOUT"), 1);
    assert_eq!(fixture.server.buffered_bytes(), 0);
    let data = rows(2, 3);
    let (status, answer) = post(addr, "/v2/models/forest/infer", &infer_body(&data, 2)).await;
    assert_eq!(
        (status, outputs(&answer)),
        (200, in_process(&fixture.runtime, data).await)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_503_and_the_queued_requests_are_answered() {
    let settings = RuntimeSettings {
        lanes_per_function: 1,
        // Room for four one-row requests.
        max_queued_bytes: 4 * FEATURES * 4,
        ..RuntimeSettings::default()
    };
    let fixture = start(settings, OipConfig::default()).await;
    let addr = fixture.addr();
    fixture.gate.close();
    let first = tokio::spawn(post(addr, "/v2/models/forest/infer", infer_body(&rows(1, 0), 1).leak()));
    // Bounded polling for a state, not a timing: the first request holds the only lane.
    for _ in 0..2000 {
        if fixture.gate.waiting.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fixture.gate.waiting.load(Ordering::SeqCst), 1);
    let more: Vec<_> = (0..10)
        .map(|i| tokio::spawn(post(addr, "/v2/models/forest/infer", infer_body(&rows(1, i), 1).leak())))
        .collect();
    let metrics = fixture.runtime.metrics().clone();
    for _ in 0..2000 {
        let busy = metrics.front_end_error_count("rest", FUNCTION, "BUSY");
        if busy > 0 && busy as usize + fixture.runtime.get(FUNCTION).await.unwrap().queued_requests() == 11 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    fixture.gate.open();
    assert_eq!(first.await.unwrap().0, 200);
    let mut busy = 0;
    for request in more {
        let (status, answer) = request.await.unwrap();
        match status {
            200 => {}
            503 => {
                busy += 1;
                assert!(answer["error"].as_str().is_some(), "{answer}");
            }
            other => panic!("status {other}: {answer}"),
        }
    }
    assert!(busy > 0, "the queue of four requests took ten");
    assert_eq!(busy, metrics.front_end_error_count("rest", FUNCTION, "BUSY"));
    assert_eq!(fixture.runtime.get(FUNCTION).await.unwrap().queued_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_on_one_http2_connection_are_all_answered_within_the_stream_bound() {
    let config = OipConfig {
        max_concurrent_streams: 8,
        ..OipConfig::default()
    };
    let fixture = start(RuntimeSettings::default(), config).await;
    let stream = TcpStream::connect(fixture.addr()).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2c with prior knowledge");
    tokio::spawn(connection);
    const STREAMS: usize = 300;
    let data = rows(2, 9);
    let expected = in_process(&fixture.runtime, data.clone()).await;
    let body = Bytes::from(infer_body(&data, 2));
    let requests: Vec<_> = (0..STREAMS)
        .map(|_| {
            let mut sender = sender.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let request = http::Request::post("http://x/v2/models/forest/infer")
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .unwrap();
                let response = sender.send_request(request).await.expect("an answer on the stream");
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status, serde_json::from_slice::<Value>(&body).unwrap())
            })
        })
        .collect();
    for request in requests {
        let (status, answer) = request.await.unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(outputs(&answer), expected);
    }
    assert_eq!(fixture.server.buffered_bytes(), 0);
    assert_eq!(fixture.runtime.get(FUNCTION).await.unwrap().queued_requests(), 0);
    let served = fixture.runtime.metrics().front_end_requests("rest", FUNCTION).get();
    assert_eq!(served, STREAMS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_and_responses_are_charged_to_the_process_memory_budget() {
    // 64 KiB in all: requests being received may hold 32 KiB of it.
    let settings = RuntimeSettings {
        memory_budget: 64 << 10,
        ..RuntimeSettings::default()
    };
    let fixture = start(settings, OipConfig::default()).await;
    let budget = fixture.runtime.budget().clone();
    let addr = fixture.addr();

    // The port's own bound (256 MiB) would take this body; the process's budget does not.
    let big = infer_body(&rows(4000, 3), 4000);
    assert!(big.len() > 64 << 10, "{} bytes", big.len());
    let (status, answer) = post(addr, "/v2/models/forest/infer", &big).await;
    assert_eq!(status, 503, "{answer}");
    let message = answer["error"].as_str().unwrap();
    // Refused once, for the budget or for the connection's share of it (8 KiB, less than a read).
    assert!(
        message.contains("retry later") || message.contains("what one connection may hold"),
        "{message}"
    );
    let refusals: u64 = ["receiving_full", "budget_full", "share_full", "larger_than_share"]
        .iter()
        .map(|reason| budget.refusals(vknf_runtime::Category::Receiving, reason))
        .sum();
    assert_eq!(refusals, 1);

    // A request that fits is answered as usual; its body, queued rows and response were charged and
    // are all given back.
    let data = rows(3, 4);
    let (status, answer) = post(addr, "/v2/models/forest/infer", &infer_body(&data, 3)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(outputs(&answer), in_process(&fixture.runtime, data).await);
    assert!(budget.peak() > 0);
    for _ in 0..1000 {
        if budget.used() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(budget.used(), 0, "every charge is given back");
    assert_eq!(fixture.server.buffered_bytes(), 0);
}

/// A function quarantined after its kernel missed a deadline is unavailable, not unknown: its
/// metadata and calls answer 503 and its readiness is false until the back-off ends and it is loaded
/// again, when it answers as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_model_is_unavailable_not_unknown() {
    let settings = RuntimeSettings {
        quarantine_backoff: Duration::from_secs(2),
        ..RuntimeSettings::default()
    };
    let fixture = start(settings, OipConfig::default()).await;
    let data = rows(3, 5);
    let expected = in_process(&fixture.runtime, data.clone()).await;
    let next_run = fixture.gate.runs.load(Ordering::SeqCst);
    fixture.gate.miss_deadline_on_run.store(next_run, Ordering::SeqCst);
    let (status, answer) = post(fixture.addr(), "/v2/models/forest/infer", &infer_body(&data, 3)).await;
    assert_eq!(status, 503, "the call whose kernel missed its deadline: {answer}");
    // The loss report is handled by the runtime's recovery task: the quarantine follows shortly.
    let function = fixture.runtime.get(FUNCTION).await.unwrap();
    for _ in 0..500 {
        if function.quarantined().is_some() && function.info().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(function.quarantined().is_some(), "the function is quarantined");

    let addr = fixture.addr();
    let get = move |path: &'static str| async move {
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, _, body) = exchange(addr, &head, b"").await;
        (status, serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null))
    };
    let (status, body) = get("/v2/models/forest").await;
    assert_eq!(status, 503, "metadata while quarantined: {body}");
    assert!(body.to_string().contains("quarantined"), "{body}");
    let (status, body) = get("/v2/models/forest/ready").await;
    assert_eq!(
        (status, &body["ready"]),
        (400, &json!(false)),
        "a quarantined model is known, not ready"
    );
    let (status, answer) = post(fixture.addr(), "/v2/models/forest/infer", &infer_body(&data, 3)).await;
    assert_eq!(status, 503, "{answer}");

    // After the back-off the function is loaded again and answers as before.
    let mut answered = None;
    for _ in 0..200 {
        let (status, answer) = post(fixture.addr(), "/v2/models/forest/infer", &infer_body(&data, 3)).await;
        if status == 200 {
            answered = Some(answer);
            break;
        }
        assert_eq!(status, 503, "{answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = answered.expect("the function serves again after its back-off");
    assert_eq!(outputs(&answer).0, expected.0);
}
