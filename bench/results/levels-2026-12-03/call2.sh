#!/usr/bin/env bash
# Call 2 (2026-12-03, issue 12): this tree's bench-forest (breadth-first nodes by default for forests of
# the few-outputs shape; a leaf's every entry counted) against 0b0fdb1's (bench-forest-old), with every
# baseline on the same rows (`run_gpu_shapes.sh table`); then the wide forest's small batches (what
# served functions see) in both node orders.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash bench/run_gpu_shapes.sh table
source .gl/setup-vulkan.sh > /dev/null
W=/tmp/vknf-work
for order in depth-first breadth-first; do
  echo "== small batches wide $order"
  timeout 120 .device/bench-forest --model $W/wide.onnx --input $W/wide_x.npy --name wide --no-cpu --runs 30 \
    --direct-shares 0.5 --node-order $order --small-batches --json $OUT/small-wide-$order.json \
    | grep -E "small-batch|bulk|^chosen" | sed -E 's/KernelConfig \{.*node_blocks: (true|false), breadth_first: (true|false).*\}/blocks=\1 bfs=\2/'
done 2>&1 | tee $OUT/log-small-wide.txt
date -u; uptime
