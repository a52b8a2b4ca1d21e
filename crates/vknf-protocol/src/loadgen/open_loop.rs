//! The open loop on plain threads: one pacer thread sends every request at its scheduled time over
//! blocking sockets, and one reader thread per connection matches answers to their send times. No
//! async runtime sits between the schedule and the socket, so the latency measured is the
//! server's, and not the hand-offs of a client.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use parking_lot::Mutex;

use super::{BLOCKING_TIMEOUT, Budget, LoadError, LoadReport, RequestShape};
use crate::blocking_client::AnswerReader;
use crate::client::{Answer, ClientError};
use crate::codec::{FrameError, encode_request};

/// One connection: its socket and the send time of every request it has in flight.
pub(super) struct Connection {
    stream: TcpStream,
    sent: Mutex<HashMap<u64, Instant>>,
    report: Mutex<LoadReport>,
}

/// Waits until `at`: sleeps to shortly before it, then spins (a sleep overshoots by tens of
/// microseconds).
fn wait_until(at: Instant) {
    const SPIN: Duration = Duration::from_micros(200);
    let now = Instant::now();
    if at > now + SPIN {
        thread::sleep(at - now - SPIN);
    }
    while Instant::now() < at {
        std::hint::spin_loop();
    }
}

fn io_error(e: std::io::Error) -> LoadError {
    LoadError::Client(ClientError::Io(e.to_string()))
}

/// Opens the connections of an open loop (blocking).
pub(super) fn connect(addr: &str, connections: usize) -> Result<Vec<Arc<Connection>>, LoadError> {
    let io = io_error;
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        let stream = TcpStream::connect(addr).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        stream.set_write_timeout(Some(BLOCKING_TIMEOUT)).map_err(io)?;
        conns.push(Arc::new(Connection {
            stream,
            sent: Mutex::new(HashMap::new()),
            report: Mutex::new(LoadReport::new()),
        }));
    }
    Ok(conns)
}

/// Runs the open loop over `conns`; blocking (call it from a thread of its own).
pub(super) fn run(
    conns: &[Arc<Connection>],
    rate: f64,
    max_in_flight: usize,
    request: &RequestShape,
    budget: &Budget,
    started: Instant,
) -> Result<LoadReport, LoadError> {
    let io = io_error;
    let connections = conns.len();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let rows = request.rows;
    let mut readers = Vec::with_capacity(connections);
    for conn in conns {
        let (conn, in_flight) = (conn.clone(), in_flight.clone());
        let reader = conn.stream.try_clone().map_err(io)?;
        readers.push(thread::spawn(move || read_answers(reader, &conn, &in_flight, rows)));
    }
    let mut skipped = 0u64;
    let mut frame = BytesMut::new();
    let mut n: u64 = 0;
    while budget.take() {
        let scheduled = started + interval.mul_f64(n as f64);
        wait_until(scheduled);
        let conn = &conns[(n % connections as u64) as usize];
        if in_flight.fetch_add(1, Ordering::AcqRel) >= max_in_flight {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            skipped += 1;
        } else {
            let id = n + 1;
            frame.clear();
            encode_request(&mut frame, id, request.width, request.mask, request.rows(n))
                .map_err(|e| LoadError::Config(e.to_string()))?;
            // Latency counts from the scheduled time, so a late send shows up in the figures.
            conn.sent.lock().insert(id, scheduled);
            if (&conn.stream).write_all(&frame).is_err() {
                conn.sent.lock().remove(&id);
                in_flight.fetch_sub(1, Ordering::AcqRel);
                conn.report.lock().record(rows, Err(ClientError::Closed(None)));
            }
        }
        n += 1;
    }
    // Answers still due get a while to arrive; then the readers are stopped.
    let drain_until = Instant::now() + BLOCKING_TIMEOUT;
    while in_flight.load(Ordering::Acquire) > 0 && Instant::now() < drain_until {
        thread::sleep(Duration::from_micros(200));
    }
    for conn in conns {
        let _ = conn.stream.shutdown(Shutdown::Both);
    }
    let mut total = LoadReport::new();
    for reader in readers {
        let _ = reader.join();
    }
    for conn in conns {
        let mut report = conn.report.lock();
        let unanswered = conn.sent.lock().len() as u64;
        if unanswered > 0 {
            *report.errors.entry("CLOSED".to_owned()).or_default() += unanswered;
        }
        total.merge(&report);
    }
    if skipped > 0 {
        *total.errors.entry("SKIPPED".to_owned()).or_default() += skipped;
    }
    Ok(total)
}

/// Reads one connection's answers until it closes, recording each against its send time.
fn read_answers(stream: TcpStream, conn: &Connection, in_flight: &AtomicUsize, rows: u64) {
    let mut answers = AnswerReader::new();
    loop {
        let (id, answer) = match answers.next(&stream) {
            Ok(next) => next,
            Err(ClientError::Protocol(_)) => {
                conn.report
                    .lock()
                    .record(rows, Err(FrameError::Malformed("unreadable answer".into()).into()));
                return;
            }
            // A socket shut by the pacer ends the loop.
            Err(_) => return,
        };
        let Some(scheduled) = conn.sent.lock().remove(&id) else {
            continue;
        };
        in_flight.fetch_sub(1, Ordering::AcqRel);
        let result = answer.and_then(|answer| match answer {
            Answer::Response(_) => Ok(scheduled.elapsed()),
            Answer::Description(_) => Err(FrameError::Malformed("description sent for a request".into()).into()),
        });
        conn.report.lock().record(rows, result);
    }
}
