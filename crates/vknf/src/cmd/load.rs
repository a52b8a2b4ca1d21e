//! `vknf load`: drives a function with closed- or open-loop load and reports throughput and
//! latency percentiles.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use vknf_protocol::loadgen::{LoadConfig, LoadLimit, LoadMode, run_load_blocking};
use vknf_tls::{ClientTls, ClientTlsFiles};

/// Arguments of `vknf load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// The function's address, `host:port`.
    #[arg(long)]
    pub addr: String,
    /// TCP connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Closed loop: requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    pub depth: usize,
    /// Open loop: requests per second (closed loop when absent).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: most requests in flight; sends due past it are counted as SKIPPED.
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// Rows per request.
    #[arg(long, default_value_t = 1)]
    pub rows: usize,
    /// Run for this many seconds.
    #[arg(long, conflicts_with = "count")]
    pub duration: Option<f64>,
    /// Run for this many requests.
    #[arg(long)]
    pub count: Option<u64>,
    /// Also ask for the scores output (output 1).
    #[arg(long)]
    pub scores: bool,
    /// Seed of the random input rows.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Smallest input value.
    #[arg(long, default_value_t = -1.0, allow_hyphen_values = true)]
    pub min_value: f32,
    /// Largest input value.
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    pub max_value: f32,
    /// Write a latency histogram chart (PNG) here.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// TrueType font for the chart's text (default: DejaVu Sans from the system).
    #[arg(long)]
    pub chart_font: Option<PathBuf>,
    /// Connect over TLS, checking the server's certificate against these CA certificates (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM), for servers that require one.
    #[arg(long, value_name = "PEM", requires = "tls_ca", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name the server's certificate must hold (default: the host of --addr).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl LoadArgs {
    fn tls(&self) -> anyhow::Result<Option<ClientTls>> {
        let Some(ca) = &self.tls_ca else { return Ok(None) };
        let files = ClientTlsFiles {
            ca: ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            server_name: self.tls_server_name.clone(),
        };
        Ok(Some(ClientTls::load(&files).context("cannot set up TLS")?))
    }
}

/// Runs `vknf load`.
pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    let limit = match (args.duration, args.count) {
        (_, Some(count)) => LoadLimit::Requests(count),
        (Some(seconds), None) => {
            anyhow::ensure!(seconds.is_finite() && seconds > 0.0, "--duration must be positive");
            LoadLimit::Duration(Duration::from_secs_f64(seconds))
        }
        (None, None) => LoadLimit::Duration(Duration::from_secs(10)),
    };
    let mode = match args.rate {
        Some(rate) => LoadMode::Open {
            rate,
            connections: args.connections,
            max_in_flight: args.max_in_flight,
        },
        None => LoadMode::Closed {
            connections: args.connections,
            depth: args.depth,
        },
    };
    let config = LoadConfig {
        addr: args.addr.clone(),
        mode,
        limit,
        rows_per_request: args.rows,
        output_mask: if args.scores { 1 << 1 } else { 0 },
        seed: args.seed,
        value_range: (args.min_value, args.max_value),
        tls: args.tls()?,
    };
    let chart = args.chart.as_deref().map(|path| (path, args.chart_font.clone()));
    let report = run_load_blocking(&config, chart)?;
    print!("{report}");
    if let Some(path) = &args.chart {
        println!("chart      {}", path.display());
    }
    Ok(())
}
