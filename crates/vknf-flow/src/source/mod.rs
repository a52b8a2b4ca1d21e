//! Packet sources: capture files and live interfaces.

pub mod pcap_file;
mod read_ahead;

#[cfg(feature = "live")]
pub mod live;

use crate::decode::LinkType;

/// One captured frame, borrowed from its source until the next call.
#[derive(Clone, Copy, Debug)]
pub struct PacketRef<'a> {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The frame's link type; `None` when the capture's link type is not supported.
    pub link: Option<LinkType>,
    /// The captured bytes.
    pub data: &'a [u8],
    /// The frame's length on the wire (larger than `data` when the snaplen cut it).
    pub orig_len: u32,
}

/// Errors of packet sources.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be opened or read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is neither pcap nor pcapng.
    #[error("{0}: not a pcap or pcapng file")]
    NotPcap(String),
    /// The file ends inside a block: everything before was read.
    #[error("{path}: truncated inside a block at byte {offset}; the packets before it were read")]
    Truncated {
        /// The file.
        path: String,
        /// Where the last whole block ended.
        offset: u64,
    },
    /// A block's structure is invalid (bad length, bad magic).
    #[error("{path}: malformed block at byte {offset}: {detail}")]
    Malformed {
        /// The file.
        path: String,
        /// Where the block starts.
        offset: u64,
        /// What the parser said.
        detail: String,
    },
    /// A block larger than the reader accepts.
    #[error("{path}: block at byte {offset} is larger than {limit} bytes")]
    BlockTooLarge {
        /// The file.
        path: String,
        /// Where the block starts.
        offset: u64,
        /// The largest block accepted.
        limit: usize,
    },
    /// A live capture error (libpcap).
    #[error("capture on {interface}: {detail}")]
    Capture {
        /// The interface.
        interface: String,
        /// libpcap's message.
        detail: String,
    },
}

/// A source of captured frames.
pub trait PacketSource {
    /// The next frame; `Ok(None)` at the end. After an error the source is at its end.
    fn next_packet(&mut self) -> Result<Option<PacketRef<'_>>, SourceError>;
}
