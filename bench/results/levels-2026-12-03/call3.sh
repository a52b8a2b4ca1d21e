#!/usr/bin/env bash
# Call 3 (2026-12-03, issue 12): the final binary (whole batches lay every forest's trees out breadth
# first; the kernel reads every entry of a leaf) against 0b0fdb1's (bench-forest-old), alternating,
# three rounds, the four shapes; then served functions' small batches (depth first, as before) on W1a.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W tiny wide
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide); tiny=(--model $W/tiny.onnx --input $W/tiny_x.npy --name tiny)
show() { grep -E "^(chosen|other-node-layout)" | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*node_blocks: (true|false)(, breadth_first: (true|false))?.*\}, ([0-9]+ chunk)/\1x\2 blocks=\3 bfs=\5 \6/'; }
for round in 1 2 3; do
  for shape in deep w1a wide tiny; do
    declare -n src=$shape
    for binary in bench-forest-old bench-forest; do
      echo "== round $round $shape $binary"
      timeout 90 $B/$binary "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 | show
    done
  done
done
for binary in bench-forest-old bench-forest; do
  echo "== small batches w1a $binary"
  timeout 90 $B/$binary "${w1a[@]}" --no-cpu --runs 30 --direct-shares 0.5 --small-batches | grep -E "small-batch|bulk" | grep -E " (1|8|64|256|1024) rows"
done
date -u; uptime
