//! Writes the flows of a capture as a dataset (JSON lines): what `vknf flows` does.
//!
//! `cargo run -p vknf-flow --example flows -- CAPTURE [--label-by sni | --labels CSV] [-o OUT]`

use std::io::Write;

use vknf_flow::{DatasetWriter, FlowConfig, Labeler, read_flows};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut input = None;
    let mut labeler = Labeler::None;
    let mut output: Option<String> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--label-by" => match args.next().as_deref() {
                Some("sni") => labeler = Labeler::Sni,
                other => return Err(format!("--label-by takes sni, not {other:?}").into()),
            },
            "--labels" => labeler = Labeler::from_csv(args.next().ok_or("--labels needs a file")?)?,
            "-o" => output = Some(args.next().ok_or("-o needs a file")?),
            _ => input = Some(arg),
        }
    }
    let input = input.ok_or("usage: flows CAPTURE [--label-by sni | --labels CSV] [-o OUT]")?;
    let (flows, stats, error) = read_flows(&input, FlowConfig::default())?;
    let out: Box<dyn Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut writer = DatasetWriter::new(out);
    for flow in &flows {
        writer.write(flow, labeler.label(flow))?;
    }
    writer.finish()?;
    eprintln!("{}", serde_json::to_string(&stats)?);
    if let Some(error) = error {
        eprintln!("warning: {error}");
    }
    Ok(())
}
