#!/usr/bin/env bash
# Call 4 (2026-12-02, issues 12 and 10): the final binary (pool kept awake, node blocks by default but
# for few-output forests; bench-forest) against the previous commit's (431e83c, bench-forest-old),
# alternating, three rounds, every shape, chosen configuration; then, where both builds are carried, the
# pcap-to-features path of the main branch (bench_pcap_base) and of the flow branch (bench_pcap_new),
# one thread, alternating (bench/flows/ab_pcap_bench.sh) on the million-packet capture.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=/tmp/vknf-work; mkdir -p $W; B=.device
source bench/gpu_call.sh
gpu_call_setup log.txt
if [ -x $B/bench_pcap_new ]; then
  timeout 120 python3 bench/flows/replicate_capture.py $B/flows-base.pcap /tmp/tls-bench.pcap --min-packets 1000000 > /tmp/replicate.log 2>&1
  tail -n 2 /tmp/replicate.log
fi
prepare_shapes $W wide tiny deep
date -u; uptime
for round in 1 2 3; do
  for shape in w1a deep wide tiny; do
    if [ $shape = w1a ]; then src=(--paper-tree $B/paper-rf-tree); else src=(--model $W/$shape.onnx --input $W/${shape}_x.npy); fi
    for bin in bench-forest-old bench-forest; do
      echo "== round $round $shape $bin"
      timeout 90 $B/$bin "${src[@]}" --name $shape --no-cpu --runs 30 --direct-shares 0.5 | grep -E "^chosen|^other"
    done
  done
  uptime
done
if [ -x $B/bench_pcap_new ] && [ -s /tmp/tls-bench.pcap ]; then
  echo "== pcap to features, one thread (--direct): A = main (bench_pcap_base), B = flow branch (bench_pcap_new)"
  ls -l /tmp/tls-bench.pcap
  timeout 200 bash bench/flows/ab_pcap_bench.sh $B/bench_pcap_base $B/bench_pcap_new /tmp/tls-bench.pcap 8
fi
date -u
