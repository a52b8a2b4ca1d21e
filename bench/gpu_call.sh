# Shared set-up of a GPU machine call's script (bench/results/*/call*.sh), sourced after `set -uo
# pipefail` with OUT set: gpu_call_setup LOG tees everything into $OUT/LOG, loads the carried Vulkan
# loader (.gl) and Python wheels (.whl) and prints the card and the host; prepare_shapes DIR SHAPE...
# trains and exports the named shapes' forests and rows into DIR at once (bench/gpu_baselines.py),
# logs under /tmp, and waits for them only (a bare `wait` would also wait for the tee).
gpu_call_setup() {
  exec > >(tee "$OUT/$1") 2>&1
  source .gl/setup-vulkan.sh
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
  date -u; uptime; nproc; grep -m1 'model name' /proc/cpuinfo
}

prepare_shapes() {
  local dir=$1 shape pids=()
  shift
  mkdir -p "$dir"
  for shape in "$@"; do
    timeout 240 python3 bench/gpu_baselines.py prepare "$shape" "$dir" > "/tmp/prepare-$shape.log" 2>&1 & pids+=($!)
  done
  wait "${pids[@]}"
  tail -n 1 /tmp/prepare-*.log
}

# load_validation_layers unpacks Debian's vulkan-validationlayers package carried as
# .device/vl/vulkan-validationlayers_*.deb (`apt-get download vulkan-validationlayers` here) and points
# the loader at it, for the test binaries (which enable the Khronos layer themselves); the fixtures they
# read are found through /work/main, as where they were built (bench/results/refill-2026-12-03/call7.sh
# did the same inline).
load_validation_layers() {
  dpkg -x .device/vl/vulkan-validationlayers_*.deb /tmp/vl
  export VK_LAYER_PATH=/tmp/vl/usr/share/vulkan/explicit_layer.d
  export LD_LIBRARY_PATH=/tmp/vl/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  [ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
}
