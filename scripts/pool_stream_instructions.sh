#!/usr/bin/env bash
# Instructions per foreground step (allocate one request, free the oldest of a window of
# 64) of the pool request stream, for the bounce pool, talc and buddy_system_allocator
# over the same 64 MiB, filled to 10 % and 90 % held: scripts/pool_stream_instructions.sh [N]
#
# Runs crates/dmakit-sim/examples/pool_stream_loop.rs with 1,000 and 1,000 + N steps
# (default N = 20,000) and divides the difference in instructions (Ir) by N, so the fill
# does not count. Counted by callgrind: the same whatever the machine's load.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20000}"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
cargo build -q --release -p dmakit-sim --example pool_stream_loop
bin="${CARGO_TARGET_DIR:-target}/release/examples/pool_stream_loop"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
ir() {
  valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bin" "$@" 2>"$out/log" >/dev/null
  grep -E '^(summary|totals):' "$out/cg" | head -1 | awk '{print $2}'
}
for percent in 10 90; do
  for alloc in pool talc buddy; do
    base=$(ir "$alloc" "$percent" 1000)
    more=$(ir "$alloc" "$percent" $((1000 + n)))
    echo "$alloc $percent % held: $(( (more - base) / n )) instructions per alloc + free (callgrind, N=$n)"
  done
done
