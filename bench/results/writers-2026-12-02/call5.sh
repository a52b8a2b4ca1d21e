#!/usr/bin/env bash
# Call 5 (2026-12-02, issue 10): the pcap-to-features path, one thread (--direct), main's build
# (bench_pcap_base) against the flow branch's (bench_pcap_new), alternating, 12 rounds, on the
# million-packet capture (call 4's 8 rounds ran on a busy host: main's build 3.0-4.8 M packets per
# CPU-second against its usual 4.4 M).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; B=.device
exec > >(tee "$OUT/log.txt") 2>&1
date -u; uptime; nproc; grep -m1 'model name' /proc/cpuinfo
timeout 100 python3 bench/flows/replicate_capture.py $B/flows-base.pcap /tmp/tls-bench.pcap --min-packets 1000000 | tail -n 2
ls -l /tmp/tls-bench.pcap; uptime
timeout 150 bash bench/flows/ab_pcap_bench.sh $B/bench_pcap_base $B/bench_pcap_new /tmp/tls-bench.pcap 12
date -u
