#!/usr/bin/env bash
# Call 8 (2026-12-02, issue 12): the tiny forest's end to end with e2138e3's kernel (bench-forest) against
# the same tree built with b2a0f14's shader (bench-forest-old: everything else this commit's), so that
# only the integer argmax differs; alternating, six rounds of 100 runs.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W tiny
tiny=(--model $W/tiny.onnx --input $W/tiny_x.npy --name tiny)
show() { grep -E "^(chosen|other-node-layout|previous-default)" | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*node_blocks: (true|false).*\}, ([0-9]+ chunk)/\1x\2 blocks=\3 \4/'; }
for round in 1 2 3 4 5 6; do
  for binary in bench-forest-old bench-forest; do
    echo "== round $round tiny $binary"
    timeout 90 $B/$binary "${tiny[@]}" --no-cpu --runs 100 --direct-shares 0.5 | show
  done
done
date -u; uptime
