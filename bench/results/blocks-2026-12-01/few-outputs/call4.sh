#!/usr/bin/env bash
# Call 4: the few-outputs default (8 tree lanes x 16 rows for forests of >= 64 trees and <= 2 outputs)
# against the previous binary (61a82d1 = bench-forest-old), every shape with its baselines.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p $OUT
bash bench/run_gpu_shapes.sh table
