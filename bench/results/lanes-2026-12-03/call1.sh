#!/usr/bin/env bash
# Call 1 (2026-12-03, issue 12): a batch in several dispatches, each walked by more tree lanes than the
# whole batch's one (bench-forest --chunk-counts N@LANES): each dispatch's rows x lanes about one wave
# of the GPU's threads, so that a dispatch's threads walk fewer trees one after another while the
# later dispatches' rows still cross the bus. W1a and deep (150 trees, 45 lanes by default) in 1-6
# dispatches with 75-150 lanes; wide (300 trees, 8 lanes) in 4-16 with 16-32; three rounds each,
# the plans alternating, then each plan's median timeline.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W wide
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
for shape in w1a deep; do
  declare -n src=$shape
  echo "== $shape"
  timeout 150 $B/bench-forest "${src[@]}" --no-cpu --runs 40 --direct-shares 0.5 --timeline \
    --chunk-counts 1,2@75,3@100,4@150,5@150,6@150 --rounds 3 --json $OUT/$shape.json | grep -E -A 40 "^(chosen|dispatches)"
done
echo "== wide"
timeout 240 $B/bench-forest "${wide[@]}" --no-cpu --runs 30 --direct-shares 0.5 --timeline \
  --chunk-counts 4,6@16,7@16,8@16,10@32,12@32,16@32 --rounds 3 --json $OUT/wide.json | grep -E -A 60 "^(chosen|dispatches)"
date -u; uptime
