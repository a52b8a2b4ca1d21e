#!/usr/bin/env bash
# Call 6 (2026-12-03, issue 12): after the second review (each plan checked once before it is timed:
# other values written and run whole, then the batch in the plan with scores, bit for bit against the
# first plan; the untimed runs take the rows rotated by half the batch), bench-forest and gpu_parity
# built from the working tree after 5cf89b6: one process a shape (W1a, deep with the carried deep.vkf,
# wide) tuned 9 rounds, the rule against the tuned plan in three rounds; then gpu_parity with the
# validation layer on.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
W=/tmp/vknf-work; B=.device
prepare_shapes $W wide
for shape in w1a deep wide; do
  case $shape in
    w1a) src=(--paper-tree $B/paper-rf-tree) ;;
    deep) src=(--model $B/deep.vkf --input $B/deep_x.npy) ;;
    wide) src=(--model $W/wide.onnx --input $W/wide_x.npy) ;;
  esac
  echo "== $shape"
  timeout 60 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --tune-plans 9 --rounds 3 | grep -A4 -E '^tuning'
done
dpkg -x .device/tests/vulkan-validationlayers_*.deb /tmp/vl
export VK_LAYER_PATH=/tmp/vl/usr/share/vulkan/explicit_layer.d
export LD_LIBRARY_PATH=/tmp/vl/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
export VKNF_PYTHON=$(command -v python3)
echo "== gpu_parity"
timeout 200 .device/tests/gpu_parity --test-threads 1 2>&1 | grep -E "^test |test result|panicked|Validation Error" | cut -c1-300
date -u; uptime
