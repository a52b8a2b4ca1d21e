#!/usr/bin/env bash
# Call 4 (2026-12-03, issue 10). (1) Live capture on the GPU host's 16 cores, where generators can
# outrun one capture thread: bench/flows/run_live_bench.sh (a veth pair in a network namespace,
# tcpreplay sending the benchmark capture's real TLS packets, vknf's live pipeline capturing with the
# default 64 MiB ring) with 4 and 8 tcpreplay processes at once, 1 and 4 shards, up to --topspeed:
# where packets start to be lost. (2) The GPU classifier's flow rate again with the current build
# (bench-flows: the base capture's 124 flows replayed, labels checked against the CPU reference), GPU
# and the 16-core CPU loader.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
F=$PWD/.device/flows; L=$PWD/.device/live
mkdir -p /tmp/tr && for deb in $L/*.deb; do dpkg -x $deb /tmp/tr; done
export PATH=/tmp/tr/usr/bin:$PATH
export LD_LIBRARY_PATH=/tmp/tr/usr/lib/x86_64-linux-gnu:$F/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
id -u; tcpreplay --version 2>&1 | head -1; ip -V; ip netns add vknf-probe && ip netns del vknf-probe && echo "netns ok"
python3 bench/flows/replicate_capture.py $F/base.pcap /tmp/replay.pcap --min-packets 300000 | tail -1
echo "== bench-flows GPU"
timeout 120 $L/bench-flows --pcap $F/base.pcap --model $F/traffic.vkf --schema $F/traffic.schema.json --repeat 2000 \
  --batch-flows 256,1024,4096,16384 --json $OUT/flows-gpu.json 2>&1 | tail -8
echo "== bench-flows CPU"
timeout 120 $L/bench-flows --pcap $F/base.pcap --model $F/traffic.vkf --schema $F/traffic.schema.json --repeat 2000 \
  --batch-flows 256,1024,4096,16384 --cpu --json $OUT/flows-cpu.json 2>&1 | tail -8
for setting in "4 1" "4 4" "8 4"; do
  read -r gens shards <<< "$setting"
  echo "== live: $gens generators, $shards shards"
  GENERATORS=$gens LIVE_FLOWS=$L/live_flows REPLAY=/tmp/replay.pcap timeout 200 \
    bash bench/flows/run_live_bench.sh /tmp/replay.pcap $OUT/live-g$gens-s$shards 100000,250000,500000,max $shards
done
rm -f $OUT/live-*/replay.pcap
date -u; uptime
