#!/usr/bin/env bash
# Call 3 (2026-12-02, issue 12): does the deep forest's kernel wait for its nodes' cache misses? The same
# 150 walks a row over fewer distinct trees (bench-forest --distinct-trees N: the first N trees repeated
# in turn, their nodes shared, a fraction of the bytes to read), single nodes, two rounds, deep and W1a.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
for round in 1 2; do
  for shape in deep w1a; do
    declare -n src=$shape
    for distinct in 150 45 15 5 1; do
      echo "== round $round $shape --distinct-trees $distinct"
      timeout 90 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 --node-blocks false \
        --distinct-trees $distinct | grep -E "^chosen" \
        | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*node_blocks: (true|false).*\}, ([0-9]+ chunk)/\1x\2 blocks=\3 \4/'
    done
  done
done
date -u; uptime
