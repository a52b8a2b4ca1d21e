#!/usr/bin/env bash
# Call 9 (2026-12-02, issue 12): the final read's shader (one `many_outputs` condition serving both the
# integer argmax's initialisation and the argmax, instead of the same test written twice; behaviour
# unchanged) against e2138e3's (bench-forest-old), alternating, two rounds, on deep, W1a and tiny.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W tiny
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
tiny=(--model $W/tiny.onnx --input $W/tiny_x.npy --name tiny)
show() { grep -E "^(chosen|other-node-layout)" | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*node_blocks: (true|false).*\}, ([0-9]+ chunk)/\1x\2 blocks=\3 \4/'; }
for round in 1 2; do
  for shape in deep w1a tiny; do
    declare -n src=$shape
    for binary in bench-forest-old bench-forest; do
      echo "== round $round $shape $binary"
      timeout 90 $B/$binary "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 | show
    done
  done
done
date -u; uptime
