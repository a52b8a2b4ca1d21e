#!/usr/bin/env bash
# Call 7 (2026-12-03, issue 12): ground for docs/forest-kernel.md item 25's schedule: what one
# dispatch of the wide forest costs on the GPU (kernel between GPU timestamps, so the busy host does
# not enter) for the first 2,000 to 25,000 rows of its batch, with 8 (the default), 16, 32 and 64
# tree lanes (the release bench-forest of 360b6a8, whose forest path HEAD keeps).
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W wide
for n in 2000 4000 8000 16000 25000; do
  python3 -c "import numpy as np; x = np.load('$W/wide_x.npy'); np.save('$W/wide_x$n.npy', x[:$n])"
done
show() { grep -E "^chosen" | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*node_blocks: (true|false)(, breadth_first: (true|false))?.*\}, ([0-9]+ chunk)/\1x\2 blocks=\3 bfs=\5 \6/'; }
for n in 2000 4000 8000 16000 25000; do
  for lanes in 8 16 32 64; do
    echo "== rows $n lanes $lanes"
    timeout 60 $B/bench-forest-prev --model $W/wide.onnx --input $W/wide_x$n.npy --name wide$n --no-cpu --runs 20 \
      --tree-lanes $lanes --direct-shares 0.5 | show
  done
done
date -u; uptime
