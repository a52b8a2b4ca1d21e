#!/usr/bin/env bash
# Call 6 (2026-12-03, issue 12): a pipelined batch reads and checks each earlier chunk's labels while the
# later kernels run (and scans for NaN marks in a vectorised pass), against e676eec's binary
# (bench-forest-prev), alternating, three rounds (the new one first in round 2), with the wide
# forest's timeline of 4 dispatches in each binary.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W wide
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
show() { grep -E "^(chosen|other-node-layout)" | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*node_blocks: (true|false)(, breadth_first: (true|false))?.*\}, ([0-9]+ chunk)/\1x\2 blocks=\3 bfs=\5 \6/'; }
for round in 1 2 3; do
  binaries=(bench-forest-prev bench-forest); [ $round = 2 ] && binaries=(bench-forest bench-forest-prev)
  for shape in wide w1a deep; do
    declare -n src=$shape
    for binary in "${binaries[@]}"; do
      echo "== round $round $shape $binary"
      timeout 90 $B/$binary "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 | show
    done
  done
done
for binary in bench-forest-prev bench-forest; do
  echo "== wide timeline $binary"
  timeout 120 $B/$binary "${wide[@]}" --no-cpu --runs 30 --direct-shares 0.5 --timeline --chunk-counts 4 --rounds 2 \
    | grep -A 6 "^timelines"
done
date -u; uptime
