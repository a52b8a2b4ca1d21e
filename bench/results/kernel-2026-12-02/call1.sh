#!/usr/bin/env bash
# Call 1 (2026-12-02): the ways into the GPU at once (bench-runtime --links: DMA over 1-N transfer queues,
# BAR writes by 1-16 threads, both together) for W1a's 6.9 MB and the wide forest's 32 MB; then every
# shape against the previous binary (e85c44a = bench-forest-old) with its baselines. This binary: one- and
# two-output forests sum each thread's trees in registers, chunk rule one dispatch per 8 MiB (at most 4),
# `predict` defaults to the staged path with the direct share where the device has a transfer queue.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source .gl/setup-vulkan.sh > "$OUT/setup.txt" 2>&1
for bytes in 6945600 32000000; do
  echo "== links, $bytes bytes"; date -u
  timeout 90 .device/bench-runtime --links --bytes $bytes --round-trips 200 --transfers 50 --json "$OUT/links-$bytes.json"
done 2>&1 | tee "$OUT/log-links.txt"
bash bench/run_gpu_shapes.sh table
