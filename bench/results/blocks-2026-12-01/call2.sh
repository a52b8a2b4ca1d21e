#!/usr/bin/env bash
# Call 2 (2026-12-01, session 09:23): the server over loopback TCP, the last measured binary (59238e3,
# "old") against this tree's ("new": the batcher and the writer task read their channels with
# poll_recv; the kernel's node walk shares goes_left with the block walk), alternating, two rounds.
set -uo pipefail
export OUT=${OUT:-/tmp/out}
mkdir -p $OUT
exec > >(tee "$OUT/log-server-ab.txt") 2>&1
source .gl/setup-vulkan.sh >/dev/null
export LD_LIBRARY_PATH=$PWD/.device/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
B=.device; W=/tmp/vknf-server-ab
mkdir -p $W
for v in old new; do
  xz -dc $B/vknf-$v.xz > $W/vknf-$v && chmod +x $W/vknf-$v
  mkdir -p $W/m-$v
  $W/vknf-$v compile-model $B/paper-rf-tree --trees 150 -o $W/w1-$v.vkf --quiet
  $W/vknf-$v manifest --name w1 --port 7700 --kind forest --spirv $B/forest-$v.spv --model $W/w1-$v.vkf \
    --max-batch-rows 8192 --max-wait-us 50 --node-address 127.0.0.1 -o $W/m-$v/w1.yaml
done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
date -u
run() { echo "-- load $*"; timeout 30 $W/vknf-$v load --addr 127.0.0.1:7700 --min-value 0 --max-value 1 "$@" 2>&1 | grep -vE "^\s*$"; }
for round in 1 2; do
  for v in old new; do
    echo "== round $round: $v"
    $W/vknf-$v --log warn serve --manifests $W/m-$v --host-address 127.0.0.1 --lanes 8 \
      --metrics-addr 127.0.0.1:9700 > $W/serve-$v-$round.log 2>&1 &
    server=$!
    for _ in $(seq 1 100); do curl -fs http://127.0.0.1:9700/readyz >/dev/null 2>&1 && break; sleep 0.2; done
    run --rows 1 --connections 1 --depth 1 --duration 4
    run --rows 1 --connections 4 --depth 1 --duration 4
    run --rows 1 --connections 16 --depth 64 --duration 4
    run --rows 256 --connections 16 --depth 8 --duration 4
    run --rows 5788 --connections 4 --depth 2 --duration 4
    kill -TERM $server; wait $server
  done
done
date -u
