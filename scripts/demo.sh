#!/usr/bin/env bash
# The demo `make demo` runs: the Vulkan devices of this machine, then a kernel end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
vknf=target/release/vknf
echo "== Vulkan devices"
$vknf devices
spv=$(ls -t target/release/build/vknf-kernels-*/out/add.spv | head -1)
echo
echo "== element-wise add on the default device (validation layer on)"
$vknf --validate run-kernel "$spv" --buffer 0=f32:1,2,3,4 --buffer 1=f32:10,20,30,40 --buffer 2=zeros:16 \
  --push n=4 --invocations 4
