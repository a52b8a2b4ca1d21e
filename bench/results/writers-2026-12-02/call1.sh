#!/usr/bin/env bash
# Call 1 (2026-12-02, issue 12): each dispatch's DMA in pieces, the pool's threads writing the pinned
# rows in claimed order (ForestOptions::upload_pieces), and the pool kept awake between whole batches
# (ForestOptions::keep_writers_awake). Per shape, two rounds: bench-forest's writes table (piece counts
# 1, 2, 4, 8 x keep-awake 0 and 500 us, end to end), the input-path table with shares 0.4-0.6 and a
# timeline (both with 4 pieces and 500 us), and the previous commit's binary (bench-forest-prev, 431e83c)
# on the same rows.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=/tmp/vknf-work; mkdir -p $W; B=.device
exec > >(tee "$OUT/log.txt") 2>&1
source .gl/setup-vulkan.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
date -u; uptime; nproc
pids=()
for s in wide tiny deep; do timeout 240 python3 bench/gpu_baselines.py prepare $s $W > $OUT/prepare-$s.log 2>&1 & pids+=($!); done
wait "${pids[@]}"  # (a bare wait would also wait for the tee above)
date -u; uptime
for round in 1 2; do
  for shape in w1a deep wide tiny; do
    if [ $shape = w1a ]; then src=(--paper-tree $B/paper-rf-tree); else src=(--model $W/$shape.onnx --input $W/${shape}_x.npy); fi
    echo "== round $round $shape previous binary"
    timeout 60 $B/bench-forest-prev "${src[@]}" --name $shape --no-cpu --runs 30 --direct-shares 0.5 | grep -E "^chosen|^  Staged"
    echo "== round $round $shape new binary"
    timeout 120 $B/bench-forest "${src[@]}" --name $shape --no-cpu --runs 30 --direct-shares 0,0.3,0.4,0.5,0.6 \
      --upload-pieces 4 --writers-awake-us 500 --piece-counts 1,2,4,8 --awake-us 0,500 --rounds 1 \
      --timeline --json $OUT/$shape-r$round.json | grep -vE "^CPU reference"
    uptime
  done
done
date -u
