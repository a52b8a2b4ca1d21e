//! One client connection: decode frames, validate requests, admit them, write answers.
//!
//! Reading and writing run as separate tasks joined by a bounded channel. A request is admitted
//! only after it has reserved its answer's slot in that channel, which bounds the answers a
//! connection can hold; when all slots are taken the reader stops reading, so a client that
//! pipelines too deeply is slowed by TCP rather than buffered without limit.
//!
//! Memory: each connection has an account in the process's memory budget. A frame that must be
//! buffered is charged from its header (the decoder reserves its whole payload then); the bytes of a
//! request count against the connection's share until its answer is written, and an answer waiting
//! for the client counts as unsent until then. A connection that holds its whole share stops reading
//! until its calls are answered and its client reads; a frame for which the process's budget has no
//! room is answered `BUSY` from its header and its payload skipped, never buffered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use vknf_protocol::{
    Decoded, ErrorCode, Frame, FrameDecoder, FrameType, Header, InferRequest, encode_description, encode_error,
};
use vknf_runtime::{Call, Category, Charge, ClientBudget, FunctionHandle, Metrics, Rows};

use super::outbox::{Outbox, write_loop};
use super::reply::{ErrorCounter, PROTOCOL, Replies};
use super::transport::{Sink, Source};
use crate::config::ServerConfig;

/// Longest a finished connection waits for its client to close before closing itself.
const MAX_LINGER: Duration = Duration::from_secs(1);

/// While a function closes, how often a connection looks whether its admitted answers are all out.
const CLOSING_POLL: Duration = Duration::from_millis(5);

/// Requests with more row bytes than this keep sharing the read buffer (they fill most of it).
const SHARE_READ_BUFFER_ABOVE: usize = 64 * 1024;

/// Requests with at most this many row bytes have them copied into the connection's row arena.
const ARENA_ROWS_AT_MOST: usize = 2 * 1024;

/// Bytes of a block of the row arena.
const ROW_ARENA_BYTES: usize = 16 * 1024;

/// Where a connection copies the rows of its small requests: blocks of [`ROW_ARENA_BYTES`], each
/// request's rows a slice of one. A block whose requests are all answered (the runtime lets go of a
/// call's rows before its answer leaves) is filled again from its start, so a connection serving small
/// requests allocates nothing for them; one still in use stays with its requests, and a queued small
/// request keeps at most one block alive.
struct RowArena {
    block: BytesMut,
}

impl RowArena {
    fn new() -> RowArena {
        RowArena { block: BytesMut::new() }
    }

    /// `rows`, copied into the arena.
    fn copy(&mut self, rows: &[u8]) -> Bytes {
        if self.block.capacity() < rows.len() && !self.block.try_reclaim(ROW_ARENA_BYTES) {
            self.block = BytesMut::with_capacity(ROW_ARENA_BYTES);
        }
        self.block.extend_from_slice(rows);
        self.block.split().freeze()
    }
}

/// Ends a connection's replies however its task ends.
struct CloseReplies(Arc<Replies>);

impl Drop for CloseReplies {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Answered replies a connection keeps for its next requests, at most.
const MAX_SPARE_REPLIES: usize = 64;

/// How the reading side ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The client closed its side or went idle: answer what is in flight, then close.
    Finish,
    /// The connection is broken (write timeout, reset, garbage): drop queued work.
    Abort,
}

/// What became of a frame's header when the connection asked the memory budget for its payload.
enum FrameRoom {
    /// Charged: the payload may be buffered.
    Charged(Charge),
    /// Refused: answer this and skip the payload.
    Refused(ErrorCode, String),
    /// The writer is gone while the connection waited for room.
    WriterGone,
}

/// Serves one accepted connection until it ends.
pub(crate) async fn serve_connection(
    mut reader: impl Source,
    writer: Sink,
    function: FunctionHandle,
    config: Arc<ServerConfig>,
    metrics: Metrics,
    client: ClientBudget,
) {
    let outbox = Outbox::new(writer, client.account(Category::Unsent));
    let (tx, rx) = mpsc::channel::<Bytes>(config.max_in_flight_per_connection.max(1) + 1);
    let writer_task = tokio::spawn(write_loop(outbox.clone(), rx, config.write_timeout));
    let requests = metrics.front_end_requests(PROTOCOL, function.name());
    let errors = Arc::new(ErrorCounter {
        metrics,
        function: function.label(),
    });
    let closed = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let replies = Replies::new(
        outbox.clone(),
        in_flight.clone(),
        closed.clone(),
        errors.clone(),
        config.max_in_flight_per_connection.clamp(1, MAX_SPARE_REPLIES),
    );
    let close_replies = CloseReplies(replies.clone());
    let mut connection = Connection {
        tx,
        outbox,
        function,
        requests,
        errors,
        closed,
        in_flight,
        client,
        replies,
        rows: RowArena::new(),
    };
    let ending = connection.read_loop(&mut reader, &config).await;
    // No request comes after this: the spare replies go now (they hold the write side, which must
    // close once the answers are out).
    drop(close_replies);
    if ending == Ending::Abort {
        connection.closed.store(true, Ordering::Release);
    }
    // Outstanding answers keep the channel open through their reserved slots; the writer ends
    // once every one is written (or the client is gone).
    let Connection {
        tx,
        closed,
        outbox,
        replies,
        ..
    } = connection;
    drop(tx);
    drop(outbox);
    drop(replies);
    let mut writer_task = writer_task;
    if tokio::time::timeout(config.drain_timeout, &mut writer_task)
        .await
        .is_err()
    {
        closed.store(true, Ordering::Release);
        writer_task.abort();
        return;
    }
    if ending == Ending::Finish {
        // Every answer is written and the write side is shut (FIN). Closing now while the client's
        // late bytes sit unread would make the kernel send a reset, and a reset can destroy answers
        // the client has not read yet: read and drop until the client closes too, for a while.
        linger(&mut reader, config.read_timeout.min(MAX_LINGER)).await;
    }
}

/// Reads and drops what the client still sends, until it closes its side or `limit` passes.
async fn linger(reader: &mut impl Source, limit: Duration) {
    let mut scratch = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(limit, async {
        while let Ok(read) = reader.read(&mut scratch).await {
            if read == 0 {
                break;
            }
        }
    })
    .await;
}

struct Connection {
    tx: mpsc::Sender<Bytes>,
    outbox: Arc<Outbox>,
    function: FunctionHandle,
    /// Requests received on this connection's function, by the binary protocol.
    requests: Counter,
    errors: Arc<ErrorCounter>,
    /// Set when the client is gone, so queued work for it is skipped.
    closed: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    /// This connection's account in the process's memory budget.
    client: ClientBudget,
    /// Answers' replies, recycled.
    replies: Arc<Replies>,
    /// Where small requests' rows are copied.
    rows: RowArena,
}

impl Connection {
    async fn read_loop(&mut self, reader: &mut impl Source, config: &ServerConfig) -> Ending {
        let mut decoder = FrameDecoder::new(config.max_payload);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut closing = self.function.closing();
        // When the frame being received must be complete: set by its first bytes, so that a sender
        // trickling bytes cannot stretch one frame past the read timeout.
        let mut frame_deadline: Option<tokio::time::Instant> = None;
        // The memory budget's charge for the frame being buffered, from its header to its hand-over.
        let mut frame_charge: Option<Charge> = None;
        loop {
            loop {
                // Before the decoder reserves room for a frame's payload, the budget must have it.
                if frame_charge.is_none()
                    && let Some(header) = decoder.incomplete_frame(&buf)
                {
                    let is_closing = *closing.borrow();
                    match self.room_for_frame(&header, is_closing).await {
                        FrameRoom::Charged(charge) => frame_charge = Some(charge),
                        FrameRoom::Refused(code, message) => {
                            decoder.skip_frame(&mut buf);
                            self.requests.inc();
                            if !self.send_error(header.request_id, code, &message).await {
                                return Ending::Abort;
                            }
                        }
                        FrameRoom::WriterGone => return Ending::Abort,
                    }
                    // Waiting for room is not the client's delay: its frame's clock starts again.
                    frame_deadline = None;
                    continue;
                }
                match decoder.decode(&mut buf) {
                    Ok(Some(decoded)) => {
                        frame_deadline = None;
                        let charge = frame_charge.take();
                        if *closing.borrow() {
                            self.refuse_closing(decoded).await;
                        } else if !self.handle(decoded, charge).await {
                            return Ending::Abort;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        // Frame boundaries are lost: say why, then hang up.
                        self.send_error(0, error.code(), &format!("{error}; closing the connection"))
                            .await;
                        return Ending::Finish;
                    }
                }
            }
            let is_closing = *closing.borrow();
            if is_closing && self.in_flight.load(Ordering::Acquire) == 0 {
                // Everything admitted is answered; later frames got SHUTTING_DOWN above.
                return Ending::Finish;
            }
            let mid_frame = decoder.is_mid_frame(&buf);
            let limit = if is_closing {
                // Keep reading (and refusing) while admitted answers are still being computed.
                CLOSING_POLL
            } else if mid_frame {
                let deadline = *frame_deadline.get_or_insert_with(|| tokio::time::Instant::now() + config.read_timeout);
                deadline.saturating_duration_since(tokio::time::Instant::now())
            } else {
                frame_deadline = None;
                config.idle_timeout
            };
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            tokio::select! {
                read = tokio::time::timeout(limit, reader.read_buf(&mut buf)) => match read {
                    Ok(Ok(0)) => {
                        if decoder.is_mid_frame(&buf) {
                            self.errors.count(ErrorCode::BadFrame);
                        }
                        return Ending::Finish;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return Ending::Abort,
                    Err(_) if is_closing => {}
                    Err(_) if mid_frame => {
                        let message = format!(
                            "frame still incomplete after {:?}; closing the connection",
                            config.read_timeout
                        );
                        self.send_error(0, ErrorCode::BadFrame, &message).await;
                        return Ending::Finish;
                    }
                    Err(_) if self.in_flight.load(Ordering::Acquire) > 0 => {}
                    Err(_) => return Ending::Finish,
                },
                _ = closing.changed() => {}
                _ = self.tx.closed() => return Ending::Abort,
            }
        }
    }

    /// Asks the memory budget for room for the payload of the frame whose header has arrived: waits
    /// while this connection holds its whole share (its own calls and unsent answers: they go as it is
    /// answered and its client reads), then charges the process's budget, or says why not.
    async fn room_for_frame(&self, header: &Header, closing: bool) -> FrameRoom {
        if closing {
            return FrameRoom::Refused(ErrorCode::ShuttingDown, "the function is shutting down".into());
        }
        let bytes = header.payload_len as usize;
        if let Err(refusal) = self.client.check_share(Category::Receiving, bytes) {
            return FrameRoom::Refused(ErrorCode::TooLarge, refusal.to_string());
        }
        tokio::select! {
            () = self.client.room_for(bytes) => {}
            () = self.tx.closed() => return FrameRoom::WriterGone,
        }
        match self.client.try_charge(Category::Receiving, bytes) {
            Ok(charge) => FrameRoom::Charged(charge),
            Err(refusal) => FrameRoom::Refused(ErrorCode::Busy, refusal.to_string()),
        }
    }

    /// Handles one decoded frame (`charge`: what the budget charged for buffering it); false when the
    /// connection cannot go on.
    async fn handle(&mut self, decoded: Decoded, charge: Option<Charge>) -> bool {
        self.requests.inc();
        match decoded {
            Decoded::Oversized(header) => {
                let message = format!("payload of {} bytes exceeds the limit", header.payload_len);
                self.send_error(header.request_id, ErrorCode::TooLarge, &message).await
            }
            Decoded::Frame(frame) => match frame.header.frame_type {
                FrameType::Request => self.handle_request(frame, charge).await,
                FrameType::Describe => self.handle_describe(frame.header.request_id).await,
                other => {
                    let message = format!("frame type {} is not accepted by the server", other.code());
                    self.send_error(frame.header.request_id, ErrorCode::Unsupported, &message)
                        .await
                }
            },
        }
    }

    async fn refuse_closing(&mut self, decoded: Decoded) {
        let id = match decoded {
            Decoded::Oversized(header) => header.request_id,
            Decoded::Frame(frame) => frame.header.request_id,
        };
        self.send_error(id, ErrorCode::ShuttingDown, "the function is shutting down")
            .await;
    }

    async fn handle_describe(&mut self, request_id: u64) -> bool {
        let Some(info) = self.function.info() else {
            // No engine: quarantined for a while (answered as calls are, DEVICE_LOST, and the
            // connection stays), or closing.
            let error = match self.function.quarantined() {
                Some(why) => vknf_runtime::CallError::Quarantined(why),
                None => vknf_runtime::CallError::ShuttingDown("the function is shutting down".into()),
            };
            return self
                .send_error(request_id, super::reply::error_code(&error), &error.to_string())
                .await;
        };
        let mut frame = BytesMut::new();
        encode_description(&mut frame, request_id, self.function.name(), &info);
        self.send(frame.freeze()).await
    }

    /// Sends a frame of the connection's own (not an answer holding a reserved slot); false when
    /// the writer is gone.
    async fn send(&self, frame: Bytes) -> bool {
        let Some(queued) = self.outbox.write_or_queue(frame) else {
            return true;
        };
        if self.tx.send(queued).await.is_ok() {
            return true;
        }
        self.outbox.unqueue();
        false
    }

    async fn handle_request(&mut self, frame: Frame, charge: Option<Charge>) -> bool {
        let id = frame.header.request_id;
        let mut request = match InferRequest::parse(frame.payload) {
            Ok(request) => request,
            Err(error) => return self.send_error(id, error.code(), &error.to_string()).await,
        };
        if self.function.is_closing() {
            return self
                .send_error(id, ErrorCode::ShuttingDown, "the function is shutting down")
                .await;
        }
        // The request's bytes count against this connection's share until it is answered; the runtime
        // charges the process's budget for them when it admits the call.
        let input = match charge {
            Some(charge) => charge.into_client_hold(),
            None => {
                let bytes = request.rows.len();
                if let Err(refusal) = self.client.check_share(Category::Queued, bytes) {
                    return self.send_error(id, ErrorCode::TooLarge, &refusal.to_string()).await;
                }
                // A connection holding its whole share (answers its client has not read, calls not
                // yet answered) stops here, and so stops reading, until it has room again.
                tokio::select! {
                    () = self.client.room_for(bytes) => {}
                    () = self.tx.closed() => return false,
                }
                self.client.hold(bytes)
            }
        };
        // Waits while this connection is at its in-flight limit.
        let Ok(permit) = self.tx.clone().reserve_owned().await else {
            return false;
        };
        let reply = self.replies.reply(permit, input, id);
        // A small request's rows share their allocation with the rest of the read buffer; a
        // queued request would keep all of it alive. Copying small ones keeps the memory a
        // queue holds close to the bytes it admitted; the smallest go into the row arena.
        if request.rows.len() <= ARENA_ROWS_AT_MOST {
            request.rows = self.rows.copy(&request.rows);
        } else if request.rows.len() < SHARE_READ_BUFFER_ABOVE {
            request.rows = Bytes::copy_from_slice(&request.rows);
        }
        let rows = Rows::from_le_bytes(
            request.rows,
            request.n_rows as usize,
            request.n_features as usize,
            request.dtype,
        )
        .expect("the codec checked that the rows add up");
        self.function.submit(Call::new(rows, request.output_mask), reply);
        true
    }

    /// Queues an error frame; false when the writer is gone.
    async fn send_error(&self, request_id: u64, code: ErrorCode, message: &str) -> bool {
        self.errors.count(code);
        let mut frame = BytesMut::new();
        encode_error(&mut frame, request_id, code, message);
        self.send(frame.freeze()).await
    }
}

/// Answers a connection refused at the connection limit with `BUSY`, then closes it.
pub(crate) async fn refuse_connection(mut stream: TcpStream, timeout: Duration) {
    let mut frame = BytesMut::new();
    encode_error(
        &mut frame,
        0,
        ErrorCode::Busy,
        "the server is at its connection limit; retry later",
    );
    let _ = tokio::time::timeout(timeout, async {
        stream.write_all(&frame).await?;
        stream.shutdown().await
    })
    .await;
}
