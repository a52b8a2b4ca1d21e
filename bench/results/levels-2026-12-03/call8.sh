#!/usr/bin/env bash
# Call 8 (2026-12-03, issue 12): the session's final bench-forest (breadth-first nodes for whole batches,
# labels read while later dispatches run, every entry of a leaf) against 0b0fdb1's (bench-forest-old),
# with scikit-learn, ONNX Runtime, Hummingbird and the PCIe copy floor on the same rows, every shape.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash bench/run_gpu_shapes.sh table
