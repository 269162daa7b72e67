#!/usr/bin/env bash
# Runs the unit tests of the core crate and of the allocator crate (dmakit-mem) under Miri (undefined behaviour, out-of-bounds and
# use-after-free checks, data races in the threaded tests): scripts/miri.sh [TEST FILTER...]
#
# Needs the nightly toolchain; adds its miri and rust-src components if they are missing.
# Isolation is off (tests may read the clock); proptest runs PROPTEST_CASES cases per
# property (default 4 here instead of 256); tests too slow for the interpreter skip
# themselves under cfg(miri) and say why. Prints the wall time at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "the nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  echo "==> adding the miri and rust-src components to nightly"
  rustup +nightly component add miri rust-src
fi

export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation}"
export PROPTEST_CASES="${PROPTEST_CASES:-4}"
# proptest's failure persistence writes files next to the sources; not under Miri.
export PROPTEST_DISABLE_FAILURE_PERSISTENCE=1

start=$(date +%s)
cargo +nightly miri setup >/dev/null
cargo +nightly miri test -p dmakit --lib -- "$@"
cargo +nightly miri test -p dmakit-mem --lib -- "$@"
echo "==> Miri: unit tests of dmakit and dmakit-mem passed in $(( $(date +%s) - start )) s (PROPTEST_CASES=$PROPTEST_CASES)"
