#!/usr/bin/env bash
# Builds the traffic path's benchmark capture: real TLS traffic (Python's ssl and openssl s_server
# serving, curl fetching; crates/vknf-flow/tests/scripts/capture_tls.sh) captured by tcpdump on the
# loopback of a network namespace whose MTU is 1500 and whose offloads are off, so that packets
# look like a wire's (at most 1514 bytes, checksums computed), then replicated into at least
# MIN_PACKETS packets of distinct flows (replicate_capture.py).
# Needs root (ip netns), tcpdump, curl, openssl, python3, editcap, ethtool (installed here if missing).
# Usage: bench/flows/make_capture.sh OUT_DIR [MIN_PACKETS] [CONNECTIONS_PER_SITE]
set -euo pipefail
out="$(mkdir -p "$1" && cd "$1" && pwd)"
min_packets="${2:-1000000}"
per_site="${3:-40}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

command -v ethtool >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q ethtool >/dev/null
ns="vknf-fcap-$$"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip netns exec "$ns" ip link set lo up mtu 1500
ip netns exec "$ns" ethtool -K lo tso off gso off gro off tx off >/dev/null 2>&1 || true
ip netns exec "$ns" bash "$repo/crates/vknf-flow/tests/scripts/capture_tls.sh" "$out/base" "$per_site"
capinfos -c -u "$out/base/lo.pcap" | tail -n +2
python3 "$here/replicate_capture.py" "$out/base/lo.pcap" "$out/tls-bench.pcap" --min-packets "$min_packets"
