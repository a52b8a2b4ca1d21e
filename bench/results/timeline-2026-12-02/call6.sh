#!/usr/bin/env bash
# Call 6 (2026-12-02): the direct share again now that BAR writes use at most four threads (they were
# measured alike at 0.3-0.5 when up to 16 threads wrote the BAR): bench-forest's input-path table with
# shares 0.3-0.7 on W1a, deep and wide, two rounds.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=/tmp/vknf-work; mkdir -p $W; B=.device
exec > >(tee "$OUT/log-shares.txt") 2>&1
source .gl/setup-vulkan.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
date -u; uptime
pids=()
for s in wide deep; do timeout 200 python3 bench/gpu_baselines.py prepare $s $W > $OUT/prepare-$s.log 2>&1 & pids+=($!); done
wait "${pids[@]}"  # (a bare wait would also wait for the tee above)
date -u; uptime
for round in 1 2; do
  for shape in w1a deep wide; do
    if [ $shape = w1a ]; then src=(--paper-tree $B/paper-rf-tree); else src=(--model $W/$shape.onnx --input $W/${shape}_x.npy); fi
    echo "== round $round $shape"
    timeout 90 $B/bench-forest "${src[@]}" --name $shape --no-cpu --runs 30 --direct-shares 0.3,0.4,0.5,0.6,0.7 \
      | grep -E "^chosen|Staged"
  done
  uptime
done
date -u
