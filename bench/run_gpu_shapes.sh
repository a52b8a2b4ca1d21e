#!/usr/bin/env bash
# The named forest shapes on the GPU machine, in one call (bench/README.md):
#   bash bench/run_gpu_shapes.sh table   vknf's chosen configuration against the previous binary's fixed
#                                        default, and scikit-learn, ONNX Runtime, Hummingbird and the PCIe
#                                        copy floor on the same rows, for every shape
#   bash bench/run_gpu_shapes.sh sweep   the same, with bench-forest's configuration grid and pipelined
#                                        chunk counts (about 3 minutes more)
# Shapes: w1a (paper tree x150), deep (= W1b, real scikit-learn forest of the paper's shape), wide (300
# trees of depth 12, 80 features, binary, 100,000 rows), tiny (10 trees of depth 6, breast-cancer data).
# .device/ holds bench-forest, bench-forest-old (the previous commit's, for "today" in the same call) and a
# copy of the paper tree, .gl the Vulkan loader, .whl the wheels. Everything lands in $OUT/log-$mode.txt
# and $OUT/shapes-$mode.tgz (re-packed after every step, so a cut-off run keeps what it measured).
set -uo pipefail
mode=${1:?table or sweep}
OUT=${OUT:-/tmp/vknf-bench}
mkdir -p "$OUT"
W=/tmp/vknf-work; R=$W/results; mkdir -p $R
exec > >(tee "$OUT/log-$mode.txt") 2>&1
source .gl/setup-vulkan.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export PYTHONUNBUFFERED=1
# Seconds each Python baseline may spend timing (at least 3 runs each).
export BASELINE_BUDGET_S=${BASELINE_BUDGET_S:-4}
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
date -u
B=.device
pack() { tar czf "$OUT/shapes-$mode.tgz" -C $W results; }

prepare() { timeout 200 python3 bench/gpu_baselines.py prepare $1 $W > $R/prepare-$1.log 2>&1; }

vknf() {
  local shape=$1 src old extra=()
  [ "$mode" = sweep ] && extra+=(--sweep --no-cpu --runs 20)
  [ "$shape" = tiny ] && extra+=(--small-batches)
  # TUNE_ROUNDS=N: the chosen lane also tuned on the whole batch (N rounds), then the rule's plan and the
  # tuned one alternating for TUNED_ROUNDS rounds (bench-forest --tune-plans).
  [ -n "${TUNE_ROUNDS:-}" ] && extra+=(--tune-plans "$TUNE_ROUNDS" --rounds "${TUNED_ROUNDS:-4}")
  if [ "$shape" = w1a ]; then
    src=(--paper-tree $B/paper-rf-tree --write-input $W/w1a_x.npy); old=(--paper-tree $B/paper-rf-tree)
  else
    src=(--model $W/$shape.onnx --input $W/${shape}_x.npy); old=("${src[@]}")
  fi
  # A previous commit's binary, when given, on the same rows in the same call: "today".
  if [ -x $B/bench-forest-old ]; then
    echo "== $shape vknf, previous binary"
    timeout 100 $B/bench-forest-old "${old[@]}" --no-cpu --runs 20 --json $R/${shape}_old.json
  fi
  echo "== $shape vknf"
  timeout 200 $B/bench-forest "${src[@]}" --name $shape --runs 30 "${extra[@]}" \
    --write-labels $W/${shape}_vknf_labels.npy --json $R/${shape}_vknf.json
  pack
}

baselines() {
  echo "== $1 baselines"
  timeout 200 python3 bench/gpu_baselines.py run $1 $W --paper-tree $B/paper-rf-tree ${2:-}
  cp $W/$1_baselines.json $R/ 2>/dev/null
  pack
}

# Every shape is prepared before anything is timed (the 2026-11-30 call timed W1a and the wide forest's
# previous binary while deep's forest trained on all cores; RESULTS.md says which figures that touched).
# Waits name their process ids: a bare `wait` would also wait for the `tee` above, which never ends.
echo "== prepare wide, tiny, deep"
prepare wide & p1=$!; prepare tiny & p2=$!; prepare deep & p3=$!
wait $p1 $p2 $p3
cat $R/prepare-wide.log $R/prepare-tiny.log $R/prepare-deep.log; date -u
for shape in w1a deep wide tiny; do vknf $shape; done
for shape in wide deep tiny; do baselines $shape; done
# W1a's ONNX export (the paper's tree x150, dense class weights) takes a minute of one core: with
# FULL=1 ONNX Runtime runs on W1a too.
if [ "${FULL:-0}" = 1 ]; then baselines w1a; else baselines w1a --no-onnxruntime; fi
date -u
