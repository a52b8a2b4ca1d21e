#!/usr/bin/env bash
# Two GPUs, measured (the nvidia-h200-x2 kind): one forest function over one GPU and over both, in
# process (bench-devices: W1a at 5788 rows per call, the wide shallow forest at 100,000) and over TCP
# (`vknf serve --devices 0 | all` + `vknf load`, 256 and 5788 rows per request, with a per-thread CPU
# profile of server and client showing where the host's cores run out), and one device declared lost
# under load. Needs, under .device/: vknf, bench-devices, forest.spv, paper-rf-tree/; and .gl/.
set -uo pipefail
OUT=${OUT:-/tmp/vknf-bench}
mkdir -p "$OUT"
W=/tmp/vknf-devices; mkdir -p $W/manifests
exec > >(tee "$OUT/log-devices.txt") 2>&1
source .gl/setup-vulkan.sh
B=.device
# vknf links libpcap (the traffic path); the GPU machine lacks it: .device/lib carries it.
export LD_LIBRARY_PATH=$PWD/.device/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
date -u
nvidia-smi --query-gpu=index,name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
nproc
$B/vknf devices | grep -E "^\[" || true

echo "== in process: one GPU, then both; then device 1 lost under load"
timeout 240 $B/bench-devices --paper-tree $B/paper-rf-tree --devices "0;all" --shapes w1a,wide \
  --callers ${CALLERS:-16} --lanes 3 --seconds 5 --lose-device 1 --json "$OUT/devices.json"

echo "== in process, 32 callers (W1a)"
timeout 120 $B/bench-devices --paper-tree $B/paper-rf-tree --devices "0;all" --shapes w1a \
  --callers 32 --lanes 4 --seconds 5 --json "$OUT/devices-32.json"
echo "== in process, where the cores go (W1a, both GPUs, 16 callers)"
$B/bench-devices --paper-tree $B/paper-rf-tree --devices all --shapes w1a --callers 16 --lanes 3 \
  --seconds 9 > "$OUT/devices-profiled.txt" 2>&1 &
inproc=$!
sleep 5
python3 bench/thread_cpu.py 3 $inproc:bench-devices
wait $inproc; cat "$OUT/devices-profiled.txt"

echo "== over TCP"
$B/vknf compile-model $B/paper-rf-tree --trees 150 -o $W/w1.vkf --quiet
$B/vknf manifest --name w1 --port 7700 --kind forest --spirv $B/forest.spv --model $W/w1.vkf \
  --max-batch-rows 8192 --max-wait-us 50 --node-address 127.0.0.1 -o $W/manifests/w1.yaml
serve() { # serve DEVICES
  $B/vknf --log info serve --manifests $W/manifests --host-address 127.0.0.1 --lanes 4 --devices "$1" \
    --max-queued-mib 1024 --metrics-addr 127.0.0.1:9700 > "$OUT/serve-devices-$1.log" 2>&1 &
  server=$!
  for _ in $(seq 1 150); do curl -fs http://127.0.0.1:9700/readyz >/dev/null 2>&1 && break; sleep 0.2; done
  curl -fs http://127.0.0.1:9700/readyz; echo
}
stop() { kill -TERM $server; wait $server; }
load() { # load ROWS CONNECTIONS DEPTH: 8 s of load, a 4 s CPU profile in its middle
  echo "-- load --rows $1 --connections $2 --depth $3"
  timeout 60 $B/vknf load --addr 127.0.0.1:7700 --min-value 0 --max-value 1 --rows $1 --connections $2 \
    --depth $3 --duration 8 &
  local client=$!
  sleep 3
  # $client is `timeout`; the load generator is its child.
  python3 bench/thread_cpu.py 4 $server:server "$(pgrep -P $client | head -1):client"
  wait $client
  curl -fs http://127.0.0.1:9700/metrics | grep -E '^vknf_device_(batches|rows)_total' | tr '\n' ' '; echo
}
for devices in 0 all; do
  echo "== vknf serve --devices $devices"
  serve $devices
  load 256 16 8
  load 256 32 16
  load 5788 8 2
  load 5788 16 2
  stop
done
date -u
