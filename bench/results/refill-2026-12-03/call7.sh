#!/usr/bin/env bash
# Call 7 (2026-12-03): call 6 again after its finding was mended (a barrier on the dedicated transfer
# queue named shader writes, VUID-vkCmdPipelineBarrier-srcAccessMask-02815, which lavapipe, with no
# such queue, never showed): every test binary of vknf-vulkan and vknf-functions on the H200 with the
# Khronos validation layer on (Debian's vulkan-validationlayers 1.3.239, carried as .device/vl). Test
# binaries built from 8cde6c3 (`cargo test --release --no-run`), stripped, in
# .device/tests; the fixtures are found through /work/main, as where they were built.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
dpkg -x .device/vl/vulkan-validationlayers_*.deb /tmp/vl
export VK_LAYER_PATH=/tmp/vl/usr/share/vulkan/explicit_layer.d
export LD_LIBRARY_PATH=/tmp/vl/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
for t in .device/tests/*; do
  echo "== $(basename $t)"
  timeout 200 $t --test-threads 1 2>&1 | grep -E "^test |test result|panicked|Validation Error" | cut -c1-400 | head -60
done
date -u; uptime
