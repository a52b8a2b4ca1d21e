//! How the flow table ends flows and tells their sides apart, through the public API: TCP/IP
//! frames built by etherparse (Ethernet, IPv4, TCP with real sequence numbers), decoded by the
//! crate's `decode` and fed to a `FlowTable` at chosen capture times, so that every timeout is
//! crossed exactly where the test says. Each test also runs a control (the same packets with
//! another setting, or without the packet that matters) whose different outcome shows that the
//! setting or packet is what the assertion sees.
//!
//! The TCP payloads are TLS records: a 5-byte header (application data, TLS 1.2, its length) and
//! a body the table never reads, so the record sequence each flow reports can be compared with
//! exactly what was sent.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::PacketBuilder;
use vknf_flow::{EndReason, Endpoint, FlowConfig, FlowEvent, FlowRecord, FlowTable, LinkType, ServerBy, decode};

const SECOND: u64 = 1_000_000_000;
/// Capture times start here (2023-11-14), as a real capture's would.
const T0: u64 = 1_700_000_000 * SECOND;
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// A TLS record of `len` body bytes: application data (23), TLS 1.2 (3, 3), the length.
fn tls_record(len: u16) -> Vec<u8> {
    let mut record = vec![23, 3, 3];
    record.extend_from_slice(&len.to_be_bytes());
    record.resize(5 + usize::from(len), 0xa5);
    record
}

/// TCP flags of a segment.
#[derive(Clone, Copy, Default)]
struct Flags {
    syn: bool,
    fin: bool,
    rst: bool,
}

/// One TCP connection: its two ends and the next sequence number of each direction, so that
/// consecutive segments are contiguous as a real stack sends them.
struct Conn {
    client: ([u8; 4], u16),
    server: ([u8; 4], u16),
    client_seq: u32,
    server_seq: u32,
}

impl Conn {
    fn new(client_port: u16, server_port: u16) -> Self {
        Self {
            client: ([192, 0, 2, 10], client_port),
            server: ([198, 51, 100, 20], server_port),
            client_seq: 1_000_000,
            server_seq: 3_000_000_000,
        }
    }

    fn endpoint((addr, port): ([u8; 4], u16)) -> Endpoint {
        Endpoint {
            addr: IpAddr::V4(Ipv4Addr::from(addr)),
            port,
        }
    }

    fn client_end(&self) -> Endpoint {
        Self::endpoint(self.client)
    }

    fn server_end(&self) -> Endpoint {
        Self::endpoint(self.server)
    }

    /// The Ethernet frame of the next segment one way, with `payload`; advances that direction's
    /// sequence number by what the segment occupies (payload, SYN, FIN).
    fn frame(&mut self, from_client: bool, flags: Flags, payload: &[u8]) -> Vec<u8> {
        let (src, dst, src_mac, dst_mac) = if from_client {
            (self.client, self.server, CLIENT_MAC, SERVER_MAC)
        } else {
            (self.server, self.client, SERVER_MAC, CLIENT_MAC)
        };
        let (seq, ack) = if from_client {
            (self.client_seq, self.server_seq)
        } else {
            (self.server_seq, self.client_seq)
        };
        let mut builder = PacketBuilder::ethernet2(src_mac, dst_mac)
            .ipv4(src.0, dst.0, 64)
            .tcp(src.1, dst.1, seq, 64_240);
        // A client's first SYN acknowledges nothing; every other segment does.
        if !(flags.syn && from_client) {
            builder = builder.ack(ack);
        }
        if flags.syn {
            builder = builder.syn();
        }
        if flags.fin {
            builder = builder.fin();
        }
        if flags.rst {
            builder = builder.rst();
        }
        if !payload.is_empty() {
            builder = builder.psh();
        }
        let mut frame = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut frame, payload).unwrap();
        let used = payload.len() as u32 + u32::from(flags.syn) + u32::from(flags.fin);
        let next = if from_client {
            &mut self.client_seq
        } else {
            &mut self.server_seq
        };
        *next = next.wrapping_add(used);
        frame
    }
}

/// A capture: frames at their times, fed to a table in order.
#[derive(Default)]
struct Capture {
    frames: Vec<(u64, Vec<u8>)>,
}

impl Capture {
    fn send(&mut self, conn: &mut Conn, at: u64, from_client: bool, flags: Flags, payload: &[u8]) {
        let frame = conn.frame(from_client, flags, payload);
        self.frames.push((at, frame));
    }

    /// SYN, SYN-ACK and ACK at `at`.
    fn handshake(&mut self, conn: &mut Conn, at: u64) {
        let syn = Flags {
            syn: true,
            ..Flags::default()
        };
        self.send(conn, at, true, syn, &[]);
        self.send(conn, at, false, syn, &[]);
        self.send(conn, at, true, Flags::default(), &[]);
    }

    /// A TLS record of `len` bytes one way, as one segment; returns its signed length as the
    /// table reports it (+ server to client).
    fn record(&mut self, conn: &mut Conn, at: u64, from_client: bool, len: u16) -> i32 {
        self.send(conn, at, from_client, Flags::default(), &tls_record(len));
        if from_client { -i32::from(len) } else { i32::from(len) }
    }

    /// Feeds every frame to `table` (decoded as a capture's would be), returning the events.
    fn feed(&self, table: &mut FlowTable) -> Vec<FlowEvent> {
        let mut events = Vec::new();
        for (at, frame) in &self.frames {
            let segment = decode(LinkType::Ethernet, frame).expect("etherparse's frame decodes");
            table.process(*at, &segment, &mut events);
        }
        events
    }
}

/// The flows of `events` that ended, in the order they ended.
fn finished(events: Vec<FlowEvent>) -> Vec<FlowRecord> {
    events
        .into_iter()
        .filter_map(|event| match event {
            FlowEvent::Finished(flow) => Some(flow),
            FlowEvent::Early(_) => None,
        })
        .collect()
}

/// Runs the whole capture through a table of `config`, then ends what is left (end of input).
fn flows_of(capture: &Capture, config: FlowConfig) -> Vec<FlowRecord> {
    let mut table = FlowTable::new(config);
    let mut events = capture.feed(&mut table);
    table.finish(&mut events);
    finished(events)
}

#[test]
fn an_active_timeout_ends_a_flow_that_keeps_sending() {
    let active = 10 * SECOND;
    let mut conn = Conn::new(51_000, 443);
    let mut capture = Capture::default();
    capture.handshake(&mut conn, T0);
    // A record each way every second for 25 s: never idle (the idle timeout is 120 s), so only
    // the active timeout can end the flow before its FINs.
    let mut sent: Vec<(u64, i32)> = Vec::new();
    for second in 1..=25 {
        let at = T0 + second * SECOND;
        sent.push((at, capture.record(&mut conn, at, true, 100 + second as u16)));
        sent.push((at, capture.record(&mut conn, at, false, 1_000 + second as u16)));
    }
    let end = T0 + 26 * SECOND;
    for from_client in [true, false] {
        let fin = Flags {
            fin: true,
            ..Flags::default()
        };
        capture.send(&mut conn, end, from_client, fin, &[]);
    }
    let config = FlowConfig {
        active_timeout_ns: active,
        ..FlowConfig::default()
    };
    let flows = flows_of(&capture, config.clone());

    // Control: with the default timeout (1800 s) the same packets are one flow, ended by its FINs.
    let whole = flows_of(&capture, FlowConfig::default());
    assert_eq!(whole.len(), 1);
    assert_eq!(whole[0].end, Some(EndReason::Fin));
    assert_eq!(whole[0].records, sent.iter().map(|(_, r)| *r).collect::<Vec<_>>());

    // The first packet at or past 10 s after a flow's first ends it and starts the next: flows
    // from 0 s, 10 s and 20 s; the last ends with the FINs.
    let ends: Vec<_> = flows.iter().map(|f| f.end).collect();
    assert_eq!(
        ends,
        [Some(EndReason::Active), Some(EndReason::Active), Some(EndReason::Fin)]
    );
    let starts: Vec<u64> = flows.iter().map(|f| f.first_ns - T0).collect();
    assert_eq!(starts, [0, 10 * SECOND, 20 * SECOND]);
    for flow in &flows {
        assert!(flow.last_ns - flow.first_ns < active, "{flow:?}");
        // Both sides stay where they were: the later flows have no SYN, and 443 is a server port.
        assert_eq!((flow.client, flow.server), (conn.client_end(), conn.server_end()));
    }
    assert!(!flows[0].flags.mid_stream);
    assert!(
        flows[1..]
            .iter()
            .all(|f| f.flags.mid_stream && f.server_by == ServerBy::Port)
    );
    // Each flow has exactly the records sent in its 10 s, and every packet is in one flow.
    for (flow, start) in flows.iter().zip(&starts) {
        let window = T0 + start..T0 + start + active;
        let expected: Vec<i32> = sent
            .iter()
            .filter(|(at, _)| window.contains(at))
            .map(|(_, r)| *r)
            .collect();
        assert_eq!(flow.records, expected);
    }
    let packets: u64 = flows.iter().map(|f| f.counters.packets()).sum();
    assert_eq!(packets, capture.frames.len() as u64);
}

#[test]
fn a_rst_ends_a_flow_and_says_so() {
    for rst_from_client in [true, false] {
        let mut conn = Conn::new(52_000, 443);
        let mut capture = Capture::default();
        capture.handshake(&mut conn, T0);
        let records = vec![
            capture.record(&mut conn, T0 + SECOND, true, 517),
            capture.record(&mut conn, T0 + SECOND, false, 4_000),
            capture.record(&mut conn, T0 + 2 * SECOND, true, 80),
        ];
        let before_rst = capture.frames.len();
        let rst_at = T0 + 3 * SECOND;
        let rst = Flags {
            rst: true,
            ..Flags::default()
        };
        capture.send(&mut conn, rst_at, rst_from_client, rst, &[]);
        let config = FlowConfig::default();
        // Past the linger after a close, and far before the idle timeout (120 s).
        let after_linger = rst_at + config.fin_linger_ns + 1;
        assert!(after_linger < rst_at + config.idle_timeout_ns);

        let mut table = FlowTable::new(config.clone());
        let mut events = capture.feed(&mut table);
        assert!(
            finished(std::mem::take(&mut events)).is_empty(),
            "the flow lingers first"
        );
        assert_eq!(table.len(), 1);
        table.advance(after_linger, &mut events);
        let flows = finished(events);
        assert_eq!(
            flows.len(),
            1,
            "the RST ended the flow (from the client: {rst_from_client})"
        );
        assert_eq!(flows[0].end, Some(EndReason::Rst));
        assert_eq!(flows[0].records, records);
        assert_eq!(flows[0].last_ns, rst_at);
        assert_eq!(flows[0].counters.packets(), capture.frames.len() as u64);
        assert!(table.is_empty());

        // Control: the same connection without its RST is still open at that time.
        let mut table = FlowTable::new(config);
        let mut events = Capture {
            frames: capture.frames[..before_rst].to_vec(),
        }
        .feed(&mut table);
        table.advance(after_linger, &mut events);
        assert!(finished(events).is_empty());
        assert_eq!(table.len(), 1);
    }
}

#[test]
fn a_flow_first_seen_mid_stream_gets_its_server_from_server_ports() {
    // The server listens on a port above the client's, so the fallback (the lower port is the
    // server's) would take the wrong side; and the first packet seen comes from the server.
    let server_port = 60_443;
    let mut conn = Conn::new(40_000, server_port);
    let mut capture = Capture::default();
    let at = |ms: u64| T0 + ms * 1_000_000;
    let signed = vec![
        capture.record(&mut conn, at(0), false, 1_200),
        capture.record(&mut conn, at(5), true, 80),
        capture.record(&mut conn, at(10), false, 3_000),
        capture.record(&mut conn, at(15), false, 700),
        capture.record(&mut conn, at(20), true, 40),
    ];
    assert_eq!(signed, [1_200, -80, 3_000, 700, -40]);

    let config = FlowConfig {
        server_ports: vec![server_port],
        ..FlowConfig::default()
    };
    let flows = flows_of(&capture, config);
    assert_eq!(flows.len(), 1);
    let flow = &flows[0];
    assert!(flow.flags.mid_stream);
    assert_eq!(flow.server_by, ServerBy::Port);
    assert_eq!((flow.client, flow.server), (conn.client_end(), conn.server_end()));
    assert_eq!(flow.records, signed, "+ server to client, - client to server");
    assert_eq!((flow.counters.packets_c2s, flow.counters.packets_s2c), (2, 3));

    // Control: without the port listed, the lower port is taken as the server's, so the sides
    // and every record's sign flip.
    let guessed = flows_of(&capture, FlowConfig::default());
    assert_eq!(guessed.len(), 1);
    assert_eq!(guessed[0].server_by, ServerBy::Guess);
    assert_eq!(
        (guessed[0].client, guessed[0].server),
        (conn.server_end(), conn.client_end())
    );
    assert_eq!(guessed[0].records, signed.iter().map(|r| -r).collect::<Vec<_>>());
}

#[test]
fn an_idle_timeout_ends_a_flow() {
    let idle = 5 * SECOND;
    let config = FlowConfig {
        idle_timeout_ns: idle,
        ..FlowConfig::default()
    };
    let mut conn = Conn::new(53_000, 443);
    let mut capture = Capture::default();
    capture.handshake(&mut conn, T0);
    let records = vec![
        capture.record(&mut conn, T0 + SECOND, true, 517),
        capture.record(&mut conn, T0 + SECOND, false, 2_500),
    ];
    let last = T0 + SECOND;

    let mut table = FlowTable::new(config);
    let mut events = capture.feed(&mut table);
    // Quiet for less than the timeout: still open.
    table.advance(last + idle - SECOND, &mut events);
    assert!(finished(std::mem::take(&mut events)).is_empty());
    assert_eq!(table.len(), 1);
    // Quiet for longer: ended, as idle, with everything it had.
    table.advance(last + idle + SECOND, &mut events);
    let flows = finished(std::mem::take(&mut events));
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].end, Some(EndReason::Idle));
    assert_eq!(flows[0].last_ns, last);
    assert_eq!(flows[0].records, records);
    assert!(!flows[0].flags.mid_stream);
    assert!(table.is_empty());

    // The connection's next packet starts a new flow, which has not seen the SYN; the server
    // side still comes from port 443.
    let mut later = Capture::default();
    let next = later.record(&mut conn, last + idle + 2 * SECOND, false, 900);
    let mut events = later.feed(&mut table);
    table.finish(&mut events);
    let flows = finished(events);
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].end, Some(EndReason::EndOfInput));
    assert!(flows[0].flags.mid_stream);
    assert_eq!(flows[0].records, [next]);
    assert_eq!(table.stats().flows_created, 2);

    // Control: with the default timeout (120 s) the same quiet leaves the flow open.
    let mut table = FlowTable::new(FlowConfig::default());
    let mut events = capture.feed(&mut table);
    table.advance(last + idle + SECOND, &mut events);
    assert!(finished(events).is_empty());
    assert_eq!(table.len(), 1);
}
