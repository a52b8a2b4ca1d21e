//! The process's memory budget against hostile clients (issue 11, failures 3 and 4), on loopback with
//! the CPU loader: many connections half-sending large frames, and a client that pipelines requests
//! and does not read its answers. Memory is checked through the figures `/metrics` serves and the
//! budget's counters, never through RSS or timings.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use common::{addr, random_forest, random_rows, wait_for, write_forest_manifest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vknf_forest::GpuForest;
use vknf_protocol::client::Client;
use vknf_protocol::{Decoded, ErrorBody, ErrorCode, Frame, FrameDecoder, FrameType, ResponseBody, encode_request};
use vknf_runtime::{Category, MemoryBudget};
use vknf_server::{Server, ServerConfig};

const FEATURES: usize = 6;
const CLASSES: usize = 4;
const SCORES: u32 = 1 << 1;

fn forest() -> GpuForest {
    random_forest(FEATURES, CLASSES, 8, 5, 31)
}

fn request(id: u64, mask: u32, rows: &[f32]) -> BytesMut {
    let mut out = BytesMut::new();
    encode_request(&mut out, id, FEATURES as u32, mask, rows).unwrap();
    out
}

/// A value of the `/metrics` text, by its full name with labels.
fn metric(server: &Server, name: &str) -> f64 {
    let text = server.encode_metrics();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in /metrics:\n{text}"))
}

fn category_bytes(server: &Server, category: &str) -> usize {
    metric(
        server,
        &format!("vknf_memory_category_bytes{{category=\"{category}\"}}"),
    ) as usize
}

/// Reads whole frames from a raw connection.
struct Reader {
    stream: TcpStream,
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl Reader {
    fn new(stream: TcpStream) -> Reader {
        Reader {
            stream,
            decoder: FrameDecoder::new(64 << 20),
            buf: BytesMut::new(),
        }
    }

    async fn next(&mut self) -> Frame {
        loop {
            if let Some(Decoded::Frame(frame)) = self.decoder.decode(&mut self.buf).unwrap() {
                return frame;
            }
            // A bound, not a measurement: a server that never answers fails instead of hanging.
            let read = tokio::time::timeout(Duration::from_secs(30), self.stream.read_buf(&mut self.buf))
                .await
                .expect("the server answered in time")
                .unwrap();
            assert!(read > 0, "the server closed the connection");
        }
    }
}

fn error_of(frame: &Frame) -> (ErrorCode, String) {
    assert_eq!(frame.header.frame_type, FrameType::Error, "expected an error frame");
    let body = ErrorBody::parse(&frame.payload).unwrap();
    (body.code, body.message)
}

fn labels_of(frame: &Frame) -> Vec<u32> {
    assert_eq!(
        frame.header.frame_type,
        FrameType::Response,
        "expected an answer, got {frame:?}"
    );
    let body = ResponseBody::parse(frame.payload.clone()).unwrap();
    body.output(0).expect("labels").to_u32()
}

async fn start(dir: &std::path::Path, config: ServerConfig) -> (Server, SocketAddr) {
    write_forest_manifest(dir, "f", &forest(), 4096, 0);
    let server = common::start_server(dir, config).await;
    let target = addr(&server, "f");
    (server, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_large_frames_hold_at_most_their_part_of_the_budget_and_others_are_served() {
    common::bounded(half_sent_frames_body()).await;
}

async fn half_sent_frames_body() {
    const SENDERS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let model = forest();
    // 8 MiB in all: frames being received may hold 4 MiB, one connection 1 MiB.
    let config = ServerConfig {
        max_payload: 1 << 20,
        memory_budget: 8 << 20,
        // The frame deadline must not end the half-sent frames while the test looks at them.
        read_timeout: Duration::from_secs(120),
        ..common::test_config()
    };
    let (server, target) = start(dir.path(), config).await;
    let budget = server.runtime().budget().clone();
    assert_eq!(metric(&server, "vknf_memory_budget_bytes"), (8 << 20) as f64);

    let mut rng = rand::rng();
    let big_rows = random_rows(40_000, FEATURES, &mut rng);
    let big = request(0, 0, &big_rows);
    let payload = big.len() - vknf_protocol::HEADER_LEN;
    let half = big.len() / 2;
    let refusals =
        || budget.refusals(Category::Receiving, "receiving_full") + budget.refusals(Category::Receiving, "budget_full");

    // Each connection sends the header and half of a ~1 MiB request, then stalls. One at a time, so
    // that the test knows which were charged (their payload's room reserved) and which refused.
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for id in 0..SENDERS as u64 {
        let mut stream = TcpStream::connect(target).await.unwrap();
        let mut frame = big.clone();
        frame[8..16].copy_from_slice(&id.to_le_bytes());
        let refused_before = refusals();
        stream.write_all(&frame[..half]).await.unwrap();
        wait_for(
            || (budget.used_by(Category::Receiving) / payload) as u64 + refusals() == id + 1,
            "the frame to be charged or refused",
        )
        .await;
        if refusals() == refused_before {
            held.push((id, frame, stream));
        } else {
            // Refused from its header: BUSY at once, its payload never buffered.
            let mut reader = Reader::new(stream);
            let answer = reader.next().await;
            assert_eq!(answer.header.request_id, id);
            let (code, message) = error_of(&answer);
            assert_eq!(code, ErrorCode::Busy, "{message}");
            assert!(message.contains("retry later"), "{message}");
            refused.push(reader);
        }
    }
    let receiving_limit = budget.receiving_limit();
    assert_eq!(
        held.len(),
        receiving_limit / payload,
        "as many frames as half the budget holds"
    );
    assert_eq!(refused.len(), SENDERS - held.len());
    // What /metrics shows: the half-sent frames are within their part of the budget, not 100 MB.
    let receiving = category_bytes(&server, "receiving");
    assert_eq!(receiving, held.len() * payload);
    assert!(receiving <= receiving_limit);
    assert!(metric(&server, "vknf_memory_peak_bytes") as usize <= budget.limit());
    assert_eq!(
        metric(
            &server,
            "vknf_memory_refusals_total{category=\"receiving\",reason=\"receiving_full\"}"
        ) as usize,
        refused.len()
    );

    // Meanwhile another client is served, correctly.
    let rows = random_rows(50, FEATURES, &mut rng);
    let client = Client::connect(target).await.unwrap();
    let answer = client.infer(FEATURES as u32, &rows, SCORES).await.unwrap();
    let expected = model.predict_cpu(&rows, 50).unwrap();
    assert_eq!(answer.output(0).unwrap().to_u32(), expected.labels);

    // The charged frames were admitted: sending their second halves gets their answers.
    let expected = model.predict_cpu(&big_rows, 40_000).unwrap();
    for (id, frame, mut stream) in held.drain(..) {
        stream.write_all(&frame[half..]).await.unwrap();
        let mut reader = Reader::new(stream);
        let answer = reader.next().await;
        assert_eq!(answer.header.request_id, id);
        assert_eq!(labels_of(&answer), expected.labels);
    }

    // When the connections go, everything they held is given back.
    drop(refused);
    drop(client);
    wait_for(|| server.open_connections() == 0, "the connections to close").await;
    wait_for(|| budget.used() == 0, "the budget to be empty").await;
    assert_eq!(category_bytes(&server, "receiving"), 0);
    assert_eq!(metric(&server, "vknf_memory_used_bytes"), 0.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_held_at_its_share_and_loses_no_answer() {
    common::bounded(slow_reader_body()).await;
}

async fn slow_reader_body() {
    const REQUESTS: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let model = forest();
    // 8 MiB in all, 1 MiB per connection; neither the in-flight bound nor the write timeout stops
    // this client first.
    let config = ServerConfig {
        memory_budget: 8 << 20,
        max_payload: 1 << 20,
        max_in_flight_per_connection: 1024,
        write_timeout: Duration::from_secs(120),
        ..common::test_config()
    };
    let (server, target) = start(dir.path(), config).await;
    let budget = server.runtime().budget().clone();
    let share = budget.client_share();
    assert_eq!(share, (8 << 20) / MemoryBudget::CLIENT_SHARE_DIVISOR);
    assert_eq!(metric(&server, "vknf_memory_client_share_bytes") as usize, share);

    // 4000 rows with scores: ~96 KB in, ~80 KB out per request; 500 of them are ~40 MB of answers,
    // far more than loopback socket buffers hold.
    let rows = random_rows(4000, FEATURES, &mut rand::rng());
    let one = request(0, SCORES, &rows);
    let request_bytes = one.len();
    let (mut read_half, mut write_half) = TcpStream::connect(target).await.unwrap().into_split();
    let sender = tokio::spawn(async move {
        for id in 1..=REQUESTS {
            let mut frame = one.clone();
            frame[8..16].copy_from_slice(&id.to_le_bytes());
            write_half.write_all(&frame).await.unwrap();
        }
        write_half
    });

    // The server stops reading from it once its answers fill its share...
    wait_for(
        || budget.waits() > 0 && budget.used_by(Category::Unsent) >= share / 2,
        "the slow reader to fill its share",
    )
    .await;
    // ...and its unsent answers stop there (before, one connection grew the process by 800 MB).
    for _ in 0..20 {
        let unsent = category_bytes(&server, "unsent");
        assert!(
            unsent <= share,
            "{unsent} unsent bytes exceed the connection's share of {share}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        budget.peak() <= share + request_bytes,
        "peak {} over the share {share}",
        budget.peak()
    );
    assert!(!sender.is_finished(), "the client is slowed down by TCP, not buffered");
    assert!(metric(&server, "vknf_memory_waits_total") >= 1.0);

    // Another client is served meanwhile.
    let client = Client::connect(target).await.unwrap();
    let few = &rows[..FEATURES * 10];
    let answer = client.infer(FEATURES as u32, few, 0).await.unwrap();
    assert_eq!(
        answer.output(0).unwrap().to_u32(),
        model.predict_cpu(few, 10).unwrap().labels
    );

    // Once the slow client reads, it gets every answer: none refused, none lost.
    let expected = model.predict_cpu(&rows, 4000).unwrap().labels;
    let mut decoder = FrameDecoder::new(64 << 20);
    let mut buf = BytesMut::new();
    let mut seen = vec![false; REQUESTS as usize + 1];
    let mut answers = 0;
    while answers < REQUESTS {
        match decoder.decode(&mut buf).unwrap() {
            Some(Decoded::Frame(frame)) => {
                assert_eq!(labels_of(&frame), expected, "answer {}", frame.header.request_id);
                let id = frame.header.request_id as usize;
                assert!(!seen[id], "answer {id} twice");
                seen[id] = true;
                answers += 1;
            }
            Some(Decoded::Oversized(_)) => panic!("oversized answer"),
            None => {
                let read = tokio::time::timeout(Duration::from_secs(30), read_half.read_buf(&mut buf))
                    .await
                    .expect("answers keep coming")
                    .unwrap();
                assert!(read > 0, "the server closed the connection after {answers} answers");
            }
        }
    }
    let write_half = sender.await.unwrap();
    assert!(seen[1..].iter().all(|s| *s));
    assert_eq!(server.metrics().error_count("default/f", ErrorCode::Busy.name()), 0);

    drop((read_half, write_half, client));
    wait_for(|| server.open_connections() == 0, "the connections to close").await;
    wait_for(|| budget.used() == 0, "the budget to be empty").await;
    assert_eq!(category_bytes(&server, "unsent"), 0);
    server.shutdown().await;
}
