#!/usr/bin/env bash
# Call 1 (2026-12-03, issue 12): measured plan choice (ForestLane::tune_plans). The shapes table with
# this tree's bench-forest (built from the working tree after dd82d62: plans, `o` back as a plan) tuned
# on each shape's whole batch (9 rounds) and then the rule's plan against the tuned one, 4 alternating
# rounds; "today" is bench-forest-old (7ac5dd8's hot paths, the previous session's last build). Then
# three more processes a shape (W1a, deep, wide), to see whether the tuning chooses alike each time;
# then gpu_parity (with the tuning's test) with the validation layer on.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
TUNE_ROUNDS=9 TUNED_ROUNDS=4 bash bench/run_gpu_shapes.sh table
source .gl/setup-vulkan.sh
B=.device; W=/tmp/vknf-work
for round in 1 2 3; do
  for shape in w1a deep wide; do
    src=(--paper-tree $B/paper-rf-tree); [ $shape != w1a ] && src=(--model $W/$shape.onnx --input $W/${shape}_x.npy)
    echo "== round $round $shape"
    timeout 60 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --tune-plans 9 --rounds 3 | grep -A8 -E '^tuning'
  done
done 2>&1 | tee $OUT/tuning-rounds.txt
dpkg -x .device/tests/vulkan-validationlayers_*.deb /tmp/vl
export VK_LAYER_PATH=/tmp/vl/usr/share/vulkan/explicit_layer.d
export LD_LIBRARY_PATH=/tmp/vl/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
export PYTHONPATH=/tmp/site VKNF_PYTHON=$(command -v python3)
echo "== gpu_parity"
timeout 200 .device/tests/gpu_parity --test-threads 1 2>&1 | grep -E "^test |test result|panicked|Validation Error" | cut -c1-300 | tee $OUT/gpu_parity.txt
date -u; uptime
