#!/usr/bin/env bash
# Call 3 (2026-12-03, issue 12): what NVIDIA's driver reports about the forest kernel's compiled
# pipelines (VK_KHR_pipeline_executable_properties, kept with VKNF_PIPELINE_STATISTICS=1; bench-forest
# prints them per pipeline: bulk, small batch, lane steps), for the four named shapes with this
# binary (HEAD's kernel), and for call 1's refilled walks (bench-forest-refill: the refill-shader.patch
# with REFILL_WALKS on by default) on W1a, deep and wide: registers a thread set how many threads an SM
# holds. Few runs: the figures are the driver's, not timings (kernel medians printed as a check).
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W wide tiny
export VKNF_PIPELINE_STATISTICS=1
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide); tiny=(--model $W/tiny.onnx --input $W/tiny_x.npy --name tiny)
brief() { grep -E '^(chosen|other-node-layout|previous-default)|^  (chosen|other-node-layout|previous-default) ' | sed -E 's/KernelConfig \{.*\}, /.. /' | cut -c1-400; }
for shape in w1a deep wide tiny; do
  declare -n src=$shape
  echo "== $shape (HEAD's kernel)"
  timeout 90 $B/bench-forest "${src[@]}" --no-cpu --runs 10 --direct-shares 0.5 --json $OUT/$shape.json | brief
done
for shape in w1a deep wide; do
  declare -n src=$shape
  echo "== $shape (refilled walks)"
  timeout 90 $B/bench-forest-refill "${src[@]}" --no-cpu --runs 10 --direct-shares 0.5 | brief
done
date -u; uptime
