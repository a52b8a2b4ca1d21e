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
    /// Where the first record's hello stands; its bytes are in `hello_buf`.
    hello: Hello,
    /// The first handshake message of the first record when that record is a handshake one:
    /// collected while `hello` is [`Hello::Reading`], whole once [`Hello::Done`]. Otherwise empty,
    /// possibly with capacity lent by [`RecordTracker::lend_buffer`] for that message.
    hello_buf: Vec<u8>,
}

/// The first record's hello, as far as it was read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Hello {
    /// Not being read (not started, not a handshake record, given up, or taken).
    #[default]
    Idle,
    /// The first record is a handshake record and its body is being read.
    Reading,
    /// Its first message was read (the record ended), until taken.
    Done,
    /// No hello will be read (framing stopped, or the first record ended without a whole hello:
    /// not a handshake record, or a hole in it), and a lent buffer is held, until taken back.
    Unused,
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
                    if self.hello == Hello::Reading {
                        self.collect_hello(&data[..take], usize::from(remaining));
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
                    if self.hello == Hello::Reading {
                        // The hello cannot be parsed with a hole in it; framing goes on.
                        self.hello = Hello::Idle;
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
            if matches!(self.hello, Hello::Reading | Hello::Idle) {
                self.hello = self.no_hello();
            }
        }
    }

    /// Where the hello stands once none will be read: a lent buffer is to be taken back.
    fn no_hello(&self) -> Hello {
        match self.hello_buf.capacity() {
            0 => Hello::Idle,
            _ => Hello::Unused,
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

    /// The first handshake message of the direction's first record (where the ClientHello or
    /// ServerHello lives), once, when the record was read whole: the record's body up to the
    /// end of its first message, which is all that the hello parsers read of it (a message
    /// longer than the record is given as the whole body). Give the buffer back with
    /// [`RecordTracker::lend_buffer`] or drop it.
    pub fn take_first_handshake(&mut self) -> Option<Vec<u8>> {
        if self.hello != Hello::Done {
            return None;
        }
        self.hello = Hello::Idle;
        Some(std::mem::take(&mut self.hello_buf))
    }

    /// True while the first record has not been framed and no buffer is held for its hello:
    /// a buffer lent now ([`RecordTracker::lend_buffer`]) would be used for it.
    pub fn wants_buffer(&self) -> bool {
        self.records == 0
            && self.hello_buf.capacity() == 0
            && matches!(self.hello, Hello::Idle | Hello::Reading)
            && !matches!(self.state, State::Stopped(_))
    }

    /// Lends an empty buffer (its contents are cleared) to collect the first hello into, so
    /// that a table reuses a few buffers instead of allocating one for each direction of each flow.
    /// Taken where [`RecordTracker::wants_buffer`] holds; else dropped.
    pub fn lend_buffer(&mut self, mut buf: Vec<u8>) {
        if self.wants_buffer() {
            buf.clear();
            self.hello_buf = buf;
        }
    }

    /// The lent buffer back, once no hello will be read into it: framing stopped, or the first
    /// record was framed without a whole hello (not a handshake record, or a hole in it). A table
    /// puts it back among its spares, so that streams that never carry a hello (flows picked up
    /// mid-stream, non-TLS traffic) do not each hold one.
    pub fn unused_buffer(&mut self) -> Option<Vec<u8>> {
        if self.hello != Hello::Unused {
            return None;
        }
        self.hello = Hello::Idle;
        Some(std::mem::take(&mut self.hello_buf))
    }

    /// Appends record body bytes to the hello, up to the end of the record's first handshake
    /// message (the 4-byte header's 24-bit length): the rest of the record (a TLS 1.2 server's
    /// certificates, for one) is never copied. `record_left` is what the record still holds,
    /// `data` included.
    fn collect_hello(&mut self, mut data: &[u8], mut record_left: usize) {
        while !data.is_empty() {
            let buf = &self.hello_buf;
            let wanted = buf.get(1..4).map_or(4, |len| 4 + u24(len));
            let Some(room) = wanted.checked_sub(buf.len()).filter(|&room| room > 0) else {
                return;
            };
            // Room for the whole message at once, as far as the record can hold it.
            self.hello_buf.reserve(room.min(record_left));
            let n = room.min(data.len());
            self.hello_buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            record_left -= n;
        }
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
            self.hello = Hello::Reading;
            self.hello_buf.clear();
        }
        self.state = State::Body { len, remaining: len };
        if len == 0 {
            self.finish_record(on_record);
        }
    }

    fn finish_record(&mut self, on_record: &mut impl FnMut(u8, u16)) {
        if let State::Body { len, .. } = self.state {
            self.records += 1;
            if self.hello == Hello::Reading {
                self.hello = Hello::Done;
            } else if self.records == 1 && self.hello == Hello::Idle {
                self.hello = self.no_hello();
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
///
/// A well-formed hello is read by a short reader that walks the extensions by their lengths and
/// looks only into SNI and ALPN (as Wireshark does, an extension it does not read cannot hide
/// the others); anything it does not find well-formed goes to `tls-parser`.
pub fn parse_client_hello(body: &[u8]) -> Option<ClientHelloInfo> {
    if body.first() != Some(&1) {
        return None;
    }
    client_hello_lean(body).or_else(|| parse_client_hello_with_tls_parser(body))
}

/// A big-endian 24-bit length (a handshake message's), from its three bytes.
fn u24(bytes: &[u8]) -> usize {
    bytes.iter().fold(0, |len, &b| len << 8 | usize::from(b))
}

/// Big-endian fields of a TLS structure, each read only when it is all there.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn vec24(&mut self) -> Option<&'a [u8]> {
        let n = u24(self.take(3)?);
        self.take(n)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn client_hello_lean(body: &[u8]) -> Option<ClientHelloInfo> {
    let mut message = Fields(body);
    message.u8()?;
    let mut hello = Fields(message.vec24()?);
    hello.take(2 + 32)?; // version, random
    hello.vec8()?; // session id
    hello.vec16()?; // cipher suites
    hello.vec8()?; // compression methods
    let mut info = ClientHelloInfo::default();
    if hello.is_empty() {
        return Some(info);
    }
    let mut extensions = Fields(hello.vec16()?);
    if !hello.is_empty() {
        return None;
    }
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let mut data = Fields(extensions.vec16()?);
        match kind {
            0 => {
                // server_name: a list of (name type, name); the first host name is the SNI.
                let mut names = Fields(data.vec16()?);
                info.sni = None;
                while !names.is_empty() {
                    let kind = names.u8()?;
                    let name = names.vec16()?;
                    if kind == 0 && info.sni.is_none() {
                        info.sni = Some(String::from_utf8_lossy(name).into_owned());
                    }
                }
            }
            16 => {
                // application_layer_protocol_negotiation: a list of protocol names.
                let mut protocols = Fields(data.vec16()?);
                info.alpn.clear();
                while !protocols.is_empty() {
                    info.alpn.push(String::from_utf8_lossy(protocols.vec8()?).into_owned());
                }
            }
            _ => continue,
        }
        if !data.is_empty() {
            return None;
        }
    }
    Some(info)
}

/// [`parse_client_hello`] by `tls-parser` alone.
pub fn parse_client_hello_with_tls_parser(body: &[u8]) -> Option<ClientHelloInfo> {
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
///
/// A common hello (TLS 1.0 to 1.2 in its version field, extensions that `tls-parser` reads
/// without fail) is read by a short reader; anything else goes to `tls-parser`, whose answer
/// the short reader gives wherever it answers (a property test checks it).
pub fn parse_server_hello_version(body: &[u8]) -> Option<String> {
    let version = match server_hello_version_lean(body) {
        Some(version) => version,
        None => server_hello_version_with_tls_parser(body)?,
    };
    Some(version_name(version))
}

/// [`parse_server_hello_version`] by `tls-parser` alone: the reference the short reader answers as
/// (the `tls_hello` fuzz target checks them against each other).
pub fn parse_server_hello_version_with_tls_parser(body: &[u8]) -> Option<String> {
    server_hello_version_with_tls_parser(body).map(version_name)
}

fn version_name(version: u16) -> String {
    match version {
        0x0300 => "ssl3".to_string(),
        0x0301 => "1.0".to_string(),
        0x0302 => "1.1".to_string(),
        0x0303 => "1.2".to_string(),
        0x0304 => "1.3".to_string(),
        other => format!("0x{other:04x}"),
    }
}

/// The selected version by `tls-parser` alone (`None` when the body is not a ServerHello).
fn server_hello_version_with_tls_parser(body: &[u8]) -> Option<u16> {
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
    Some(version)
}

/// The selected version of a well-formed ServerHello of version 1.0 to 1.2 whose extensions are
/// all of kinds that `tls-parser` is known to read (so none of them stops its reading of the
/// list early); `None` for anything else, left to `tls-parser`.
fn server_hello_version_lean(body: &[u8]) -> Option<u16> {
    let mut message = Fields(body);
    if message.u8()? != 2 {
        return None;
    }
    let mut hello = Fields(message.vec24()?);
    let mut version = hello.u16()?;
    if !(0x0301..=0x0303).contains(&version) {
        return None;
    }
    hello.take(32)?; // random
    let session_id = hello.vec8()?;
    if session_id.len() > 32 {
        return None;
    }
    hello.take(2 + 1)?; // cipher suite, compression method
    // tls-parser reads the extension block only when it is all there, else it reads none.
    let Some(block) = hello.vec16() else {
        return Some(version);
    };
    let mut extensions = Fields(block);
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        let known_good = match kind {
            // GREASE values, and kinds tls-parser does not know: kept as opaque.
            _ if kind & 0x0f0f == 0x0a0a => true,
            // supported_versions in a ServerHello: the one selected version.
            43 if data.len() == 2 => {
                version = u16::from_be_bytes([data[0], data[1]]);
                true
            }
            // key_share, session_ticket: opaque to tls-parser.
            51 | 35 => true,
            // encrypt_then_mac, extended_master_secret: empty.
            22 | 23 => data.is_empty(),
            // ec_point_formats, renegotiation_info: one length-prefixed byte string.
            11 | 0xff01 => data.first().is_some_and(|&n| usize::from(n) < data.len()),
            // ALPN: a 16-bit length-prefixed list that fits.
            16 => data.len() >= 2 && usize::from(u16::from_be_bytes([data[0], data[1]])) <= data.len() - 2,
            // server_name in a ServerHello: empty.
            0 => data.is_empty(),
            1 | 5 | 10 | 13 | 15 | 18 | 21 | 28 | 40..=45 | 48 | 49 | 13172 | 0xffce => false,
            _ => true,
        };
        if !known_good {
            return None;
        }
    }
    Some(version)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A ClientHello handshake message with these extensions (type, data).
    fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut hello = vec![3, 3];
        hello.extend([7u8; 32]);
        hello.extend([0]); // session id
        hello.extend([0, 4, 0x13, 0x01, 0xc0, 0x2f]); // two cipher suites
        hello.extend([1, 0]); // null compression
        let mut block = Vec::new();
        for (kind, data) in extensions {
            block.extend(kind.to_be_bytes());
            block.extend((data.len() as u16).to_be_bytes());
            block.extend(data);
        }
        hello.extend((block.len() as u16).to_be_bytes());
        hello.extend(block);
        let mut message = vec![1];
        message.extend(&(hello.len() as u32).to_be_bytes()[1..]);
        message.extend(hello);
        message
    }

    fn sni(names: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut list = Vec::new();
        for (kind, name) in names {
            list.push(*kind);
            list.extend((name.len() as u16).to_be_bytes());
            list.extend(name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        data
    }

    fn alpn(protocols: &[Vec<u8>]) -> Vec<u8> {
        let mut list = Vec::new();
        for p in protocols {
            list.push(p.len() as u8);
            list.extend(p);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        data
    }

    /// A ServerHello handshake message: version, session id length, then `tail` (cipher
    /// suite, compression and the extension block, or any bytes).
    fn server_hello(version: u16, session_id: u8, tail: &[u8]) -> Vec<u8> {
        let mut hello = version.to_be_bytes().to_vec();
        hello.extend([9u8; 32]);
        hello.push(session_id);
        hello.extend(std::iter::repeat_n(5u8, usize::from(session_id)));
        hello.extend(tail);
        let mut message = vec![2];
        message.extend(&(hello.len() as u32).to_be_bytes()[1..]);
        message.extend(hello);
        message
    }

    proptest! {
        /// The short ServerHello reader answers what tls-parser answers, wherever it answers,
        /// and the whole parse always does: on well-formed hellos with extensions of every kind
        /// the short reader knows and some it leaves to tls-parser, cut anywhere or not.
        #[test]
        fn lean_server_hello_equals_tls_parser(
            version in prop_oneof![Just(0x0303u16), Just(0x0301u16), Just(0x0300u16), Just(0x7f12u16), any::<u16>()],
            session_id in prop_oneof![Just(32u8), Just(0u8), 0u8..40],
            extensions in prop::collection::vec((
                prop_oneof![Just(43u16), Just(51u16), Just(35u16), Just(22u16), Just(23u16), Just(11u16),
                    Just(0xff01u16), Just(16u16), Just(0u16), Just(0x1a1au16), Just(5u16), Just(44u16), any::<u16>()],
                prop_oneof![prop::collection::vec(any::<u8>(), 0..3), prop::collection::vec(any::<u8>(), 0..12)],
            ), 0..5),
            block_len_delta in prop_oneof![Just(0i32), -3i32..3],
            cut in prop::option::of(0usize..160),
            first_byte in prop_oneof![Just(2u8), any::<u8>()],
        ) {
            let mut block = Vec::new();
            for (kind, data) in &extensions {
                block.extend(kind.to_be_bytes());
                block.extend((data.len() as u16).to_be_bytes());
                block.extend(data);
            }
            let mut tail = vec![0x13, 0x01, 0];
            let declared = (block.len() as i32 + block_len_delta).max(0) as u16;
            tail.extend(declared.to_be_bytes());
            tail.extend(block);
            let mut body = server_hello(version, session_id, &tail);
            body[0] = first_byte;
            if let Some(cut) = cut {
                body.truncate(cut);
            }
            let reference = server_hello_version_with_tls_parser(&body);
            if let Some(lean) = server_hello_version_lean(&body) {
                prop_assert_eq!(Some(lean), reference);
            }
            let text = |v: Option<u16>| v.map(|v| match v {
                0x0300 => "ssl3".to_string(),
                0x0301..=0x0304 => format!("1.{}", (v & 0xff) - 1),
                other => format!("0x{other:04x}"),
            });
            prop_assert_eq!(parse_server_hello_version(&body), text(reference));
        }
    }

    /// A lent buffer comes back (for a table's spares) from streams that never read a hello into it:
    /// non-TLS bytes, a first record that is not a handshake one, a hole in the hello; and not from
    /// one still reading it.
    #[test]
    fn buffers_lent_to_streams_without_a_hello_come_back() {
        let lent = || vec![0u8; 1024];
        let cases: [(&str, &[u8]); 3] = [
            ("not TLS", b"GET / HTTP/1.1\r\n"),
            ("application data first", &[23, 3, 3, 0, 2, 9, 9]),
            ("a ChangeCipherSpec first", &[20, 3, 3, 0, 1, 1]),
        ];
        for (what, bytes) in cases {
            let mut tracker = RecordTracker::default();
            assert!(tracker.wants_buffer(), "{what}");
            tracker.lend_buffer(lent());
            tracker.push(bytes, |_, _| {});
            let back = tracker.unused_buffer().unwrap_or_else(|| panic!("{what}: kept"));
            assert_eq!(back.capacity(), 1024, "{what}");
            assert!(tracker.unused_buffer().is_none(), "{what}: twice");
            assert!(!tracker.wants_buffer(), "{what}");
        }
        // A hole in the hello: its record is framed without it, and the buffer comes back.
        let mut tracker = RecordTracker::default();
        tracker.lend_buffer(lent());
        tracker.push(&[22, 3, 3, 0, 8, 1, 0, 0], |_, _| {});
        assert!(tracker.unused_buffer().is_none(), "still reading the hello");
        tracker.skip(5, |_, _| {});
        assert_eq!(tracker.records(), 1);
        assert!(tracker.take_first_handshake().is_none());
        assert!(tracker.unused_buffer().is_some());
        // A buffer lent once the hello's header is read, before any of its body, is used.
        let mut tracker = RecordTracker::default();
        tracker.push(&[22, 3, 3, 0, 6], |_, _| {});
        assert!(tracker.wants_buffer());
        tracker.lend_buffer(lent());
        tracker.push(&[2, 0, 0, 2, 3, 3], |_, _| {});
        let hello = tracker.take_first_handshake().expect("the hello");
        assert_eq!(hello, [2, 0, 0, 2, 3, 3]);
        assert_eq!(hello.capacity(), 1024);
    }

    proptest! {
        /// The first record's hello is its body up to the end of the first handshake message
        /// (the whole body when the message is longer), however the stream is cut into
        /// pieces, with or without a lent buffer; and a parser reading only the first message
        /// answers on it what it answers on the whole body.
        #[test]
        fn first_hello_is_the_first_message(
            message_len in 0usize..300,
            record_extra in prop_oneof![Just(0usize), 1usize..400],
            short_by in prop_oneof![Just(0usize), 1usize..50],
            cuts in prop::collection::vec(1usize..120, 0..12),
            lend in prop::option::of(0usize..600),
        ) {
            let mut message = vec![1u8];
            message.extend(&(message_len as u32).to_be_bytes()[1..]);
            message.extend((0..message_len).map(|i| i as u8));
            let mut body = message.clone();
            body.extend(std::iter::repeat_n(0xab, record_extra));
            // A message longer than its record: the record ends `short_by` bytes early.
            body.truncate(body.len().saturating_sub(short_by).max(1));
            let mut stream = vec![22, 3, 3];
            stream.extend((body.len() as u16).to_be_bytes());
            stream.extend(&body);
            stream.extend([23, 3, 3, 0, 1, 0]);
            let mut tracker = RecordTracker::default();
            if let Some(capacity) = lend {
                prop_assert!(tracker.wants_buffer());
                tracker.lend_buffer(vec![7u8; capacity]);
            }
            let mut records = Vec::new();
            let mut rest = &stream[..];
            for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                let (piece, tail) = rest.split_at((*cut).min(rest.len()));
                tracker.push(piece, |kind, len| records.push((kind, len)));
                rest = tail;
            }
            prop_assert_eq!(records, vec![(22, body.len() as u16), (23, 1)]);
            let hello = tracker.take_first_handshake().unwrap();
            let expected = &body[..body.len().min(message.len())];
            prop_assert_eq!(&hello[..], expected);
            prop_assert!(tracker.take_first_handshake().is_none());
            prop_assert_eq!(parse_client_hello(&hello), parse_client_hello(&body));
            prop_assert_eq!(parse_server_hello_version(&hello), parse_server_hello_version(&body));
        }
    }

    proptest! {
        /// On well-formed hellos the short reader answers what tls-parser answers.
        #[test]
        fn lean_client_hello_equals_tls_parser(
            names in prop::collection::vec((prop_oneof![Just(0u8), Just(1u8)], prop::collection::vec(b'a'..=b'z', 1..30)), 1..3),
            protocols in prop::collection::vec(prop::collection::vec(b'0'..=b'z', 1..12), 1..4),
            opaque in prop::collection::vec((prop_oneof![Just(0x7a7au16), Just(0xfe0du16), Just(0x4469u16)], prop::collection::vec(any::<u8>(), 0..40)), 0..4),
            with_sni in any::<bool>(),
            with_alpn in any::<bool>(),
            cut in prop::option::of(0usize..400),
        ) {
            let mut extensions = opaque.clone();
            if with_sni {
                extensions.insert(extensions.len() / 2, (0, sni(&names)));
            }
            if with_alpn {
                extensions.push((16, alpn(&protocols)));
            }
            let mut body = client_hello(&extensions);
            let whole = cut.is_none_or(|cut| cut >= body.len());
            if let Some(cut) = cut {
                body.truncate(cut);
            }
            let lean = client_hello_lean(&body);
            prop_assert_eq!(lean.is_some(), whole);
            if let Some(lean) = lean {
                prop_assert_eq!(Some(lean), parse_client_hello_with_tls_parser(&body));
            }
            prop_assert_eq!(parse_client_hello(&body), parse_client_hello_with_tls_parser(&body));
        }
    }
}
