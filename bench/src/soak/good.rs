//! The good clients: closed-loop callers of the forest over the binary protocol (the project's own
//! pipelined client, as `vknf load` uses it) and over the Open Inference Protocol's REST port. Every
//! answer is checked against the CPU reference's labels; a request that gets neither an answer nor an
//! error frame is an answer lost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use vknf_protocol::client::{Client, ClientConfig, ClientError};
use vknf_tls::ClientTls;

use super::net::{Dialer, HttpConn, HttpError};
use super::workload::Workload;

/// Latencies of one kind of good request: the whole run and the current sampling interval.
pub struct Latencies {
    total: Histogram<u64>,
    interval: Histogram<u64>,
}

impl Latencies {
    fn new() -> Latencies {
        let histogram = || Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
        Latencies {
            total: histogram(),
            interval: histogram(),
        }
    }

    fn record(&mut self, elapsed: Duration) {
        let us = (elapsed.as_micros() as u64).clamp(1, 600_000_000);
        let _ = self.total.record(us);
        let _ = self.interval.record(us);
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Percentiles {
    /// Answers timed.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Percentiles {
        Percentiles {
            count: histogram.len(),
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// What the good clients of one kind (`binary_1_row`, `binary_256_rows`, `oip_rest_N_rows`) saw.
#[derive(Default)]
pub struct GoodStats {
    kinds: Mutex<BTreeMap<String, KindStats>>,
}

struct KindStats {
    latencies: Latencies,
    sent: u64,
    answered: u64,
    wrong: u64,
    lost: u64,
    errors: BTreeMap<String, u64>,
    lost_examples: Vec<String>,
    wrong_examples: Vec<String>,
}

/// The good clients of one kind, for the summary.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct GoodReport {
    /// Requests sent.
    pub sent: u64,
    /// Answered with outputs (checked).
    pub answered: u64,
    /// Answers whose labels differ from the CPU reference.
    pub wrong: u64,
    /// Requests sent that got neither an answer nor an error frame.
    pub lost: u64,
    /// Error answers by code (`BUSY`, `DEVICE_LOST`, ..., or HTTP status).
    pub errors: BTreeMap<String, u64>,
    /// Latencies of answered requests.
    pub latency: Percentiles,
    /// The first lost requests, described.
    pub lost_examples: Vec<String>,
    /// The first wrong answers, described.
    pub wrong_examples: Vec<String>,
}

/// Error codes a good client may get while hostile clients and the drill function run: the budget or
/// the queue is full, a device reset failed a batch in flight. Any other error fails the run.
pub const EXPECTED_ERRORS: [&str; 3] = ["BUSY", "DEVICE_LOST", "HTTP 503"];

/// How long a good client waits after an error before its next request.
const ERROR_PAUSE: Duration = Duration::from_millis(20);

/// How a good request ended.
enum Outcome {
    Answered(Vec<u32>),
    Error(String),
    Lost(String),
}

impl GoodStats {
    fn with<R>(&self, kind: &str, f: impl FnOnce(&mut KindStats) -> R) -> R {
        let mut kinds = self.kinds.lock();
        let stats = kinds.entry(kind.to_owned()).or_insert_with(|| KindStats {
            latencies: Latencies::new(),
            sent: 0,
            answered: 0,
            wrong: 0,
            lost: 0,
            errors: BTreeMap::new(),
            lost_examples: Vec::new(),
            wrong_examples: Vec::new(),
        });
        f(stats)
    }

    fn record(&self, kind: &str, elapsed: Duration, outcome: Outcome, expected: &[u32], first_row: usize) {
        self.with(kind, |stats| match outcome {
            Outcome::Answered(labels) => {
                stats.answered += 1;
                stats.latencies.record(elapsed);
                if labels != expected {
                    stats.wrong += 1;
                    if stats.wrong_examples.len() < 10 {
                        let row = labels.iter().zip(expected).position(|(a, b)| a != b);
                        stats.wrong_examples.push(format!(
                            "{} rows from pool row {first_row}: {} labels back, first difference at row {row:?}",
                            expected.len(),
                            labels.len()
                        ));
                    }
                }
            }
            Outcome::Error(code) => *stats.errors.entry(code).or_default() += 1,
            Outcome::Lost(why) => {
                stats.lost += 1;
                if stats.lost_examples.len() < 10 {
                    stats.lost_examples.push(why);
                }
            }
        });
    }

    fn sent(&self, kind: &str) {
        self.with(kind, |stats| stats.sent += 1);
    }

    /// The good clients' reports, by kind.
    pub fn report(&self) -> BTreeMap<String, GoodReport> {
        self.kinds
            .lock()
            .iter()
            .map(|(kind, s)| {
                (
                    kind.clone(),
                    GoodReport {
                        sent: s.sent,
                        answered: s.answered,
                        wrong: s.wrong,
                        lost: s.lost,
                        errors: s.errors.clone(),
                        latency: Percentiles::of(&s.latencies.total),
                        lost_examples: s.lost_examples.clone(),
                        wrong_examples: s.wrong_examples.clone(),
                    },
                )
            })
            .collect()
    }

    /// Answers and p99 per kind since the last call (for the time series), starting a new interval.
    pub fn take_interval(&self) -> BTreeMap<String, Percentiles> {
        let mut kinds = self.kinds.lock();
        kinds
            .iter_mut()
            .map(|(kind, s)| {
                let p = Percentiles::of(&s.latencies.interval);
                s.latencies.interval.reset();
                (kind.clone(), p)
            })
            .collect()
    }
}

/// What a good client sends, until when, and where it records what came back.
#[derive(Clone)]
pub struct GoodLoad {
    /// The rows and their expected labels.
    pub workload: Arc<Workload>,
    /// Rows per request.
    pub rows: usize,
    /// Where in the pool the client starts.
    pub seed: usize,
    /// When it stops sending.
    pub end: Instant,
    /// How long it waits for an answer before the request counts as lost.
    pub answer_timeout: Duration,
    /// Where it records.
    pub stats: Arc<GoodStats>,
}

/// One good client over the binary protocol: one request in flight at a time.
pub async fn binary_client(addr: SocketAddr, tls: Option<ClientTls>, load: GoodLoad) {
    let GoodLoad {
        workload,
        rows,
        seed,
        end,
        answer_timeout,
        stats,
    } = load;
    let kind = format!("binary_{rows}_row{}", if rows == 1 { "" } else { "s" });
    let config = ClientConfig {
        tls,
        ..ClientConfig::default()
    };
    let mut client: Option<Client> = None;
    let mut next = seed * 7919;
    while Instant::now() < end {
        let connection = match &client {
            Some(client) => client,
            None => match Client::connect_with(addr, config.clone()).await {
                Ok(connected) => client.insert(connected),
                Err(_) => {
                    stats.with(&kind, |s| *s.errors.entry("connect failed".into()).or_default() += 1);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let first = next % (workload.n_rows() - rows + 1);
        next = next.wrapping_add(rows * 31 + 17);
        let (inputs, expected) = workload.slice(first, rows);
        stats.sent(&kind);
        let started = Instant::now();
        let result =
            tokio::time::timeout(answer_timeout, connection.infer(workload.n_features as u32, inputs, 0)).await;
        let elapsed = started.elapsed();
        // After a lost answer or a connection-level error the connection is suspect: start a new one.
        let (outcome, reconnect) = match result {
            Err(_) => (Outcome::Lost(format!("no answer within {answer_timeout:?}")), true),
            Ok(Ok(response)) => (
                Outcome::Answered(response.output(0).map(|labels| labels.to_u32()).unwrap_or_default()),
                false,
            ),
            Ok(Err(ClientError::Server { code, .. })) => (Outcome::Error(code.name().to_owned()), false),
            // The server hung up with a connection-level error frame (id 0: at its connection limit,
            // shutting down): an error answer, not an answer lost.
            Ok(Err(ClientError::Closed(Some(message)))) => {
                (Outcome::Error(format!("connection closed: {message}")), true)
            }
            Ok(Err(error)) => (Outcome::Lost(format!("{error}")), true),
        };
        if reconnect {
            client = None;
        }
        let failed = !matches!(outcome, Outcome::Answered(_));
        stats.record(&kind, elapsed, outcome, expected, first);
        if failed {
            // A client backs off after a failure rather than hammering a server in trouble.
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
}

/// One good client over the Open Inference Protocol (REST, JSON) for `model` (input `input_name`): one
/// request in flight at a time, on a keep-alive connection.
pub async fn oip_client(addr: SocketAddr, dialer: Dialer, model: String, input_name: String, load: GoodLoad) {
    let GoodLoad {
        workload,
        rows,
        seed,
        end,
        answer_timeout,
        stats,
    } = load;
    let kind = format!("oip_rest_{rows}_row{}", if rows == 1 { "" } else { "s" });
    let path = format!("/v2/models/{model}/infer");
    let mut conn: Option<HttpConn> = None;
    let mut next = seed * 104_729;
    while Instant::now() < end {
        let first = next % (workload.n_rows() - rows + 1);
        next = next.wrapping_add(rows * 13 + 5);
        let (inputs, expected) = workload.slice(first, rows);
        let body = serde_json::json!({
            "inputs": [{
                "name": input_name,
                "shape": [rows, workload.n_features],
                "datatype": "FP32",
                "data": inputs,
            }],
            "outputs": [{"name": "labels"}],
        });
        let body = serde_json::to_vec(&body).unwrap_or_default();
        stats.sent(&kind);
        let started = Instant::now();
        // A keep-alive connection the server has closed between two requests takes no request: the
        // request goes again on a new connection (as HTTP clients do), once.
        let mut result = None;
        for _ in 0..2 {
            if conn.as_ref().is_none_or(|c| c.finished) {
                conn = HttpConn::connect(&dialer, addr, Duration::from_secs(5)).await.ok();
            }
            let Some(connection) = conn.as_mut() else { break };
            let attempt = connection.request("POST", &path, &body, answer_timeout).await;
            let retry = matches!(attempt, Err(HttpError::NotSent(_)));
            result = Some(attempt);
            if !retry {
                break;
            }
        }
        let elapsed = started.elapsed();
        let outcome = match result {
            None => Outcome::Error("connect failed".into()),
            Some(Ok(response)) if response.status == 200 => match labels_of(&response.body) {
                Some(labels) => Outcome::Answered(labels),
                None => Outcome::Error("HTTP 200 without labels".into()),
            },
            Some(Ok(response)) => Outcome::Error(format!("HTTP {}", response.status)),
            Some(Err(HttpError::NotSent(error))) => Outcome::Error(format!("request not sent: {}", error.kind())),
            Some(Err(error @ HttpError::NoResponse(_))) => Outcome::Lost(error.to_string()),
        };
        let failed = !matches!(outcome, Outcome::Answered(_));
        stats.record(&kind, elapsed, outcome, expected, first);
        if failed {
            // A client backs off after a failure rather than hammering a server in trouble.
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
}

/// The `labels` output of an inference response.
fn labels_of(body: &[u8]) -> Option<Vec<u32>> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let output = value["outputs"].as_array()?.iter().find(|o| o["name"] == "labels")?;
    output["data"]
        .as_array()?
        .iter()
        .map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_read_from_the_inference_response() {
        let body =
            br#"{"model_name":"forest","outputs":[{"name":"labels","datatype":"UINT32","shape":[2],"data":[3,0]}]}"#;
        assert_eq!(labels_of(body), Some(vec![3, 0]));
        assert_eq!(labels_of(br#"{"outputs":[]}"#), None);
    }

    #[test]
    fn lost_and_wrong_answers_are_counted_apart_from_errors() {
        let stats = GoodStats::default();
        stats.sent("k");
        stats.record(
            "k",
            Duration::from_micros(10),
            Outcome::Answered(vec![1, 2]),
            &[1, 2],
            0,
        );
        stats.record(
            "k",
            Duration::from_micros(10),
            Outcome::Answered(vec![1, 3]),
            &[1, 2],
            4,
        );
        stats.record("k", Duration::ZERO, Outcome::Error("BUSY".into()), &[1], 0);
        stats.record("k", Duration::ZERO, Outcome::Lost("no answer".into()), &[1], 0);
        let report = &stats.report()["k"];
        assert_eq!((report.answered, report.wrong, report.lost), (2, 1, 1));
        assert_eq!(report.errors["BUSY"], 1);
        assert_eq!(report.latency.count, 2);
        assert!(report.wrong_examples[0].contains("first difference at row Some(1)"));
    }
}
