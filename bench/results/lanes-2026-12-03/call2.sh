#!/usr/bin/env bash
# Call 2 (2026-12-03, issue 12): call 1's wide-forest finding again, with more rounds: the batch in 4
# dispatches of 8 lanes (the default) against 5-8 dispatches of 12-16 lanes, six rounds alternating
# in one process, then each plan's median timeline.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W wide
wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
echo "== wide plans"
timeout 300 $B/bench-forest "${wide[@]}" --no-cpu --runs 40 --direct-shares 0.5 --timeline \
  --chunk-counts 4,5@16,6@16,7@16,6@12,5@12,8@16 --rounds 6 --json $OUT/wide.json | grep -E -A 7 "^(chosen|dispatches)"
echo "== one dispatch of 12,000 and 20,000 rows, 8 and 16 lanes (GPU timestamps)"
for n in 12000 20000; do
  python3 -c "import numpy as np; x = np.load('$W/wide_x.npy'); np.save('$W/wide_x$n.npy', x[:$n])"
  for lanes in 8 16; do
    echo "rows $n lanes $lanes"
    timeout 60 $B/bench-forest --model $W/wide.onnx --input $W/wide_x$n.npy --name wide$n --no-cpu --runs 20 \
      --tree-lanes $lanes --direct-shares 0.5 | grep -E "^chosen" | sed -E 's/KernelConfig \{.*\}, //'
  done
done
date -u; uptime
