#!/usr/bin/env bash
# The benchmark table on the GPU machine, in two calls that each fit the 10-minute limit:
#   bash bench/run_gpu.sh w1a   runtime round trip and bandwidth, then W1a (the paper's tree x150)
#   bash bench/run_gpu.sh w1b   W1b (a real scikit-learn forest of the paper's shape)
# .device/ holds the release binaries and a copy of the paper tree, .gl the Vulkan loader, .whl the wheels.
# Every step has its own time limit and writes to $OUT at once, so a cut-off run keeps what it measured.
set -uo pipefail
stage=${1:?w1a or w1b}
OUT=${OUT:-/tmp/vknf-bench}
mkdir -p "$OUT"
W=/tmp/vknf-work; mkdir -p $W
exec > >(tee "$OUT/log-$stage.txt") 2>&1
source .gl/setup-vulkan.sh
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
date -u
B=.device
if [ "$stage" = w1a ]; then
  echo "== runtime"; timeout 60 $B/bench-runtime --json "$OUT/runtime.json"
  echo "== W1a vknf"; timeout 150 $B/bench-forest --paper-tree $B/paper-rf-tree --sweep --write-input $W/w1a_x.npy \
    --write-labels $W/w1a_vknf_labels.npy --json "$OUT/w1a_vknf.json"
  echo "== W1a baselines"; timeout 300 python3 bench/gpu_baselines.py run w1a $W --paper-tree $B/paper-rf-tree
  cp $W/w1a_baselines.json "$OUT/" 2>/dev/null
else
  echo "== W1b prepare"; timeout 200 python3 bench/gpu_baselines.py prepare-w1b $W
  echo "== W1b vknf"; timeout 150 $B/bench-forest --model $W/w1b.onnx --input $W/w1b_x.npy --sweep \
    --write-labels $W/w1b_vknf_labels.npy --json "$OUT/w1b_vknf.json"
  echo "== W1b baselines"; timeout 200 python3 bench/gpu_baselines.py run w1b $W
  cp $W/w1b_baselines.json "$OUT/" 2>/dev/null
fi
date -u
