#!/usr/bin/env bash
# Call 1 (2026-12-02, issue 12): a pipelined batch's dispatches spread over several compute streams
# (ForestOptions::compute_streams) and a short last dispatch on the small-batch pipeline
# (ForestOptions::tail_rows), on W1a and the deep forest (compiled here from bench/gpu_baselines.py's
# `prepare deep` into .device/deep.vkf, its rows .device/deep_x.npy): bench-forest's dispatch table
# (two rounds alternating every combination of dispatches before the tail, streams and tail rows) and
# each combination's median timeline. d1/s1/t0 is the chosen configuration before this change.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device
timeout 200 $B/bench-forest --paper-tree $B/paper-rf-tree --name w1a --no-cpu --runs 30 --direct-shares 0.5 \
  --timeline --chunk-counts 1,2 --stream-counts 1,2,3 --tails 0,512,1024 --rounds 2 --json "$OUT/w1a.json"
uptime
timeout 250 $B/bench-forest --model $B/deep.vkf --input $B/deep_x.npy --name deep --no-cpu --runs 30 --direct-shares 0.5 \
  --timeline --chunk-counts 1,2,3 --stream-counts 1,2,3 --tails 0,1024 --rounds 2 --json "$OUT/deep.json"
date -u; uptime
