#!/usr/bin/env bash
# `make demo`: the Vulkan devices, then the traffic classifier served as a network function from a manifest
# directory (the paper's Service-with-SPIR-V, standalone), loaded with traffic, and its labels.
set -euo pipefail
cd "$(dirname "$0")/.."
vknf=target/release/vknf
example=examples/traffic-classifier
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== Vulkan devices"
$vknf devices

echo; echo "== compile the scikit-learn model (ONNX) to vknf's GPU layout"
$vknf compile-model $example/model.onnx -o "$work/model.vkf"

echo; echo "== write the function manifest (Service with base64 SPIR-V, model ConfigMaps, EndpointSlice)"
spirv=$(ls -t target/release/build/vknf-kernels-*/out/forest.spv | head -1)
mkdir -p "$work/manifests"
$vknf manifest --name traffic-classifier --port 7700 --kind forest --spirv "$spirv" --model "$work/model.vkf" \
  --node-address 127.0.0.1 -o "$work/manifests/traffic-classifier.yaml"
grep -E "^kind:|vknf.io/(kind|model-sha256)" "$work/manifests/traffic-classifier.yaml" || true

echo; echo "== vknf serve (GPU, validation layer on) on 127.0.0.1:7700, metrics on 127.0.0.1:9700"
$vknf --validate --log info serve --manifests "$work/manifests" --host-address 127.0.0.1 \
  --metrics-addr 127.0.0.1:9700 > "$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:9700/readyz >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$work/serve.log"; exit 1; }
  sleep 0.2
done
curl -fs http://127.0.0.1:9700/readyz && echo " (ready)"

echo; echo "== vknf load: 4 connections x 8 requests in flight, 64 rows per request, 3 seconds"
$vknf load --addr 127.0.0.1:7700 --connections 4 --depth 8 --rows 64 --duration 3 --min-value 0 --max-value 1500

echo; echo "== labels of held-out flows, asked of the served function over TCP, next to scikit-learn's"
$vknf predict --model "$work/model.vkf" --input $example/inputs.csv --addr 127.0.0.1:7700 -o "$work/labels.csv"
paste -d, <(head -6 "$work/labels.csv") <(head -6 $example/expected.csv)
matches=$(paste -d, <(tail -n +2 "$work/labels.csv") <(tail -n +2 $example/expected.csv) | awk -F, '$1==$2' | wc -l)
echo "agreement with scikit-learn: $matches / $(($(wc -l < $example/expected.csv) - 1)) rows"

echo; echo "== a few server metrics"
curl -fs http://127.0.0.1:9700/metrics | grep -E "^vknf_(requests|rows)_total" | head -6 || true
