#!/usr/bin/env bash
# Call 2 (2026-12-02): the final binary (thread sums reverted; one dispatch per 8 MiB, rounded, at most
# 4; `predict` on the staged path with the direct share where the device has a transfer queue) against
# e85c44a (bench-forest-old), every shape with its baselines; the tiny forest again, old and new
# alternating, three rounds (call 1's headline for it was 43.5 us against 28 us in its own tables);
# then pcap to features on this host (bench/run_gpu_flows.sh, this tree's bench_pcap).
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash bench/run_gpu_shapes.sh table
W=/tmp/vknf-work
{
  for round in 1 2 3; do
    for bin in bench-forest-old bench-forest; do
      echo "== tiny round $round $bin"
      timeout 60 .device/$bin --model $W/tiny.onnx --input $W/tiny_x.npy --no-cpu --runs 30 2>&1 | grep -E '^(chosen|previous-default)' | sed -E 's/KernelConfig \{.*\}, ([0-9]+ chunk)/\1/'
    done
  done
} 2>&1 | tee "$OUT/log-tiny-rounds.txt"
REPS=7 SHARDS=1,2,4,8 timeout 200 bash bench/run_gpu_flows.sh "$OUT/flows" 2>&1 | tail -40
