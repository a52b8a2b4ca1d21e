#!/usr/bin/env bash
# Call 3 (2026-12-03, issue 12): copies in the dispatches' own lists (BatchPlan::copy_in_dispatch, `c`:
# ordered by a barrier on the compute queue instead of a semaphore from the transfer queue), bench-forest
# built from the working tree after call 2 (that code is now copy-in-dispatch.patch beside this script:
# apply it to 21f8471 to rerun). The wide forest's 4, 4c, 6, 6c; the deep forest's 1s, 1sc,
# 2o, 2c; W1a's 1s, 1sc, 2c; each shape in one process, six rounds alternating, with timelines. Then
# two processes a shape tuned with the copies among the plans (9 rounds), the rule against the tuned
# plan, three rounds.
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
W=/tmp/vknf-work; B=.device
prepare_shapes $W wide
plans() {
  echo "== $1: $2"
  timeout 150 $B/bench-forest "${src[@]}" --no-cpu --runs 30 --timeline --chunk-counts $2 --rounds 6 \
    | grep -E "round|dispatch\(es\)|#[0-9]"
}
src=(--model $W/wide.onnx --input $W/wide_x.npy); plans wide 4,4c,6,6c
src=(--model $B/deep.vkf --input $B/deep_x.npy); plans deep 1s,1sc,2o,2c
src=(--paper-tree $B/paper-rf-tree); plans w1a 1s,1sc,2c
for round in 1 2; do
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
