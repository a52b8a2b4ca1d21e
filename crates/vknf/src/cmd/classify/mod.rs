//! `vknf classify`: the traffic path as a network function. Flows from capture files or an
//! interface are turned into feature rows (`vknf_flow`, by the model's schema) and classified by
//! the forest, in this process on the GPU (or CPU) or by a served function, in batches of flows;
//! one JSON line per decision.

mod backend;
mod metrics;
mod output;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use vknf_flow::{FeatureSchema, FlowConfig, FlowEvent, FlowReader, FlowRecord, Labeler, PacketSource, PcapFile, Stats};

use self::backend::{Backend, InProcess, Remote};
use self::metrics::ClassifyMetrics;
use self::output::{DecisionLine, Summary};
use super::flows::{LabelArgs, TableArgs};
use super::progress::file_bar;
use super::schema_binding::{BoundModel, check_declared, load_schema};

/// Arguments of `vknf classify`.
#[derive(clap::Args, Debug, Clone)]
pub struct ClassifyArgs {
    /// Capture files (pcap or pcapng), classified in order.
    #[arg(long, num_args = 1.., required_unless_present = "interface", conflicts_with = "interface")]
    pub pcap: Vec<PathBuf>,
    /// Capture live on this interface (needs root or CAP_NET_RAW) until interrupted or `--duration`.
    #[arg(long)]
    pub interface: Option<String>,
    // The live capture's flags also conflict with `--pcap`: clap waives `requires` when an
    // argument that conflicts with the required one is present, so `--pcap F --duration 5` was
    // accepted and the flag silently ignored.
    /// Stop a live capture after this many seconds.
    #[arg(long, requires = "interface", conflicts_with = "pcap", value_parser = parse_duration)]
    pub duration: Option<f64>,
    /// BPF filter of a live capture, e.g. `tcp port 443`.
    #[arg(long, requires = "interface", conflicts_with = "pcap")]
    pub filter: Option<String>,
    /// Flow-table threads of a live capture: flows are spread over them by the hash of their
    /// 5-tuple, each with its own table (`--max-flows` each), while one thread captures.
    #[arg(
        long,
        value_name = "N",
        requires = "interface",
        conflicts_with = "pcap",
        default_value_t = 1,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_SHARDS)
    )]
    pub shards: usize,
    /// The feature schema the model was trained with (`python/train_traffic.py --schema`).
    #[arg(long)]
    pub schema: PathBuf,
    /// The model (`.onnx` from the training script, or `.vkf` from `vknf compile-model`), run in
    /// this process; it must carry the schema's digest.
    #[arg(long, required_unless_present = "addr", conflicts_with = "addr")]
    pub model: Option<PathBuf>,
    /// Ask the function served at `host:port` instead; `--manifest` must declare it with this schema.
    #[arg(long, requires = "manifest")]
    pub addr: Option<String>,
    /// The manifest file or directory the function at `--addr` is served from (`vknf serve
    /// --manifests`): its Service on that port must declare the schema's digest.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Run the forest with the CPU reference instead of the GPU (in process).
    #[arg(long, conflicts_with = "addr")]
    pub cpu: bool,
    /// Device: index, UUID or part of the name (default: VKNF_DEVICE or the best device).
    #[arg(long)]
    pub device: Option<String>,
    /// Also decide early, once a flow has this many TLS records (the flow still gets its final decision).
    #[arg(long)]
    pub early_records: Option<usize>,
    /// The flow table.
    #[command(flatten)]
    pub table: TableArgs,
    /// Flows per batch sent to the forest.
    #[arg(long, default_value_t = 256)]
    pub batch_flows: usize,
    /// Longest a decided flow waits for its batch to fill, in milliseconds (matters for live capture).
    #[arg(long, default_value_t = 100)]
    pub max_wait_ms: u64,
    /// Classes with scores per line.
    #[arg(long, default_value_t = 3)]
    pub top: usize,
    /// The true label of each flow, written beside the prediction (and the accuracy at the end).
    #[command(flatten)]
    pub truth: LabelArgs,
    /// Where to write the JSON lines; default: standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Serve Prometheus metrics (`/metrics`) on this address while classifying.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Write the final metrics (OpenMetrics text) to this file at the end.
    #[arg(long)]
    pub metrics_out: Option<PathBuf>,
    /// Do not show the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The most `--shards`. Each is a thread with its own flow table, and shards beyond the cores only
/// contend: a number past this is a mistake, not a bigger machine.
const MAX_SHARDS: u64 = 256;

/// Parses `--duration`: a finite number of seconds, 0 or more, that a `Duration` can hold (a year
/// at most: a longer capture is one to stop by signal).
fn parse_duration(text: &str) -> Result<f64, String> {
    super::flows::parse_seconds(text, true, 365.0 * 86_400.0, "a year")
}

/// Flows decided and waiting for their batch.
struct Pending {
    flows: Vec<(FlowRecord, bool)>,
    since: Option<Instant>,
}

/// Everything a decision needs besides the flow.
struct Classifier {
    schema: FeatureSchema,
    classes: Vec<String>,
    backend: Backend,
    truth: Labeler,
    top: usize,
    early_records: Option<usize>,
    batch: usize,
    max_wait: Duration,
    metrics: ClassifyMetrics,
    summary: Summary,
    out: Box<dyn Write>,
}

/// Runs `vknf classify`.
pub fn run(global: &super::Global, args: ClassifyArgs) -> anyhow::Result<()> {
    let schema = load_schema(&args.schema)?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut registry = prometheus_client::registry::Registry::default();
    let (backend, classes) = if let Some(addr) = &args.addr {
        let manifest = args.manifest.as_deref().context("--addr needs --manifest")?;
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(host, p)| Some((host, p.parse::<u16>().ok()?)))
            .with_context(|| format!("--addr {addr}: expected host:port"))?;
        let function = check_declared(manifest, host, port, &schema)?;
        tracing::info!(function, "the manifest declares the schema");
        let remote = Remote::connect(addr, schema.len(), schema.classes.len())?;
        (Backend::Remote(remote), schema.classes.clone())
    } else {
        let path = args.model.as_deref().context("--model or --addr is needed")?;
        let model = BoundModel::load(path)?;
        model.check(&schema, &path.display().to_string())?;
        let gpu = if args.cpu {
            None
        } else {
            let selector = match &args.device {
                Some(text) => text.parse()?,
                None => vknf_vulkan::DeviceSelector::from_env()?,
            };
            Some(Arc::new(vknf_functions::GpuLoader::new(global.validate, selector)?))
        };
        let classes = model.class_names();
        let local = InProcess::load(&tokio, model.forest.to_vkf_bytes(), gpu, args.batch_flows)?;
        local.runtime().register_metrics(&mut registry);
        (Backend::InProcess(local), classes)
    };
    let metrics = ClassifyMetrics::default();
    metrics.register(&mut registry);
    let registry = Arc::new(registry);
    if let Some(addr) = args.metrics_addr {
        let bound = metrics::serve(&tokio, addr, registry.clone())?;
        eprintln!("metrics on http://{bound}/metrics");
    }
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut classifier = Classifier {
        schema,
        classes,
        backend,
        truth: args.truth.labeler()?,
        top: args.top,
        early_records: args.early_records,
        batch: args.batch_flows.max(1),
        max_wait: Duration::from_millis(args.max_wait_ms),
        metrics,
        summary: Summary::default(),
        out,
    };
    let config = FlowConfig {
        early_records: args.early_records,
        ..args.table.config()
    };
    let mut done = Stats::default();
    let reading = Instant::now();
    if let Some(interface) = &args.interface {
        let stop = Arc::new(AtomicBool::new(false));
        stop_on_signal(&tokio, stop.clone(), args.duration);
        let options = vknf_flow::source::live::LiveOptions {
            filter: args.filter.clone(),
            ..Default::default()
        };
        let capture = vknf_flow::source::live::LiveCapture::open(interface, &options, stop)?;
        // Said once the capture is open, so that whoever starts traffic knows it will be seen.
        eprintln!("capturing on {interface}");
        // The sharded pipeline ticks its tables while no packet comes, so idle flows end on time,
        // and its channel lets a batch go out after --max-wait-ms without waiting for more traffic.
        let capture = vknf_flow::source::live::ShardedCapture::start(capture, config, args.shards);
        classifier.drive_live(capture)?;
    } else {
        for path in &args.pcap {
            let source = PcapFile::open(path).with_context(|| format!("opening {}", path.display()))?;
            let bar = file_bar(args.quiet, path)?;
            let stats = classifier.drive(FlowReader::new(source, config.clone()), &done, |reader| {
                bar.set_position(reader.source().offset())
            })?;
            bar.finish_and_clear();
            done.add(&stats);
        }
    }
    classifier.out.flush()?;
    eprintln!("{}", classifier.summary.line(reading.elapsed()));
    if let Some(path) = &args.metrics_out {
        std::fs::write(path, metrics::encode(&registry)).with_context(|| format!("writing {}", path.display()))?;
    }
    classifier.backend.finish(&tokio)
}

/// Sets `stop` on Ctrl-C, SIGTERM or after `duration` seconds.
fn stop_on_signal(tokio: &tokio::runtime::Runtime, stop: Arc<AtomicBool>, duration: Option<f64>) {
    tokio.spawn(async move {
        let limit = async {
            match duration {
                Some(seconds) => tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = vknf_server::daemon::shutdown_signal() => {}
            () = limit => {}
        }
        stop.store(true, Ordering::Release);
    });
}

impl Classifier {
    /// Classifies every flow of `reader`; returns its counters. `progress` sees the reader after
    /// each event.
    fn drive<S: PacketSource>(
        &mut self,
        mut reader: FlowReader<S>,
        done: &Stats,
        mut progress: impl FnMut(&FlowReader<S>),
    ) -> anyhow::Result<Stats> {
        let mut pending = Pending {
            flows: Vec::new(),
            since: None,
        };
        while let Some(event) = reader.next() {
            match event {
                Ok(event) => self.push(&mut pending, event),
                // What was read before the damage is still classified (the reader ends the open flows).
                Err(error) => eprintln!("warning: {error}"),
            }
            let waited = pending.since.is_some_and(|since| since.elapsed() >= self.max_wait);
            if pending.flows.len() >= self.batch || waited {
                self.flush(&mut pending)?;
            }
            self.metrics.flow_table(done, reader.stats());
            progress(&reader);
        }
        self.flush(&mut pending)?;
        self.metrics.flow_table(done, reader.stats());
        Ok(reader.stats().clone())
    }

    /// Classifies the flows of a live capture until it stops. The flow table's counters are known
    /// only when it has stopped (the shards own their tables), so the gauges are set then.
    fn drive_live(&mut self, capture: vknf_flow::source::live::ShardedCapture) -> anyhow::Result<()> {
        use std::sync::mpsc::RecvTimeoutError;

        let mut pending = Pending {
            flows: Vec::new(),
            since: None,
        };
        loop {
            let wait = match pending.since {
                Some(since) => self.max_wait.saturating_sub(since.elapsed()),
                None => Duration::from_secs(3600),
            };
            match capture.events().recv_timeout(wait) {
                Ok(event) => {
                    self.push(&mut pending, event);
                    if pending.flows.len() >= self.batch {
                        self.flush(&mut pending)?;
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.flush(&mut pending)?,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.flush(&mut pending)?;
        let stats = capture.join()?;
        self.metrics.flow_table(&stats, &Stats::default());
        Ok(())
    }

    /// Queues the decision an event asks for.
    fn push(&self, pending: &mut Pending, event: FlowEvent) {
        pending.since.get_or_insert_with(Instant::now);
        match event {
            FlowEvent::Early(mut flow) => {
                // One packet may complete several records: decide on exactly the first N.
                flow.records.truncate(self.early_records.unwrap_or(usize::MAX));
                pending.flows.push((flow, true))
            }
            FlowEvent::Finished(flow) => pending.flows.push((flow, false)),
        }
    }

    /// Classifies the pending flows as one batch and writes their lines.
    fn flush(&mut self, pending: &mut Pending) -> anyhow::Result<()> {
        pending.since = None;
        if pending.flows.is_empty() {
            return Ok(());
        }
        let width = self.schema.len();
        let mut rows = Vec::with_capacity(pending.flows.len() * width);
        for (flow, _) in &pending.flows {
            rows.extend(self.schema.row(&flow.records));
        }
        let asked = Instant::now();
        let scored = self.backend.classify(rows, width)?;
        self.summary.add_batch(asked.elapsed());
        let n_classes = self.classes.len();
        if scored.labels.len() != pending.flows.len() || scored.scores.len() != pending.flows.len() * n_classes {
            anyhow::bail!(
                "the forest answered {} labels and {} scores for {} flows of {n_classes} classes",
                scored.labels.len(),
                scored.scores.len(),
                pending.flows.len()
            );
        }
        for (i, (flow, early)) in pending.flows.drain(..).enumerate() {
            let label = self
                .classes
                .get(scored.labels[i] as usize)
                .context("the forest answered a class it does not have")?;
            let truth = self.truth.label(&flow);
            let decision = if early { "early" } else { "final" };
            self.summary.add(early, label, truth.as_deref());
            self.metrics.decided(label, decision);
            let scores = &scored.scores[i * n_classes..(i + 1) * n_classes];
            let line = DecisionLine::new(&flow, decision, label, scores, &self.classes, self.top, truth);
            serde_json::to_writer(&mut self.out, &line)?;
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }
}
