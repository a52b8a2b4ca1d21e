#!/usr/bin/env bash
# Call 7 (2026-12-02, issue 12): call 6 timed the tiny forest 2 us slower end to end with 9c31710's kernel
# than with 185b308's (its kernel 0.2 us shorter), and call 5 1 us; this binary initialises the integer
# argmax's shared arrays only in forests that use them. Against 185b308 (bench-forest-old), alternating:
# tiny five rounds of 100 runs, W1a and deep two rounds.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W tiny
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
tiny=(--model $W/tiny.onnx --input $W/tiny_x.npy --name tiny)
show() { grep -E "^(chosen|other-node-layout|previous-default)" | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*node_blocks: (true|false).*\}, ([0-9]+ chunk)/\1x\2 blocks=\3 \4/'; }
for round in 1 2 3 4 5; do
  for binary in bench-forest-old bench-forest; do
    echo "== round $round tiny $binary"
    timeout 90 $B/$binary "${tiny[@]}" --no-cpu --runs 100 --direct-shares 0.5 | show
  done
done
for round in 1 2; do
  for shape in w1a deep; do
    declare -n src=$shape
    for binary in bench-forest-old bench-forest; do
      echo "== round $round $shape $binary"
      timeout 90 $B/$binary "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 | show
    done
  done
done
date -u; uptime
