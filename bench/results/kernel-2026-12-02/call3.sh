#!/usr/bin/env bash
# Call 3 (2026-12-02): whole batches poll for their completion up to 5 ms (WHOLE_BATCH_POLL) instead of
# 250 us (pipelined) or 50 us (one dispatch) before blocking in the driver; every shape against call 2's
# binary (bench-forest-old), with baselines. Then pcap to features with the benchmark built against
# glibc's malloc (bench_pcap_glibc, as before) and against jemalloc (bench_pcap, the `vknf` binary's
# allocator), alternating, one thread (--direct), 6 rounds of 5 runs.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash bench/run_gpu_shapes.sh table
W=/tmp/vknf-flows; mkdir -p $W
python3 bench/flows/replicate_capture.py .device/flows-base.pcap $W/tls-bench.pcap --min-packets 1000000 > "$OUT/capture.txt" 2>&1
{
  lscpu | grep 'Model name'; uptime
  for round in 1 2 3 4 5 6; do
    for bin in bench_pcap_glibc bench_pcap; do
      echo -n "round $round $bin: "
      timeout 60 .device/$bin $W/tls-bench.pcap --reps 5 --direct 2>&1 | tail -1
    done
  done
  uptime
} 2>&1 | tee "$OUT/log-allocator.txt"
rm -f $W/tls-bench.pcap
