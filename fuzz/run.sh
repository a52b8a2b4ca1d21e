#!/usr/bin/env bash
# Runs every fuzz target of vknf for SECONDS each (default 60) on the stable toolchain.
#
# cargo-fuzz is installed from crates.io when missing. libFuzzer's coverage instrumentation
# works on stable Rust, so by default targets run with `--sanitizer none`, which needs no
# nightly flags. FUZZ_SANITIZER=address adds AddressSanitizer; that needs `-Zsanitizer`, which
# stable rustc accepts only with RUSTC_BOOTSTRAP=1 (set here for that case alone).
#
# Usage: fuzz/run.sh [SECONDS]        Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: $0 [SECONDS]  (a positive whole number)" >&2
    exit 2
fi
sanitizer="${FUZZ_SANITIZER:-none}"
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz ..." >&2
    cargo install cargo-fuzz --locked
fi
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi

# packet_flow (vknf-flow) starts from a real capture when Debian's gopacket package provides one:
# a first byte 0 makes the rest of the input a capture file.
seed=/usr/share/gocode/src/github.com/gopacket/gopacket/pcapgo/tests/le/test300.pcapng
if [ -f "$seed" ]; then
    mkdir -p corpus/packet_flow
    { printf '\0'; cat "$seed"; } > corpus/packet_flow/seed-test300
fi

# vkf_file starts from a real model: a scikit-learn fixture compiled by the vknf binary the unit tests
# built, without its last 32 bytes (the target seals each input with its SHA-256).
for vknf in ../target/debug/vknf ../target/release/vknf; do
    if [ -x "$vknf" ]; then
        mkdir -p corpus/vkf_file
        "$vknf" compile-model ../crates/vknf-forest/tests/fixtures/rf12_5classes/model.onnx \
            -o corpus/vkf_file/model.vkf --quiet >/dev/null
        head -c -32 corpus/vkf_file/model.vkf > corpus/vkf_file/seed-rf12 && rm corpus/vkf_file/model.vkf
        break
    fi
done

for target in $(cargo fuzz list); do
    echo "== fuzzing $target for ${seconds}s (sanitizer: $sanitizer)" >&2
    mkdir -p "corpus/$target"
    cargo fuzz run "$target" --sanitizer "$sanitizer" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1
done
