#!/usr/bin/env bash
# Call 6 (2026-12-03, issue 10): call 5 lost no packet with the default 64 MiB ring up to the 1.8 M
# packets/s that 8 tcpreplay processes push through one veth pair; here the ring's size at that rate
# (8 generators at top speed, 1 shard): 2 (libpcap's default), 4, 8, 16 and 32 MiB.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
F=$PWD/.device/flows; L=$PWD/.device/live
mkdir -p /tmp/tr && for deb in $L/*.deb; do dpkg -x $deb /tmp/tr; done
# The host has no iproute2: its `ip` and libraries travel too.
export PATH=/tmp/tr/usr/bin:$L/ip:$PATH
export LD_LIBRARY_PATH=/tmp/tr/usr/lib/x86_64-linux-gnu:$F/lib:$L/ip/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
id -u; tcpreplay --version 2>&1 | head -1; ip -V; ip netns add vknf-probe && ip netns del vknf-probe && echo "netns ok"
python3 bench/flows/replicate_capture.py $F/base.pcap /tmp/replay.pcap --min-packets 300000 | tail -1
for ring in 2 4 8 16 32; do
  echo "== live: 8 generators, 1 shard, ring $ring MiB"
  BUFFER_MB=$ring GENERATORS=8 LIVE_FLOWS=$L/live_flows REPLAY=/tmp/replay.pcap timeout 120 \
    bash bench/flows/run_live_bench.sh /tmp/replay.pcap /tmp/live-ring$ring max 1
done
date -u; uptime
