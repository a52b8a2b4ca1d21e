#!/usr/bin/env bash
# Checks that two builds of the traffic path compute the same thing on a capture: every flow event
# (early and finished, the whole FlowRecord), its feature row and the table's counters, as printed
# by crates/vknf-flow/examples/flow_dump.rs, byte for byte; with the defaults, with early events
# after 5 records, and with a table of 4096 flows (so that flows are evicted).
# Usage: bench/flows/check_same.sh BEFORE_FLOW_DUMP AFTER_FLOW_DUMP CAPTURE
#   (build each with `cargo build --release -p vknf-flow --example flow_dump` at its commit)
set -euo pipefail
before="$1"
after="$2"
capture="$3"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
status=0
for options in "" "--early 5" "--max-flows 4096"; do
    # shellcheck disable=SC2086 # options are words
    "$before" "$capture" $options >"$tmp/before.txt"
    # shellcheck disable=SC2086
    "$after" "$capture" $options >"$tmp/after.txt"
    if cmp -s "$tmp/before.txt" "$tmp/after.txt"; then
        echo "same: '${options}' ($(wc -l <"$tmp/after.txt") lines, $(wc -c <"$tmp/after.txt") bytes; $(tail -1 "$tmp/after.txt"))"
    else
        echo "DIFFERENT: '${options}'"
        diff "$tmp/before.txt" "$tmp/after.txt" | head -5
        status=1
    fi
done
exit $status
