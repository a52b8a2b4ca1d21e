#!/usr/bin/env bash
# Call 7 (2026-12-02): (1) issue 10, the traffic path's packet rates on the GPU host while it is quiet
# (bench/run_gpu_flows.sh: one thread, read ahead, sharded; the million-packet capture replicated from
# .device/flows-base.pcap, made today by bench/flows/make_capture.sh); (2) issue 12, small batches with
# node blocks (the default) and with single nodes, W1a, deep and tiny (bench-forest --small-batches).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device
echo "profilers: $(command -v nsys ncu ngfx 2>/dev/null; ls -d /usr/local/cuda*/bin /opt/nvidia/nsight* 2>/dev/null | tr "\n" " ")"
REPS=7 SHARDS=1,2,4,8,14 timeout 240 bash bench/run_gpu_flows.sh "$OUT/flows"
uptime
prepare_shapes /tmp/vknf-work tiny
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
tiny=(--model /tmp/vknf-work/tiny.onnx --input /tmp/vknf-work/tiny_x.npy --name tiny)
for shape in w1a deep tiny; do
  declare -n src=$shape
  for blocks in true false; do
    echo "== $shape node blocks $blocks"
    timeout 100 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 --node-blocks $blocks \
      --small-batches --json "$OUT/$shape-blocks-$blocks.json" | grep -E '^ +chosen '
  done
done
date -u; uptime
