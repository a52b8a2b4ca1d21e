#!/usr/bin/env bash
# Call 1 (2026-12-03, issue 12): each tree's nodes (and node blocks) level by level in device memory
# (`--node-order breadth-first`) against depth first, the .vkf order, on the four shapes, three
# rounds alternating; each invocation times both layouts (blocks and single nodes). Then the deep
# forest's small batches in both orders.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W tiny wide
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide); tiny=(--model $W/tiny.onnx --input $W/tiny_x.npy --name tiny)
show() { grep -E "^(chosen|other-node-layout)" | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*node_blocks: (true|false), breadth_first: (true|false).*\}, ([0-9]+ chunk)/\1x\2 blocks=\3 bfs=\4 \5/'; }
for round in 1 2 3; do
  for shape in deep w1a wide tiny; do
    declare -n src=$shape
    for order in depth-first breadth-first; do
      echo "== round $round $shape $order"
      timeout 90 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 --node-order $order | show
    done
  done
done
for order in depth-first breadth-first; do
  echo "== small batches deep $order"
  timeout 90 $B/bench-forest "${deep[@]}" --no-cpu --runs 30 --direct-shares 0.5 --node-order $order --small-batches \
    --json $OUT/small-deep-$order.json | grep -vE "^(chosen|other|previous)" | tail -n 20
done
date -u; uptime
