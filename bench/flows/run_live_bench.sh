#!/usr/bin/env bash
# Live capture on a veth pair inside a network namespace: tcpreplay sends the benchmark capture's
# real TLS packets into one end at increasing rates while vknf's live pipeline (libpcap, the
# sharded flow tables, feature rows; crates/vknf-flow/examples/live_flows.rs, what `vknf classify
# --interface` runs up to the forest) captures on the other end. Per rate: packets tcpreplay sent,
# frames vknf read, frames the kernel dropped (libpcap's counter), the veth's own rx drops, and the
# loss (sent - read). Bounded: PACKETS per rate (default 300,000); the capture stops a second
# after the generators finish, or after ~24 s plus 30 s at the latest.
# BUFFER_MB sets the capture ring (default 64 MiB; libpcap's own default is 2).
# GENERATORS=N runs N tcpreplay processes at once, each at the rate (the total is N x rate), for
# rates one tcpreplay cannot reach; every generator sends the same packets (their flows repeat).
# Needs root (ip netns), tcpreplay (installed here if missing), editcap.
# On a machine without cargo or editcap (the GPU host): LIVE_FLOWS names a built live_flows and
# REPLAY a capture of the packets to replay (used as it is: PACKETS does not cut it).
# Usage: bench/flows/run_live_bench.sh CAPTURE OUT_DIR [RATES] [SHARDS]
#   RATES: comma-separated packets/s; "max" is tcpreplay --topspeed. Default 50000,...,max.
set -euo pipefail
capture="$1"
out="$(mkdir -p "$2" && cd "$2" && pwd)"
rates="${3:-50000,100000,200000,300000,400000,600000,800000,max}"
shards="${4:-1}"
packets="${PACKETS:-300000}"
generators="${GENERATORS:-1}"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"

command -v tcpreplay >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q tcpreplay >/dev/null
if [ -n "${LIVE_FLOWS:-}" ]; then
    live="$LIVE_FLOWS"
else
    (cd "$repo" && cargo build --release -q -p vknf-flow --example live_flows)
    live="$target/release/examples/live_flows"
fi

# The replayed file: the capture's first PACKETS packets, preloaded by tcpreplay (-K).
replay="$out/replay.pcap"
if [ -n "${REPLAY:-}" ]; then
    [ "$REPLAY" -ef "$replay" ] || cp "$REPLAY" "$replay"
else
    editcap -F pcap -r "$capture" "$replay" "1-$packets" 2>/dev/null
fi

ns="vknf-live-$$"
ip netns add "$ns"
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -f "$replay"; }
trap cleanup EXIT
ip -n "$ns" link add vsend type veth peer name vcap
ip -n "$ns" link set vsend up
ip -n "$ns" link set vcap up
ip -n "$ns" link set lo up

results="$out/live.jsonl"
: > "$results"
printf '%-10s %10s %10s %10s %10s %10s %8s\n' rate sent read kernel_drop veth_drop lost loss%
for rate in ${rates//,/ }; do
    if [ "$rate" = max ]; then speed=(--topspeed); seconds=20; else speed=(--pps="$rate"); seconds=$(( packets / rate + 4 )); fi
    [ "$seconds" -gt 24 ] && seconds=24
    rx_drop_before=$(ip netns exec "$ns" cat /sys/class/net/vcap/statistics/rx_dropped)
    seconds=$(( seconds * generators + 30 ))
    rm -f "$out/stop"
    ip netns exec "$ns" "$live" --interface vcap --filter tcp --shards "$shards" --duration "$seconds" --buffer-mb "${BUFFER_MB:-64}" \
        --stop-file "$out/stop" \
        > "$out/live-$rate.json" 2> "$out/live-$rate.log" &
    pid=$!
    for _ in $(seq 100); do grep -q capturing "$out/live-$rate.log" 2>/dev/null && break; sleep 0.1; done
    sleep 0.3
    gens=()
    for g in $(seq "$generators"); do
        ip netns exec "$ns" timeout 60 tcpreplay -q -K -i vsend "${speed[@]}" "$replay" > "$out/tcpreplay-$rate-$g.log" 2>&1 &
        gens+=($!)
    done
    wait "${gens[@]}" || true
    cat "$out"/tcpreplay-"$rate"-*.log > "$out/tcpreplay-$rate.log"
    # libpcap hands packets over at its 100 ms timeout at the latest: let the ring drain.
    sleep 1
    touch "$out/stop"
    wait "$pid"
    rx_drop=$(( $(ip netns exec "$ns" cat /sys/class/net/vcap/statistics/rx_dropped) - rx_drop_before ))
    sent=$(grep -oE 'Successful packets: +[0-9]+' "$out/tcpreplay-$rate.log" | grep -oE '[0-9]+$' | awk '{ s += $1 } END { printf "%.0f\n", s }')
    actual=$(grep -oE 'Rated: [0-9.]+ Bps, [0-9.]+ Mbps, [0-9.]+ pps' "$out/tcpreplay-$rate.log" | grep -oE '[0-9.]+ pps' | cut -d' ' -f1 | awk '{ s += $1 } END { printf "%.0f\n", s }')
    frames=$(grep -oE '"frames": [0-9]+' "$out/live-$rate.json" | grep -oE '[0-9]+$')
    kdrop=$(grep -oE '"capture_dropped": [0-9]+' "$out/live-$rate.json" | grep -oE '[0-9]+$')
    lost=$(( sent - frames ))
    pct=$(awk -v l="$lost" -v s="$sent" 'BEGIN { printf "%.3f", s ? 100 * l / s : 0 }')
    printf '%-10s %10s %10s %10s %10s %10s %8s   (tcpreplay achieved %s pps)\n' "$rate" "$sent" "$frames" "$kdrop" "$rx_drop" "$lost" "$pct" "$actual"
    echo "{\"rate\": \"$rate\", \"generators\": $generators, \"achieved_pps\": ${actual:-0}, \"sent\": $sent, \"read\": $frames, \"kernel_dropped\": $kdrop, \"veth_rx_dropped\": $rx_drop, \"lost\": $lost, \"shards\": $shards, \"ring_mb\": ${BUFFER_MB:-64}, \"live\": $(cat "$out/live-$rate.json")}" >> "$results"
done
