#!/usr/bin/env bash
# Call 6 (2026-12-03, issue 12): each split dispatch's directly written rows (the BAR share, in device
# memory once written) dispatched on their own as soon as written, before the DMA's rows
# (ForestOptions::direct_rows_first; plans `Ns` of bench-forest --chunk-counts), against today's one
# dispatch after the copy: W1a and deep in 1 and 2 dispatches, six rounds alternating in one process;
# wide in 4-8, four rounds. Then the lane steps as now sized (whole workgroups an SM) on call 4's
# row counts, for their figures with this binary.
# (With this call's binary a plan without `s` did not split; in later binaries, whose default splits, `w` says so.)
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W wide
python3 -c "
import numpy as np
d = np.load('$B/deep_x.npy'); w = np.load('$W/wide_x.npy')
for n in (1500, 2900): np.save('$W/deep_x%d.npy' % n, d[:n])
for n in (4096, 8000): np.save('$W/wide_x%d.npy' % n, w[:n])
"
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
for shape in w1a deep; do
  declare -n src=$shape
  echo "== $shape"
  timeout 150 $B/bench-forest "${src[@]}" --no-cpu --runs 40 --direct-shares 0.5 --timeline \
    --chunk-counts 1,1s,2,2s --rounds 6 --json $OUT/$shape.json | grep -E -A 30 "^(chosen|dispatches)" | cut -c1-260
done
echo "== wide"
timeout 200 $B/bench-forest "${wide[@]}" --no-cpu --runs 30 --direct-shares 0.5 --timeline \
  --chunk-counts 4,4s,6s,8s --rounds 4 --json $OUT/wide.json | grep -E -A 40 "^(chosen|dispatches)" | cut -c1-260
echo "== lane steps"
for c in "deep1500 --model $B/deep.vkf --input $W/deep_x1500.npy" "deep2900 --model $B/deep.vkf --input $W/deep_x2900.npy" \
         "w1a1500 --paper-tree $B/paper-rf-tree --rows 1500" "wide4096 --model $W/wide.onnx --input $W/wide_x4096.npy" \
         "wide8000 --model $W/wide.onnx --input $W/wide_x8000.npy"; do
  set -- $c; name=$1; shift
  echo "$name: $(timeout 40 $B/bench-forest "$@" --name $name --no-cpu --runs 30 --direct-shares 0.5 | grep -E '^chosen' \
    | sed -E 's/KernelConfig \{.*lane_steps: (\[[^]]*\]).*\}, /\1 /')"
done
date -u; uptime
