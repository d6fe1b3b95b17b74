#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time each. Not part of CI.
# Usage: fuzz/run.sh [seconds per target, default 60]
# Needs the nightly toolchain (rustup toolchain install nightly); installs cargo-fuzz if missing.
set -euo pipefail
seconds="${1:-60}"
cd "$(dirname "$0")"
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz/run.sh: the nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz
fi
# A target directory of its own: fuzz builds use different flags than the normal build.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"
status=0
for target in $(cargo +nightly fuzz list); do
    echo "== $target (${seconds}s)"
    mkdir -p "corpus/$target"
    if ! cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048; then
        echo "== $target FAILED: see fuzz/artifacts/$target/" >&2
        status=1
    fi
done
exit "$status"
