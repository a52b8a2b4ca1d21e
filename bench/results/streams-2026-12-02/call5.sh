#!/usr/bin/env bash
# Call 5 (2026-12-02, issue 12): each dispatch's DMA in two copies, the first submitted as soon as its
# rows are written (ForestOptions::second_copy_share: the share of the DMA rows the second carries;
# "/c" in the names), against one copy: W1a and the deep forest in one dispatch, the wide forest
# (bench/gpu_baselines.py prepare wide, first) in its chosen four; bench-forest's
# dispatch table (three rounds alternating) and timelines on the host's clock.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device
prepare_shapes /tmp/vknf-work wide
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
wide=(--model /tmp/vknf-work/wide.onnx --input /tmp/vknf-work/wide_x.npy --name wide)
for shape in w1a deep; do
  declare -n src=$shape
  timeout 120 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 --timeline \
    --second-copies 0,0.15,0.3,0.5 --rounds 3 --json "$OUT/$shape.json" | sed -n '/^dispatches/,$p'
done
timeout 200 $B/bench-forest "${wide[@]}" --no-cpu --runs 20 --direct-shares 0.5 --timeline \
  --second-copies 0,0.2,0.4 --rounds 3 --json "$OUT/wide.json" | sed -n '/^dispatches/,$p'
date -u; uptime
