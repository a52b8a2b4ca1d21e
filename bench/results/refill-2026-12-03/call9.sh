#!/usr/bin/env bash
# Call 9 (2026-12-03): the final tree's tests on the H200 with the validation layer on, after the second
# review's mends (barriers on compute queues also name uniform reads; gpu_parity's expected direct
# share from its inputs and an upload-buffer probe): every test binary of vknf-vulkan and
# vknf-functions but lifecycle (unchanged since call 7, 146 s), built from f9a9931 (`cargo test --no-run`),
# stripped, in .device/tests.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
load_validation_layers
export VKNF_PYTHON=$(command -v python3)
for t in .device/tests/*; do
  echo "== $(basename $t)"
  timeout 150 $t --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED|Validation Error" | cut -c1-400 | head -20
done
date -u
