//! pcap and pcapng files, read block by block with `pcap-parser` in a bounded buffer.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use pcap_parser::pcapng::Block;
use pcap_parser::traits::PcapReaderIterator;
use pcap_parser::{PcapBlockOwned, PcapError, create_reader};

use super::{PacketRef, PacketSource, SourceError};
use crate::decode::LinkType;

const INITIAL_BUFFER: usize = 1 << 16;
/// No legitimate block is this large (libpcap's own snaplen limit is 256 KiB): a longer length
/// field is corruption, reported rather than buffered.
const MAX_BUFFER: usize = 16 << 20;

#[derive(Clone, Copy, Debug)]
struct Interface {
    link: Option<LinkType>,
    /// Timestamp units per second.
    resolution: u64,
    /// Seconds added to every timestamp.
    offset_s: i64,
}

/// A pcap or pcapng capture file (the format is recognised by its magic number).
pub struct PcapFile {
    path: String,
    reader: Option<Box<dyn PcapReaderIterator + Send>>,
    capacity: usize,
    /// The current frame's bytes (copied out of the reader's buffer, which moves on).
    frame: Vec<u8>,
    legacy_link: Option<LinkType>,
    legacy_nanos: bool,
    interfaces: Vec<Interface>,
    offset: u64,
}

impl PcapFile {
    /// Opens a capture file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SourceError> {
        let name = path.as_ref().display().to_string();
        let file = File::open(path.as_ref()).map_err(|source| SourceError::Io {
            path: name.clone(),
            source,
        })?;
        Self::from_reader(name, file)
    }

    /// Reads a capture from any reader; `name` is used in errors.
    pub fn from_reader(name: impl Into<String>, reader: impl Read + Send + 'static) -> Result<Self, SourceError> {
        let path = name.into();
        let reader = match create_reader(INITIAL_BUFFER, reader) {
            Ok(reader) => Some(reader),
            // An empty file holds no packets: nothing to read, and nothing wrong with that.
            Err(PcapError::Eof) => None,
            Err(PcapError::Incomplete(_)) => return Err(SourceError::Truncated { path, offset: 0 }),
            Err(PcapError::ReadError) => {
                return Err(SourceError::Io {
                    path,
                    source: std::io::Error::other("read failed"),
                });
            }
            Err(_) => return Err(SourceError::NotPcap(path)),
        };
        Ok(Self {
            path,
            reader,
            capacity: INITIAL_BUFFER,
            frame: Vec::new(),
            legacy_link: None,
            legacy_nanos: false,
            interfaces: Vec::new(),
            offset: 0,
        })
    }

    /// Bytes of the file consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn fail(&mut self, error: SourceError) -> Result<Option<PacketRef<'_>>, SourceError> {
        self.reader = None;
        Err(error)
    }
}

impl PacketSource for PcapFile {
    fn next_packet(&mut self) -> Result<Option<PacketRef<'_>>, SourceError> {
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Ok(None);
            };
            let found = match reader.next() {
                Ok((size, block)) => {
                    let found = match block {
                        PcapBlockOwned::LegacyHeader(header) => {
                            self.legacy_link = LinkType::from_linktype(header.network.0);
                            self.legacy_nanos = header.is_nanosecond_precision();
                            None
                        }
                        PcapBlockOwned::Legacy(packet) => {
                            let frac = u64::from(packet.ts_usec) * if self.legacy_nanos { 1 } else { 1000 };
                            let ts_ns = u64::from(packet.ts_sec) * 1_000_000_000 + frac;
                            self.frame.clear();
                            self.frame.extend_from_slice(packet.data);
                            Some((ts_ns, self.legacy_link, packet.origlen))
                        }
                        PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                            // Interface ids restart with each section.
                            self.interfaces.clear();
                            None
                        }
                        PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                            self.interfaces.push(Interface {
                                link: LinkType::from_linktype(idb.linktype.0),
                                resolution: idb.ts_resolution().unwrap_or(1_000_000).max(1),
                                offset_s: idb.ts_offset(),
                            });
                            None
                        }
                        PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                            let interface = self.interfaces.get(epb.if_id as usize).copied();
                            let ts_ns = interface.map_or(0, |i| {
                                let ticks = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                                let ns = u128::from(ticks) * 1_000_000_000 / u128::from(i.resolution);
                                let ns = ns as i128 + i128::from(i.offset_s) * 1_000_000_000;
                                ns.clamp(0, i128::from(u64::MAX)) as u64
                            });
                            self.frame.clear();
                            self.frame.extend_from_slice(epb.data);
                            Some((ts_ns, interface.and_then(|i| i.link), epb.origlen))
                        }
                        PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                            // Simple packets belong to the first interface and carry no time.
                            let link = self.interfaces.first().and_then(|i| i.link);
                            self.frame.clear();
                            self.frame.extend_from_slice(spb.data);
                            Some((0, link, spb.origlen))
                        }
                        PcapBlockOwned::NG(_) => None,
                    };
                    reader.consume(size);
                    self.offset += size as u64;
                    found
                }
                Err(PcapError::Eof) => {
                    self.reader = None;
                    return Ok(None);
                }
                Err(PcapError::UnexpectedEof) => {
                    let offset = self.offset;
                    return self.fail(SourceError::Truncated {
                        path: self.path.clone(),
                        offset,
                    });
                }
                Err(PcapError::Incomplete(_)) | Err(PcapError::BufferTooSmall) => {
                    if reader.reader_exhausted() {
                        let offset = self.offset;
                        return self.fail(SourceError::Truncated {
                            path: self.path.clone(),
                            offset,
                        });
                    }
                    let before = reader.data().len();
                    if reader.refill().is_err() {
                        let error = SourceError::Io {
                            path: self.path.clone(),
                            source: std::io::Error::other("read failed"),
                        };
                        return self.fail(error);
                    }
                    if reader.data().len() == before {
                        // The buffer is full and the block still does not fit.
                        if self.capacity >= MAX_BUFFER {
                            let (path, offset, limit) = (self.path.clone(), self.offset, MAX_BUFFER);
                            return self.fail(SourceError::BlockTooLarge { path, offset, limit });
                        }
                        self.capacity *= 2;
                        reader.grow(self.capacity);
                    }
                    None
                }
                Err(error) => {
                    let detail = format!("{:?}", error.to_owned_vec());
                    let detail: String = detail.chars().take(200).collect();
                    let (path, offset) = (self.path.clone(), self.offset);
                    return self.fail(SourceError::Malformed { path, offset, detail });
                }
            };
            if let Some((ts_ns, link, orig_len)) = found {
                return Ok(Some(PacketRef {
                    ts_ns,
                    link,
                    data: &self.frame,
                    orig_len,
                }));
            }
        }
    }
}
