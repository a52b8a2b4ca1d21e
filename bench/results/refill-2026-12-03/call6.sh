#!/usr/bin/env bash
# Call 6 (2026-12-03): the runtime's and the forest kernel's tests on the H200 with the Khronos
# validation layer on (Debian's vulkan-validationlayers 1.3.239, carried as .device/vl): the pipeline
# statistics test on a driver that keeps them (its positive path; lavapipe in CI lists no such
# extension), the runtime's kernel tests, and the forest kernel's exact-score tests (every kernel
# configuration, lane steps among them, against the CPU reference bit for bit). Test binaries built
# from bcaca83 (`cargo test --release --no-run`), stripped, in .device/tests.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
dpkg -x .device/vl/vulkan-validationlayers_*.deb /tmp/vl
export VK_LAYER_PATH=/tmp/vl/usr/share/vulkan/explicit_layer.d
export LD_LIBRARY_PATH=/tmp/vl/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
ls $VK_LAYER_PATH
for t in pipeline_statistics kernels gpu_exact_scores; do
  echo "== $t"
  timeout 240 .device/tests/$t --test-threads 1 2>&1 | grep -E "^test |test result|panicked|Validation|error" | head -40
done
date -u; uptime
