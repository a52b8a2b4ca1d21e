#!/usr/bin/env bash
# Call 8 (2026-12-02, issue 10): the one-thread pcap-to-features rate on the GPU host again, three series
# of 15 runs (bench_pcap --direct, the build of this commit), to see how call 7's median holds.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; B=.device
exec > >(tee "$OUT/log.txt") 2>&1
date -u; uptime; nproc; grep -m1 'model name' /proc/cpuinfo
timeout 100 python3 bench/flows/replicate_capture.py $B/flows-base.pcap /tmp/tls-bench.pcap --min-packets 1000000 | tail -n 2
for series in 1 2 3; do
  timeout 60 $B/bench_pcap /tmp/tls-bench.pcap --reps 15 --direct | tail -n 1
  uptime
done
date -u
