#!/usr/bin/env bash
# Call 2 (2026-12-02, issue 12): (1) timelines with the GPU's moments on the host's clock (calibrated
# timestamps) for W1a and the deep forest: the chosen configuration (d1/s1/t0), a tail on a second
# stream (d1/s2/t1024) and two dispatches on two streams (d2/s2/t0); (2) the pool's threads kept
# awake after each batch with 0, 1 or 2 of them left to sleep (VKNF_AWAKE_SKIP, an experiment of this
# binary only), three rounds alternating, each with bench-forest's writes table (keep-awake 0 and 500 us).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
for shape in w1a deep; do
  declare -n src=$shape
  timeout 100 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 --timeline --chunk-counts 1,2 \
    --stream-counts 1,2 --tails 0,1024 --rounds 2 --json "$OUT/$shape-timeline.json" | sed -n '/^dispatches/,$p'
done
uptime
for round in 1 2 3; do
  for skip in 0 1 2; do
    for shape in w1a deep; do
      declare -n src=$shape
      echo "== round $round skip $skip $shape"
      VKNF_AWAKE_SKIP=$skip timeout 60 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 \
        --write-shares 0.5 --awake-us 0,500 --rounds 2 | grep -E "^chosen|round [12]:"
    done
  done
done
date -u; uptime
