#!/usr/bin/env bash
# Call 7 (2026-12-03, issue 12): one-dispatch batches (W1a, tiny), whose labels are now read into a
# vector the lane sizes and checked for NaN marks in a vectorised pass, against e676eec's binary
# (bench-forest-prev): call 6 had W1a 3-6 us slower in three rounds. Five rounds alternating, the
# order swapped every round.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W tiny
w1a=(--paper-tree $B/paper-rf-tree --name w1a); tiny=(--model $W/tiny.onnx --input $W/tiny_x.npy --name tiny)
show() { grep -E "^chosen" | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*node_blocks: (true|false)(, breadth_first: (true|false))?.*\}, ([0-9]+ chunk)/\1x\2 blocks=\3 bfs=\5 \6/'; }
for round in 1 2 3 4 5; do
  binaries=(bench-forest-prev bench-forest); [ $((round % 2)) = 0 ] && binaries=(bench-forest bench-forest-prev)
  for shape in w1a tiny; do
    declare -n src=$shape
    for binary in "${binaries[@]}"; do
      echo "== round $round $shape $binary"
      timeout 60 $B/$binary "${src[@]}" --no-cpu --runs 50 --direct-shares 0.5 | show
    done
  done
done
date -u; uptime
