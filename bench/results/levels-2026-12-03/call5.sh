#!/usr/bin/env bash
# Call 5 (2026-12-03, issue 12): with the wide forest's breadth-first kernel (~135 us a 25,000-row
# dispatch), does another dispatch count or direct share shorten its whole batch? The timeline over
# 3-8 pipelined dispatches (alternating, three rounds), then the writes table over direct shares
# 0.3-0.6 (three rounds); the same for W1a's and deep's dispatch counts 1-3.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W wide
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
echo "== wide timeline"
timeout 200 $B/bench-forest "${wide[@]}" --no-cpu --runs 30 --direct-shares 0.5 --timeline --chunk-counts 3,4,5,6,8 \
  --rounds 3 --json $OUT/wide-timeline.json | grep -vE "^(chosen|other|previous)"
echo "== wide shares"
timeout 200 $B/bench-forest "${wide[@]}" --no-cpu --runs 30 --direct-shares 0.5 --write-shares 0.3,0.4,0.5,0.6 \
  --awake-us 500 --rounds 3 --json $OUT/wide-shares.json | grep -vE "^(chosen|other|previous)"
for shape in w1a deep; do
  declare -n src=$shape
  echo "== $shape timeline"
  timeout 100 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 --timeline --chunk-counts 1,2,3 \
    --rounds 3 --json $OUT/$shape-timeline.json | grep -vE "^(chosen|other|previous)"
done
date -u; uptime
