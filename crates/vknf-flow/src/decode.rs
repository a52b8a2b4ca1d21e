//! Link, network and TCP decoding of one captured frame.
//!
//! The link layer is peeled here (Ethernet with VLAN tags, Linux cooked capture SLL and SLL2,
//! BSD/Linux loopback "NULL"/"LOOP", raw IP); etherparse's lax slicer then decodes IPv4/IPv6 and
//! TCP zero-copy. Lengths come from the IP header, never from the frame: Ethernet pads short
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
#[derive(Clone, Debug)]
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
pub fn decode(link: LinkType, frame: &[u8]) -> Result<TcpSegment<'_>, DropReason> {
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
