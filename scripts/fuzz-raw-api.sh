#!/usr/bin/env bash
# Fuzzes the raw DmaMapper API (fuzz/fuzz_targets/raw_api.rs) with libFuzzer for a bounded
# time: scripts/fuzz-raw-api.sh [SECONDS] (default 120).
#
# Installs cargo-fuzz if it is missing and needs the nightly toolchain. New inputs go to
# fuzz/corpus/raw_api (not committed); the committed seeds in fuzz/seeds/raw_api are read
# too. A crash leaves its input, minimized, in fuzz/artifacts/raw_api/ and makes the script
# exit non-zero. Every check of the harness (fuzz/src/harness/mod.rs lists them) always
# runs; FUZZ_JOBS=N runs N fuzzing processes (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-120}"
case "$seconds" in
  ''|*[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "the nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 2
fi

mkdir -p fuzz/corpus/raw_api fuzz/artifacts/raw_api
cd fuzz
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
jobs=()
if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
  # libFuzzer's fork-less parallel mode: each job logs to fuzz-N.log, printed at its end.
  jobs=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
fi
status=0
cargo +nightly fuzz run raw_api corpus/raw_api seeds/raw_api -- \
  -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 "${jobs[@]}" 2>&1 | tee "$log" || status=${PIPESTATUS[0]}

crash="$(grep -oE 'artifacts/raw_api/[a-z]+-[0-9a-f]+' "$log" | head -n1 || true)"
if [ "$status" -ne 0 ] || [ -n "$crash" ]; then
  echo "==> the fuzzer found a failure (exit $status)" >&2
  if [ -n "$crash" ]; then
    echo "==> minimizing $crash" >&2
    cargo +nightly fuzz tmin raw_api "$crash" -- -runs=20000 >/dev/null 2>&1 || true
    echo "==> reproduce with: cd fuzz && cargo +nightly fuzz run raw_api $crash" >&2
    ls -t artifacts/raw_api | head -n 3 >&2
  fi
  exit 1
fi

# The summary: executions, rate and coverage from libFuzzer's last lines.
grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
grep -E '#[0-9]+ +(DONE|pulse)' "$log" | tail -n1 || true
