#!/usr/bin/env bash
# Call 1 (2026-12-03, issue 12): refilled walks (ForestOptions::refill_walks, forest.comp's
# REFILL_WALKS: a thread whose walk reaches a leaf starts its next tree at the next step) against the
# per-tree loop, on the four named shapes: the new binary with --refill-walks false and true in
# alternating processes, two rounds, then HEAD's binary (038c62a) once per shape. Kernel from GPU
# timestamps (one whole-batch dispatch), end to end as `predict` runs it; the other node layout too.
# Then deep's and W1a's split batch (1s) and wide's 4 dispatches with timelines, refill off and on.
# Run with a binary of 038c62a plus refill-shader.patch and the ForestOptions::refill_walks / --refill-walks
# option that set REFILL_WALKS (not kept: docs/forest-kernel.md item 28).
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W wide tiny
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide); tiny=(--model $W/tiny.onnx --input $W/tiny_x.npy --name tiny)
summary() { grep -E '^(chosen|other-node-layout)' | sed -E 's/KernelConfig \{.*node_blocks: ([a-z]+).*refill_walks: ([a-z]+).*\}, /blocks=\1 refill=\2 /; s/KernelConfig \{.*node_blocks: ([a-z]+).*\}, /blocks=\1 /'; }
for round in 1 2; do
  for refill in false true; do
    for shape in w1a deep wide tiny; do
      declare -n src=$shape
      echo "round $round refill $refill $shape: $(timeout 60 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 \
        --refill-walks $refill --json $OUT/$shape-r$round-$refill.json | summary | tr '\n' '|')"
    done
  done
done
for shape in w1a deep wide tiny; do
  declare -n src=$shape
  echo "head $shape: $(timeout 60 $B/bench-forest-head "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 | summary | tr '\n' '|')"
done
for refill in false true; do
  for shape in w1a deep; do
    declare -n src=$shape
    echo "== timeline $shape refill $refill"
    timeout 90 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 --refill-walks $refill --timeline \
      --chunk-counts 1s,1w --rounds 4 | grep -E -A 12 "^dispatches|round [0-9]|timelines" | cut -c1-260
  done
  echo "== timeline wide refill $refill"
  timeout 120 $B/bench-forest "${wide[@]}" --no-cpu --runs 30 --direct-shares 0.5 --refill-walks $refill --timeline \
    --chunk-counts 4 --rounds 3 | grep -E -A 8 "round [0-9]|timelines" | cut -c1-260
done
date -u; uptime
