#!/usr/bin/env bash
# Call 1 (2026-12-03, issue 12): a split batch's DMA rows written one or two dispatches ahead of the
# direct share (`ForestOptions::dma_writes_ahead`; 0 is the previous order), against 360b6a8's binary
# (bench-forest-prev): the wide forest's writes table (shares 0.4-0.6 x 0-2 ahead, three rounds, the
# combinations alternating) and its timelines (3, 4 and 6 dispatches, 0 and 1 ahead); W1a's and the
# deep forest's shares 0.5-0.7 in one dispatch and their timelines in 1 and 2 dispatches.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W wide
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
show() { grep -E "^(chosen)" | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*node_blocks: (true|false)(, breadth_first: (true|false))?.*\}, ([0-9]+ chunk)/\1x\2 blocks=\3 bfs=\5 \6/'; }
for round in 1 2; do
  binaries=(bench-forest-prev bench-forest); [ $round = 2 ] && binaries=(bench-forest bench-forest-prev)
  for binary in "${binaries[@]}"; do
    echo "== round $round wide $binary"
    timeout 90 $B/$binary "${wide[@]}" --no-cpu --runs 30 --direct-shares 0.5 | show
  done
done
echo "== wide writes"
timeout 200 $B/bench-forest "${wide[@]}" --no-cpu --runs 30 --direct-shares 0.5 --write-shares 0.4,0.5,0.6 \
  --write-aheads 0,1,2 --rounds 3 --json $OUT/wide-writes.json | grep -A 4 "^writes"
for ahead in 0 1; do
  echo "== wide timeline ahead $ahead"
  timeout 150 $B/bench-forest "${wide[@]}" --no-cpu --runs 30 --direct-shares 0.5 --dma-ahead $ahead \
    --timeline --chunk-counts 3,4,6 --rounds 2 | grep -A 20 "^dispatches"
done
for shape in w1a deep; do
  declare -n src=$shape
  echo "== $shape writes"
  timeout 150 $B/bench-forest "${src[@]}" --no-cpu --runs 40 --direct-shares 0.5 --write-shares 0.5,0.6,0.7 \
    --rounds 3 | grep -A 4 "^writes"
  echo "== $shape timeline"
  timeout 150 $B/bench-forest "${src[@]}" --no-cpu --runs 40 --direct-shares 0.5 --timeline --chunk-counts 1,2 \
    --rounds 2 | grep -A 12 "^dispatches"
done
date -u; uptime
