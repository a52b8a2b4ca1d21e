#!/usr/bin/env bash
# The function runtime re-measured on the GPU machine, before and after a change, in one call: the
# compact server table (one-row closed-loop latency, 64/256/5788-row throughput over loopback TCP) for
# each `vknf` binary given, the forest kernel's small-batch table in process, and the in-process API's
# one-call latency next to the raw lane (bench-api).
#
# Usage (on the GPU machine, from the repository root): bash bench/run_gpu_runtime.sh NAME=DIR ...
#   each DIR holding a `vknf` binary; .device/ holds bench-forest, bench-api, forest.spv and
#   paper-rf-tree/ (bench/README.md), and .gl/ the Vulkan loader.
set -uo pipefail
OUT=${OUT:-/tmp/vknf-bench}
mkdir -p "$OUT"
W=/tmp/vknf-runtime; mkdir -p $W/manifests
exec > >(tee "$OUT/log-runtime.txt") 2>&1
source .gl/setup-vulkan.sh
B=.device
date -u
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
first=${1#*=}
first=${first%/}
$first/vknf compile-model $B/paper-rf-tree --trees 150 -o $W/w1.vkf --quiet
$first/vknf manifest --name w1 --port 7700 --kind forest --spirv $B/forest.spv --model $W/w1.vkf \
  --max-batch-rows 8192 --max-wait-us 50 --node-address 127.0.0.1 -o $W/manifests/w1.yaml

for pair in "$@"; do
  name=${pair%%=*}; dir=${pair#*=}
  echo "== server table: $name"
  $dir/vknf --log warn serve --manifests $W/manifests --host-address 127.0.0.1 --lanes 8 \
    --metrics-addr 127.0.0.1:9700 > "$OUT/serve-$name.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do curl -fs http://127.0.0.1:9700/readyz >/dev/null 2>&1 && break; sleep 0.2; done
  for round in 1 2; do
    echo "-- $name round $round"
    timeout 60 $dir/vknf load --addr 127.0.0.1:7700 --min-value 0 --max-value 1 --rows 1 --connections 1 --depth 1 --duration 5
    timeout 60 $dir/vknf load --addr 127.0.0.1:7700 --min-value 0 --max-value 1 --rows 64 --connections 16 --depth 16 --duration 5
    timeout 60 $dir/vknf load --addr 127.0.0.1:7700 --min-value 0 --max-value 1 --rows 256 --connections 16 --depth 8 --duration 5
    timeout 60 $dir/vknf load --addr 127.0.0.1:7700 --min-value 0 --max-value 1 --rows 5788 --connections 8 --depth 1 --duration 5
  done
  kill -TERM $server; wait $server
done

echo "== W1a in process: small batches on both pipelines"
timeout 120 $B/bench-forest --paper-tree $B/paper-rf-tree --no-cpu --runs 20 --small-batches \
  --json "$OUT/w1a_small_batches.json"
echo "== in-process API vs raw lane (one call at a time)"
timeout 180 $B/bench-api --paper-tree $B/paper-rf-tree --sizes 1,64,256,5788 --runs 3000 --json "$OUT/api.json"
date -u
