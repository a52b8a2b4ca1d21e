#!/usr/bin/env bash
# Call 4 (2026-12-02): this session's binary (bench-forest: the timeline, predict's results moved instead
# of copied, BAR writes on at most 4 threads) against the last commit's (215d73e, bench-forest-old),
# every shape with its baselines (bench/run_gpu_shapes.sh table); then the BAR-writer cap alone: the same
# binary without it (bench-forest-nocap) and with it alternating, three rounds, on W1a, deep and wide.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
uptime
bash bench/run_gpu_shapes.sh table
W=/tmp/vknf-work; B=.device
{
  for round in 1 2 3; do
    for bin in bench-forest-nocap bench-forest; do
      for shape in w1a deep wide; do
        if [ $shape = w1a ]; then src=(--paper-tree $B/paper-rf-tree); else src=(--model $W/$shape.onnx --input $W/${shape}_x.npy); fi
        echo "== round $round $bin $shape"
        timeout 60 $B/$bin "${src[@]}" --name $shape --no-cpu --runs 30 --direct-shares 0.4 | grep -E "^chosen|Staged direct share"
      done
    done
    uptime
  done
} 2>&1 | tee "$OUT/log-cap.txt"
date -u; uptime
