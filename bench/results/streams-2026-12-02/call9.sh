#!/usr/bin/env bash
# Call 9 (2026-12-02, issue 12): the forest kernel's time against the batch's workgroup count, one
# dispatch (bench-forest's headline "kernel": GPU timestamps around the dispatch), W1a (--rows) and the
# deep forest (its rows' first 1448, 2896, 4344 and all 5788, and 11576 = twice them; made here into
# .device/deep_x_N.npy), 24 rows x 32 tree lanes (the default) and 12 x 32: is a batch of half the
# workgroups half the kernel time?
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device
for rpg in 24 12; do
  for n in 1448 2896 4344 5788 11576; do
    echo "== w1a rows $n rows-per-group $rpg"
    timeout 60 $B/bench-forest --paper-tree $B/paper-rf-tree --rows $n --name w1a --no-cpu --runs 30 --direct-shares 0.5 \
      --rows-per-group $rpg | grep -E "^(chosen|other-node-layout):" | sed -E 's/KernelConfig .* ([0-9]+ chunk)/\1/'
    input=$B/deep_x_$n.npy; [ $n = 5788 ] && input=$B/deep_x.npy
    echo "== deep rows $n rows-per-group $rpg"
    timeout 60 $B/bench-forest --model $B/deep.vkf --input $input --name deep --no-cpu --runs 30 --direct-shares 0.5 \
      --rows-per-group $rpg | grep -E "^(chosen|other-node-layout):" | sed -E 's/KernelConfig .* ([0-9]+ chunk)/\1/'
  done
done
date -u; uptime
