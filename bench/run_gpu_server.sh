#!/usr/bin/env bash
# The server benchmark on the GPU machine: the W1 forest (the paper's tree x150, 300 features, 198
# classes) served by `vknf serve` from a manifest, loaded over loopback TCP by `vknf load` at 1 to 5788
# rows per request; the forest kernel's small-batch latency in process; and where a one-row request's
# time goes (the server's own histograms against the client's figure).
#
# Needs, under .device/: vknf, bench-forest, forest.spv, paper-rf-tree/ (see bench/README.md), and .gl/.
set -uo pipefail
OUT=${OUT:-/tmp/vknf-bench}
mkdir -p "$OUT"
W=/tmp/vknf-server; mkdir -p $W/manifests
exec > >(tee "$OUT/log-server.txt") 2>&1
source .gl/setup-vulkan.sh
B=.device
date -u
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== W1a in process: default configuration, then small batches on both pipelines"
timeout 120 $B/bench-forest --paper-tree $B/paper-rf-tree --no-cpu --runs 20 --small-batches \
  --json "$OUT/w1a_small_batches.json"
$B/vknf compile-model $B/paper-rf-tree --trees 150 -o $W/w1.vkf --quiet
$B/vknf manifest --name w1 --port 7700 --kind forest --spirv $B/forest.spv --model $W/w1.vkf \
  --max-batch-rows 8192 --max-wait-us 50 --node-address 127.0.0.1 -o $W/manifests/w1.yaml

serve() { # serve LOG_NAME [extra serve flags]
  local log=$1; shift
  $B/vknf --log info serve --manifests $W/manifests --host-address 127.0.0.1 --lanes ${LANES:-8} \
    --metrics-addr 127.0.0.1:9700 "$@" > "$OUT/$log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do curl -fs http://127.0.0.1:9700/readyz >/dev/null 2>&1 && break; sleep 0.2; done
  curl -fs http://127.0.0.1:9700/readyz; echo
}
stop() { kill -TERM $server; wait $server; }
run() { echo "== load $*"; timeout 60 $B/vknf load --addr 127.0.0.1:7700 --min-value 0 --max-value 1 "$@"; }
# Server-side means since the last call (admission to answer queued; lane run: rows in, GPU, outputs out).
prev_ls=0; prev_lc=0; prev_es=0; prev_ec=0
breakdown() {
  read -r ls lc es ec < <(curl -fs http://127.0.0.1:9700/metrics | awk '
    /^vknf_request_latency_seconds_sum/ {ls=$2} /^vknf_request_latency_seconds_count/ {lc=$2}
    /^vknf_execution_seconds_sum/ {es=$2} /^vknf_execution_seconds_count/ {ec=$2}
    END { print ls+0, lc+0, es+0, ec+0 }')
  awk -v ls=$ls -v lc=$lc -v es=$es -v ec=$ec -v pls=$prev_ls -v plc=$prev_lc -v pes=$prev_es -v pec=$prev_ec 'BEGIN {
    if (lc > plc && ec > pec) printf "server: mean admission-to-answer %.1f us, mean lane run %.1f us over %d batches\n",
      (ls-pls)/(lc-plc)*1e6, (es-pes)/(ec-pec)*1e6, ec-pec }'
  prev_ls=$ls; prev_lc=$lc; prev_es=$es; prev_ec=$ec
}
reset_breakdown() { prev_ls=0; prev_lc=0; prev_es=0; prev_ec=0; }

echo "== one-row latency, default settings (lane threads sleep when idle)"
serve serve-default.log
run --rows 1 --connections 1 --depth 1 --duration 5; breakdown
run --rows 1 --connections 2 --depth 1 --duration 5; breakdown
run --rows 1 --connections 4 --depth 1 --duration 5; breakdown
run --rows 1 --rate 1000 --connections 1 --duration 5; breakdown
run --rows 1 --rate 2000 --connections 4 --duration 5; breakdown
run --rows 1 --rate 20000 --connections 8 --duration 5; breakdown
run --rows 64 --connections 1 --depth 1 --duration 5; breakdown
run --rows 5788 --connections 1 --depth 1 --duration 5; breakdown
stop; reset_breakdown
for spin in 200 2000; do
  echo "== one-row latency, lane threads polling ${spin} us for work (--lane-spin-us ${spin})"
  serve serve-spin${spin}.log --lane-spin-us ${spin}
  run --rows 1 --connections 1 --depth 1 --duration 5; breakdown
  run --rows 1 --connections 4 --depth 1 --duration 5; breakdown
  run --rows 1 --rate 1000 --connections 1 --duration 5; breakdown
  run --rows 1 --rate 20000 --connections 8 --duration 5; breakdown
  stop; reset_breakdown
done

echo "== throughput"
serve serve.log
run --rows 1 --connections 16 --depth 64 --duration 5
run --rows 64 --connections 16 --depth 16 --duration 5
run --rows 256 --connections 16 --depth 8 --duration 5
run --rows 512 --connections 16 --depth 4 --duration 5
run --rows 2048 --connections 8 --depth 4 --duration 5
run --rows 5788 --connections 4 --depth 2 --duration 5
run --rows 5788 --connections 8 --depth 1 --duration 5
curl -fs http://127.0.0.1:9700/metrics | grep -E "^vknf_" | grep -vE "_bucket" | head -40 > "$OUT/metrics.txt"
stop
date -u
