#!/usr/bin/env bash
# Call 4 (2026-12-03, issue 12): lane steps (more tree lanes for dispatches of fewer rows, sized from
# the SMs x warps the driver reports) against HEAD's kernel (bench-forest-prev), in alternating
# processes, two rounds: W1a and the deep forest on 1,500-5,788 rows, the wide forest on 4,096-100,000
# (the first rows of its batch). Kernel times are GPU timestamps of one dispatch.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W wide
python3 -c "
import numpy as np
d = np.load('$B/deep_x.npy'); w = np.load('$W/wide_x.npy')
for n in (1500, 2900, 4096): np.save('$W/deep_x%d.npy' % n, d[:n])
for n in (4096, 8000, 12000, 16000): np.save('$W/wide_x%d.npy' % n, w[:n])
"
show() { grep -E "^chosen" | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*lane_steps: (\[[^]]*\]).*\}, ([0-9]+ chunk)/\1x\2 steps=\3 \4/; s/Some\(LaneStep \{ max_rows: ([0-9]+), rows_per_group: ([0-9]+), tree_lanes: ([0-9]+) \}\)/\1:\2x\3/g; s/KernelConfig \{.*\}, ([0-9]+ chunk)/prev \1/'; }
cases=()
for n in 1500 2900 4096 5788; do cases+=("w1a$n --paper-tree $B/paper-rf-tree --rows $n"); done
for n in 1500 2900 4096; do cases+=("deep$n --model $B/deep.vkf --input $W/deep_x$n.npy"); done
cases+=("deep5788 --model $B/deep.vkf --input $B/deep_x.npy")
for n in 4096 8000 12000 16000; do cases+=("wide$n --model $W/wide.onnx --input $W/wide_x$n.npy"); done
cases+=("wide100000 --model $W/wide.onnx --input $W/wide_x.npy")
for round in 1 2; do
  for c in "${cases[@]}"; do
    set -- $c; name=$1; shift
    binaries=(bench-forest-prev bench-forest); [ $round = 2 ] && binaries=(bench-forest bench-forest-prev)
    for binary in "${binaries[@]}"; do
      echo "== round $round $name $binary"
      timeout 40 $B/$binary "$@" --name $name --no-cpu --runs 30 --direct-shares 0.5 | show
    done
  done
done
date -u; uptime
