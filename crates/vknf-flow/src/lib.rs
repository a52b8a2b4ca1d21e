//! The traffic path of vknf's encrypted-traffic classifier: from packets to the feature rows of
//! H2Classifier (Brissaud et al.), the classifier of Haavisto et al. 2021.
//!
//! # Data path
//!
//! ```text
//! pcap / pcapng file (PcapFile)  ─┐
//! live interface (LiveCapture)   ─┴─> decode (Ethernet, VLAN, SLL, SLL2, NULL/LOOP, raw IP;
//!                                     IPv4, IPv6, TCP; lengths from the IP header)
//!   ─> FlowTable (bidirectional 5-tuple, server by SYN or port, idle/active timeouts, FIN/RST,
//!      bounded, evictions counted)
//!   ─> per direction: TCP reassembly (Stream) ─> TLS record framing (RecordTracker),
//!      ClientHello SNI/ALPN, ServerHello version
//!   ─> FlowEvent::{Early, Finished}(FlowRecord: 5-tuple, times, counts, SNI/ALPN, flags,
//!      signed record sizes)
//!   ─> FeatureSchema::row(&records) -> Vec<f32>, the model's input
//! ```
//!
//! # Use
//!
//! ```no_run
//! use vknf_flow::{FeatureSchema, FlowConfig, FlowEvent, FlowReader, PcapFile};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let schema = FeatureSchema::load("model.schema.json")?;
//! schema.check_model_digest("<the digest the compiled model was bound to>")?;
//! let config = FlowConfig { early_records: Some(50), ..FlowConfig::default() };
//! for event in FlowReader::new(PcapFile::open("capture.pcapng")?, config) {
//!     match event? {
//!         FlowEvent::Early(flow) | FlowEvent::Finished(flow) => {
//!             let row: Vec<f32> = schema.row(&flow.records);
//!             println!("{} -> {} {:?} gap={} {} features", flow.client, flow.server, flow.sni,
//!                      flow.flags.gap, row.len());
//!         }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Live capture ([`source::live`], feature `live`, on by default) opens an interface with
//! [`source::live::LiveCapture::open`] and either iterates it like a file through
//! [`FlowReader`] (one thread) or starts [`source::live::ShardedCapture`], which spreads flows
//! over threads by flow hash and delivers the same [`FlowEvent`]s on a channel.
//!
//! Training data is written by [`dataset::DatasetWriter`] (JSON lines, one flow a line) and
//! read by `python/train_traffic.py`, which writes the model (ONNX) and the schema JSON that
//! [`FeatureSchema::load`] reads. `docs/traffic.md` describes the features and the two
//! deliberate departures from the original code.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dataset;
pub mod decode;
pub mod features;
pub mod flow;
pub mod reader;
pub mod reassembly;
pub mod source;
pub mod stats;
pub mod tls;

pub use dataset::{DatasetRow, DatasetWriter, Labeler, read_dataset};
pub use decode::{DropReason, LinkType, TcpSegment, decode};
pub use features::{FeatureSchema, SchemaError};
pub use flow::{
    Counters, EndReason, Endpoint, FlowConfig, FlowEvent, FlowFlags, FlowKey, FlowRecord, FlowTable, ServerBy,
};
pub use reader::FlowReader;
pub use source::pcap_file::PcapFile;
pub use source::{PacketRef, PacketSource, SourceError};
pub use stats::Stats;

/// Reads every flow of a capture file (all `Finished` events; `Early` ones are skipped), with
/// the table's counters. A source error after some packets is returned with what was read.
pub fn read_flows(
    path: impl AsRef<std::path::Path>,
    config: FlowConfig,
) -> Result<(Vec<FlowRecord>, Stats, Option<SourceError>), SourceError> {
    let mut reader = FlowReader::new(PcapFile::open(path)?, config);
    let mut flows = Vec::new();
    let mut error = None;
    for event in reader.by_ref() {
        match event {
            Ok(FlowEvent::Finished(flow)) => flows.push(flow),
            Ok(FlowEvent::Early(_)) => {}
            Err(e) => error = Some(e),
        }
    }
    Ok((flows, reader.stats().clone(), error))
}
