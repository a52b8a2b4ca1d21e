#!/usr/bin/env bash
# Call 3 (2026-12-02, issue 12): a batch of one dispatch with its DMA on the dispatch's own compute
# queue, ordered by a barrier (ForestOptions::copy_beside_dispatch, "/b"), against the transfer queue
# and a semaphore between the queues (the chosen configuration), W1a and the deep forest: timelines on
# the host's clock (with the moment the DMA's submission returned), then three rounds alternating the
# two, each bench-forest's dispatch table of two rounds.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
for round in 1 2 3; do
  for shape in w1a deep; do
    declare -n src=$shape
    echo "== round $round $shape"
    timeout 100 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 --timeline --chunk-counts 1 \
      --beside false,true --rounds 2 --json "$OUT/$shape-$round.json" | sed -n '/^dispatches/,$p'
  done
done
date -u; uptime
