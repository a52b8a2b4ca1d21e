#!/usr/bin/env bash
# Call 1 (2026-12-02, issue 12): what the deep forest's kernel waits for. bench-forest (this commit: the
# forest shader's buffers `restrict`) against bench-forest-old (185b308), alternating, two rounds, on the
# deep forest and W1a; then the same rows reordered (--row-order by-label: a workgroup's rows mostly walk
# the same paths; first-row: every row alike, no divergence at all); the SM clock sampled throughout;
# then the four named shapes against scikit-learn, ONNX Runtime and Hummingbird (run_gpu_shapes.sh table).
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
nvidia-smi --query-gpu=timestamp,pstate,clocks.sm,clocks.max.sm,clocks.mem,power.draw,utilization.gpu --format=csv -lms 250 > "$OUT/clocks.csv" &
smi=$!
B=.device
w1a=(--paper-tree $B/paper-rf-tree --name w1a); deep=(--model $B/deep.vkf --input $B/deep_x.npy --name deep)
show() { grep -E "^(chosen|other-node-layout|tree order)" | sed -E 's/KernelConfig \{ rows_per_group: ([0-9]+), tree_lanes: ([0-9]+),.*node_blocks: (true|false).*\}, ([0-9]+ chunk)/\1x\2 blocks=\3 \4/'; }
for round in 1 2; do
  for shape in deep w1a; do
    declare -n src=$shape
    for binary in bench-forest-old bench-forest; do
      echo "== round $round $shape $binary"; date -u +%T
      timeout 90 $B/$binary "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 | show
    done
  done
done
for order in by-label first-row; do
  for shape in deep w1a; do
    declare -n src=$shape
    echo "== $shape --row-order $order"; date -u +%T
    timeout 90 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --direct-shares 0.5 --row-order $order | show
  done
done
echo "== table"; date -u
bash bench/run_gpu_shapes.sh table > /dev/null 2>&1
cp /tmp/vknf-bench/log-table.txt /tmp/vknf-bench/shapes-table.tgz "$OUT/" 2>/dev/null
kill $smi; date -u; uptime
