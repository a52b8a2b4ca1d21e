#!/usr/bin/env bash
# Call 5 (2026-12-02): the final binary (bench-forest: call 2's plus the 5 ms poll of whole batches)
# against call 2's (bench-forest-old), every shape with its baselines, on a fresh machine.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
uptime
bash bench/run_gpu_shapes.sh table
uptime
