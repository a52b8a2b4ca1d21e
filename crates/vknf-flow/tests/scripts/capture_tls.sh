#!/usr/bin/env bash
# Generates real TLS traffic on loopback with real stacks and captures it with tcpdump:
#   servers: Python's ssl (OpenSSL) serving 3 "sites" (+ one on [::1]), and `openssl s_server -WWW`
#   clients: curl, several URLs per connection (keep-alive), TLS 1.2 and 1.3
#   captures: OUT/lo.pcap (tcpdump -i lo: Ethernet), OUT/any.pcap (tcpdump -i any: Linux cooked
#   capture), OUT/lo.pcapng (editcap's pcapng copy of lo.pcap), OUT/ports (the server ports)
# Bounded: every client has --max-time, the servers exit on their own, all within ~1 minute.
# Usage: capture_tls.sh OUT [CONNECTIONS_PER_SITE]
set -euo pipefail
out="$(mkdir -p "$1" && cd "$1" && pwd)"
per_site="${2:-6}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$out"

# Below Linux's ephemeral range (32768 up), so no client connection of another test holds them.
base=$((20000 + ($$ % 1200) * 10))
sites=3
v6port=$((base + 5))
wwwport=$((base + 6))
echo "$base $sites $v6port $wwwport" > ports

names=""; for i in $(seq 0 $((sites - 1))); do names="$names,DNS:site$i.test"; done
openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 2 -subj /CN=vknf.test \
    -addext "subjectAltName=DNS:www.test${names}" >/dev/null 2>&1

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

filter="tcp and portrange $base-$((base + 9))"
tcpdump -i lo -w lo.pcap -U "$filter" 2> tcpdump-lo.log & pids+=($!)
tcpdump -i any -w any.pcap -U "$filter" 2> tcpdump-any.log & pids+=($!)

python3 "$here/tls_sites.py" --cert cert.pem --key key.pem --port "$base" --sites "$sites" \
    --ipv6-port "$v6port" --lifetime 90 > sites.log 2>&1 & pids+=($!)
mkdir -p www && for i in 0 1 2; do head -c $((3000 + 4000 * i)) /dev/zero | tr '\0' 'w' > "www/file$i"; done
(cd www && exec timeout 90 openssl s_server -accept "$wwwport" -cert ../cert.pem -key ../key.pem -WWW -quiet) \
    > s_server.log 2>&1 & pids+=($!)

for _ in $(seq 50); do
    if grep -q ready sites.log && grep -q listening tcpdump-lo.log && grep -q listening tcpdump-any.log; then break; fi
    sleep 0.2
done
sleep 0.5

fetch() { curl -sk --max-time 10 --http1.1 "$@" -o /dev/null -o /dev/null -o /dev/null -o /dev/null || true; }
for n in $(seq "$per_site"); do
    for i in $(seq 0 $((sites - 1))); do
        port=$((base + i))
        tls=$([ $((n % 2)) = 0 ] && echo "--tls-max 1.2" || echo "--tlsv1.3")
        # shellcheck disable=SC2086
        fetch $tls --resolve "site$i.test:$port:127.0.0.1" \
            "https://site$i.test:$port/page$((n % 3))" "https://site$i.test:$port/page$(((n + 1) % 3))" \
            "https://site$i.test:$port/page$((n % 4 + 3))"
    done
done
fetch -g "https://[::1]:$v6port/page1" "https://[::1]:$v6port/page2"
for i in 0 1 2; do
    curl -sk --max-time 10 --resolve "www.test:$wwwport:127.0.0.1" "https://www.test:$wwwport/file$i" -o /dev/null || true
done

# tcpdump reads the kernel's ring in blocks retired after its 1 s timeout: wait for the last one.
sleep 2
kill -INT "${pids[0]}" "${pids[1]}"
wait "${pids[0]}" "${pids[1]}" 2>/dev/null || true
editcap -F pcapng lo.pcap lo.pcapng
echo "captured: $(ls -l lo.pcap any.pcap lo.pcapng | awk '{print $5, $9}' | tr '\n' ' ')"
