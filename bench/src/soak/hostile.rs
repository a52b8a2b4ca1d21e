//! The hostile clients of the soak. Each runs beside the good clients until the soak ends, bounded in
//! connections and time, counts what the server did, and records an anomaly when the server did what
//! `docs/protocol.md` says it does not (kept a 1 byte/s frame open, closed a connection a bad request
//! should not close, answered a malformed request, ...).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use rand::SeedableRng as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vknf_functions::DType;
use vknf_protocol::{
    Description, ErrorBody, ErrorCode, FrameType, HEADER_LEN, MAGIC, VERSION, encode_describe, encode_request,
    encode_request_bytes,
};

use super::counters::Counters;
use super::net::{Dialer, Incoming, RawConn};
use vknf_testkit::drill::busy_reference;

/// What every hostile client needs to know.
#[derive(Clone)]
pub struct Target {
    /// How to connect (TLS or not).
    pub dialer: Dialer,
    /// The forest's port.
    pub forest: SocketAddr,
    /// Input width of the forest.
    pub n_features: usize,
    /// Whether the forest accepts NaN and infinities.
    pub accepts_nan: bool,
    /// The server's frame deadline (`docs/protocol.md`: a started frame must complete within it).
    pub frame_deadline: Duration,
    /// The server's largest frame payload, in bytes.
    pub max_payload: usize,
    /// When the soak ends.
    pub end: Instant,
}

impl Target {
    fn running(&self) -> bool {
        Instant::now() < self.end
    }

    /// Sleeps `duration`, or until the soak ends.
    async fn pause(&self, duration: Duration) {
        let left = self.end.saturating_duration_since(Instant::now());
        tokio::time::sleep(duration.min(left)).await;
    }

    async fn connect(&self, counters: &Counters, addr: SocketAddr) -> Option<RawConn> {
        match self.dialer.connect(addr, Duration::from_secs(10)).await {
            Ok(stream) => {
                counters.inc("connections");
                Some(RawConn::new(stream))
            }
            Err(_) => {
                counters.inc("connect_failed");
                self.pause(Duration::from_millis(500)).await;
                None
            }
        }
    }

    /// A valid request frame of `rows` rows of zeros.
    fn request(&self, id: u64, rows: usize, output_mask: u32) -> BytesMut {
        let mut frame = BytesMut::new();
        let values = vec![0.25f32; rows * self.n_features];
        encode_request(&mut frame, id, self.n_features as u32, output_mask, &values).expect("a valid request");
        frame
    }

    /// How long the server may take to cut a frame that stalls: its deadline plus slack for a loaded
    /// host (lavapipe shares the cores).
    fn cut_bound(&self) -> Duration {
        self.frame_deadline + Duration::from_secs(20)
    }
}

fn error_of(incoming: &Incoming) -> Option<ErrorBody> {
    match incoming {
        Incoming::Frame(frame) if frame.header.frame_type == FrameType::Error => ErrorBody::parse(&frame.payload).ok(),
        _ => None,
    }
}

/// Whether this is the id-0 `BUSY` of a server at its connection limit (the data-port flood's doing):
/// the connection is refused, whatever it was going to send.
fn refused_at_limit(incoming: &Incoming) -> bool {
    matches!(incoming, Incoming::Frame(frame) if frame.header.request_id == 0)
        && error_of(incoming).is_some_and(|e| e.code == ErrorCode::Busy)
}

fn describe(incoming: &Incoming) -> String {
    match incoming {
        Incoming::Frame(frame) => match error_of(incoming) {
            Some(error) => format!("{} (id {})", error.code, frame.header.request_id),
            None => format!("a {:?} frame (id {})", frame.header.frame_type, frame.header.request_id),
        },
        Incoming::Closed => "the connection closed".into(),
        Incoming::TimedOut => "nothing".into(),
    }
}

/// Slowloris: a valid frame sent one byte per second. The server must cut it with `BAD_FRAME` within
/// its frame deadline, however slowly the bytes come.
pub async fn slowloris(target: Target, counters: Arc<Counters>) {
    while target.running() {
        let Some(mut conn) = target.connect(&counters, target.forest).await else {
            continue;
        };
        let frame = target.request(1, 1, 0);
        let opened = Instant::now();
        let mut sent = 0;
        loop {
            if !target.running() {
                counters.inc("open_at_end");
                break;
            }
            if opened.elapsed() > target.cut_bound() {
                counters.anomaly(format!(
                    "a frame sent at 1 byte/s was still open after {:.0} s ({sent} bytes sent)",
                    opened.elapsed().as_secs_f64()
                ));
                break;
            }
            if sent < frame.len() {
                if conn.send(&frame[sent..sent + 1], Duration::from_secs(5)).await.is_err() {
                    counters.inc("cut_on_write");
                    break;
                }
                sent += 1;
                counters.inc("bytes_sent");
            }
            match conn.next_frame(Duration::from_secs(1)).await {
                Incoming::TimedOut => {}
                Incoming::Closed => {
                    counters.inc("cut_without_frame");
                    break;
                }
                incoming => {
                    match error_of(&incoming).map(|e| e.code) {
                        _ if refused_at_limit(&incoming) => counters.inc("refused_at_connection_limit"),
                        Some(ErrorCode::BadFrame) => counters.inc("cut_with_bad_frame"),
                        _ => counters.anomaly(format!("a 1 byte/s frame got {}", describe(&incoming))),
                    }
                    break;
                }
            }
        }
        counters.add("seconds_open", opened.elapsed().as_secs());
    }
}

/// The first half of a request frame of about `frame_bytes` (at most the frame limit): what each
/// half-frame client sends, built once for all of them.
pub fn half_frame_prefix(target: &Target, frame_bytes: usize) -> Arc<Vec<u8>> {
    let row_bytes = 4 * target.n_features;
    let rows = (frame_bytes.min(target.max_payload) - 16) / row_bytes;
    let payload = 16 + rows * row_bytes;
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload / 2 + 16);
    out.put_slice(&MAGIC);
    out.put_u8(VERSION);
    out.put_u8(FrameType::Request.code());
    out.put_u16_le(0);
    out.put_u64_le(1);
    out.put_u32_le(payload as u32);
    out.put_u32_le(rows as u32);
    out.put_u32_le(target.n_features as u32);
    out.put_u8(vknf_protocol::INPUT_DTYPE_F32);
    out.put_slice(&[0; 3]);
    out.put_u32_le(0);
    out.put_bytes(0, rows * row_bytes / 2);
    Arc::new(out.to_vec())
}

/// Half-sent large frames: the header of a large request and half its payload (`prefix`), then
/// nothing. The server charges them to its memory budget (or answers `BUSY`) and must cut them at the
/// frame deadline.
pub async fn half_frame(target: Target, prefix: Arc<Vec<u8>>, counters: Arc<Counters>) {
    let frame = prefix;
    let half = frame.len();
    while target.running() {
        let Some(mut conn) = target.connect(&counters, target.forest).await else {
            continue;
        };
        let opened = Instant::now();
        let mut sent = 0;
        while sent < half {
            let chunk = (half - sent).min(256 * 1024);
            if conn
                .send(&frame[sent..sent + chunk], Duration::from_secs(15))
                .await
                .is_err()
            {
                break;
            }
            sent += chunk;
        }
        counters.add("bytes_sent", sent as u64);
        counters.inc("frames_half_sent");
        // Wait for the cut (answers BUSY, then BAD_FRAME at the deadline, then the close).
        let mut cut = false;
        while opened.elapsed() < target.cut_bound() {
            let left = target.cut_bound().saturating_sub(opened.elapsed());
            match conn.next_frame(left).await {
                Incoming::Closed => {
                    counters.inc("closed_by_server");
                    cut = true;
                    break;
                }
                Incoming::TimedOut => break,
                incoming => match error_of(&incoming).map(|e| e.code) {
                    Some(ErrorCode::BadFrame) => counters.inc("bad_frame"),
                    Some(ErrorCode::Busy) => counters.inc("busy"),
                    Some(ErrorCode::TooLarge) => counters.inc("too_large"),
                    _ => counters.anomaly(format!("a half-sent frame got {}", describe(&incoming))),
                },
            }
        }
        if !cut {
            if target.running() {
                counters.anomaly(format!(
                    "a half-sent {} MiB frame was not cut after {:.0} s",
                    (2 * half) >> 20,
                    opened.elapsed().as_secs_f64()
                ));
            } else {
                counters.inc("open_at_end");
            }
        }
    }
}

/// A slow reader: pipelines up to `requests` requests that ask for the scores (large answers) and
/// never reads; after `hold` it gives the connection up and starts again. The server must stop reading
/// at the connection's share of its budget and close the connection after its write timeout.
pub async fn slow_reader(target: Target, requests: usize, hold: Duration, counters: Arc<Counters>) {
    let frame = target.request(1, 256, 0b10);
    while target.running() {
        let Some(mut conn) = target.connect(&counters, target.forest).await else {
            continue;
        };
        let opened = Instant::now();
        let mut closed = false;
        let mut pipelined = 0;
        while pipelined < requests && target.running() && opened.elapsed() < hold {
            match conn.send(&frame, Duration::from_secs(2)).await {
                Ok(()) => pipelined += 1,
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        counters.add("requests_pipelined", pipelined as u64);
        // Hold the connection without reading, then read what came: an end of stream (or a reset)
        // means that the server closed it.
        target.pause(hold.saturating_sub(opened.elapsed())).await;
        if !closed {
            let (bytes, ended) = conn.drain(Duration::from_secs(2)).await;
            counters.add("answer_bytes_read_at_the_end", bytes);
            closed = ended;
        }
        if closed {
            counters.inc("closed_by_server");
        } else {
            counters.inc("given_up_by_client");
        }
    }
}

/// The malformed frames, each with what the connection must do after it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Malformed {
    BadMagic,
    BadVersion,
    UnknownFrameType,
    PartsDoNotAddUp,
    ZeroRows,
    UnknownDtype,
    OverflowingShape,
    OverLimit,
    DescribeWithPayload,
    ResponseFromClient,
    TruncatedHeader,
    RandomBytes,
}

impl Malformed {
    const ALL: [Malformed; 12] = [
        Malformed::BadMagic,
        Malformed::BadVersion,
        Malformed::UnknownFrameType,
        Malformed::PartsDoNotAddUp,
        Malformed::ZeroRows,
        Malformed::UnknownDtype,
        Malformed::OverflowingShape,
        Malformed::OverLimit,
        Malformed::DescribeWithPayload,
        Malformed::ResponseFromClient,
        Malformed::TruncatedHeader,
        Malformed::RandomBytes,
    ];

    fn name(self) -> &'static str {
        match self {
            Malformed::BadMagic => "bad_magic",
            Malformed::BadVersion => "bad_version",
            Malformed::UnknownFrameType => "unknown_frame_type",
            Malformed::PartsDoNotAddUp => "parts_do_not_add_up",
            Malformed::ZeroRows => "zero_rows",
            Malformed::UnknownDtype => "unknown_dtype",
            Malformed::OverflowingShape => "overflowing_shape",
            Malformed::OverLimit => "over_frame_limit",
            Malformed::DescribeWithPayload => "describe_with_payload",
            Malformed::ResponseFromClient => "response_from_client",
            Malformed::TruncatedHeader => "truncated_header",
            Malformed::RandomBytes => "random_bytes",
        }
    }

    /// Whether the server keeps the connection after answering (docs/protocol.md's error table).
    /// (An oversized frame's payload is skipped as it arrives: the connection is usable again only after
    /// it, which this client never sends.)
    fn keeps_connection(self) -> bool {
        !matches!(
            self,
            Malformed::BadMagic
                | Malformed::BadVersion
                | Malformed::TruncatedHeader
                | Malformed::RandomBytes
                | Malformed::OverLimit
        )
    }

    fn bytes(self, id: u64, n_features: usize, max_payload: usize, rng: &mut impl rand::Rng) -> Vec<u8> {
        let header = |out: &mut BytesMut, version: u8, frame_type: u8, payload_len: u32| {
            out.put_slice(&MAGIC);
            out.put_u8(version);
            out.put_u8(frame_type);
            out.put_u16_le(0);
            out.put_u64_le(id);
            out.put_u32_le(payload_len);
        };
        let request_head = |out: &mut BytesMut, n_rows: u32, n_features: u32, dtype: u8| {
            out.put_u32_le(n_rows);
            out.put_u32_le(n_features);
            out.put_u8(dtype);
            out.put_slice(&[0; 3]);
            out.put_u32_le(0);
        };
        let mut out = BytesMut::new();
        let width = n_features as u32;
        match self {
            Malformed::BadMagic => {
                out.put_slice(b"XKNF");
                out.put_slice(&[1, 1, 0, 0]);
                out.put_u64_le(id);
                out.put_u32_le(0);
            }
            Malformed::BadVersion => header(&mut out, VERSION + 1, 1, 0),
            Malformed::UnknownFrameType => header(&mut out, VERSION, 77, 0),
            Malformed::PartsDoNotAddUp => {
                // Two rows declared, one sent.
                header(&mut out, VERSION, 1, 16 + 4 * width);
                request_head(&mut out, 2, width, 3);
                out.put_bytes(0, 4 * n_features);
            }
            Malformed::ZeroRows => {
                header(&mut out, VERSION, 1, 16);
                request_head(&mut out, 0, width, 3);
            }
            Malformed::UnknownDtype => {
                header(&mut out, VERSION, 1, 16 + 4 * width);
                request_head(&mut out, 1, width, 9);
                out.put_bytes(0, 4 * n_features);
            }
            Malformed::OverflowingShape => {
                header(&mut out, VERSION, 1, 16);
                request_head(&mut out, 0x4000_0000, 0x4000_0000, 3);
            }
            Malformed::OverLimit => header(&mut out, VERSION, 1, (max_payload as u32).saturating_add(1)),
            Malformed::DescribeWithPayload => {
                header(&mut out, VERSION, 4, 8);
                out.put_u64_le(u64::MAX);
            }
            Malformed::ResponseFromClient => {
                header(&mut out, VERSION, 2, 8);
                out.put_u64_le(0);
            }
            Malformed::TruncatedHeader => {
                out.put_slice(&MAGIC);
                out.put_slice(&[VERSION, 1, 0, 0, 1, 2]);
            }
            Malformed::RandomBytes => {
                let len = rng.random_range(1..4096);
                let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if bytes.starts_with(&MAGIC[..1]) {
                    bytes[0] = b'x';
                }
                return bytes;
            }
        }
        out.to_vec()
    }
}

/// Malformed frames: random bytes and crafted bad headers, one per connection, every `interval`. Each
/// must be answered with an error frame or end with the connection closed (as the protocol's error
/// table says); a connection the protocol keeps must still answer a `DESCRIBE` afterwards.
pub async fn malformed(target: Target, interval: Duration, seed: u64, counters: Arc<Counters>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut case = seed as usize;
    while target.running() {
        let kind = Malformed::ALL[case % Malformed::ALL.len()];
        case += 1;
        let Some(mut conn) = target.connect(&counters, target.forest).await else {
            continue;
        };
        let bytes = kind.bytes(7, target.n_features, target.max_payload, &mut rng);
        counters.inc(&format!("sent_{}", kind.name()));
        if conn.send(&bytes, Duration::from_secs(5)).await.is_err() {
            counters.inc("closed_while_sending");
            continue;
        }
        let incoming = conn.next_frame(target.cut_bound()).await;
        if refused_at_limit(&incoming) {
            counters.inc("refused_at_connection_limit");
            target.pause(interval).await;
            continue;
        }
        match &incoming {
            Incoming::TimedOut if target.running() => {
                counters.anomaly(format!(
                    "{}: no answer and no close within {:?}",
                    kind.name(),
                    target.cut_bound()
                ));
            }
            Incoming::TimedOut => {}
            Incoming::Closed => counters.inc("closed_without_frame"),
            Incoming::Frame(frame) => match error_of(&incoming) {
                Some(error) => counters.inc(&format!("answered_{}", error.code.name())),
                // A DESCRIBE whose reserved payload is not empty may still be described.
                None if kind == Malformed::DescribeWithPayload && frame.header.frame_type == FrameType::Description => {
                    counters.inc("answered_DESCRIPTION")
                }
                None => counters.anomaly(format!("{}: answered with {}", kind.name(), describe(&incoming))),
            },
        }
        if kind.keeps_connection() && matches!(incoming, Incoming::Frame(_)) && target.running() {
            // The protocol keeps this connection: it must still serve.
            let mut frame = BytesMut::new();
            encode_describe(&mut frame, 8);
            let after = match conn.send(&frame, Duration::from_secs(5)).await {
                Ok(()) => conn.answer_to(8, Duration::from_secs(30)).await,
                Err(_) => Incoming::Closed,
            };
            // Any answer to the DESCRIBE shows the connection still serves (a function without a loaded
            // version, e.g. while quarantined, answers it with an error).
            match &after {
                Incoming::Frame(frame)
                    if frame.header.frame_type == FrameType::Description
                        && Description::parse(&frame.payload).is_ok() =>
                {
                    counters.inc("kept_and_described");
                }
                Incoming::Frame(frame) if frame.header.request_id == 8 => match error_of(&after) {
                    Some(error) => counters.inc(&format!("kept_and_describe_answered_{}", error.code.name())),
                    None => counters.anomaly(format!("a DESCRIBE was answered with {}", describe(&after))),
                },
                other if target.running() => counters.anomaly(format!(
                    "{}: the connection should stay usable, but a DESCRIBE then got {}",
                    kind.name(),
                    describe(other)
                )),
                _ => {}
            }
        }
        conn.shutdown().await;
        target.pause(interval).await;
    }
}

/// A connection flood: every `every`, `count` plain TCP connections to `addr` (the data or the ops
/// port) held idle for `hold`, then closed. Counts how many the server kept, refused (an id-0 `BUSY`
/// frame on the data port) or closed.
pub async fn flood(
    target: Target,
    addr: SocketAddr,
    count: usize,
    every: Duration,
    hold: Duration,
    counters: Arc<Counters>,
) {
    // The first wave after a few seconds, so that start-up figures are not the flood's.
    target.pause(Duration::from_secs(5)).await;
    while target.running() {
        let wave = Instant::now();
        counters.inc("waves");
        let permits = Arc::new(tokio::sync::Semaphore::new(128));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..count {
            let permits = permits.clone();
            let counters = counters.clone();
            tasks.spawn(async move {
                let permit = permits.acquire_owned().await;
                let Ok(mut stream) = Dialer::connect_tcp(addr, Duration::from_secs(5)).await else {
                    counters.inc("connect_failed");
                    return;
                };
                drop(permit);
                counters.inc("connections");
                let mut buf = [0u8; 256];
                let mut received = Vec::new();
                let outcome = tokio::time::timeout(hold, async {
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => received.extend_from_slice(&buf[..n]),
                        }
                    }
                })
                .await;
                match outcome {
                    Ok(()) if received.len() >= HEADER_LEN + 4 => {
                        let code = u16::from_le_bytes([received[HEADER_LEN], received[HEADER_LEN + 1]]);
                        counters.inc(&format!("closed_with_{}", ErrorCode::from_code(code).name()));
                    }
                    Ok(()) if !received.is_empty() => counters.inc("closed_with_data"),
                    Ok(()) => counters.inc("closed_by_server"),
                    Err(_) => counters.inc("held_open"),
                }
                let _ = stream.shutdown().await;
            });
        }
        while tasks.join_next().await.is_some() {}
        counters.add("wave_ms", wave.elapsed().as_millis() as u64);
        target.pause(every.saturating_sub(wave.elapsed())).await;
    }
}

/// Requests that are well framed but wrong for the function: NaN and infinite rows, wrong widths, zero
/// rows, a wrong dtype, an output the function lacks. Each must get its error (`NAN`, `SHAPE`,
/// `UNSUPPORTED`; an answer for NaN if the forest routes NaN) on a connection that stays usable.
pub async fn bad_requests(target: Target, interval: Duration, counters: Arc<Counters>) {
    let width = target.n_features;
    let rows = |n: usize| vec![0.5f32; n * width];
    let mut id = 0u64;
    let mut conn: Option<RawConn> = None;
    while target.running() {
        if conn.is_none() {
            conn = target.connect(&counters, target.forest).await;
        }
        let Some(c) = conn.as_mut() else { continue };
        id += 1;
        let case = id % 8;
        let mut frame = BytesMut::new();
        let (name, expected) = match case {
            0 => {
                let mut values = rows(4);
                values[2 * width + width / 2] = f32::NAN;
                encode_request(&mut frame, id, width as u32, 0, &values).expect("a frame");
                ("nan_row", if target.accepts_nan { None } else { Some(ErrorCode::Nan) })
            }
            1 => {
                let mut values = rows(4);
                values[3 * width] = f32::INFINITY;
                encode_request(&mut frame, id, width as u32, 0, &values).expect("a frame");
                (
                    "infinite_row",
                    if target.accepts_nan { None } else { Some(ErrorCode::Nan) },
                )
            }
            2 => {
                encode_request(&mut frame, id, width as u32 + 1, 0, &vec![0.5; 3 * (width + 1)]).expect("a frame");
                ("one_feature_too_many", Some(ErrorCode::Shape))
            }
            3 if width > 1 => {
                encode_request(&mut frame, id, width as u32 - 1, 0, &vec![0.5; 3 * (width - 1)]).expect("a frame");
                ("one_feature_too_few", Some(ErrorCode::Shape))
            }
            4 => {
                encode_request(&mut frame, id, width as u32, 0, &[]).expect("a frame");
                ("zero_rows", Some(ErrorCode::Shape))
            }
            5 => {
                let bytes = vec![0u8; 2 * width * 4];
                encode_request_bytes(&mut frame, id, width as u32, DType::U32, 0, &bytes).expect("a frame");
                ("u32_rows_for_a_float_function", Some(ErrorCode::Shape))
            }
            6 => {
                encode_request(&mut frame, id, width as u32, 1 << 7, &rows(2)).expect("a frame");
                ("output_the_function_lacks", Some(ErrorCode::Shape))
            }
            _ => {
                encode_request(&mut frame, id, width as u32, 0, &rows(1)).expect("a frame");
                ("valid_between_bad_ones", None)
            }
        };
        counters.inc(&format!("sent_{name}"));
        let incoming = match c.send(&frame, Duration::from_secs(10)).await {
            Ok(()) => c.answer_to(id, Duration::from_secs(60)).await,
            Err(_) => Incoming::Closed,
        };
        if refused_at_limit(&incoming) {
            counters.inc("refused_at_connection_limit");
            conn = None;
            target.pause(interval).await;
            continue;
        }
        let got = error_of(&incoming).map(|e| e.code);
        let fine = match (&incoming, expected) {
            (Incoming::Frame(f), None) if f.header.frame_type == FrameType::Response => true,
            // The drill function's device resets may fail a valid batch; the budget may be full.
            (Incoming::Frame(_), _) if matches!(got, Some(ErrorCode::DeviceLost | ErrorCode::Busy)) => true,
            (Incoming::Frame(_), Some(code)) => got == Some(code),
            _ => false,
        };
        if fine {
            counters.inc(&format!("answered_{name}"));
        } else if target.running() {
            counters.anomaly(format!(
                "{name}: expected {}, got {}",
                expected.map_or("an answer".to_owned(), |c| c.name().to_owned()),
                describe(&incoming)
            ));
        }
        if matches!(incoming, Incoming::Closed | Incoming::TimedOut) {
            conn = None;
        }
        target.pause(interval).await;
    }
}

/// Clients that hang up mid-request: a few valid requests and the first half of another, then the
/// connection is closed (half of the time after shutting down the writing side, else dropped at once).
pub async fn disconnector(target: Target, interval: Duration, counters: Arc<Counters>) {
    let mut round = 0u64;
    while target.running() {
        round += 1;
        let Some(mut conn) = target.connect(&counters, target.forest).await else {
            continue;
        };
        let mut burst = BytesMut::new();
        for id in 1..=4 {
            burst.extend_from_slice(&target.request(id, 256, 0b10));
        }
        let partial = target.request(5, 256, 0);
        burst.extend_from_slice(&partial[..partial.len() / 2]);
        if conn.send(&burst, Duration::from_secs(5)).await.is_ok() {
            counters.add("requests_abandoned", 5);
        }
        if round % 2 == 0 {
            conn.shutdown().await;
            counters.inc("closed_after_shutdown");
        } else {
            counters.inc("dropped");
        }
        drop(conn);
        target.pause(interval).await;
    }
}

/// How the drill function is called.
#[derive(Debug, Clone)]
pub struct Drill {
    /// The drill function's port.
    pub addr: SocketAddr,
    /// Rows of the heavy call (one batch).
    pub rows: usize,
    /// Generator steps per row of the heavy call.
    pub steps: u32,
    /// How often the light call checks whether the function is back.
    pub interval: Duration,
}

/// The drill function: a light call every `interval` (answered, or refused while quarantined); when it
/// is answered, a heavy call whose kernel must miss its deadline, so that the function is quarantined,
/// released after its back-off, and quarantined again, each time with a device reset.
pub async fn drill(target: Target, drill: Drill, counters: Arc<Counters>) {
    let light_steps = [0u32, 3, 1000];
    let light: Vec<u8> = light_steps.iter().flat_map(|s| s.to_le_bytes()).collect();
    let heavy: Vec<u8> = std::iter::repeat_n(drill.steps.to_le_bytes(), drill.rows)
        .flatten()
        .collect();
    let mut conn: Option<RawConn> = None;
    let mut id = 0;
    while target.running() {
        if conn.is_none() {
            conn = target.connect(&counters, drill.addr).await;
        }
        let Some(c) = conn.as_mut() else { continue };
        id += 1;
        let mut frame = BytesMut::new();
        encode_request_bytes(&mut frame, id, 1, DType::U32, 0, &light).expect("a frame");
        let incoming = match c.send(&frame, Duration::from_secs(10)).await {
            Ok(()) => c.answer_to(id, Duration::from_secs(120)).await,
            Err(_) => Incoming::Closed,
        };
        let released = match (&incoming, error_of(&incoming)) {
            (Incoming::Frame(f), None) if f.header.frame_type == FrameType::Response => {
                let expected: Vec<u32> = light_steps
                    .iter()
                    .enumerate()
                    .map(|(row, steps)| busy_reference(row as u32, *steps))
                    .collect();
                let values = vknf_protocol::ResponseBody::parse(f.payload.clone())
                    .ok()
                    .and_then(|r| r.output(0).map(|o| o.to_u32()));
                if values.as_deref() == Some(expected.as_slice()) {
                    counters.inc("light_answered");
                } else {
                    counters.anomaly(format!("a light call was answered {values:?}, not {expected:?}"));
                }
                true
            }
            _ if refused_at_limit(&incoming) => {
                counters.inc("refused_at_connection_limit");
                conn = None;
                false
            }
            (_, Some(error)) if error.message.contains("quarantined") => {
                counters.inc("light_refused_quarantined");
                false
            }
            (_, Some(error)) => {
                counters.inc(&format!("light_{}", error.code.name()));
                false
            }
            (Incoming::Closed, _) => {
                counters.inc("light_connection_closed");
                conn = None;
                false
            }
            _ => {
                if target.running() {
                    counters.anomaly(format!("a light call got {} within 120 s", describe(&incoming)));
                }
                conn = None;
                false
            }
        };
        if released && target.running() {
            id += 1;
            let mut frame = BytesMut::new();
            encode_request_bytes(&mut frame, id, 1, DType::U32, 0, &heavy).expect("a frame");
            counters.inc("heavy_sent");
            let started = Instant::now();
            let incoming = match conn.as_mut() {
                Some(c) => match c.send(&frame, Duration::from_secs(30)).await {
                    Ok(()) => c.answer_to(id, Duration::from_secs(300)).await,
                    Err(_) => Incoming::Closed,
                },
                None => Incoming::Closed,
            };
            match (&incoming, error_of(&incoming)) {
                (_, Some(error)) if error.code == ErrorCode::DeviceLost && error.message.contains("deadline") => {
                    counters.inc("heavy_missed_deadline");
                    counters.add("heavy_ms", started.elapsed().as_millis() as u64);
                }
                (_, Some(error)) => counters.inc(&format!("heavy_{}", error.code.name())),
                (Incoming::Frame(_), None) => counters.inc("heavy_answered_in_time"),
                (Incoming::Closed, _) => {
                    counters.inc("heavy_connection_closed");
                    conn = None;
                }
                _ => {
                    if target.running() {
                        counters.anomaly(format!("a heavy call got {} within 300 s", describe(&incoming)));
                    }
                    conn = None;
                }
            }
        }
        target.pause(drill.interval).await;
    }
}
