//! TLS record framing of one direction of a TCP stream, and the ClientHello/ServerHello fields.
//!
//! The tracker reads only what framing needs: each 5-byte record header, and the body of the
//! first handshake record of the direction (where the ClientHello or ServerHello lives). Record
//! bodies are otherwise skipped without being copied, so the cost is per record, not per byte.
//! A record is reported when its last byte has arrived, as Wireshark's dissector reports it in
//! the frame that completes it; that is what fixes the interleaving of the two directions.

use tls_parser::{
    SNIType, TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_extensions, parse_tls_message_handshake,
};

/// Largest record body a TLS 1.2 peer may send (2^14 plus 2048 of expansion); TLS 1.3 allows less.
pub const MAX_RECORD_LEN: u16 = 16384 + 2048;

/// Why a direction stopped being framed as TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The first bytes of the direction were not a TLS record header.
    NotTls,
    /// A later header was invalid: the stream is not where a record should start.
    Desync,
    /// A header byte was never received: the reassembler gave up on a hole.
    Gap,
    /// A header byte was on the wire but not in the capture (snaplen).
    Truncated,
}

#[derive(Clone, Debug, Default)]
enum State {
    /// Collecting a 5-byte header; `have` bytes so far.
    #[default]
    Header,
    /// Inside a record body: `remaining` bytes of the record of length `len` still to come.
    Body { len: u16, remaining: u16 },
    /// Framing lost; nothing more is reported for this direction.
    Stopped(Stop),
}

/// Frames one direction's in-order byte stream into TLS record lengths.
#[derive(Clone, Debug, Default)]
pub struct RecordTracker {
    state: State,
    header: [u8; 5],
    have: usize,
    records: u64,
    /// Body of the first record when it is a handshake record, while it is being read.
    first_handshake: Option<Vec<u8>>,
    /// Its complete body, once read, until taken.
    done_handshake: Option<Vec<u8>>,
}

impl RecordTracker {
    /// Feeds captured bytes; `on_record(content_type, length)` is called for each completed record.
    pub fn push(&mut self, mut data: &[u8], mut on_record: impl FnMut(u8, u16)) {
        while !data.is_empty() {
            match self.state {
                State::Stopped(_) => return,
                State::Header => {
                    let take = (5 - self.have).min(data.len());
                    self.header[self.have..self.have + take].copy_from_slice(&data[..take]);
                    self.have += take;
                    data = &data[take..];
                    if self.have == 5 {
                        self.have = 0;
                        self.start_record(&mut on_record);
                    }
                }
                State::Body { len, remaining } => {
                    let take = usize::from(remaining).min(data.len());
                    if let Some(buf) = self.first_handshake.as_mut() {
                        buf.extend_from_slice(&data[..take]);
                    }
                    data = &data[take..];
                    // `take` <= `remaining` <= u16::MAX.
                    let remaining = remaining - take as u16;
                    self.state = State::Body { len, remaining };
                    if remaining == 0 {
                        self.finish_record(&mut on_record);
                    }
                }
            }
        }
    }

    /// Accounts for `n` bytes that were on the wire but not captured (snaplen). Skipping inside a
    /// record body is harmless; needing a header byte that is missing stops the direction.
    pub fn skip(&mut self, mut n: u64, mut on_record: impl FnMut(u8, u16)) {
        while n > 0 {
            match self.state {
                State::Stopped(_) => return,
                State::Header => {
                    self.stop(Stop::Truncated);
                    return;
                }
                State::Body { len, remaining } => {
                    if self.first_handshake.is_some() {
                        // The hello cannot be parsed with a hole in it; framing goes on.
                        self.first_handshake = None;
                    }
                    let take = u64::from(remaining).min(n);
                    n -= take;
                    let remaining = remaining - take as u16;
                    self.state = State::Body { len, remaining };
                    if remaining == 0 {
                        self.finish_record(&mut on_record);
                    }
                }
            }
        }
    }

    /// Stops framing (a gap the reassembler could not fill, or a header that made no sense).
    pub fn stop(&mut self, why: Stop) {
        if !matches!(self.state, State::Stopped(_)) {
            self.state = State::Stopped(why);
            self.first_handshake = None;
        }
    }

    /// Why framing stopped, if it did.
    pub fn stopped(&self) -> Option<Stop> {
        match self.state {
            State::Stopped(why) => Some(why),
            _ => None,
        }
    }

    /// True when framing stands between records: no partial record is pending.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header) && self.have == 0
    }

    /// Records completed so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The body of the direction's first handshake record, once, when it was read whole.
    pub fn take_first_handshake(&mut self) -> Option<Vec<u8>> {
        self.done_handshake.take()
    }

    fn start_record(&mut self, on_record: &mut impl FnMut(u8, u16)) {
        let [content_type, major, minor, hi, lo] = self.header;
        let len = u16::from_be_bytes([hi, lo]);
        // Content types 20..=24 (change_cipher_spec, alert, handshake, application_data,
        // heartbeat) and versions SSL 3.0 to TLS 1.3 (1.3 records carry 3.3 or 3.1).
        let valid = (20..=24).contains(&content_type) && major == 3 && minor <= 4 && len <= MAX_RECORD_LEN;
        if !valid {
            self.stop(if self.records == 0 { Stop::NotTls } else { Stop::Desync });
            return;
        }
        if self.records == 0 && content_type == 22 {
            self.first_handshake = Some(Vec::with_capacity(usize::from(len)));
        }
        self.state = State::Body { len, remaining: len };
        if len == 0 {
            self.finish_record(on_record);
        }
    }

    fn finish_record(&mut self, on_record: &mut impl FnMut(u8, u16)) {
        if let State::Body { len, .. } = self.state {
            self.records += 1;
            if let Some(body) = self.first_handshake.take() {
                self.done_handshake = Some(body);
            }
            self.state = State::Header;
            on_record(self.header[0], len);
        }
    }
}

/// What a ClientHello tells about the connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The server name (SNI host name), if sent.
    pub sni: Option<String>,
    /// The ALPN protocols offered, in order.
    pub alpn: Vec<String>,
}

/// Parses a ClientHello from a handshake record body; `None` when it is not one.
pub fn parse_client_hello(body: &[u8]) -> Option<ClientHelloInfo> {
    let (_, message) = parse_tls_message_handshake(body).ok()?;
    let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) = message else {
        return None;
    };
    let mut info = ClientHelloInfo::default();
    let Some(ext) = hello.ext else {
        return Some(info);
    };
    let Ok((_, extensions)) = parse_tls_extensions(ext) else {
        return Some(info);
    };
    for extension in extensions {
        match extension {
            TlsExtension::SNI(names) => {
                info.sni = names
                    .iter()
                    .find(|(kind, _)| *kind == SNIType::HostName)
                    .map(|(_, name)| String::from_utf8_lossy(name).into_owned());
            }
            TlsExtension::ALPN(protocols) => {
                info.alpn = protocols
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
            }
            _ => {}
        }
    }
    Some(info)
}

/// The TLS version a ServerHello selects (`supported_versions` for 1.3), as `"1.2"`, `"1.3"`, ...
pub fn parse_server_hello_version(body: &[u8]) -> Option<String> {
    let (_, message) = parse_tls_message_handshake(body).ok()?;
    let TlsMessage::Handshake(TlsMessageHandshake::ServerHello(hello)) = message else {
        return None;
    };
    let mut version = hello.version.0;
    if let Some(ext) = hello.ext
        && let Ok((_, extensions)) = parse_tls_extensions(ext)
    {
        for extension in extensions {
            if let TlsExtension::SupportedVersions(versions) = extension
                && let Some(v) = versions.first()
            {
                version = v.0;
            }
        }
    }
    Some(match version {
        0x0300 => "ssl3".to_string(),
        0x0301..=0x0304 => format!("1.{}", (version & 0xff) - 1),
        other => format!("0x{other:04x}"),
    })
}
