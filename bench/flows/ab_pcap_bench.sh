#!/usr/bin/env bash
# A/B of two builds of crates/vknf-flow/examples/bench_pcap.rs on one capture, for a shared, noisy
# machine: the builds run alternately (A, B, A, B, ...) for ROUNDS rounds, each invocation under
# SCHED_FIFO when allowed (so that other builders preempt it less), and the figure of each build is
# the median over rounds of each invocation's own median. Printed per build: the medians and best
# rounds of packets per CPU-second, all threads and the parsing thread's (bench_pcap's figures;
# the parsing thread's comes from the scheduler in ns, the process's in ticks of 10 ms).
# Usage: bench/flows/ab_pcap_bench.sh A_BENCH_PCAP B_BENCH_PCAP CAPTURE [ROUNDS] [BENCH_ARGS...]
#   BENCH_ARGS default to `--reps 3 --direct` (one thread); e.g. `--reps 3` for the read-ahead mode.
#   (build each with `cargo build --release -p vknf-flow --example bench_pcap` at its commit)
set -euo pipefail
a="$1"
b="$2"
capture="$3"
rounds="${4:-8}"
shift $(($# < 4 ? $# : 4))
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
    args=(--reps 3 --direct)
fi
fifo=()
if chrt -f 10 true 2>/dev/null; then
    fifo=(chrt -f 10)
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$rounds"); do
    for build in a b; do
        binary="$a"
        [ "$build" = b ] && binary="$b"
        # The pipeline's summary line: all threads, then the parsing thread.
        "${fifo[@]}" "$binary" "$capture" "${args[@]}" | grep -E '^pcap to features \(' |
            sed -E 's/.*median ([0-9.]+) M packets\/s per CPU-second \(all threads; ([0-9.]+) M.*/\1 \2/' \
                >>"$tmp/$build.txt"
    done
    echo "round $round: A $(tail -1 "$tmp/a.txt"), B $(tail -1 "$tmp/b.txt")"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
for build in a b; do
    python3 - "$build" "$tmp/$build.txt" <<'EOF'
import statistics
import sys

rows = [list(map(float, line.split())) for line in open(sys.argv[2]) if line.strip()]
columns = list(zip(*rows))
print(
    f"{sys.argv[1].upper()}: median of {len(rows)} rounds {statistics.median(columns[0]):.3f} M packets/s per "
    f"CPU-second (all threads), {statistics.median(columns[1]):.3f} M (parsing thread); best round "
    f"{max(columns[0]):.3f} M / {max(columns[1]):.3f} M"
)
EOF
done
