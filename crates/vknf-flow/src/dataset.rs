//! Flow datasets: one JSON object per line, one line per flow, for training
//! (`python/train_traffic.py`) and for inspection. The format is documented in `docs/traffic.md`.
//!
//! ```json
//! {"label":"site1","client_ip":"127.0.0.1","client_port":40312,"server_ip":"127.0.0.1",
//!  "server_port":18443,"protocol":6,"sni":"site1.test","alpn":["http/1.1"],"tls_version":"1.3",
//!  "first_ns":1764520000000000000,"last_ns":1764520000100000000,"packets":24,"bytes":9876,
//!  "packets_c2s":12,"packets_s2c":12,"bytes_c2s":1500,"bytes_s2c":8376,
//!  "flags":{"gap":false,...},"complete":true,"end":"fin","records":[-517,122,-6,...]}
//! ```

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::flow::{EndReason, FlowFlags, FlowRecord};

/// One dataset line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetRow {
    /// The class, when labelled.
    pub label: Option<String>,
    /// Client address.
    pub client_ip: IpAddr,
    /// Client port.
    pub client_port: u16,
    /// Server address.
    pub server_ip: IpAddr,
    /// Server port.
    pub server_port: u16,
    /// IP protocol number (6, TCP).
    pub protocol: u8,
    /// ClientHello server name.
    pub sni: Option<String>,
    /// ClientHello ALPN protocols.
    pub alpn: Vec<String>,
    /// Selected TLS version.
    pub tls_version: Option<String>,
    /// First packet, ns since the epoch.
    pub first_ns: u64,
    /// Last packet, ns since the epoch.
    pub last_ns: u64,
    /// Packets both ways.
    pub packets: u64,
    /// IP bytes both ways.
    pub bytes: u64,
    /// Packets from the client.
    pub packets_c2s: u64,
    /// Packets from the server.
    pub packets_s2c: u64,
    /// IP bytes from the client.
    pub bytes_c2s: u64,
    /// IP bytes from the server.
    pub bytes_s2c: u64,
    /// Completeness flags.
    pub flags: FlowFlags,
    /// No flag set: the sequence is the whole connection's.
    pub complete: bool,
    /// Why the flow ended.
    pub end: Option<EndReason>,
    /// Signed TLS record lengths (+ server to client, - client to server).
    pub records: Vec<i32>,
}

impl DatasetRow {
    /// The row of a flow.
    pub fn new(flow: &FlowRecord, label: Option<String>) -> Self {
        Self {
            label,
            client_ip: flow.client.addr,
            client_port: flow.client.port,
            server_ip: flow.server.addr,
            server_port: flow.server.port,
            protocol: 6,
            sni: flow.sni.clone(),
            alpn: flow.alpn.clone(),
            tls_version: flow.tls_version.clone(),
            first_ns: flow.first_ns,
            last_ns: flow.last_ns,
            packets: flow.counters.packets(),
            bytes: flow.counters.bytes(),
            packets_c2s: flow.counters.packets_c2s,
            packets_s2c: flow.counters.packets_s2c,
            bytes_c2s: flow.counters.bytes_c2s,
            bytes_s2c: flow.counters.bytes_s2c,
            flags: flow.flags,
            complete: flow.flags.complete(),
            end: flow.end,
            records: flow.records.clone(),
        }
    }
}

/// Errors of datasets and label files.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a dataset row.
    #[error("{path}:{line}: {detail}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        detail: String,
    },
}

/// How flows get their label.
#[derive(Clone, Debug)]
pub enum Labeler {
    /// No label.
    None,
    /// The SNI is the label (flows without SNI get none).
    Sni,
    /// Rules from a CSV file, first match wins.
    Rules(Vec<LabelRule>),
}

/// One line of a label CSV: `server_ip,server_port,client_ip,client_port,label`, where any of
/// the first four may be `*`; lines starting with `#` and a header line naming `label` are
/// skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelRule {
    server_ip: Option<IpAddr>,
    server_port: Option<u16>,
    client_ip: Option<IpAddr>,
    client_port: Option<u16>,
    label: String,
}

impl Labeler {
    /// Reads label rules from a CSV file.
    pub fn from_csv(path: impl AsRef<Path>) -> Result<Self, DatasetError> {
        let name = path.as_ref().display().to_string();
        let text = std::fs::read_to_string(path.as_ref()).map_err(|source| DatasetError::Io {
            path: name.clone(),
            source,
        })?;
        let mut rules = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || (index == 0 && line.contains("label")) {
                continue;
            }
            let parse_error = |detail: String| DatasetError::Parse {
                path: name.clone(),
                line: index + 1,
                detail,
            };
            let fields: Vec<&str> = line.splitn(5, ',').map(str::trim).collect();
            let [server_ip, server_port, client_ip, client_port, label] = fields[..] else {
                return Err(parse_error(
                    "expected server_ip,server_port,client_ip,client_port,label".into(),
                ));
            };
            fn any<T: std::str::FromStr>(field: &str) -> Result<Option<T>, String> {
                if field == "*" {
                    Ok(None)
                } else {
                    field.parse().map(Some).map_err(|_| format!("cannot parse {field:?}"))
                }
            }
            rules.push(LabelRule {
                server_ip: any(server_ip).map_err(parse_error)?,
                server_port: any(server_port).map_err(parse_error)?,
                client_ip: any(client_ip).map_err(parse_error)?,
                client_port: any(client_port).map_err(parse_error)?,
                label: label.to_string(),
            });
        }
        Ok(Self::Rules(rules))
    }

    /// The label of a flow.
    pub fn label(&self, flow: &FlowRecord) -> Option<String> {
        match self {
            Self::None => None,
            Self::Sni => flow.sni.clone(),
            Self::Rules(rules) => rules
                .iter()
                .find(|r| {
                    r.server_ip.is_none_or(|a| a == flow.server.addr)
                        && r.server_port.is_none_or(|p| p == flow.server.port)
                        && r.client_ip.is_none_or(|a| a == flow.client.addr)
                        && r.client_port.is_none_or(|p| p == flow.client.port)
                })
                .map(|r| r.label.clone()),
        }
    }
}

/// Writes dataset rows as JSON lines.
pub struct DatasetWriter<W: Write> {
    out: W,
    rows: u64,
}

impl<W: Write> DatasetWriter<W> {
    /// A writer over `out`.
    pub fn new(out: W) -> Self {
        Self { out, rows: 0 }
    }

    /// Writes one flow.
    pub fn write(&mut self, flow: &FlowRecord, label: Option<String>) -> std::io::Result<()> {
        let row = DatasetRow::new(flow, label);
        serde_json::to_writer(&mut self.out, &row)?;
        self.out.write_all(b"\n")?;
        self.rows += 1;
        Ok(())
    }

    /// Rows written.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Flushes and returns the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a dataset file.
pub fn read_dataset(path: impl AsRef<Path>) -> Result<Vec<DatasetRow>, DatasetError> {
    let name = path.as_ref().display().to_string();
    let file = std::fs::File::open(path.as_ref()).map_err(|source| DatasetError::Io {
        path: name.clone(),
        source,
    })?;
    let mut rows = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| DatasetError::Io {
            path: name.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(&line).map_err(|e| DatasetError::Parse {
            path: name.clone(),
            line: index + 1,
            detail: e.to_string(),
        })?;
        rows.push(row);
    }
    Ok(rows)
}
