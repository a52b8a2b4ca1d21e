#!/usr/bin/env bash
# Call 4 (2026-12-02): call 3 again without baselines (they are in calls 1-3), to tell the 5 ms poll of
# whole batches (bench-forest) from call 2's binary (bench-forest-old) on a steadier machine: every
# shape, the two binaries alternating, two rounds, 30 runs each.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/log-poll.txt") 2>&1
source .gl/setup-vulkan.sh > /dev/null 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
W=/tmp/vknf-work; mkdir -p $W
# Waits name their process ids: a bare `wait` would also wait for the `tee` above, which never ends.
pids=()
for shape in wide tiny deep; do timeout 200 python3 bench/gpu_baselines.py prepare $shape $W > $W/prepare-$shape.log 2>&1 & pids+=($!); done
wait "${pids[@]}"
date -u; uptime
for round in 1 2; do
  for shape in w1a deep wide tiny; do
    if [ $shape = w1a ]; then src=(--paper-tree .device/paper-rf-tree); else src=(--model $W/$shape.onnx --input $W/${shape}_x.npy); fi
    for bin in bench-forest-old bench-forest; do
      echo "== round $round $shape $bin"
      timeout 100 .device/$bin "${src[@]}" --no-cpu --runs 30 2>&1 | grep -E '^(chosen|previous-default)|^  (Direct|Staged)' | sed -E 's/KernelConfig \{.*\}, ([0-9]+ chunk)/\1/'
    done
  done
done
date -u; uptime
