#!/usr/bin/env bash
# Call 4 (2026-12-03, issue 12): the shapes table with the final bench-forest (21f8471: plan tuning with
# finalists; `o` as a plan; copies in the dispatches' lists removed), each shape also tuned on its whole
# batch (9 rounds) and then its rule against the tuned plan, four alternating rounds; "today" is
# bench-forest-old (7ac5dd8's forest paths, as dd82d62's); ONNX Runtime on W1a too (FULL=1).
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
FULL=1 TUNE_ROUNDS=9 TUNED_ROUNDS=4 bash bench/run_gpu_shapes.sh table
date -u; uptime
