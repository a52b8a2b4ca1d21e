#!/usr/bin/env bash
# Call 7 (2026-12-02): the final binary (direct share 0.5 by default) against the last commit's
# (215d73e), alternating, three rounds: predict's chosen configuration end to end on W1a and the tiny
# forest (the two that need no training on the machine; the session's device time was nearly spent).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=/tmp/vknf-work; mkdir -p $W; B=.device
exec > >(tee "$OUT/log-final.txt") 2>&1
source .gl/setup-vulkan.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
date -u; uptime
timeout 60 python3 bench/gpu_baselines.py prepare tiny $W > $OUT/prepare-tiny.log 2>&1
for round in 1 2 3; do
  for bin in bench-forest-old bench-forest; do
    echo "== round $round $bin w1a"
    timeout 40 $B/$bin --paper-tree $B/paper-rf-tree --no-cpu --runs 30 --direct-shares 0.5 | grep -E "^chosen"
    echo "== round $round $bin tiny"
    timeout 40 $B/$bin --model $W/tiny.onnx --input $W/tiny_x.npy --name tiny --no-cpu --runs 30 --direct-shares 0.5 | grep -E "^chosen"
  done
done
date -u; uptime
