//! pcap and pcapng files. Classic pcap, the common case and the simplest format, is read here:
//! large reads into one buffer, each frame handed out as a slice of it (no copy per packet); a
//! file opened by path is read a block ahead on a second thread ([`super::read_ahead`]).
//! pcapng is read block by block with `pcap-parser` in a bounded buffer.

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::Path;

use pcap_parser::pcapng::Block;
use pcap_parser::traits::PcapReaderIterator;
use pcap_parser::{PcapBlockOwned, PcapError, create_reader};

use super::read_ahead::{HEADROOM, ReadAhead};
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

/// Bytes read from the file at a time for classic pcap, on the parsing thread. Small enough that
/// what `read` just copied is still in the core's cache when the frames are parsed: with 1 MiB
/// reads, the pipeline's first touch of each frame (its record header) missed the cache, and 64 KiB
/// ran the benchmark capture ~10% faster per CPU-second than 1 MiB (128 KiB and 32 KiB in between).
const LEGACY_BUFFER: usize = 64 << 10;

/// Where a classic pcap file's bytes come from.
enum Feed {
    /// `read` calls on the parsing thread.
    Direct(Box<dyn Read + Send>),
    /// Blocks read by a second thread.
    Ahead(ReadAhead),
}

/// A classic pcap file after its 24-byte header.
struct Legacy {
    reader: Feed,
    /// Unread bytes are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    big_endian: bool,
    nanos: bool,
    link: Option<LinkType>,
}

impl Legacy {
    /// Buffers at least `n` unread bytes; false when the file ends first.
    #[inline]
    fn fill(&mut self, n: usize) -> std::io::Result<bool> {
        if self.end - self.start >= n {
            return Ok(true);
        }
        self.refill(n)
    }

    #[cold]
    fn refill(&mut self, n: usize) -> std::io::Result<bool> {
        let reader = match &mut self.reader {
            Feed::Direct(reader) => reader,
            Feed::Ahead(_) => return self.refill_ahead(n),
        };
        while self.end - self.start < n {
            if self.eof {
                return Ok(false);
            }
            if self.buf.len() - self.start < n || self.end == self.buf.len() {
                // Move the partial block to the front (less than one block is copied).
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < n {
                    self.buf.resize(n.next_power_of_two(), 0);
                }
            }
            match reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(read) => self.end += read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// [`Legacy::refill`] from blocks read ahead: the next block becomes the buffer, with the
    /// unread bytes (a frame's start) put in its headroom, in front of its first byte.
    fn refill_ahead(&mut self, n: usize) -> std::io::Result<bool> {
        let Feed::Ahead(ahead) = &mut self.reader else {
            return Ok(false);
        };
        while self.end - self.start < n {
            if self.eof {
                return Ok(false);
            }
            let mut block = ahead.next_block()?;
            if block.len == 0 {
                self.eof = true;
                ahead.recycle(block.buf);
                continue;
            }
            let unread = self.end - self.start;
            if unread <= HEADROOM {
                let at = HEADROOM - unread;
                block.buf[at..HEADROOM].copy_from_slice(&self.buf[self.start..self.end]);
                ahead.recycle(std::mem::replace(&mut self.buf, block.buf));
                self.start = at;
                self.end = HEADROOM + block.len;
            } else {
                // A frame longer than the headroom: the buffer grows and the block is appended.
                self.buf.copy_within(self.start..self.end, 0);
                self.start = 0;
                self.end = unread + block.len;
                if self.buf.len() < self.end {
                    self.buf.resize(self.end, 0);
                }
                self.buf[unread..self.end].copy_from_slice(&block.buf[HEADROOM..HEADROOM + block.len]);
                ahead.recycle(block.buf);
            }
        }
        Ok(true)
    }

    /// The record header at `start` (buffered): seconds, fraction, captured and original lengths.
    #[inline]
    fn record_header(&self) -> Option<[u32; 4]> {
        let header: &[u8; 16] = self.buf.get(self.start..self.start + 16)?.try_into().ok()?;
        let field = |i: usize| {
            let bytes = [header[i], header[i + 1], header[i + 2], header[i + 3]];
            if self.big_endian {
                u32::from_be_bytes(bytes)
            } else {
                u32::from_le_bytes(bytes)
            }
        };
        Some([field(0), field(4), field(8), field(12)])
    }
}

enum Format {
    Legacy(Legacy),
    Parser(Box<dyn PcapReaderIterator + Send>),
}

/// A pcap or pcapng capture file (the format is recognised by its magic number).
pub struct PcapFile {
    path: String,
    reader: Option<Format>,
    capacity: usize,
    /// The current frame's bytes (copied out of the reader's buffer, which moves on).
    frame: Vec<u8>,
    legacy_link: Option<LinkType>,
    legacy_nanos: bool,
    interfaces: Vec<Interface>,
    offset: u64,
    /// The byte order of the current pcapng section, once a section header has been read.
    ng_section: Option<bool>,
}

impl PcapFile {
    /// Opens a capture file. A classic pcap file is read a block ahead by a second thread, which
    /// takes the copying of the file's bytes off the thread that parses them.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SourceError> {
        let name = path.as_ref().display().to_string();
        let file = File::open(path.as_ref()).map_err(|source| SourceError::Io {
            path: name.clone(),
            source,
        })?;
        Self::from_reader_with(name, file, true)
    }

    /// Reads a capture from any reader, on the calling thread; `name` is used in errors.
    pub fn from_reader(name: impl Into<String>, reader: impl Read + Send + 'static) -> Result<Self, SourceError> {
        Self::from_reader_with(name, reader, false)
    }

    fn from_reader_with(
        name: impl Into<String>,
        mut reader: impl Read + Send + 'static,
        read_ahead: bool,
    ) -> Result<Self, SourceError> {
        let path = name.into();
        let io_error = |path: &str, source| SourceError::Io {
            path: path.to_string(),
            source,
        };
        let mut magic = [0u8; 4];
        let have = read_up_to(&mut reader, &mut magic).map_err(|e| io_error(&path, e))?;
        let legacy = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] => Some((false, false)),
            [0xa1, 0xb2, 0xc3, 0xd4] => Some((true, false)),
            [0x4d, 0x3c, 0xb2, 0xa1] => Some((false, true)),
            [0xa1, 0xb2, 0x3c, 0x4d] => Some((true, true)),
            _ => None,
        };
        let mut file = Self {
            path,
            reader: None,
            capacity: INITIAL_BUFFER,
            frame: Vec::new(),
            legacy_link: None,
            legacy_nanos: false,
            interfaces: Vec::new(),
            offset: 0,
            ng_section: None,
        };
        if let (4, Some((big_endian, nanos))) = (have, legacy) {
            let mut header = [0u8; 20];
            let got = read_up_to(&mut reader, &mut header).map_err(|e| io_error(&file.path, e))?;
            if got < header.len() {
                return Err(SourceError::Truncated {
                    path: file.path,
                    offset: 0,
                });
            }
            let linktype = [header[16], header[17], header[18], header[19]];
            let linktype = if big_endian {
                u32::from_be_bytes(linktype)
            } else {
                u32::from_le_bytes(linktype)
            };
            file.offset = 24;
            let (reader, buf) = if read_ahead {
                let ahead = ReadAhead::start(reader).map_err(|e| io_error(&file.path, e))?;
                (Feed::Ahead(ahead), Vec::new())
            } else {
                (Feed::Direct(Box::new(reader)), vec![0; LEGACY_BUFFER])
            };
            file.reader = Some(Format::Legacy(Legacy {
                reader,
                buf,
                start: 0,
                end: 0,
                eof: false,
                big_endian,
                nanos,
                link: LinkType::from_linktype(linktype as i32),
            }));
            return Ok(file);
        }
        // pcap-parser recognises the format from its first read: give it a whole first buffer.
        let mut head = vec![0u8; INITIAL_BUFFER];
        head[..have].copy_from_slice(&magic[..have]);
        let more = if have == magic.len() {
            read_up_to(&mut reader, &mut head[have..]).map_err(|e| io_error(&file.path, e))?
        } else {
            0
        };
        head.truncate(have + more);
        let reader = Cursor::new(head).chain(reader);
        file.reader = match create_reader(INITIAL_BUFFER, reader) {
            Ok(reader) => Some(Format::Parser(reader)),
            // An empty file holds no packets: nothing to read, and nothing wrong with that.
            Err(PcapError::Eof) => None,
            Err(PcapError::Incomplete(_)) => {
                return Err(SourceError::Truncated {
                    path: file.path,
                    offset: 0,
                });
            }
            Err(PcapError::ReadError) => return Err(io_error(&file.path, std::io::Error::other("read failed"))),
            Err(_) => return Err(SourceError::NotPcap(file.path)),
        };
        Ok(file)
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

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut have = 0;
    while have < buf.len() {
        match reader.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(read) => have += read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(have)
}

/// Where the next classic pcap frame lies in the read buffer.
struct LegacyFrame {
    ts_ns: u64,
    link: Option<LinkType>,
    data: std::ops::Range<usize>,
    orig_len: u32,
}

impl PcapFile {
    /// The next frame of a classic pcap file, a slice of the read buffer.
    #[inline]
    fn next_legacy(&mut self) -> Result<Option<PacketRef<'_>>, SourceError> {
        match self.advance_legacy() {
            Ok(Some(frame)) => {
                let Some(Format::Legacy(legacy)) = &self.reader else {
                    return Ok(None);
                };
                Ok(Some(PacketRef {
                    ts_ns: frame.ts_ns,
                    link: frame.link,
                    data: &legacy.buf[frame.data],
                    orig_len: frame.orig_len,
                }))
            }
            Ok(None) => {
                self.reader = None;
                Ok(None)
            }
            Err(error) => {
                self.reader = None;
                Err(error)
            }
        }
    }

    /// Buffers the next classic pcap frame whole and moves past it.
    #[inline]
    fn advance_legacy(&mut self) -> Result<Option<LegacyFrame>, SourceError> {
        let Some(Format::Legacy(legacy)) = self.reader.as_mut() else {
            return Ok(None);
        };
        let path = &self.path;
        let io = |source| SourceError::Io {
            path: path.clone(),
            source,
        };
        if !legacy.fill(16).map_err(io)? {
            if legacy.end == legacy.start {
                return Ok(None);
            }
            return Err(SourceError::Truncated {
                path: path.clone(),
                offset: self.offset,
            });
        }
        let Some([ts_sec, frac, caplen, orig_len]) = legacy.record_header() else {
            return Ok(None);
        };
        let (ts_sec, frac, caplen) = (u64::from(ts_sec), u64::from(frac), caplen as usize);
        if caplen > MAX_BUFFER {
            return Err(SourceError::BlockTooLarge {
                path: path.clone(),
                offset: self.offset,
                limit: MAX_BUFFER,
            });
        }
        if !legacy.fill(16 + caplen).map_err(io)? {
            return Err(SourceError::Truncated {
                path: path.clone(),
                offset: self.offset,
            });
        }
        let data_at = legacy.start + 16;
        legacy.start = data_at + caplen;
        self.offset += 16 + caplen as u64;
        let ts_ns = ts_sec * 1_000_000_000 + frac * if legacy.nanos { 1 } else { 1000 };
        Ok(Some(LegacyFrame {
            ts_ns,
            link: legacy.link,
            data: data_at..data_at + caplen,
            orig_len,
        }))
    }
}

impl PacketSource for PcapFile {
    #[inline]
    fn next_packet(&mut self) -> Result<Option<PacketRef<'_>>, SourceError> {
        if let Some(Format::Legacy(_)) = self.reader {
            return self.next_legacy();
        }
        loop {
            let Some(Format::Parser(reader)) = self.reader.as_mut() else {
                return Ok(None);
            };
            if let Some(big_endian) = self.ng_section
                && let Some(detail) = short_pcapng_block(reader.data(), big_endian)
            {
                let malformed = SourceError::Malformed {
                    path: self.path.clone(),
                    offset: self.offset,
                    detail,
                };
                return self.fail(malformed);
            }
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
                        PcapBlockOwned::NG(Block::SectionHeader(shb)) => {
                            // Interface ids restart with each section.
                            self.ng_section = Some(shb.big_endian());
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

/// A pcapng block (other than a section header) whose length is shorter than its own framing (type,
/// length, trailing length: 12 bytes) is malformed. pcap-parser 0.17 subtracts the framing from such
/// a length without checking it for some block types, which overflows: such blocks are refused here,
/// before they reach it.
fn short_pcapng_block(data: &[u8], big_endian: bool) -> Option<String> {
    const SECTION_HEADER: u32 = 0x0A0D_0D0A;
    let header: [u8; 8] = data.get(..8)?.try_into().ok()?;
    let block_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if block_type == SECTION_HEADER {
        return None;
    }
    let length_bytes = [header[4], header[5], header[6], header[7]];
    let length = if big_endian {
        u32::from_be_bytes(length_bytes)
    } else {
        u32::from_le_bytes(length_bytes)
    };
    (length < 12).then(|| {
        format!("block of type {block_type:#x} says it is {length} bytes long, shorter than its 12 bytes of framing")
    })
}
