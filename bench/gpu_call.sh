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
