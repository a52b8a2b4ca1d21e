#!/usr/bin/env bash
# Call 2 (2026-12-02, issue 12): after call 1 (whose BAR writes, in interleaved 64 KiB blocks, ran 2.5x
# slower), the direct share again in one contiguous range per writer, the DMA's pinned rows in ordered
# blocks and pieces. Per shape, two rounds: the previous commit's binary (bench-forest-prev, 431e83c),
# then the new one's writes table (direct share 0, 0.3, 0.5 x DMA pieces 1, 2, 4, 8 x keep-awake 0 and
# 500 us, end to end) and timelines of share 0.5 and 0 with 4 pieces and 500 us.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=/tmp/vknf-work; mkdir -p $W; B=.device
exec > >(tee "$OUT/log.txt") 2>&1
source .gl/setup-vulkan.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
date -u; uptime; nproc
pids=()
for s in wide tiny deep; do timeout 240 python3 bench/gpu_baselines.py prepare $s $W > /tmp/prepare-$s.log 2>&1 & pids+=($!); done
wait "${pids[@]}"  # (a bare wait would also wait for the tee above)
date -u; uptime
for round in 1 2; do
  for shape in w1a deep wide tiny; do
    if [ $shape = w1a ]; then src=(--paper-tree $B/paper-rf-tree); else src=(--model $W/$shape.onnx --input $W/${shape}_x.npy); fi
    echo "== round $round $shape previous binary"
    timeout 60 $B/bench-forest-prev "${src[@]}" --name $shape --no-cpu --runs 30 --direct-shares 0.5 | grep -E "^chosen"
    for share in 0.5 0; do
      echo "== round $round $shape new binary, chosen share $share"
      timeout 100 $B/bench-forest "${src[@]}" --name $shape --no-cpu --runs 30 --direct-shares 0.5 --chosen-share $share \
        --upload-pieces 4 --writers-awake-us 500 --timeline --json /tmp/$shape-s$share-r$round.json | grep -E "^chosen|^    #|dispatch\(es\)"
    done
    echo "== round $round $shape writes table"
    timeout 150 $B/bench-forest "${src[@]}" --name $shape --no-cpu --runs 30 --direct-shares 0.5 \
      --write-shares 0,0.3,0.5 --piece-counts 1,2,4,8 --awake-us 0,500 --rounds 1 | grep -E "round 1:"
    uptime
  done
done
cp /tmp/w1a-s0.5-r1.json /tmp/deep-s0.5-r1.json /tmp/wide-s0.5-r1.json $OUT/ 2>/dev/null; tail -n 2 /tmp/prepare-*.log; date -u
