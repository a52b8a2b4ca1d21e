#!/usr/bin/env bash
# Call 5 (2026-12-03, issue 12): call 4's deep forest in two dispatches with the second's direct share
# written after the first's copy (`2o`), with the first dispatch's own direct share
# (ForestOptions::first_direct_share; plans `2o%N`, N percent): a first dispatch whose DMA carries fewer
# rows has all its rows sooner. Deep and W1a: 1 (today), 2o, 2o%60..%90, 1s%40, 1s%60, six rounds
# alternating in one process; the wide forest's first dispatch with shares 0.3 and 0.7, four rounds.
# Run with a binary of 1cb72f3 plus direct-after-copy-first-share.patch (not kept:
# docs/forest-kernel.md item 31).
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W wide
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
for shape in deep w1a; do
  declare -n src=$shape
  echo "== $shape"
  timeout 200 $B/bench-forest "${src[@]}" --no-cpu --runs 40 --direct-shares 0.5 --timeline \
    --chunk-counts 1,2o,2o%60,2o%70,2o%80,2o%90,1s%40,1s%60 --rounds 6 --json $OUT/$shape.json \
    | grep -E -A 40 "^dispatches" | cut -c1-300
done
echo "== wide"
timeout 200 $B/bench-forest "${wide[@]}" --no-cpu --runs 30 --direct-shares 0.5 --timeline \
  --chunk-counts 4,4%30,4%70,4o%70 --rounds 4 | grep -E -A 30 "^dispatches" | cut -c1-300
date -u; uptime
