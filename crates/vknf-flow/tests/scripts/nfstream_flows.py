#!/usr/bin/env python3
"""Prints NFStream's TCP flows of a capture file as JSON lines (5-tuple, packets, IP bytes), for
vknf-flow's flow-count parity test. NFStream's timeouts are its defaults (idle 120 s, active
1800 s), which vknf's FlowConfig defaults repeat; accounting_mode=1 counts IP bytes."""

import json
import sys

from nfstream import NFStreamer

for flow in NFStreamer(source=sys.argv[1], statistical_analysis=False, n_dissections=0, accounting_mode=1):
    if flow.protocol != 6:
        continue
    print(json.dumps({
        "src_ip": flow.src_ip, "src_port": flow.src_port, "dst_ip": flow.dst_ip, "dst_port": flow.dst_port,
        "packets": flow.bidirectional_packets, "bytes": flow.bidirectional_bytes,
    }))
