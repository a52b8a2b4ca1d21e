#!/usr/bin/env bash
# (Ran with this session's intermediate binary, whose `--piece-kib` option and
# `ForestOptions::upload_piece_bytes` were dropped after this call: see bench/RESULTS.md.)
# Call 3 (2026-12-02): each dispatch's DMA in pieces submitted as the host writes them
# (ForestOptions::upload_piece_bytes): W1a and deep (1 and 2 dispatches) and the wide forest (3 and 4),
# pieces of 0 (one copy per dispatch, as before), 512, 1024 and 2048 KiB, with the per-dispatch timeline,
# two rounds.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=/tmp/vknf-work; mkdir -p $W
exec > >(tee "$OUT/log.txt") 2>&1
source .gl/setup-vulkan.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
date -u; uptime
B=.device
timeout 200 python3 bench/gpu_baselines.py prepare wide $W > $OUT/prepare-wide.log 2>&1 & p1=$!
timeout 200 python3 bench/gpu_baselines.py prepare deep $W > $OUT/prepare-deep.log 2>&1 & p2=$!
wait $p1 $p2; tail -n 2 $OUT/prepare-*.log; date -u; uptime
for round in 1 2; do
  echo "== w1a round $round"
  timeout 120 $B/bench-forest --paper-tree $B/paper-rf-tree --no-cpu --runs 30 --direct-shares 0.4 \
    --timeline --chunk-counts 1,2 --piece-kib 0,512,1024,2048 --json $OUT/w1a-r$round.json
  echo "== deep round $round"
  timeout 120 $B/bench-forest --model $W/deep.onnx --input $W/deep_x.npy --name deep --no-cpu --runs 30 \
    --direct-shares 0.4 --timeline --chunk-counts 1,2 --piece-kib 0,512,1024,2048 --json $OUT/deep-r$round.json
  echo "== wide round $round"
  timeout 150 $B/bench-forest --model $W/wide.onnx --input $W/wide_x.npy --name wide --no-cpu --runs 30 \
    --direct-shares 0.4 --timeline --chunk-counts 3,4 --piece-kib 0,1024,2048 --json $OUT/wide-r$round.json
  uptime
done
date -u; uptime
