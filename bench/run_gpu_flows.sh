#!/usr/bin/env bash
# The traffic path's packet rates (pcap -> flows -> TLS records -> feature rows) on a many-core
# machine, such as the 16-core GPU host, which has python3 but neither network access, tcpdump nor
# tshark: nothing is built or downloaded there.
#
# Carried in .device/ (small, for the folder's 64 MiB limit):
#   .device/bench_pcap       the benchmark, built on the development machine (~9 MB):
#                            cargo build --release -p vknf-flow --example bench_pcap &&
#                            cp "${CARGO_TARGET_DIR:-target}/release/examples/bench_pcap" .device/
#   .device/flows-base.pcap  the real TLS capture the benchmark capture is made from (~1.9 MB):
#                            bench/flows/make_capture.sh DIR; cp DIR/base/lo.pcap .device/flows-base.pcap
# On the machine, bench/flows/replicate_capture.py (python3, standard library only) turns it into
# the benchmark capture of at least 1,000,000 packets (~480 MB, written under $WORK, default
# /tmp/vknf-flows; removed at the end unless KEEP=1), as make_capture.sh does on the VM.
#
# Prints, with medians of REPS runs: packets per CPU-second of the whole process (all threads)
# and packets per wall-second for
#   - one thread (reads on the parsing thread: --direct),
#   - reads a block ahead on a second thread (what `PcapFile::open` does),
#   - sharded over N worker threads for each N in SHARDS (one reader, one dispatcher decoding each
#     frame to find its flow's shard, N flow tables), as live capture is sharded.
# Usage: bench/run_gpu_flows.sh [OUT_DIR]   (env: REPS=5, SHARDS=1,2,4,8,14, WORK, KEEP)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$repo/bench/results/flows-gpu-host}" && cd "${1:-$repo/bench/results/flows-gpu-host}" && pwd)"
bench="${BENCH_PCAP:-$repo/.device/bench_pcap}"
base="${BASE_CAPTURE:-$repo/.device/flows-base.pcap}"
work="${WORK:-/tmp/vknf-flows}"
reps="${REPS:-5}"
shards="${SHARDS:-1,2,4,8,14}"

for need in "$bench" "$base"; do
    [ -e "$need" ] || { echo "missing $need (see the comment at the top of $0)" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "python3 is needed to make the capture" >&2; exit 2; }
mkdir -p "$work"
capture="$work/tls-bench.pcap"
[ "${KEEP:-0}" = 1 ] || trap 'rm -f "$capture"' EXIT

{
    echo "date: $(date -u +%FT%TZ)"
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
    echo "memory: $(grep MemTotal /proc/meminfo | tr -s ' ')"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/machine.txt"

if [ ! -s "$capture" ]; then
    python3 "$repo/bench/flows/replicate_capture.py" "$base" "$capture" --min-packets 1000000 | tee "$out/capture.txt"
fi
ls -l "$capture" | tee -a "$out/capture.txt"

# A first pass (untimed) warms the page cache; figures are the median of $reps runs each.
"$bench" "$capture" --reps "$reps" --direct | tee "$out/one-thread.txt"
"$bench" "$capture" --reps "$reps" --read-only --in-memory --shards "$shards" | tee "$out/read-ahead-and-sharded.txt"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"

echo
echo "== summary (packets per CPU-second of the process, all threads; packets per wall-second)"
grep -h -E '^(read only|frames in memory|pcap to features)' "$out/one-thread.txt" "$out/read-ahead-and-sharded.txt"
