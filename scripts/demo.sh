#!/usr/bin/env bash
# `make demo`: the Vulkan devices, then the traffic classifier served as a network function from a manifest
# directory (the paper's Service-with-SPIR-V, standalone), loaded with traffic, and its labels.
set -euo pipefail
cd "$(dirname "$0")/.."
# VKNF: another build of the binary (the Makefile builds target/release/vknf).
vknf=${VKNF:-target/release/vknf}
example=examples/traffic-classifier
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== Vulkan devices"
$vknf devices

echo; echo "== compile the scikit-learn model (ONNX) to vknf's GPU layout"
$vknf compile-model $example/model.onnx -o "$work/model.vkf"

echo; echo "== write the function manifest (Service with base64 SPIR-V, model ConfigMaps, EndpointSlice)"
mkdir -p "$work/manifests"
$vknf manifest --name traffic-classifier --port 7700 --kind forest --model "$work/model.vkf" \
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

echo; echo "== the traffic path: real TLS traffic on loopback (Python ssl sites and openssl s_server, fetched by curl),"
echo "   captured by tcpdump: one capture to train on, one held out"
sudo=$([ "$(id -u)" = 0 ] || echo sudo)
python=${VKNF_PYTHON:-.venv/bin/python}
capture=crates/vknf-flow/tests/scripts/capture_tls.sh
$sudo timeout 150 bash $capture "$work/train" 6 | tail -1
$sudo timeout 150 bash $capture "$work/test" 4 | tail -1
$sudo chown -R "$(id -u):$(id -g)" "$work/train" "$work/test"

echo; echo "== vknf flows: the training capture as a dataset, labelled by SNI"
$vknf flows --pcap "$work/train/lo.pcap" --label-by sni -o "$work/train.jsonl"

echo; echo "== train (python/train_traffic.py: the paper's recipe), compile, declare with the schema"
$python python/train_traffic.py train --dataset "$work/train.jsonl" --model "$work/traffic.onnx" \
  --schema "$work/traffic.schema.json"
$vknf compile-model --quiet "$work/traffic.onnx" -o "$work/traffic.vkf" | grep -E "wrote|classes|schema"
$vknf manifest --name traffic --port 7701 --model "$work/traffic.vkf" --schema "$work/traffic.schema.json" \
  --node-address 127.0.0.1 -o "$work/manifests/traffic.yaml"
grep "vknf.io/feature-schema-sha256" "$work/manifests/traffic.yaml"
# The running server picks the new function up from its manifest directory (hot reload).
for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:9700/readyz 2>/dev/null | grep -q "2 functions" && break
  sleep 0.2
done

echo; echo "== vknf classify: the held-out capture, flow by flow, on the GPU in this process"
$vknf --validate classify --quiet --pcap "$work/test/lo.pcap" --model "$work/traffic.vkf" \
  --schema "$work/traffic.schema.json" --label-by sni -o "$work/local.jsonl"
python3 - "$work/local.jsonl" <<'PY'
import json, sys
print(f"{'client':>22}  {'truth (SNI)':<12} {'predicted':<12} {'score':>5}  records")
for line in open(sys.argv[1]):
    r = json.loads(line)
    client = f"{r['client_ip']}:{r['client_port']}"
    print(f"{client:>22}  {r.get('truth') or '(no SNI)':<12} {r['label']:<12} {r['top'][0]['score']:5.2f}  {r['records']}")
PY

echo; echo "== the same capture through the served function (127.0.0.1:7701), checked against its manifest"
$vknf classify --quiet --pcap "$work/test/lo.pcap" --addr 127.0.0.1:7701 --manifest "$work/manifests" \
  --schema "$work/traffic.schema.json" --label-by sni -o "$work/served.jsonl"
if cmp -s "$work/local.jsonl" "$work/served.jsonl"; then
  echo "served decisions equal the in-process ones"
else
  echo "served decisions differ from the in-process ones"; exit 1
fi
