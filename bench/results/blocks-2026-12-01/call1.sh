#!/usr/bin/env bash
# Call 1 (2026-12-01, session 09:23): the named shapes against the last measured binary (59238e3), node
# blocks against single nodes on every shape and input path, and the traffic path's packet rate on
# this host: the last measured bench_pcap (59238e3), this tree's, and this tree's with fat LTO.
set -uo pipefail
export OUT=${OUT:-/tmp/out}
mkdir -p $OUT
B=.device
W=/tmp/vknf-work; R=$W/results
# 1. The table (prepares the shapes, times old and new, baselines): log-table.txt, shapes-table.tgz.
bash bench/run_gpu_shapes.sh table
exec > >(tee "$OUT/log-blocks.txt") 2>&1
source .gl/setup-vulkan.sh >/dev/null
date -u
# 2. Node blocks as the chosen layout on every shape (each run also times single nodes: other-node-layout),
#    with the input-path table (direct, staged with shares 0 and 0.4, host memory) in both layouts.
mkdir -p $R/blocks
for round in 1 2; do
  for shape in w1a deep wide; do
    if [ $shape = w1a ]; then src=(--paper-tree $B/paper-rf-tree); else src=(--model $W/$shape.onnx --input $W/${shape}_x.npy); fi
    for blocks in true false; do
      echo "== round $round $shape --node-blocks $blocks"
      timeout 100 $B/bench-forest "${src[@]}" --name $shape --no-cpu --runs 30 --node-blocks $blocks \
        --json $R/blocks/${shape}-${blocks}-${round}.json
    done
  done
done
tar czf $OUT/shapes-table.tgz -C $W results
date -u
# 3. pcap to features on this host's cores: old (59238e3), new, new with LTO, alternating, one thread.
exec > >(tee "$OUT/log-flows.txt") 2>&1
F=/tmp/vknf-flows; mkdir -p $F
python3 bench/flows/replicate_capture.py $B/flows-base.pcap $F/tls-bench.pcap --min-packets 1000000
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for round in 1 2 3 4; do
  for b in bench_pcap-old bench_pcap bench_pcap-lto; do
    echo "== round $round $b"
    timeout 60 $B/$b $F/tls-bench.pcap --reps 3 --direct | grep -E '^(pcap to features|read only)'
  done
done
for b in bench_pcap-old bench_pcap bench_pcap-lto; do
  echo "== $b read-ahead and sharded"
  timeout 90 $B/$b $F/tls-bench.pcap --reps 3 --shards 1,2,4,8 | grep -E '^pcap to features'
done
date -u
