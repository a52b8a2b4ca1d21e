#!/usr/bin/env bash
# Call 2 (2026-12-02, issue 12): node pairs (a node and its left child in one 16-byte load: one load a
# level when the walk goes right, one for two levels when it goes left) against node blocks and single
# nodes, in the same binary, alternating, three rounds, on the deep forest, W1a, wide and tiny; the
# kernel of one dispatch and `predict` end to end; then pairs on rows all alike (the floor without
# divergence; call 1 measured blocks there).
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W tiny wide
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
tiny=(--model $W/tiny.onnx --input $W/tiny_x.npy --name tiny); wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
show() { grep -E "^(chosen|other-node-layout)" | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*node_blocks: (true|false), node_pairs: (true|false).*\}, ([0-9]+ chunk)/\1x\2 blocks=\3 pairs=\4 \5/'; }
for round in 1 2 3; do
  for shape in deep w1a wide tiny; do
    declare -n src=$shape
    echo "== round $round $shape pairs (chosen) / the default layout (other)"; date -u +%T
    timeout 90 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 --node-pairs | show
    echo "== round $round $shape single nodes (chosen) / blocks (other)"
    timeout 90 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 --node-blocks false | show
  done
done
for shape in deep w1a; do
  declare -n src=$shape
  echo "== $shape --row-order first-row, pairs / default"
  timeout 90 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 --row-order first-row --node-pairs | show
done
date -u; uptime
