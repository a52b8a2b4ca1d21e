#!/usr/bin/env bash
# Call 5 (2026-12-02): this session's final binary (bench-forest) against the last commit's (215d73e,
# bench-forest-old), alternating, three rounds, every shape: predict's chosen configuration end to end
# (call 4's table ran the new W1a in a slow spell of the machine).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=/tmp/vknf-work; mkdir -p $W; B=.device
exec > >(tee "$OUT/log-rounds.txt") 2>&1
source .gl/setup-vulkan.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
date -u; uptime
pids=()
for s in wide tiny deep; do timeout 200 python3 bench/gpu_baselines.py prepare $s $W > $OUT/prepare-$s.log 2>&1 & pids+=($!); done
wait "${pids[@]}"  # (a bare wait would also wait for the tee above)
date -u; uptime
for round in 1 2 3; do
  for bin in bench-forest-old bench-forest; do
    for shape in w1a deep wide tiny; do
      if [ $shape = w1a ]; then src=(--paper-tree $B/paper-rf-tree); else src=(--model $W/$shape.onnx --input $W/${shape}_x.npy); fi
      echo "== round $round $bin $shape"
      timeout 60 $B/$bin "${src[@]}" --name $shape --no-cpu --runs 30 --direct-shares 0.4 | grep -E "^chosen"
    done
  done
  uptime
done
date -u
