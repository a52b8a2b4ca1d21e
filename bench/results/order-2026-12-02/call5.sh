#!/usr/bin/env bash
# Call 5 (2026-12-02, issue 12): labels-only batches take the many-outputs argmax from the integer
# totals (one f32 conversion a thread, plus those of totals that can round to the largest's value):
# bench-forest (this commit) against bench-forest-old (call 4's new binary), alternating, three rounds,
# on the four shapes; then one-row to 1024-row batches of the deep forest (--small-batches), both binaries.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W tiny wide
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
tiny=(--model $W/tiny.onnx --input $W/tiny_x.npy --name tiny); wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
show() { grep -E "^(chosen|other-node-layout)" | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*node_blocks: (true|false).*\}, ([0-9]+ chunk)/\1x\2 blocks=\3 \4/'; }
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
  echo "== deep --small-batches $binary"
  timeout 150 $B/$binary "${deep[@]}" --no-cpu --runs 30 --direct-shares 0.5 --small-batches \
    | grep -E "^ +chosen +(1|8|64|256|1024) rows"
done
date -u; uptime
