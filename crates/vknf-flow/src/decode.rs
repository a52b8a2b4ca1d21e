//! Link, network and TCP decoding of one captured frame.
//!
//! The link layer is peeled here (Ethernet with VLAN tags, Linux cooked capture SLL and SLL2,
//! BSD/Linux loopback "NULL"/"LOOP", raw IP). The common case, a TCP segment in an IPv4 packet
//! without fragmentation or an IPv6 packet without extension headers, whose headers are all
//! captured and consistent, is read by a short fast path ([`decode`]); everything else (IP
//! fragments, IPv6 extension headers, odd lengths, cut headers, other protocols) goes to
//! etherparse's lax slicer, which decodes IPv4/IPv6 and TCP zero-copy ([`decode_with_etherparse`]).
//! Where the fast path answers, it answers exactly what etherparse's path would (checked by a
//! property test and by the `packet_flow` fuzz target). Lengths come from the IP header, never from the frame: Ethernet pads short
//! frames to 60 bytes, and a snaplen can cut a frame short, and both must not change what the
//! reassembler believes the sender sent.

use std::net::IpAddr;

use etherparse::{EtherType, LaxNetSlice, LaxSlicedPacket, TransportSlice};

/// Link-layer header types this crate decodes (values are the pcap `LINKTYPE_*` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// `LINKTYPE_NULL` (0): 4-byte address family in the capturing host's byte order.
    Null,
    /// `LINKTYPE_ETHERNET` (1), with 802.1Q/802.1ad tags.
    Ethernet,
    /// `LINKTYPE_RAW` (101; also 12 and 14 on some systems): a bare IPv4 or IPv6 packet.
    Raw,
    /// `LINKTYPE_LOOP` (108): like `Null`, family in network byte order.
    Loop,
    /// `LINKTYPE_LINUX_SLL` (113): Linux cooked capture, version 1 (`tcpdump -i any`, older).
    LinuxSll,
    /// `LINKTYPE_IPV4` (228).
    Ipv4,
    /// `LINKTYPE_IPV6` (229).
    Ipv6,
    /// `LINKTYPE_LINUX_SLL2` (276): Linux cooked capture, version 2 (`tcpdump -i any`, newer).
    LinuxSll2,
}

impl LinkType {
    /// The link type of a pcap `LINKTYPE_*` / `DLT_*` number, `None` when not supported.
    pub fn from_linktype(value: i32) -> Option<Self> {
        Some(match value {
            0 => Self::Null,
            1 => Self::Ethernet,
            12 | 14 | 101 => Self::Raw,
            108 => Self::Loop,
            113 => Self::LinuxSll,
            228 => Self::Ipv4,
            229 => Self::Ipv6,
            276 => Self::LinuxSll2,
            _ => return None,
        })
    }
}

/// Why a frame was not turned into a TCP segment; each is counted in [`crate::Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The capture's link type is not one of [`LinkType`].
    UnsupportedLink,
    /// The frame ended inside a link, IP or TCP header, or a header's length field is impossible.
    Malformed,
    /// Not IPv4/IPv6 (ARP, ...).
    NotIp,
    /// IP but not TCP (UDP, ICMP, ...).
    NotTcp,
    /// An IP fragment: TLS over fragmented TCP is not reassembled at the IP level.
    Fragment,
}

/// One decoded TCP segment, borrowing the frame's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// SYN flag.
    pub syn: bool,
    /// ACK flag.
    pub ack: bool,
    /// FIN flag.
    pub fin: bool,
    /// RST flag.
    pub rst: bool,
    /// The IP packet's length by its header (IPv4 total length, IPv6 40 + payload length).
    pub ip_len: u32,
    /// The TCP payload length by the IP header, which may exceed `payload.len()` when the
    /// capture's snaplen cut the frame.
    pub payload_len: u32,
    /// The captured part of the payload (never Ethernet padding).
    pub payload: &'a [u8],
}

impl TcpSegment<'_> {
    /// True when the snaplen cut part of the payload.
    pub fn is_cut(&self) -> bool {
        (self.payload.len() as u64) < u64::from(self.payload_len)
    }
}

/// Decodes one frame of the given link type into a TCP segment.
#[inline]
pub fn decode(link: LinkType, frame: &[u8]) -> Result<TcpSegment<'_>, DropReason> {
    if let Some(segment) = fast_path(link, frame) {
        return Ok(segment);
    }
    decode_with_etherparse(link, frame)
}

/// Decodes one frame and hands the segment to `then` by reference: [`decode`] for a caller that
/// only looks at the segment. On the packet path this matters: a segment returned by value is
/// built on the stack and then copied, in 8-byte words over fields written a byte or two at a time,
/// and such a copy stalls (the loads cannot be forwarded from the pending stores); handed out
/// where it was built, it is not copied.
#[inline]
pub fn decode_then<R>(link: LinkType, frame: &[u8], then: impl FnOnce(&TcpSegment<'_>) -> R) -> Result<R, DropReason> {
    match fast_path(link, frame) {
        Some(segment) => Ok(then(&segment)),
        None => decode_with_etherparse(link, frame).map(|segment| then(&segment)),
    }
}

const ETHER_IPV4: u16 = 0x0800;
const ETHER_IPV6: u16 = 0x86dd;
const ETHER_VLAN: [u16; 3] = [0x8100, 0x88a8, 0x9100];

/// The common case without etherparse: `None` whenever anything is unusual, and the caller then
/// takes etherparse's path, which decides what the frame is.
#[inline]
fn fast_path(link: LinkType, frame: &[u8]) -> Option<TcpSegment<'_>> {
    let (ether_type, ip) = match link {
        LinkType::Ethernet => {
            let mut ether_type = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
            let mut at = 14;
            // At most two tags (802.1ad outer, 802.1Q inner); deeper stacks go the long way.
            for _ in 0..2 {
                if !ETHER_VLAN.contains(&ether_type) {
                    break;
                }
                ether_type = u16::from_be_bytes([*frame.get(at + 2)?, *frame.get(at + 3)?]);
                at += 4;
            }
            (ether_type, frame.get(at..)?)
        }
        LinkType::Raw | LinkType::Ipv4 | LinkType::Ipv6 => match frame.first()? >> 4 {
            4 => (ETHER_IPV4, frame),
            6 => (ETHER_IPV6, frame),
            _ => return None,
        },
        LinkType::LinuxSll => (u16::from_be_bytes([*frame.get(14)?, *frame.get(15)?]), frame.get(16..)?),
        LinkType::LinuxSll2 => (u16::from_be_bytes([*frame.first()?, *frame.get(1)?]), frame.get(20..)?),
        LinkType::Null | LinkType::Loop => return None,
    };
    match ether_type {
        ETHER_IPV4 => fast_ipv4(ip),
        ETHER_IPV6 => fast_ipv6(ip),
        _ => None,
    }
}

#[inline]
fn fast_ipv4(ip: &[u8]) -> Option<TcpSegment<'_>> {
    let header: &[u8; 20] = ip.get(..20)?.try_into().ok()?;
    let ihl = usize::from(header[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    // Version 4, protocol TCP, neither more fragments nor an offset (the DF bit may be set).
    let not_fragment = u16::from_be_bytes([header[6], header[7]]) & 0x3fff == 0;
    if header[0] >> 4 != 4 || ihl < 20 || header[9] != 6 || !not_fragment {
        return None;
    }
    let src = std::net::Ipv4Addr::from([header[12], header[13], header[14], header[15]]);
    let dst = std::net::Ipv4Addr::from([header[16], header[17], header[18], header[19]]);
    fast_tcp(ip, ihl, total_len, IpAddr::V4(src), IpAddr::V4(dst))
}

#[inline]
fn fast_ipv6(ip: &[u8]) -> Option<TcpSegment<'_>> {
    let header: &[u8; 40] = ip.get(..40)?.try_into().ok()?;
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    // Version 6 and TCP as the very next header; a zero payload length (jumbogram) goes the long way.
    if header[0] >> 4 != 6 || header[6] != 6 || payload_len == 0 {
        return None;
    }
    let src: [u8; 16] = header[8..24].try_into().ok()?;
    let dst: [u8; 16] = header[24..40].try_into().ok()?;
    fast_tcp(ip, 40, 40 + payload_len, IpAddr::V6(src.into()), IpAddr::V6(dst.into()))
}

/// The TCP header at `ip[l4..]`, inside an IP packet of `total_len` bytes by its header.
#[inline]
fn fast_tcp(ip: &[u8], l4: usize, total_len: usize, src: IpAddr, dst: IpAddr) -> Option<TcpSegment<'_>> {
    // The packet as captured, without Ethernet padding.
    let packet = ip.get(..total_len.min(ip.len()))?;
    let tcp = packet.get(l4..l4 + 20)?;
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    if data_offset < 20 || l4 + data_offset > packet.len() {
        return None;
    }
    let flags = tcp[13];
    Some(TcpSegment {
        src,
        dst,
        src_port: u16::from_be_bytes([tcp[0], tcp[1]]),
        dst_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        syn: flags & 0x02 != 0,
        ack: flags & 0x10 != 0,
        fin: flags & 0x01 != 0,
        rst: flags & 0x04 != 0,
        ip_len: u32::try_from(total_len).ok()?,
        payload_len: u32::try_from(total_len - l4 - data_offset).ok()?,
        payload: &packet[l4 + data_offset..],
    })
}

/// Decodes one frame through etherparse's lax slicer only, without the fast path: what
/// [`decode`] answers for frames the fast path does not take, and the reference the fast path
/// is checked against.
pub fn decode_with_etherparse(link: LinkType, frame: &[u8]) -> Result<TcpSegment<'_>, DropReason> {
    let (ether_type, rest) = match link {
        LinkType::Ethernet => {
            // Ethernet II: the lax slicer also walks VLAN tags.
            let packet = LaxSlicedPacket::from_ethernet(frame).map_err(|_| DropReason::Malformed)?;
            return from_sliced(packet);
        }
        LinkType::LinuxSll => {
            // 16 bytes: packet type, ARPHRD, address length, 8 address bytes, protocol.
            let header = frame.get(..16).ok_or(DropReason::Malformed)?;
            (u16::from_be_bytes([header[14], header[15]]), &frame[16..])
        }
        LinkType::LinuxSll2 => {
            // 20 bytes: protocol first, then reserved, interface index, ARPHRD, type, address.
            let header = frame.get(..20).ok_or(DropReason::Malformed)?;
            (u16::from_be_bytes([header[0], header[1]]), &frame[20..])
        }
        LinkType::Null | LinkType::Loop => {
            let header = frame.get(..4).ok_or(DropReason::Malformed)?;
            let bytes = [header[0], header[1], header[2], header[3]];
            // NULL is in the writer's byte order, which the file does not say: a family is a small
            // number, so whichever order gives one is the right one.
            let family = match link {
                LinkType::Loop => u32::from_be_bytes(bytes),
                _ => {
                    let le = u32::from_le_bytes(bytes);
                    if le <= 0xffff { le } else { u32::from_be_bytes(bytes) }
                }
            };
            let ether_type = match family {
                2 => EtherType::IPV4.0,
                // AF_INET6 differs between BSDs, macOS and Linux.
                10 | 24 | 28 | 30 => EtherType::IPV6.0,
                _ => return Err(DropReason::NotIp),
            };
            (ether_type, &frame[4..])
        }
        LinkType::Raw | LinkType::Ipv4 | LinkType::Ipv6 => {
            let version = frame.first().ok_or(DropReason::Malformed)? >> 4;
            let ether_type = match version {
                4 => EtherType::IPV4.0,
                6 => EtherType::IPV6.0,
                _ => return Err(DropReason::NotIp),
            };
            (ether_type, frame)
        }
    };
    from_sliced(LaxSlicedPacket::from_ether_type(EtherType(ether_type), rest))
}

fn from_sliced(packet: LaxSlicedPacket<'_>) -> Result<TcpSegment<'_>, DropReason> {
    let (src, dst, ip_len, ip_start, payload) = match &packet.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let header = ip.header();
            (
                IpAddr::V4(header.source_addr()),
                IpAddr::V4(header.destination_addr()),
                u32::from(header.total_len()),
                header.slice().as_ptr(),
                ip.payload(),
            )
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let header = ip.header();
            (
                IpAddr::V6(header.source_addr()),
                IpAddr::V6(header.destination_addr()),
                40 + u32::from(header.payload_length()),
                header.slice().as_ptr(),
                ip.payload(),
            )
        }
        Some(LaxNetSlice::Arp(_)) => return Err(DropReason::NotIp),
        None => {
            return Err(match packet.stop_err {
                Some(_) => DropReason::Malformed,
                None => DropReason::NotIp,
            });
        }
    };
    if payload.fragmented {
        return Err(DropReason::Fragment);
    }
    if payload.ip_number != etherparse::IpNumber::TCP {
        return Err(DropReason::NotTcp);
    }
    let tcp = match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => tcp,
        _ => return Err(DropReason::Malformed),
    };
    // Offsets within one frame: the IP header, its extensions and the TCP header precede the
    // payload, so the declared payload is what the IP length leaves after them.
    let header_bytes = (tcp.payload().as_ptr() as usize).saturating_sub(ip_start as usize) as u64;
    let payload_len = u64::from(ip_len)
        .checked_sub(header_bytes)
        .ok_or(DropReason::Malformed)?;
    let payload_len = u32::try_from(payload_len).map_err(|_| DropReason::Malformed)?;
    let captured = tcp.payload();
    // The lax slicer already cut the slice at the IP length (padding); keep the guarantee local.
    let payload = &captured[..captured.len().min(payload_len as usize)];
    Ok(TcpSegment {
        src,
        dst,
        src_port: tcp.source_port(),
        dst_port: tcp.destination_port(),
        seq: tcp.sequence_number(),
        syn: tcp.syn(),
        ack: tcp.ack(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        ip_len,
        payload_len,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A frame of `link` around an IPv4 or IPv6 header and a TCP header with the given fields,
    /// then cut or padded, and some bytes overwritten: mostly well-formed, often not.
    fn frame_strategy() -> impl Strategy<Value = (LinkType, Vec<u8>)> {
        let link = prop_oneof![
            Just(LinkType::Ethernet),
            Just(LinkType::Raw),
            Just(LinkType::LinuxSll),
            Just(LinkType::LinuxSll2),
            Just(LinkType::Null),
        ];
        (
            link,
            0usize..3,                                                              // VLAN tags
            any::<bool>(),                                                          // IPv6
            5u8..8,                                                                 // IHL
            prop_oneof![Just(6u8), Just(17u8), Just(0u8), Just(44u8), any::<u8>()], // protocol / next header
            prop_oneof![Just(0u16), Just(0x4000u16), any::<u16>()],                 // flags and fragment offset
            prop_oneof![Just(5u8), 0u8..16],                                        // TCP data offset
            any::<[u8; 20]>(),                                                      // TCP fixed header
            prop::collection::vec(any::<u8>(), 0..64),                              // payload
            -8i32..8,                                                               // error of the IP length field
            prop::option::of(0usize..120),                                          // snaplen cut
            prop::collection::vec((0usize..120, any::<u8>()), 0..3),                // byte overwrites
        )
            .prop_map(
                |(link, tags, v6, ihl, proto, frag, doff, tcp_fixed, payload, len_error, cut, overwrites)| {
                    let mut tcp = tcp_fixed.to_vec();
                    tcp[12] = doff << 4;
                    tcp.resize(usize::from(doff.max(5)) * 4, 0);
                    tcp.extend_from_slice(&payload);
                    let mut ip = Vec::new();
                    if v6 {
                        let len = (tcp.len() as i32 + len_error).clamp(0, 0xffff) as u16;
                        ip.extend_from_slice(&[0x60, 0, 0, 0]);
                        ip.extend_from_slice(&len.to_be_bytes());
                        ip.extend_from_slice(&[proto, 64]);
                        ip.extend((0..32).map(|i| i as u8));
                    } else {
                        let header = usize::from(ihl) * 4;
                        let len = ((header + tcp.len()) as i32 + len_error).clamp(0, 0xffff) as u16;
                        ip.extend_from_slice(&[0x40 | ihl, 0]);
                        ip.extend_from_slice(&len.to_be_bytes());
                        ip.extend_from_slice(&[0, 1]);
                        ip.extend_from_slice(&frag.to_be_bytes());
                        ip.extend_from_slice(&[64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
                        ip.resize(header, 1);
                    }
                    ip.extend_from_slice(&tcp);
                    let ether_type: u16 = if v6 { ETHER_IPV6 } else { ETHER_IPV4 };
                    let mut frame = Vec::new();
                    match link {
                        LinkType::Ethernet => {
                            frame.extend_from_slice(&[0; 12]);
                            for _ in 0..tags {
                                frame.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
                            }
                            frame.extend_from_slice(&ether_type.to_be_bytes());
                        }
                        LinkType::LinuxSll => {
                            frame.extend_from_slice(&[0; 14]);
                            frame.extend_from_slice(&ether_type.to_be_bytes());
                        }
                        LinkType::LinuxSll2 => {
                            frame.extend_from_slice(&ether_type.to_be_bytes());
                            frame.extend_from_slice(&[0; 18]);
                        }
                        LinkType::Null => frame.extend_from_slice(&(if v6 { 10u32 } else { 2 }).to_le_bytes()),
                        _ => {}
                    }
                    frame.extend_from_slice(&ip);
                    // Ethernet pads short frames.
                    if link == LinkType::Ethernet && frame.len() < 60 {
                        frame.resize(60, 0);
                    }
                    if let Some(cut) = cut {
                        frame.truncate(cut);
                    }
                    for (at, byte) in overwrites {
                        if let Some(b) = frame.get_mut(at) {
                            *b = byte;
                        }
                    }
                    (link, frame)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// The fast path never answers differently from etherparse's path.
        #[test]
        fn fast_path_agrees_with_etherparse((link, frame) in frame_strategy()) {
            prop_assert_eq!(decode(link, &frame), decode_with_etherparse(link, &frame));
        }
    }

    #[test]
    fn the_fast_path_takes_common_frames() {
        // A 54-byte IPv4 TCP ACK padded to 60 bytes by Ethernet, and an IPv6 one.
        let mut v4 = vec![0u8; 12];
        v4.extend_from_slice(&[
            0x08, 0x00, 0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        v4.extend_from_slice(&[
            0x01, 0xbb, 0x9c, 0x40, 0, 0, 0, 9, 0, 0, 0, 0, 0x50, 0x10, 0, 0, 0, 0, 0, 0,
        ]);
        v4.resize(60, 0);
        let segment = fast_path(LinkType::Ethernet, &v4).expect("fast path");
        assert_eq!((segment.src_port, segment.dst_port, segment.seq), (443, 40000, 9));
        assert_eq!((segment.payload_len, segment.payload.len(), segment.ip_len), (0, 0, 40));
        assert!(segment.ack && !segment.syn);
        let mut v6 = vec![0x60, 0, 0, 0, 0, 23, 6, 64];
        v6.extend((0..32).map(|i| i as u8));
        v6.extend_from_slice(&[
            0x01, 0xbb, 0x9c, 0x40, 0, 0, 0, 9, 0, 0, 0, 0, 0x50, 0x18, 0, 0, 0, 0, 0, 0,
        ]);
        v6.extend_from_slice(&[0x17, 3, 3]);
        let segment = fast_path(LinkType::Raw, &v6).expect("fast path");
        assert_eq!(
            (segment.payload_len, segment.payload, segment.ip_len),
            (3, &[0x17u8, 3, 3][..], 63)
        );
        assert_eq!(decode_with_etherparse(LinkType::Raw, &v6), Ok(segment));
    }
}
