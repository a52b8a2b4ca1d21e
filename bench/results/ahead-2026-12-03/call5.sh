#!/usr/bin/env bash
# Call 5 (2026-12-03, issue 10): call 4's live part again, with iproute2's `ip` and its libraries
# carried (call 4 found no `ip` on the host; its bench-flows figures are in call4/). Live capture on
# the GPU host's 16 cores, where generators can outrun one capture thread: bench/flows/run_live_bench.sh
# (a veth pair in a network namespace, tcpreplay sending the benchmark capture's real TLS packets,
# vknf's live pipeline capturing with the default 64 MiB ring) with 4 and 8 tcpreplay processes at
# once, 1 and 4 shards, up to --topspeed: where packets start to be lost.
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
for setting in "4 1" "4 4" "8 4"; do
  read -r gens shards <<< "$setting"
  echo "== live: $gens generators, $shards shards"
  GENERATORS=$gens LIVE_FLOWS=$L/live_flows REPLAY=/tmp/replay.pcap timeout 200 \
    bash bench/flows/run_live_bench.sh /tmp/replay.pcap $OUT/live-g$gens-s$shards 100000,250000,500000,max $shards
done
rm -f $OUT/live-*/replay.pcap
date -u; uptime
