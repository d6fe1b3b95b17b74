#!/usr/bin/env bash
# The crash soak at full size (tests/it/soak.rs): the release weir binary with a disk spool and
# four concurrent senders, SIGKILLed at random moments and restarted, half of the time under
# injected sink faults, delivering into an append-mode table of the emulator. CI runs the same
# test small inside `cargo test`. Takes several minutes on 2 cores; not part of .ci/run.
#
#   bash bench/soak.sh                          # 60 kills, 20000 rows per sender
#   WEIR_SOAK_SEED=1234 bash bench/soak.sh      # repeat a run (the seed is printed first)
#   WEIR_SOAK_KILLS=200 WEIR_SOAK_ROWS=50000 bash bench/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export WEIR_SOAK_KILLS="${WEIR_SOAK_KILLS:-60}"
export WEIR_SOAK_ROWS="${WEIR_SOAK_ROWS:-20000}"
exec cargo test --release --locked --test it soak -- --nocapture "$@"
