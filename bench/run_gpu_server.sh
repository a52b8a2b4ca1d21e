#!/usr/bin/env bash
# The server benchmark on the GPU machine: the W1 forest (the paper's tree x150, 300 features, 198
# classes) served by `vknf serve` from a manifest, loaded over loopback TCP by `vknf load` at 1, 64 and
# 5788 rows per request; and the runtime/forest in-process figures again for comparison.
set -uo pipefail
OUT=${OUT:-/tmp/vknf-bench}
mkdir -p "$OUT"
W=/tmp/vknf-server; mkdir -p $W/manifests
exec > >(tee "$OUT/log-server.txt") 2>&1
source .gl/setup-vulkan.sh
B=.device
date -u
echo "== runtime (in process)"; timeout 60 $B/bench-runtime --json "$OUT/runtime.json"
echo "== W1a in process, default configuration, pipelined"; timeout 90 $B/bench-forest --paper-tree $B/paper-rf-tree \
  --json "$OUT/w1a_default.json"
$B/vknf compile-model $B/paper-rf-tree --trees 150 -o $W/w1.vkf --quiet
$B/vknf manifest --name w1 --port 7700 --kind forest --spirv $B/forest.spv --model $W/w1.vkf \
  --max-batch-rows 8192 --max-wait-us 50 --node-address 127.0.0.1 -o $W/manifests/w1.yaml
$B/vknf --log info serve --manifests $W/manifests --host-address 127.0.0.1 --lanes ${LANES:-8} \
  --metrics-addr 127.0.0.1:9700 > "$OUT/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -fs http://127.0.0.1:9700/readyz >/dev/null 2>&1 && break; sleep 0.2; done
curl -fs http://127.0.0.1:9700/readyz; echo
run() { echo "== load $*"; timeout 60 $B/vknf load --addr 127.0.0.1:7700 --min-value 0 --max-value 1 "$@"; }
run --rows 1 --connections 1 --depth 1 --duration 5
run --rows 1 --rate 2000 --connections 4 --duration 5
run --rows 1 --rate 20000 --connections 8 --duration 5
run --rows 1 --connections 16 --depth 64 --duration 5
run --rows 64 --connections 16 --depth 16 --duration 5
run --rows 512 --connections 16 --depth 8 --duration 5
run --rows 2048 --connections 8 --depth 4 --duration 5
run --rows 5788 --connections 1 --depth 1 --duration 5
run --rows 5788 --connections 4 --depth 4 --duration 5
run --rows 5788 --connections 8 --depth 8 --duration 5
curl -fs http://127.0.0.1:9700/metrics | grep -E "^vknf_" | grep -vE "_bucket" | head -40 > "$OUT/metrics.txt"
kill -TERM $server; wait $server
date -u
echo "== agent cold start (fake API server, GPU loader): ADDED event to port answering"
timeout 120 $B/cold_start --gpu --json "$OUT/cold_start_gpu.json" 20 64 8
timeout 120 $B/cold_start --gpu --json "$OUT/cold_start_gpu_150.json" 10 150 7
