//! Flows: what a finished (or early-decided) TCP connection looks like to callers, and the
//! table that builds them from segments.

mod key;
mod table;

pub use key::{Endpoint, FlowKey};
pub use table::{FlowConfig, FlowTable};

use serde::{Deserialize, Serialize};

/// How the server side of a flow was told apart from the client side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerBy {
    /// A SYN (the client's) or SYN-ACK (the server's) was seen.
    Syn,
    /// One port is in [`FlowConfig::server_ports`].
    Port,
    /// Neither: the lower port was taken as the server's.
    Guess,
}

/// Why a flow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Both sides sent FIN (reported after [`FlowConfig::fin_linger_ns`]).
    Fin,
    /// A side sent RST (reported after [`FlowConfig::fin_linger_ns`]).
    Rst,
    /// No packet for [`FlowConfig::idle_timeout_ns`].
    Idle,
    /// The flow lasted [`FlowConfig::active_timeout_ns`]; its next packet starts a new flow.
    Active,
    /// The table was full and this was the flow closest to expiry.
    Evicted,
    /// The input ended (end of file, or the capture was stopped).
    EndOfInput,
}

/// Conditions that make a flow's record sequence incomplete or doubtful.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFlags {
    /// Bytes were missing in some direction (a segment never captured, or reassembly gave up on
    /// a hole): that direction's records stop at the gap.
    pub gap: bool,
    /// The snaplen cut a TLS record header: that direction's records stop there.
    pub truncated: bool,
    /// A direction did not start with a TLS record header.
    pub not_tls: bool,
    /// A record header after the first was invalid (framing lost; records stop there).
    pub desync: bool,
    /// The connection's start (SYN) was not seen.
    pub mid_stream: bool,
    /// The record sequence reached [`FlowConfig::max_records`] and was cut there.
    pub records_capped: bool,
}

impl FlowFlags {
    /// True when the record sequence is the whole connection's, as sent.
    pub fn complete(&self) -> bool {
        !(self.gap || self.truncated || self.not_tls || self.desync || self.mid_stream || self.records_capped)
    }
}

/// Per-direction counters. Bytes are IP bytes (header included, by the IP header's length).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets from the client.
    pub packets_c2s: u64,
    /// Packets from the server.
    pub packets_s2c: u64,
    /// IP bytes from the client.
    pub bytes_c2s: u64,
    /// IP bytes from the server.
    pub bytes_s2c: u64,
    /// Segments that carried only already-received bytes.
    pub retransmissions: u64,
    /// Segments that arrived ahead of a hole.
    pub out_of_order: u64,
}

impl Counters {
    /// Packets both ways.
    pub fn packets(&self) -> u64 {
        self.packets_c2s + self.packets_s2c
    }
    /// IP bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.bytes_c2s + self.bytes_s2c
    }
}

/// A flow as reported to callers: everything the classifier and a dataset need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Sequence number of the flow in its table (unique per table).
    pub id: u64,
    /// The client's end.
    pub client: Endpoint,
    /// The server's end.
    pub server: Endpoint,
    /// How client and server were told apart.
    pub server_by: ServerBy,
    /// Capture time of the first packet, nanoseconds since the Unix epoch.
    pub first_ns: u64,
    /// Capture time of the last packet, nanoseconds since the Unix epoch.
    pub last_ns: u64,
    /// Packet and byte counts.
    pub counters: Counters,
    /// The ClientHello's server name.
    pub sni: Option<String>,
    /// The ClientHello's ALPN protocols.
    pub alpn: Vec<String>,
    /// The TLS version the ServerHello selected ("1.2", "1.3").
    pub tls_version: Option<String>,
    /// Completeness flags.
    pub flags: FlowFlags,
    /// Why the flow ended; `None` in an early event, while the flow goes on.
    pub end: Option<EndReason>,
    /// TLS record lengths in completion order, positive from the server, negative from the client.
    pub records: Vec<i32>,
}

/// What a flow table reports.
#[derive(Clone, Debug, PartialEq)]
pub enum FlowEvent {
    /// The flow reached [`FlowConfig::early_records`] records: a snapshot; it goes on and still
    /// ends with [`FlowEvent::Finished`].
    Early(FlowRecord),
    /// The flow ended.
    Finished(FlowRecord),
}

impl FlowEvent {
    /// The flow of the event.
    pub fn record(&self) -> &FlowRecord {
        match self {
            Self::Early(r) | Self::Finished(r) => r,
        }
    }
    /// The flow of the event, owned.
    pub fn into_record(self) -> FlowRecord {
        match self {
            Self::Early(r) | Self::Finished(r) => r,
        }
    }
}
