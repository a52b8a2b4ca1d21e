#!/usr/bin/env bash
# Call 3: bench-forest's sweep (every workgroup shape and pipelined chunk count, both node layouts) on
# W1a, deep and wide: does any configuration make node blocks win where the default shape loses?
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p $OUT
exec > >(tee "$OUT/log-sweep.txt") 2>&1
source .gl/setup-vulkan.sh >/dev/null
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
B=.device; W=/tmp/vknf-work; mkdir -p $W/sweep
date -u
timeout 200 python3 bench/gpu_baselines.py prepare wide $W > $W/prepare-wide.log 2>&1 & p1=$!
timeout 200 python3 bench/gpu_baselines.py prepare deep $W > $W/prepare-deep.log 2>&1 & p2=$!
echo "== w1a sweep"
timeout 200 $B/bench-forest --paper-tree $B/paper-rf-tree --name w1a --sweep --no-cpu --runs 20 --json $W/sweep/w1a.json
wait $p1 $p2; date -u
for shape in deep wide; do
  echo "== $shape sweep"
  timeout 200 $B/bench-forest --model $W/$shape.onnx --input $W/${shape}_x.npy --name $shape --sweep --no-cpu --runs 20 --json $W/sweep/$shape.json
done
tar czf $OUT/sweep.tgz -C $W sweep
date -u
