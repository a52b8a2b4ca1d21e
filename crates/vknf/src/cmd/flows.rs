//! `vknf flows`: turns captures into a flow dataset (JSON lines) to train the traffic classifier on.

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

/// Arguments of `vknf flows`.
#[derive(clap::Args, Debug, Clone)]
pub struct FlowsArgs {
    /// Capture files (pcap or pcapng), read in order into one dataset.
    #[arg(long, required = true, num_args = 1..)]
    pub pcap: Vec<PathBuf>,
    /// Labels.
    #[command(flatten)]
    pub label: LabelArgs,
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
        let mut reader = FlowReader::new(source, FlowConfig::default());
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
