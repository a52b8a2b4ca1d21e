#!/usr/bin/env bash
# Call 8 (2026-12-03): gpu_parity on the H200 with the validation layer on, after call 7's failure of
# pipelined_batches_match_scikit_learn was mended (its expected direct share was lavapipe's); the whole
# output, for random_scikit_learn_forests_match_on_the_gpu's message (it trains forests with Python).
# gpu_parity built from 8a83d10 (`cargo test --release --no-run`), stripped, in .device/tests.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
dpkg -x .device/vl/vulkan-validationlayers_*.deb /tmp/vl
export VK_LAYER_PATH=/tmp/vl/usr/share/vulkan/explicit_layer.d
export LD_LIBRARY_PATH=/tmp/vl/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
export VKNF_PYTHON=$(command -v python3)
timeout 300 .device/tests/gpu_parity --test-threads 1 2>&1 | grep -v "^test .* ok$" | cut -c1-400 | head -60
date -u
