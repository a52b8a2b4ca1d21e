#!/usr/bin/env bash
# Call 11 (2026-12-02, issue 12): the default workgroup of 22 rows x 45 tree lanes (bench-forest, this
# commit) against 24 x 32 (bench-forest-old, the previous commit's behaviour), alternating, three rounds,
# on W1a, deep, tiny and wide (the last keeps its few-outputs shape, 16 x 8, in both): the chosen
# configuration end to end and its one-dispatch kernel.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W tiny wide
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
tiny=(--model $W/tiny.onnx --input $W/tiny_x.npy --name tiny); wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
for round in 1 2 3; do
  for shape in w1a deep tiny wide; do
    declare -n src=$shape
    for binary in bench-forest-old bench-forest; do
      echo "== round $round $shape $binary"
      timeout 90 $B/$binary "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 | grep -E "^chosen:" \
        | sed -E 's/^chosen: KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.* ([0-9]+ chunk)/\1x\2 \3/'
    done
  done
done
date -u; uptime
