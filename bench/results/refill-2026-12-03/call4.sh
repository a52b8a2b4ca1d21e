#!/usr/bin/env bash
# Call 4 (2026-12-03, issue 12): a pipelined batch's direct shares written after the previous
# dispatch's copy (ForestOptions::direct_after_copy; bench-forest --chunk-counts `No`): each dispatch's
# pinned rows are written and their copy queued at once, its BAR rows only once the copy before it has
# ended, so that the bus carries one dispatch's rows after another's. The wide forest in 3-6
# dispatches with and without, five rounds alternating in one process, then the timelines; W1a and
# deep in two dispatches for comparison.
# Run with a binary of dee14b8 plus direct-after-copy.patch (ForestOptions::direct_after_copy, the
# `No` plans; not kept: docs/forest-kernel.md item 31).
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W wide
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
echo "== wide"
timeout 200 $B/bench-forest "${wide[@]}" --no-cpu --runs 30 --direct-shares 0.5 --timeline \
  --chunk-counts 4,4o,3,3o,5o,6o --rounds 5 --json $OUT/wide.json | grep -E -A 45 "^dispatches" | cut -c1-300
for shape in w1a deep; do
  declare -n src=$shape
  echo "== $shape"
  timeout 120 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 --timeline \
    --chunk-counts 1,2,2o --rounds 4 | grep -E -A 12 "^dispatches" | cut -c1-300
done
date -u; uptime
