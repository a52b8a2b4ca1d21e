#!/usr/bin/env bash
# Call 3 (2026-12-02, issue 12): this session's binary (the pool kept awake 500 us after each whole
# batch by default; bench-forest) against the previous commit's (431e83c, bench-forest-old): first
# `bench/run_gpu_shapes.sh table` (every shape, scikit-learn, ONNX Runtime, Hummingbird, the copy floor),
# then three rounds alternating the two binaries on every shape, the new one with its writes table (direct
# share 0.4, 0.5, 0.6 x keep-awake 0 and 500 us).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
OUT=$OUT bash bench/run_gpu_shapes.sh table
W=/tmp/vknf-work; B=.device
exec > >(tee "$OUT/log-rounds.txt") 2>&1
date -u; uptime
for round in 1 2 3; do
  for shape in w1a deep wide tiny; do
    if [ $shape = w1a ]; then src=(--paper-tree $B/paper-rf-tree); else src=(--model $W/$shape.onnx --input $W/${shape}_x.npy); fi
    echo "== round $round $shape previous binary"
    timeout 60 $B/bench-forest-old "${src[@]}" --name $shape --no-cpu --runs 30 --direct-shares 0.5 | grep -E "^chosen"
    echo "== round $round $shape new binary"
    timeout 100 $B/bench-forest "${src[@]}" --name $shape --no-cpu --runs 30 --direct-shares 0.5 \
      --write-shares 0.4,0.5,0.6 --awake-us 0,500 --rounds 1 | grep -E "^chosen|round 1:"
  done
  uptime
done
date -u
