#!/usr/bin/env bash
# Call 6 (2026-12-02, issue 12): the session's final kernel (bench-forest, 9c31710) against the session's
# start (bench-forest-old, 185b308), every shape with its baselines (scikit-learn, ONNX Runtime,
# Hummingbird, the pinned copy floor) in one call.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
uptime
bash bench/run_gpu_shapes.sh table
uptime
