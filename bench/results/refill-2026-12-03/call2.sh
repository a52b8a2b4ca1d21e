#!/usr/bin/env bash
# Call 2 (2026-12-03, issue 12): a one-dispatch batch's directly written rows in pieces
# (ForestOptions::direct_pieces; bench-forest --chunk-counts `1sN`): the host writes the BAR share piece by
# piece, each piece's dispatch submitted as soon as it is written, so that the GPU starts on the first
# piece while the next is written; the DMA's rows follow in the last dispatch as before. W1a and deep:
# 1s (today: the share in one dispatch), 1s2, 1s3, 1s4 and 1w (no split), six rounds alternating in one
# process, then the timelines; deep again with direct shares 0.45 and 0.55.
# Run with a binary of 038c62a plus direct-pieces.patch (ForestOptions::direct_pieces, the `1sN` plans;
# not kept: docs/forest-kernel.md item 29).
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
for shape in deep w1a; do
  declare -n src=$shape
  echo "== $shape"
  timeout 150 $B/bench-forest "${src[@]}" --no-cpu --runs 40 --direct-shares 0.5 --timeline \
    --chunk-counts 1s,1s2,1s3,1s4,1w --rounds 6 --json $OUT/$shape.json | grep -E -A 30 "^(chosen|dispatches)" | cut -c1-300
done
for share in 0.45 0.55; do
  echo "== deep share $share"
  timeout 150 $B/bench-forest "${deep[@]}" --no-cpu --runs 40 --direct-shares $share --chosen-share $share --timeline \
    --chunk-counts 1s,1s2,1s3 --rounds 4 | grep -E -A 30 "^dispatches" | cut -c1-300
done
date -u; uptime
