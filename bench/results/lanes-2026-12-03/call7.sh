#!/usr/bin/env bash
# Call 7 (2026-12-03, issue 12): the final bench-forest (lane steps sized by whole workgroups an SM; a
# batch in one dispatch runs its directly written rows first, ForestOptions::for_whole_batches) against
# HEAD's before this work (c305b13: bench-forest-old), with scikit-learn, ONNX Runtime, Hummingbird and
# the PCIe copy floor on the same rows, every shape; then W1a's and the deep forest's whole batches,
# four rounds of alternating processes.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash bench/run_gpu_shapes.sh table
B=.device
for round in 1 2 3 4; do
  binaries=(bench-forest-old bench-forest); [ $((round % 2)) = 0 ] && binaries=(bench-forest bench-forest-old)
  for binary in "${binaries[@]}"; do
    for shape in w1a deep; do
      src=(--paper-tree $B/paper-rf-tree); [ $shape = deep ] && src=(--model $B/deep.vkf --input $B/deep_x.npy)
      echo "== round $round $shape $binary: $(timeout 40 $B/$binary "${src[@]}" --no-cpu --runs 40 --direct-shares 0.5 \
        | grep -E '^chosen' | sed -E 's/.*chunk\(s\): //')"
    done
  done
done | tee $OUT/whole-batches.txt
date -u; uptime
