#!/usr/bin/env bash
# (Ran with this session's intermediate binary, whose `--tapers` option and `ForestOptions::chunk_taper` were
# dropped after this call and call 3: see bench/RESULTS.md.)
# Call 1 (2026-12-02, 01:30 UTC session): where a pipelined batch's time goes. bench-runtime --links with
# the host's writes into pinned memory (alone and beside the DMA), for W1a's 6.9 MB and the wide forest's
# 32 MB; then bench-forest --timeline on the wide forest, W1a and deep: end to end and the median
# per-dispatch timeline for several dispatch counts and tapers (ForestOptions::chunk_taper).
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
wait $p1 $p2; tail -n 3 $OUT/prepare-*.log; date -u; uptime
echo "== links 6.9 MB"
timeout 100 $B/bench-runtime --links --round-trips 200 --json $OUT/links-6.9MB.json
echo "== links 32 MB"
timeout 100 $B/bench-runtime --links --round-trips 200 --bytes 32000000 --json $OUT/links-32MB.json
echo "== wide"
timeout 200 $B/bench-forest --model $W/wide.onnx --input $W/wide_x.npy --name wide --no-cpu --runs 30 \
  --timeline --chunk-counts 2,3,4,6,8 --tapers 1,0.7,0.5,0.3 --json $OUT/wide.json
echo "== w1a"
timeout 150 $B/bench-forest --paper-tree $B/paper-rf-tree --no-cpu --runs 30 \
  --timeline --chunk-counts 1,2,3 --tapers 1,0.5,0.3,0.2 --json $OUT/w1a.json
echo "== deep"
timeout 150 $B/bench-forest --model $W/deep.onnx --input $W/deep_x.npy --name deep --no-cpu --runs 30 \
  --timeline --chunk-counts 1,2,3 --tapers 1,0.5,0.3,0.2 --json $OUT/deep.json
date -u; uptime
