#!/usr/bin/env bash
# Call 2 (2026-12-02): does a pipelined chunk want more tree lanes than the whole batch? The wide forest's
# per-dispatch timeline with 8, 16 and 32 tree lanes per row (3, 4 and 6 equal dispatches), two rounds
# alternating; W1a and deep with node blocks on and off (one dispatch), two rounds.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=/tmp/vknf-work; mkdir -p $W
exec > >(tee "$OUT/log.txt") 2>&1
source .gl/setup-vulkan.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
date -u; uptime
B=.device
timeout 200 python3 bench/gpu_baselines.py prepare wide $W > $OUT/prepare-wide.log 2>&1
tail -n 3 $OUT/prepare-wide.log; date -u; uptime
for round in 1 2; do
  for lanes in 8 16 32; do
    echo "== wide round $round, $lanes tree lanes"
    timeout 100 $B/bench-forest --model $W/wide.onnx --input $W/wide_x.npy --name wide --no-cpu --runs 30 \
      --rows-per-group 16 --tree-lanes $lanes --direct-shares 0.4 \
      --timeline --chunk-counts 3,4,6 --tapers 1 --json $OUT/wide-r$round-l$lanes.json
  done
  for blocks in false true; do
    echo "== w1a round $round, node blocks $blocks"
    timeout 100 $B/bench-forest --paper-tree $B/paper-rf-tree --no-cpu --runs 30 --node-blocks $blocks \
      --direct-shares 0.4 --timeline --chunk-counts 1 --tapers 1 --json $OUT/w1a-r$round-b$blocks.json
  done
  uptime
done
date -u; uptime
