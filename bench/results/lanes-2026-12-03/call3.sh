#!/usr/bin/env bash
# Call 3 (2026-12-03, issue 12): are the 20-50 us between a wide-forest dispatch's copy (or the kernel
# before it) and its list's start the host's doing? Calls 1-2's timelines put them only where the
# host was still busy: the pool's 16 threads writing the later chunks' rows, then spinning 500 us
# (keep-awake) beside the caller's thread polling. Here the pool has 16, 14 or 12 threads
# (RAYON_NUM_THREADS) and keeps them awake 500 or 0 us, one process each, two passes alternating;
# each runs 4 dispatches of 8 lanes and 6 of 16, two rounds, then their median timelines.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W wide
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
for pass in 1 2; do
  for threads in 16 14 12; do
    for awake in 500 0; do
      echo "== pass $pass threads $threads awake $awake"
      RAYON_NUM_THREADS=$threads timeout 120 $B/bench-forest "${wide[@]}" --no-cpu --runs 30 --direct-shares 0.5 \
        --writers-awake-us $awake --timeline --chunk-counts 4,6@16 --rounds 2 \
        | grep -E -A 14 "^dispatches" | cut -c1-230
    done
  done
done
date -u; uptime
