#!/usr/bin/env bash
# Call 10 (2026-12-02, issue 12): call 9 found the deep forest's kernel as long for 61 workgroups (one
# per SM at most) as for 242: a workgroup's own walk, each thread's ~4.7 trees one after another, sets
# it. Workgroup shapes that give each thread fewer trees while the batch still fits the GPU's 2048
# threads per SM in one wave: rows per workgroup x tree lanes 24x32 (the default), 22x45, 20x50, 21x48,
# 16x48, 32x32, on 1448 rows and on the whole batch; W1a and deep, two rounds.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu_call.sh
gpu_call_setup log.txt
B=.device
for round in 1 2; do
  for shape in 24x32 22x45 20x50 21x48 16x48 32x32; do
    rpg=${shape%x*}; lanes=${shape#*x}
    for n in 1448 5788; do
      input=$B/deep_x_$n.npy; [ $n = 5788 ] && input=$B/deep_x.npy
      echo "== round $round $shape rows $n"
      timeout 60 $B/bench-forest --paper-tree $B/paper-rf-tree --rows $n --name w1a --no-cpu --runs 30 --direct-shares 0.5 \
        --rows-per-group $rpg --tree-lanes $lanes | grep -E "^chosen:" | sed -E 's/^chosen: KernelConfig .* ([0-9]+ chunk)/w1a  \1/'
      timeout 60 $B/bench-forest --model $B/deep.vkf --input $input --name deep --no-cpu --runs 30 --direct-shares 0.5 \
        --rows-per-group $rpg --tree-lanes $lanes | grep -E "^chosen:" | sed -E 's/^chosen: KernelConfig .* ([0-9]+ chunk)/deep \1/'
    done
  done
done
date -u; uptime
