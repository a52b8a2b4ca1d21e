#!/usr/bin/env bash
# Call 2 (2026-12-03, issue 12): the tuning with finalists (plans within 5% of the best timed twice as
# many rounds again), bench-forest built from the working tree after call 1. First the wide forest's
# dispatch counts 4, 5, 6 and 6o and the deep forest's 1s and 2o in one process each, eight rounds
# alternating (--timeline --chunk-counts); then three processes a shape (W1a, deep, wide), each tuned
# on the whole batch (9 rounds) and then the rule's plan against the tuned one, three alternating
# rounds, to see whether the tuning chooses alike each time.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
W=/tmp/vknf-work; B=.device
prepare_shapes $W wide
echo "== wide: 4, 5, 6, 6o dispatches"
timeout 150 $B/bench-forest --model $W/wide.onnx --input $W/wide_x.npy --no-cpu --runs 30 --timeline \
  --chunk-counts 4,5,6,6o --rounds 8 | grep -E "round|dispatch\(es\)|#[0-9]"
echo "== deep: 1s, 2o"
timeout 150 $B/bench-forest --model $B/deep.vkf --input $B/deep_x.npy --no-cpu --runs 30 --timeline \
  --chunk-counts 1s,2o --rounds 8 | grep -E "round|dispatch\(es\)|#[0-9]"
for round in 1 2 3; do
  for shape in w1a deep wide; do
    case $shape in
      w1a) src=(--paper-tree $B/paper-rf-tree) ;;
      deep) src=(--model $B/deep.vkf --input $B/deep_x.npy) ;;
      wide) src=(--model $W/wide.onnx --input $W/wide_x.npy) ;;
    esac
    echo "== round $round $shape"
    timeout 60 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --tune-plans 9 --rounds 3 | grep -A4 -E '^tuning'
  done
done
date -u; uptime
