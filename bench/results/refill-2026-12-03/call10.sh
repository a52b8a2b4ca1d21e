#!/usr/bin/env bash
# Call 10 (2026-12-03): HEAD's bench-forest (7ac5dd8: the transfer queue's lists end with a barrier
# naming transfer writes only, 8cde6c3; compute lists' barriers name uniform reads too, f9a9931)
# against 038c62a's (bench-forest-head) on W1a and the wide forest, whose batches copy on the transfer
# queue: the chosen configuration end to end, alternating processes, two rounds.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device; W=/tmp/vknf-work
prepare_shapes $W wide
w1a=(--paper-tree $B/paper-rf-tree --name w1a); wide=(--model $W/wide.onnx --input $W/wide_x.npy --name wide)
for round in 1 2; do
  for bin in bench-forest-head bench-forest; do
    for shape in w1a wide; do
      declare -n src=$shape
      echo "round $round $bin $shape: $(timeout 60 $B/$bin "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 | grep -E '^chosen' | sed -E 's/KernelConfig \{.*\}, //')"
    done
  done
done
date -u
