#!/usr/bin/env bash
# Call 7 (2026-12-03, issue 12): the final tree's (0da50c6) gpu_parity and gpu_exact_scores test binaries
# (`cargo test --no-run`, stripped, in .device/tests) on the H200 with the validation layer on: the
# tuning's test, every plan's exact scores, and the pipelined batches through run_planned.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
dpkg -x .device/tests/vulkan-validationlayers_*.deb /tmp/vl
export VK_LAYER_PATH=/tmp/vl/usr/share/vulkan/explicit_layer.d
export LD_LIBRARY_PATH=/tmp/vl/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
export PYTHONPATH=/tmp/site VKNF_PYTHON=$(command -v python3)
for t in gpu_parity gpu_exact_scores; do
  echo "== $t"
  timeout 200 .device/tests/$t --test-threads 1 2>&1 | grep -E "^test |test result|panicked|Validation Error" | cut -c1-300
done
date -u; uptime
