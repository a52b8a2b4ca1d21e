#!/usr/bin/env bash
# Call 4 (2026-12-02, issue 12): how long the DMA's and the dispatch's submissions take while the host
# writes the BAR and while it does not: W1a's timeline (GPU moments on the host's clock) with direct
# shares 0 (every row by DMA), 0.5 (the default) and 1.0 (every row written into the BAR, no DMA), twice.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device
for round in 1 2; do
  for share in 0 0.5 1.0; do
    echo "== round $round share $share"
    timeout 60 $B/bench-forest --paper-tree $B/paper-rf-tree --name w1a --no-cpu --runs 30 --direct-shares 0.5 \
      --chosen-share $share --timeline --rounds 1 --json "$OUT/w1a-$share-$round.json" | sed -n '/^timelines/,$p'
  done
done
date -u; uptime
