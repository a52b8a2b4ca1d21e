//! End to end: servers from manifest directories on loopback, real sockets, the CPU loader.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::{Gate, GatedLoader, addr, key, random_forest, random_rows, wait_for, write_forest_manifest};
use rand::{Rng as _, SeedableRng as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vknf_forest::GpuForest;
use vknf_protocol::client::{Client, ClientError};
use vknf_protocol::{
    Decoded, ErrorBody, ErrorCode, Frame, FrameDecoder, FrameType, Header, ResponseBody, encode_request,
};
use vknf_server::{FunctionStatus, ServerConfig};

const FEATURES: usize = 6;
const CLASSES: usize = 4;
const SCORES: u32 = 1 << 1;

fn forest(seed: u64) -> GpuForest {
    random_forest(FEATURES, CLASSES, 8, 5, seed)
}

/// Checks an answer against the CPU reference, bit for bit.
fn assert_matches_reference(forest: &GpuForest, rows: &[f32], answer: &ResponseBody, with_scores: bool) {
    let n_rows = rows.len() / forest.n_features as usize;
    let expected = forest.predict_cpu(rows, n_rows).unwrap();
    assert_eq!(answer.n_rows as usize, n_rows);
    assert_eq!(answer.output(0).expect("labels").to_u32(), expected.labels);
    match answer.output(1) {
        Some(scores) => {
            assert!(with_scores, "scores were not asked for");
            let got: Vec<u32> = scores.to_f32().iter().map(|s| s.to_bits()).collect();
            let want: Vec<u32> = expected.scores.iter().map(|s| s.to_bits()).collect();
            assert_eq!(got, want);
        }
        None => assert!(!with_scores, "scores were asked for"),
    }
}

fn agrees_with(forest: &GpuForest, rows: &[f32], answer: &ResponseBody) -> bool {
    let expected = forest.predict_cpu(rows, rows.len() / FEATURES).unwrap();
    answer.output(0).map(|o| o.to_u32()) == Some(expected.labels)
}

/// A connection speaking raw frames, for inputs the client library would never send.
struct Raw {
    stream: TcpStream,
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            decoder: FrameDecoder::new(64 << 20),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` once the server has closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(decoded) = self.decoder.decode(&mut self.buf).unwrap() {
                let Decoded::Frame(frame) = decoded else {
                    panic!("oversized answer")
                };
                return Some(frame);
            }
            let read = tokio::time::timeout(Duration::from_secs(15), self.stream.read_buf(&mut self.buf))
                .await
                .expect("server answered in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn error(&mut self) -> (u64, ErrorCode, String) {
        let frame = self.next().await.expect("an error frame");
        assert_eq!(frame.header.frame_type, FrameType::Error, "expected an error frame");
        let body = ErrorBody::parse(&frame.payload).unwrap();
        (frame.header.request_id, body.code, body.message)
    }
}

fn request(id: u64, n_features: u32, mask: u32, rows: &[f32]) -> BytesMut {
    let mut out = BytesMut::new();
    encode_request(&mut out, id, n_features, mask, rows).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_the_reference_answers_across_split_batches() {
    common::bounded(concurrent_clients_get_the_reference_answers_across_split_batches_body()).await;
}

async fn concurrent_clients_get_the_reference_answers_across_split_batches_body() {
    let dir = tempfile::tempdir().unwrap();
    let model = forest(1);
    write_forest_manifest(dir.path(), "iris", &model, 64, 500);
    let server = common::start_server(dir.path(), common::test_config()).await;
    assert!(server.status().is_ready(), "{:?}", server.status());
    let target = addr(&server, "iris");
    let model = Arc::new(model);

    let description = Client::connect(target).await.unwrap().describe().await.unwrap();
    assert_eq!(description.name, "default/iris");
    assert_eq!(description.info.input.width, FEATURES);
    assert_eq!(description.info.max_batch_rows, 64);
    assert_eq!(description.info.outputs[1].width, CLASSES);

    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..4u64 {
        let client = Arc::new(Client::connect(target).await.unwrap());
        for t in 0..6u64 {
            let (client, model) = (client.clone(), model.clone());
            tasks.spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(c * 100 + t);
                for i in 0..12 {
                    // Up to 300 rows: larger requests span several 64-row batches.
                    let n_rows = if i % 4 == 0 {
                        rng.random_range(65..300)
                    } else {
                        rng.random_range(1..40)
                    };
                    let rows = random_rows(n_rows, FEATURES, &mut rng);
                    let with_scores = i % 2 == 0;
                    let mask = if with_scores { SCORES } else { 0 };
                    let answer = client.infer(FEATURES as u32, &rows, mask).await.unwrap();
                    assert_matches_reference(&model, &rows, &answer, with_scores);
                }
            });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }

    // Every batch respected max_batch_rows, and batching did combine requests.
    let metrics = server.encode_metrics();
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    let batches = metric("vknf_batch_rows_count{function=\"default/iris\"}");
    assert_eq!(
        metric("vknf_batch_rows_bucket{le=\"64.0\",function=\"default/iris\"}"),
        batches
    );
    assert_eq!(
        metric("vknf_requests_total{function=\"default/iris\"}"),
        4.0 * 6.0 * 12.0
    );
    assert_eq!(server.queued_requests().await, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_copied_by_several_threads_get_the_reference_answers() {
    common::bounded(large_batches_body()).await;
}

async fn large_batches_body() {
    // 300 features: batches of several requests pass the 1 MiB at which the lane's rows are
    // copied in parallel chunks, and requests straddle the chunks' edges.
    const WIDE: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(random_forest(WIDE, CLASSES, 6, 6, 7));
    write_forest_manifest(dir.path(), "wide", &model, 4096, 5000);
    let server = common::start_server(dir.path(), common::test_config()).await;
    let target = addr(&server, "wide");
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..3u64 {
        let model = model.clone();
        tasks.spawn(async move {
            let client = Client::connect(target).await.unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(900 + c);
            for _ in 0..4 {
                let rows = random_rows(rng.random_range(600..1700), WIDE, &mut rng);
                let answer = client.infer(WIDE as u32, &rows, SCORES).await.unwrap();
                assert_matches_reference(&model, &rows, &answer, true);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let metrics = server.encode_metrics();
    let largest_bucket_seen = metrics
        .lines()
        .filter(|l| l.starts_with("vknf_batch_rows_bucket{le=\"1024.0\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .next()
        .expect("batch histogram");
    let batches = metrics
        .lines()
        .find(|l| l.starts_with("vknf_batch_rows_count"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .expect("batch count");
    assert!(
        largest_bucket_seen < batches,
        "no batch exceeded 1024 rows (1.2 MB), so the parallel copy was not exercised:\n{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_error_and_everyone_keeps_being_served() {
    common::bounded(bad_input_gets_the_right_error_and_everyone_keeps_being_served_body()).await;
}

async fn bad_input_gets_the_right_error_and_everyone_keeps_being_served_body() {
    let dir = tempfile::tempdir().unwrap();
    let model = forest(2);
    write_forest_manifest(dir.path(), "f", &model, 128, 100);
    let config = ServerConfig {
        max_payload: 64 * 1024,
        read_timeout: Duration::from_millis(300),
        ..common::test_config()
    };
    let server = common::start_server(dir.path(), config).await;
    let target = addr(&server, "f");
    let good_client = Client::connect(target).await.unwrap();
    let rows = random_rows(3, FEATURES, &mut rand::rng());

    let mut raw = Raw::connect(target).await;
    let mut frames = BytesMut::new();
    frames.extend_from_slice(&request(1, FEATURES as u32 + 1, 0, &[0.5; FEATURES + 1]));
    frames.extend_from_slice(&request(2, FEATURES as u32, 0, &[]));
    let mut with_nan = rows.clone();
    with_nan[FEATURES + 2] = f32::NAN;
    frames.extend_from_slice(&request(3, FEATURES as u32, 0, &with_nan));
    frames.extend_from_slice(&request(4, FEATURES as u32, 1 << 5, &rows));
    let mut wrong_dtype = request(5, FEATURES as u32, 0, &rows);
    wrong_dtype[20 + 8] = 7;
    frames.extend_from_slice(&wrong_dtype);
    let mut short = request(6, FEATURES as u32, 0, &rows);
    // Claims one more row than it carries (the header's length is the truth for framing).
    short[20] = 4;
    frames.extend_from_slice(&short);
    Header::new(FrameType::Request, 7, 100_000).encode(&mut frames);
    frames.put_bytes(0, 100_000);
    Header::new(FrameType::from_code(42), 8, 0).encode(&mut frames);
    Header::new(FrameType::Response, 9, 0).encode(&mut frames);
    let mut infinite = rows.clone();
    infinite[0] = f32::NEG_INFINITY;
    frames.extend_from_slice(&request(10, FEATURES as u32, 0, &infinite));
    frames.extend_from_slice(&request(11, FEATURES as u32, SCORES, &rows));
    raw.send(&frames).await;

    let mut errors = std::collections::BTreeMap::new();
    let mut answer = None;
    for _ in 0..11 {
        let frame = raw.next().await.expect("an answer for every frame");
        let id = frame.header.request_id;
        if frame.header.frame_type == FrameType::Response {
            answer = Some((id, ResponseBody::parse(frame.payload).unwrap()));
        } else {
            let body = ErrorBody::parse(&frame.payload).unwrap();
            errors.insert(id, (body.code, body.message));
        }
    }
    let codes: Vec<(u64, ErrorCode)> = errors.iter().map(|(id, (code, _))| (*id, *code)).collect();
    assert_eq!(
        codes,
        [
            (1, ErrorCode::Shape),
            (2, ErrorCode::Shape),
            (3, ErrorCode::Nan),
            (4, ErrorCode::Shape),
            (5, ErrorCode::Unsupported),
            (6, ErrorCode::BadFrame),
            (7, ErrorCode::TooLarge),
            (8, ErrorCode::Unsupported),
            (9, ErrorCode::Unsupported),
            (10, ErrorCode::Nan),
        ]
    );
    assert!(errors[&1].1.contains("takes 6 features"), "{}", errors[&1].1);
    assert!(errors[&3].1.contains("row 1, feature 2"), "{}", errors[&3].1);
    let (id, body) = answer.expect("the valid request was answered");
    assert_eq!(id, 11);
    assert_matches_reference(&model, &rows, &body, true);

    // Garbage: a clear error, then the server hangs up on that connection only.
    let mut garbage = Raw::connect(target).await;
    garbage.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (id, code, message) = garbage.error().await;
    assert_eq!((id, code), (0, ErrorCode::BadFrame));
    assert!(message.contains("magic"), "{message}");
    assert!(garbage.next().await.is_none());

    // A client that stalls mid-frame is told so and dropped after the read timeout.
    let mut stalled = Raw::connect(target).await;
    stalled.send(&request(1, FEATURES as u32, 0, &rows)[..30]).await;
    let (_, code, message) = stalled.error().await;
    assert_eq!(code, ErrorCode::BadFrame);
    assert!(message.contains("incomplete"), "{message}");
    assert!(stalled.next().await.is_none());

    // A client that trickles a frame byte by byte, each byte well within the read timeout, is cut off
    // once the frame as a whole has taken longer than the timeout (300 ms here; 108 bytes at one per
    // 40 ms would take 4.3 s).
    let trickled = request(1, FEATURES as u32, 0, &rows);
    let stream = TcpStream::connect(target).await.unwrap();
    let (mut read_half, mut write_half) = stream.into_split();
    let trickler = tokio::spawn(async move {
        for byte in trickled.iter() {
            if write_half.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), read_half.read_to_end(&mut received)).await;
    let mut buf = BytesMut::from(&received[..]);
    let Some(Decoded::Frame(frame)) = FrameDecoder::new(1 << 20).decode(&mut buf).unwrap() else {
        panic!("the trickling client got no frame")
    };
    let body = ErrorBody::parse(&frame.payload).unwrap();
    assert_eq!(
        (frame.header.frame_type, body.code),
        (FrameType::Error, ErrorCode::BadFrame),
        "{}",
        body.message
    );
    assert!(body.message.contains("incomplete"), "{}", body.message);
    trickler.abort();

    // A client that vanishes mid-frame costs nothing.
    let mut vanishing = Raw::connect(target).await;
    vanishing.send(&request(1, FEATURES as u32, 0, &rows)[..25]).await;
    drop(vanishing);

    // The first connection and an independent client still work.
    raw.send(&request(12, FEATURES as u32, 0, &rows)).await;
    let frame = raw.next().await.unwrap();
    assert_eq!(
        (frame.header.request_id, frame.header.frame_type),
        (12, FrameType::Response)
    );
    let answer = good_client.infer(FEATURES as u32, &rows, 0).await.unwrap();
    assert_matches_reference(&model, &rows, &answer, false);
    assert_eq!(server.metrics().error_count("default/f", ErrorCode::Shape.name()), 3);
    wait_for(|| server.open_connections() == 2, "broken connections to close").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_read_are_dropped_after_the_write_timeout() {
    common::bounded(clients_that_do_not_read_are_dropped_after_the_write_timeout_body()).await;
}

async fn clients_that_do_not_read_are_dropped_after_the_write_timeout_body() {
    let dir = tempfile::tempdir().unwrap();
    let model = forest(3);
    write_forest_manifest(dir.path(), "f", &model, 4096, 100);
    let config = ServerConfig {
        write_timeout: Duration::from_millis(300),
        max_in_flight_per_connection: 400,
        ..common::test_config()
    };
    let server = common::start_server(dir.path(), config).await;
    let target = addr(&server, "f");
    let rows = random_rows(4000, FEATURES, &mut rand::rng());
    let one = request(0, FEATURES as u32, SCORES, &rows);

    // ~80 KiB per answer x 400 answers: far more than loopback socket buffers hold.
    let mut deaf = TcpStream::connect(target).await.unwrap();
    let sender = tokio::spawn(async move {
        for id in 1..=400u64 {
            let mut frame = one.clone();
            frame[8..16].copy_from_slice(&id.to_le_bytes());
            if deaf.write_all(&frame).await.is_err() {
                break;
            }
        }
        deaf
    });
    let deaf = tokio::time::timeout(Duration::from_secs(30), sender)
        .await
        .unwrap()
        .unwrap();
    wait_for(|| server.open_connections() == 0, "the deaf connection to be dropped").await;
    drop(deaf);
    let client = Client::connect(target).await.unwrap();
    let answer = client.infer(FEATURES as u32, &rows[..FEATURES * 2], 0).await.unwrap();
    assert_matches_reference(&model, &rows[..FEATURES * 2], &answer, false);
    wait_for(|| server.metrics().live_lanes.get() == 2, "lanes").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_busy_and_recovers() {
    common::bounded(a_full_queue_answers_busy_and_recovers_body()).await;
}

async fn a_full_queue_answers_busy_and_recovers_body() {
    let dir = tempfile::tempdir().unwrap();
    let model = forest(4);
    write_forest_manifest(dir.path(), "f", &model, 16, 0);
    let gate = Gate::new();
    let rows = random_rows(16, FEATURES, &mut rand::rng());
    let request_bytes = rows.len() * 4;
    let config = ServerConfig {
        lanes_per_function: 1,
        // Room for exactly three requests.
        max_queued_bytes: request_bytes * 3,
        max_connections: 3,
        ..common::test_config()
    };
    let server = common::start_server_with(dir.path(), config, Arc::new(GatedLoader::cpu(gate.clone()))).await;
    let target = addr(&server, "f");

    gate.close();
    let client = Arc::new(Client::connect(target).await.unwrap());
    let mut first = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (client, rows) = (client.clone(), rows.clone());
        first.spawn(async move { client.infer(FEATURES as u32, &rows, 0).await });
    }
    wait_for(
        || gate.waiting.load(Ordering::SeqCst) == 1,
        "the first batch to reach the gate",
    )
    .await;
    wait_for(
        || {
            server
                .metrics()
                .queued_requests
                .get_or_create(&vknf_runtime::Metrics::function("default/f"))
                .get()
                == 3
        },
        "three admitted",
    )
    .await;

    // The queue is full: further requests, from any connection, are refused at once.
    let other = Client::connect(target).await.unwrap();
    for _ in 0..5 {
        let error = other.infer(FEATURES as u32, &rows, 0).await.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::Busy), "{error}");
    }
    // So are connections past the limit (two are open; this is the third, the fourth is refused).
    let _third = Client::connect(target).await.unwrap();
    wait_for(|| server.open_connections() == 3, "three connections").await;
    let mut refused = Raw::connect(target).await;
    let (_, code, message) = refused.error().await;
    assert_eq!(code, ErrorCode::Busy);
    assert!(message.contains("connection limit"), "{message}");

    gate.open();
    while let Some(joined) = first.join_next().await {
        let answer = joined.unwrap().unwrap();
        assert_matches_reference(&model, &rows, &answer, false);
    }
    let answer = other.infer(FEATURES as u32, &rows, 0).await.unwrap();
    assert_matches_reference(&model, &rows, &answer, false);
    assert_eq!(server.metrics().error_count("default/f", ErrorCode::Busy.name()), 5);
    assert_eq!(server.queued_bytes().await, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_answers_everything_admitted() {
    common::bounded(graceful_shutdown_answers_everything_admitted_body()).await;
}

async fn graceful_shutdown_answers_everything_admitted_body() {
    let dir = tempfile::tempdir().unwrap();
    let model = forest(5);
    write_forest_manifest(dir.path(), "f", &model, 8, 0);
    let gate = Gate::new();
    let server = common::start_server_with(
        dir.path(),
        common::test_config(),
        Arc::new(GatedLoader::cpu(gate.clone())),
    )
    .await;
    let target = addr(&server, "f");
    gate.close();
    let client = Arc::new(Client::connect(target).await.unwrap());
    let mut in_flight = tokio::task::JoinSet::new();
    let mut rng = rand::rng();
    for _ in 0..10 {
        let rows = random_rows(20, FEATURES, &mut rng);
        let client = client.clone();
        in_flight.spawn(async move { (client.infer(FEATURES as u32, &rows, SCORES).await, rows) });
    }
    wait_for(|| gate.waiting.load(Ordering::SeqCst) == 2, "both lanes busy").await;
    wait_for(
        || {
            server
                .metrics()
                .queued_requests
                .get_or_create(&vknf_runtime::Metrics::function("default/f"))
                .get()
                == 10
        },
        "all ten admitted",
    )
    .await;

    let stopping = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown().await }
    });
    // New connections are no longer accepted once shutdown begins.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(target).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the port still accepts connections during shutdown");
    assert!(!stopping.is_finished(), "shutdown must wait for admitted requests");

    gate.open();
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .unwrap()
        .unwrap();
    let mut answered = 0;
    while let Some(joined) = in_flight.join_next().await {
        let (answer, rows) = joined.unwrap();
        assert_matches_reference(&model, &rows, &answer.unwrap(), true);
        answered += 1;
    }
    assert_eq!(answered, 10);
    assert_eq!(server.live_lanes(), 0);
    let after = client
        .infer(FEATURES as u32, &random_rows(1, FEATURES, &mut rng), 0)
        .await;
    assert!(
        matches!(after, Err(ClientError::Closed(_) | ClientError::Io(_))),
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_updates_adds_and_removes_without_failing_other_requests() {
    common::bounded(hot_reload_updates_adds_and_removes_without_failing_other_requests_body()).await;
}

async fn hot_reload_updates_adds_and_removes_without_failing_other_requests_body() {
    let dir = tempfile::tempdir().unwrap();
    let (steady, old, new, added) = (forest(10), forest(11), forest(12), forest(13));
    write_forest_manifest(dir.path(), "steady", &steady, 32, 100);
    write_forest_manifest(dir.path(), "changing", &old, 32, 100);
    let server = common::start_server(dir.path(), common::test_config()).await;
    let steady_addr = addr(&server, "steady");
    let changing_addr = addr(&server, "changing");
    assert_eq!(server.live_lanes(), 4);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady_model = Arc::new(steady);
    let (old_model, new_model) = (Arc::new(old), Arc::new(new));
    // Keeps both functions busy for the whole reload sequence.
    let steady_load = tokio::spawn({
        let (stop, model) = (stop.clone(), steady_model.clone());
        async move {
            let client = Client::connect(steady_addr).await.unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut sent = 0;
            while !stop.load(Ordering::SeqCst) && sent < 20_000 {
                let rows = random_rows(rng.random_range(1..50), FEATURES, &mut rng);
                let answer = client
                    .infer(FEATURES as u32, &rows, 0)
                    .await
                    .expect("steady function never fails");
                assert_matches_reference(&model, &rows, &answer, false);
                sent += 1;
            }
            sent
        }
    });
    let changing_load = tokio::spawn({
        let (stop, old_model, new_model) = (stop.clone(), old_model.clone(), new_model.clone());
        async move {
            let client = Client::connect(changing_addr).await.unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(8);
            let (mut by_old, mut by_new) = (0, 0);
            while !stop.load(Ordering::SeqCst) && by_old + by_new < 20_000 {
                let rows = random_rows(40, FEATURES, &mut rng);
                let answer = client
                    .infer(FEATURES as u32, &rows, 0)
                    .await
                    .expect("no request fails during the swap");
                if agrees_with(&new_model, &rows, &answer) {
                    by_new += 1;
                } else {
                    assert!(agrees_with(&old_model, &rows, &answer), "answer from neither version");
                    by_old += 1;
                }
            }
            (by_old, by_new)
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Update: same port, new model.
    let generation = server.status().generation;
    write_forest_manifest(dir.path(), "changing", &new_model, 32, 100);
    wait_for(|| server.status().generation > generation, "update applied").await;
    assert_eq!(server.local_addr(&key("changing")), Some(changing_addr));
    let probe = random_rows(40, FEATURES, &mut rand::rngs::StdRng::seed_from_u64(99));
    let answer = Client::connect(changing_addr)
        .await
        .unwrap()
        .infer(FEATURES as u32, &probe, 0)
        .await
        .unwrap();
    assert_matches_reference(&new_model, &probe, &answer, false);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Add a third function.
    write_forest_manifest(dir.path(), "added", &added, 32, 100);
    wait_for(|| server.local_addr(&key("added")).is_some(), "added function").await;
    let answer = Client::connect(addr(&server, "added"))
        .await
        .unwrap()
        .infer(FEATURES as u32, &probe, 0)
        .await
        .unwrap();
    assert_matches_reference(&added, &probe, &answer, false);

    // Remove the changing one: its clients finish and its port closes.
    stop.store(true, Ordering::SeqCst);
    let (by_old, by_new) = changing_load.await.unwrap();
    assert!(
        by_old > 0 && by_new > 0,
        "requests reached both versions ({by_old} old, {by_new} new)"
    );
    let generation = server.status().generation;
    std::fs::remove_file(dir.path().join("changing.yaml")).unwrap();
    wait_for(|| server.status().generation > generation, "removal applied").await;
    assert!(server.local_addr(&key("changing")).is_none());
    assert!(
        TcpStream::connect(changing_addr).await.is_err(),
        "removed function's port still open"
    );

    let steady_sent = steady_load.await.unwrap();
    assert!(steady_sent > 0);
    // Old versions released their lanes: two functions with two lanes each remain.
    wait_for(|| server.live_lanes() == 4, "old lanes released").await;
    assert!(server.status().is_ready());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_update_keeps_the_previous_version_serving() {
    common::bounded(an_invalid_update_keeps_the_previous_version_serving_body()).await;
}

async fn an_invalid_update_keeps_the_previous_version_serving_body() {
    let dir = tempfile::tempdir().unwrap();
    let model = forest(20);
    write_forest_manifest(dir.path(), "f", &model, 32, 100);
    let server = common::start_server(dir.path(), common::test_config()).await;
    let target = addr(&server, "f");

    let generation = server.status().generation;
    let path = dir.path().join("f.yaml");
    let broken = std::fs::read_to_string(&path)
        .unwrap()
        .replace("vknf.io/kind: forest", "vknf.io/kind: lstm");
    std::fs::write(&path, broken).unwrap();
    wait_for(|| server.status().generation > generation, "update applied").await;
    let status = server.status();
    assert!(!status.is_ready());
    assert!(
        matches!(&status.functions[&key("f")], FunctionStatus::Failed { reason, serving_previous: Some(a) } if reason.contains("lstm") && *a == target)
    );
    let rows = random_rows(5, FEATURES, &mut rand::rng());
    let answer = Client::connect(target)
        .await
        .unwrap()
        .infer(FEATURES as u32, &rows, 0)
        .await
        .unwrap();
    assert_matches_reference(&model, &rows, &answer, false);

    // Unparseable YAML: nothing changes, the error is reported.
    std::fs::write(dir.path().join("junk.yaml"), "kind: [").unwrap();
    wait_for(|| server.status().source_error.is_some(), "source error").await;
    let answer = Client::connect(target)
        .await
        .unwrap()
        .infer(FEATURES as u32, &rows, 0)
        .await
        .unwrap();
    assert_matches_reference(&model, &rows, &answer, false);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feature_schema_of_the_model_is_reported_and_a_manifest_declaring_another_is_refused() {
    common::bounded(schema_body()).await;
}

async fn schema_body() {
    use vknf_manifest::annotations::{FEATURE_SCHEMA_SHA256, MODEL_SCHEMA_DIGEST};
    let bound = |seed: u64, digest: &str| {
        let mut metadata = vknf_forest::VkfMetadata::new();
        metadata.insert(MODEL_SCHEMA_DIGEST.to_owned(), digest.to_owned());
        forest(seed).to_vkf_bytes_with_metadata(&metadata)
    };
    let (a, b) = ("a1".repeat(32), "b2".repeat(32));
    let dir = tempfile::tempdir().unwrap();
    let write = |model: &[u8], declared: &str| {
        common::write_model_manifest(dir.path(), "f", model, 32, 100, &[(FEATURE_SCHEMA_SHA256, declared)]);
    };
    write(&bound(30, &a), &a);
    let server = common::start_server(dir.path(), common::test_config()).await;
    let target = addr(&server, "f");
    assert_eq!(server.schema_digest("default/f").await, Some(a.clone()));

    // The model replaced under the same declaration: refused, naming both; the previous version
    // serves on, and its schema is the one reported.
    let generation = server.status().generation;
    write(&bound(31, &b), &a);
    wait_for(|| server.status().generation > generation, "update applied").await;
    let status = server.status();
    assert!(
        matches!(&status.functions[&key("f")], FunctionStatus::Failed { reason, serving_previous: Some(at) }
            if reason.contains(&format!("declares feature schema {a}")) && reason.contains(&b) && *at == target),
        "{status:?}"
    );
    assert_eq!(server.schema_digest("default/f").await, Some(a.clone()));

    // Declared as it is: served, and reported.
    write(&bound(31, &b), &b);
    wait_for(|| server.status().is_ready(), "the new version").await;
    assert_eq!(server.schema_digest("default/f").await, Some(b.clone()));

    std::fs::remove_file(dir.path().join("f.yaml")).unwrap();
    wait_for(|| server.status().functions.is_empty(), "removal").await;
    assert_eq!(server.schema_digest("default/f").await, None);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_loss_fails_the_batch_then_every_function_is_reloaded() {
    common::bounded(device_loss_fails_the_batch_then_every_function_is_reloaded_body()).await;
}

async fn device_loss_fails_the_batch_then_every_function_is_reloaded_body() {
    let dir = tempfile::tempdir().unwrap();
    let model = forest(30);
    write_forest_manifest(dir.path(), "f", &model, 64, 0);
    let gate = Gate::new();
    gate.lose_device_on_run.store(3, Ordering::SeqCst);
    let server = common::start_server_with(
        dir.path(),
        common::test_config(),
        Arc::new(GatedLoader::cpu(gate.clone())),
    )
    .await;
    let target = addr(&server, "f");
    assert_eq!(gate.loads.load(Ordering::SeqCst), 1);
    let client = Client::connect(target).await.unwrap();
    let rows = random_rows(10, FEATURES, &mut rand::rng());
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        outcomes.push(client.infer(FEATURES as u32, &rows, 0).await.map_err(|e| e.code()));
    }
    assert!(outcomes[..3].iter().all(Result::is_ok));
    assert_eq!(outcomes[3].as_ref().unwrap_err(), &Some(ErrorCode::DeviceLost));

    wait_for(
        || gate.resets.load(Ordering::SeqCst) == 1 && gate.loads.load(Ordering::SeqCst) == 2,
        "device reset and reload",
    )
    .await;
    wait_for(|| server.status().is_ready(), "ready again").await;
    // Same connection, reloaded function.
    let answer = client.infer(FEATURES as u32, &rows, 0).await.unwrap();
    assert_matches_reference(&model, &rows, &answer, false);
    wait_for(|| server.live_lanes() == 2, "old lanes released").await;
    assert_eq!(server.metrics().device_losses.get(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_over_a_long_run() {
    common::bounded(memory_stays_bounded_over_a_long_run_body()).await;
}

async fn memory_stays_bounded_over_a_long_run_body() {
    let dir = tempfile::tempdir().unwrap();
    let model = forest(40);
    write_forest_manifest(dir.path(), "f", &model, 256, 50);
    let config = ServerConfig {
        max_queued_bytes: 256 * 1024,
        ..common::test_config()
    };
    let limit = config.max_queued_bytes;
    let server = common::start_server(dir.path(), config).await;
    let target = addr(&server, "f");
    let lanes = server.live_lanes();

    let mut workers = tokio::task::JoinSet::new();
    for c in 0..4u64 {
        workers.spawn(async move {
            let client = Arc::new(Client::connect(target).await.unwrap());
            let mut rng = rand::rngs::StdRng::seed_from_u64(c);
            let (mut ok, mut busy) = (0u32, 0u32);
            for round in 0..60 {
                // Sixteen pipelined requests, then wait for all of them.
                let mut batch = tokio::task::JoinSet::new();
                for _ in 0..16 {
                    let rows = random_rows(rng.random_range(1..200), FEATURES, &mut rng);
                    let client = client.clone();
                    batch.spawn(async move { client.infer(FEATURES as u32, &rows, SCORES * (round % 2)).await });
                }
                while let Some(joined) = batch.join_next().await {
                    match joined.unwrap() {
                        Ok(_) => ok += 1,
                        Err(e) if e.code() == Some(ErrorCode::Busy) => busy += 1,
                        Err(e) => panic!("unexpected failure {e}"),
                    }
                }
            }
            (ok, busy)
        });
    }
    let mut peak_bytes = 0;
    let mut total_ok = 0;
    let mut sampling = tokio::time::interval(Duration::from_millis(5));
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(result) => total_ok += result.unwrap().0,
                None => break,
            },
            _ = sampling.tick() => {
                peak_bytes = peak_bytes.max(server.queued_bytes().await);
                assert_eq!(server.live_lanes(), lanes, "lanes are reused, never added");
            }
        }
    }
    assert!(peak_bytes <= limit, "queued {peak_bytes} bytes, limit {limit}");
    assert!(total_ok > 0);
    assert_eq!(server.queued_requests().await, 0);
    assert_eq!(server.queued_bytes().await, 0);
    assert_eq!(server.live_lanes(), lanes);
    wait_for(|| server.open_connections() == 0, "clients closed").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_waiting_ones_are_not() {
    common::bounded(idle_body()).await;
}

async fn idle_body() {
    let dir = tempfile::tempdir().unwrap();
    let model = forest(50);
    write_forest_manifest(dir.path(), "f", &model, 32, 0);
    let gate = Gate::new();
    let config = ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..common::test_config()
    };
    let server = common::start_server_with(dir.path(), config, Arc::new(GatedLoader::cpu(gate.clone()))).await;
    let target = addr(&server, "f");

    gate.close();
    let waiting = Arc::new(Client::connect(target).await.unwrap());
    let rows = random_rows(4, FEATURES, &mut rand::rng());
    let pending = tokio::spawn({
        let (waiting, rows) = (waiting.clone(), rows.clone());
        async move { waiting.infer(FEATURES as u32, &rows, 0).await }
    });
    wait_for(
        || gate.waiting.load(Ordering::SeqCst) == 1,
        "the request to reach the gate",
    )
    .await;

    // A connection that sends nothing is closed by the server, without a frame.
    let mut idle = Raw::connect(target).await;
    assert!(idle.next().await.is_none());
    // The other connection has been quiet for longer than the idle timeout, but it waits for an
    // answer, so it stays open and gets it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    gate.open();
    let answer = pending.await.unwrap().unwrap();
    assert_matches_reference(&model, &rows, &answer, false);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arriving_while_the_server_drains_are_refused_and_no_answer_is_lost() {
    common::bounded(late_frames_body()).await;
}

async fn late_frames_body() {
    let dir = tempfile::tempdir().unwrap();
    let model = forest(7);
    write_forest_manifest(dir.path(), "f", &model, 8, 0);
    let gate = Gate::new();
    let server = common::start_server_with(
        dir.path(),
        common::test_config(),
        Arc::new(GatedLoader::cpu(gate.clone())),
    )
    .await;
    let target = addr(&server, "f");
    gate.close();
    let mut raw = Raw::connect(target).await;
    let rows = random_rows(5, FEATURES, &mut rand::rng());
    for id in 1..=8 {
        raw.send(&request(id, FEATURES as u32, 0, &rows)).await;
    }
    wait_for(
        || {
            server
                .metrics()
                .queued_requests
                .get_or_create(&vknf_runtime::Metrics::function("default/f"))
                .get()
                == 8
        },
        "all eight admitted",
    )
    .await;
    let stopping = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown().await }
    });
    // Once the port refuses connections, the function is closing: what arrives now is late.
    for _ in 0..250 {
        if TcpStream::connect(target).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in 101..=105 {
        raw.send(&request(id, FEATURES as u32, 0, &rows)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.open();
    // Every frame gets exactly one answer, then an orderly end of stream (no reset).
    let mut answers = std::collections::BTreeMap::new();
    while let Some(frame) = raw.next().await {
        let id = frame.header.request_id;
        let outcome = match frame.header.frame_type {
            FrameType::Response => {
                assert_matches_reference(&model, &rows, &ResponseBody::parse(frame.payload).unwrap(), false);
                None
            }
            _ => Some(ErrorBody::parse(&frame.payload).unwrap().code),
        };
        assert!(answers.insert(id, outcome).is_none(), "request {id} answered twice");
    }
    let admitted: Vec<u64> = (1..=8).collect();
    let late: Vec<u64> = (101..=105).collect();
    assert_eq!(
        answers.keys().copied().collect::<Vec<_>>(),
        [admitted.clone(), late.clone()].concat()
    );
    assert!(admitted.iter().all(|id| answers[id].is_none()), "{answers:?}");
    assert!(
        late.iter().all(|id| answers[id] == Some(ErrorCode::ShuttingDown)),
        "{answers:?}"
    );
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_function_is_described_as_lost_and_the_connection_stays() {
    common::bounded(a_quarantined_function_is_described_as_lost_and_the_connection_stays_body()).await;
}

/// While a function is quarantined (its kernel missed a deadline), DESCRIBE answers DEVICE_LOST, as
/// calls do, not SHUTTING_DOWN (which means the connection is closing): the connection serves again
/// once the function is back.
async fn a_quarantined_function_is_described_as_lost_and_the_connection_stays_body() {
    let dir = tempfile::tempdir().unwrap();
    let model = forest(31);
    write_forest_manifest(dir.path(), "f", &model, 64, 0);
    let gate = Gate::new();
    gate.miss_deadline_on_run.store(1, Ordering::SeqCst);
    let config = ServerConfig {
        quarantine_backoff: Duration::from_secs(2),
        ..common::test_config()
    };
    let server = common::start_server_with(dir.path(), config, Arc::new(GatedLoader::cpu(gate.clone()))).await;
    let client = Client::connect(addr(&server, "f")).await.unwrap();
    let rows = random_rows(10, FEATURES, &mut rand::rng());
    client.infer(FEATURES as u32, &rows, 0).await.unwrap();
    let missed = client.infer(FEATURES as u32, &rows, 0).await.map_err(|e| e.code());
    assert_eq!(missed.unwrap_err(), Some(ErrorCode::DeviceLost));
    let mut described_lost = false;
    for _ in 0..500 {
        match client.describe().await {
            Err(error) if error.code() == Some(ErrorCode::DeviceLost) => {
                described_lost = true;
                break;
            }
            Err(error) => assert_ne!(error.code(), Some(ErrorCode::ShuttingDown), "{error}"),
            Ok(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(described_lost, "DESCRIBE while quarantined answers DEVICE_LOST");
    // Back after the back-off, on the same connection.
    let mut answered = None;
    for _ in 0..500 {
        if let Ok(answer) = client.infer(FEATURES as u32, &rows, 0).await {
            answered = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_matches_reference(
        &model,
        &rows,
        &answered.expect("served again after the back-off"),
        false,
    );
    assert!(client.describe().await.is_ok());
    server.shutdown().await;
}
