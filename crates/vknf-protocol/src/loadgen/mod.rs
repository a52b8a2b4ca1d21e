//! The load generator behind `vknf load`.
//!
//! Closed loop: `connections x depth` workers, each sending its next request when the previous
//! one is answered (measures capacity). At depth 1 each connection is a thread with a blocking
//! client, so that latency figures hold the server's time and not the hand-offs of an async
//! client. Open loop: requests leave on a fixed schedule whatever the answers do, and latency is
//! measured from the scheduled send time, so a stalled server shows up as latency instead of
//! silently lowering the offered load (no coordinated omission); the schedule is kept by a thread
//! that sleeps to just before each send and spins the rest, since async timers tick in
//! milliseconds.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng as _, SeedableRng as _};

mod open_loop;

use crate::blocking_client::BlockingClient;
use crate::client::{Client, ClientConfig, ClientError};
use vknf_tls::ClientTls;

/// Connect, read and write timeout of the blocking clients.
const BLOCKING_TIMEOUT: Duration = Duration::from_secs(30);

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadMode {
    /// Each of `connections x depth` workers keeps one request in flight.
    Closed {
        /// TCP connections.
        connections: usize,
        /// Requests in flight per connection.
        depth: usize,
    },
    /// Requests leave at `rate` per second, spread round-robin over `connections`.
    Open {
        /// Requests per second.
        rate: f64,
        /// TCP connections.
        connections: usize,
        /// Most requests in flight; a send due while at the limit is counted as skipped.
        max_in_flight: usize,
    },
}

/// When the run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadLimit {
    /// After this long.
    Duration(Duration),
    /// After this many requests.
    Requests(u64),
}

/// A load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// `host:port` of the function.
    pub addr: String,
    /// Pacing.
    pub mode: LoadMode,
    /// When to stop.
    pub limit: LoadLimit,
    /// Rows per request.
    pub rows_per_request: usize,
    /// On-request outputs to ask for.
    pub output_mask: u32,
    /// Seed of the random input rows.
    pub seed: u64,
    /// Input values are drawn uniformly from this range.
    pub value_range: (f32, f32),
    /// TLS to the function (closed loop only), its server name defaulting to the host of `addr`.
    pub tls: Option<ClientTls>,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Connecting or describing the function failed.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The configuration cannot run.
    #[error("invalid load configuration: {0}")]
    Config(String),
    /// The chart could not be drawn.
    #[error("cannot draw the chart: {0}")]
    Chart(String),
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Requests answered successfully.
    pub requests: u64,
    /// Rows answered successfully.
    pub rows: u64,
    /// Failed requests by error name (server codes, `CLOSED`, `SKIPPED` ...).
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency of successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl LoadReport {
    fn new() -> LoadReport {
        LoadReport {
            requests: 0,
            rows: 0,
            errors: BTreeMap::new(),
            elapsed: Duration::ZERO,
            // 1 µs .. 1 hour at three significant digits; larger values saturate.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid"),
        }
    }

    fn record(&mut self, rows: u64, result: Result<Duration, ClientError>) {
        match result {
            Ok(latency) => {
                self.requests += 1;
                self.rows += rows;
                self.latency_us.saturating_record(latency.as_micros().max(1) as u64);
            }
            Err(error) => *self.errors.entry(error_name(&error)).or_default() += 1,
        }
    }

    fn merge(&mut self, other: &LoadReport) {
        self.requests += other.requests;
        self.rows += other.rows;
        for (name, count) in &other.errors {
            *self.errors.entry(name.clone()).or_default() += count;
        }
        let _ = self.latency_us.add(&other.latency_us);
    }

    /// Successful requests per second.
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Successful rows per second.
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q` (0..=1).
    pub fn latency(&self, q: f64) -> Duration {
        Duration::from_micros(self.latency_us.value_at_quantile(q))
    }

    /// Failed requests.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Draws the latency distribution as a PNG. Text needs a TrueType font: `font`, or the
    /// first of a few usual system paths.
    pub fn write_chart(&self, path: &Path, font: Option<&Path>) -> Result<(), LoadError> {
        chart::draw(self, path, font)
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "requests   {} ok, {} failed in {:.2?}",
            self.requests,
            self.failed(),
            self.elapsed
        )?;
        writeln!(
            f,
            "throughput {:.1} requests/s, {:.1} rows/s",
            self.requests_per_second(),
            self.rows_per_second()
        )?;
        writeln!(
            f,
            "latency    p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
            self.latency(0.5),
            self.latency(0.99),
            self.latency(0.999),
            Duration::from_micros(self.latency_us.max())
        )?;
        for (name, count) in &self.errors {
            writeln!(f, "error      {name}: {count}")?;
        }
        Ok(())
    }
}

fn error_name(error: &ClientError) -> String {
    match error {
        ClientError::Server { code, .. } => code.name().to_owned(),
        ClientError::Io(_) => "IO".to_owned(),
        ClientError::Protocol(_) => "PROTOCOL".to_owned(),
        ClientError::Closed(_) => "CLOSED".to_owned(),
        ClientError::InvalidRequest(_) => "INVALID_REQUEST".to_owned(),
    }
}

/// Hands out request tickets until the limit is reached.
struct Budget {
    limit: LoadLimit,
    issued: AtomicU64,
    deadline: Instant,
}

impl Budget {
    fn take(&self) -> bool {
        match self.limit {
            LoadLimit::Duration(_) => Instant::now() < self.deadline,
            LoadLimit::Requests(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
        }
    }
}

/// Runs the load and reports what it measured.
pub async fn run_load(config: &LoadConfig) -> Result<LoadReport, LoadError> {
    let (connections, per_connection) = match config.mode {
        LoadMode::Closed { connections, depth } => (connections, depth),
        LoadMode::Open {
            rate,
            connections,
            max_in_flight,
        } => {
            if !(rate > 0.0 && rate.is_finite()) || max_in_flight == 0 {
                return Err(LoadError::Config("the rate and max in flight must be positive".into()));
            }
            (connections, 1)
        }
    };
    if connections == 0 || per_connection == 0 || config.rows_per_request == 0 {
        return Err(LoadError::Config(
            "connections, depth and rows per request must be at least 1".into(),
        ));
    }
    let (low, high) = config.value_range;
    if !(low.is_finite() && high.is_finite() && low < high) {
        return Err(LoadError::Config(format!(
            "value range {low}..{high} is empty or not finite"
        )));
    }
    let tls = match &config.tls {
        Some(_) if matches!(config.mode, LoadMode::Open { .. }) => {
            // The open loop writes from a pacer thread and reads from another on one socket, which
            // a TLS session does not allow.
            return Err(LoadError::Config(
                "the open loop (a rate) runs over plain TCP only".into(),
            ));
        }
        Some(tls) => Some(
            tls.clone()
                .with_default_server_name(ClientTls::host_of(&config.addr))
                .map_err(|e| LoadError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let client_config = ClientConfig {
        tls: tls.clone(),
        ..ClientConfig::default()
    };
    let first = Client::connect_with(config.addr.as_str(), client_config.clone()).await?;
    let description = first.describe().await?;
    let width = description.info.input.width;
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let pool: Arc<Vec<Vec<f32>>> = Arc::new(
        (0..16)
            .map(|_| {
                (0..width * config.rows_per_request)
                    .map(|_| rng.random_range(low..high))
                    .collect()
            })
            .collect(),
    );
    let request = Arc::new(RequestShape {
        width: width as u32,
        rows: config.rows_per_request as u64,
        mask: config.output_mask,
        pool,
    });
    // Every mode but a deep closed loop runs on threads with blocking sockets.
    let addr = config.addr.clone();
    let prepared = match config.mode {
        LoadMode::Closed { connections, depth } if depth > 1 => {
            let mut clients = vec![Arc::new(first)];
            for _ in 1..connections {
                clients.push(Arc::new(
                    Client::connect_with(addr.as_str(), client_config.clone()).await?,
                ));
            }
            Prepared::Pipelined { clients, depth }
        }
        LoadMode::Closed { connections, .. } => Prepared::Blocking({
            drop(first);
            blocking(move || {
                (0..connections)
                    .map(|_| {
                        BlockingClient::connect_with(addr.as_str(), BLOCKING_TIMEOUT, tls.as_ref())
                            .map_err(LoadError::from)
                    })
                    .collect()
            })
            .await?
        }),
        LoadMode::Open {
            rate,
            connections,
            max_in_flight,
        } => {
            drop(first);
            Prepared::Open {
                connections: blocking(move || open_loop::connect(&addr, connections)).await?,
                rate,
                max_in_flight,
            }
        }
    };
    let started = Instant::now();
    let budget = Arc::new(Budget {
        limit: config.limit,
        issued: AtomicU64::new(0),
        deadline: started
            + match config.limit {
                LoadLimit::Duration(d) => d,
                LoadLimit::Requests(_) => Duration::MAX / 4,
            },
    });
    let mut report = match prepared {
        Prepared::Pipelined { clients, depth } => closed_loop(&clients, depth, &request, &budget).await,
        Prepared::Blocking(clients) => blocking_closed_loop(clients, &request, &budget).await,
        Prepared::Open {
            connections,
            rate,
            max_in_flight,
        } => {
            let (request, budget) = (request.clone(), budget.clone());
            blocking(move || open_loop::run(&connections, rate, max_in_flight, &request, &budget, started)).await?
        }
    };
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Connections opened for a run, before its clock starts.
enum Prepared {
    /// Async clients, `depth` requests in flight on each.
    Pipelined { clients: Vec<Arc<Client>>, depth: usize },
    /// One blocking client per thread, one request in flight on each.
    Blocking(Vec<BlockingClient>),
    /// The open loop's sockets.
    Open {
        connections: Vec<Arc<open_loop::Connection>>,
        rate: f64,
        max_in_flight: usize,
    },
}

/// Runs blocking work (connecting, the open loop's threads) off the async runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LoadError> + Send + 'static,
) -> Result<T, LoadError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LoadError::Config(format!("a load thread failed: {e}")))?
}

struct RequestShape {
    width: u32,
    rows: u64,
    mask: u32,
    pool: Arc<Vec<Vec<f32>>>,
}

impl RequestShape {
    fn rows(&self, n: u64) -> &[f32] {
        &self.pool[(n % self.pool.len() as u64) as usize]
    }
}

async fn closed_loop(
    clients: &[Arc<Client>],
    depth: usize,
    request: &Arc<RequestShape>,
    budget: &Arc<Budget>,
) -> LoadReport {
    let mut workers = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        for d in 0..depth {
            let (client, request, budget) = (client.clone(), request.clone(), budget.clone());
            workers.spawn(async move {
                let mut report = LoadReport::new();
                let mut n = (c * depth + d) as u64;
                while budget.take() {
                    let sent = Instant::now();
                    let result = client.infer(request.width, request.rows(n), request.mask).await;
                    report.record(request.rows, result.map(|_| sent.elapsed()));
                    n += 1;
                }
                report
            });
        }
    }
    merge_reports(workers).await
}

/// The sum of the workers' reports.
async fn merge_reports(mut workers: tokio::task::JoinSet<LoadReport>) -> LoadReport {
    let mut total = LoadReport::new();
    while let Some(joined) = workers.join_next().await {
        if let Ok(report) = joined {
            total.merge(&report);
        }
    }
    total
}

/// Closed loop at depth 1: a thread per connection, each with a blocking client.
async fn blocking_closed_loop(
    clients: Vec<BlockingClient>,
    request: &Arc<RequestShape>,
    budget: &Arc<Budget>,
) -> LoadReport {
    let mut workers = tokio::task::JoinSet::new();
    for (c, mut client) in clients.into_iter().enumerate() {
        let (request, budget) = (request.clone(), budget.clone());
        workers.spawn_blocking(move || {
            let mut report = LoadReport::new();
            let mut n = c as u64;
            while budget.take() {
                let sent = Instant::now();
                let result = client.infer(request.width, request.rows(n), request.mask);
                report.record(request.rows, result.map(|_| sent.elapsed()));
                n += 1;
            }
            report
        });
    }
    merge_reports(workers).await
}

/// `vknf load` on a fresh runtime; writes the chart when `chart` is given.
pub fn run_load_blocking(
    config: &LoadConfig,
    chart: Option<(&Path, Option<PathBuf>)>,
) -> Result<LoadReport, LoadError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadError::Config(format!("cannot start the async runtime: {e}")))?;
    let report = runtime.block_on(run_load(config))?;
    if let Some((path, font)) = chart {
        report.write_chart(path, font.as_deref())?;
    }
    Ok(report)
}

mod chart {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    use plotters::prelude::*;
    use plotters::style::FontStyle;

    use super::{LoadError, LoadReport};

    const FONT_FAMILY: &str = "vknf-sans";
    const SYSTEM_FONTS: [&str; 4] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];

    static REGISTERED: OnceLock<Result<PathBuf, String>> = OnceLock::new();

    /// Registers a font with plotters once per process (plotters keeps fonts in a global table
    /// and wants `'static` bytes, so the font is leaked once).
    fn register(font: Option<&Path>) -> Result<(), LoadError> {
        let result = REGISTERED.get_or_init(|| {
            let candidates: Vec<PathBuf> = match font {
                Some(path) => vec![path.to_owned()],
                None => SYSTEM_FONTS.iter().map(PathBuf::from).collect(),
            };
            let path = candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
                format!(
                    "no TrueType font found (tried {}); pass one with --chart-font",
                    SYSTEM_FONTS.join(", ")
                )
            })?;
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a usable TrueType font", path.display()))?;
            Ok(path)
        });
        result.as_ref().map(|_| ()).map_err(|e| LoadError::Chart(e.clone()))
    }

    pub(super) fn draw(report: &LoadReport, path: &Path, font: Option<&Path>) -> Result<(), LoadError> {
        register(font)?;
        let fail = |e: &dyn std::fmt::Display| LoadError::Chart(e.to_string());
        let histogram = &report.latency_us;
        if histogram.is_empty() {
            return Err(LoadError::Chart("no successful request to chart".into()));
        }
        // Log-spaced buckets: (low µs, high µs, count).
        let mut buckets = Vec::new();
        let mut low = 1.0f64;
        for step in histogram.iter_log(1, 1.25) {
            let high = step.value_iterated_to() as f64 + 1.0;
            buckets.push((low, high.max(low * 1.01), step.count_since_last_iteration()));
            low = high;
        }
        let first = buckets.iter().position(|b| b.2 > 0).unwrap_or(0);
        let buckets = &buckets[first..];
        let x_low = buckets.first().map_or(1.0, |b| b.0).max(1.0);
        let x_high = buckets.last().map_or(10.0, |b| b.1).max(x_low * 10.0);
        let y_high = buckets.iter().map(|b| b.2).max().unwrap_or(1).max(1) as f64 * 1.1;

        let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let caption = format!(
            "{} requests, {:.0} req/s — p50 {:?}, p99 {:?}, p99.9 {:?}",
            report.requests,
            report.requests_per_second(),
            report.latency(0.5),
            report.latency(0.99),
            report.latency(0.999)
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, (FONT_FAMILY, 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d((x_low..x_high).log_scale(), 0f64..y_high)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("latency (µs, log scale)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("requests")
            .label_style((FONT_FAMILY, 14))
            .axis_desc_style((FONT_FAMILY, 16))
            .draw()
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(buckets.iter().filter(|b| b.2 > 0).map(|(low, high, count)| {
                Rectangle::new([(*low, 0.0), (*high, *count as f64)], BLUE.mix(0.6).filled())
            }))
            .map_err(|e| fail(&e))?;
        for (quantile, color) in [(0.5, GREEN), (0.99, RED), (0.999, MAGENTA)] {
            let x = (report.latency_us.value_at_quantile(quantile) as f64).clamp(x_low, x_high);
            chart
                .draw_series(LineSeries::new([(x, 0.0), (x, y_high)], color.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label(format!("p{}", quantile * 100.0))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .label_font((FONT_FAMILY, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
        Ok(())
    }
}
