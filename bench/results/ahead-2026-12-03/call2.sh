#!/usr/bin/env bash
# Call 2 (2026-12-03, issues 12 and 10). Issue 12: each arm in a process of its own (call 1's writes
# table, nine lanes in one process, ran 10-40% slower than the same configurations alone), three
# rounds, the arms' order rotated every round: 360b6a8's binary (bench-forest-prev, share 0.5) against
# this one with the DMA's rows written 0 or 1 dispatch ahead, at shares 0.5 and 0.6 (and 0.4 on the
# wide forest). Issue 10: the traffic path end to end on the GPU (`vknf classify --model`: pcap ->
# flows -> features -> GPU -> JSON lines) on the 1 M-packet capture rebuilt here from its base, next to
# `bench_pcap` (pcap -> features only) and to the same classify run on the 4,005-packet base capture.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work; F=.device/flows
gunzip -c $F/vknf.gz > /tmp/vknf && chmod +x /tmp/vknf
prepare_shapes $W wide
python3 bench/flows/replicate_capture.py $F/base.pcap /tmp/tls-bench.pcap --min-packets 1000000 | tail -1 &
replicate=$!
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
show() { grep -E "^chosen" | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*node_blocks: (true|false)(, breadth_first: (true|false))?.*\}, ([0-9]+ chunk)/\1x\2 blocks=\3 bfs=\5 \6/'; }
arms=("prev 0.5 -" "new 0.5 0" "new 0.5 1" "new 0.6 1" "new 0.4 1")
for round in 1 2 3; do
  for shape in wide w1a deep; do
    declare -n src=$shape
    n=${#arms[@]}
    for i in $(seq 0 $((n - 1))); do
      read -r binary share ahead <<< "${arms[$(( (i + round) % n ))]}"
      [ "$share" = 0.4 ] && [ $shape != wide ] && continue
      extra=(); [ "$ahead" != - ] && extra=(--dma-ahead $ahead)
      bin=bench-forest; [ $binary = prev ] && bin=bench-forest-prev
      echo "== round $round $shape $binary share $share ahead $ahead"
      timeout 90 $B/$bin "${src[@]}" --no-cpu --runs 40 --direct-shares 0.5 --chosen-share $share "${extra[@]}" | show
    done
  done
done
wait $replicate
ls -la /tmp/tls-bench.pcap
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
date -u; uptime
