#!/usr/bin/env bash
# pcap to features, vknf against NFStream, per core, on the same file: vknf's file pipeline
# (crates/vknf-flow/examples/bench_pcap.rs: read, decode, flow table, reassembly, TLS framing, one
# feature row per flow; also the file read alone and the pipeline on frames already in memory), on
# one thread (--direct) and as `PcapFile::open` runs it (the file read a block ahead on a second
# thread; CPU counted for both), then NFStream in its fastest metering configuration
# (bench/flows/nfstream_bench.py).
# Figures are medians; per core = packets per CPU-second of the process (its threads and, for
# NFStream, its meter process), which on a shared machine is steadier than wall time (also shown).
# Usage: bench/flows/run_pcap_bench.sh CAPTURE OUT_DIR [VKNF_REPS] [NFSTREAM_REPS]
#   NFSTREAM_PYTHON: a Python with nfstream (default /work/main/.venv-nfstream/bin/python).
set -euo pipefail
capture="$1"
out="$(mkdir -p "$2" && cd "$2" && pwd)"
vknf_reps="${3:-7}"
nf_reps="${4:-3}"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
python="${NFSTREAM_PYTHON:-/work/main/.venv-nfstream/bin/python}"

(cd "$repo" && cargo build --release -q -p vknf-flow --example bench_pcap)
{
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    capinfos -c -s -u "$capture" | tail -n +2
} | tee "$out/machine.txt"
"$target/release/examples/bench_pcap" "$capture" --reps "$vknf_reps" --read-only --in-memory | tee "$out/log-vknf.txt"
"$target/release/examples/bench_pcap" "$capture" --reps "$vknf_reps" --direct | tee "$out/log-vknf-one-thread.txt"
packets=$(grep -oE '^capture: [0-9]+ frames' "$out/log-vknf.txt" | grep -oE '[0-9]+')
"$python" "$repo/bench/flows/nfstream_bench.py" "$capture" --reps "$nf_reps" --packets "$packets" \
    --json "$out/nfstream.json" | tee "$out/log-nfstream.txt"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"
