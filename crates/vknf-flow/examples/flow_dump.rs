//! Writes everything the file pipeline reports for a capture, in order, as JSON lines: each flow
//! event (early or finished, the whole record) with its feature row by a schema learnt from the
//! capture's own flows, then the table's counters. Two builds of the pipeline that print the same
//! bytes here computed the same flows, records and features: this is how a change to the packet
//! path is checked against the code before it on a large capture (`bench/flows/check_same.sh`).
//!
//! `cargo run --release -p vknf-flow --example flow_dump -- CAPTURE [--early N] [--max-flows N]`

use std::io::Write;

use vknf_flow::{FeatureSchema, FlowConfig, FlowEvent, FlowReader, PcapFile, read_flows};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut input, mut config) = (None, FlowConfig::default());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--early" => config.early_records = Some(args.next().ok_or("--early N")?.parse()?),
            "--max-flows" => config.max_flows = args.next().ok_or("--max-flows N")?.parse()?,
            _ => input = Some(arg),
        }
    }
    let input = input.ok_or("usage: flow_dump CAPTURE [--early N] [--max-flows N]")?;
    let (flows, _, _) = read_flows(&input, config.clone())?;
    let schema = FeatureSchema::from_training(flows.iter().map(|f| f.records.as_slice()), Vec::new());
    drop(flows);

    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut reader = FlowReader::new(PcapFile::open(&input)?, config);
    for event in reader.by_ref() {
        match event {
            Ok(event) => {
                let kind = match &event {
                    FlowEvent::Early(_) => "early",
                    FlowEvent::Finished(_) => "finished",
                };
                let flow = event.record();
                let row = schema.row(&flow.records);
                writeln!(
                    out,
                    "{kind} {} {}",
                    serde_json::to_string(flow)?,
                    serde_json::to_string(&row)?
                )?;
            }
            Err(error) => writeln!(out, "error {error}")?,
        }
    }
    writeln!(out, "stats {}", serde_json::to_string(reader.stats())?)?;
    out.flush()?;
    Ok(())
}
