#!/usr/bin/env python3
"""Replicates a real TLS capture into many flows with distinct 5-tuples, for the traffic path's
benchmark: every packet of the output is a packet of the input, byte for byte, except the client's
IP address (one per copy: 10.0.0.0/8 for IPv4, fd00::/64 for IPv6), with the IPv4 header and TCP
checksums updated for it (RFC 1624). Copy k is shifted by k x --gap-us, and the copies are merged
by time, so that flows overlap as on a busy link.

Input: a pcap file (Ethernet, as `tcpdump -i lo` writes). Output: a pcap file with nanosecond
timestamps. The client of a flow is the sender of its SYN (or, without one, the higher port).

Usage: replicate_capture.py IN.pcap OUT.pcap [--min-packets N] [--gap-us G]
"""

import argparse
import math
import struct
import sys


def read_pcap(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = data[:4]
    formats = {
        b"\xd4\xc3\xb2\xa1": ("<", 1000),
        b"\xa1\xb2\xc3\xd4": (">", 1000),
        b"\x4d\x3c\xb2\xa1": ("<", 1),
        b"\xa1\xb2\x3c\x4d": (">", 1),
    }
    if magic not in formats:
        sys.exit(f"{path}: not a pcap file (pcapng is not read here; convert with editcap -F pcap)")
    endian, frac_ns = formats[magic]
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    if linktype != 1:
        sys.exit(f"{path}: link type {linktype}, expected Ethernet (1)")
    packets = []
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, caplen, origlen = struct.unpack(endian + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + caplen]
        if len(frame) < caplen:
            sys.exit(f"{path}: truncated at byte {offset}")
        packets.append((sec * 1_000_000_000 + frac * frac_ns, frame, origlen))
        offset += 16 + caplen
    return packets


def csum_update(checksum, old, new):
    """RFC 1624: the one's-complement checksum after 16-bit words `old` became `new`."""
    total = (~checksum) & 0xFFFF
    for i in range(0, len(old), 2):
        total += (~int.from_bytes(old[i : i + 2], "big")) & 0xFFFF
        total += int.from_bytes(new[i : i + 2], "big")
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


class Template:
    """One input packet: where its client address and checksums are."""

    __slots__ = ("ts", "frame", "origlen", "version", "addr_at", "ip_csum_at", "tcp_csum_at")

    def __init__(self, ts, frame, origlen):
        self.ts, self.frame, self.origlen = ts, frame, origlen
        self.version = None


def parse(packets):
    templates = []
    clients = {}
    for ts, frame, origlen in packets:
        t = Template(ts, frame, origlen)
        templates.append(t)
        l3 = 14
        ether_type = struct.unpack(">H", frame[12:14])[0]
        while ether_type in (0x8100, 0x88A8) and len(frame) >= l3 + 4:
            ether_type = struct.unpack(">H", frame[l3 + 2 : l3 + 4])[0]
            l3 += 4
        if ether_type == 0x0800 and len(frame) >= l3 + 20 and frame[l3 + 9] == 6:
            ihl = (frame[l3] & 0x0F) * 4
            src, dst = frame[l3 + 12 : l3 + 16], frame[l3 + 16 : l3 + 20]
            l4, alen, src_at, dst_at = l3 + ihl, 4, l3 + 12, l3 + 16
            t.ip_csum_at = l3 + 10
        elif ether_type == 0x86DD and len(frame) >= l3 + 40 and frame[l3 + 6] == 6:
            src, dst = frame[l3 + 8 : l3 + 24], frame[l3 + 24 : l3 + 40]
            l4, alen, src_at, dst_at = l3 + 40, 16, l3 + 8, l3 + 24
            t.ip_csum_at = None
        else:
            continue
        if len(frame) < l4 + 20:
            continue
        sport, dport = struct.unpack(">HH", frame[l4 : l4 + 4])
        flags = frame[l4 + 13]
        a, b = (src, sport), (dst, dport)
        key = (min(a, b), max(a, b))
        if key not in clients:
            syn, ack = flags & 0x02, flags & 0x10
            if syn and not ack:
                clients[key] = a
            elif syn and ack:
                clients[key] = b
            else:
                clients[key] = a if sport > dport else b
        t.version = 4 if alen == 4 else 6
        t.addr_at = src_at if clients[key] == a else dst_at
        t.tcp_csum_at = l4 + 16
    return templates


def client_address(version, copy):
    if version == 4:
        return bytes([10, (copy >> 16) & 0xFF, (copy >> 8) & 0xFF, copy & 0xFF])
    return bytes([0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) + copy.to_bytes(4, "big")


def rewrite(t, copy):
    if t.version is None:
        return t.frame
    frame = bytearray(t.frame)
    alen = 4 if t.version == 4 else 16
    old = bytes(frame[t.addr_at : t.addr_at + alen])
    new = client_address(t.version, copy + 1)
    frame[t.addr_at : t.addr_at + alen] = new
    if t.ip_csum_at is not None:
        c = int.from_bytes(frame[t.ip_csum_at : t.ip_csum_at + 2], "big")
        frame[t.ip_csum_at : t.ip_csum_at + 2] = csum_update(c, old, new).to_bytes(2, "big")
    if len(frame) >= t.tcp_csum_at + 2:
        c = int.from_bytes(frame[t.tcp_csum_at : t.tcp_csum_at + 2], "big")
        frame[t.tcp_csum_at : t.tcp_csum_at + 2] = csum_update(c, old, new).to_bytes(2, "big")
    return bytes(frame)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--min-packets", type=int, default=1_000_000)
    parser.add_argument("--gap-us", type=int, default=20_000, help="time between the starts of two copies")
    args = parser.parse_args()
    templates = parse(read_pcap(args.input))
    if not templates:
        sys.exit(f"{args.input}: no packets")
    copies = math.ceil(args.min_packets / len(templates))
    if copies >= 1 << 24:
        sys.exit("too many copies for the 10.0.0.0/8 client addresses")
    first = templates[0].ts
    gap = args.gap_us * 1000
    order = sorted((t.ts - first + k * gap, k, i) for k in range(copies) for i, t in enumerate(templates))
    with open(args.output, "wb") as out:
        # pcap, nanosecond timestamps, Ethernet, snaplen 262144.
        out.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))
        for ts, k, i in order:
            t = templates[i]
            frame = rewrite(t, k)
            ts += first
            out.write(struct.pack("<IIII", ts // 1_000_000_000, ts % 1_000_000_000, len(frame), t.origlen))
            out.write(frame)
    print(f"{args.output}: {len(order)} packets, {copies} copies of {len(templates)} packets")


if __name__ == "__main__":
    main()
