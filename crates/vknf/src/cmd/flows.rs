//! `vknf flows`: turns captures into a flow dataset (JSON lines) to train the traffic classifier on.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use vknf_flow::{DatasetWriter, FlowConfig, FlowEvent, FlowReader, Labeler, PcapFile, Stats};

use super::progress::file_bar;

/// How flows get their label (shared by `vknf flows` and `vknf classify`, where it is the truth).
#[derive(clap::Args, Debug, Clone)]
pub struct LabelArgs {
    /// Label flows by what the capture shows: `sni`, the ClientHello's server name.
    #[arg(long, value_parser = ["sni"], conflicts_with = "labels")]
    pub label_by: Option<String>,
    /// Label flows by rules in a CSV file: `server_ip,server_port,client_ip,client_port,label`, `*` for any,
    /// first match wins.
    #[arg(long)]
    pub labels: Option<PathBuf>,
}

impl LabelArgs {
    /// The labeler these flags ask for (`Labeler::None` without any).
    pub fn labeler(&self) -> anyhow::Result<Labeler> {
        Ok(match (&self.label_by, &self.labels) {
            (Some(_), _) => Labeler::Sni,
            (None, Some(path)) => Labeler::from_csv(path).with_context(|| format!("reading {}", path.display()))?,
            (None, None) => Labeler::None,
        })
    }
}

/// The flow table's settings (shared by `vknf flows` and `vknf classify`). Each default is
/// `FlowConfig::default()`'s, taken from it, so that the commands behave as the library does
/// unless told otherwise.
#[derive(clap::Args, Debug, Clone)]
pub struct TableArgs {
    /// Ports that mark the server's side of a flow whose SYN was not seen (a capture that starts
    /// mid-connection), comma-separated; a SYN or SYN-ACK always decides first, and a flow with
    /// neither a SYN nor a listed port takes the lower port as the server's.
    #[arg(
        long,
        value_name = "PORTS",
        value_delimiter = ',',
        value_parser = clap::value_parser!(u16).range(1..),
        default_values_t = FlowConfig::default().server_ports
    )]
    pub server_ports: Vec<u16>,
    /// Seconds without a packet after which a flow ends (`end: idle`); fractions allowed.
    #[arg(
        long,
        value_name = "SECS",
        value_parser = parse_timeout,
        default_value_t = Timeout::from_ns(FlowConfig::default().idle_timeout_ns)
    )]
    pub idle_timeout: Timeout,
    /// Seconds after its first packet at which a flow ends (`end: active`), at its next packet;
    /// that packet starts a new flow, flagged `mid_stream`. Fractions allowed.
    #[arg(
        long,
        value_name = "SECS",
        value_parser = parse_timeout,
        default_value_t = Timeout::from_ns(FlowConfig::default().active_timeout_ns)
    )]
    pub active_timeout: Timeout,
    /// Flows held at once (per shard with `--shards`); past it the flow nearest its deadline is
    /// ended (`end: evicted`) and counted in `flows_evicted`.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_FLOWS),
        default_value_t = FlowConfig::default().max_flows
    )]
    pub max_flows: usize,
}

/// The largest `--max-flows`. The table holds no memory for flows it has not seen, so the bound
/// only catches mistakes: at hundreds of bytes a flow, 2^28 flows is well over 64 GiB of state
/// (and the table numbers its slots in 32 bits).
const MAX_FLOWS: u64 = 1 << 28;

/// The longest timeout, 30 days: a flow table's timeouts are minutes to hours (NFStream's are 120 s
/// and 1800 s); a larger number is most likely a unit mistake.
const MAX_TIMEOUT_SECS: f64 = 30.0 * 86_400.0;

impl TableArgs {
    /// The flow table's configuration these flags ask for; the rest is `FlowConfig::default()`'s.
    pub fn config(&self) -> FlowConfig {
        FlowConfig {
            server_ports: self.server_ports.clone(),
            idle_timeout_ns: self.idle_timeout.ns,
            active_timeout_ns: self.active_timeout.ns,
            max_flows: self.max_flows,
            ..FlowConfig::default()
        }
    }
}

/// A timeout given in seconds on the command line, held in nanoseconds as the flow table takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout {
    /// Nanoseconds, at least 1.
    pub ns: u64,
}

impl Timeout {
    /// A timeout of `ns` nanoseconds.
    pub const fn from_ns(ns: u64) -> Self {
        Self { ns }
    }
}

/// Seconds, as `--idle-timeout` takes them: `--help` shows the defaults so, and clap parses the
/// default's text back with [`parse_timeout`] (whole seconds are written without a fraction).
impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SECOND: u64 = 1_000_000_000;
        if self.ns % SECOND == 0 {
            write!(f, "{}", self.ns / SECOND)
        } else {
            write!(f, "{}.{:09}", self.ns / SECOND, self.ns % SECOND)
        }
    }
}

/// Parses a timeout in seconds: a finite number above 0 (a zero timeout would end every flow at
/// its next packet) and at most [`MAX_TIMEOUT_SECS`].
fn parse_timeout(text: &str) -> Result<Timeout, String> {
    let seconds = parse_seconds(text, false, MAX_TIMEOUT_SECS, "30 days")?;
    // Below the bound, the product fits a u64 (about 2.6e15 ns) and the cast is exact enough.
    let ns = (seconds * 1e9).round() as u64;
    if ns == 0 {
        return Err("a timeout must be at least 1 nanosecond".into());
    }
    Ok(Timeout::from_ns(ns))
}

/// Parses a number of seconds given to a flag: finite, more than 0 (or 0 too, with `zero_ok`) and at
/// most `max_seconds` (`max_words` says how long that is).
pub(crate) fn parse_seconds(text: &str, zero_ok: bool, max_seconds: f64, max_words: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds, e.g. 120 or 0.5".to_owned())?;
    if !seconds.is_finite() {
        return Err("expected a finite number of seconds".into());
    }
    match (zero_ok, seconds) {
        (true, s) if s < 0.0 => return Err("expected a number of seconds from 0".into()),
        (false, s) if s <= 0.0 => return Err("a timeout must be more than 0 seconds".into()),
        _ => {}
    }
    if seconds > max_seconds {
        return Err(format!("expected at most {max_seconds} seconds ({max_words})"));
    }
    Ok(seconds)
}

/// Arguments of `vknf flows`.
#[derive(clap::Args, Debug, Clone)]
pub struct FlowsArgs {
    /// Capture files (pcap or pcapng), read in order into one dataset.
    #[arg(long, required = true, num_args = 1..)]
    pub pcap: Vec<PathBuf>,
    /// Labels.
    #[command(flatten)]
    pub label: LabelArgs,
    /// The flow table.
    #[command(flatten)]
    pub table: TableArgs,
    /// Where to write the dataset (JSON lines); default: standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Do not show the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `vknf flows`: every finished flow of every file, one line each; counters on standard error.
pub fn run(args: FlowsArgs) -> anyhow::Result<()> {
    let labeler = args.label.labeler()?;
    let config = args.table.config();
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut writer = DatasetWriter::new(out);
    let mut total = Stats::default();
    let (mut flows, mut labelled) = (0u64, 0u64);
    for path in &args.pcap {
        let source = PcapFile::open(path).with_context(|| format!("opening {}", path.display()))?;
        let bar = file_bar(args.quiet, path)?;
        let mut reader = FlowReader::new(source, config.clone());
        // Each file is its own capture: flows never continue from one file into the next.
        while let Some(event) = reader.next() {
            bar.set_position(reader.source().offset());
            match event {
                Ok(FlowEvent::Finished(flow)) => {
                    let label = labeler.label(&flow);
                    labelled += u64::from(label.is_some());
                    flows += 1;
                    writer.write(&flow, label)?;
                }
                Ok(FlowEvent::Early(_)) => {}
                // What was read before the damage is kept (the reader ends the open flows).
                Err(error) => eprintln!("warning: {}: {error}", path.display()),
            }
        }
        bar.finish_and_clear();
        total.add(reader.stats());
    }
    writer.finish()?;
    eprintln!(
        "{flows} flows ({labelled} labelled) from {} files; counters: {}",
        args.pcap.len(),
        serde_json::to_string(&total)?
    );
    Ok(())
}
