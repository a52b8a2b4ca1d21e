#!/usr/bin/env bash
# Call 3 (2026-12-03, issues 12 and 10). Calls 1-2 met a noisy host (the same binary's wide batch
# spread over 1.0-2.7 ms between processes), so each comparison now runs inside one process, its few
# lanes alternating over ten rounds (bench-forest's writes table): the wide forest with the DMA's rows
# written 0 (the previous order) or 1 dispatch ahead at share 0.5; W1a and the deep forest (one
# dispatch, where writing ahead changes nothing) at shares 0.5 and 0.6. Then issue 10's traffic path
# end to end on the GPU (`vknf classify --model`) on the 1 M-packet capture rebuilt here, next to
# `bench_pcap` (pcap -> features only) and to the same classify run on the 4,005-packet base capture
# (whose time is mostly start-up), nothing else running.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work; F=.device/flows
gunzip -c $F/vknf.gz > /tmp/vknf && chmod +x /tmp/vknf
export LD_LIBRARY_PATH=$PWD/$F/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
prepare_shapes $W wide
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
echo "== wide writes"
timeout 200 $B/bench-forest "${wide[@]}" --no-cpu --runs 30 --direct-shares 0.5 --write-shares 0.5 \
  --write-aheads 0,1 --rounds 10 --json $OUT/wide-writes.json | grep -A 11 "^writes"
for shape in w1a deep; do
  declare -n src=$shape
  echo "== $shape writes"
  timeout 150 $B/bench-forest "${src[@]}" --no-cpu --runs 40 --direct-shares 0.5 --write-shares 0.5,0.6 \
    --rounds 10 --json $OUT/$shape-writes.json | grep -A 11 "^writes"
done
uptime
python3 bench/flows/replicate_capture.py $F/base.pcap /tmp/tls-bench.pcap --min-packets 1000000 | tail -1
echo "== bench_pcap"
$F/bench_pcap /tmp/tls-bench.pcap 2>&1 | tail -2
for run in 1 2 3; do
  for capture in /tmp/tls-bench.pcap $F/base.pcap; do
    echo "== classify run $run $capture"
    TIMEFORMAT="wall %R s, user %U s, sys %S s"
    time /tmp/vknf classify --quiet --pcap $capture \
      --model $F/traffic.vkf --schema $F/traffic.schema.json --label-by sni -o /tmp/classified.jsonl
    wc -l < /tmp/classified.jsonl
  done
done
echo "== bench_pcap again"
$F/bench_pcap /tmp/tls-bench.pcap 2>&1 | tail -1
date -u; uptime
