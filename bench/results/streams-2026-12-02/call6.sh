#!/usr/bin/env bash
# Call 6 (2026-12-02, issue 12): the wide forest's dispatches spread over 1, 2 or 4 compute streams
# (ForestOptions::compute_streams), in 4, 6 or 8 dispatches: its kernels ran one after another on one
# queue, the last starting only when the one before ended (call 5's timeline); three rounds alternating,
# then timelines on the host's clock.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device
prepare_shapes /tmp/vknf-work wide
timeout 300 $B/bench-forest --model /tmp/vknf-work/wide.onnx --input /tmp/vknf-work/wide_x.npy --name wide \
  --no-cpu --runs 20 --direct-shares 0.5 --timeline --chunk-counts 4,6,8 --stream-counts 1,2,4 --tails 0,1024 --rounds 3 \
  --json "$OUT/wide.json" | sed -n '/^dispatches/,$p'
date -u; uptime
